"""A real SOAP 1.1 server that answers as the national portal's LGSP proxy would, keeps state, and misbehaves.

Where it sits: it stands in for the National Public Service Portal (Cổng DVCQG) at the far end of the portal
routes (event → route → ``adapters/igate_to_nps.py`` → ``connectors/nps.py`` → **here**). Tests run it in a
daemon thread on a real socket (:class:`NpsSimulator`); ``python -m simulators.nps --port 8602`` and
:func:`serve` run it standalone (``igate-bus simulate nps``, the demo).

**This is a simulated LGSP SOAP proxy** ([A], docs/domain.md section 2): no public SOAP contract for the portal
exists, so it wraps the portal's JSON services ([F] OC, TH) in SOAP 1.1 document/literal as
``schemas/wsdl/nps.wsdl`` describes. What it does:

- ``GET /lgsp/dvcqg?wsdl`` serves the WSDL (its address and XSD location rewritten to this server),
  ``GET /lgsp/dvcqg?xsd=nps.xsd`` the schema.
- ``POST /lgsp/dvcqg`` parses the envelope with a hardened lxml parser (no DTD, no entities, no network, no
  huge trees) and **validates the header and body against the XSD**; anything wrong is a SOAP 1.1
  ``soap:Client`` fault with HTTP 500, as a proxy would answer (an envelope in another namespace is
  ``soap:VersionMismatch``). [A] An unknown or expired session is the fault ``soap:Client.Session``; a
  ``madonvi`` other than the configured one is ``soap:Client.MaDonVi``.
- ``XacThuc`` ([F] the adapter's login) issues sessions that expire after ``session_ttl_s``.
- ``DongBoHoSoMC``: [F] a create (``isUpdating`` false) of a record it already has is refused with
  "Hồ sơ … đã tồn tại" and nothing applied; [A] an update of an unknown record creates it. Records are
  checked as the portal would ([A] rules: the pydantic models of :mod:`schemas.nps`, NgayTiepNhan not before
  NgayNopHoSo, a refused dossier (3) has NgayTuChoi, a returned one (10) has NgayTra); a record that fails is
  refused with error_code "1" and the whole call applies nothing.
- ``CapNhatTienDoHoSoMC``: steps are kept once per (MaHoSo, ThoiDiemXuLy, TrangThai); ``DongBoDanhGia``
  keeps the newest rating by ``ThoiGian``. [A] Unknown dossiers are created unless ``strict_dossiers``.
- **The newest state wins** (docs/reliability.md R12): a dossier's status is the one with the latest time among
  its records (``NgayCapNhat``) and steps (``ThoiDiemXuLy``); an older one arriving later is kept in the
  history but never overwrites it (the call still answers "0": the portal has a newer state). [A] Nothing says
  the real portal checks this: the fault switch ``ordering_check: false`` turns it off, and then the last
  call wins whatever its time (how the bus's own per-dossier order is tested, routes/ordering.py). Either
  way each dossier keeps ``arrivals``, one entry per applied call in the order the calls came (the status it
  carried and that status's time), so a test can see whether an older status came after a newer one.
- ``TraCuuHoSo`` by ``MaHoSo``, or [A] by ``MaYeuCau``: the proxy logs the ``maYeuCau`` header of every call
  with the dossier and the answer, so a client can ask whether a request was applied.
- Error codes ([A] beyond [F] "0" = success): "1" record refused, "2" already exists, "4" not found,
  "-1" bad login.

The record is what tests assert on: every SOAP request (operation, SOAPAction, header without the session,
the body as a dict with the password masked, whether it validated, what it answered, the fault injected),
every applied effect, the proxy's request-id log and each dossier's state and history.

Faults (:class:`Faults`, set in Python or over HTTP at ``/_sim/faults``; deterministic with a ``seed``):
``latency_s`` (slow), and one ``mode`` drawn at ``rate`` per request on ``only_operations``: ``http_500``,
``http_503``, ``server_fault``, ``client_fault``, ``reject``, ``hang``, ``truncated``, ``wrong_namespace``,
``soap12_envelope``, ``html``, ``ok_code`` (handle the request, then answer it with ``ok_code``, "3" or
"-3": codes TH also takes as success, docs/domain.md section 2), ``drop`` (reset the connection without a
word), ``apply_then_drop`` (the same after applying: the ambiguous outcome), and the hostile replies
``billion_laughs``, ``quadratic_blowup``, ``xxe``, ``doctype_system``, ``deep_nesting``, ``huge`` (50 MB),
``drip`` (one byte per ``drip_interval_s``) and ``pii_fault`` (a fault echoing a CCCD and a phone). Modes
that mangle a reply apply the request first unless ``apply`` says otherwise, so the ambiguous outcome
(applied, answer lost) is what a client sees. Drawn on their own, ``lookup_fail_rate`` fails lookups
(``TraCuuHoSo``) with ``lookup_fail`` (``http_503`` or ``drop``), so a test can break reconciliation while
effects still go through. Control endpoints (never recorded, never faulted): ``GET/POST /_sim/faults``,
``GET /_sim/faults/schema``, ``GET /_sim/requests``, ``GET /_sim/effects``, ``GET /_sim/dossiers[/CODE]``,
``POST /_sim/reset``, ``POST /_sim/sessions/expire`` (docs/simulators.md).
"""

from __future__ import annotations

import argparse
import hmac
import itertools
import json
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

import structlog
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.nps import (
    ALREADY_EXISTS,
    ICT,
    NOT_FOUND_CODE,
    OK_CODES,
    PORTAL_TIME_FORMAT,
    DongBoDanhGiaRequest,
    HoSoMC,
    TienDoHoSo,
)
from simulators._server import (
    QuietHandler,
    ServedSimulator,
    SimServer,
    configure_cli_logging,
    duration_arg,
    run_in_foreground,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

log = structlog.get_logger(__name__)

DEFAULT_PORT: Final = 8602
#: how long an issued session lives unless told otherwise
DEFAULT_SESSION_TTL_S: Final = 3600.0
DEFAULT_USERNAME: Final = "igate-bus"
DEFAULT_PASSWORD: Final = "simulator-only"  # noqa: S105 - the simulator's own published default
DEFAULT_MADONVI: Final = "000.00.16.H16"
#: the variables the shipped connectors.yaml reads the bus's portal credentials from (used by :func:`serve`)
USERNAME_ENV: Final = "IGATE_BUS_NPS_USERNAME"
PASSWORD_ENV: Final = "IGATE_BUS_NPS_PASSWORD"  # noqa: S105 - a variable's name
SOAP_PATH: Final = "/lgsp/dvcqg"
CONTROL_PREFIX: Final = "/_sim/"
NAMESPACE: Final = "urn:dvcqg:lgsp:v1"
SOAP11_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV: Final = "http://www.w3.org/2003/05/soap-envelope"
WSDL_DIR: Final = Path(__file__).resolve().parent.parent / "schemas" / "wsdl"
MAX_REQUEST_BYTES: Final = 2_097_152
HUGE_BYTES: Final = 50 * 1024 * 1024
#: the personal data the hostile replies carry, so tests can grep the logs for it (made up: a CCCD of the
#: Đắk Lắk form and a Viettel number)
SEEDED_CCCD: Final = "066090001234"
SEEDED_PHONE: Final = "0912345678"
#: [A] the portal's error codes beyond [F] "0" (see the module docstring)
REJECTED_CODE: Final = "1"
EXISTS_CODE: Final = "2"
LOGIN_FAILED_CODE: Final = "-1"
#: services that take the PhienLamViec header
SESSION_SERVICES: Final = frozenset({"DongBoHoSoMC", "CapNhatTienDoHoSoMC", "DongBoDanhGia", "TraCuuHoSo"})
SERVICES: Final = frozenset({"XacThuc", *SESSION_SERVICES})
#: elements that repeat (lists in the models)
_LIST_ELEMENTS: Final = frozenset(
    {
        "data",
        "DinhDanhCHS",
        "TaiLieuNop",
        "DanhSachLePhi",
        "DanhSachTepDinhKemKhac",
        "DanhSachHoSoBoSung",
        "DanhSachGiayToBoSung",
        "DanhSachLePhiBoSung",
        "DanhSachGiayToKetQua",
        "DSKetNoiCSDL",
    }
)

FaultMode = Literal[
    "http_500",
    "http_503",
    "server_fault",
    "client_fault",
    "reject",
    "hang",
    "truncated",
    "wrong_namespace",
    "soap12_envelope",
    "html",
    "billion_laughs",
    "quadratic_blowup",
    "xxe",
    "doctype_system",
    "deep_nesting",
    "huge",
    "drip",
    "pii_fault",
    "ok_code",
    "drop",
    "apply_then_drop",
]
#: modes that answer without handling the request (unless ``apply`` is set)
_REFUSING: Final = frozenset({"http_500", "http_503", "server_fault", "client_fault", "reject", "hang", "html", "drop"})
#: the lookup service, which ``lookup_fail_rate`` fails on its own
LOOKUP_OPERATION: Final = "TraCuuHoSo"
Rate = Annotated[float, Field(ge=0.0, le=1.0, description="Probability per request.")]


class Faults(BaseModel):
    """The fault switches: a latency for every request, and one mode drawn at ``rate`` on each request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: float = Field(default=0.0, ge=0.0, le=600.0, description="Seconds to wait before answering.")
    mode: FaultMode | None = Field(default=None, description="How to misbehave instead of answering; null: off.")
    rate: Rate = Field(default=1.0, description="Share of calls on only_operations that get the mode.")
    apply: bool | None = Field(
        default=None, description="Handle the call before misbehaving; null: only for modes that mangle a reply."
    )
    hang_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Seconds 'hang' waits before a reset.")
    drip_interval_s: float = Field(default=0.2, gt=0.0, le=60.0, description="Seconds between dripped bytes.")
    huge_bytes: int = Field(default=HUGE_BYTES, ge=1, le=2**34, description="Size of the 'huge' reply in bytes.")
    huge_declare_length: bool = Field(default=False, description="Send Content-Length with the 'huge' reply.")
    reject_message: str = Field(
        default="Dữ liệu hồ sơ không hợp lệ", max_length=2000, description="Message of the 'reject' answer (code 1)."
    )
    ok_code: str = Field(
        default="3", pattern=r"^-?[0-9]{1,3}$", description="The success code 'ok_code' answers with ([F] TH: 3, -3)."
    )
    fault_string: str | None = Field(
        default=None, max_length=100_000, description="Text of injected SOAP faults; null: a stock text."
    )
    only_operations: list[str] = Field(default_factory=list, description="Operations to fault; empty = all.")
    lookup_fail_rate: Rate = Field(default=0.0, description="Fail TraCuuHoSo calls at this rate, on their own.")
    lookup_fail: Literal["http_503", "drop"] = Field(default="http_503", description="How a failed lookup fails.")
    ordering_check: bool = Field(
        default=True, description="Keep the newest status by its time; false: the last call wins whatever its time."
    )
    seed: int | None = Field(default=None, description="Seeds the draws, so a run repeats exactly.")

    def covers(self, operation: str) -> bool:
        """Whether faults apply to ``operation``."""
        return not self.only_operations or operation in self.only_operations

    def applies_first(self, mode: FaultMode) -> bool:
        """Whether the request is handled before ``mode`` mangles or replaces the answer."""
        return self.apply if self.apply is not None else mode not in _REFUSING


class _SoapFault(Exception):
    """Raised while handling a request: answer this SOAP 1.1 fault (HTTP 500)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _now_portal() -> str:
    return datetime.now(ICT).strftime(PORTAL_TIME_FORMAT)


def _hardened_parser() -> etree.XMLParser:
    """The lxml parser docs/design.md asks for: no entities resolved, no network, no DTD loaded, no huge trees."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _local(element: etree._Element) -> str:
    return str(etree.QName(element).localname)


def _to_dict(element: etree._Element) -> Any:
    """A validated request element as the dict the models take: lists for repeating elements, text leaves."""
    children = [c for c in element if isinstance(c.tag, str)]
    if not children:
        return element.text or ""
    out: dict[str, Any] = {}
    for child in children:
        name = _local(child)
        value = _to_dict(child)
        if name in _LIST_ELEMENTS:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


def _build(parent: etree._Element, name: str, value: Any) -> None:
    """Append ``value`` under ``parent`` as element(s) ``name`` in the service namespace."""
    if value is None:
        return
    if isinstance(value, list):
        for item in value:
            _build(parent, name, item)
        return
    child = etree.SubElement(parent, f"{{{NAMESPACE}}}{name}")
    if isinstance(value, dict):
        for key, item in value.items():
            _build(child, key, item)
    else:
        child.text = str(value)


def _envelope(
    operation: str, answer: Mapping[str, Any], *, body_ns: str = NAMESPACE, env_ns: str = SOAP11_ENV
) -> bytes:
    env = etree.Element(f"{{{env_ns}}}Envelope", nsmap={"soap": env_ns, "tns": body_ns})
    body = etree.SubElement(env, f"{{{env_ns}}}Body")
    response = etree.SubElement(body, f"{{{body_ns}}}{operation}Response")
    for key, value in answer.items():
        if body_ns == NAMESPACE:
            _build(response, key, value)
        else:
            etree.SubElement(response, f"{{{body_ns}}}{key}").text = str(value)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="utf-8"))


def _fault_envelope(code: str, text: str) -> bytes:
    env = etree.Element(f"{{{SOAP11_ENV}}}Envelope", nsmap={"soap": SOAP11_ENV})
    body = etree.SubElement(env, f"{{{SOAP11_ENV}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP11_ENV}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"soap:{code}"
    etree.SubElement(fault, "faultstring").text = text
    return bytes(etree.tostring(env, xml_declaration=True, encoding="utf-8"))


def _reply(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error_code": code, "message": message, **extra}


class _Dossier:
    """What the portal holds of one dossier: the newest record, status, steps, rating and the history."""

    __slots__ = ("arrivals", "history", "rating", "record", "record_time", "status", "status_time", "steps")

    def __init__(self) -> None:
        self.record: dict[str, Any] | None = None
        self.record_time = ""
        self.status: str | None = None
        self.status_time = ""
        self.steps: dict[tuple[str, str], dict[str, Any]] = {}
        self.rating: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        #: one entry per applied call, in arrival order: the status the call carried last, and its time
        self.arrivals: list[dict[str, Any]] = []

    def offer_status(self, status: str, at: str, source: str, *, check: bool = True) -> bool:
        """Take ``status`` if ``at`` is not older than the status held (any ``at`` without ``check``)."""
        taken = not check or at >= self.status_time  # yyyyMMddHHmmss compares as text
        self.history.append({"status": status, "at": at, "source": source, "taken": taken})
        if taken:
            self.status, self.status_time = status, at
        return taken

    def view(self, code: str) -> dict[str, Any]:
        return {
            "MaHoSo": code,
            "MaTTHC": (self.record or {}).get("MaTTHC"),
            "TrangThaiHoSo": self.status,
            "NgayCapNhat": self.status_time or None,
            "SoBuocTienDo": str(len(self.steps)),
            "MucDoDanhGia": (self.rating or {}).get("MucDo"),
            "ThoiGianDanhGia": (self.rating or {}).get("ThoiGian"),
        }


class NpsSimulator(ServedSimulator[Faults]):
    """The portal's SOAP proxy in a thread: ``start()``, ``stop()``, ``url``, ``endpoint``; a context manager.

    Args:
        host: interface to bind.
        port: port to bind; 0 picks a free one (read it back from :attr:`url`).
        username: the user ``XacThuc`` accepts.
        password: its password.
        madonvi: the agency code the header must carry; None accepts any.
        session_ttl_s: lifetime of issued sessions (sent as ``expires_in``).
        strict_dossiers: refuse progress steps and ratings for dossiers never synced (error_code "4").
    """

    thread_name = "nps-sim"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        madonvi: str | None = DEFAULT_MADONVI,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        strict_dossiers: bool = False,
    ) -> None:
        self.username = username
        self.madonvi = madonvi
        self.session_ttl_s = session_ttl_s
        self.strict_dossiers = strict_dossiers
        self._password = password
        self._init_server(host, port, Faults())
        self._counter = itertools.count(1)
        self._request_log: dict[str, list[dict[str, Any]]] = {}
        self._sessions: dict[str, float] = {}
        self._dossiers: dict[str, _Dossier] = {}
        parser = _hardened_parser()
        self._xsd_bytes = (WSDL_DIR / "nps.xsd").read_bytes()
        self._wsdl_text = (WSDL_DIR / "nps.wsdl").read_text(encoding="utf-8")
        self._schema = etree.XMLSchema(etree.fromstring(self._xsd_bytes, parser=parser))

    # -- lifecycle --------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The SOAP endpoint (what ``connectors.yaml`` names as the connector's ``endpoint``)."""
        return self.url + SOAP_PATH

    def _make_server(self) -> SimServer:
        return _Server((self.host, self.port), _Handler)

    # -- control ----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget requests, effects, sessions, dossiers and faults; wake hanging requests."""
        self._reset_record()
        with self._lock:
            self._request_log.clear()
            self._sessions.clear()
            self._dossiers.clear()

    def expire_sessions(self) -> int:
        """Make every issued session expired now; returns how many there were."""
        with self._lock:
            count = len(self._sessions)
            self._sessions = dict.fromkeys(self._sessions, 0.0)
        return count

    # -- the record -------------------------------------------------------------------------------------

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        """The SOAP requests received (oldest first), optionally only those of ``operation``."""
        with self._lock:
            return [json.loads(json.dumps(r)) for r in self._requests if operation in {None, r["operation"]}]

    def request_log(self, key: str) -> list[dict[str, Any]]:
        """The proxy's log of the calls that carried ``maYeuCau`` = ``key``."""
        with self._lock:
            return [dict(e) for e in self._request_log.get(key, [])]

    def dossier(self, code: str) -> dict[str, Any] | None:
        """A dossier's state: the record, status and its time, steps, rating and the status history."""
        with self._lock:
            found = self._dossiers.get(code)
            if found is None:
                return None
            state: dict[str, Any] = json.loads(
                json.dumps(
                    {
                        **found.view(code),
                        "record": found.record,
                        "steps": sorted(found.steps.values(), key=lambda s: s["ThoiDiemXuLy"]),
                        "rating": found.rating,
                        "history": found.history,
                        "arrivals": found.arrivals,
                    }
                )
            )
            return state

    def dossier_codes(self) -> list[str]:
        """The codes of every dossier the portal holds."""
        with self._lock:
            return sorted(self._dossiers)

    def wsdl(self) -> str:
        """The WSDL as served: address and schema location pointing at this server."""
        return self._wsdl_text.replace(
            'location="http://127.0.0.1:8602/lgsp/dvcqg"', f'location="{self.endpoint}"'
        ).replace('schemaLocation="nps.xsd"', f'schemaLocation="{self.endpoint}?xsd=nps.xsd"')

    # -- SOAP handling (called from handler threads) ----------------------------------------------------

    def _draw(self, operation: str) -> tuple[Faults, FaultMode | None]:
        with self._lock:
            faults = self._faults
            rate = faults.lookup_fail_rate
            if operation == LOOKUP_OPERATION and (rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)):
                return faults, faults.lookup_fail
            if faults.mode is None or not faults.covers(operation):
                return faults, None
            if faults.rate >= 1.0 or (faults.rate > 0.0 and self._rng.random() < faults.rate):
                return faults, faults.mode
        return faults, None

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)

    def _parse(self, body: bytes, headers: Mapping[str, str], entry: dict[str, Any]) -> tuple[str, Any, Any]:
        """Parse and validate a request: (operation, header dict or None, body dict); or a SOAP fault."""
        root = _envelope_root(body, headers)
        soap_body = root.find(f"{{{SOAP11_ENV}}}Body")
        parts = [] if soap_body is None else [c for c in soap_body if isinstance(c.tag, str)]
        if len(parts) != 1:
            raise _SoapFault("Client", "Body phải chứa đúng một phần tử")
        request = parts[0]
        operation = _local(request)
        entry["operation"] = operation
        if etree.QName(request).namespace != NAMESPACE or operation not in SERVICES:
            raise _SoapFault("Client", f"Không có dịch vụ {request.tag}")
        action = headers.get("SOAPAction", "").strip().strip('"')
        entry["soap_action"] = action
        if action and action != f"{NAMESPACE}#{operation}":
            raise _SoapFault("Client", f"SOAPAction {action} không khớp với {operation}")
        if not self._schema.validate(request):
            raise _SoapFault("Client", f"Yêu cầu không hợp lệ: {self._schema.error_log.last_error.message}")
        header = None
        soap_header = root.find(f"{{{SOAP11_ENV}}}Header")
        if soap_header is not None:
            found = soap_header.find(f"{{{NAMESPACE}}}PhienLamViec")
            if found is not None:
                if not self._schema.validate(found):
                    raise _SoapFault("Client", f"Header không hợp lệ: {self._schema.error_log.last_error.message}")
                header = _to_dict(found)
        data = _to_dict(request)
        entry["body"] = self._recordable(operation, data)
        if header is not None:
            entry["header"] = {k: v for k, v in header.items() if k != "session"}
        return operation, header, data

    @staticmethod
    def _recordable(operation: str, data: Any) -> Any:
        if operation == "XacThuc" and isinstance(data, dict):
            return {**data, "password": "***"}
        return data

    def _check_session(self, header: Any) -> str | None:
        """The request id of a call with a live session and the right agency; or a SOAP fault."""
        if not isinstance(header, dict):
            raise _SoapFault("Client.Session", "Thiếu header PhienLamViec")
        with self._lock:
            expires = self._sessions.get(str(header.get("session", "")))
        if expires is None or time.monotonic() >= expires:
            raise _SoapFault("Client.Session", "Phiên làm việc không hợp lệ hoặc đã hết hạn")
        if self.madonvi is not None and header.get("madonvi") != self.madonvi:
            raise _SoapFault("Client.MaDonVi", "Mã đơn vị không được phép gọi dịch vụ")
        key = header.get("maYeuCau")
        return str(key) if key else None

    def _handle(self, operation: str, header: Any, data: Any) -> dict[str, Any]:
        """Run a validated call; returns the response's fields (error_code, message, ...)."""
        if operation == "XacThuc":
            return self._login(data)
        key = self._check_session(header)
        if operation == "TraCuuHoSo":
            return self._lookup(data)
        handler = {
            "DongBoHoSoMC": self._sync_records,
            "CapNhatTienDoHoSoMC": self._sync_steps,
            "DongBoDanhGia": self._sync_rating,
        }[operation]
        answer, code = handler(data, key)
        if key is not None:
            with self._lock:
                self._request_log.setdefault(key, []).append(
                    {
                        "MaYeuCau": key,
                        "DichVu": operation,
                        "MaHoSo": code,
                        "error_code": answer["error_code"],
                        "ThoiDiemNhan": _now_portal(),
                    }
                )
        return answer

    def _login(self, data: dict[str, Any]) -> dict[str, Any]:
        user_ok = hmac.compare_digest(str(data.get("username", "")).encode(), self.username.encode())
        password_ok = hmac.compare_digest(str(data.get("password", "")).encode(), self._password.encode())
        if not (user_ok and password_ok):
            return _reply(LOGIN_FAILED_CODE, "Sai tên đăng nhập hoặc mật khẩu")
        session = secrets.token_urlsafe(24)
        with self._lock:
            self._sessions[session] = time.monotonic() + self.session_ttl_s
        return _reply("0", "Thành công", session=session, expires_in=max(1, round(self.session_ttl_s)))

    def _effect(self, service: str, code: str, key: str | None, what: str) -> None:
        self._effects.append({"service": service, "MaHoSo": code, "maYeuCau": key, "what": what, "at": time.time()})

    def _sync_records(self, data: dict[str, Any], key: str | None) -> tuple[dict[str, Any], str]:
        updating = str(data.get("isUpdating", "false")).strip() in {"true", "1"}
        records: list[HoSoMC] = []
        for raw in data.get("data", []):
            try:
                record = HoSoMC.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                return _reply(REJECTED_CODE, f"Dữ liệu không hợp lệ: {where}: {first['msg']}"), str(raw.get("MaHoSo"))
            problem = _record_problem(record)
            if problem:
                return _reply(REJECTED_CODE, f"Hồ sơ {record.MaHoSo}: {problem}"), record.MaHoSo
            records.append(record)
        first_code = records[0].MaHoSo
        with self._lock:
            if not updating:
                existing = next((r.MaHoSo for r in records if self._dossiers.get(r.MaHoSo, _Dossier()).record), None)
                if existing is not None:
                    return _reply(EXISTS_CODE, f"Hồ sơ {existing} {ALREADY_EXISTS} trên hệ thống"), existing
            skipped = 0
            check = self._faults.ordering_check
            for record in records:
                dossier = self._dossiers.setdefault(record.MaHoSo, _Dossier())
                wire = record.wire()
                if not check or record.NgayCapNhat >= dossier.record_time:
                    dossier.record, dossier.record_time = wire, record.NgayCapNhat
                else:
                    skipped += 1
                dossier.offer_status(record.TrangThaiHoSo, record.NgayCapNhat, "DongBoHoSoMC", check=check)
                dossier.arrivals.append(_arrival(record.TrangThaiHoSo, record.NgayCapNhat, "DongBoHoSoMC", key))
                self._effect("DongBoHoSoMC", record.MaHoSo, key, "update" if updating else "create")
        message = "Đồng bộ thành công" + (f" ({skipped} bản ghi cũ hơn dữ liệu hiện có được bỏ qua)" if skipped else "")
        return _reply("0", message), first_code

    def _sync_steps(self, data: dict[str, Any], key: str | None) -> tuple[dict[str, Any], str]:
        steps: list[TienDoHoSo] = []
        for raw in data.get("data", []):
            try:
                steps.append(TienDoHoSo.model_validate(raw))
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                return _reply(REJECTED_CODE, f"Dữ liệu không hợp lệ: {where}: {first['msg']}"), str(raw.get("MaHoSo"))
        first_code = steps[0].MaHoSo
        with self._lock:
            missing = next((s.MaHoSo for s in steps if s.MaHoSo not in self._dossiers), None)
            if missing is not None and self.strict_dossiers:
                return _reply(NOT_FOUND_CODE, f"Không tìm thấy hồ sơ {missing}"), missing
            check = self._faults.ordering_check
            last: dict[str, TienDoHoSo] = {}
            for step in steps:
                dossier = self._dossiers.setdefault(step.MaHoSo, _Dossier())
                dossier.steps[(step.ThoiDiemXuLy, step.TrangThai)] = step.wire()
                dossier.offer_status(step.TrangThai, step.ThoiDiemXuLy, "CapNhatTienDoHoSoMC", check=check)
                self._effect("CapNhatTienDoHoSoMC", step.MaHoSo, key, "step")
                last[step.MaHoSo] = step
            for code, step in last.items():  # a call's status for a dossier is its last step's
                arrival = _arrival(step.TrangThai, step.ThoiDiemXuLy, "CapNhatTienDoHoSoMC", key)
                self._dossiers[code].arrivals.append(arrival)
        return _reply("0", f"Cập nhật {len(steps)} bước xử lý thành công"), first_code

    def _sync_rating(self, data: dict[str, Any], key: str | None) -> tuple[dict[str, Any], str]:
        try:
            rating = DongBoDanhGiaRequest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            return _reply(REJECTED_CODE, f"Dữ liệu không hợp lệ: {where}: {first['msg']}"), str(data.get("MaHoSo"))
        with self._lock:
            if rating.MaHoSo not in self._dossiers and self.strict_dossiers:
                return _reply(NOT_FOUND_CODE, f"Không tìm thấy hồ sơ {rating.MaHoSo}"), rating.MaHoSo
            dossier = self._dossiers.setdefault(rating.MaHoSo, _Dossier())
            if dossier.rating is None or rating.ThoiGian >= dossier.rating["ThoiGian"]:
                dossier.rating = rating.wire()
            self._effect("DongBoDanhGia", rating.MaHoSo, key, "rating")
        return _reply("0", "Đồng bộ đánh giá thành công"), rating.MaHoSo

    def _lookup(self, data: dict[str, Any]) -> dict[str, Any]:
        code = data.get("MaHoSo")
        key = data.get("MaYeuCau")
        if not code and not key:
            raise _SoapFault("Client", "Cần MaHoSo hoặc MaYeuCau")
        with self._lock:
            seen: dict[str, Any] | None = None
            if key:
                entries = self._request_log.get(str(key), [])
                if not entries:
                    return _reply(NOT_FOUND_CODE, f"Không tìm thấy yêu cầu {key}")
                applied = [e for e in entries if e["error_code"] in OK_CODES]
                seen = (applied or entries)[-1]
                code = seen["MaHoSo"]
            dossier = self._dossiers.get(str(code))
            if dossier is None:
                if seen is None:
                    return _reply(NOT_FOUND_CODE, f"Không tìm thấy hồ sơ {code}")
                view: dict[str, Any] = {"MaHoSo": code, "SoBuocTienDo": "0"}
            else:
                view = dossier.view(str(code))
        result = {k: v for k, v in view.items() if v is not None}
        if seen is not None:
            result["YeuCau"] = dict(seen)
        return _reply("0", "Thành công", result=result)

    def _record(self, method: str, path: str, headers: Mapping[str, str]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "seq": next(self._counter),
            "at": time.time(),
            "method": method,
            "path": path,
            "content_type": headers.get("Content-Type"),
            "operation": None,
            "soap_action": None,
            "header": None,
            "body": None,
            "valid": False,
            "answer": None,
            "fault": None,
        }
        with self._lock:
            self._requests.append(entry)
        return entry

    def _control(  # noqa: PLR0911 - one branch per endpoint
        self, method: str, path: str, body: bytes, query: str = ""
    ) -> tuple[int, Any]:
        faults = self._faults_control(method, path, body)
        if faults is not None:
            return faults
        if (method, path) == ("GET", "/_sim/requests"):
            return 200, {"requests": self.requests()}
        if (method, path) == ("GET", "/_sim/effects"):
            try:
                return 200, {"effects": self.effects_since(parse_qs(query).get("since", ["0"])[-1])}
            except ValueError as exc:
                return 400, {"error": str(exc)}
        if (method, path) == ("GET", "/_sim/dossiers"):
            return 200, {"dossiers": self.dossier_codes()}
        if method == "GET" and path.startswith("/_sim/dossiers/"):
            found = self.dossier(path.removeprefix("/_sim/dossiers/"))
            return (200, found) if found is not None else (404, {"error": "no such dossier"})
        if (method, path) == ("POST", "/_sim/reset"):
            self.reset()
            return 200, {"reset": True}
        if (method, path) == ("POST", "/_sim/sessions/expire"):
            return 200, {"expired": self.expire_sessions()}
        return 404, {"error": "unknown control endpoint"}


def _envelope_root(body: bytes, headers: Mapping[str, str]) -> Any:
    """The request's SOAP 1.1 Envelope, parsed by the hardened parser; or a SOAP fault."""
    media = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media != "text/xml":
        raise _SoapFault("Client", f"SOAP 1.1 cần Content-Type text/xml, nhận {media or 'không có'}")
    try:
        root = etree.fromstring(body, parser=_hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise _SoapFault("Client", f"XML không hợp lệ: {exc.msg}") from None
    if root.getroottree().docinfo.doctype:
        raise _SoapFault("Client", "Không chấp nhận DOCTYPE trong yêu cầu")
    if root.tag != f"{{{SOAP11_ENV}}}Envelope":
        raise _SoapFault("VersionMismatch", f"Phần tử gốc {root.tag} không phải SOAP 1.1 Envelope")
    return root


def _arrival(status: Any, at: str, source: str, key: str | None) -> dict[str, Any]:
    return {"status": str(status), "at": at, "source": source, "maYeuCau": key}


def _record_problem(record: HoSoMC) -> str | None:
    """[A] The portal's business checks of a record; the reason it is refused, or None."""
    if record.NgayTiepNhan is not None and record.NgayTiepNhan < record.NgayNopHoSo:
        return "NgayTiepNhan trước NgayNopHoSo"
    if record.TrangThaiHoSo == "3" and record.NgayTuChoi is None:
        return "hồ sơ không được tiếp nhận (3) phải có NgayTuChoi"
    if record.TrangThaiHoSo == "10" and record.NgayTra is None:
        return "hồ sơ đã trả kết quả (10) phải có NgayTra"
    return None


# -- hostile and broken replies --------------------------------------------------------------------------------


def _seeded_message() -> str:
    return f"Công dân Nguyễn Văn A, CCCD {SEEDED_CCCD}, điện thoại {SEEDED_PHONE}"


def _doc_with_message(prolog: str, message: str) -> bytes:
    """A well-formed DongBoHoSoMCResponse whose message is ``message`` (raw XML), after a ``prolog``."""
    return (
        f'<?xml version="1.0" encoding="utf-8"?>{prolog}'
        f'<soap:Envelope xmlns:soap="{SOAP11_ENV}" xmlns:tns="{NAMESPACE}"><soap:Body>'
        f"<tns:DongBoHoSoMCResponse><tns:error_code>0</tns:error_code>"
        f"<tns:message>{message}</tns:message></tns:DongBoHoSoMCResponse>"
        f"</soap:Body></soap:Envelope>"
    ).encode()


def hostile_body(mode: FaultMode) -> bytes:
    """The bytes of a small hostile reply (the big ones, ``huge`` and ``drip``, are streamed by the handler)."""
    if mode == "billion_laughs":
        entities = '<!ENTITY lol "lol">' + "".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
        )
        return _doc_with_message(f"<!DOCTYPE soap:Envelope [{entities}]>", "&lol9;")
    if mode == "quadratic_blowup":
        return _doc_with_message(f'<!DOCTYPE soap:Envelope [<!ENTITY a "{"a" * 50_000}">]>', "&a;" * 5_000)
    if mode == "xxe":
        return _doc_with_message('<!DOCTYPE soap:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;")
    if mode == "doctype_system":
        return _doc_with_message('<!DOCTYPE soap:Envelope SYSTEM "file:///etc/passwd">', _seeded_message())
    if mode == "deep_nesting":
        depth = 10_000
        return _doc_with_message("", "<tns:a>" * depth + _seeded_message() + "</tns:a>" * depth)
    if mode == "html":
        return (
            "<!DOCTYPE html><html><head><title>LGSP</title></head><body><h1>Hệ thống đang bảo trì</h1>"
            f"<p>{_seeded_message()}</p></body></html>"
        ).encode()
    raise ValueError(f"{mode} is not a small hostile reply")


class _Server(SimServer):
    error_event = "nps_sim.connection_error"
    sim: NpsSimulator


class _Handler(QuietHandler):
    server: _Server
    server_version = "LGSP-DVCQG-simulator/0.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib handler's method name
        """Serve the WSDL, the XSD and the control endpoints."""
        split = urlsplit(self.path)
        sim = self.server.sim
        if split.path.startswith(CONTROL_PREFIX):
            status, data = sim._control("GET", split.path, b"", split.query)  # noqa: SLF001 - part of the simulator
            self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8")
            return
        query = parse_qs(split.query, keep_blank_values=True)
        if split.path == SOAP_PATH and "wsdl" in query:
            self._send(200, sim.wsdl().encode(), "text/xml; charset=utf-8")
        elif split.path == SOAP_PATH and query.get("xsd") == ["nps.xsd"]:
            self._send(200, sim._xsd_bytes, "text/xml; charset=utf-8")  # noqa: SLF001
        else:
            self._send(404, b"not found", "text/plain; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib handler's method name
        """Answer a SOAP call, or a control endpoint."""
        sim = self.server.sim
        split = urlsplit(self.path)
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            self._send(411, b"Content-Length required", "text/plain; charset=utf-8")
            return
        length = int(length_header)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True  # the unread body would be taken for the next request
            self._send(413, b"request too large", "text/plain; charset=utf-8")
            return
        body = self.rfile.read(length)
        if split.path.startswith(CONTROL_PREFIX):
            status, data = sim._control("POST", split.path, body)  # noqa: SLF001
            self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8")
            return
        if split.path != SOAP_PATH:
            self._send(404, b"not found", "text/plain; charset=utf-8")
            return
        self._soap(body)

    def _soap(self, body: bytes) -> None:
        headers = dict(self.headers.items())
        entry = self.server.sim._record("POST", SOAP_PATH, headers)  # noqa: SLF001
        try:
            self._answer(body, headers, entry)
        finally:  # one line per recorded call, through the bus's logging chain when run by `simulate`
            if self.server.sim.log_requests:
                log.info(
                    "nps_sim.request",
                    operation=entry.get("operation"),
                    valid=entry.get("valid"),
                    answer=entry.get("answer"),
                    fault=entry.get("fault"),
                )

    def _answer(self, body: bytes, headers: dict[str, str], entry: dict[str, Any]) -> None:
        sim = self.server.sim
        try:
            operation, header, data = sim._parse(body, headers, entry)  # noqa: SLF001
        except _SoapFault as fault:
            entry["answer"] = f"soap:{fault.code}"
            self._send(500, _fault_envelope(fault.code, fault.text), "text/xml; charset=utf-8")
            return
        entry["valid"] = True
        faults, mode = sim._draw(operation)  # noqa: SLF001
        entry["fault"] = mode
        sim._sleep(faults.latency_s)  # noqa: SLF001
        answer: dict[str, Any] | None = None
        if mode is None or faults.applies_first(mode):
            try:
                answer = sim._handle(operation, header, data)  # noqa: SLF001
            except _SoapFault as fault:
                entry["answer"] = f"soap:{fault.code}"
                self._send(500, _fault_envelope(fault.code, fault.text), "text/xml; charset=utf-8")
                return
            entry["answer"] = answer["error_code"]
        if mode is None and answer is not None:
            self._send(200, _envelope(operation, answer), "text/xml; charset=utf-8")
            return
        if mode is not None:
            self._misbehave(mode, faults, operation, answer or _reply("0", _seeded_message()))

    def _misbehave(self, mode: FaultMode, faults: Faults, operation: str, answer: dict[str, Any]) -> None:  # noqa: C901, PLR0912 - one branch per fault
        xml = "text/xml; charset=utf-8"
        if mode == "http_500":
            self._send(500, b"<html><body>Internal Server Error</body></html>", "text/html; charset=utf-8")
        elif mode == "http_503":
            self._send(503, b"Service Unavailable", "text/plain; charset=utf-8")
        elif mode == "server_fault":
            self._send(500, _fault_envelope("Server", faults.fault_string or "Lỗi hệ thống DVCQG"), xml)
        elif mode == "client_fault":
            self._send(500, _fault_envelope("Client", faults.fault_string or "Yêu cầu không hợp lệ"), xml)
        elif mode == "pii_fault":
            text = faults.fault_string or (
                f"Hồ sơ không hợp lệ: {_seeded_message()}; "
                f"<SoDinhDanh>{SEEDED_CCCD}</SoDinhDanh><SoDienThoai>{SEEDED_PHONE}</SoDienThoai>"
            )
            self._send(500, _fault_envelope("Client", text), xml)
        elif mode == "reject":
            self._send(200, _envelope(operation, _reply(REJECTED_CODE, faults.reject_message)), xml)
        elif mode == "ok_code":
            self._send(200, _envelope(operation, {**answer, "error_code": faults.ok_code}), xml)
        elif mode == "hang":
            self.server.sim._sleep(faults.hang_s)  # noqa: SLF001
            self.reset_connection()
        elif mode in {"drop", "apply_then_drop"}:
            self.reset_connection()
        elif mode == "truncated":
            data = _envelope(operation, answer)
            self._send(200, data[: len(data) * 6 // 10], xml, declared=len(data))
            self.close_connection = True
        elif mode == "wrong_namespace":
            self._send(200, _envelope(operation, answer, body_ns="urn:khac:v1"), xml)
        elif mode == "soap12_envelope":
            self._send(200, _envelope(operation, answer, env_ns=SOAP12_ENV), xml)
        elif mode == "huge":
            self._send_huge(faults)
        elif mode == "drip":
            self._send(200, _envelope(operation, answer), xml, drip_s=faults.drip_interval_s)
        else:
            self._send(200, hostile_body(mode), "text/html; charset=utf-8" if mode == "html" else xml)

    def _send_huge(self, faults: Faults) -> None:
        """A 200 whose message is ``huge_bytes`` long, generated as it goes (the server never holds it)."""
        head = _doc_with_message("", "").split(b"<tns:message>")[0] + b"<tns:message>"
        chunk = (_seeded_message().encode() + b" ") * 1024
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            if faults.huge_declare_length:
                self.send_header("Content-Length", str(faults.huge_bytes))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(head)
            sent = len(head)
            while sent < faults.huge_bytes:
                piece = chunk[: min(len(chunk), faults.huge_bytes - sent)]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            pass  # the client stopped reading, as it should
        self.close_connection = True

    def _send(
        self, status: int, data: bytes, content_type: str, *, declared: int | None = None, drip_s: float = 0.0
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(declared if declared is not None else len(data)))
            self.end_headers()
            if drip_s > 0:
                self.wfile.flush()
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    if self.server.sim._wake.wait(drip_s):  # noqa: SLF001
                        break
            else:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, session_ttl_s: float = DEFAULT_SESSION_TTL_S) -> None:
    """Run the simulator in the foreground until interrupted (``igate-bus simulate nps``).

    It accepts the user and password the bus itself is given (``IGATE_BUS_NPS_USERNAME`` and
    ``IGATE_BUS_NPS_PASSWORD``) when they are set, so a demo needs one environment for both; otherwise
    :data:`DEFAULT_USERNAME` and :data:`DEFAULT_PASSWORD`.
    """
    sim = NpsSimulator(
        host,
        port,
        username=os.environ.get(USERNAME_ENV) or DEFAULT_USERNAME,
        password=os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD,
        session_ttl_s=session_ttl_s,
    )
    run_in_foreground(
        sim, "nps_sim", lambda: {"url": sim.endpoint, "wsdl": f"{sim.endpoint}?wsdl", "username": sim.username}
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.nps [--host H] [--port P] [--session-ttl S]``."""
    parser = argparse.ArgumentParser(prog="python -m simulators.nps", description="The national portal simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--session-ttl", type=duration_arg, default=DEFAULT_SESSION_TTL_S, help="e.g. 1h")
    args = parser.parse_args(argv)
    configure_cli_logging()
    serve(args.host, args.port, session_ttl_s=args.session_ttl)


if __name__ == "__main__":
    main()
