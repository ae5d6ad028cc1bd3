"""The Finance e-receipt connector: issues one receipt per kind of fee of a payment, exactly once, and cancels them.

Where it sits: the connector step of the receipt routes (``payment.settled`` → ``receipt-issue-phi`` /
``receipt-issue-lephi`` → ``adapters/igate_to_receipt.py`` → **connector** → ``receipt.issued`` on
``bus.results``, which ``results-to-igate`` writes on the dossier). The protocol is docs/domain.md section 4
(VNPT Invoice over SOAP 1.1, ``schemas/wsdl/receipt.wsdl``), sent through the connector kit: a
:class:`connectors._soap.SoapClient` built once from the local WSDL (DTDs and entities refused, breaker, rate
limit, total deadline, reply cap, every failure translated as that module's table says), the kit's probe
and operation declarations. A password travels with every call, so the credential is a lasting one.

**Exactly once.** The service's ``fkey`` (``{kind}-{payment_ref}``, from the payment, never from the event)
is the receipt's identity, and the service issues at most one receipt per fkey. Before any attempt that may
follow an earlier one (an ambiguous outcome of this event, or any earlier event of the same payment: the
connector's state says so), the receipt is looked up by fkey (``listInvByCusFkey``) and a valid one is
returned without issuing. ``ERR:13`` ("key already used") means the same: fetch it. A fetched receipt whose
amount differs from the request's, or one that was cancelled or replaced, is refused (dead-lettered for a
person, never reported as valid, never issued again).

Error table (what the service answered → what is raised):

=====================================================  ==============================================================
``OK:pattern;serial-fkey_number`` (issue)              ``IssuedReceipt``
``ERR:13`` (issue)                                     fetch by fkey: valid and same amount → ``IssuedReceipt``;
                                                       another amount → ``TargetRejected(code="amount_mismatch")``;
                                                       cancelled/replaced → ``TargetRejected(code="cancelled")``;
                                                       not found → ``TargetUnavailable(maybe_applied=True)``
``ERR:1``, ``ERR:7`` (the account refused), or a      :class:`~schemas.errors.CredentialsRefused` (after one resend;
credential's variable unset (read on first use)        events wait, the breaker opens); nothing is sent
``ERR:5`` (publish failed)                             ``TargetUnavailable(maybe_applied=True)``: reconcile first
``ERR:6`` (out of numbers)                             ``TargetUnavailable(maybe_applied=False)``
any other ``ERR:n``                                    ``TargetRejected(code="ERR:n")`` with the meaning
neither ``OK:`` nor ``ERR:n``, a malformed OK, a       ``TargetGarbled(maybe_applied=effect)``
lookup that is not ``<Data>`` XML, an OK for another
fkey
transport, HTTP, SOAP faults, hostile XML              as :mod:`connectors._soap`
=====================================================  ==============================================================

No reply body is ever quoted in an error: only the ERR code and its meaning.

**What the bus saw** (connector state, ``self.state``, attached by the worker). Before anything is sent, each
receipt the connector is asked for is recorded under ``receipt.payments`` (key: the fkey; value: payment,
kind, amount, dossier, the day paid and the day first asked; status ``issuing``, then ``issued`` or
``cancelled``), indexed by that day under ``receipt.day.YYYY-MM-DD``, and each idempotency key under
``receipt.keys`` (its fkey); the first request to cancel an fkey owns its cancellation (``receipt.cancels``:
another one waits, transient, until the receipt shows cancelled). The engine's lookup by idempotency key
reads the fkey there (no row: nothing was ever sent under that key), and the daily reconciliation
(:meth:`ReceiptConnector.reconcile`) reads the day.

``connectors.yaml``::

    receipt:
      type: receipt
      endpoint: http://127.0.0.1:8606/PublishService.asmx
      timeout: {connect: 3s, read: 15s, total: 30s}
      credentials: {account: IGATE_BUS_RECEIPT_ACCOUNT, account_password: IGATE_BUS_RECEIPT_ACPASS,
                    username: IGATE_BUS_RECEIPT_USERNAME, password: IGATE_BUS_RECEIPT_PASSWORD}
      options: {pattern: 01BLP0-001, serial: AA-19E}

Options: ``pattern`` and ``serial`` (required: the receipt template and series registered for the unit),
``wsdl`` (another local WSDL of the same contract), and the kit's ``degraded_ms`` and ``ca_file``.

**The daily reconciliation** (``reconcile``, a read): the service drops a day's receipts as
``receipts-YYYYMMDD.csv`` on its SFTP server (``schemas/receipt_reconcile.py`` has the [A] format); the
connector fetches it through :class:`connectors._sftp.SftpClient` (host key checked, whole file, size-capped),
compares it with the day's payments in its state (:func:`schemas.receipt_reconcile.compare`) and writes
``receipts-YYYY-MM-DD.json`` and ``.txt`` into ``options.report_dir`` (default ``var/reports``). The SFTP
server is given by ``options.files_endpoint`` (``sftp://host:port/dir``), ``files_username``,
``files_known_hosts`` (and ``files_host_key_alias``), ``files_dir`` (the folder of the files under it), and
``credentials.files_private_key`` (with ``files_passphrase``) or ``files_password``.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import structlog
from pydantic import BaseModel, Field, RootModel, SecretStr

from config.model import ConnectorSpec
from connectors._sftp import SftpClient
from connectors._soap import WSDL_DIR, SoapClient
from connectors.base import credential, endpoint, required_option
from connectors.kit import CachedCredential, Credential, KitConnector, Refused, operation
from schemas.bus import Emission
from schemas.errors import ConfigError, TargetGarbled, TargetRejected, TargetUnavailable
from schemas.nps import ICT
from schemas.receipt import (
    CREDENTIAL_ERRORS,
    ERR_DUPLICATE_FKEY,
    ERR_MEANINGS,
    Answer,
    CancelReceipt,
    FoundReceipt,
    IssueReceipt,
    ReceiptCancelled,
    parse_found,
    parse_issued,
)
from schemas.receipt_reconcile import (
    MAX_FILE_BYTES,
    FileProblem,
    ReceiptsReconciled,
    ReconcileDay,
    SeenPayment,
    compare,
    file_name,
    parse_receipts_file,
    render_text,
)
from schemas.results import ReceiptIssued

log = structlog.get_logger(__name__)

NAMESPACE: Final = "http://tempuri.org/"
BINDING: Final = f"{{{NAMESPACE}}}ReceiptServiceSoap"
WSDL_FILE: Final = WSDL_DIR / "receipt.wsdl"
#: stands in a request body for the account fields, filled in when the call is sent
ACCOUNT: Final = "(account)"
#: the fkey the probe looks up: a lookup is harmless whatever it answers
PROBE_FKEY: Final = "phi-PROBE"
#: the state namespaces (see the module docstring)
PAYMENTS_NS: Final = "receipt.payments"
KEYS_NS: Final = "receipt.keys"
#: which request owns the cancellation of an fkey (the first one asked)
CANCELS_NS: Final = "receipt.cancels"
#: the day index: ``receipt.day.YYYY-MM-DD`` holds the fkeys first asked for that day (Vietnam time)
DAY_NS_PREFIX: Final = "receipt.day."
#: rows read from the state at a time
STATE_PAGE: Final = 500
#: where the reconciliation reports go unless ``options.report_dir`` says
DEFAULT_REPORT_DIR: Final = "var/reports"
#: [A] the date range a lookup by fkey covers (dd/MM/yyyy); an fkey is unique over all time
_ALL_TIME: Final = ("01/01/2000", "31/12/2099")


def day_ns(day: str) -> str:
    """The state namespace of the fkeys first asked for on ``day`` (``YYYY-MM-DD``)."""
    return f"{DAY_NS_PREFIX}{day}"


class IssuedReceipt(ReceiptIssued):
    """``issue``'s reply: the receipt, and the dossier it is for; it is told to iGate once per fkey.

    Its one result event is named by the fkey (:meth:`result_events`), so every event of one payment (a
    duplicate ``payment.settled``, a DLQ replay) gives iGate the same ``receipt.issued``, deduplicated there.
    """

    dossier_code: str | None = Field(default=None, max_length=60)

    def result_events(self) -> list[Emission]:
        """One ``receipt.issued``, keyed by the fkey (the receipt), never by the event that asked for it."""
        payload = self.model_dump(mode="json", exclude={"dossier_code"}, exclude_none=True)
        when = self.issued_at or datetime.now(ICT)
        return [
            Emission(
                key=self.fkey,
                event_type="receipt.issued",
                payload=payload,
                dossier_code=self.dossier_code,
                occurred_at=when,
            )
        ]


def _issued(
    fkey: str, pattern: str, serial: str, number: str, amount_vnd: int, dossier_code: str | None
) -> IssuedReceipt:
    """The reply for a receipt the service holds; ``issued_at`` is when the bus learnt it (RFC 3339 text)."""
    return IssuedReceipt.model_validate(
        {
            "fkey": fkey,
            "pattern": pattern,
            "serial": serial,
            "number": number,
            "provider": "vnpt",
            "amount_vnd": amount_vnd,
            "issued_at": datetime.now(ICT).isoformat(timespec="seconds"),
            "dossier_code": dossier_code,
        }
    )


class SoapText(RootModel[str]):
    """A service answer that is one string (``OK:…``, ``ERR:n`` or an XML document)."""


class ReceiptConnector(KitConnector):
    """The e-receipt service over SOAP: ``issue`` and ``cancel``, each with a lookup, and ``reconcile`` (a read).

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; see the module docstring for options and credentials.

    Raises:
        ConfigError: no endpoint, pattern or serial, a credential's variable unset, or the WSDL does not load.
    """

    PROBE_ANSWERED = "listInvByCusFkey answered"

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        url = endpoint(name, spec)
        self._pattern = required_option(name, spec, "pattern", "the receipt template (mẫu số) registered")
        self._serial = required_option(name, spec, "serial", "the receipt series (ký hiệu) registered")
        # the credentials are read when first needed (a worker whose receipt variables are unset starts, and
        # its receipt messages wait as for a refused account, instead of the whole worker refusing to start)
        self._account = ""
        self._account_password = SecretStr("")
        self._username = ""
        wsdl = Path(str(spec.options["wsdl"])) if "wsdl" in spec.options else WSDL_FILE
        self._soap = SoapClient(name, spec, wsdl, binding=BINDING, address=url, log_as="receipt")
        super().__init__(name, spec, guard=self._soap.guard)
        self._files = _files_client(name, spec)
        self._files_dir = str(spec.options.get("files_dir", ""))
        self._report_dir = Path(str(spec.options.get("report_dir", DEFAULT_REPORT_DIR)))
        self._password = CachedCredential(
            name,
            lambda _deadline, _guard: self._read_credentials(),
            breaker=self.guard.breaker,
            what="account",
            issuer="the e-receipt service",
            target="the e-receipt service",
        )

    # -- the Connector protocol -------------------------------------------------------------------------

    def check(self) -> float | None:
        """Look up an fkey that is never issued (no side effects), bypassing the breaker."""
        self._call_text("listInvByCusFkey", self._lookup_body(PROBE_FKEY), effect=False, guard=False)
        return None

    def close(self) -> None:
        """Close the pooled connections."""
        self._soap.close()

    # -- operations -------------------------------------------------------------------------------------

    @operation(IssueReceipt, IssuedReceipt, lookup="lookup_issue")
    def issue(self, request: IssueReceipt, idempotency_key: str) -> IssuedReceipt:
        """Issue the receipt of one kind of fee of a payment, once per fkey (ImportAndPublishInv).

        Raises:
            TargetRejected: the service refused it (ERR:n), or the fkey's receipt exists with another amount,
                or was cancelled.
            TransientError: see the module's table.
        """
        seen_before = self._remember(request, idempotency_key)
        if seen_before:  # an earlier attempt for this payment may have issued it: ask before issuing
            found = self._find_one(request.fkey)
            if found is not None:
                return self._as_issued(found, request)
        body = {
            "Account": ACCOUNT,
            "ACpass": ACCOUNT,
            "xmlInvData": request.xml(),
            "pattern": self._pattern,
            "serial": self._serial,
            "convert": 0,
        }
        answer_text = self._call_text("ImportAndPublishInv", body, effect=True, login=("username", "password"))
        answer = self._answer(answer_text, "ImportAndPublishInv", effect=True)
        if answer.ok:
            try:
                pattern, serial, number = parse_issued(answer_text, request.fkey)
            except ValueError as exc:
                raise TargetGarbled(f"ImportAndPublishInv: {exc}", maybe_applied=True) from None
            issued = _issued(request.fkey, pattern, serial, number, request.total_vnd, request.dossier_code)
            self._settled(request.fkey, "issued", number=number)
            return issued
        if answer.code == ERR_DUPLICATE_FKEY:
            log.info("receipt.fkey_used_fetching", connector=self.name, fkey=request.fkey)
            found = self._find_one(request.fkey)
            if found is None:
                raise TargetUnavailable(
                    f"ERR:13 for {request.fkey} but its lookup finds no receipt", maybe_applied=True
                )
            return self._as_issued(found, request)
        raise self._refusal("ImportAndPublishInv", answer)

    @operation(CancelReceipt, ReceiptCancelled, lookup="lookup_cancel")
    def cancel(self, request: CancelReceipt, idempotency_key: str) -> ReceiptCancelled:
        """Cancel the receipt of an fkey: UnConfirmPaymentFkey, then cancelInv; one already cancelled is done.

        Raises:
            TargetRejected: no receipt has that fkey, or the service refused a step.
            TransientError: see the module's table.
        """
        self.state.put(KEYS_NS, idempotency_key, {"fkey": request.fkey, "op": "cancel"}, if_absent=True)
        # one cancellation per receipt: the first request owns it; another waits until it is done
        self.state.put(CANCELS_NS, request.fkey, {"key": idempotency_key}, if_absent=True)
        owner = self.state.get(CANCELS_NS, request.fkey)
        found = self._find_one(request.fkey)
        if found is None:
            raise TargetRejected(f"no receipt has fkey {request.fkey}", code="not_found")
        if found.status == "valid" and owner is not None and owner.value.get("key") != idempotency_key:
            raise TargetUnavailable(f"another request is cancelling {request.fkey}; this one waits for it")
        if found.status == "valid":
            for operation_name, body in (
                ("UnConfirmPaymentFkey", {"lstFkey": request.fkey}),
                (
                    "cancelInv",
                    {
                        "Account": ACCOUNT,
                        "ACpass": ACCOUNT,
                        "fkey": request.fkey,
                    },
                ),
            ):
                text = self._call_text(operation_name, body, effect=True, login=("userName", "userPass"))
                answer = self._answer(text, operation_name, effect=True)
                if not answer.ok:
                    raise self._refusal(operation_name, answer)
        self._settled(request.fkey, "cancelled", number=found.number)
        return ReceiptCancelled(fkey=found.fkey, pattern=found.pattern, serial=found.serial, number=found.number)

    @operation(ReconcileDay, ReceiptsReconciled, effect=False)
    def reconcile(self, request: ReconcileDay, idempotency_key: str = "") -> ReceiptsReconciled:
        """Compare the service's receipts file of a day with the payments the bus saw; write the report.

        Raises:
            ConfigError: no ``files_endpoint`` configured.
            TargetUnavailable: the day's file is not on the server yet (try later), or SFTP failed.
            TargetRejected: the file breaks the contract (its name, line and column in the message).
        """
        del idempotency_key
        if self._files is None:
            raise ConfigError(f"connector {self.name!r}: reconciliation needs options.files_endpoint", field="options")
        name = file_name(request.day)
        with tempfile.TemporaryDirectory(prefix="igate-bus-receipts-") as tmp:
            try:
                got = self._files.get(self._files_dir, name, Path(tmp) / name, max_bytes=MAX_FILE_BYTES)
            except TargetRejected as exc:
                if exc.code == "not_found":
                    raise TargetUnavailable(f"{name} is not on the service's SFTP server yet") from None
                raise
            data = got.path.read_bytes()
        try:
            receipts = parse_receipts_file(data, name=name)
        except FileProblem as exc:
            raise TargetRejected(str(exc), code="bad_file") from None
        seen = self._seen_on(request.day.isoformat())
        known = {p.fkey for p in seen}
        elsewhere = {
            r.fkey: found for r in receipts if r.fkey not in known and (found := self._seen(r.fkey)) is not None
        }
        result = compare(request.day, seen, receipts, seen_elsewhere=elsewhere, file=name, file_sha256=got.sha256)
        self._write_report(result)
        log.info(
            "receipt.reconciled",
            connector=self.name,
            day=request.day.isoformat(),
            payments=result.payments,
            receipts=result.receipts,
            findings=len(result.findings),
        )
        return result

    def lookup_issue(self, idempotency_key: str) -> IssuedReceipt | None:
        """The receipt an earlier ``issue`` with this key issued, or None when it issued none.

        Raises:
            TargetRejected: the fkey's receipt was cancelled or replaced since (never reported valid).
        """
        row = self.state.get(KEYS_NS, idempotency_key)
        if row is None:
            return None  # recorded before any send: no row, nothing was sent under this key
        found = self._find_one(str(row.value["fkey"]))
        if found is None:
            return None
        payment = self.state.get(PAYMENTS_NS, found.fkey)
        amount = payment.value.get("amount_vnd") if payment is not None else None
        dossier = payment.value.get("dossier_code") if payment is not None else None
        issued = self._checked(
            found,
            amount if isinstance(amount, int) else found.amount_vnd,
            dossier_code=str(dossier) if dossier else None,
        )
        self._settled(found.fkey, "issued", number=found.number)
        return issued

    def lookup_cancel(self, idempotency_key: str) -> ReceiptCancelled | None:
        """The cancellation an earlier ``cancel`` with this key made, or None when its receipt is still valid."""
        row = self.state.get(KEYS_NS, idempotency_key)
        if row is None:
            return None
        found = self._find_one(str(row.value["fkey"]))
        if found is None or found.status == "valid":
            return None
        return ReceiptCancelled(fkey=found.fkey, pattern=found.pattern, serial=found.serial, number=found.number)

    # -- internals --------------------------------------------------------------------------------------

    def _remember(self, request: IssueReceipt, idempotency_key: str) -> bool:
        asked_on = datetime.now(ICT).date().isoformat()
        """Record the payment and the key before sending; whether the payment was asked for before."""
        self.state.put(KEYS_NS, idempotency_key, {"fkey": request.fkey, "op": "issue"}, if_absent=True)
        value = {
            "payment_ref": request.payment_ref,
            "kind": request.kind,
            "amount_vnd": request.total_vnd,
            "dossier_code": request.dossier_code,
            "paid_on": request.paid_on.isoformat(),
            "asked_on": asked_on,
        }
        first = self.state.put(PAYMENTS_NS, request.fkey, value, status="issuing", if_absent=True)
        if first:  # the day's index the reconciliation reads (the service's file lists a day's receipts)
            self.state.put(day_ns(asked_on), request.fkey, {"amount_vnd": request.total_vnd}, if_absent=True)
        return not first

    def _settled(self, fkey: str, status: str, *, number: str) -> None:
        row = self.state.get(PAYMENTS_NS, fkey)
        if row is not None:
            self.state.update(PAYMENTS_NS, fkey, value={**row.value, "number": number}, status=status)

    def _read_credentials(self) -> Credential:
        """The four secrets from the environment; one unset is the bus's account refused (an operator's problem)."""
        spec = self.spec
        try:
            self._account = credential(self.name, spec, "account").get_secret_value()
            self._account_password = credential(self.name, spec, "account_password")
            self._username = credential(self.name, spec, "username").get_secret_value()
            password = credential(self.name, spec, "password")
        except ConfigError as exc:
            raise Refused(str(exc)) from None
        return Credential.lasting(password, None)

    def _seen(self, fkey: str) -> SeenPayment | None:
        row = self.state.get(PAYMENTS_NS, fkey)
        if row is None:
            return None
        return SeenPayment(fkey=fkey, amount_vnd=int(row.value["amount_vnd"]), cancelled=row.status == "cancelled")

    def _seen_on(self, day: str) -> list[SeenPayment]:
        """The receipts first asked for on ``day``, paged through the day's index."""
        out: list[SeenPayment] = []
        after: str | None = None
        while True:
            page = self.state.rows(day_ns(day), after_key=after, limit=STATE_PAGE)
            for row in page:
                found = self._seen(row.key)
                out.append(found or SeenPayment(fkey=row.key, amount_vnd=int(row.value["amount_vnd"])))
            if len(page) < STATE_PAGE:
                return out
            after = page[-1].key

    def _write_report(self, result: ReceiptsReconciled) -> None:
        """``receipts-YYYY-MM-DD.json`` and ``.txt`` in the report folder, each replaced whole (never half-written)."""
        self._report_dir.mkdir(parents=True, exist_ok=True)
        stem = self._report_dir / f"receipts-{result.day.isoformat()}"
        for suffix, text in ((".json", result.model_dump_json(indent=2)), (".txt", render_text(result))):
            target = stem.with_suffix(suffix)
            partial = target.with_name(f".{target.name}.part")
            partial.write_text(text, encoding="utf-8")
            partial.replace(target)

    def _as_issued(self, found: FoundReceipt, request: IssueReceipt) -> IssuedReceipt:
        issued = self._checked(found, request.total_vnd, dossier_code=request.dossier_code)
        self._settled(request.fkey, "issued", number=found.number)
        return issued

    @staticmethod
    def _checked(found: FoundReceipt, amount_vnd: int, *, dossier_code: str | None) -> IssuedReceipt:
        """A fetched receipt as the result, if it is valid and for the amount asked; never a cancelled one."""
        if found.status != "valid":
            raise TargetRejected(
                f"the receipt of {found.fkey} (number {found.number}) is {found.status}: it is not issued again",
                code="cancelled",
            )
        if found.amount_vnd != amount_vnd:
            raise TargetRejected(
                f"the receipt of {found.fkey} is for {found.amount_vnd} VND, this payment is {amount_vnd} VND",
                code="amount_mismatch",
            )
        return _issued(found.fkey, found.pattern, found.serial, found.number, found.amount_vnd, dossier_code)

    def _find_one(self, fkey: str) -> FoundReceipt | None:
        """The fkey's receipt at the service, or None; a lookup that cannot say raises (maybe applied)."""
        text = self._call_text("listInvByCusFkey", self._lookup_body(fkey), effect=False)
        if text.startswith("ERR:"):
            answer = self._answer(text, "listInvByCusFkey", effect=False)
            raise TargetUnavailable(f"lookup of {fkey} answered ERR:{answer.code}", maybe_applied=True)
        try:
            found = [f for f in parse_found(text) if f.fkey == fkey]
        except ValueError as exc:
            raise TargetGarbled(f"listInvByCusFkey: {exc}", maybe_applied=True) from None
        if len(found) > 1:
            raise TargetRejected(f"the service holds {len(found)} receipts for {fkey}", code="duplicate")
        return found[0] if found else None

    def _lookup_body(self, fkey: str) -> dict[str, Any]:
        return {"key": fkey, "fromDate": _ALL_TIME[0], "toDate": _ALL_TIME[1]}

    def _call_text(
        self,
        operation_name: str,
        body: dict[str, Any],
        *,
        effect: bool,
        guard: bool = True,
        login: tuple[str, str] = ("userName", "userPass"),
    ) -> str:
        """One call with the account's password; ERR:1/ERR:7 is the password refused (renewed once)."""
        deadline = self.guard.deadline()

        def send(password: Credential) -> str:
            full = {**body, login[0]: self._username, login[1]: password.value.get_secret_value()}
            if "Account" in body:  # the unit's account, for the calls that take it
                full |= {"Account": self._account, "ACpass": self._account_password.get_secret_value()}
            text = self._soap.call(operation_name, full, SoapText, deadline=deadline, effect=effect, guard=guard).root
            if text.startswith("ERR:"):
                code = self._answer(text, operation_name, effect=effect).code
                if code in CREDENTIAL_ERRORS:
                    raise Refused(f"ERR:{code} ({ERR_MEANINGS.get(code or 0, 'unknown')})")
            return text

        return self._password.use(deadline, send, guard=guard)

    @staticmethod
    def _answer(text: str, operation_name: str, *, effect: bool) -> Answer:
        try:
            return Answer.parse(text)
        except ValueError:
            raise TargetGarbled(f"{operation_name}: an answer neither OK: nor ERR:n", maybe_applied=effect) from None

    @staticmethod
    def _refusal(operation_name: str, answer: Answer) -> Exception:
        code = answer.code or 0
        meaning = ERR_MEANINGS.get(code, "unknown error")
        if code == 5:
            return TargetUnavailable(f"{operation_name} answered ERR:5 ({meaning})", maybe_applied=True)
        if code == 6:
            return TargetUnavailable(f"{operation_name} answered ERR:6 ({meaning})", maybe_applied=False)
        return TargetRejected(f"{operation_name} answered ERR:{code} ({meaning})", code=f"ERR:{code}")


def _files_client(name: str, spec: ConnectorSpec) -> SftpClient | None:
    """The SFTP client of the service's file server (``options.files_*``), or None when none is configured."""
    files_endpoint = spec.options.get("files_endpoint")
    if files_endpoint is None:
        return None
    options: dict[str, str | int | float | bool] = {
        key.removeprefix("files_"): value
        for key, value in spec.options.items()
        if key in {"files_username", "files_known_hosts", "files_host_key_alias"}
    }
    credentials = {key.removeprefix("files_"): env for key, env in spec.credentials.items() if key.startswith("files_")}
    files_spec = ConnectorSpec.model_validate(
        {
            "type": "sftp",
            "endpoint": str(files_endpoint),
            "timeout": spec.timeout,
            "credentials": credentials,
            "options": options,
        }
    )
    return SftpClient(f"{name}.files", files_spec)


#: the service operation each connector operation calls first
SERVICES: Final = {"issue": "ImportAndPublishInv", "cancel": "cancelInv"}


def render(operation_name: str, request: BaseModel) -> str:
    """The SOAP envelope an operation would send for ``request`` (``igate-bus map``): no network, no secrets."""
    from config.model import ConnectorSpec

    spec = ConnectorSpec(type="receipt", endpoint="http://render.invalid/PublishService.asmx")
    client = SoapClient("render", spec, WSDL_FILE, binding=BINDING, address=str(spec.endpoint))
    hidden = {"Account": "(account)", "ACpass": "***", "username": "(username)", "password": "***"}
    try:
        if isinstance(request, IssueReceipt):
            body: dict[str, Any] = {**hidden, "xmlInvData": request.xml(), "pattern": "(pattern)", "serial": "(serial)"}
            body["convert"] = 0
            return client.render("ImportAndPublishInv", body, soap_headers={})
        if isinstance(request, CancelReceipt):
            body = {"Account": "(account)", "ACpass": "***", "fkey": request.fkey, "userName": "(username)"}
            return client.render("cancelInv", {**body, "userPass": "***"}, soap_headers={})
        return client.render(SERVICES[operation_name], request.model_dump(mode="json"), soap_headers={})
    finally:
        client.close()
