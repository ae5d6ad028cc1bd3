"""Golden cases and refusals of ``adapters/esms_to_bus.py``: eSMS delivery reports into ``sms.delivery_report``.

Each file in ``cases/esms_to_bus/`` holds the query parameters eSMS sent (the token already removed by the
ingress), a ``now`` and the expected envelope, which must also pass :func:`schemas.envelope.parse_event`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.esms_to_bus import esms_event
from adapters.to_bus import CallbackRejected
from schemas.envelope import parse_event
from schemas.events import EVENT_PAYLOADS

CASES_DIR = Path(__file__).parent / "cases" / "esms_to_bus"
CASES = sorted(CASES_DIR.glob("*.json"))
NOW = datetime(2026, 12, 3, 9, 45, tzinfo=UTC)


def load(name: str) -> dict[str, Any]:
    """One golden case by file stem."""
    data: dict[str, Any] = json.loads((CASES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


def parsed_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The payload as the strict parser gives it (phone in national form)."""
    parsed = parse_event(json.dumps(event).encode(), payload_models=EVENT_PAYLOADS)
    payload: dict[str, Any] = parsed.payload.model_dump(mode="json")
    return payload


class TestGoldenCases:
    def test_cases_exist(self) -> None:
        """The folder holds cases; an empty glob would make every parametrised test vanish silently."""
        assert len(CASES) >= 4

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_matches_expected(self, path: Path) -> None:
        """The report maps to exactly the expected envelope."""
        case = load(path.stem)

        assert esms_event(case["params"], now=datetime.fromisoformat(case["now"])) == case["expected"]

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_expected_is_a_valid_event(self, path: Path) -> None:
        """The expected envelope passes parse_event as sms.delivery_report from esms."""
        expected = load(path.stem)["expected"]

        event = parse_event(json.dumps(expected).encode(), payload_models=EVENT_PAYLOADS)

        assert event.envelope.event_type == "sms.delivery_report"
        assert event.envelope.source == "esms"

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_now_changes_only_occurred_at(self, path: Path) -> None:
        """Another ``now`` moves occurred_at and nothing else: the event_id is the report's identity."""
        case = load(path.stem)

        other = esms_event(case["params"], now=datetime(2031, 1, 1, tzinfo=UTC))

        assert other.pop("occurred_at") == "2031-01-01T07:00:00+07:00"
        assert other == {k: v for k, v in case["expected"].items() if k != "occurred_at"}


def test_full_report_parses_with_the_phone_in_national_form() -> None:
    """SMSID, SendStatus, telcoid, RequestId, phonenumber (84...) ▶ the payload, phone as 0..."""
    assert parsed_payload(load("sent")["expected"]) == {
        "sms_id": "abc-1",
        "send_status": 5,
        "telco": 3,
        "request_id": "r-1",
        "phone": "0912000111",
    }


def test_a_later_status_is_another_event() -> None:
    """Queued (2) then sent (5) for one SMSID are two events; the same status twice (any spelling) is one."""
    queued = esms_event({"SMSID": "x", "SendStatus": "2"}, now=NOW)["event_id"]
    sent = esms_event({"SMSID": "x", "SendStatus": "5"}, now=NOW)["event_id"]
    again = esms_event({"smsid": "x", "sendstatus": "5", "telcoid": ""}, now=NOW)["event_id"]
    assert queued != sent
    assert sent == again


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"SendStatus": "5"}, "SMSID"),
        ({"SMSID": "", "SendStatus": "5"}, "SMSID"),
        ({"SMSID": "x"}, "SendStatus"),
        ({"SMSID": "x", "SendStatus": "five"}, "SendStatus"),
        ({"SMSID": "x", "SendStatus": "5", "telcoid": "Viettel"}, "telcoid"),
        ({"SMSID": "x" * 101, "SendStatus": "5"}, "SMSID"),
    ],
    ids=["no-smsid", "blank-smsid", "no-status", "status-not-a-number", "telco-not-a-number", "long-smsid"],
)
def test_missing_or_bad_parameter_is_named(params: dict[str, str], field: str) -> None:
    """A missing, blank, non-numeric or overlong parameter ▶ invalid_callback (422) naming it."""
    with pytest.raises(CallbackRejected, match=field) as caught:
        esms_event(params, now=NOW)
    assert (caught.value.status, caught.value.code) == (422, "invalid_callback")
