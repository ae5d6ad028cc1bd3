"""The portal's SOAP simulator spoken to in raw SOAP 1.1 over a real socket, without the bus's connector.

Each test asserts on the HTTP reply (status, content type, the envelope parsed by a hardened lxml parser
and checked against the XSD) and on what the simulator recorded and holds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import zeep
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints
from wallclock import assert_within

from simulators.nps import (
    DEFAULT_MADONVI,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    NAMESPACE,
    SEEDED_CCCD,
    SOAP11_ENV,
    SOAP_PATH,
    WSDL_DIR,
    NpsSimulator,
    hostile_body,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

CODE = "000.00.16.H16-250312-0001"
XML = "text/xml; charset=utf-8"
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
SCHEMA = etree.XMLSchema(etree.parse(str(WSDL_DIR / "nps.xsd"), parser=PARSER))


@pytest.fixture(scope="module")
def sim_server() -> Iterator[NpsSimulator]:
    """One simulator for the module; each test resets it."""
    with NpsSimulator(session_ttl_s=60) as sim:
        yield sim


@pytest.fixture
def sim(sim_server: NpsSimulator) -> Iterator[NpsSimulator]:
    """The shared simulator, empty and without faults."""
    sim_server.reset()
    yield sim_server
    sim_server.reset()


@pytest.fixture
def http(sim: NpsSimulator) -> Iterator[httpx.Client]:
    """A plain HTTP client to the simulator."""
    with httpx.Client(base_url=sim.url, timeout=5.0) as client:
        yield client


def envelope(body: str, header: str = "", *, env_ns: str = SOAP11_ENV) -> bytes:
    """A SOAP envelope around ``body`` (and ``header``), with the service namespace as ``t``."""
    head = f"<s:Header>{header}</s:Header>" if header else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{env_ns}" xmlns:t="{NAMESPACE}">'
        f"{head}<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fields(values: dict[str, Any]) -> str:
    """``<t:k>v</t:k>`` for each item, lists repeated, dicts nested."""
    out = []
    for key, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            inner = fields(item) if isinstance(item, dict) else str(item)
            out.append(f"<t:{key}>{inner}</t:{key}>")
    return "".join(out)


def post(http: httpx.Client, operation: str, payload: bytes, *, action: str | None = None) -> httpx.Response:
    """POST one SOAP request with the operation's SOAPAction."""
    headers = {"Content-Type": XML, "SOAPAction": f'"{action or f"{NAMESPACE}#{operation}"}"'}
    return http.post(SOAP_PATH, content=payload, headers=headers)


def answer(response: httpx.Response) -> etree._Element:
    """The Body's child of a reply, parsed by a hardened parser."""
    root = etree.fromstring(response.content, parser=PARSER)
    assert root.tag == f"{{{SOAP11_ENV}}}Envelope"
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    assert body is not None
    return body[0]


def text(element: etree._Element, name: str) -> str | None:
    """The text of a child element in the service namespace."""
    found = element.findtext(f"{{{NAMESPACE}}}{name}")
    return None if found is None else str(found)


def fault(response: httpx.Response) -> tuple[str, str]:
    """(faultcode, faultstring) of a fault reply, which must come with HTTP 500."""
    assert response.status_code == 500
    node = answer(response)
    assert node.tag == f"{{{SOAP11_ENV}}}Fault"
    return node.findtext("faultcode") or "", node.findtext("faultstring") or ""


def login(http: httpx.Client) -> str:
    """Log in and return the session."""
    response = post(http, "XacThuc", envelope(_xacthuc()))
    node = answer(response)
    assert text(node, "error_code") == "0"
    session = text(node, "session")
    assert session
    return session


def _xacthuc(password: str = DEFAULT_PASSWORD) -> str:
    return f"<t:XacThuc>{fields({'username': DEFAULT_USERNAME, 'password': password})}</t:XacThuc>"


def header(session: str, key: str | None = None, madonvi: str = DEFAULT_MADONVI) -> str:
    """The PhienLamViec header."""
    values = {"session": session, "madonvi": madonvi}
    if key:
        values["maYeuCau"] = key
    return f"<t:PhienLamViec>{fields(values)}</t:PhienLamViec>"


def hoso(**changes: Any) -> dict[str, Any]:
    """A valid HoSoMC as wire fields, in XSD order."""
    data: dict[str, Any] = {
        "MaHoSo": CODE,
        "MaTTHC": "1.003560.000.00.00.H16",
        "TenTTHC": "Đăng ký biến động",
        "KenhThucHien": "2",
        "ChuHoSo": "Nguyễn Văn A",
        "LoaiDoiTuong": "1",
        "DinhDanhCHS": [{"LoaiDinhDanh": "1", "SoDinhDanh": SEEDED_CCCD}],
        "TrangThaiHoSo": "2",
        "NgayNopHoSo": "20250312080000",
        "NgayTiepNhan": "20250312090000",
        "NgayTra": None,
        "NgayCapNhat": "20250312090000",
    }
    unknown = set(changes) - set(data)
    assert not unknown, f"add {unknown} to hoso() in XSD order"
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def dong_bo(http: httpx.Client, session: str, key: str, *, updating: bool = False, **changes: Any) -> etree._Element:
    """Send one record; the response element."""
    body = f"<t:DongBoHoSoMC>{fields({'isUpdating': str(updating).lower(), 'data': hoso(**changes)})}</t:DongBoHoSoMC>"
    response = post(http, "DongBoHoSoMC", envelope(body, header(session, key)))
    assert response.status_code == 200
    return answer(response)


def tra_cuu(http: httpx.Client, session: str, **query: str) -> etree._Element:
    """TraCuuHoSo by MaHoSo or MaYeuCau; the response element."""
    response = post(http, "TraCuuHoSo", envelope(f"<t:TraCuuHoSo>{fields(query)}</t:TraCuuHoSo>", header(session)))
    assert response.status_code == 200
    return answer(response)


class TestWsdl:
    """The contract is served where SOAP clients look for it."""

    def test_wsdl_is_served_at_query_wsdl_with_this_servers_address(
        self, sim: NpsSimulator, http: httpx.Client
    ) -> None:
        """?wsdl returns the WSDL whose soap:address and XSD import point at this server."""
        response = http.get(SOAP_PATH, params={"wsdl": ""})

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/xml")
        root = etree.fromstring(response.content, parser=PARSER)
        address = root.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
        assert address is not None
        assert address.get("location") == sim.endpoint
        imported = root.find(".//{http://www.w3.org/2001/XMLSchema}import")
        assert imported is not None
        assert imported.get("schemaLocation") == f"{sim.endpoint}?xsd=nps.xsd"

    def test_a_stock_soap_client_builds_from_the_served_wsdl_and_calls_it(self, sim: NpsSimulator) -> None:
        """Plain zeep reads ?wsdl and the XSD over HTTP and logs in: the served contract is usable."""
        transport = zeep.Transport(timeout=5, operation_timeout=5)  # type: ignore[no-untyped-call]
        try:
            client = zeep.Client(f"{sim.endpoint}?wsdl", transport=transport)  # type: ignore[no-untyped-call]
            reply = client.service.XacThuc(username=DEFAULT_USERNAME, password=DEFAULT_PASSWORD)
        finally:
            transport.session.close()

        assert reply.error_code == "0"
        assert reply.session
        assert [r["operation"] for r in sim.requests()] == ["XacThuc"]

    def test_xsd_is_served_and_is_the_shipped_file(self, http: httpx.Client) -> None:
        """?xsd=nps.xsd returns the schema byte for byte."""
        response = http.get(SOAP_PATH, params={"xsd": "nps.xsd"})

        assert response.status_code == 200
        assert response.content == (WSDL_DIR / "nps.xsd").read_bytes()


class TestValidation:
    """Requests are checked against the XSD and the SOAP 1.1 rules; a bad one is a client fault."""

    def test_request_breaking_the_xsd_is_a_client_fault_and_applies_nothing(
        self, sim: NpsSimulator, http: httpx.Client
    ) -> None:
        """A 51-character NguoiXuLy breaks the schema: soap:Client naming the element, no effect."""
        session = login(http)
        step = {
            "MaHoSo": CODE,
            "NguoiXuLy": "x" * 51,
            "ThoiDiemXuLy": "20250312100000",
            "NoiDungXuLy": "Thẩm định",
            "TrangThai": "4",
        }
        body = f"<t:CapNhatTienDoHoSoMC>{fields({'data': step})}</t:CapNhatTienDoHoSoMC>"

        code, reason = fault(post(http, "CapNhatTienDoHoSoMC", envelope(body, header(session, "k"))))

        assert code == "soap:Client"
        assert "NguoiXuLy" in reason
        recorded = sim.requests("CapNhatTienDoHoSoMC")[0]
        assert (recorded["valid"], recorded["answer"]) == (False, "soap:Client")
        assert sim.effects() == []

    def test_eleven_progress_steps_break_the_chunk_limit(self, http: httpx.Client) -> None:
        """maxOccurs 10 on CapNhatTienDoHoSoMC.data, as TH's chunks of 10."""
        session = login(http)
        steps = [
            {
                "MaHoSo": CODE,
                "NguoiXuLy": "CB",
                "ThoiDiemXuLy": f"202503121000{n:02d}",
                "NoiDungXuLy": "b",
                "TrangThai": "4",
            }
            for n in range(11)
        ]
        body = f"<t:CapNhatTienDoHoSoMC>{fields({'data': steps})}</t:CapNhatTienDoHoSoMC>"

        code, _ = fault(post(http, "CapNhatTienDoHoSoMC", envelope(body, header(session, "k"))))

        assert code == "soap:Client"

    def test_soap12_envelope_is_a_version_mismatch(self, http: httpx.Client) -> None:
        """An envelope in the SOAP 1.2 namespace: soap:VersionMismatch."""
        payload = envelope(_xacthuc(), env_ns="http://www.w3.org/2003/05/soap-envelope")

        code, _ = fault(post(http, "XacThuc", payload))

        assert code == "soap:VersionMismatch"

    def test_doctype_and_entities_in_a_request_are_refused(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """The simulator's own parser is hardened: a billion-laughs request is a client fault, not a hang."""
        started = time.monotonic()
        response = post(http, "DongBoHoSoMC", hostile_body("billion_laughs"))

        code, _ = fault(response)
        assert code == "soap:Client"
        assert_within(time.monotonic() - started, 0.5, "refusing a billion-laughs request")
        assert sim.effects() == []

    def test_wrong_soap_action_is_a_client_fault(self, http: httpx.Client) -> None:
        """The SOAPAction must name the body's operation."""
        code, reason = fault(post(http, "XacThuc", envelope(_xacthuc()), action=f"{NAMESPACE}#DongBoHoSoMC"))

        assert code == "soap:Client"
        assert "SOAPAction" in reason

    def test_json_is_not_soap(self, http: httpx.Client) -> None:
        """SOAP 1.1 needs text/xml."""
        response = http.post(SOAP_PATH, json={"service": "DongBoHoSoMC"})

        code, _ = fault(response)
        assert code == "soap:Client"

    def test_replies_validate_against_the_xsd(self, http: httpx.Client) -> None:
        """Every reply element the simulator builds is valid by its own schema."""
        session = login(http)
        replies = [
            dong_bo(http, session, "k1"),
            tra_cuu(http, session, MaHoSo=CODE),
            tra_cuu(http, session, MaYeuCau="k1"),
            tra_cuu(http, session, MaHoSo="000.00.16.H16-991231-9999"),
        ]
        for reply in replies:
            assert SCHEMA.validate(reply), SCHEMA.error_log.last_error


class TestSession:
    """XacThuc and the PhienLamViec header."""

    def test_wrong_password_gets_an_error_code_and_no_session(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """A bad login answers error_code -1; the record masks the password."""
        node = answer(post(http, "XacThuc", envelope(_xacthuc("sai"))))

        assert text(node, "error_code") == "-1"
        assert text(node, "session") is None
        assert sim.requests("XacThuc")[0]["body"]["password"] == "***"

    def test_call_without_a_session_is_a_session_fault(self, http: httpx.Client) -> None:
        """No header: soap:Client.Session."""
        body = f"<t:TraCuuHoSo>{fields({'MaHoSo': CODE})}</t:TraCuuHoSo>"

        code, _ = fault(post(http, "TraCuuHoSo", envelope(body)))

        assert code == "soap:Client.Session"

    def test_expired_session_is_a_session_fault(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """After expire_sessions, the old session is refused."""
        session = login(http)
        sim.expire_sessions()
        body = f"<t:TraCuuHoSo>{fields({'MaHoSo': CODE})}</t:TraCuuHoSo>"

        code, _ = fault(post(http, "TraCuuHoSo", envelope(body, header(session))))

        assert code == "soap:Client.Session"

    def test_other_agency_is_refused(self, http: httpx.Client) -> None:
        """A madonvi other than the configured one: soap:Client.MaDonVi."""
        session = login(http)
        body = f"<t:TraCuuHoSo>{fields({'MaHoSo': CODE})}</t:TraCuuHoSo>"

        code, _ = fault(post(http, "TraCuuHoSo", envelope(body, header(session, madonvi="000.00.01.H22"))))

        assert code == "soap:Client.MaDonVi"


class TestState:
    """What the portal keeps, and the newest state winning."""

    def test_create_of_an_existing_record_is_refused_with_da_ton_tai(
        self, sim: NpsSimulator, http: httpx.Client
    ) -> None:
        """Second create: error_code 2, "đã tồn tại", nothing applied; the update then applies."""
        session = login(http)
        assert text(dong_bo(http, session, "k1"), "error_code") == "0"

        refused = dong_bo(http, session, "k2", TrangThaiHoSo="4", NgayCapNhat="20250313000000")
        assert text(refused, "error_code") == "2"
        assert "đã tồn tại" in (text(refused, "message") or "")
        assert len(sim.effects()) == 1

        updated = dong_bo(http, session, "k2", updating=True, TrangThaiHoSo="4", NgayCapNhat="20250313000000")
        assert text(updated, "error_code") == "0"
        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert dossier["TrangThaiHoSo"] == "4"

    def test_effects_since_gives_only_the_new_ones(self, http: httpx.Client) -> None:
        """``GET /_sim/effects?since=N``: the effects after the first N, so a poller takes only what is new."""
        session = login(http)
        assert text(dong_bo(http, session, "k1"), "error_code") == "0"
        assert text(dong_bo(http, session, "k2", updating=True, TrangThaiHoSo="4"), "error_code") == "0"
        every = http.get("/_sim/effects").json()["effects"]

        assert len(every) == 2
        assert http.get("/_sim/effects?since=1").json() == {"effects": every[1:]}
        assert http.get("/_sim/effects?since=2").json() == {"effects": []}
        assert http.get("/_sim/effects?since=no").status_code == 400

    def test_newest_status_wins_across_records_and_steps(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """10 at T3, then 4 at T1 (record) and 5 at T2 (step): the dossier stays at 10, history kept."""
        session = login(http)
        dong_bo(
            http,
            session,
            "k-done",
            TrangThaiHoSo="10",
            NgayTra="20250321090000",
            NgayCapNhat="20250321090000",
        )
        late = dong_bo(http, session, "k-late", updating=True, TrangThaiHoSo="4", NgayCapNhat="20250315000000")
        step = {
            "MaHoSo": CODE,
            "NguoiXuLy": "CB",
            "ThoiDiemXuLy": "20250318000000",
            "NoiDungXuLy": "Yêu cầu bổ sung",
            "TrangThai": "5",
        }
        body = f"<t:CapNhatTienDoHoSoMC>{fields({'data': step})}</t:CapNhatTienDoHoSoMC>"
        post(http, "CapNhatTienDoHoSoMC", envelope(body, header(session, "k-step")))

        assert "bỏ qua" in (text(late, "message") or "")
        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert (dossier["TrangThaiHoSo"], dossier["NgayCapNhat"]) == ("10", "20250321090000")
        assert dossier["record"]["TrangThaiHoSo"] == "10"
        assert [(h["status"], h["taken"]) for h in dossier["history"]] == [("10", True), ("4", False), ("5", False)]
        result = tra_cuu(http, session, MaHoSo=CODE).find(f"{{{NAMESPACE}}}result")
        assert result is not None
        assert (text(result, "TrangThaiHoSo"), text(result, "SoBuocTienDo")) == ("10", "1")

    def test_business_rule_rejects_the_record_and_applies_nothing(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """Received before submitted: error_code 1 naming the rule, no dossier created."""
        session = login(http)

        node = dong_bo(http, session, "k-bad", NgayTiepNhan="20250311000000")

        assert text(node, "error_code") == "1"
        assert "NgayTiepNhan" in (text(node, "message") or "")
        assert sim.dossier(CODE) is None
        assert sim.request_log("k-bad")[0]["error_code"] == "1"

    def test_lookup_by_request_id_names_the_service_and_the_answer(self, http: httpx.Client) -> None:
        """TraCuuHoSo(MaYeuCau) returns the dossier with YeuCau: service, dossier, error code."""
        session = login(http)
        dong_bo(http, session, "k-look")

        result = tra_cuu(http, session, MaYeuCau="k-look").find(f"{{{NAMESPACE}}}result")

        assert result is not None
        seen = result.find(f"{{{NAMESPACE}}}YeuCau")
        assert seen is not None
        assert (text(seen, "DichVu"), text(seen, "MaHoSo"), text(seen, "error_code")) == ("DongBoHoSoMC", CODE, "0")
        missing = tra_cuu(http, session, MaYeuCau="k-none")
        assert text(missing, "error_code") == "4"

    def test_duplicate_steps_are_kept_once(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """The same step sent twice (a redelivery) is one step."""
        session = login(http)
        step = {
            "MaHoSo": CODE,
            "NguoiXuLy": "CB",
            "ThoiDiemXuLy": "20250312100000",
            "NoiDungXuLy": "b",
            "TrangThai": "4",
        }
        body = f"<t:CapNhatTienDoHoSoMC>{fields({'data': step})}</t:CapNhatTienDoHoSoMC>"
        for key in ("k1", "k1"):
            post(http, "CapNhatTienDoHoSoMC", envelope(body, header(session, key)))

        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert len(dossier["steps"]) == 1
        assert len(sim.requests("CapNhatTienDoHoSoMC")) == 2


class TestFaults:
    """Fault switches, in Python and over the control endpoints."""

    def test_faults_are_set_and_read_over_http_and_requests_listed(self, http: httpx.Client) -> None:
        """POST /_sim/faults sets latency; the next call is slow; /_sim/requests lists it with no session."""
        assert http.post("/_sim/faults", json={"latency_s": 0.3}).status_code == 200
        assert http.get("/_sim/faults").json()["latency_s"] == 0.3

        started = time.monotonic()
        login(http)
        assert time.monotonic() - started >= 0.3

        listed = http.get("/_sim/requests").json()["requests"]
        assert [r["operation"] for r in listed] == ["XacThuc"]
        assert "session" not in str(listed)
        assert http.post("/_sim/faults", json={"mode": "nonsense"}).status_code == 400

    def test_reject_mode_answers_the_configured_refusal(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """mode=reject: error_code 1 with reject_message, and nothing applied."""
        session = login(http)
        sim.set_faults(mode="reject", reject_message="Mã TTHC chưa công bố")

        node = dong_bo(http, session, "k1")

        assert (text(node, "error_code"), text(node, "message")) == ("1", "Mã TTHC chưa công bố")
        assert sim.effects() == []

    def test_mangled_replies_apply_first_and_refusals_do_not(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """truncated applies the record, then cuts the reply; http_503 applies nothing."""
        session = login(http)
        sim.set_faults(mode="http_503", only_operations=["DongBoHoSoMC"])
        body = f"<t:DongBoHoSoMC>{fields({'isUpdating': 'true', 'data': hoso()})}</t:DongBoHoSoMC>"
        assert post(http, "DongBoHoSoMC", envelope(body, header(session, "k1"))).status_code == 503
        assert sim.effects() == []

        sim.set_faults(mode="truncated", only_operations=["DongBoHoSoMC"])
        with pytest.raises(httpx.RemoteProtocolError):
            post(http, "DongBoHoSoMC", envelope(body, header(session, "k2")))
        assert [e["maYeuCau"] for e in sim.effects()] == ["k2"]

    def test_drop_applies_nothing_and_apply_then_drop_applies(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """drop resets the connection before handling; apply_then_drop after: the ambiguous outcome."""
        session = login(http)
        body = f"<t:DongBoHoSoMC>{fields({'isUpdating': 'true', 'data': hoso()})}</t:DongBoHoSoMC>"
        sim.set_faults(mode="drop", only_operations=["DongBoHoSoMC"])
        with pytest.raises(httpx.TransportError):
            post(http, "DongBoHoSoMC", envelope(body, header(session, "k1")))
        assert sim.effects() == []

        sim.set_faults(mode="apply_then_drop", only_operations=["DongBoHoSoMC"])
        with pytest.raises(httpx.TransportError):
            post(http, "DongBoHoSoMC", envelope(body, header(session, "k2")))
        assert [e["maYeuCau"] for e in sim.effects()] == ["k2"]

    def test_lookup_fail_rate_fails_lookups_only(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """lookup_fail_rate 1: TraCuuHoSo answers 503 while records still apply."""
        session = login(http)
        sim.set_faults(lookup_fail_rate=1.0)
        dong_bo(http, session, "k-applied")
        body = f"<t:TraCuuHoSo>{fields({'MaYeuCau': 'k-applied'})}</t:TraCuuHoSo>"

        assert post(http, "TraCuuHoSo", envelope(body, header(session))).status_code == 503
        assert [e["maYeuCau"] for e in sim.effects()] == ["k-applied"]
        assert sim.requests("TraCuuHoSo")[-1]["fault"] == "http_503"

    def test_rate_and_seed_repeat_exactly(self, sim: NpsSimulator, http: httpx.Client) -> None:
        """rate 0.5 with a seed faults the same requests on two runs."""

        def run() -> list[str | None]:
            sim.reset()
            sim.set_faults(mode="http_503", rate=0.5, seed=7, only_operations=["XacThuc"])
            for _ in range(12):
                post(http, "XacThuc", envelope(_xacthuc()))
            return [r["fault"] for r in sim.requests()]

        first = run()
        assert first == run()
        assert 0 < first.count("http_503") < 12

    def test_huge_reply_streams_without_end_until_the_client_stops(self, sim: NpsSimulator) -> None:
        """mode=huge sends far more than the client reads; the client cuts it after 2 MB."""
        sim.set_faults(mode="huge", only_operations=["XacThuc"])
        read = 0
        with (
            httpx.Client(base_url=sim.url, timeout=5.0) as client,
            client.stream("POST", SOAP_PATH, content=envelope(_xacthuc()), headers={"Content-Type": XML}) as response,
        ):
            assert "content-length" not in response.headers
            for chunk in response.iter_raw():
                read += len(chunk)
                if read > 2_000_000:
                    break
        assert read > 2_000_000
