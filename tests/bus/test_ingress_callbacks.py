# mypy: allow-untyped-defs, allow-incomplete-defs
"""Callbacks: the land system (security code in the path) and eSMS (token in a GET), onto ``bus.results``.

The mappers (bus/callbacks.py) are tested by direct call; the endpoints against a real uvicorn and the real
broker, reading a capture queue bound to ``bus.results``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from ingress_harness import ESMS_TOKEN, SECRET, VILIS_CODE, bind_capture, client, drain, private_vhost, serve

from bus.callbacks import VILIS_ACTIONS, CallbackRejected, esms_event, vilis_action, vilis_event
from schemas.envelope import parse_event
from schemas.events import EVENT_PAYLOADS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from concurrent.futures import Future

NOW = datetime(2026, 12, 3, 9, 45, tzinfo=UTC)
CODE = "000.00.16.H16-261126-0001"
FILE = {"TenGiayTo": "Giấy chứng nhận", "KieuFile": "pdf", "LinkFile": "https://vbdlis.example/gcn.pdf"}
#: one body per land-system action (TH's request classes), and what each must become
VILIS_BODIES: dict[str, tuple[dict[str, Any], str, int | None]] = {
    "TiepNhanHoSoChoMotCua": (
        {
            "SoBienNhan": CODE,
            "TinhId": 66,
            "NguoiTiepNhan": "vpdk.bmt.an",
            "NgayTiepNhan": "2026-11-26T02:30:00",
            "NgayHenTra": "2026-12-10T10:00:00",
            "ThongTinNguoiNopDon": {"HoTen": "Nguyễn Thị Hương", "SoChungMinh": "066190012345"},
        },
        "tiep_nhan",
        2,
    ),
    "YeuCauBoSungHoSo": (
        {"SoBienNhan": CODE, "NgayChoBoSung": "2026-11-28T01:00:00", "MaCanBoXuLy": "cb1", "LaTamDung": True},
        "yeu_cau_bo_sung",
        5,
    ),
    "NhanBoSungHoSo": (
        {"SoBienNhan": CODE, "NgayNhanBoSung": "2026-11-30T01:00:00", "NgayHenTraMoi": "2026-12-12T10:00:00"},
        "nhan_bo_sung",
        4,
    ),
    "GuiKetQuaThue": (
        {
            "SoBienNhan": CODE,
            "NguoiXuLy": "cb2",
            "NgayCoKetQuaThue": "2026-12-03T09:40:00Z",
            "DanhSachThongBaoThue": [
                {"HoTenChu": "Nguyễn Thị Hương", "LoaiThue": "Lệ phí trước bạ", "SoThongBaoThue": "TB-1"}
            ],
        },
        "ket_qua_thue",
        6,
    ),
    "KetThucHoSo": (
        {
            "SoBienNhan": CODE,
            "NgayKetThuc": "2026-12-05T03:00:00.1234567",
            "MaCanBoXuLy": "cb3",
            "TrangThaiKetThuc": 0,
            "DanhSachGiayToKetQua": [FILE],
        },
        "ket_thuc",
        9,
    ),
    "ChuyenHoSo": (
        {"SoBienNhan": CODE, "MaCanBoChuyen": "a", "MaCanBoNhan": "b", "NoiDungXuLy": "Chuyển thẩm định"},
        "luan_chuyen",
        4,
    ),
    "YeuCauCapNhatHoSo": ({"SoBienNhan": CODE, "GhiChu": "Sai diện tích"}, "yeu_cau_cap_nhat", None),
    "ThongBaoNhapSaiThuTuc": ({"SoBienNhan": CODE, "GhiChu": "Sai thủ tục"}, "nhap_sai_thu_tuc", None),
    "ThueChuyenTraHoSoDoSai": ({"SoBienNhan": CODE, "GhiChu": "Thuế trả lại"}, "chuyen_tra_do_sai", None),
}


class TestVilisMapping:
    @pytest.mark.parametrize("action", sorted(VILIS_ACTIONS))
    def test_every_action_becomes_a_valid_status_changed(self, action):
        """Each land-system call maps to a vilis.status_changed the strict parser accepts, kind and status per table."""
        body, kind, status = VILIS_BODIES[action]
        event = vilis_event(vilis_action(action), body, now=NOW)
        parsed = parse_event(json.dumps(event).encode(), payload_models=EVENT_PAYLOADS)
        payload = parsed.payload.model_dump(mode="json")
        assert parsed.envelope.event_type == "vilis.status_changed"
        assert parsed.envelope.dossier_code == CODE
        assert payload["kind"] == kind
        assert payload["status"] == status
        assert parsed.envelope.status == status
        assert "066190012345" not in json.dumps(event), "fields the bus does not carry must not travel"

    def test_naive_times_are_utc_and_land_in_vietnam_time(self):
        """A .NET time without offset is UTC (TH adds 7 h): 03:00 becomes 10:00+07:00; 7 fraction digits parse."""
        body, _, _ = VILIS_BODIES["KetThucHoSo"]
        payload = vilis_event(vilis_action("KetThucHoSo"), body, now=NOW)["payload"]
        assert payload["at"] == "2026-12-05T10:00:00.123456+07:00"
        assert payload["result_docs"] == [{"code": "KQ1", "name": "Giấy chứng nhận", "url": FILE["LinkFile"]}]

    def test_event_id_is_the_calls_identity(self):
        """The same call (keys in any order) is the same event_id; another call is another."""
        body, _, _ = VILIS_BODIES["NhanBoSungHoSo"]
        act = vilis_action("NhanBoSungHoSo")
        first = vilis_event(act, body, now=NOW)["event_id"]
        again = vilis_event(act, dict(reversed(list(body.items()))), now=datetime.now(UTC))["event_id"]
        other = vilis_event(act, {**body, "GhiChu": "x"}, now=NOW)["event_id"]
        assert first == again
        assert first != other

    def test_th_route_name_and_domain_name_are_the_same_action(self):
        """ChuyenHoSo (TH's route) and DongBoTrangThaiLuanChuyenHoSo (its handler's name) give the same event."""
        body, _, _ = VILIS_BODIES["ChuyenHoSo"]
        a = vilis_event(vilis_action("ChuyenHoSo"), body, now=NOW)
        b = vilis_event(vilis_action("DongBoTrangThaiLuanChuyenHoSo"), body, now=NOW)
        assert a == b

    def test_unknown_action_suggests_the_closest(self):
        """A misspelt action ▶ 404 unknown_action naming the closest one."""
        with pytest.raises(CallbackRejected) as caught:
            vilis_action("KetThucHoso")
        assert caught.value.status == 404
        assert "did you mean 'KetThucHoSo'" in caught.value.detail

    def test_body_missing_a_date_names_the_field(self):
        """KetThucHoSo without NgayKetThuc ▶ invalid_callback naming NgayKetThuc."""
        with pytest.raises(CallbackRejected, match="NgayKetThuc: Field required"):
            vilis_event(vilis_action("KetThucHoSo"), {"SoBienNhan": CODE}, now=NOW)

    def test_long_note_is_cut_not_refused(self):
        """A GhiChu over 2,000 characters is cut to fit the note, not a reason to lose the call."""
        payload = vilis_event(vilis_action("YeuCauCapNhatHoSo"), {"SoBienNhan": CODE, "GhiChu": "a" * 5000}, now=NOW)[
            "payload"
        ]
        assert len(payload["note"]) == 2000
        assert payload["note"].endswith("…")


class TestEsmsMapping:
    def test_report_becomes_sms_delivery_report(self):
        """SMSID, SendStatus, telcoid, RequestId, phonenumber ▶ sms.delivery_report, phone in national form."""
        params = {"SMSID": "abc-1", "SendStatus": "5", "telcoid": "3", "RequestId": "r-1", "phonenumber": "84912000111"}
        event = esms_event(params, now=NOW)
        parsed = parse_event(json.dumps(event).encode(), payload_models=EVENT_PAYLOADS)
        assert parsed.payload.model_dump() == {
            "sms_id": "abc-1",
            "send_status": 5,
            "telco": 3,
            "request_id": "r-1",
            "phone": "0912000111",
        }

    def test_a_later_status_is_another_event(self):
        """Queued (2) then sent (5) for one SMSID are two events; the same status twice is one."""
        queued = esms_event({"SMSID": "x", "SendStatus": "2"}, now=NOW)["event_id"]
        sent = esms_event({"SMSID": "x", "SendStatus": "5"}, now=NOW)["event_id"]
        again = esms_event({"smsid": "x", "sendstatus": "5", "telcoid": ""}, now=NOW)["event_id"]
        assert queued != sent
        assert sent == again

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"SendStatus": "5"}, "SMSID"),
            ({"SMSID": "x"}, "SendStatus"),
            ({"SMSID": "x", "SendStatus": "five"}, "SendStatus"),
        ],
    )
    def test_missing_or_bad_parameter_is_named(self, params, field):
        """A missing or non-numeric parameter ▶ invalid_callback naming it."""
        with pytest.raises(CallbackRejected, match=field):
            esms_event(params, now=NOW)


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
    body, _, _ = VILIS_BODIES["KetThucHoSo"]
    response = http.post(vilis_url("KetThucHoSo"), json=body)
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
    body, _, _ = VILIS_BODIES["GuiKetQuaThue"]
    first = http.post(vilis_url("GuiKetQuaThue"), json=body).json()
    again = http.post(vilis_url("GuiKetQuaThue"), json=body).json()
    assert first["Result"] == again["Result"] == 1
    assert again["Message"] == "Đã tiếp nhận trước đó"
    assert first["event_id"] == again["event_id"]
    assert [p.message_id for _, p, _ in drain(broker_url)] == [first["event_id"]]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (vilis_url("KetThucHoSo", "wrong-code-wrong-code"), VILIS_BODIES["KetThucHoSo"][0], 401, "bad_security_code"),
        (vilis_url("KetThucHoso"), VILIS_BODIES["KetThucHoSo"][0], 404, "unknown_action"),
        (vilis_url("KetThucHoSo"), {"SoBienNhan": CODE}, 422, "invalid_callback"),
        (
            vilis_url("KetThucHoSo"),
            {**VILIS_BODIES["KetThucHoSo"][0], "SoBienNhan": "not a code!"},
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
        vilis = c.post(vilis_url("KetThucHoSo", "any-code-at-all-123"), json=VILIS_BODIES["KetThucHoSo"][0])
        esms = c.get("/callbacks/esms", params={"token": "any-token-at-all", "SMSID": "s", "SendStatus": "5"})
    assert vilis.status_code == 404
    assert vilis.json()["error"] == "callback_disabled"
    assert vilis.json()["Result"] == 0
    assert esms.status_code == 404
    assert esms.json()["error"] == "callback_disabled"
