# mypy: allow-untyped-defs, allow-incomplete-defs
"""Callbacks: the land system (security code in the path) and eSMS (token in a GET), onto ``bus.results``.

The mappings (adapters/vilis_to_bus.py, adapters/esms_to_bus.py) have their golden cases in tests/adapters/;
here the endpoints run against a real uvicorn and the real broker, reading a capture queue bound to
``bus.results``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ingress_harness import ESMS_TOKEN, SECRET, VILIS_CODE, bind_capture, client, drain, private_vhost, serve

from bus.ingress import IngressSettings
from bus.ingress.settings import CALLBACK_SECRETS
from bus.ingress.systems import CALLBACKS, NOT_ACCEPTED

if TYPE_CHECKING:
    from collections.abc import Iterator
    from concurrent.futures import Future

#: the land system's bodies, from the adapter's golden cases (tests/adapters/cases/vilis_to_bus/)
CASES = Path(__file__).parents[1] / "adapters" / "cases" / "vilis_to_bus"


def body_of(case: str) -> dict[str, Any]:
    """The body of one golden case of adapters/vilis_to_bus.py."""
    body: dict[str, Any] = json.loads((CASES / f"{case}.json").read_text(encoding="utf-8"))["body"]
    return body


KET_THUC = body_of("ket_thuc_dotnet_time")
KET_QUA_THUE = body_of("ket_qua_thue_offset")
CODE = KET_THUC["SoBienNhan"]


def test_every_callback_has_a_credential_setting_and_its_own_path():
    """Each registry entry: a CALLBACK_SECRETS line naming a settings field, a path under /callbacks/<system>."""
    assert {cb.system for cb in CALLBACKS} == set(CALLBACK_SECRETS)
    for cb in CALLBACKS:
        setting, _ = CALLBACK_SECRETS[cb.system]
        assert setting in IngressSettings.model_fields
        assert cb.path == f"/callbacks/{cb.system}" or cb.path.startswith(f"/callbacks/{cb.system}/")
    assert not set(NOT_ACCEPTED) & {cb.system for cb in CALLBACKS}


# -- the endpoints -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A vhost for the module, with the capture queue bound to bus.results."""
    with private_vhost() as url:
        bind_capture(url, "bus.results")
        yield url


@pytest.fixture(scope="module")
def server(broker_url):
    """The ingress for the module."""
    with serve(broker_url) as srv:
        yield srv


@pytest.fixture
def http(server, broker_url):
    """An httpx client; the capture queue is emptied first."""
    drain(broker_url)
    with client(server) as c:
        yield c


def vilis_url(action: str, code: str = VILIS_CODE) -> str:
    return f"/callbacks/vilis/{action}/{code}"


def test_land_system_call_is_published_then_acknowledged(http, broker_url):
    """KetThucHoSo with the right code ▶ {Result: 1}; bus.results holds one vilis.status_changed with that id."""
    response = http.post(vilis_url("KetThucHoSo"), json=KET_THUC)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["Result"] == 1
    assert reply["Message"] == "Đã tiếp nhận"
    [(method, props, stored)] = drain(broker_url)
    event = json.loads(stored)
    assert method.exchange == "bus.results"
    assert method.routing_key == "vilis.status_changed"
    assert props.message_id == reply["event_id"] == event["event_id"]
    assert event["payload"]["kind"] == "ket_thuc"
    assert event["payload"]["status"] == 9
    assert event["dossier_code"] == CODE


def test_retried_land_system_call_is_the_same_event_and_stored_once(http, broker_url):
    """The land system retries the same call ▶ Result 1 both times, same event_id, one message on the broker."""
    first = http.post(vilis_url("GuiKetQuaThue"), json=KET_QUA_THUE).json()
    again = http.post(vilis_url("GuiKetQuaThue"), json=KET_QUA_THUE).json()
    assert first["Result"] == again["Result"] == 1
    assert again["Message"] == "Đã tiếp nhận trước đó"
    assert first["event_id"] == again["event_id"]
    assert [p.message_id for _, p, _ in drain(broker_url)] == [first["event_id"]]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (vilis_url("KetThucHoSo", "wrong-code-wrong-code"), KET_THUC, 401, "bad_security_code"),
        (vilis_url("KetThucHoso"), KET_THUC, 404, "unknown_action"),
        (vilis_url("KetThucHoSo"), {"SoBienNhan": CODE}, 422, "invalid_callback"),
        (
            vilis_url("KetThucHoSo"),
            {**KET_THUC, "SoBienNhan": "not a code!"},
            422,
            "invalid_callback",
        ),
        (vilis_url("KetThucHoSo"), [1, 2], 422, "invalid_callback"),
    ],
    ids=["wrong-security-code", "unknown-action", "missing-date", "bad-dossier-code", "not-an-object"],
)
def test_refused_land_system_calls_get_result_0_and_nothing_is_published(http, broker_url, path, body, status, code):
    """Wrong code, unknown action, invalid body ▶ its status, {Result: 0, error}, nothing on the broker."""
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["Result"] == 0
    assert response.json()["error"] == code
    assert drain(broker_url) == []


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"SoBienNhan": "x", "a": 1, "a": 2}', b'{"SoBienNhan": "x", "X": ' + b"[" * 600 + b"]" * 600 + b"}"],
    ids=["truncated", "duplicate-keys", "nested-600-deep"],
)
def test_land_system_invalid_json_is_400(http, broker_url, body):
    """Malformed, duplicate-key or too deeply nested JSON from the land system ▶ 400 invalid_json, Result 0."""
    response = http.post(vilis_url("KetThucHoSo"), content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert response.json()["Result"] == 0
    assert drain(broker_url) == []


def test_esms_report_is_published_once(http, broker_url):
    """eSMS's GET ▶ 200 accepted, sms.delivery_report on bus.results; its retry ▶ 200 duplicate, no new message."""
    params = {"token": ESMS_TOKEN, "SMSID": "sms-77", "SendStatus": "5", "telcoid": "1", "phonenumber": "84912000111"}
    first = http.get("/callbacks/esms", params=params)
    again = http.get("/callbacks/esms", params=params)
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == "accepted"
    assert again.json() == {**first.json(), "status": "duplicate"}
    [(method, props, stored)] = drain(broker_url)
    assert method.routing_key == "sms.delivery_report"
    assert props.message_id == first.json()["event_id"]
    assert json.loads(stored)["payload"]["phone"] == "0912000111"


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"SMSID": "s", "SendStatus": "5"}, 401, "bad_token"),
        ({"token": "nope-nope-nope-nope", "SMSID": "s", "SendStatus": "5"}, 401, "bad_token"),
        ({"token": ESMS_TOKEN, "SendStatus": "5"}, 422, "invalid_callback"),
        ({"token": ESMS_TOKEN, "SMSID": "s", "SendStatus": "3"}, 422, "invalid_callback"),
        ({"token": ESMS_TOKEN, "SMSID": "s", "SendStatus": "5", "phonenumber": "0212345678"}, 422, "invalid_callback"),
    ],
    ids=["no-token", "wrong-token", "no-smsid", "unknown-status", "landline"],
)
def test_refused_esms_reports_publish_nothing(http, broker_url, params, status, code):
    """No or wrong token, missing id, a status eSMS does not define, a landline ▶ its 4xx; nothing stored."""
    response = http.get("/callbacks/esms", params=params)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert drain(broker_url) == []


def test_unknown_or_misused_systems(http):
    """/callbacks/paygov ▶ 404 saying why; POST to eSMS ▶ 405 with Allow: GET; a typo ▶ did-you-mean."""
    paygov = http.post("/callbacks/paygov", json={})
    assert paygov.status_code == 404
    assert "PayGov" in paygov.json()["detail"]
    post_esms = http.post("/callbacks/esms")
    assert post_esms.status_code == 405
    assert post_esms.headers["allow"] == "GET"
    typo = http.post("/callbacks/vilsi")
    assert typo.status_code == 404
    assert "did you mean 'vilis'" in typo.json()["detail"]


class _NoBroker:
    """A publisher that must never be reached (the requests are refused before publishing)."""

    blocked = False

    def start(self) -> None:
        pass

    def submit(self, message) -> Future[None]:
        raise AssertionError(f"published {message.event_type} although the callback is disabled")

    def close(self) -> None:
        pass


def test_callbacks_are_off_when_their_secret_is_unset():
    """Without IGATE_BUS_VILIS_SECURITY_CODE / IGATE_BUS_ESMS_CALLBACK_TOKEN ▶ 404 callback_disabled."""
    env = {"IGATE_BUS_INGRESS_HMAC_SECRET": SECRET}
    with serve("amqp://guest:guest@127.0.0.1:1/%2F", env=env, publisher_factory=_NoBroker) as srv, client(srv) as c:
        vilis = c.post(vilis_url("KetThucHoSo", "any-code-at-all-123"), json=KET_THUC)
        esms = c.get("/callbacks/esms", params={"token": "any-token-at-all", "SMSID": "s", "SendStatus": "5"})
    assert vilis.status_code == 404
    assert vilis.json()["error"] == "callback_disabled"
    assert vilis.json()["Result"] == 0
    assert esms.status_code == 404
    assert esms.json()["error"] == "callback_disabled"
