"""The one cached credential of a connector (a token, a session): fetched once, shared, renewed once on refusal.

Where it sits: inside the connector step (event → route → adapter → **connector** → result/DLQ), between an
operation and the requests it sends. A connector gives :class:`CachedCredential` a ``fetch`` (the login: a
Keycloak password grant, a portal ``XacThuc``) and sends each request through :meth:`CachedCredential.use`:

- the credential is fetched on first use by one thread while the others wait for it, and renewed shortly
  before the lifetime the issuer gave (:meth:`Credential.lasting`);
- a request the target refuses for its credential (HTTP 401, a session fault: the send raises
  :class:`Refused`) is decided before the target handles anything, so it is sent once more with a fresh
  credential. That is the only repeat of a side-effecting call the kit allows;
- **the bus's own credentials refused** (the login refused, or a fresh credential refused too) is an
  operator problem, not the message's: it raises :class:`~schemas.errors.CredentialsRefused` (transient,
  waits on the connector without spending attempts, never dead-lettered), opens the connector's breaker at
  once (so no further login is tried before ``reset_timeout``: an identity provider locks accounts that keep
  failing), and logs ``credentials_refused`` at ERROR once, until a request goes through again
  (``credentials_accepted``).

:class:`Refused` is raised inside the guarded request (``HttpClient.request(refused=...)``,
``SoapClient.call(refused=...)``), so a refusal gives the breaker no verdict on the target: it answered.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

import structlog

from schemas.errors import CredentialsRefused

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import SecretStr

    from connectors.kit.guard import Breaker

log = structlog.get_logger("igate_bus.connector")

T = TypeVar("T")

#: renew a credential this long before it expires, at most (a tenth of its life when it is short-lived)
RENEW_MARGIN_S: Final = 30.0


class Refused(Exception):
    """The target refused the credential a request carried, or the issuer refused the bus's own.

    Args:
        detail: what the target answered (a status and a scrubbed snippet, an error code), for the error.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Credential:
    """A token or session, and when to renew it (monotonic time; ``inf`` when the issuer gave no lifetime)."""

    value: SecretStr
    renew_at: float
    lifetime_s: float | None = None

    @classmethod
    def lasting(cls, value: SecretStr, lifetime_s: float | None) -> Credential:
        """A credential issued now for ``lifetime_s`` seconds (None: until refused)."""
        if lifetime_s is None:
            return cls(value, float("inf"))
        lifetime = float(lifetime_s)
        return cls(value, time.monotonic() + lifetime - min(RENEW_MARGIN_S, lifetime / 10), lifetime)


class CachedCredential:
    """One credential shared by every thread of a connector, renewed once when a request is refused for it.

    Args:
        connector: the connector's name (logs).
        fetch: the login, ``fetch(deadline, guard) -> Credential``; raises :class:`Refused` when the issuer
            refuses the bus's credentials, an error of :mod:`schemas.errors` when it cannot be reached.
        breaker: the connector's breaker, opened at once when the bus's credentials are refused.
        what: ``token`` or ``session`` (logs and errors).
        issuer: who issues it, e.g. ``iGate's Keycloak`` (errors).
        target: who checks it on each request, e.g. ``iGate`` (errors).
    """

    def __init__(
        self,
        connector: str,
        fetch: Callable[[float, bool], Credential],
        *,
        breaker: Breaker,
        what: str,
        issuer: str,
        target: str,
    ) -> None:
        self.connector = connector
        self.what = what
        self._fetch = fetch
        self._breaker = breaker
        self._issuer = issuer
        self._target = target
        self._current: Credential | None = None
        self._lock = threading.Lock()  # one login at a time; the others wait for its credential
        self._state_lock = threading.Lock()
        self._refused_since: float | None = None
        self._refusals = 0

    @property
    def refused(self) -> bool:
        """Whether the bus's credentials stand refused (since the last refusal, until a request goes through)."""
        return self._refused_since is not None

    def use(self, deadline: float, send: Callable[[Credential], T], *, guard: bool = True) -> T:
        """``send(credential)`` with the current credential; once more with a fresh one if it raises :class:`Refused`.

        Args:
            deadline: the operation's deadline; the login and both sends share it.
            send: sends one request carrying the credential; raises :class:`Refused` when the target refused it.
            guard: False for a probe: the login bypasses the breaker too.

        Raises:
            CredentialsRefused: the issuer refused the bus's credentials, or the target refused a fresh one.
        """
        detail = ""
        for attempt in (1, 2):
            credential = self._get(deadline, guard=guard)
            try:
                result = send(credential)
            except Refused as exc:
                detail = exc.detail
                with self._lock:
                    if self._current is credential:
                        self._current = None
                log.info("credential_refused", connector=self.connector, what=self.what, attempt=attempt)
                continue
            self._accepted()
            return result
        raise self._refused(f"{self._target} refused a freshly issued {self.what} ({detail})")

    def _get(self, deadline: float, *, guard: bool) -> Credential:
        """The cached credential, or a new one; one thread logs in while the others wait for it."""
        with self._lock:
            current = self._current
            if current is None or time.monotonic() >= current.renew_at:
                try:
                    current = self._fetch(deadline, guard)
                except Refused as exc:
                    raise self._refused(f"{self._issuer} refused the bus's credentials ({exc.detail})") from None
                self._current = current
                log.info("credential_issued", connector=self.connector, what=self.what, lifetime_s=current.lifetime_s)
            return current

    def _refused(self, reason: str) -> CredentialsRefused:
        """Say it once per state change, open the breaker, and make the error the caller raises."""
        with self._state_lock:
            first = self._refused_since is None
            if first:
                self._refused_since = time.monotonic()
            self._refusals += 1
        if first:
            log.error("credentials_refused", connector=self.connector, what=self.what, reason=reason)
        self._breaker.trip(reason)
        return CredentialsRefused(
            f"{reason}: check the bus's account; events wait meanwhile", retry_after=self._breaker.reset_timeout
        )

    def _accepted(self) -> None:
        if self._refused_since is None:  # the hot path: one attribute read, no lock
            return
        with self._state_lock:
            since, self._refused_since = self._refused_since, None
            refusals, self._refusals = self._refusals, 0
        if since is not None:
            log.info(
                "credentials_accepted",
                connector=self.connector,
                what=self.what,
                refused_for_s=round(time.monotonic() - since, 1),
                refusals=refusals,
            )
