"""Golden cases for the adapters into iGate, by direct call on events parsed as the worker parses them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.igate_ack import dossier_received
from adapters.registry import adapters
from adapters.results_to_igate import RESULT_EVENTS, status_update
from schemas.envelope import Event, parse_event
from schemas.errors import MappingError
from schemas.events import EVENT_PAYLOADS
from schemas.igate_api import AddNoteRequest, UpdateDossierRequest

CODE = "000.00.16.H16-260312-0001"
IGATE_ID = "65f0a1b2c3d4e5f6a7b8c901"
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # deliberately unlike any event time: adapters must not use it
AT = "2026-03-12T08:05:00+07:00"


def event(event_type: str, payload: dict[str, Any], **envelope: Any) -> Event:
    """Parse an event from JSON the way the worker does, with the bus's real payload models."""
    body = {
        "event_id": str(uuid.UUID(int=1)),
        "event_type": event_type,
        "occurred_at": AT,
        "source": "igate" if event_type.startswith("dossier.") else "bus",
        "dossier_code": CODE,
        "igate_id": IGATE_ID,
        "payload": payload,
        **envelope,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return parse_event(json.dumps(body, ensure_ascii=False).encode(), payload_models=EVENT_PAYLOADS)


def received_payload() -> dict[str, Any]:
    """A valid ``dossier.received`` payload (made-up applicant)."""
    return {
        "applicant": {
            "type": 1,
            "name": "Nguyễn Văn A",
            "id_type": 1,
            "id_no": "066190012345",
            "phone": "0912345678",
            "address": {"province": "66", "district": "643", "commune": "24121", "detail": "12 Lê Duẩn"},
        },
        "dates": {
            "submitted": "2026-03-11T15:00:00+07:00",
            "received": "2026-03-12T08:04:00+07:00",
            "appointment": "2026-03-27T17:00:00+07:00",
        },
        "receipt_no": "BN-2026-000123",
        "receiver_staff": "Trần Thị B",
    }


class TestDossierReceived:
    """``igate_ack.dossier_received``: the bus's acknowledgement note."""

    def test_golden_note(self) -> None:
        """The note names the dossier, the event's time in Vietnam and the receipt number; kind bus_ack."""
        note = dossier_received(event("dossier.received", received_payload()), now=NOW)

        assert note == AddNoteRequest(
            dossier_code=CODE,
            igate_id=IGATE_ID,
            text=(f"Hệ thống tích hợp đã nhận hồ sơ {CODE} lúc 08:05 ngày 12/03/2026 (số biên nhận BN-2026-000123)."),
            kind="bus_ack",
        )

    @pytest.mark.parametrize(
        ("occurred_at", "shown"),
        [
            ("2026-03-12T01:05:00Z", "08:05 ngày 12/03/2026"),
            ("2026-03-11T17:30:00+00:00", "00:30 ngày 12/03/2026"),
            ("2026-03-12T10:05:00+09:00", "08:05 ngày 12/03/2026"),
        ],
        ids=["utc", "utc-evening-is-next-day-in-vietnam", "other-offset"],
    )
    def test_time_is_shown_in_vietnam_time(self, occurred_at: str, shown: str) -> None:
        """Whatever offset the event carries, the note shows the time in Asia/Ho_Chi_Minh (UTC+7)."""
        note = dossier_received(event("dossier.received", received_payload(), occurred_at=occurred_at), now=NOW)

        assert f"lúc {shown}" in note.text

    def test_the_clock_passed_in_changes_nothing(self) -> None:
        """Two different ``now`` give the same note: the adapter is deterministic."""
        ev = event("dossier.received", received_payload())

        assert dossier_received(ev, now=NOW) == dossier_received(ev, now=datetime(2026, 1, 1, tzinfo=UTC))

    def test_no_personal_data_in_the_note(self) -> None:
        """The applicant's name, id and phone stay out of the note."""
        note = dossier_received(event("dossier.received", received_payload()), now=NOW)

        for personal in ("Nguyễn Văn A", "066190012345", "0912345678", "Trần Thị B"):
            assert personal not in note.text

    def test_no_dossier_code_is_a_mapping_error(self) -> None:
        """Without a dossier code there is nothing to acknowledge on: permanent, naming the field."""
        with pytest.raises(MappingError) as caught:
            dossier_received(event("dossier.received", received_payload(), dossier_code=None), now=NOW)

        assert caught.value.field == "dossier_code"

    def test_registered_for_the_route(self) -> None:
        """routes.yaml names it igate_ack.dossier_received; it accepts dossier.received and makes a note."""
        registered = adapters()["igate_ack.dossier_received"]

        assert registered.accepts == frozenset({"dossier.received"})
        assert registered.produces is AddNoteRequest


class TestStatusUpdate:
    """``results_to_igate.status_update``: result events written back onto the dossier."""

    def test_portal_sync_ok(self) -> None:
        """A successful portal sync: a note, the fields as data, no status change."""
        update = status_update(
            event("dvcqg.sync_result", {"service": "DongBoHoSoMC", "error_code": "0", "message": ""}), now=NOW
        )

        assert update == UpdateDossierRequest(
            dossier_code=CODE,
            igate_id=IGATE_ID,
            source_system="dvcqg",
            status=None,
            note="Cổng DVCQG (DongBoHoSoMC): đồng bộ thành công",
            data={
                "event_type": "dvcqg.sync_result",
                "occurred_at": AT,
                "error_code": "0",
                "message": "",
                "service": "DongBoHoSoMC",
            },
        )

    @pytest.mark.parametrize("code", ["0", "00", "3", "-3"])
    def test_every_portal_success_code_reads_as_success(self, code: str) -> None:
        """Issue 10 item 17: "3"/"-3" (TH, docs/domain.md section 2) are success like "0"/"00", not "lỗi 3"."""
        update = status_update(event("dvcqg.sync_result", {"service": "DongBoHoSoMC", "error_code": code}), now=NOW)

        assert update.note == "Cổng DVCQG (DongBoHoSoMC): đồng bộ thành công"

    def test_portal_sync_error(self) -> None:
        """A refused sync says so, with the portal's code and message."""
        update = status_update(
            event(
                "dvcqg.sync_result",
                {"service": "CapNhatTienDoHoSoMC", "error_code": "-1", "message": "Sai mã TTHC"},
            ),
            now=NOW,
        )

        assert update.note == "Cổng DVCQG (CapNhatTienDoHoSoMC): lỗi -1: Sai mã TTHC"
        assert update.status is None

    def test_land_office_status_with_its_national_status_and_no_owner_name(self) -> None:
        """VILIS's stated status is applied; the nested tax notice keeps its facts, not the owner's name."""
        payload = {
            "so_bien_nhan": CODE,
            "kind": "ket_thuc",
            "at": "2026-03-20T10:00:00+07:00",
            "status": 9,
            "tax_notices": [{"owner_name": "Nguyễn Văn A", "tax_kind": "Lệ phí trước bạ", "notice_no": "TB-01"}],
        }

        update = status_update(event("vilis.status_changed", payload), now=NOW)

        assert update.source_system == "vilis"
        assert update.status == 9
        assert update.note == f"Văn phòng đăng ký đất đai: hồ sơ {CODE} đã xử lý xong"
        assert update.data["tax_notices"] == '[{"notice_no":"TB-01","tax_kind":"Lệ phí trước bạ","url":null}]'
        assert update.data["kind"] == "ket_thuc"
        assert "Nguyễn Văn A" not in json.dumps(update.model_dump(), ensure_ascii=False)

    def test_envelope_status_is_not_written_back(self) -> None:
        """A status on the result's envelope may be a stale copy: only a status the payload states is used."""
        update = status_update(
            event("dvcqg.sync_result", {"service": "DongBoHoSoMC", "error_code": "0"}, status=2), now=NOW
        )

        assert update.status is None

    def test_postal_tracking_finds_the_dossier_by_order_number(self) -> None:
        """Without a dossier code on the envelope, VNPost's order number (the dossier code) is used."""
        payload = {
            "item_code": "EB123456785VN",
            "order_number": CODE,
            "status_code": 14,
            "status_message": "Phát thành công",
            "at": "2026-03-28T09:00:00+07:00",
        }

        update = status_update(event("vnpost.tracking_updated", payload, dossier_code=None), now=NOW)

        assert update.dossier_code == CODE
        assert update.source_system == "vnpost"
        assert update.note == "VNPost: bưu gửi EB123456785VN: Phát thành công (mã 14)"
        assert update.data["status_code"] == 14
        assert update.data["at"] == "2026-03-28T09:00:00+07:00"

    def test_receipt_issued(self) -> None:
        """An issued e-receipt: its number, serial and pattern in the note; amount kept as an integer."""
        payload = {
            "fkey": "phi-PG2611260001",
            "pattern": "01BLP0-001",
            "serial": "AA-19E",
            "number": "0000123",
            "amount_vnd": 50_000,
        }

        update = status_update(event("receipt.issued", payload), now=NOW)

        assert update.source_system == "receipt"
        assert update.note == "Đã phát hành biên lai điện tử số 0000123, ký hiệu AA-19E, mẫu số 01BLP0-001"
        assert update.data["amount_vnd"] == 50_000
        assert update.data["fkey"] == "phi-PG2611260001"

    def test_sms_report_without_the_phone(self) -> None:
        """An SMS delivery report in words; the phone (personal) is left out of the data."""
        payload = {"sms_id": "esms-77", "send_status": 5, "telco": 1, "phone": "0912345678"}

        update = status_update(event("sms.delivery_report", payload), now=NOW)

        assert update.source_system == "sms"
        assert update.note == "Tin nhắn SMS esms-77: đã gửi (nhà mạng Viettel)"
        assert "phone" not in update.data
        assert "0912345678" not in json.dumps(update.model_dump())

    def test_no_dossier_code_is_a_mapping_error(self) -> None:
        """An SMS report with no dossier code on the envelope cannot be placed: permanent."""
        with pytest.raises(MappingError) as caught:
            status_update(event("sms.delivery_report", {"sms_id": "x", "send_status": 5}, dossier_code=None), now=NOW)

        assert caught.value.field == "dossier_code"

    def test_unmapped_event_type_is_a_mapping_error(self) -> None:
        """An event type the adapter does not map (a route misconfigured) fails loudly."""
        payload = {"note_id": "n-1", "dossier_code": CODE, "created_at": AT}

        with pytest.raises(MappingError) as caught:
            status_update(event("igate.note_added", payload), now=NOW)

        assert caught.value.field == "event_type"

    def test_long_text_is_cut_to_the_limits(self) -> None:
        """A long portal message is cut: data values to 500 characters, the note to 2000."""
        message = "Lỗi " + "x" * 990
        update = status_update(
            event("dvcqg.sync_result", {"service": "DongBoHoSoMC", "error_code": "9", "message": message}),
            now=NOW,
        )

        assert len(str(update.data["message"])) == 500
        assert str(update.data["message"]).endswith("…")
        assert message in update.note

    def test_registered_for_the_route(self) -> None:
        """routes.yaml names it results_to_igate.status_update, for the five result events."""
        registered = adapters()["results_to_igate.status_update"]

        assert registered.accepts == frozenset(RESULT_EVENTS)
        assert registered.produces is UpdateDossierRequest
