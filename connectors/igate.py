"""The iGate connector: writes the bus's notes and status updates onto dossiers in VNPT iGate, and reads them.

Where it sits: the connector step of every route that goes back into iGate (event → route → adapter →
**connector** → result/DLQ), e.g. ``dossier.received`` → ``igate_ack.dossier_received`` →
``igate.add_note``, and the result events → ``results_to_igate.status_update`` → ``igate.update_dossier``.

Auth is Keycloak's password grant on realm ``digo`` (DOMAIN.md 1.4); the token is cached until shortly
before it expires and renewed once when iGate answers 401. The note, status and lookup calls are the [A]
ones described in :mod:`schemas.igate_api`; each effect carries our idempotency key as ``clientRequestId``
so :meth:`IGateConnector.lookup_note` / :meth:`IGateConnector.lookup_update` can tell whether an attempt
whose outcome was lost was applied. A side-effecting call is never repeated here, with one exception: a
401 is decided before iGate handles anything, so the request is sent once more with a fresh token.

``connectors.yaml``::

    igate:
      type: igate
      endpoint: https://dvcapi.daklak.gov.vn
      timeout: {connect: 3s, read: 10s, total: 15s}
      credentials: {username: IGATE_BUS_IGATE_USERNAME, password: IGATE_BUS_IGATE_PASSWORD}
      options: {client_id: igate-bus, realm: digo}

Options: ``client_id`` (required), ``realm`` (default ``digo``), ``token_url`` (default
``{endpoint}/auth/realms/{realm}/protocol/openid-connect/token``), ``degraded_ms`` (probe latency above
which health is ``degraded``, default 2000), plus the :class:`connectors._http.HttpClient` options.
Credentials: ``username`` and ``password`` (required), ``client_secret`` (for a confidential client).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar
from urllib.parse import quote

import structlog
from pydantic import BaseModel, SecretStr, ValidationError

from connectors._http import HttpClient, HttpReply, scrub_snippet
from connectors.base import Health, Operation, OperationSpec, credential, endpoint, required_option, typed
from schemas.errors import (
    AmbiguousOutcome,
    BusError,
    MappingError,
    TargetUnavailable,
)
from schemas.igate_api import (
    AddNoteReply,
    AddNoteRequest,
    BusRequestLookupReply,
    BusRequestMissing,
    BusRequestType,
    DossierPage,
    DossierReply,
    GetDossierRequest,
    TokenReply,
    UpdateDossierReply,
    UpdateDossierRequest,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from config.model import ConnectorSpec

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=BaseModel)
Q = TypeVar("Q", bound=BaseModel)

DEFAULT_REALM: Final = "digo"
#: renew a token this long before it expires, at most (a tenth of its life for short-lived tokens)
TOKEN_MARGIN_S: Final = 30.0
DEFAULT_DEGRADED_MS: Final = 2000.0
_UNAUTHORIZED: Final = 401
_NOT_FOUND: Final = 404
_TOKEN_REFUSED: Final = frozenset({400, 401})
#: longest idempotency key sent as ``clientRequestId``
MAX_KEY_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class _Token:
    value: SecretStr
    renew_at: float  # monotonic


def _segment(code: str) -> str:
    return quote(code, safe="")


class IGateConnector:
    """VNPT iGate over REST: ``add_note``, ``update_dossier`` (effects, with lookup) and ``get_dossier``.

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; see the module docstring for options and credentials.

    Raises:
        ConfigError: no endpoint, no ``client_id``, or a credential's environment variable is unset.
    """

    OPERATIONS: ClassVar[Mapping[str, OperationSpec]] = {
        "add_note": OperationSpec(
            request=AddNoteRequest,
            reply=AddNoteReply,
            effect=True,
            has_lookup=True,
            doc="Add a note to a dossier's history ([A] POST /pa/dossier/{code}/--bus-note).",
        ),
        "update_dossier": OperationSpec(
            request=UpdateDossierRequest,
            reply=UpdateDossierReply,
            effect=True,
            has_lookup=True,
            doc="Write another system's result onto a dossier ([A] PUT /pa/dossier/{code}/--bus-status).",
        ),
        "get_dossier": OperationSpec(
            request=GetDossierRequest,
            reply=DossierReply,
            effect=False,
            has_lookup=False,
            doc="Read a dossier (GET /pa/dossier/{code}).",
        ),
    }

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        self.name = name
        self.spec = spec
        url = endpoint(name, spec)
        self._client_id = required_option(name, spec, "client_id", "iGate's Keycloak client")
        realm = str(spec.options.get("realm", DEFAULT_REALM))
        self._token_url = str(
            spec.options.get("token_url")
            or f"{url.rstrip('/')}/auth/realms/{_segment(realm)}/protocol/openid-connect/token"
        )
        self._username = credential(self.name, self.spec, "username").get_secret_value()
        self._password = credential(self.name, self.spec, "password")
        self._client_secret = (
            credential(self.name, self.spec, "client_secret") if "client_secret" in spec.credentials else None
        )
        self._degraded_ms = float(spec.options.get("degraded_ms", DEFAULT_DEGRADED_MS))
        self._http = HttpClient(name, spec, extra_origins=(self._token_url,))
        self._token: _Token | None = None
        self._token_lock = threading.Lock()
        self._operations: Mapping[str, Operation] = {
            "add_note": Operation(
                "add_note",
                AddNoteRequest,
                AddNoteReply,
                typed(self.name, AddNoteRequest, self.add_note),
                self.lookup_note,
            ),
            "update_dossier": Operation(
                "update_dossier",
                UpdateDossierRequest,
                UpdateDossierReply,
                typed(self.name, UpdateDossierRequest, self.update_dossier),
                self.lookup_update,
            ),
            "get_dossier": Operation(
                "get_dossier",
                GetDossierRequest,
                DossierReply,
                typed(self.name, GetDossierRequest, self.get_dossier),
                None,
                effect=False,
            ),
        }

    # -- the Connector protocol -------------------------------------------------------------------------

    def operations(self) -> Mapping[str, Operation]:
        """``add_note``, ``update_dossier`` and ``get_dossier``."""
        return self._operations

    def probe(self) -> Health:
        """Search for one dossier (no side effects), bypassing the breaker; never raises.

        ``up`` when iGate answers in time, ``degraded`` when it answers slowly or the breaker is not closed,
        ``down`` when it does not answer properly.
        """
        started = time.monotonic()
        try:
            reply = self._call(
                "GET",
                "/pa/dossier/search",
                params={"page": 0, "size": 1},
                effect=False,
                expect=DossierPage,
                guard=False,
            )
        except BusError as exc:
            return Health(
                state="down",
                detail=f"{exc.kind}: {exc}",
                latency_ms=round((time.monotonic() - started) * 1000, 1),
                checked_at=datetime.now(UTC),
            )
        latency_ms = round(reply.elapsed_ms, 1)
        breaker = self._http.breaker_state
        if breaker != "closed":
            return Health("degraded", f"answers, but the breaker is {breaker}", latency_ms, datetime.now(UTC))
        if latency_ms > self._degraded_ms:
            return Health("degraded", f"slow: over {self._degraded_ms:g} ms", latency_ms, datetime.now(UTC))
        return Health("up", "search answered", latency_ms, datetime.now(UTC))

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    @property
    def breaker_state(self) -> str:
        """The breaker's state (for ``igate-bus status``)."""
        return self._http.breaker_state

    # -- operations -------------------------------------------------------------------------------------

    def add_note(self, request: AddNoteRequest, idempotency_key: str) -> AddNoteReply:
        """Add a note to the dossier's history; ``idempotency_key`` travels as ``clientRequestId``."""
        reply = self._call(
            "POST",
            f"/pa/dossier/{_segment(request.dossier_code)}/--bus-note",
            json_body=self._body(request, idempotency_key),
            effect=True,
            expect=AddNoteReply,
        )
        return reply.parse(AddNoteReply)

    def update_dossier(self, request: UpdateDossierRequest, idempotency_key: str) -> UpdateDossierReply:
        """Write a status, note and data onto the dossier; the key travels as ``clientRequestId``."""
        reply = self._call(
            "PUT",
            f"/pa/dossier/{_segment(request.dossier_code)}/--bus-status",
            json_body=self._body(request, idempotency_key),
            effect=True,
            expect=UpdateDossierReply,
        )
        return reply.parse(UpdateDossierReply)

    def get_dossier(self, request: GetDossierRequest, idempotency_key: str = "") -> DossierReply:
        """Read a dossier by code; a read needs no key. An unknown code is ``TargetRejected(code="404")``."""
        del idempotency_key
        path = f"/pa/dossier/{_segment(request.dossier_code)}"
        return self._call("GET", path, effect=False, expect=DossierReply).parse(DossierReply)

    def lookup_note(self, idempotency_key: str) -> AddNoteReply | None:
        """The reply to an earlier ``add_note`` sent with this key, or None when iGate applied none."""
        return self._lookup("note", idempotency_key, AddNoteReply)

    def lookup_update(self, idempotency_key: str) -> UpdateDossierReply | None:
        """The reply to an earlier ``update_dossier`` sent with this key, or None when iGate applied none."""
        return self._lookup("status", idempotency_key, UpdateDossierReply)

    # -- internals --------------------------------------------------------------------------------------

    @staticmethod
    def _body(request: BaseModel, idempotency_key: str) -> dict[str, Any]:
        if not 0 < len(idempotency_key) <= MAX_KEY_CHARS:
            raise MappingError(
                f"an effect needs an idempotency key of 1-{MAX_KEY_CHARS} characters", field="idempotency_key"
            )
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        body["clientRequestId"] = idempotency_key
        return body

    def _lookup(self, kind: BusRequestType, idempotency_key: str, model: type[R]) -> R | None:
        reply = self._call(
            "GET",
            "/pa/dossier/--bus-request",
            params={"clientRequestId": idempotency_key},
            effect=False,
            accept=frozenset({_NOT_FOUND}),
            expect=BusRequestLookupReply,
        )
        if reply.status == _NOT_FOUND:
            # A 404 from a missing route would read as "never applied" and cause a duplicate: believe only
            # the lookup endpoint's own 404, which names our key.
            try:
                missing = BusRequestMissing.model_validate_json(reply.body)
            except ValidationError:
                missing = None
            if missing is None or missing.client_request_id != idempotency_key:
                raise TargetUnavailable(
                    f"lookup answered a 404 that does not name the key (is --bus-request deployed?): "
                    f"{scrub_snippet(reply.body)}",
                    maybe_applied=True,
                )
            return None
        found = reply.parse(BusRequestLookupReply)
        if found.client_request_id != idempotency_key or found.type != kind:
            raise AmbiguousOutcome(
                f"lookup of {idempotency_key!r} answered a {found.type} for {found.client_request_id!r}, not a {kind}"
            )
        try:
            return model.model_validate(found.result)
        except ValidationError as exc:
            raise TargetUnavailable(
                f"lookup result is not a valid {model.__name__} ({exc.error_count()} errors)",
                maybe_applied=True,
            ) from None

    def _call(
        self,
        method: str,
        path: str,
        *,
        effect: bool,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        accept: frozenset[int] = frozenset(),
        expect: type[BaseModel] | None = None,
        guard: bool = True,
    ) -> HttpReply:
        """One authenticated call under one deadline, renewing the token once if iGate answers 401."""
        deadline = self._http.deadline()
        for attempt in (1, 2):
            token = self._bearer(deadline, guard=guard)
            reply = self._http.request(
                method,
                path,
                deadline=deadline,
                effect=effect,
                json_body=json_body,
                params=params,
                headers={"Authorization": f"Bearer {token.value.get_secret_value()}"},
                accept=accept | {_UNAUTHORIZED},
                expect=expect,
                guard=guard,
            )
            if reply.status != _UNAUTHORIZED:
                return reply
            with self._token_lock:
                if self._token is token:
                    self._token = None
            log.info("igate.token_refused", connector=self.name, attempt=attempt)
        # The bus's own credentials are wrong, not the message: wait in the delay queues for an operator to
        # fix them (a password rotation must not dead-letter every dossier), and say so loudly.
        log.error("igate.credentials_refused", connector=self.name)
        raise TargetUnavailable("iGate refused a freshly issued token (HTTP 401): check the bus's iGate account")

    def _bearer(self, deadline: float, *, guard: bool) -> _Token:
        """The cached token, or a new one; one thread fetches while the others wait for it."""
        with self._token_lock:
            token = self._token
            if token is None or time.monotonic() >= token.renew_at:
                token = self._token = self._fetch_token(deadline, guard=guard)
            return token

    def _fetch_token(self, deadline: float, *, guard: bool) -> _Token:
        form = {
            "grant_type": "password",
            "client_id": self._client_id,
            "username": self._username,
            "password": self._password.get_secret_value(),
        }
        if self._client_secret is not None:
            form["client_secret"] = self._client_secret.get_secret_value()
        reply = self._http.request(
            "POST",
            self._token_url,
            deadline=deadline,
            effect=False,
            form=form,
            accept=_TOKEN_REFUSED,
            expect=TokenReply,
            guard=guard,
        )
        if reply.status in _TOKEN_REFUSED:
            # A credentials problem is the operator's to fix, not the message's: transient, so every event
            # waits in the delay queues instead of being dead-lettered during a password rotation.
            snippet = scrub_snippet(reply.body)
            log.error("igate.credentials_refused", connector=self.name, status=reply.status)
            raise TargetUnavailable(f"iGate's Keycloak refused the bus's credentials (HTTP {reply.status}): {snippet}")
        granted = reply.parse(TokenReply)
        lifetime = float(granted.expires_in)
        log.info("igate.token_issued", connector=self.name, expires_in=granted.expires_in)
        return _Token(granted.access_token, time.monotonic() + lifetime - min(TOKEN_MARGIN_S, lifetime / 10))
