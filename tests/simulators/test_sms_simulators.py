"""The two SMS gateway simulators on their own: their protocols, records, deduplication and control endpoints."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from simulators import esms, viettel_sms
from simulators.esms import EsmsSimulator
from simulators.viettel_sms import ViettelSmsSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator

SOAP = """<?xml version="1.0"?><S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body>
<ns:wsCpMt xmlns:ns="http://impl.bulkSms.ws/"><User>{user}</User><Password>simulator-only</Password>
<CPCode>DAKLAK</CPCode><RequestID>{rid}</RequestID><UserID>84912000111</UserID><ReceiverID>{phone}</ReceiverID>
<ServiceID>UBND</ServiceID><CommandCode>bulksms</CommandCode><Content>Ho so da tiep nhan</Content>
<ContentType>0</ContentType></ns:wsCpMt></S:Body></S:Envelope>"""


@pytest.fixture
def viettel() -> Iterator[ViettelSmsSimulator]:
    """A Viettel simulator on a free port."""
    with ViettelSmsSimulator() as sim:
        yield sim


@pytest.fixture
def esms_sim() -> Iterator[EsmsSimulator]:
    """An eSMS simulator on a free port."""
    with EsmsSimulator() as sim:
        yield sim


def soap(sim: ViettelSmsSimulator, body: str) -> httpx.Response:
    """POST a SOAP body to the simulator."""
    return httpx.post(sim.url + viettel_sms.PATH, content=body.encode(), headers={"Content-Type": "text/xml"})


def esms_send(
    sim: EsmsSimulator, rid: str, *, phone: str = "84912000111", key: str = esms.DEFAULT_API_KEY
) -> dict[str, Any]:
    """One eSMS send, its JSON answer."""
    body = {"ApiKey": key, "SecretKey": esms.DEFAULT_SECRET_KEY, "Phone": phone, "Content": "x", "RequestId": rid}
    reply = httpx.post(sim.url + esms.SEND_PATH, json=body)
    assert reply.status_code == 200
    data: dict[str, Any] = reply.json()
    return data


class TestViettel:
    def test_send_recorded_and_repeats_not_deduplicated(self, viettel: ViettelSmsSimulator) -> None:
        """result 1 with a messageId; the same RequestID again is sent again (Viettel does not deduplicate)."""
        for _ in range(2):
            reply = soap(viettel, SOAP.format(user="igate-bus", rid="r1", phone="84912000111"))
            assert reply.status_code == 200 and b"<result>1</result>" in reply.content
        assert viettel.effect_counts() == {"r1": 2}

    def test_bad_login_and_bad_number_are_refusals_not_sends(self, viettel: ViettelSmsSimulator) -> None:
        """A wrong user: result 0 'auth'; a number not 84…: result 0 'phone'; neither is sent."""
        bad_user = soap(viettel, SOAP.format(user="intruder", rid="r2", phone="84912000111"))
        bad_phone = soap(viettel, SOAP.format(user="igate-bus", rid="r3", phone="02623812345"))
        assert b"<result>0</result>" in bad_user.content and b"auth" in bad_user.content
        assert b"<result>0</result>" in bad_phone.content and b"phone" in bad_phone.content
        assert viettel.sent() == []

    def test_doctype_request_refused(self, viettel: ViettelSmsSimulator) -> None:
        """A request with a DOCTYPE is a Client fault; its entities are never expanded."""
        body = (
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]>'
            + SOAP.format(user="igate-bus", rid="&e;", phone="84912000111").split("?>", 1)[1]
        )
        reply = soap(viettel, body)
        assert reply.status_code == 500 and b"Client" in reply.content
        assert viettel.sent() == []

    def test_down_answers_503_to_everything(self, viettel: ViettelSmsSimulator) -> None:
        """``down`` fails sends and lookups alike, and the fault is recorded."""
        viettel.set_faults(down=True)
        reply = soap(viettel, SOAP.format(user="igate-bus", rid="r4", phone="84912000111"))
        assert reply.status_code == 503
        assert [r["fault"] for r in viettel.requests()] == ["down"]


class TestEsms:
    def test_send_then_duplicate(self, esms_sim: EsmsSimulator) -> None:
        """100 with an SMSID, then 124 for the same RequestId with the same SMSID: one SMS."""
        first = esms_send(esms_sim, "k1")
        second = esms_send(esms_sim, "k1")
        assert first["CodeResult"] == "100"
        assert (second["CodeResult"], second["SMSID"]) == ("124", first["SMSID"])
        assert esms_sim.effect_counts() == {"k1": 1}

    def test_codes(self, esms_sim: EsmsSimulator) -> None:
        """A wrong key: 101; a bad number: 108; an injected code as given; none is sent."""
        assert esms_send(esms_sim, "k2", key="wrong")["CodeResult"] == "101"
        assert esms_send(esms_sim, "k3", phone="0912000111")["CodeResult"] == "108"
        esms_sim.set_faults(code_rate=1.0, code="103")
        assert esms_send(esms_sim, "k4")["CodeResult"] == "103"
        assert esms_sim.sent() == []

    def test_lookup_by_request_id(self, esms_sim: EsmsSimulator) -> None:
        """[A] 100 with the SMSID for a sent request id, 118 for an unknown one."""
        sent = esms_send(esms_sim, "k5")
        params = {"ApiKey": esms.DEFAULT_API_KEY, "SecretKey": esms.DEFAULT_SECRET_KEY}
        found = httpx.get(esms_sim.url + esms.LOOKUP_PATH, params={**params, "RequestId": "k5"}).json()
        missing = httpx.get(esms_sim.url + esms.LOOKUP_PATH, params={**params, "RequestId": "nope"}).json()
        assert (found["CodeResult"], found["SMSID"]) == ("100", sent["SMSID"])
        assert missing["CodeResult"] == "118"

    def test_control_endpoints(self, esms_sim: EsmsSimulator) -> None:
        """Faults set and read over HTTP, a bad field refused naming it, effects without the text, reset."""
        esms_send(esms_sim, "k6")
        ok = httpx.post(esms_sim.url + "/_sim/faults", content=json.dumps({"latency_s": 0.01}))
        bad = httpx.post(esms_sim.url + "/_sim/faults", content=json.dumps({"nope": 1}))
        effects = httpx.get(esms_sim.url + "/_sim/effects").json()
        assert ok.json()["latency_s"] == 0.01
        assert bad.status_code == 400 and "nope" in bad.text
        assert [e["request_id"] for e in effects] == ["k6"] and "content" not in effects[0]
        httpx.post(esms_sim.url + "/_sim/reset")
        assert esms_sim.sent() == [] and esms_sim.faults.latency_s == 0.0
