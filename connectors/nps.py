"""The National Public Service Portal connector: syncs dossiers, their progress and ratings over SOAP.

Where it sits: the connector step of the portal routes (event → route → ``adapters/igate_to_nps.py`` →
**connector** → result/DLQ), e.g. ``dossier.received`` → ``igate_to_nps.dossier_received`` →
``nps.dong_bo_ho_so`` → a ``dvcqg.sync_result`` event on ``bus.results``. Each effect operation takes a
request model of :mod:`schemas.nps` and returns a :class:`schemas.nps.SyncResult`, which the route emits as
that event's payload unchanged.

The protocol is DOMAIN.md section 2: the portal's services wrapped in SOAP 1.1 document/literal by an LGSP
proxy ([A]: no public SOAP contract exists; the contract is ``schemas/wsdl/nps.wsdl``). The zeep client is
built once from that local WSDL by :func:`connectors._soap.build_client` (hardened XML settings, total
deadline, reply cap, error translation); this module adds what is particular to the portal:

- **The session** ([F] the adapter's login ``{username, password}`` → ``session``): fetched by ``XacThuc``
  on first use, cached until ``expires_in`` (less a margin) when the portal says, and renewed once when a
  call is refused with the fault ``Client.Session`` (the proxy refuses before the portal handles anything,
  so the call is safely sent again). Every other call carries ``session``, ``madonvi`` and our idempotency
  key as ``maYeuCau`` in the ``PhienLamViec`` header.
- **Error codes** ([F] "0" in TH's deployments, "00" in OC's): success becomes a ``SyncResult``; any other
  code is the portal rejecting the record, a :class:`~schemas.errors.TargetRejected` (dead-lettered at once,
  never retried) with the code and the portal's message, scrubbed. **"đã tồn tại"** ([F] TH): a create
  refused because the record exists is sent again at once as an update (``isUpdating=true``).
- **Progress in chunks of 10** ([F] TH). Each chunk but the last carries ``{key}.{n}`` as its request id
  and the last carries the key itself, and chunks go out in order, stopping at the first failure: when the
  portal knows the key, every chunk was applied.
- **Reconciliation by lookup** (DESIGN.md): ``lookup(key)`` asks ``TraCuuHoSo`` by request id ([A] the proxy
  logs the ``maYeuCau`` of every call it handled) and answers the earlier ``SyncResult`` when the portal
  applied it, ``None`` when it never saw it or refused it (sending again is then safe: every portal call is
  idempotent, and an older state never overwrites a newer one because records carry their time).

``connectors.yaml``::

    nps:
      type: nps
      endpoint: http://127.0.0.1:8602/lgsp/dvcqg
      timeout: {connect: 3s, read: 10s, total: 20s}
      max_reply_bytes: 1048576
      credentials: {username: IGATE_BUS_NPS_USERNAME, password: IGATE_BUS_NPS_PASSWORD}
      options: {madonvi: 000.00.16.H16}

Options: ``madonvi`` (required: the province's agency code, QĐ 20), ``wsdl`` (another local WSDL of the
same contract), ``chunk_size`` (progress steps a call, default 10), ``degraded_ms`` (probe latency above
which health is ``degraded``, default 2000), ``ca_file``.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

import structlog
import zeep.exceptions
import zeep.helpers
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints
from pydantic import BaseModel, SecretStr, ValidationError

from connectors._http import TokenBucket, _Breaker
from connectors._soap import WSDL_DIR, CallState, build_client, scrub_fault, translate
from connectors.base import Health, Operation, OperationSpec, credential, endpoint, required_option, typed
from schemas.errors import (
    AmbiguousOutcome,
    BusError,
    ConfigError,
    MappingError,
    TargetRejected,
    TargetUnavailable,
    TransientError,
)
from schemas.nps import (
    MA_YEU_CAU_PATTERN,
    NOT_FOUND_CODE,
    OK_CODES,
    CapNhatTienDoHoSoMCRequest,
    DongBoDanhGiaRequest,
    DongBoHoSoMCRequest,
    NpsReply,
    SyncResult,
    TraCuuHoSoReply,
    TraCuuHoSoRequest,
    XacThucReply,
    XacThucRequest,
)
from schemas.pii import sensitive_field_names

if TYPE_CHECKING:
    from collections.abc import Mapping

    from config.model import ConnectorSpec

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=NpsReply)
Q = TypeVar("Q", bound=BaseModel)

#: the WSDL's target namespace and binding
NAMESPACE: Final = "urn:dvcqg:lgsp:v1"
BINDING: Final = f"{{{NAMESPACE}}}DvcqgHoSoBinding"
WSDL_FILE: Final = WSDL_DIR / "nps.wsdl"
#: [F] TH sends progress steps in chunks of 10
DEFAULT_CHUNK: Final = 10
DEFAULT_DEGRADED_MS: Final = 2000.0
#: renew a session this long before the portal says it expires, at most (a tenth of its life when short)
SESSION_MARGIN_S: Final = 30.0
#: [A] the fault code with which the proxy refuses an unknown or expired session
SESSION_FAULT: Final = "soap:Client.Session"
#: the dossier code the probe asks for: a lookup of it is harmless whatever the portal answers
PROBE_CODE: Final = "PROBE-0"
#: longest idempotency key accepted (chunk suffixes must still fit the header's 100 characters)
MAX_KEY_CHARS: Final = 90
#: characters of the portal's ``message`` kept from a reply
MAX_MESSAGE_CHARS: Final = 2000
#: the portal's field names whose values its faults and messages may echo
PERSONAL_KEYS: Final = sensitive_field_names(
    [DongBoHoSoMCRequest, CapNhatTienDoHoSoMCRequest, DongBoDanhGiaRequest, XacThucRequest]
)
_KEY = re.compile(MA_YEU_CAU_PATTERN)


@dataclass(frozen=True, slots=True)
class _Session:
    value: SecretStr
    renew_at: float  # monotonic; inf when the portal gives no lifetime


def _drop_none(value: Any) -> Any:
    """Absent optional elements come back from zeep as None; the reply models want them absent."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


class NpsConnector:
    """The national portal over SOAP: three effects, each with a lookup, and a read.

    The effects are ``dong_bo_ho_so``, ``cap_nhat_tien_do`` and ``dong_bo_danh_gia``; the read is
    ``tra_cuu_ho_so``.

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; see the module docstring for options and credentials.

    Raises:
        ConfigError: no endpoint, no ``madonvi``, a credential's environment variable unset, or the WSDL
            does not load.
    """

    OPERATIONS: ClassVar[Mapping[str, OperationSpec]] = {
        "dong_bo_ho_so": OperationSpec(
            request=DongBoHoSoMCRequest,
            reply=SyncResult,
            effect=True,
            has_lookup=True,
            doc="Create or update dossier records (DongBoHoSoMC); an existing record is updated.",
        ),
        "cap_nhat_tien_do": OperationSpec(
            request=CapNhatTienDoHoSoMCRequest,
            reply=SyncResult,
            effect=True,
            has_lookup=True,
            doc="Add processing steps (CapNhatTienDoHoSoMC), in chunks of 10.",
        ),
        "dong_bo_danh_gia": OperationSpec(
            request=DongBoDanhGiaRequest,
            reply=SyncResult,
            effect=True,
            has_lookup=True,
            doc="[A] Send the citizen's rating of a dossier (DongBoDanhGia).",
        ),
        "tra_cuu_ho_so": OperationSpec(
            request=TraCuuHoSoRequest,
            reply=TraCuuHoSoReply,
            effect=False,
            has_lookup=False,
            doc="Read a dossier's state at the portal (TraCuuHoSo).",
        ),
    }

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        self.name = name
        self.spec = spec
        url = endpoint(name, spec)
        self._madonvi = required_option(name, spec, "madonvi", "the province's agency code, QĐ 20")
        self._chunk = int(spec.options.get("chunk_size", DEFAULT_CHUNK))
        if not 1 <= self._chunk <= DEFAULT_CHUNK:
            raise ConfigError(f"connector {name!r}: options.chunk_size must be 1-{DEFAULT_CHUNK}")
        self._degraded_ms = float(spec.options.get("degraded_ms", DEFAULT_DEGRADED_MS))
        self._username = credential(self.name, self.spec, "username").get_secret_value()
        self._password = credential(self.name, self.spec, "password")
        wsdl = Path(str(spec.options["wsdl"])) if "wsdl" in spec.options else WSDL_FILE
        self._client = build_client(name, spec, wsdl)
        self._transport = self._client.transport
        self._service = self._client.create_service(BINDING, url)  # type: ignore[no-untyped-call]
        self._breaker = _Breaker(name, spec.breaker)
        self._limiter = TokenBucket(spec.rate_limit) if spec.rate_limit else None
        self._session: _Session | None = None
        self._session_lock = threading.Lock()
        self._operations: Mapping[str, Operation] = {
            "dong_bo_ho_so": Operation(
                "dong_bo_ho_so",
                DongBoHoSoMCRequest,
                SyncResult,
                typed(self.name, DongBoHoSoMCRequest, self.dong_bo_ho_so),
                self.lookup_ho_so,
            ),
            "cap_nhat_tien_do": Operation(
                "cap_nhat_tien_do",
                CapNhatTienDoHoSoMCRequest,
                SyncResult,
                typed(self.name, CapNhatTienDoHoSoMCRequest, self.cap_nhat_tien_do),
                self.lookup_tien_do,
            ),
            "dong_bo_danh_gia": Operation(
                "dong_bo_danh_gia",
                DongBoDanhGiaRequest,
                SyncResult,
                typed(self.name, DongBoDanhGiaRequest, self.dong_bo_danh_gia),
                self.lookup_danh_gia,
            ),
            "tra_cuu_ho_so": Operation(
                "tra_cuu_ho_so",
                TraCuuHoSoRequest,
                TraCuuHoSoReply,
                typed(self.name, TraCuuHoSoRequest, self.tra_cuu_ho_so),
                None,
                effect=False,
            ),
        }

    # -- the Connector protocol -------------------------------------------------------------------------

    def operations(self) -> Mapping[str, Operation]:
        """The four operations by name."""
        return self._operations

    def probe(self) -> Health:
        """Look up a dossier that does not exist (no side effects), bypassing the breaker; never raises.

        ``up`` when the portal answers in time, ``degraded`` when it answers slowly or the breaker is not
        closed, ``down`` when it does not answer properly.
        """
        started = time.monotonic()
        try:
            self._service_call(
                "TraCuuHoSo",
                {"MaHoSo": PROBE_CODE},
                TraCuuHoSoReply,
                deadline=self._deadline(),
                effect=False,
                key=None,
                guard=False,
            )
        except BusError as exc:
            return Health(
                state="down",
                detail=f"{exc.kind}: {exc}",
                latency_ms=round((time.monotonic() - started) * 1000, 1),
                checked_at=datetime.now(UTC),
            )
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        if self._breaker.state != "closed":
            detail = f"answers, but the breaker is {self._breaker.state}"
            return Health("degraded", detail, latency_ms, datetime.now(UTC))
        if latency_ms > self._degraded_ms:
            return Health("degraded", f"slow: over {self._degraded_ms:g} ms", latency_ms, datetime.now(UTC))
        return Health("up", "TraCuuHoSo answered", latency_ms, datetime.now(UTC))

    def close(self) -> None:
        """Close the pooled connections."""
        self._transport.close()

    @property
    def breaker_state(self) -> str:
        """The breaker's state (for ``igate-bus status``)."""
        return self._breaker.state

    # -- operations -------------------------------------------------------------------------------------

    def dong_bo_ho_so(self, request: DongBoHoSoMCRequest, idempotency_key: str) -> SyncResult:
        """Send dossier records; a create the portal refuses as existing ("đã tồn tại") is sent as an update.

        Raises:
            TargetRejected: the portal refused the records (their code and its message in the error).
            TransientError: see :mod:`connectors._soap`.
        """
        key = self._check_key(idempotency_key)
        deadline = self._deadline()
        body = request.wire()
        reply = self._service_call("DongBoHoSoMC", body, NpsReply, deadline=deadline, effect=True, key=key)
        if reply.already_exists and not request.isUpdating:
            log.info("nps.exists_send_update", connector=self.name, error_code=reply.error_code)
            body = {**body, "isUpdating": True}
            reply = self._service_call("DongBoHoSoMC", body, NpsReply, deadline=deadline, effect=True, key=key)
        return self._settle("DongBoHoSoMC", reply)

    def cap_nhat_tien_do(self, request: CapNhatTienDoHoSoMCRequest, idempotency_key: str) -> SyncResult:
        """Send processing steps in chunks, in order, stopping at the first the portal refuses.

        Raises:
            TargetRejected: the portal refused a chunk (the chunks before it were applied; sending them
                again is harmless).
            TransientError: see :mod:`connectors._soap`.
        """
        key = self._check_key(idempotency_key)
        deadline = self._deadline()
        steps = request.wire()["data"]
        chunks = [steps[i : i + self._chunk] for i in range(0, len(steps), self._chunk)]
        result: SyncResult | None = None
        for n, chunk in enumerate(chunks, start=1):
            chunk_key = key if n == len(chunks) else f"{key}.{n}"
            reply = self._service_call(
                "CapNhatTienDoHoSoMC", {"data": chunk}, NpsReply, deadline=deadline, effect=True, key=chunk_key
            )
            result = self._settle("CapNhatTienDoHoSoMC", reply)
        if result is None:  # pragma: no cover - the request model demands at least one step
            raise MappingError("no progress steps to send", field="data")
        return result

    def dong_bo_danh_gia(self, request: DongBoDanhGiaRequest, idempotency_key: str) -> SyncResult:
        """Send the citizen's rating of a dossier.

        Raises:
            TargetRejected: the portal refused it.
            TransientError: see :mod:`connectors._soap`.
        """
        key = self._check_key(idempotency_key)
        reply = self._service_call(
            "DongBoDanhGia", request.wire(), NpsReply, deadline=self._deadline(), effect=True, key=key
        )
        return self._settle("DongBoDanhGia", reply)

    def tra_cuu_ho_so(self, request: TraCuuHoSoRequest, idempotency_key: str = "") -> TraCuuHoSoReply:
        """Read a dossier's state; an unknown dossier is a reply with no ``result`` (``found`` False).

        Raises:
            TargetRejected: the portal refused the question (an error code other than "not found").
            TransientError: see :mod:`connectors._soap`.
        """
        del idempotency_key  # a read needs no key
        reply = self._service_call(
            "TraCuuHoSo", request.wire(), TraCuuHoSoReply, deadline=self._deadline(), effect=False, key=None
        )
        if not reply.ok and reply.error_code != NOT_FOUND_CODE:
            raise TargetRejected(
                f"TraCuuHoSo refused: error_code {reply.error_code}: {scrub_fault(reply.message, keys=PERSONAL_KEYS)}",
                code=reply.error_code,
            )
        return reply

    def lookup_ho_so(self, idempotency_key: str) -> SyncResult | None:
        """The result of an earlier ``dong_bo_ho_so`` with this key, or None when the portal applied none."""
        return self._lookup("DongBoHoSoMC", idempotency_key)

    def lookup_tien_do(self, idempotency_key: str) -> SyncResult | None:
        """The result of an earlier ``cap_nhat_tien_do`` whose last chunk the portal applied, or None."""
        return self._lookup("CapNhatTienDoHoSoMC", idempotency_key)

    def lookup_danh_gia(self, idempotency_key: str) -> SyncResult | None:
        """The result of an earlier ``dong_bo_danh_gia`` with this key, or None when the portal applied none."""
        return self._lookup("DongBoDanhGia", idempotency_key)

    # -- internals --------------------------------------------------------------------------------------

    @staticmethod
    def _check_key(idempotency_key: str) -> str:
        if len(idempotency_key) > MAX_KEY_CHARS or not _KEY.fullmatch(idempotency_key):
            raise MappingError(
                f"an effect needs an idempotency key of 1-{MAX_KEY_CHARS} letters, digits, '.', ':', '-' or '_'",
                field="idempotency_key",
            )
        return idempotency_key

    def _deadline(self) -> float:
        return time.monotonic() + self.spec.timeout.total

    def _settle(self, service: str, reply: NpsReply) -> SyncResult:
        """The ``SyncResult`` of an accepted call; a refused one is a permanent error."""
        message = scrub_fault(reply.message, keys=PERSONAL_KEYS, limit=1000)
        if reply.ok:
            return reply.to_sync_result(service, message=message)
        raise TargetRejected(f"{service} refused: error_code {reply.error_code}: {message}", code=reply.error_code)

    def _lookup(self, service: str, idempotency_key: str) -> SyncResult | None:
        key = self._check_key(idempotency_key)
        reply = self._service_call(
            "TraCuuHoSo", {"MaYeuCau": key}, TraCuuHoSoReply, deadline=self._deadline(), effect=False, key=None
        )
        if not reply.ok and reply.error_code != NOT_FOUND_CODE:
            raise TargetUnavailable(
                f"lookup of a request id answered error_code {reply.error_code}", maybe_applied=True
            )
        if reply.result is None:
            return None
        seen = reply.result.YeuCau
        if seen is None or seen.MaYeuCau != key:
            raise TargetUnavailable("lookup by request id answered a dossier without that request", maybe_applied=True)
        if seen.DichVu != service:
            raise AmbiguousOutcome(f"request id {key} was used for {seen.DichVu}, not {service}")
        if seen.error_code not in OK_CODES:
            return None  # the portal refused it: nothing was applied; a new attempt meets the same refusal
        state = reply.result
        detail = f"applied earlier (found by request id); portal status {state.TrangThaiHoSo} at {state.NgayCapNhat}"
        return SyncResult(service=service, error_code=seen.error_code, message=detail)

    def _service_call(
        self,
        operation: str,
        body: dict[str, Any],
        model: type[R],
        *,
        deadline: float,
        effect: bool,
        key: str | None,
        guard: bool = True,
    ) -> R:
        """One portal call with a session, renewing the session once if the proxy refuses it."""
        for attempt in (1, 2):
            session = self._current_session(deadline, guard=guard)
            header = {"session": session.value.get_secret_value(), "madonvi": self._madonvi}
            if key is not None:
                header["maYeuCau"] = key
            try:
                return self._invoke(
                    operation, body, model, header=header, deadline=deadline, effect=effect, guard=guard
                )
            except TargetRejected as exc:
                if exc.code != SESSION_FAULT or attempt == 2:
                    raise
                with self._session_lock:
                    if self._session is session:
                        self._session = None
                log.info("nps.session_refused", connector=self.name, attempt=attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _current_session(self, deadline: float, *, guard: bool) -> _Session:
        """The cached session, or a new one; one thread logs in while the others wait for it."""
        with self._session_lock:
            session = self._session
            if session is None or time.monotonic() >= session.renew_at:
                session = self._session = self._login(deadline, guard=guard)
            return session

    def _login(self, deadline: float, *, guard: bool) -> _Session:
        body = {"username": self._username, "password": self._password.get_secret_value()}
        reply = self._invoke("XacThuc", body, XacThucReply, header=None, deadline=deadline, effect=False, guard=guard)
        if not reply.ok or not reply.session:
            raise TargetRejected(
                f"the portal refused the bus's credentials: error_code {reply.error_code}: "
                f"{scrub_fault(reply.message, keys=PERSONAL_KEYS)}",
                code=reply.error_code,
            )
        lifetime = float(reply.expires_in) if reply.expires_in else float("inf")
        log.info("nps.session_issued", connector=self.name, expires_in=reply.expires_in)
        renew_at = time.monotonic() + lifetime - min(SESSION_MARGIN_S, lifetime / 10)
        return _Session(SecretStr(reply.session), renew_at)

    def _invoke(
        self,
        operation: str,
        body: dict[str, Any],
        model: type[R],
        *,
        header: dict[str, str] | None,
        deadline: float,
        effect: bool,
        guard: bool,
    ) -> R:
        """One SOAP call through the breaker and the rate limit, its reply validated, its errors translated."""
        trial = self._breaker.admit() if guard else False
        if self._limiter is not None:
            try:
                self._limiter.acquire(deadline)
            except TargetUnavailable:
                self._breaker.release(trial=trial)
                raise
        started = time.monotonic()
        kwargs: dict[str, Any] = dict(body)
        if header is not None:
            kwargs["_soapheaders"] = {"header": header}
        state: CallState | None = None
        try:
            with self._transport.call(deadline, effect=effect) as state:
                answer = getattr(self._service, operation)(**kwargs)
            reply = self._parse(answer, model, effect=effect)
        except (BusError, zeep.exceptions.Error, etree.LxmlError, ValueError, TypeError) as exc:
            if isinstance(exc, BusError) or (state is not None and state.sent):
                error = translate(exc, effect=effect, keys=PERSONAL_KEYS)
            else:  # zeep could not serialise the request: nothing was sent, and resending cannot help
                error = MappingError(f"the {operation} request does not fit the WSDL ({type(exc).__name__})")
            log.warning(
                "nps.call_failed",
                connector=self.name,
                operation=operation,
                error_kind=error.kind,
                error=str(error),
                maybe_applied=getattr(error, "maybe_applied", None),
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            if guard:
                self._breaker.record(error if isinstance(error, TransientError) else None, trial=trial)
            raise error from None
        if guard:
            self._breaker.record(None, trial=trial)
        log.debug(
            "nps.call",
            connector=self.name,
            operation=operation,
            error_code=reply.error_code,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return reply

    @staticmethod
    def _parse(answer: Any, model: type[R], *, effect: bool) -> R:
        data = _drop_none(zeep.helpers.serialize_object(answer, dict))  # type: ignore[no-untyped-call]
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            data["message"] = data["message"][:MAX_MESSAGE_CHARS]  # a chatty portal is not a broken one
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "reply"
            raise TargetUnavailable(
                f"reply is not a valid {model.__name__}: {where}: {first['msg']}", maybe_applied=effect
            ) from None


#: the connector's operations by the portal service each one calls
SERVICES: Final = {
    "dong_bo_ho_so": "DongBoHoSoMC",
    "cap_nhat_tien_do": "CapNhatTienDoHoSoMC",
    "dong_bo_danh_gia": "DongBoDanhGia",
    "tra_cuu_ho_so": "TraCuuHoSo",
}


def render(operation: str, request: BaseModel, *, madonvi: str = "000.00.16.H16") -> str:
    """The SOAP envelope an operation would send for ``request``, built by zeep from the local WSDL.

    For ``igate-bus map``: no network, no credentials; the session is a placeholder and the request id is the
    word ``KEY``. A progress request longer than one chunk is shown as the one envelope zeep would build for
    the whole list (the connector sends it in chunks of 10).
    """
    from config.model import ConnectorSpec

    service = SERVICES[operation]
    spec = ConnectorSpec(type="nps", endpoint="http://render.invalid/lgsp/dvcqg")
    client = build_client("render", spec, WSDL_FILE)
    proxy = client.create_service(BINDING, spec.endpoint)  # type: ignore[no-untyped-call]
    wire = getattr(request, "wire", None)
    body = wire() if callable(wire) else request.model_dump(mode="json", exclude_none=True)
    header = {"session": "(session)", "madonvi": madonvi, "maYeuCau": "KEY"}
    message = client.create_message(proxy, service, **body, _soapheaders={"header": header})  # type: ignore[no-untyped-call]
    text: str = etree.tostring(message, pretty_print=True, encoding="unicode")
    return text
