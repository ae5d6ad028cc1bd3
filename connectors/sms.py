"""The SMS connector: one OTP or notice, sent once, through the first gateway that works.

Where it sits: the connector step of the SMS routes (event → ``sms-otp`` / ``sms-notices`` →
``adapters/igate_to_sms.py`` → **this** → Viettel or eSMS, ``connectors/sms_gateways.py``). It subclasses
:class:`connectors.kit.Declared` rather than ``KitConnector`` because it holds one client, hence one guard
(breaker, rate limit, deadline), **per gateway** (README "Add a connector").

**Failover, never twice.** Gateways are tried in the order of ``options.gateways``. A gateway whose breaker is
open, or that said it did nothing (refused connection, 503, its account refused: ``maybe_applied`` False), is
skipped at once for the next. A gateway whose answer was lost (a timeout, a dropped connection after the
request, a 5xx, garbage) **stops the failover**: the error goes back to the engine ``maybe_applied``, and the
next attempt first asks every gateway with :meth:`SmsConnector.lookup` (by our key), so an SMS that may have
left through one gateway never leaves through another. A gateway's duplicate answer (eSMS 124) counts as sent.
With every gateway's breaker open, the message waits on the connector (``BreakerOpen``, no attempt spent).
Each trial call through a half-open breaker goes to the first gateway again, so traffic returns to the
primary as soon as it answers.

**OTP.** ``send_otp`` checks the code's expiry before each gateway is tried (so also after retries and
parking): with less than ``otp_min_left`` left it raises :class:`~schemas.errors.Expired` (dead-lettered
``expired``), never sending late. While it sends, the code is a live secret (:func:`schemas.pii.live_secret`):
any text scrubbed meanwhile (a gateway's echo in a fault, a log line) has it masked, and an error leaving
this connector has it masked in its message.

**Quiet hours.** ``send_notice`` in the window ``options.quiet_hours`` (``21:00-07:00``, Asia/Ho_Chi_Minh)
raises :class:`~schemas.errors.Held` with the time left: the notice waits in its route's delay queues, no
attempt spent, and goes when the window closes. OTPs ignore the window.

Health: ``up`` when the first gateway answers, ``degraded`` when it does not but another does (or a breaker is
not closed), ``down`` when none answers. ``breaker_state`` is ``open`` only when every gateway's is.

``connectors.yaml``::

    sms:
      type: sms
      timeout: {connect: 2s, read: 5s, total: 8s}
      breaker: {fail_max: 3, reset_timeout: 30s}          # each gateway's own, unless <kind>_fail_max...
      credentials: {viettel_user: IGATE_BUS_VIETTEL_SMS_USER, viettel_password: IGATE_BUS_VIETTEL_SMS_PASSWORD,
                    esms_api_key: IGATE_BUS_ESMS_API_KEY, esms_secret_key: IGATE_BUS_ESMS_SECRET_KEY}
      options: {gateways: "viettel,esms", quiet_hours: "21:00-07:00", otp_min_left: 15s,
                viettel_endpoint: http://127.0.0.1:8603/bulkapi, viettel_cp_code: DAKLAK,
                viettel_brandname: UBND-DAKLAK, viettel_rate_limit: 30,
                esms_endpoint: http://127.0.0.1:8604, esms_brandname: UBND-DAKLAK, esms_rate_limit: 20}

Options: ``gateways`` (order, default ``viettel,esms``), ``quiet_hours`` (empty: none), ``otp_min_left``
(default ``15s``), and per gateway ``<kind>_endpoint``, ``_rate_limit``, ``_fail_max``, ``_reset_timeout``,
``_brandname``, ``_unicode`` (Viettel default false: no diacritics; eSMS true), ``viettel_cp_code``,
``esms_callback_url``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

import structlog

from connectors.base import Health
from connectors.kit import Declared, operation, run_probe
from connectors.sms_gateways import Gateway, build_gateway
from schemas.errors import BreakerOpen, BusError, ConfigError, Expired, Held, TargetUnavailable, TransientError
from schemas.pii import MASK, live_secret
from schemas.sms import OtpSms, SmsNotice, SmsReceipt

if TYPE_CHECKING:
    from collections.abc import Callable

    from config.model import ConnectorSpec

log = structlog.get_logger("igate_bus.connector")

VIETNAM: Final = ZoneInfo("Asia/Ho_Chi_Minh")
DEFAULT_GATEWAYS: Final = "viettel,esms"
DEFAULT_OTP_MIN_LEFT: Final = 15.0
_CLOCK = r"([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?"
_WINDOW = re.compile(rf"^{_CLOCK}-{_CLOCK}$")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window, in Vietnam's time, when notices are held; it may span midnight (``21:00-07:00``)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """``HH:MM-HH:MM`` (seconds optional: ``HH:MM:SS``), or None for an empty text.

        Raises:
            ConfigError: not that form, or an empty window.
        """
        if not text:
            return None
        found = _WINDOW.match(text)
        if found is None:
            raise ConfigError(f"quiet_hours {text!r} is not HH:MM-HH:MM", field="options.quiet_hours")
        h1, m1, s1, h2, m2, s2 = (int(g or 0) for g in found.groups())
        start, end = time(h1, m1, s1), time(h2, m2, s2)
        if start == end:
            raise ConfigError("quiet_hours starts and ends at the same time", field="options.quiet_hours")
        return cls(start, end)

    def left(self, now: datetime) -> float:
        """Seconds until the window ends when ``now`` is inside it, else 0."""
        local = now.astimezone(VIETNAM)
        at = local.time().replace(tzinfo=None)
        inside = self.start <= at < self.end if self.start < self.end else at >= self.start or at < self.end
        if not inside:
            return 0.0
        end = datetime.combine(local.date(), self.end, tzinfo=VIETNAM)
        if end <= local:
            end += timedelta(days=1)
        return (end - local).total_seconds()


def _masked(exc: BusError, secret: str) -> BusError:
    """``exc`` with the secret masked in its message (it may quote a gateway's echo)."""
    if secret in exc.message:
        exc.message = exc.message.replace(secret, MASK)
        exc.args = (exc.message,)
    return exc


class SmsConnector(Declared):
    """SMS through the first working gateway of ``options.gateways``, never through two.

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; see the module docstring.

    Raises:
        ConfigError: no gateway, an unknown one, or a gateway's option or credential missing.
    """

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        from config.model import parse_duration

        self.name = name
        self.spec = spec
        kinds = [k.strip() for k in str(spec.options.get("gateways", DEFAULT_GATEWAYS)).split(",") if k.strip()]
        if not kinds or len(set(kinds)) != len(kinds):
            raise ConfigError(
                f"connector {name!r}: options.gateways must list distinct gateways", field="options.gateways"
            )
        self.quiet = QuietHours.parse(str(spec.options.get("quiet_hours", "")))
        self.otp_min_left = parse_duration(spec.options.get("otp_min_left", f"{DEFAULT_OTP_MIN_LEFT:g}s"))
        self.degraded_ms = float(spec.options.get("degraded_ms", 2000))
        #: the wall clock the expiry and the quiet hours are judged by (tests inject their own)
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.gateways: list[Gateway] = []
        try:
            for kind in kinds:
                self.gateways.append(build_gateway(name, kind, spec))
        except BaseException:
            self.close()
            raise

    # -- operations ----------------------------------------------------------------------------------------
    @operation(SmsNotice, SmsReceipt, lookup="lookup")
    def send_notice(self, request: SmsNotice, idempotency_key: str) -> SmsReceipt:
        """Send a status notice, outside the quiet hours (held until they end)."""
        if self.quiet is not None:
            left = self.quiet.left(self.clock())
            if left > 0:
                raise Held(f"quiet hours until {self.quiet.end:%H:%M:%S} (Asia/Ho_Chi_Minh)", retry_after=left)
        return self._send(request, idempotency_key, expires_at=None)

    @operation(OtpSms, SmsReceipt, lookup="lookup")
    def send_otp(self, request: OtpSms, idempotency_key: str) -> SmsReceipt:
        """Send a one-time code now, through any gateway, or dead-letter it ``expired``: never late."""
        with live_secret(request.otp_code):
            try:
                return self._send(request, idempotency_key, expires_at=request.expires_at)
            except BusError as exc:
                raise _masked(exc, request.otp_code) from None

    def lookup(self, idempotency_key: str) -> SmsReceipt | None:
        """The receipt of an SMS any gateway sent with this key, or None when none did.

        Every gateway is asked (the one that timed out may be any): one that found it answers; None only when
        every gateway answered "never sent".

        Raises:
            TransientError: a gateway could not answer and none found it (still maybe applied).
        """
        failures: list[str] = []
        for gateway in self.gateways:
            try:
                found = gateway.lookup(idempotency_key)
            except BusError as exc:
                failures.append(f"{gateway.name}: {exc.kind}: {exc}")
                continue
            if found is not None:
                return found
        if failures:
            error = TransientError("SMS lookup incomplete, cannot rule out a send: " + "; ".join(failures))
            error.maybe_applied = True
            raise error
        return None

    # -- the failover --------------------------------------------------------------------------------------
    def _send(self, request: SmsNotice | OtpSms, key: str, *, expires_at: datetime | None) -> SmsReceipt:
        skipped: list[str] = []
        waits: list[float] = []
        for gateway in self.gateways:
            if expires_at is not None:
                left = (expires_at - self.clock()).total_seconds()
                if left < self.otp_min_left:
                    raise Expired(
                        f"the OTP expires in {max(left, 0):.0f}s (less than {self.otp_min_left:g}s): not sent late",
                        field="expires_at",
                    )
            try:
                receipt = gateway.send(request, key)
            except BreakerOpen as exc:
                skipped.append(f"{gateway.name}: breaker open")
                waits.append(exc.retry_after or 0.0)
                continue
            except TransientError as exc:
                if exc.maybe_applied:
                    raise  # reconcile by lookup before any gateway is tried again
                skipped.append(f"{gateway.name}: {exc.kind}: {exc}")
                continue
            if skipped:
                log.info(
                    "sms_failover",
                    connector=self.name,
                    gateway=gateway.name,
                    skipped=skipped,
                    template=request.template,
                )
            return receipt
        if len(waits) == len(self.gateways):
            raise BreakerOpen(f"every SMS gateway's breaker is open ({', '.join(skipped)})", retry_after=min(waits))
        raise _NoGateway("no SMS gateway took the message: " + "; ".join(skipped))

    # -- the Connector protocol ----------------------------------------------------------------------------
    def probe(self) -> Health:
        """Each gateway's probe: up when the first answers, degraded when only another does, down when none."""
        found = [
            (g, run_probe(g.check, breaker=g.guard.breaker, degraded_ms=self.degraded_ms, answered="balance answered"))
            for g in self.gateways
        ]
        detail = "; ".join(f"{g.name}: {h.state} ({h.detail})" for g, h in found)
        first = found[0][1]
        states = {h.state for _, h in found}
        latency = first.latency_ms
        if first.state == "up" and states == {"up"}:
            return Health("up", detail, latency, datetime.now(UTC))
        if states != {"down"}:
            return Health("degraded", detail, latency, datetime.now(UTC))
        return Health("down", detail, latency, datetime.now(UTC))

    @property
    def breaker_state(self) -> str:
        """``open`` when every gateway's breaker is, ``closed`` when all are, else ``half-open``."""
        states = {g.guard.breaker.state for g in self.gateways}
        if states == {"open"}:
            return "open"
        return "closed" if states == {"closed"} else "half-open"

    @property
    def breaker_reason(self) -> str:
        """Why each gateway's breaker last opened."""
        return "; ".join(f"{g.name}: {g.guard.breaker.reason}" for g in self.gateways if g.guard.breaker.reason)

    def watch(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` when any gateway's breaker changes; returns the function that stops it."""
        stops = [g.guard.breaker.subscribe(lambda _old, _new: listener()) for g in self.gateways]

        def stop() -> None:
            for unsubscribe in stops:
                unsubscribe()

        return stop

    def close(self) -> None:
        """Close every gateway's client."""
        for gateway in self.gateways:
            with contextlib.suppress(Exception):
                gateway.close()


class _NoGateway(TargetUnavailable):
    """Every gateway said it sent nothing (refused, 503, its account refused): retry later, nothing applied."""


def render(operation_name: str, request: SmsNotice | OtpSms) -> str:
    """What ``igate-bus map`` shows: the text each form would carry, its encoding and segments (no I/O)."""
    from schemas.sms import encoding_of, segments

    lines = [f"# sms.{operation_name}: to {request.phone[:4]}***{request.phone[-2:]}, template {request.template}"]
    for label, text in (("unicode", request.text), ("plain", request.plain_text)):
        shown = text.replace(request.otp_code, MASK) if isinstance(request, OtpSms) else text
        lines.append(f"{label} ({encoding_of(text)}, {segments(text)} segment(s)): {shown}")
    if isinstance(request, OtpSms):
        lines.append(f"expires_at: {request.expires_at.isoformat()}")
    return "\n".join(lines)
