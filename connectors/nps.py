"""The National Public Service Portal connector: syncs dossiers, their progress and ratings over SOAP.

Where it sits: the connector step of the portal routes (event → route → ``adapters/igate_to_nps.py`` →
**connector** → result/DLQ), e.g. ``dossier.received`` → ``igate_to_nps.dossier_received`` →
``nps.dong_bo_ho_so`` → a ``dvcqg.sync_result`` event on ``bus.results``. Each effect operation takes a
request model of :mod:`schemas.nps` and returns a :class:`schemas.nps.SyncResult`, which the route emits as
that event's payload unchanged.

The protocol is docs/domain.md section 2: the portal's services wrapped in SOAP 1.1 document/literal by an LGSP
proxy ([A]: no public SOAP contract exists; the contract is ``schemas/wsdl/nps.wsdl``). It is built on the
connector kit (:mod:`connectors.kit`): a :class:`connectors._soap.SoapClient` built once from that local
WSDL (hardened XML settings, breaker, rate limit, total deadline, reply cap, error translation), the kit's
cached credential, probe and operation declarations; this module adds what is particular to the portal:

- **The session** ([F] the adapter's login ``{username, password}`` → ``session``): fetched by ``XacThuc``
  on first use, cached until ``expires_in`` (less a margin) when the portal says, and renewed once when a
  call is refused with the fault ``Client.Session`` (the proxy refuses before the portal handles anything,
  so the call is safely sent again). Every other call carries ``session``, ``madonvi`` and our idempotency
  key as ``maYeuCau`` in the ``PhienLamViec`` header. The portal refusing the login, or a fresh session,
  is the bus's account at fault, not the record: :class:`~schemas.errors.CredentialsRefused` (events wait,
  the breaker opens, ``credentials_refused`` is logged once), never a dead letter.
- **Error codes** (:data:`schemas.nps.OK_CODES`: [F] "0" in TH's deployments, "00" in OC's, and "3"/"-3",
  which TH also takes as success): success becomes a ``SyncResult``; any other code is the portal rejecting
  the record, a :class:`~schemas.errors.TargetRejected` (dead-lettered at once, never retried) with the code
  and the portal's message, scrubbed. **"đã tồn tại"** ([F] TH): a create refused because the record exists
  is sent again at once as an update (``isUpdating=true``).
- **Progress in chunks of 10** ([F] TH). Each chunk but the last carries ``{key}.{n}`` as its request id
  and the last carries the key itself, and chunks go out in order, stopping at the first failure: when the
  portal knows the key, every chunk was applied.
- **Reconciliation by lookup** (docs/design.md): ``lookup(key)`` asks ``TraCuuHoSo`` by request id ([A] the proxy
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
same contract), ``chunk_size`` (progress steps a call, default 10), plus the kit's ``degraded_ms`` (probe
latency above which health is ``degraded``, default 2000) and ``ca_file``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from pydantic import BaseModel, SecretStr

from connectors._soap import WSDL_DIR, SoapClient, scrub_fault
from connectors.base import credential, endpoint, required_option
from connectors.kit import CachedCredential, Credential, KitConnector, Refused, operation
from schemas.errors import (
    AmbiguousOutcome,
    ConfigError,
    MappingError,
    TargetRejected,
    TargetUnavailable,
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
    from config.model import ConnectorSpec

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=NpsReply)

#: the WSDL's target namespace and binding
NAMESPACE: Final = "urn:dvcqg:lgsp:v1"
BINDING: Final = f"{{{NAMESPACE}}}DvcqgHoSoBinding"
WSDL_FILE: Final = WSDL_DIR / "nps.wsdl"
#: [F] TH sends progress steps in chunks of 10
DEFAULT_CHUNK: Final = 10
#: [A] the fault code with which the proxy refuses an unknown or expired session
SESSION_FAULT: Final = "soap:Client.Session"
#: the dossier code the probe asks for: a lookup of it is harmless whatever the portal answers
PROBE_CODE: Final = "PROBE-0"
#: longest idempotency key accepted (chunk suffixes must still fit the header's 100 characters)
MAX_KEY_CHARS: Final = 90
#: the portal's field names whose values its faults and messages may echo
PERSONAL_KEYS: Final = sensitive_field_names(
    [DongBoHoSoMCRequest, CapNhatTienDoHoSoMCRequest, DongBoDanhGiaRequest, XacThucRequest]
)
_KEY = re.compile(MA_YEU_CAU_PATTERN)
_SESSION_REFUSED: Final = frozenset({SESSION_FAULT})


class NpsConnector(KitConnector):
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

    PROBE_ANSWERED = "TraCuuHoSo answered"

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        url = endpoint(name, spec)
        self._madonvi = required_option(name, spec, "madonvi", "the province's agency code, QĐ 20")
        self._chunk = int(spec.options.get("chunk_size", DEFAULT_CHUNK))
        if not 1 <= self._chunk <= DEFAULT_CHUNK:
            raise ConfigError(f"connector {name!r}: options.chunk_size must be 1-{DEFAULT_CHUNK}")
        self._username = credential(name, spec, "username").get_secret_value()
        self._password = credential(name, spec, "password")
        wsdl = Path(str(spec.options["wsdl"])) if "wsdl" in spec.options else WSDL_FILE
        self._soap = SoapClient(name, spec, wsdl, binding=BINDING, address=url, log_as="nps", keys=PERSONAL_KEYS)
        super().__init__(name, spec, guard=self._soap.guard)
        self._session = CachedCredential(
            name, self._login, breaker=self.guard.breaker, what="session", issuer="the portal", target="the portal"
        )

    # -- the Connector protocol -------------------------------------------------------------------------

    def check(self) -> float | None:
        """Look up a dossier that does not exist (no side effects), bypassing the breaker."""
        self._service_call(
            "TraCuuHoSo",
            {"MaHoSo": PROBE_CODE},
            TraCuuHoSoReply,
            deadline=self.guard.deadline(),
            effect=False,
            key=None,
            guard=False,
        )
        return None

    def close(self) -> None:
        """Close the pooled connections."""
        self._soap.close()

    # -- operations -------------------------------------------------------------------------------------

    @operation(DongBoHoSoMCRequest, SyncResult, lookup="lookup_ho_so")
    def dong_bo_ho_so(self, request: DongBoHoSoMCRequest, idempotency_key: str) -> SyncResult:
        """Create or update dossier records (DongBoHoSoMC); an existing record ("đã tồn tại") is updated.

        Raises:
            TargetRejected: the portal refused the records (their code and its message in the error).
            TransientError: see :mod:`connectors._soap`.
        """
        key = self._check_key(idempotency_key)
        deadline = self.guard.deadline()
        body = request.wire()
        reply = self._service_call("DongBoHoSoMC", body, NpsReply, deadline=deadline, effect=True, key=key)
        if reply.already_exists and not request.isUpdating:
            log.info("nps.exists_send_update", connector=self.name, error_code=reply.error_code)
            body = {**body, "isUpdating": True}
            reply = self._service_call("DongBoHoSoMC", body, NpsReply, deadline=deadline, effect=True, key=key)
        return self._settle("DongBoHoSoMC", reply)

    @operation(CapNhatTienDoHoSoMCRequest, SyncResult, lookup="lookup_tien_do")
    def cap_nhat_tien_do(self, request: CapNhatTienDoHoSoMCRequest, idempotency_key: str) -> SyncResult:
        """Add processing steps (CapNhatTienDoHoSoMC), in chunks of 10, in order, stopping at the first refused.

        Raises:
            TargetRejected: the portal refused a chunk (the chunks before it were applied; sending them
                again is harmless).
            TransientError: see :mod:`connectors._soap`.
        """
        key = self._check_key(idempotency_key)
        deadline = self.guard.deadline()
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

    @operation(DongBoDanhGiaRequest, SyncResult, lookup="lookup_danh_gia")
    def dong_bo_danh_gia(self, request: DongBoDanhGiaRequest, idempotency_key: str) -> SyncResult:
        """[A] Send the citizen's rating of a dossier (DongBoDanhGia).

        Raises:
            TargetRejected: the portal refused it.
            TransientError: see :mod:`connectors._soap`.
        """
        key = self._check_key(idempotency_key)
        reply = self._service_call(
            "DongBoDanhGia", request.wire(), NpsReply, deadline=self.guard.deadline(), effect=True, key=key
        )
        return self._settle("DongBoDanhGia", reply)

    @operation(TraCuuHoSoRequest, TraCuuHoSoReply, effect=False)
    def tra_cuu_ho_so(self, request: TraCuuHoSoRequest, idempotency_key: str = "") -> TraCuuHoSoReply:
        """Read a dossier's state at the portal (TraCuuHoSo); an unknown dossier is a reply without ``result``.

        Raises:
            TargetRejected: the portal refused the question (an error code other than "not found").
            TransientError: see :mod:`connectors._soap`.
        """
        del idempotency_key  # a read needs no key
        reply = self._service_call(
            "TraCuuHoSo", request.wire(), TraCuuHoSoReply, deadline=self.guard.deadline(), effect=False, key=None
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

    def _settle(self, service: str, reply: NpsReply) -> SyncResult:
        """The ``SyncResult`` of an accepted call; a refused one is a permanent error."""
        message = scrub_fault(reply.message, keys=PERSONAL_KEYS, limit=1000)
        if reply.ok:
            return reply.to_sync_result(service, message=message)
        raise TargetRejected(f"{service} refused: error_code {reply.error_code}: {message}", code=reply.error_code)

    def _lookup(self, service: str, idempotency_key: str) -> SyncResult | None:
        key = self._check_key(idempotency_key)
        reply = self._service_call(
            "TraCuuHoSo", {"MaYeuCau": key}, TraCuuHoSoReply, deadline=self.guard.deadline(), effect=False, key=None
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
        """One portal call with the session, renewed once if the proxy refuses it (the kit's credential)."""

        def send(session: Credential) -> R:
            header = {"session": session.value.get_secret_value(), "madonvi": self._madonvi}
            if key is not None:
                header["maYeuCau"] = key
            return self._soap.call(
                operation,
                body,
                model,
                deadline=deadline,
                effect=effect,
                soap_headers={"header": header},
                refused=_SESSION_REFUSED,
                guard=guard,
            )

        return self._session.use(deadline, send, guard=guard)

    def _login(self, deadline: float, guard: bool) -> Credential:
        """``XacThuc``: a session, or :class:`Refused` when the portal refuses the bus's user and password."""
        body = {"username": self._username, "password": self._password.get_secret_value()}
        reply = self._soap.call(
            "XacThuc", body, XacThucReply, deadline=deadline, effect=False, guard=guard, judge=False
        )
        if not reply.ok or not reply.session:
            raise Refused(f"error_code {reply.error_code}: {scrub_fault(reply.message, keys=PERSONAL_KEYS)}")
        return Credential.lasting(SecretStr(reply.session), reply.expires_in)


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

    spec = ConnectorSpec(type="nps", endpoint="http://render.invalid/lgsp/dvcqg")
    client = SoapClient("render", spec, WSDL_FILE, binding=BINDING, address=str(spec.endpoint))
    try:
        wire = getattr(request, "wire", None)
        body = wire() if callable(wire) else request.model_dump(mode="json", exclude_none=True)
        header = {"session": "(session)", "madonvi": madonvi, "maYeuCau": "KEY"}
        return client.render(SERVICES[operation], body, soap_headers={"header": header})
    finally:
        client.close()
