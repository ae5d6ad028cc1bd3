"""The land system connector (VBDLIS/ILIS, "VILIS"): land dossiers to the land office, their files over SFTP.

Where it sits: the connector step of the ``vilis-*`` routes (event → route → ``adapters/igate_to_vilis.py`` →
**connector** → result/DLQ); the land office's answers come back the other way, through the ingress
callback (``bus/ingress/vilis.py``) as ``vilis.status_changed``.

The contract is the one-stop shop's VBDLIS/ILIS shape (docs/domain.md section 6): JSON ``POST {endpoint}/
tiepnhan`` (a new dossier), ``capnhattrangthaibosunghoso`` (supplement received), ``capnhattrangthaitraketquahoso``
(result returned), ``phanhoihososaiketqua`` (a wrong result reported), each answered ``{data, status{success,
code, message}}`` [F]. What the bus adds, each an assumption [A] the simulator (``simulators/vilis.py``) plays:

- **Documents over SFTP, not base64.** Before ``tiepnhan`` (or a supplement) is sent, every document with a
  file is uploaded from the spool (``adapters/igate_to_vilis.py`` says how it gets there) to the shared
  SFTP server as ``<dossier code>/<document code>-<file id>`` with ``connectors/_sftp.py`` (checked host
  key, read-back verified, at most once per key, resumed after a cut), and the request lists each file's
  path, size and SHA-256 in ``TapTin``. The request is sent only when every file is on the server whole.
- **Our key travels** as ``MaYeuCau``; ``GET tracuuyeucau?maYeuCau=KEY`` answers what the land office
  applied under it, so an attempt whose answer was lost is looked up before anything is sent again.
- **Auth**: HTTP Basic with the bus's account on every call (a password never expires: the kit's
  ``Credential.lasting``); 401 is the bus's credentials refused.

Error table (how each failure reaches :mod:`schemas.errors`):

  ===========================================  ===============================================================
  what happened                                raised
  ===========================================  ===============================================================
  connection refused, reset, timeout, 5xx      ``TargetUnavailable``/``TargetTimeout`` (``connectors/_http.py``;
                                               ``maybe_applied`` after the request went out)
  401                                          ``CredentialsRefused`` (breaker opens, messages wait)
  other 4xx                                    ``TargetRejected(code=<status>)``
  200 with ``status.success`` false            ``TargetRejected(code=<status.code>)``: the land office refused
                                               the dossier; its message, scrubbed of personal data, is the reason
  a reply that is not the answer's shape,      ``TargetGarbled`` (retried, then dead-lettered ``garbled``)
  not JSON, or over ``max_reply_bytes``
  a lookup 404 that does not name our key      ``TargetUnavailable(maybe_applied=True)``: never "not applied"
  a lookup naming another key or action        ``AmbiguousOutcome``
  a document missing from the spool, an        ``MappingError`` naming ``documents[i]`` (from the SFTP client)
  unsafe name
  SFTP: host key, login, cut, disk             as ``connectors/_sftp.py``'s table; a cut upload resumes on the
                                               next attempt, nothing is sent to the land system before it is
                                               whole
  ===========================================  ===============================================================

``connectors.yaml``::

    vilis:
      type: vilis
      endpoint: https://vilis.stnmt.daklak.gov.vn/api/motcua/
      timeout: {connect: 3s, read: 30s, total: 10m}   # total covers a dossier's uploads and the call
      credentials:
        username: IGATE_BUS_VILIS_USERNAME
        password: IGATE_BUS_VILIS_PASSWORD
        sftp_private_key: IGATE_BUS_VILIS_SFTP_KEY
      options:
        sftp_endpoint: sftp://sftp.stnmt.daklak.gov.vn:22/motcua
        sftp_username: igate-bus
        sftp_known_hosts: /etc/igate-bus/known_hosts
        spool_dir: /var/lib/igate-bus/spool/vilis

Options: ``sftp_endpoint``, ``sftp_username``, ``sftp_known_hosts``, ``spool_dir`` (required),
``sftp_host_key_alias``, ``sftp_ledger_dir``, ``sftp_max_file_bytes``; ``degraded_ms`` and the
:class:`connectors._http.HttpClient` options.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy.exc import SQLAlchemyError

from adapters.to_bus import CallbackRejected, canonical_json
from adapters.vilis_to_bus import VILIS_EVENT, vilis_action, vilis_event
from config.model import ConnectorSpec, parse_duration
from connectors._http import HttpClient
from connectors._sftp import SftpClient
from connectors._spool import Spool
from connectors.base import credential, required_option
from connectors.kit import CachedCredential, Credential, KitConnector, operation
from schemas.bus import Emission
from schemas.envelope import parse_event
from schemas.errors import (
    AmbiguousOutcome,
    ConfigError,
    InvalidEvent,
    MappingError,
    TargetGarbled,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
)
from schemas.events import EVENT_PAYLOADS
from schemas.pii import scrub_text
from schemas.results import CheckedFile, VilisChangeChecked
from schemas.vilis import (
    BoSungRequest,
    CheckChangeRequest,
    GiayTo,
    LandChanges,
    PollStaleRequest,
    SaiKetQuaRequest,
    SentFile,
    TiepNhanRequest,
    TraKetQuaRequest,
    VilisAnswer,
    VilisSent,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from connectors._http import HttpReply
    from connectors.kit.state import StateRow

T = TypeVar("T")
log = structlog.get_logger("igate_bus.connector")

#: the land system's paths for each operation (docs/domain.md section 6)
PATHS: Final = {
    "tiep_nhan": "tiepnhan",
    "bo_sung": "capnhattrangthaibosunghoso",
    "tra_ket_qua": "capnhattrangthaitraketquahoso",
    "sai_ket_qua": "phanhoihososaiketqua",
}
LOOKUP_PATH: Final = "tracuuyeucau"
POLL_PATH: Final = "danhsachthaydoi"
#: a dossier the land office has not reported on for this long is asked about by ``poll_stale``
DEFAULT_STALE_AFTER: Final = "1h"
PROBE_PATH: Final = "danhmuc/trangthai"
_NOT_FOUND: Final = 404
_REFUSED: Final = frozenset({401})
_SFTP_OPTIONS: Final = ("host_key_alias", "ledger_dir", "max_file_bytes", "requests_in_flight")


#: the connector state's namespace of the dossiers the bus handed to the land office (key: the dossier code)
SENT: Final = "dossiers"


class PolledChange(BaseModel):
    """A change the poll found: the ``vilis.status_changed`` payload it becomes, named by the land office's number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, max_length=200, description="<dossier>/<change number>: names the fact.")
    dossier_code: str
    occurred_at: datetime
    payload: dict[str, Any]


class VilisPolled(BaseModel):
    """What one poll found: the changes of the stale dossiers, and the changes it could not map (with why).

    ``result_events()`` gives each change to the engine as one ``vilis.status_changed`` on ``bus.results``,
    its id derived from the key (the same change polled twice is the same event, and is not applied twice).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    asked: int = Field(ge=0, description="Dossiers asked about.")
    changes: list[PolledChange] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list, description="Changes that did not map, with the reason.")

    def result_events(self) -> list[Emission]:
        """Each change as an emission: the engine publishes it with an id derived from its key."""
        return [
            Emission(
                key=c.key,
                event_type=VILIS_EVENT,
                payload=c.payload,
                dossier_code=c.dossier_code,
                occurred_at=c.occurred_at,
            )
            for c in self.changes
        ]


class LookupAnswer(BaseModel):
    """[A] ``GET tracuuyeucau?maYeuCau=KEY``: what the land office applied under our key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    MaYeuCau: str = Field(min_length=1, max_length=128)
    ThaoTac: str = Field(min_length=1, max_length=60)
    SoBienNhan: str = Field(min_length=1, max_length=60)
    data: int | None = None


def _duration(name: str, spec: ConnectorSpec, key: str, default: str) -> float:
    try:
        return parse_duration(str(spec.options.get(key, default)))
    except ValueError as exc:
        raise ConfigError(f"connector {name!r}: options.{key}: {exc}", field=f"options.{key}") from None


def sftp_spec(name: str, spec: ConnectorSpec) -> ConnectorSpec:
    """The SFTP half of the land connector's entry, as the spec :class:`SftpClient` reads."""
    options: dict[str, str | int | float | bool] = {
        "username": required_option(name, spec, "sftp_username", "the SFTP account"),
        "known_hosts": required_option(name, spec, "sftp_known_hosts", "the SFTP server's host key"),
    }
    options.update({k: spec.options[f"sftp_{k}"] for k in _SFTP_OPTIONS if f"sftp_{k}" in spec.options})
    creds = {k.removeprefix("sftp_"): v for k, v in spec.credentials.items() if k.startswith("sftp_")}
    return ConnectorSpec(
        type="sftp",
        endpoint=required_option(name, spec, "sftp_endpoint", "the shared SFTP server"),
        timeout=spec.timeout,
        breaker=spec.breaker,
        credentials=creds,
        options=options,
    )


def wire(request: BaseModel, idempotency_key: str | None) -> dict[str, Any]:
    """The JSON body the land system receives: the request with ``MaYeuCau`` (the spool paths left out)."""
    body = request.model_dump(mode="json", exclude_none=True)
    if idempotency_key is not None:
        body["MaYeuCau"] = idempotency_key
    return body


def render(operation_name: str, request: BaseModel) -> str:
    """What ``igate-bus map`` shows: the path and the body; file hashes are known only once uploaded."""
    path = PATHS.get(operation_name, operation_name)
    body = wire(request, "<idempotency key>")
    return f"POST {{endpoint}}/{path}\n{json.dumps(body, ensure_ascii=False, indent=2)}\n"


class VilisConnector(KitConnector):
    """The land system over REST, its documents over SFTP: a dossier, a supplement, a return, a wrong result.

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; see the module docstring.

    Raises:
        ConfigError: no endpoint, a missing option, an unset credential variable, a bad SFTP setting.
    """

    PROBE_ANSWERED = "status catalogue answered"

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        self._http = HttpClient(name, spec)
        super().__init__(name, spec, guard=self._http.guard)
        user = credential(name, spec, "username").get_secret_value()
        password = credential(name, spec, "password").get_secret_value()
        self._basic = SecretStr("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        self._auth = CachedCredential(
            name,
            self._password_credential,
            breaker=self.guard.breaker,
            what="password",
            issuer="the land system",
            target="the land system",
        )
        self.files = SftpClient(f"{name}-sftp", sftp_spec(name, spec))
        self.spool = Spool(name, required_option(name, spec, "spool_dir", "where the dossiers' files wait"))
        self.stale_after_s = _duration(name, spec, "poll_stale_after", DEFAULT_STALE_AFTER)

    def _password_credential(self, deadline: float, guard: bool) -> Credential:
        """The account, sent with every call: a credential that lasts until the land system refuses it."""
        del deadline, guard
        return Credential.lasting(self._basic, None)

    # -- the Connector protocol -------------------------------------------------------------------------

    def check(self) -> float | None:
        """Read the status catalogue (no side effect), bypassing the breaker."""
        return self._call("GET", PROBE_PATH, effect=False, guard=False).elapsed_ms

    def close(self) -> None:
        """Close the pooled connections (each SFTP operation closes its own)."""
        self._http.close()

    # -- operations -------------------------------------------------------------------------------------

    @operation(TiepNhanRequest, VilisSent, lookup="lookup")
    def tiep_nhan(self, request: TiepNhanRequest, idempotency_key: str) -> VilisSent:
        """Upload the dossier's files over SFTP, then hand the dossier to the land office (``tiepnhan``)."""
        docs, files = self._upload(request.SoBienNhan, request.DanhSachGiayToDinhKem, idempotency_key)
        body = request.model_copy(update={"DanhSachGiayToDinhKem": docs})
        sent = self._send("tiep_nhan", body, request.SoBienNhan, idempotency_key, files)
        self._remember(sent, idempotency_key)
        return sent

    @operation(BoSungRequest, VilisSent, lookup="lookup")
    def bo_sung(self, request: BoSungRequest, idempotency_key: str) -> VilisSent:
        """Upload the supplement's files, then tell the land office they came (``capnhattrangthaibosunghoso``)."""
        docs, files = self._upload(request.SoBienNhan, request.DanhSachGiayToBoSung, idempotency_key)
        body = request.model_copy(update={"DanhSachGiayToBoSung": docs})
        return self._send("bo_sung", body, request.SoBienNhan, idempotency_key, files)

    @operation(TraKetQuaRequest, VilisSent, lookup="lookup")
    def tra_ket_qua(self, request: TraKetQuaRequest, idempotency_key: str) -> VilisSent:
        """Tell the land office the result was handed back (``capnhattrangthaitraketquahoso``)."""
        return self._send("tra_ket_qua", request, request.SoBienNhan, idempotency_key, [])

    @operation(SaiKetQuaRequest, VilisSent, lookup="lookup")
    def sai_ket_qua(self, request: SaiKetQuaRequest, idempotency_key: str) -> VilisSent:
        """Report a wrong result back to the land office (``phanhoihososaiketqua``)."""
        return self._send("sai_ket_qua", request, request.SoBienNhan, idempotency_key, [])

    @operation(CheckChangeRequest, VilisChangeChecked, effect=False)
    def check_change(self, request: CheckChangeRequest, idempotency_key: str = "") -> VilisChangeChecked:
        """Check a land-office change before iGate hears of it: the bus sent that dossier; result files whole.

        Raises:
            TargetRejected: ``unknown_dossier`` when the bus never sent the dossier to the land office (no row
                in the connector's state); ``not_found`` when a result file is not on the server.
            TargetUnavailable: a result file's bytes do not hash to what the land office said (retried: a file
                still being written settles; after the route's attempts, dead-lettered).
        """
        del idempotency_key
        change = request.change
        if self._known(change.so_bien_nhan) is None:
            raise TargetRejected(
                f"unknown_dossier: the land system reported {change.kind} on dossier {change.so_bien_nhan}, which the "
                "bus never sent it",
                code="unknown_dossier",
                field="change.so_bien_nhan",
            )
        checked = []
        for i, file in enumerate(change.result_files):
            directory, _, name = file.path.rpartition("/")
            dest = self.spool.destination(f"ketqua/{file.path}", field=f"change.result_files[{i}].path")
            got = self.files.get(directory, name, dest, expected_sha256=file.sha256)
            checked.append(
                CheckedFile(
                    name=file.name,
                    path=file.path,
                    local_path=self.spool.relative(got.path),
                    size=got.size,
                    sha256=got.sha256,
                )
            )
        payload = change.model_dump(mode="json", exclude_none=True)
        payload["checked_files"] = [c.model_dump(mode="json") for c in checked]
        reply = VilisChangeChecked.model_validate(payload)
        self._state_io(
            lambda: self.state.update(
                SENT,
                change.so_bien_nhan,
                value={"last_kind": change.kind, "last_change_at": payload["at"]},
                status="finished" if change.kind == "ket_thuc" else "open",
                expect_status="open",  # a change seen again (polled twice) never reopens a finished dossier
            )
        )
        return reply

    @operation(PollStaleRequest, VilisPolled, effect=False)
    def poll_stale(self, request: PollStaleRequest, idempotency_key: str = "") -> VilisPolled:
        """Ask the land office for the changes of the open dossiers it has not reported on for a while.

        For deployments whose land system cannot call back: "a while" is ``options.poll_stale_after``.
        A dossier's changes are all asked for each time (the land office's numbers name them, so a change
        seen twice is one event); reporting on a dossier (``check_change``) makes it fresh again, and so does
        asking about it: a dossier is asked about at most once per ``poll_stale_after``, however far behind
        the checks are (else each poll would emit again every change still waiting to be checked). Safe because
        nothing is marked seen: if this poll's events are lost (the tick fails after the touch), the next ask
        of the dossier, one ``poll_stale_after`` later, finds them again.
        """
        del idempotency_key
        now = datetime.now(UTC)
        stale = [
            row
            for row in self._state_io(lambda: self.state.rows(SENT, status="open", limit=5000))
            if now - row.updated_at >= timedelta(seconds=self.stale_after_s)
        ][: request.limit]
        changes: list[PolledChange] = []
        refused: list[str] = []
        for row in stale:
            reply = self._call(
                "POST", POLL_PATH, effect=False, json_body={"SoBienNhan": row.key, "TuMa": 0, "SoLuong": 500}
            )
            self._touch(row.key)
            for change in reply.parse(LandChanges).data:
                key = f"{row.key}/{change.Ma}"
                try:  # the same mapping and the same strict parser (NFC text) as a callback's
                    data = vilis_event(vilis_action(change.ThaoTac), change.NoiDung, now=now)
                    event = parse_event(canonical_json(data), payload_models=EVENT_PAYLOADS, received_at=now)
                except CallbackRejected as exc:
                    refused.append(f"{key}: {exc.code}: {exc.detail}"[:500])
                    continue
                except InvalidEvent as exc:
                    refused.append(f"{key}: invalid: {exc}"[:500])
                    continue
                if event.envelope.dossier_code != row.key:
                    refused.append(f"{key}: the change names dossier {event.envelope.dossier_code!r}")
                    continue
                payload = event.as_dict()["payload"]
                changes.append(PolledChange(key=key, dossier_code=row.key, occurred_at=now, payload=payload))
        if refused:  # each reason may quote the land office's data: scrubbed like every reply text
            refused = [scrub_text(r) for r in refused]
            log.warning("vilis.poll_refused", connector=self.name, refused=refused[:20], count=len(refused))
        return VilisPolled(asked=len(stale), changes=changes, refused=refused)

    def lookup(self, idempotency_key: str) -> VilisSent | None:
        """What the land office applied under this key, or None when it applied nothing under it.

        Raises:
            TargetUnavailable: the lookup could not be answered (``maybe_applied``: a failed lookup never
                clears a claim).
            AmbiguousOutcome: the land office answered for another request.
        """
        try:
            reply = self._call(
                "GET", LOOKUP_PATH, effect=False, params={"maYeuCau": idempotency_key}, accept=frozenset({_NOT_FOUND})
            )
        except (TargetUnavailable, TargetTimeout, TargetGarbled) as exc:
            raise TargetUnavailable(f"lookup failed: {exc}", maybe_applied=True) from None
        if reply.status == _NOT_FOUND:
            try:
                named = json.loads(reply.body).get("MaYeuCau")
            except (ValueError, AttributeError):
                named = None
            if named != idempotency_key:  # a 404 of a missing route must not read as "never applied"
                raise TargetUnavailable(
                    "the land system's lookup answered a 404 that does not name the key", maybe_applied=True
                )
            return None
        try:
            found = reply.parse(LookupAnswer)
        except TargetGarbled as exc:
            raise TargetUnavailable(f"lookup failed: {exc}", maybe_applied=True) from None
        action = next((op for op, path in PATHS.items() if path == found.ThaoTac), None)
        if found.MaYeuCau != idempotency_key or action is None:
            raise AmbiguousOutcome(f"the land system's lookup of {idempotency_key!r} answered another request")
        sent = VilisSent(so_bien_nhan=found.SoBienNhan, action=action, record_id=found.data, message="tra cứu")
        if action == "tiep_nhan":
            self._remember(sent, idempotency_key)
        return sent

    # -- internals --------------------------------------------------------------------------------------

    def _upload(self, dossier: str, docs: list[GiayTo], key: str) -> tuple[list[GiayTo], list[SentFile]]:
        """Put each document's file on the SFTP server (at most once per key and file); the listed documents."""
        out: list[GiayTo] = []
        sent: list[SentFile] = []
        for i, doc in enumerate(docs):
            file = doc.TapTin
            if file is None:
                out.append(doc)
                continue
            field = f"documents[{i}]"
            with self.spool.open_source(file.NguonSpool, field=f"{field}.source") as (source, size):
                try:
                    put = self.files.put(
                        source, size, remote_dir=dossier, remote_name=file.TenTep, idempotency_key=f"{key}.{i}"
                    )
                except MappingError as exc:
                    raise MappingError(str(exc), field=f"{field}.{exc.field or 'file'}") from None
            placed = file.model_copy(update={"DuongDan": put.remote_path, "Sha256": put.sha256, "KichThuoc": put.size})
            out.append(doc.model_copy(update={"TapTin": placed}))
            sent.append(SentFile(code=doc.MaGiayTo, path=put.remote_path, size=put.size, sha256=put.sha256))
        return out, sent

    def _known(self, dossier: str) -> StateRow | None:
        """The bus's record that it handed ``dossier`` to the land office, or None when it never did."""
        return self._state_io(lambda: self.state.get(SENT, dossier))

    def _remember(self, sent: VilisSent, key: str) -> None:
        """Record that the land office has the dossier (once; a resend or a lookup finds the row there).

        A store failure after the land office applied the call keeps the claim maybe applied, so the
        redelivery asks the land office (the lookup), which records it then.
        """
        row = {"key": key, "record_id": sent.record_id, "files": len(sent.files)}
        self._state_io(lambda: self.state.put(SENT, sent.so_bien_nhan, row, status="open", if_absent=True))

    def _touch(self, dossier: str) -> None:
        """Mark ``dossier`` asked about now (it is stale again one ``poll_stale_after`` later), unless finished."""
        self._state_io(lambda: self.state.update(SENT, dossier, expect_status="open"))

    @staticmethod
    def _state_io(work: Callable[[], T]) -> T:
        try:
            return work()
        except SQLAlchemyError as exc:
            raise TargetUnavailable(
                f"the bus's store failed ({type(exc).__name__}) recording the land dossier", maybe_applied=True
            ) from None

    def _send(self, action: str, request: BaseModel, dossier: str, key: str, files: list[SentFile]) -> VilisSent:
        reply = self._call("POST", PATHS[action], effect=True, json_body=wire(request, key))
        answer = reply.parse(VilisAnswer)
        message = scrub_text(answer.status.message or "")[:500]
        if not answer.status.success:
            code = str(answer.status.code or "refused")[:40]
            raise TargetRejected(f"the land system refused {PATHS[action]} for {dossier}: {message}", code=code)
        return VilisSent(so_bien_nhan=dossier, action=action, record_id=answer.data, message=message, files=files)

    def _call(self, method: str, path: str, *, effect: bool, guard: bool = True, **extra: Any) -> HttpReply:
        """One call with the bus's account under one deadline; ``extra``: ``json_body``, ``params``, ``accept``."""
        deadline = self.guard.deadline()
        return self._auth.use(
            deadline,
            lambda auth: self._http.request(
                method,
                path,
                deadline=deadline,
                effect=effect,
                headers={"Authorization": auth.value.get_secret_value()},
                refused=_REFUSED,
                guard=guard,
                **extra,
            ),
            guard=guard,
        )
