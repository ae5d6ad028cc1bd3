"""A real SOAP 1.1 server that issues e-receipts as the Finance service (VNPT Invoice) would, and misbehaves.

Where it sits: at the far end of the receipt routes (``payment.settled`` → route →
``adapters/igate_to_receipt.py`` → ``connectors/receipt.py`` → **here**). Tests run it in a daemon thread on a
real socket (:class:`ReceiptSimulator`); ``igate-bus simulate receipt`` runs it in the foreground.

What it does (docs/domain.md section 4; [A] where the contract is assumed, ``schemas/wsdl/receipt.wsdl``):

- ``GET /PublishService.asmx?wsdl`` serves the WSDL with its address rewritten to this server.
- ``POST /PublishService.asmx`` parses the envelope with the hardened lxml parser (no DTD, no entities, no
  network) and validates the body against the WSDL's schema; anything wrong is a ``soap:Client`` fault.
- ``ImportAndPublishInv``: checks the account and user ([F] ERR:1), the pattern and serial (ERR:20), and the
  invoice XML (ERR:3: not XML, no key, an fkey not ``{phi|lephi}-…``, a FEEID not registered, a total that is
  not the sum of its lines, amounts that are not positive whole numbers, words that do not say the total);
  **an fkey already used answers ERR:13 and issues nothing** ([F]: the service's own uniqueness, the only
  de-duplication it does). Otherwise it issues the next number of the series (7 digits) and answers
  ``OK:{pattern};{serial}-{fkey}_{number}``.
- ``listInvByCusFkey`` ([A]): ``<Data>`` with one ``<Item>`` per receipt of the fkey (status 1 valid,
  5 cancelled), empty when none.
- ``UnConfirmPaymentFkey`` then ``cancelInv``: a receipt is cancelled only after it was unconfirmed
  ([F] TH's order); a cancelled receipt stays cancelled, and its fkey stays used.

The record is what tests assert on: every request (operation, body with passwords masked, the answer, the
fault), every effect (``issued``, ``unconfirmed``, ``cancelled``) by fkey, and :meth:`ReceiptSimulator.issued`
counts receipts per fkey. :meth:`ReceiptSimulator.daily_file` writes the service's receipts of a day as the
CSV the Finance service drops on its SFTP server for the daily reconciliation ([A] the format of
``schemas/receipt_reconcile.py``).

Faults (:class:`Faults`, in Python or ``POST /_sim/faults``; deterministic with a ``seed``): ``latency_s``
and one ``mode`` drawn at ``rate`` on ``only_operations``: ``http_503``, ``server_fault``, ``hang``,
``drop``, ``err`` (answer ``ERR:{err_code}`` without handling), ``garbage`` (a 200 whose answer is neither
OK nor ERR), ``html``, ``xxe``, ``billion_laughs``, and the ambiguous outcomes ``apply_then_drop`` and
``apply_then_hang`` (handle the call, issue the receipt, then reset the connection or never answer: the
client times out after the service issued). ``lookup_fail_rate`` fails ``listInvByCusFkey`` on its own.
"""

from __future__ import annotations

import csv
import hmac
import io
import itertools
import json
import os
import re
import time
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

import structlog
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints
from pydantic import BaseModel, ConfigDict, Field

from schemas.nps import ICT
from schemas.receipt import FEE_CATALOGUE, FKEY_PATTERN, KIND_CODE, amount_in_words
from schemas.receipt_reconcile import FILE_COLUMNS
from simulators import nps as soap_sim
from simulators._server import ServedSimulator, SimServer, simulator_main

if TYPE_CHECKING:
    from collections.abc import Mapping

log = structlog.get_logger(__name__)

DEFAULT_PORT: Final = 8606
SOAP_PATH: Final = "/PublishService.asmx"
NAMESPACE: Final = "http://tempuri.org/"
WSDL_FILE: Final = Path(__file__).resolve().parent.parent / "schemas" / "wsdl" / "receipt.wsdl"
DEFAULT_ACCOUNT: Final = "igate-bus-admin"
DEFAULT_USERNAME: Final = "igate-bus"
DEFAULT_PASSWORD: Final = "simulator-only"  # noqa: S105 - the simulator's own published default
DEFAULT_PATTERN: Final = "01BLP0-001"
DEFAULT_SERIAL: Final = "AA-19E"
#: the variables the shipped connectors.yaml reads the bus's credentials from (used by :func:`serve`)
CREDENTIAL_ENVS: Final = {
    "account": "IGATE_BUS_RECEIPT_ACCOUNT",
    "account_password": "IGATE_BUS_RECEIPT_ACPASS",
    "username": "IGATE_BUS_RECEIPT_USERNAME",
    "password": "IGATE_BUS_RECEIPT_PASSWORD",
}
OPERATIONS: Final = frozenset({"ImportAndPublishInv", "listInvByCusFkey", "UnConfirmPaymentFkey", "cancelInv"})
LOOKUP_OPERATION: Final = "listInvByCusFkey"
_PASSWORD_FIELDS: Final = frozenset({"ACpass", "password", "userPass"})
_FKEY = re.compile(FKEY_PATTERN)

FaultMode = Literal[
    "http_503",
    "server_fault",
    "hang",
    "drop",
    "err",
    "garbage",
    "html",
    "xxe",
    "billion_laughs",
    "apply_then_drop",
    "apply_then_hang",
]
_APPLY_FIRST: Final = frozenset({"apply_then_drop", "apply_then_hang"})
Rate = soap_sim.Rate


class Faults(BaseModel):
    """The fault switches: a latency for every request, and one mode drawn at ``rate`` on each request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: float = Field(default=0.0, ge=0.0, le=600.0, description="Seconds to wait before answering.")
    mode: FaultMode | None = Field(default=None, description="How to misbehave instead of answering; null: off.")
    rate: Rate = Field(default=1.0, description="Share of calls on only_operations that get the mode.")
    hang_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Seconds 'hang' modes wait before a reset.")
    err_code: int = Field(default=5, ge=1, le=99, description="The n of the 'err' mode's ERR:n.")
    only_operations: list[str] = Field(default_factory=list, description="Operations to fault; empty = all.")
    lookup_fail_rate: Rate = Field(default=0.0, description="Fail listInvByCusFkey at this rate, on its own.")
    seed: int | None = Field(default=None, description="Seeds the draws, so a run repeats exactly.")

    def covers(self, operation: str) -> bool:
        """Whether faults apply to ``operation``."""
        return not self.only_operations or operation in self.only_operations


class _Err(Exception):
    """Raised while handling: answer ``ERR:{code}``."""

    def __init__(self, code: int) -> None:
        super().__init__(f"ERR:{code}")
        self.code = code


def _text(element: Any, name: str) -> str:
    found = element.find(name)
    return (found.text or "").strip() if found is not None else ""


def _whole(text: str) -> int:
    """A positive whole number of VND as the service reads one; anything else is bad invoice XML."""
    if not text.isdigit() or text.startswith("0"):
        raise _Err(3)
    return int(text)


class ReceiptSimulator(ServedSimulator[Faults]):
    """The e-receipt service on a real socket, with its receipts, its record and its faults.

    Args:
        host: where to listen.
        port: 0 for a free port (known after :meth:`start`).
        account, account_password, username, password: the credentials it accepts.
        pattern, serial: the template and series registered for the unit.
    """

    thread_name = "receipt-sim"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        account: str = DEFAULT_ACCOUNT,
        account_password: str = DEFAULT_PASSWORD,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        pattern: str = DEFAULT_PATTERN,
        serial: str = DEFAULT_SERIAL,
    ) -> None:
        self._init_server(host, port, Faults())
        self._secrets = {"account": account, "account_password": account_password, "username": username}
        self._password = password
        self.pattern = pattern
        self.serial = serial
        self._receipts: dict[str, dict[str, Any]] = {}
        self._numbers = itertools.count(1)
        self._counter = itertools.count(1)
        self._issue_counts: dict[str, int] = {}
        root = etree.parse(str(WSDL_FILE), parser=soap_sim._hardened_parser())  # noqa: SLF001 - the one hardened parser
        schema = root.find(".//{http://www.w3.org/2001/XMLSchema}schema")
        self._schema = etree.XMLSchema(etree.fromstring(etree.tostring(schema)))  # with the namespaces in scope
        self._wsdl = etree.tostring(root, encoding="unicode")

    @property
    def endpoint(self) -> str:
        """The SOAP endpoint the connector is configured with."""
        return f"{self.url}{SOAP_PATH}"

    def _make_server(self) -> SimServer:
        return _Server((self.host, self.port), _Handler)

    # -- what tests read and plant ----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget receipts, requests, effects and faults."""
        self._reset_record()
        with self._lock:
            self._receipts.clear()
            self._issue_counts.clear()

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        """The recorded requests, optionally of one operation."""
        with self._lock:
            return [dict(r) for r in self._requests if operation is None or r.get("operation") == operation]

    def issued(self) -> dict[str, int]:
        """How many receipts the service issued per fkey (never more than 1 unless planted)."""
        with self._lock:
            return dict(self._issue_counts)

    def receipt(self, fkey: str) -> dict[str, Any] | None:
        """The receipt of an fkey, as the service holds it."""
        with self._lock:
            found = self._receipts.get(fkey)
            return dict(found) if found is not None else None

    def receipts(self) -> list[dict[str, Any]]:
        """Every receipt, in issue order."""
        with self._lock:
            return [dict(r) for r in self._receipts.values()]

    def wsdl(self) -> str:
        """The WSDL with its address rewritten to this server."""
        return str(self._wsdl).replace("http://receipt.invalid/PublishService.asmx", self.endpoint)

    def daily_file(self, day: date, *, extra_rows: list[dict[str, Any]] | None = None) -> bytes:
        """The day's receipts as the CSV the Finance service drops for reconciliation (``extra_rows`` planted)."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FILE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        rows = [r for r in self.receipts() if r["issued_on"] == day.isoformat()] + list(extra_rows or [])
        for row in rows:
            writer.writerow({k: row[k] for k in FILE_COLUMNS})
        return out.getvalue().encode()

    # -- SOAP handling ----------------------------------------------------------------------------------

    def _draw(self, operation: str) -> tuple[Faults, FaultMode | None, bool]:
        """(faults, mode, lookup failed) for one request."""
        with self._lock:
            faults = self._faults
            rate = faults.lookup_fail_rate
            if operation == LOOKUP_OPERATION and rate > 0.0 and (rate >= 1.0 or self._rng.random() < rate):
                return faults, None, True
            if faults.mode is None or not faults.covers(operation):
                return faults, None, False
            if faults.rate >= 1.0 or (faults.rate > 0.0 and self._rng.random() < faults.rate):
                return faults, faults.mode, False
        return faults, None, False

    def _parse(self, body: bytes, headers: Mapping[str, str], entry: dict[str, Any]) -> tuple[str, Any]:
        root = soap_sim._envelope_root(body, headers)  # noqa: SLF001 - the one SOAP 1.1 envelope check
        soap_body = root.find(f"{{{soap_sim.SOAP11_ENV}}}Body")
        parts = [] if soap_body is None else [c for c in soap_body if isinstance(c.tag, str)]
        if len(parts) != 1:
            raise soap_sim._SoapFault("Client", "Body must hold exactly one element")  # noqa: SLF001
        request = parts[0]
        operation = str(etree.QName(request).localname)
        entry["operation"] = operation
        if etree.QName(request).namespace != NAMESPACE or operation not in OPERATIONS:
            raise soap_sim._SoapFault("Client", f"No operation {request.tag}")  # noqa: SLF001
        if not self._schema.validate(request):
            raise soap_sim._SoapFault("Client", f"Invalid request: {self._schema.error_log.last_error.message}")  # noqa: SLF001
        fields = {str(etree.QName(c).localname): (c.text or "") for c in request if isinstance(c.tag, str)}
        entry["body"] = {k: ("***" if k in _PASSWORD_FIELDS else v) for k, v in fields.items()}
        entry["valid"] = True
        return operation, fields

    def _handle(self, operation: str, fields: dict[str, str]) -> str:
        try:
            self._check_login(operation, fields)
            if operation == "ImportAndPublishInv":
                return self._publish(fields)
            if operation == "listInvByCusFkey":
                return self._list(fields["key"])
            if operation == "UnConfirmPaymentFkey":
                return self._unconfirm(fields["lstFkey"])
            return self._cancel(fields["fkey"])
        except _Err as err:
            return f"ERR:{err.code}"

    def _check_login(self, operation: str, fields: dict[str, str]) -> None:
        user = fields.get("username", fields.get("userName", ""))
        password = fields.get("password", fields.get("userPass", ""))
        ok = hmac.compare_digest(user.encode(), self._secrets["username"].encode())
        ok = hmac.compare_digest(password.encode(), self._password.encode()) and ok
        if operation in {"ImportAndPublishInv", "cancelInv"}:
            ok = hmac.compare_digest(fields.get("Account", "").encode(), self._secrets["account"].encode()) and ok
            acpass = fields.get("ACpass", "").encode()
            ok = hmac.compare_digest(acpass, self._secrets["account_password"].encode()) and ok
        if not ok:
            raise _Err(1)

    def _publish(self, fields: dict[str, str]) -> str:
        if fields["pattern"] != self.pattern or fields["serial"] != self.serial:
            raise _Err(20)
        fkey, amount, invoice = _read_invoice(fields["xmlInvData"])
        with self._lock:
            if fkey in self._receipts:
                raise _Err(13)
            number = f"{next(self._numbers):07d}"
            self._receipts[fkey] = {
                "fkey": fkey,
                "pattern": self.pattern,
                "serial": self.serial,
                "number": number,
                "amount_vnd": amount,
                "status": "valid",
                "confirmed": True,
                "issued_on": datetime.now(ICT).date().isoformat(),
                **invoice,
            }
            self._issue_counts[fkey] = self._issue_counts.get(fkey, 0) + 1
            self._effects.append({"effect": "issued", "fkey": fkey, "number": number, "amount_vnd": amount})
        return f"OK:{self.pattern};{self.serial}-{fkey}_{number}"

    def _list(self, fkey: str) -> str:
        root = etree.Element("Data")
        found = self.receipt(fkey)
        if found is not None:
            item = etree.SubElement(root, "Item")
            issued = date.fromisoformat(found["issued_on"]).strftime("%d/%m/%Y")
            for tag, value in (
                ("index", "1"),
                ("fkey", fkey),
                ("pattern", found["pattern"]),
                ("serial", found["serial"]),
                ("invNum", found["number"]),
                ("amount", str(found["amount_vnd"])),
                ("status", "5" if found["status"] == "cancelled" else "1"),
                ("publishDate", issued),
            ):
                etree.SubElement(item, tag).text = value
        return str(etree.tostring(root, encoding="unicode"))

    def _unconfirm(self, fkeys: str) -> str:
        with self._lock:
            keys = [k for k in fkeys.split("_") if k]
            if not keys or any(k not in self._receipts for k in keys):
                raise _Err(2)
            for key in keys:
                self._receipts[key]["confirmed"] = False
                self._effects.append({"effect": "unconfirmed", "fkey": key})
        return "OK:"

    def _cancel(self, fkey: str) -> str:
        with self._lock:
            found = self._receipts.get(fkey)
            if found is None:
                raise _Err(2)
            if found["confirmed"]:
                raise _Err(9)  # [A] a paid receipt is unconfirmed before it can be cancelled
            if found["status"] != "cancelled":
                found["status"] = "cancelled"
                self._effects.append({"effect": "cancelled", "fkey": fkey})
        return "OK:"

    def _record(self, headers: Mapping[str, str]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "seq": next(self._counter),
            "at": time.time(),
            "soap_action": headers.get("SOAPAction"),
            "operation": None,
            "body": None,
            "valid": False,
            "answer": None,
            "fault": None,
        }
        with self._lock:
            self._requests.append(entry)
        return entry

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        faults = self._faults_control(method, path, body)
        if faults is not None:
            return faults
        if (method, path) == ("GET", "/_sim/requests"):
            return 200, {"requests": self.requests()}
        if (method, path) == ("GET", "/_sim/effects"):
            return 200, {"effects": self.effects()}
        if (method, path) == ("GET", "/_sim/receipts"):
            return 200, {"receipts": self.receipts()}
        if (method, path) == ("POST", "/_sim/reset"):
            self.reset()
            return 200, {"reset": True}
        return 404, {"error": "unknown control endpoint"}


def _read_invoice(xml: str) -> tuple[str, int, dict[str, Any]]:
    """(fkey, total, what the receipt keeps) of ``xmlInvData``, checked as the service would; or ERR:3."""
    try:
        root = etree.fromstring(xml.encode(), parser=soap_sim._hardened_parser())  # noqa: SLF001
    except etree.XMLSyntaxError:
        raise _Err(3) from None
    inv = root.find("Inv") if root.tag == "Invoices" else None
    invoice = inv.find("Invoice") if inv is not None else None
    if root.getroottree().docinfo.doctype or inv is None or invoice is None or len(root.findall("Inv")) != 1:
        raise _Err(3)
    fkey = _text(inv, "key")
    if not _FKEY.match(fkey):
        raise _Err(3)
    kind = fkey.split("-", 1)[0]
    products = invoice.findall("Products/Product")
    if not products:
        raise _Err(3)
    lines = 0
    for product in products:
        code = _text(product, "FEEID")
        amount = _whole(_text(product, "Amount"))
        if FEE_CATALOGUE.get(code) != kind or _text(product, "Extra2") != KIND_CODE[kind]:
            raise _Err(3)
        if _whole(_text(product, "Total")) != amount or _whole(_text(product, "ProdPrice")) != amount:
            raise _Err(3)
        lines += amount
    total = _whole(_text(invoice, "Total"))
    if total != lines or _whole(_text(invoice, "Amount")) != total:
        raise _Err(3)
    if _text(invoice, "AmountInWords") != amount_in_words(total):
        raise _Err(3)
    kept = {"dossier_code": _text(invoice, "CusCode"), "payment_ref": _text(products[0], "Extra1"), "kind": kind}
    return fkey, total, kept


class _Server(SimServer):
    error_event = "receipt_sim.connection_error"
    sim: ReceiptSimulator


def _answer_envelope(operation: str, text: str) -> bytes:
    env = etree.Element(f"{{{soap_sim.SOAP11_ENV}}}Envelope", nsmap={"soap": soap_sim.SOAP11_ENV})
    body = etree.SubElement(env, f"{{{soap_sim.SOAP11_ENV}}}Body")
    response = etree.SubElement(body, f"{{{NAMESPACE}}}{operation}Response", nsmap={None: NAMESPACE})
    etree.SubElement(response, f"{{{NAMESPACE}}}{operation}Result").text = text
    return bytes(etree.tostring(env, xml_declaration=True, encoding="utf-8"))


class _Handler(soap_sim._Handler):  # noqa: SLF001 - the SOAP simulators share the sending and resetting
    server: _Server  # type: ignore[assignment]  # this simulator's server
    server_version = "VNPT-Invoice-simulator/0.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib handler's name
        """Serve the WSDL and the control endpoints."""
        split = urlsplit(self.path)
        sim = self.server.sim
        if split.path.startswith("/_sim/"):
            status, data = sim._control("GET", split.path, b"")  # noqa: SLF001 - the handler is part of the simulator
            self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8")
        elif split.path == SOAP_PATH and "wsdl" in parse_qs(split.query, keep_blank_values=True):
            self._send(200, sim.wsdl().encode(), "text/xml; charset=utf-8")
        else:
            self._send(404, b"not found", "text/plain; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib handler's name
        """Answer a SOAP call, or a control endpoint."""
        split = urlsplit(self.path)
        raw_length = self.headers.get("Content-Length", "")
        if not raw_length.isdigit() or int(raw_length) > soap_sim.MAX_REQUEST_BYTES:
            self.close_connection = True
            self._send(413 if raw_length.isdigit() else 411, b"bad length", "text/plain; charset=utf-8")
            return
        body = self.rfile.read(int(raw_length))
        sim = self.server.sim
        if split.path.startswith("/_sim/"):
            status, data = sim._control("POST", split.path, body)  # noqa: SLF001
            self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8")
        elif split.path == SOAP_PATH:
            self._call(body)
        else:
            self._send(404, b"not found", "text/plain; charset=utf-8")

    def _call(self, body: bytes) -> None:
        sim = self.server.sim
        headers = dict(self.headers.items())
        entry = sim._record(headers)  # noqa: SLF001
        xml = "text/xml; charset=utf-8"
        try:
            operation, fields = sim._parse(body, headers, entry)  # noqa: SLF001
        except soap_sim._SoapFault as fault:  # noqa: SLF001
            entry["answer"] = f"soap:{fault.code}"
            self._send(500, soap_sim._fault_envelope(fault.code, fault.text), xml)  # noqa: SLF001
            return
        faults, mode, lookup_failed = sim._draw(operation)  # noqa: SLF001
        entry["fault"] = "lookup_fail" if lookup_failed else mode
        if faults.latency_s > 0:
            sim._wake.wait(faults.latency_s)  # noqa: SLF001
        if lookup_failed:
            self._send(503, b"Service Unavailable", "text/plain; charset=utf-8")
            return
        if mode is None or mode in _APPLY_FIRST:
            entry["answer"] = sim._handle(operation, fields)  # noqa: SLF001
            if mode is None:
                self._send(200, _answer_envelope(operation, entry["answer"]), xml)
                return
        if sim.log_requests:
            log.info("receipt_sim.fault", operation=operation, mode=mode)
        self._misbehave_receipt(mode, faults, operation)

    def _misbehave_receipt(self, mode: FaultMode, faults: Faults, operation: str) -> None:
        xml = "text/xml; charset=utf-8"
        if mode == "http_503":
            self._send(503, b"Service Unavailable", "text/plain; charset=utf-8")
        elif mode == "server_fault":
            self._send(500, soap_sim._fault_envelope("Server", "Server was unable to process request."), xml)  # noqa: SLF001
        elif mode == "err":
            self._send(200, _answer_envelope(operation, f"ERR:{faults.err_code}"), xml)
        elif mode == "garbage":
            self._send(200, _answer_envelope(operation, "Object reference not set to an instance of an object."), xml)
        elif mode in {"hang", "apply_then_hang"}:
            self.server.sim._wake.wait(faults.hang_s)  # noqa: SLF001
            self.reset_connection()
        elif mode in {"drop", "apply_then_drop"}:
            self.reset_connection()
        elif mode in {"html", "xxe", "billion_laughs"}:  # the portal simulator's hostile bodies serve any client
            hostile = soap_sim.hostile_body(mode)
            self._send(200, hostile, "text/html; charset=utf-8" if mode == "html" else xml)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Run the simulator in the foreground until interrupted (``igate-bus simulate receipt``).

    It accepts the credentials the bus itself is given (:data:`CREDENTIAL_ENVS`) when they are set, so a
    demo needs one environment for both; otherwise the published defaults.
    """
    env = {k: os.environ.get(v) for k, v in CREDENTIAL_ENVS.items()}
    sim = ReceiptSimulator(
        host,
        port,
        account=env["account"] or DEFAULT_ACCOUNT,
        account_password=env["account_password"] or DEFAULT_PASSWORD,
        username=env["username"] or DEFAULT_USERNAME,
        password=env["password"] or DEFAULT_PASSWORD,
    )
    sim.serve_foreground("receipt_sim", url=f"http://{host}:{port}{SOAP_PATH}", pattern=sim.pattern, serial=sim.serial)


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.receipt [--host H] [--port P]``."""
    simulator_main(argv, name="receipt", port=DEFAULT_PORT, serve=serve)


if __name__ == "__main__":
    main()
