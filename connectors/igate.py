"""The iGate connector: writes the bus's notes and status updates onto dossiers in VNPT iGate, and reads them.

Where it sits: the connector step of every route that goes back into iGate (event → route → adapter →
**connector** → result/DLQ), e.g. ``dossier.received`` → ``igate_ack.dossier_received`` →
``igate.add_note``, and the result events → ``results_to_igate.status_update`` → ``igate.update_dossier``.

It is built on the connector kit (:mod:`connectors.kit`): an :class:`connectors._http.HttpClient` (breaker,
rate limit, deadline, reply cap, error translation), the kit's cached credential, probe and operation
declarations. Auth is Keycloak's password grant on realm ``digo`` (docs/domain.md section 1.4); the token is cached
until shortly before it expires and renewed once when iGate answers 401; Keycloak refusing the bus's
credentials is :class:`~schemas.errors.CredentialsRefused` (events wait for an operator, never
dead-lettered). The note, status and lookup calls are the [A]
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

from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from connectors._http import HttpClient, HttpReply, scrub_snippet
from connectors.base import credential, endpoint, required_option
from connectors.kit import CachedCredential, Credential, KitConnector, operation
from schemas.errors import (
    AmbiguousOutcome,
    MappingError,
    TargetGarbled,
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

R = TypeVar("R", bound=BaseModel)

DEFAULT_REALM: Final = "digo"
_NOT_FOUND: Final = 404
#: a service call refused for its token; the token endpoint refuses a grant with 400 (invalid_grant) or 401
_TOKEN_REFUSED: Final = frozenset({401})
_GRANT_REFUSED: Final = frozenset({400, 401})
#: longest idempotency key sent as ``clientRequestId``
MAX_KEY_CHARS: Final = 200


def _segment(code: str) -> str:
    return quote(code, safe="")


class IGateConnector(KitConnector):
    """VNPT iGate over REST: ``add_note``, ``update_dossier`` (effects, with lookup) and ``get_dossier``.

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; see the module docstring for options and credentials.

    Raises:
        ConfigError: no endpoint, no ``client_id``, or a credential's environment variable is unset.
    """

    PROBE_ANSWERED = "search answered"

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        url = endpoint(name, spec)
        self._client_id = required_option(name, spec, "client_id", "iGate's Keycloak client")
        realm = str(spec.options.get("realm", DEFAULT_REALM))
        self._token_url = str(
            spec.options.get("token_url")
            or f"{url.rstrip('/')}/auth/realms/{_segment(realm)}/protocol/openid-connect/token"
        )
        self._username = credential(name, spec, "username").get_secret_value()
        self._password = credential(name, spec, "password")
        self._client_secret = credential(name, spec, "client_secret") if "client_secret" in spec.credentials else None
        self._http = HttpClient(name, spec, extra_origins=(self._token_url,))
        super().__init__(name, spec, guard=self._http.guard)
        self._token = CachedCredential(
            name, self._fetch_token, breaker=self.guard.breaker, what="token", issuer="iGate's Keycloak", target="iGate"
        )

    # -- the Connector protocol -------------------------------------------------------------------------

    def check(self) -> float | None:
        """Search for one dossier (no side effects), bypassing the breaker; iGate's own time is the latency."""
        reply = self._call(
            "GET",
            "/pa/dossier/search",
            params={"page": 0, "size": 1},
            effect=False,
            expect=DossierPage,
            guard=False,
        )
        return reply.elapsed_ms

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    # -- operations -------------------------------------------------------------------------------------

    @operation(AddNoteRequest, AddNoteReply, lookup="lookup_note")
    def add_note(self, request: AddNoteRequest, idempotency_key: str) -> AddNoteReply:
        """Add a note to a dossier's history ([A] POST /pa/dossier/{code}/--bus-note), keyed ``clientRequestId``."""
        return self._effect("POST", "--bus-note", request, idempotency_key, AddNoteReply)

    @operation(UpdateDossierRequest, UpdateDossierReply, lookup="lookup_update")
    def update_dossier(self, request: UpdateDossierRequest, idempotency_key: str) -> UpdateDossierReply:
        """Write another system's result onto a dossier ([A] PUT /pa/dossier/{code}/--bus-status), keyed too."""
        return self._effect("PUT", "--bus-status", request, idempotency_key, UpdateDossierReply)

    @operation(GetDossierRequest, DossierReply, effect=False)
    def get_dossier(self, request: GetDossierRequest, idempotency_key: str = "") -> DossierReply:
        """Read a dossier (GET /pa/dossier/{code}); an unknown code is ``TargetRejected(code="404")``."""
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

    def _effect(
        self, method: str, action: str, request: AddNoteRequest | UpdateDossierRequest, key: str, model: type[R]
    ) -> R:
        """Send one effect on a dossier (``/pa/dossier/{code}/{action}``) with our key as ``clientRequestId``."""
        path = f"/pa/dossier/{_segment(request.dossier_code)}/{action}"
        return self._call(method, path, json_body=self._body(request, key), effect=True, expect=model).parse(model)

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
            raise TargetGarbled(
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
        """One authenticated call under one deadline, renewing the token once if iGate answers 401 (the kit)."""
        deadline = self.guard.deadline()

        def send(token: Credential) -> HttpReply:
            return self._http.request(
                method,
                path,
                deadline=deadline,
                effect=effect,
                json_body=json_body,
                params=params,
                headers={"Authorization": f"Bearer {token.value.get_secret_value()}"},
                accept=accept,
                refused=_TOKEN_REFUSED,
                expect=expect,
                guard=guard,
            )

        return self._token.use(deadline, send, guard=guard)

    def _fetch_token(self, deadline: float, guard: bool) -> Credential:
        """Keycloak's password grant: a token, or :class:`Refused` when it refuses the bus's credentials."""
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
            refused=_GRANT_REFUSED,
            expect=TokenReply,
            guard=guard,
            judge=False,
        )
        granted = reply.parse(TokenReply)
        return Credential.lasting(granted.access_token, float(granted.expires_in))
