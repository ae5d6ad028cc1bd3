"""Golden cases for iGate's events → SMS requests, by direct call on events parsed as the worker parses them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from adapters.igate_to_sms import NOTICE_EVENTS, notice, otp
from adapters.registry import adapters
from schemas.envelope import Event, parse_event
from schemas.errors import MappingError
from schemas.events import EVENT_PAYLOADS
from schemas.sms import OtpSms, SmsNotice, segments

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "events"
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # unlike any event time: the adapters must not use it


def load(event_type: str, **payload: Any) -> Event:
    """The shipped example of a type with ``payload`` fields replaced, parsed as the worker parses it."""
    data = json.loads((EXAMPLES / f"{event_type}.json").read_text(encoding="utf-8"))
    data["payload"].update(payload)
    return parse_event(json.dumps(data, ensure_ascii=False).encode(), payload_models=EVENT_PAYLOADS)


def test_otp_golden() -> None:
    """The OTP: the gateway phone form, the code in one segment in both forms, expiry = occurred_at + ttl_s."""
    request = otp(load("dossier.otp_requested"), now=NOW)
    assert isinstance(request, OtpSms)
    assert request.phone == "84912000111"
    assert request.text == "Mã OTP nộp hồ sơ: 482913. Hiệu lực 5 phút. Không chia sẻ mã này."
    assert request.plain_text == "Ma OTP nop ho so: 482913. Hieu luc 5 phut. Khong chia se ma nay."
    assert segments(request.text) == segments(request.plain_text) == 1
    ict = timezone(timedelta(hours=7))
    assert request.expires_at == datetime(2025, 11, 26, 8, 8, 40, tzinfo=ict)


@pytest.mark.parametrize(
    ("event_type", "payload", "template", "text"),
    [
        ("dossier.received", {}, "dossier.received", "Hồ sơ {code} đã được tiếp nhận. Ngày hẹn trả kết quả: {day}."),
        ("dossier.refused", {}, "dossier.refused", "Hồ sơ {code} không đủ điều kiện tiếp nhận."),
        ("dossier.supplement_requested", {}, "dossier.supplement_requested", "cần bổ sung giấy tờ trong"),
        ("dossier.result_ready", {}, "dossier.result_ready", "đã có kết quả"),
        ("dossier.overdue_apology", {}, "dossier.overdue_apology", "Xin lỗi ông/bà: hồ sơ {code} trễ hẹn ngày"),
        ("dossier.returned", {"return_method": "post"}, "dossier.returned.post", "đã chuyển Bưu điện"),
        ("dossier.returned", {"return_method": "desk"}, "dossier.returned.desk", "đã được trả kết quả"),
        ("dossier.submitted", {}, "dossier.submitted", "đã được gửi thành công"),
    ],
)
def test_notice_golden(event_type: str, payload: dict[str, Any], template: str, text: str) -> None:
    """Each notice event gets its catalogue entry, the dossier code and its dates, both forms."""
    event = load(event_type, **payload)
    request = notice(event, now=NOW)
    assert isinstance(request, SmsNotice)
    code = event.envelope.dossier_code or ""
    day = ""
    appointment = getattr(event.payload, "dates", None)
    if appointment is not None and appointment.appointment is not None:
        day = f"{appointment.appointment.astimezone(timezone(timedelta(hours=7))):%d/%m/%Y}"
    assert request.template == template
    assert text.format(code=code, day=day) in request.text
    assert "Đ" not in request.plain_text and "đ" not in request.plain_text
    assert request.phone == "84912000111"


def test_apology_carries_both_dates() -> None:
    """The apology names the old appointment and the new one (Decree 61)."""
    event = load("dossier.overdue_apology")
    request = notice(event, now=NOW)
    payload: Any = event.payload
    ict = timezone(timedelta(hours=7))
    assert f"{payload.old_appointment.astimezone(ict):%d/%m/%Y}" in request.text
    assert f"Ngày hẹn trả mới: {payload.new_appointment.astimezone(ict):%d/%m/%Y}" in request.text


def test_no_phone_is_a_mapping_error_naming_the_field() -> None:
    """An applicant without a mobile phone (the route's `when` skips these): MappingError on the phone field."""
    event = load("dossier.received")
    data = json.loads((EXAMPLES / "dossier.received.json").read_text(encoding="utf-8"))
    data["payload"]["applicant"].pop("phone", None)
    event = parse_event(json.dumps(data).encode(), payload_models=EVENT_PAYLOADS)
    with pytest.raises(MappingError) as caught:
        notice(event, now=NOW)
    assert caught.value.field == "payload.applicant.phone"


def test_registered_for_every_notice_event() -> None:
    """Both adapters are registered, the notice one for each notice event type."""
    found = adapters()
    assert found["igate_to_sms.notice"].accepts == frozenset(NOTICE_EVENTS)
    assert found["igate_to_sms.otp"].accepts == frozenset({"dossier.otp_requested"})
