"""Golden cases and refusals of ``adapters/igate_to_vnpost.py``: BCCI events into VNPost orders and cancels.

Each file in ``cases/igate_to_vnpost/`` holds an event (as iGate sends it), the adapter's name and the
expected request. Events are parsed by the one strict parser first, as the worker parses them, so a field
the envelope refuses (a phone that is not a mobile, a negative fee) is shown to die there, naming the field.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from vnpost_data import bcci_event, item_code, withdrawn_event, wrong_check_digit

from adapters.igate_to_vnpost import dossier_ended, pickup_requested, result_ready, tracking_tick
from schemas.envelope import Event, parse_event
from schemas.errors import InvalidEvent, MappingError
from schemas.events import EVENT_PAYLOADS

CASES_DIR = Path(__file__).parent / "cases" / "igate_to_vnpost"
CASES = sorted(CASES_DIR.glob("*.json"))
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
ADAPTERS = {"result_ready": result_ready, "pickup_requested": pickup_requested, "dossier_ended": dossier_ended}


def parse(event: dict[str, Any]) -> Event:
    """The event as the worker parses it from the wire."""
    return parse_event(json.dumps(event, ensure_ascii=False).encode(), payload_models=EVENT_PAYLOADS)


class TestGoldenCases:
    """Each case file maps to exactly its expected request."""

    def test_there_is_a_case_for_each_adapter(self) -> None:
        """An empty folder would make the parametrised test vanish."""
        assert {json.loads(p.read_text())["adapter"] for p in CASES} == set(ADAPTERS)

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_matches_expected(self, path: Path) -> None:
        """The event maps to the expected request, field for field."""
        case = json.loads(path.read_text(encoding="utf-8"))
        request = ADAPTERS[case["adapter"]](parse(case["event"]), now=NOW)
        assert request.model_dump(mode="json") == case["expected"]


class TestRefusals:
    """What VNPost could not take is refused before it is sent, naming the field."""

    def test_a_province_that_does_not_exist(self) -> None:
        """Province 99 is no GSO province."""
        event = bcci_event("return", 1)
        event["payload"]["bcci"]["receiver"]["province"] = "99"
        with pytest.raises(MappingError) as err:
            result_ready(parse(event), now=NOW)
        assert err.value.field == "payload.bcci.receiver.province"

    def test_a_district_of_another_province(self) -> None:
        """District 001 (Ba Đình, Hà Nội) is not in Đắk Lắk."""
        event = bcci_event("pickup", 1)
        event["payload"]["pickup_address"]["district"] = "001"
        with pytest.raises(MappingError) as err:
            pickup_requested(parse(event), now=NOW)
        assert err.value.field == "payload.pickup_address.district"

    def test_a_pickup_without_a_phone(self) -> None:
        """The postal worker calls first: no phone is a mapping error naming it."""
        event = bcci_event("pickup", 1)
        del event["payload"]["applicant"]["phone"]
        with pytest.raises(MappingError) as err:
            pickup_requested(parse(event), now=NOW)
        assert err.value.field == "payload.applicant.phone"

    @pytest.mark.parametrize("phone", ["12345", "0212345678", "09123456789", "+1 202 555 0100"])
    def test_a_phone_in_the_wrong_format_dies_at_the_envelope(self, phone: str) -> None:
        """The receiver's phone must be a Vietnamese mobile: the strict parser names the field."""
        event = bcci_event("return", 1)
        event["payload"]["bcci"]["receiver"]["phone"] = phone
        with pytest.raises(InvalidEvent, match=r"payload\.bcci\.receiver\.phone"):
            parse(event)

    def test_a_cod_of_minus_one_dies_at_the_envelope(self) -> None:
        """Fees are positive whole VND: -1 is refused naming the fee's amount."""
        event = bcci_event("return", 1)
        event["payload"]["fees"][0]["amount_vnd"] = -1
        with pytest.raises(InvalidEvent, match=r"payload\.fees\.0\.amount_vnd"):
            parse(event)

    def test_a_cod_of_ten_to_the_thirteen_is_over_vnposts_limit(self) -> None:
        """10^13 VND is a valid fee for iGate but not a COD VNPost takes: mapping error naming the fees."""
        event = bcci_event("return", 1)
        event["payload"]["fees"] = [{**event["payload"]["fees"][0], "amount_vnd": 10**13, "collect": "sau"}]
        with pytest.raises(MappingError) as err:
            result_ready(parse(event), now=NOW)
        assert err.value.field == "payload.fees"

    def test_a_result_without_bcci(self) -> None:
        """Nothing to post to: mapping error naming payload.bcci (the route's when skips these)."""
        event = bcci_event("return", 1)
        del event["payload"]["bcci"]
        with pytest.raises(MappingError) as err:
            result_ready(parse(event), now=NOW)
        assert err.value.field == "payload.bcci"

    def test_a_cancel_with_a_wrong_check_digit(self) -> None:
        """The S10 form passes the envelope; the check digit does not pass the cancel."""
        with pytest.raises(MappingError) as err:
            dossier_ended(parse(withdrawn_event(1, wrong_check_digit(item_code(1)))), now=NOW)
        assert err.value.field == "payload.bcci.item_code"
        assert "check digit" in str(err.value)

    def test_a_cancel_without_an_item_code(self) -> None:
        """No item yet: nothing to cancel."""
        with pytest.raises(MappingError) as err:
            dossier_ended(parse(withdrawn_event(1, None)), now=NOW)
        assert err.value.field == "payload.bcci.item_code"


def test_the_same_event_gives_the_same_order() -> None:
    """Pure: mapping twice, or at another time, gives the same request."""
    event = parse(bcci_event("return", 3))
    assert result_ready(event, now=NOW) == result_ready(copy.deepcopy(event), now=datetime(2030, 1, 1, tzinfo=UTC))


def test_a_tick_becomes_a_run_named_by_its_scheduled_time() -> None:
    """The run is the scheduled time in UTC (so runs sort as they happened); the cursor is passed on."""
    tick = {
        "event_id": "0f8a3c1e-7b2d-5e4f-9a6b-1c2d3e4f5a6b",
        "event_type": "bus.tick",
        "occurred_at": "2026-11-27T08:30:00+07:00",
        "source": "igate-bus/vnpost-tracking",
        "payload": {
            "route": "vnpost-tracking",
            "scheduled_at": "2026-11-27T08:30:00+07:00",
            "cursor": "2026-11-27T01:00:00.000000Z|EB000000014VN",
        },
    }
    request = tracking_tick(parse(tick), now=NOW)
    assert request.run == "2026-11-27T01:30:00.000000Z"
    assert request.cursor == "2026-11-27T01:00:00.000000Z|EB000000014VN"
