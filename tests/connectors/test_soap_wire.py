"""The compiled SOAP envelope (connectors/_soap_wire.py) is zeep's, byte for byte, or it declines to zeep.

Every operation of every shipped WSDL is compared with what zeep writes for the same values: samples with
hostile text, every portal request the adapters make of the shipped examples, and a record with every list
filled. What the plan is not sure of it declines, and zeep's own path then serialises (or refuses) the call.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import zeep.exceptions
import zeep.helpers
from zeep.wsdl.utils import etree_to_string
from zeep.xsd.types.builtins import Boolean, Integer, String

from config.model import ConnectorSpec
from connectors import nps, receipt, sms_gateways
from connectors._soap import SoapClient
from connectors._soap_wire import Declined, WirePlan, compile_operation
from schemas.nps import DongBoHoSoMCRequest, HoSoMC

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "events"
WSDLS = {
    "nps": (nps.WSDL_FILE, nps.BINDING),
    "receipt": (receipt.WSDL_FILE, receipt.BINDING),
    "viettel": (sms_gateways.VIETTEL_WSDL, sms_gateways.VIETTEL_BINDING),
}
HOSTILE = [
    "plain",
    "a & b < c > d ]]> e",
    "quotes ' \" and tabs\tand\nnewlines",
    "carriage\r\nreturn",
    "Nguyễn Văn Ánh, Đắk Lắk",
    "emoji 😀 and combining e\u0301",
    "DEL \x7f NEL \u0085 LS \u2028 PS \u2029",
    "  leading and trailing  ",
    "<![CDATA[x]]> &amp; &#65;",
]
HEADER = {"header": {"session": "s-1", "madonvi": "000.00.16.H16", "maYeuCau": "k-1"}}


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, SoapClient]]:
    """One client per shipped WSDL, never connected."""
    spec = ConnectorSpec(type="nps", endpoint="http://render.invalid/soap")
    made = {
        name: SoapClient(name, spec, wsdl, binding=binding, address=str(spec.endpoint))
        for name, (wsdl, binding) in WSDLS.items()
    }
    yield made
    for client in made.values():
        client.close()


def zeep_bytes(client: SoapClient, operation: str, body: dict[str, Any], headers: dict[str, Any] | None) -> bytes:
    """What zeep writes for this call (its own create_message and writer)."""
    kwargs: dict[str, Any] = dict(body)
    if headers is not None:
        kwargs["_soapheaders"] = headers
    message = client._client.create_message(client._service, operation, **kwargs)  # type: ignore[no-untyped-call]
    data: bytes = etree_to_string(message)  # type: ignore[no-untyped-call]
    return data


def plan(client: SoapClient, operation: str) -> WirePlan:
    """The operation's compiled plan (every shipped one compiles)."""
    compiled = compile_operation(client._binding, operation)
    assert compiled is not None, operation
    return compiled


def operations(client: SoapClient) -> list[str]:
    """The binding's operations."""
    return sorted(client._binding._operations)


def sample(node: Any, text: str) -> Any:
    """A value for ``node`` (a plan node): ``text`` in every string, every list with two items."""
    if node.xmlvalue is not None:
        kind = node.xmlvalue.__self__
        if isinstance(kind, Boolean):
            return True
        if isinstance(kind, Integer):
            return 7
        assert isinstance(kind, String), kind
        return text
    return {child.key: sample(child, text) for child in node.children}


def sample_body(compiled: WirePlan, text: str) -> dict[str, Any]:
    """A body for the operation with every element present, lists of two."""
    body = {}
    for child in compiled._body.children:
        one = sample(child, text)
        body[child.key] = [one, one] if child.many and (child.max_occurs or 2) >= 2 else one
    return body


def sample_headers(compiled: WirePlan) -> dict[str, Any] | None:
    """Header values for every header part, or None when the operation has none."""
    return {h.key: sample(h, "h") for h in compiled._headers} or None


class TestSameBytesAsZeep:
    """Whatever the plan writes, zeep would have written."""

    @pytest.mark.parametrize("wsdl", sorted(WSDLS))
    def test_every_operation_of_every_shipped_wsdl_compiles(self, clients: dict[str, SoapClient], wsdl: str) -> None:
        """No shipped operation silently falls back to zeep's per-call serialisation."""
        client = clients[wsdl]
        assert operations(client)
        for operation in operations(client):
            assert compile_operation(client._binding, operation) is not None, operation

    @pytest.mark.parametrize("text", HOSTILE)
    @pytest.mark.parametrize("wsdl", sorted(WSDLS))
    def test_every_operation_writes_zeeps_bytes(self, clients: dict[str, SoapClient], wsdl: str, text: str) -> None:
        """Each operation with every element filled (hostile text in the strings): zeep's bytes exactly."""
        client = clients[wsdl]
        for operation in operations(client):
            compiled = plan(client, operation)
            body, headers = sample_body(compiled, text), sample_headers(compiled)
            assert compiled.envelope(body, headers) == zeep_bytes(client, operation, body, headers), operation

    def test_the_http_headers_are_zeeps(self, clients: dict[str, SoapClient]) -> None:
        """SOAPAction quoted, as zeep's SOAP 1.1 binding sends it, and zeep's content type."""
        compiled = plan(clients["nps"], "DongBoHoSoMC")
        assert dict(compiled.http_headers) == {
            "SOAPAction": '"urn:dvcqg:lgsp:v1#DongBoHoSoMC"',
            "Content-Type": "text/xml; charset=utf-8",
        }

    def test_every_portal_request_of_the_examples_is_zeeps_bytes(self, clients: dict[str, SoapClient]) -> None:
        """What the igate_to_nps adapters make of every shipped example event, with the session header."""
        from adapters.registry import adapters as registered
        from schemas.envelope import parse_event
        from schemas.events import EVENT_PAYLOADS

        importlib.import_module("adapters.igate_to_nps")
        client = clients["nps"]
        operation_for = {op.request: nps.SERVICES[name] for name, op in nps.NpsConnector.OPERATIONS.items()}
        compared = set()
        for path in sorted(EXAMPLES.glob("*.json")):
            event = parse_event(path.read_bytes(), payload_models=EVENT_PAYLOADS)
            for name, adapter in sorted(registered().items()):
                if not name.startswith("igate_to_nps.") or event.envelope.event_type not in adapter.accepts:
                    continue
                request = adapter(event, now=datetime(2026, 11, 26, 3, 0, tzinfo=UTC))
                operation = operation_for[type(request)]
                body = request.wire()  # type: ignore[attr-defined]  # every portal request model has it
                assert plan(client, operation).envelope(body, HEADER) == zeep_bytes(client, operation, body, HEADER)
                compared.add(operation)
        assert compared == {"DongBoHoSoMC", "CapNhatTienDoHoSoMC", "DongBoDanhGia"}

    def test_a_record_with_every_list_filled_is_zeeps_bytes(self, clients: dict[str, SoapClient]) -> None:
        """Nested lists (supplements with their papers and fees), flags, amounts, an update: zeep's bytes."""
        paper = {"TenGiayTo": "Bản vẽ & sơ đồ", "SoLuong": 2, "LoaiGiayTo": "BV"}
        fee = {"TenPhiLePhi": "Lệ phí <trước bạ>", "Gia": 150000, "MaPhiLePhi": "LP1", "LoaiPhiLePhi": "2"}
        record = HoSoMC.model_validate(
            {
                "MaHoSo": "000.00.16.H16-250312-0001",
                "MaTTHC": "1.003560.000.00.00.H16",
                "TenTTHC": "Đăng ký biến động",
                "KenhThucHien": 2,
                "ChuHoSo": "Nguyễn Văn A",
                "LoaiDoiTuong": 1,
                "DinhDanhCHS": [{"LoaiDinhDanh": 1, "SoDinhDanh": "012345678901"}],
                "TrangThaiHoSo": 2,
                "NgayNopHoSo": "20250312080000",
                "HoSoCoThanhPhanSoHoa": True,
                "TaiLieuNop": [{"TenTepDinhKem": "Đơn", "DuocSoHoa": True}, {"TenTepDinhKem": "CCCD"}],
                "DanhSachLePhi": [fee, fee],
                "DanhSachTepDinhKemKhac": [paper],
                "DanhSachHoSoBoSung": [
                    {
                        "HoSoBoSungId": "bs1",
                        "NoiDungBoSung": "Thiếu bản vẽ",
                        "NgayBoSung": "20250314080000",
                        "DanhSachGiayToBoSung": [paper, paper],
                        "DanhSachLePhiBoSung": [fee],
                    }
                ],
                "DSKetNoiCSDL": [{"MaCSDL": 7}],
                "NgayCapNhat": "20250321090000",
            }
        )
        client = clients["nps"]
        for updating in (False, True):
            body = DongBoHoSoMCRequest(isUpdating=updating, data=(record, record)).wire()
            envelope = plan(client, "DongBoHoSoMC").envelope(body, HEADER)
            assert envelope == zeep_bytes(client, "DongBoHoSoMC", body, HEADER)
            assert (b"<ns0:isUpdating>true</ns0:isUpdating>" in envelope) is updating

    def test_an_operation_without_headers_writes_no_header(self, clients: dict[str, SoapClient]) -> None:
        """The login carries no header: none written, with ``{}`` as with None, as zeep does."""
        client = clients["nps"]
        body = {"username": "u", "password": "p&ss"}
        headers: dict[str, Any] | None
        for headers in (None, {}):
            envelope = plan(client, "XacThuc").envelope(body, headers)
            assert envelope == zeep_bytes(client, "XacThuc", body, headers)
            assert b"Header" not in envelope


class TestDeclines:
    """What the plan is not sure of goes to zeep: its own output, or its own error."""

    def body(self, **changes: Any) -> dict[str, Any]:
        """A small valid DongBoHoSoMC body with ``changes`` to its record."""
        record: dict[str, Any] = {
            "MaHoSo": "A-1",
            "MaTTHC": "1.003560",
            "TenTTHC": "x",
            "KenhThucHien": "1",
            "ChuHoSo": "c",
            "LoaiDoiTuong": "1",
            "TrangThaiHoSo": "2",
            "NgayNopHoSo": "20250101000000",
            "NgayCapNhat": "20250101000000",
        }
        record.update(changes)
        return {"isUpdating": False, "data": [{k: v for k, v in record.items() if v is not ...}]}

    @pytest.mark.parametrize(
        ("changes", "zeep_error"),
        [
            ({"KhongCo": "x"}, TypeError),  # a key the schema does not have
            ({"ChuHoSo": ...}, zeep.exceptions.ValidationError),  # a required element missing
            ({"ChuHoSo": None}, zeep.exceptions.ValidationError),
            ({"TenTTHC": "nul \x00 byte"}, ValueError),  # characters XML 1.0 cannot carry
            ({"TenTTHC": "bom \ufffe"}, ValueError),
            ({"TenTTHC": "lone \ud800 surrogate"}, ValueError),
        ],
    )
    def test_a_request_zeep_refuses_is_declined_and_zeep_still_refuses_it(
        self, clients: dict[str, SoapClient], changes: dict[str, Any], zeep_error: type[Exception]
    ) -> None:
        """Declined here, and zeep's own error (hence a MappingError, nothing sent) is what the caller meets."""
        client = clients["nps"]
        body = self.body(**changes)
        with pytest.raises(Declined):
            plan(client, "DongBoHoSoMC").envelope(body, HEADER)
        with pytest.raises(zeep_error):
            zeep_bytes(client, "DongBoHoSoMC", body, HEADER)

    def test_too_many_items_are_declined(self, clients: dict[str, SoapClient]) -> None:
        """Eleven progress steps where the schema takes ten: declined; zeep refuses it (maxOccurs)."""
        step = {
            "MaHoSo": "A-1",
            "NguoiXuLy": "n",
            "ThoiDiemXuLy": "20250101000000",
            "NoiDungXuLy": "x",
            "TrangThai": "2",
        }
        body = {"data": [step] * 11}
        with pytest.raises(Declined):
            plan(clients["nps"], "CapNhatTienDoHoSoMC").envelope(body, HEADER)
        with pytest.raises(zeep.exceptions.ValidationError):
            zeep_bytes(clients["nps"], "CapNhatTienDoHoSoMC", body, HEADER)

    @pytest.mark.parametrize(
        "changes",
        [{"GhiChu": ""}, {"TenTTHC": 1.5}, {"DinhDanhCHS": [{}]}, {"DinhDanhCHS": ({"LoaiDinhDanh": "1"},)}],
    )
    def test_values_the_plan_does_not_write_are_declined(
        self, clients: dict[str, SoapClient], changes: dict[str, Any]
    ) -> None:
        """An empty string, a float, an empty element, a tuple for a list: left to zeep, whatever it makes of them."""
        with pytest.raises(Declined):
            plan(clients["nps"], "DongBoHoSoMC").envelope(self.body(**changes), HEADER)

    def test_an_unknown_header_part_is_declined(self, clients: dict[str, SoapClient]) -> None:
        """A header the operation does not define: declined (zeep refuses it)."""
        with pytest.raises(Declined):
            plan(clients["nps"], "DongBoHoSoMC").envelope(self.body(), {"other": {"x": "y"}})


ENV = 'xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:tns="urn:dvcqg:lgsp:v1"'


def reply(answer: str, *, head: str = "<?xml version='1.0' encoding='utf-8'?>\n", env: str = ENV) -> bytes:
    """A DongBoHoSoMC reply envelope around ``answer`` (the response element's content)."""
    return (
        f"{head}<soap:Envelope {env}><soap:Body><tns:DongBoHoSoMCResponse>{answer}"
        "</tns:DongBoHoSoMCResponse></soap:Body></soap:Envelope>"
    ).encode()


READ = {
    "plain": reply("<tns:error_code>0</tns:error_code><tns:message>Đồng bộ thành công</tns:message>"),
    "no message": reply("<tns:error_code>00</tns:error_code>"),
    "empty message": reply("<tns:error_code>0</tns:error_code><tns:message/>"),
    "references": reply(
        "<tns:error_code>3</tns:error_code><tns:message>a &amp; b &lt;c&gt; &#x1F600; <![CDATA[<x>]]></tns:message>"
    ),
    "pretty": reply("\n  <tns:error_code>0</tns:error_code>\n  <tns:message> sp </tns:message>\n"),
    "comments": reply("<!-- c --><tns:error_code>0</tns:error_code><!-- d --><tns:message>m</tns:message>"),
    "default namespace": (
        b'<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>'
        b'<DongBoHoSoMCResponse xmlns="urn:dvcqg:lgsp:v1"><error_code>0</error_code></DongBoHoSoMCResponse>'
        b"</Body></Envelope>"
    ),
    "no declaration": reply("<tns:error_code>0</tns:error_code>", head=""),
}
DECLINED = {
    "doctype": reply("<tns:error_code>0</tns:error_code>", head='<!DOCTYPE r SYSTEM "file:///etc/passwd">'),
    "entity": reply("<tns:error_code>&e;</tns:error_code>", head='<!DOCTYPE r [<!ENTITY e "0">]>'),
    "header": reply("<tns:error_code>0</tns:error_code>").replace(b"<soap:Body>", b"<soap:Header/><soap:Body>"),
    "soap 1.2": reply("<tns:error_code>0</tns:error_code>").replace(
        b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope"
    ),
    "fault": (
        f"<soap:Envelope {ENV}><soap:Body><soap:Fault><faultcode>soap:Client</faultcode>"
        "<faultstring>x</faultstring></soap:Fault></soap:Body></soap:Envelope>"
    ).encode(),
    "wrong namespace": reply("<tns:error_code>0</tns:error_code>", env=ENV.replace("urn:dvcqg:lgsp:v1", "urn:x")),
    "unknown element": reply("<tns:error_code>0</tns:error_code><tns:extra>1</tns:extra>"),
    "out of order": reply("<tns:message>m</tns:message><tns:error_code>0</tns:error_code>"),
    "repeated": reply("<tns:error_code>0</tns:error_code><tns:error_code>1</tns:error_code>"),
    "missing required": reply("<tns:message>m</tns:message>"),
    "attribute": reply(
        '<tns:error_code>0</tns:error_code><tns:message xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        ' xsi:nil="true"/>'
    ),
    "nested": reply("<tns:error_code>0<tns:x/></tns:error_code>"),
    "processing instruction": reply("<tns:error_code>0</tns:error_code><?pi x?>"),
    "two answers": reply("<tns:error_code>0</tns:error_code>").replace(
        b"</soap:Body>", b"<tns:DongBoHoSoMCResponse/></soap:Body>"
    ),
    "not well-formed": reply("<tns:error_code>0</tns:error_code").replace(b"</soap:Envelope>", b""),
    "not xml": b"\x00\x01 garbage",
}


class TestReply:
    """A reply the plan reads is read as zeep reads it; anything else it leaves to zeep."""

    def zeep_reads(self, client: SoapClient, content: bytes) -> dict[str, Any]:
        """What zeep's reply path (with the connector's strict settings) makes of ``content``, serialised."""
        from connectors._http_wire import Headers
        from connectors._soap import SoapReply, _drop_none

        headers = Headers({"content-type": "text/xml; charset=utf-8"})  # what the transport hands zeep
        answer = client._binding.process_reply(
            client._client, client._binding.get("DongBoHoSoMC"), SoapReply(200, headers, content, 1.0, "utf-8")
        )
        data: dict[str, Any] = _drop_none(zeep.helpers.serialize_object(answer, dict))  # type: ignore[no-untyped-call]
        return data

    def test_only_the_effect_operations_with_plain_replies_are_compiled(self, clients: dict[str, SoapClient]) -> None:
        """The portal's three effects (error_code, message); the login and lookup (extensions) stay zeep's."""
        compiled = {name for name in operations(clients["nps"]) if plan(clients["nps"], name).reply is not None}
        assert compiled == {"DongBoHoSoMC", "CapNhatTienDoHoSoMC", "DongBoDanhGia"}

    @pytest.mark.parametrize("case", sorted(READ))
    def test_a_plain_reply_is_read_as_zeep_reads_it(self, clients: dict[str, SoapClient], case: str) -> None:
        """Entities, CDATA, comments, whitespace, other prefixes: the same values as zeep's."""
        read_plan = plan(clients["nps"], "DongBoHoSoMC").reply
        assert read_plan is not None
        values = read_plan.read(READ[case])
        assert values is not None
        assert values == self.zeep_reads(clients["nps"], READ[case])

    @pytest.mark.parametrize("case", sorted(DECLINED))
    def test_anything_else_is_left_to_zeep(self, clients: dict[str, SoapClient], case: str) -> None:
        """DOCTYPE, entities, headers, faults, other shapes and broken XML: declined, zeep judges them."""
        read_plan = plan(clients["nps"], "DongBoHoSoMC").reply
        assert read_plan is not None
        assert read_plan.read(DECLINED[case]) is None
