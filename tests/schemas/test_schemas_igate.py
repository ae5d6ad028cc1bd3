"""iGate event payloads and result payloads: the shipped examples, and the bad inputs they must refuse."""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.envelope import Event, parse_event
from schemas.errors import InvalidEvent
from schemas.events import EVENT_PAYLOADS
from schemas.igate import (
    EVENT_STATUS,
    IGATE_EVENTS,
    Applicant,
    DossierReceived,
    Fee,
    Land,
    normalize_mobile,
    to_msisdn,
)
from schemas.results import RESULT_EVENTS, DvcqgSyncResult

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "events"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
#: the iGate event types of docs/domain.md section 7, copied from its table
#: every payload model by class name
MODELS: dict[str, type[BaseModel]] = {m.__name__: m for m in EVENT_PAYLOADS.values()}
DOMAIN_IGATE_EVENTS = {
    "dossier.otp_requested",
    "dossier.submitted",
    "dossier.received",
    "dossier.refused",
    "dossier.step_changed",
    "dossier.supplement_requested",
    "dossier.supplement_received",
    "dossier.payment_requested",
    "payment.settled",
    "receipt.cancel_requested",
    "dossier.withdrawn",
    "dossier.stopped",
    "dossier.overdue_apology",
    "dossier.result_ready",
    "dossier.returned",
    "bcci.pickup_requested",
    "rating.submitted",
}
DOMAIN_RESULT_EVENTS = {
    "vnpost.tracking_updated",
    "vnpost.pool_low",
    "vilis.status_changed",
    "vilis.change_checked",
    "dvcqg.sync_result",
    "sms.delivery_report",
    "receipt.issued",
    "receipt.reconciled",
    "igate.note_added",
    "igate.dossier_updated",
}


def example(event_type: str) -> dict[str, Any]:
    """A fresh copy of the shipped example envelope of one event type."""
    data: dict[str, Any] = json.loads((EXAMPLES / f"{event_type}.json").read_text(encoding="utf-8"))
    return data


def parse(data: dict[str, Any]) -> Event:
    """Parse an envelope given as data, as the worker does with its bytes."""
    return parse_event(json.dumps(data, ensure_ascii=False).encode(), payload_models=EVENT_PAYLOADS)


def refused(data: dict[str, Any]) -> str:
    """The reason parse_event gives for refusing an envelope."""
    with pytest.raises(InvalidEvent) as info:
        parse(data)
    return str(info.value)


class TestExamples:
    @pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
    def test_example_validates(self, path: Path) -> None:
        """Every shipped example parses strictly into the model of its own event type."""
        event = parse_event(path.read_bytes(), payload_models=EVENT_PAYLOADS)
        assert event.envelope.event_type == path.stem
        assert isinstance(event.payload, EVENT_PAYLOADS[path.stem])

    def test_one_example_per_igate_and_result_event(self) -> None:
        """There is exactly one example for each iGate and result event type."""
        assert {p.stem for p in EXAMPLE_FILES} == set(IGATE_EVENTS) | set(RESULT_EVENTS)

    @pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
    def test_example_text_is_nfc_with_offsets(self, path: Path) -> None:
        """Examples are stored NFC, and every date-time in them carries the +07:00 offset."""
        text = path.read_text(encoding="utf-8")
        assert unicodedata.normalize("NFC", text) == text
        stamps = re.findall(r'"(\d{4}-\d\d-\d\dT[^"]+)"', text)
        assert stamps
        assert all(s.endswith("+07:00") for s in stamps)

    @pytest.mark.parametrize("event_type", sorted(EVENT_STATUS))
    def test_example_status_matches_event_type(self, event_type: str) -> None:
        """A status-changing event's example carries the national status its type stands for."""
        assert example(event_type)["status"] == EVENT_STATUS[event_type]

    def test_examples_speak_dak_lak(self) -> None:
        """The examples use Đắk Lắk's codes: agency H16, province 66, district 643."""
        data = example("dossier.received")
        assert data["agency_code"] == "000.00.16.H16"
        assert data["payload"]["applicant"]["address"]["province"] == "66"
        assert data["payload"]["applicant"]["address"]["district"] == "643"
        assert "Đắk Lắk" in data["payload"]["land"]["dia_chi"]


class TestRegistry:
    def test_every_domain_igate_event_has_a_model(self) -> None:
        """Each iGate event type of docs/domain.md section 7 maps to its own payload model."""
        assert set(IGATE_EVENTS) == DOMAIN_IGATE_EVENTS
        assert len(set(IGATE_EVENTS.values())) == len(IGATE_EVENTS)

    def test_every_result_event_has_a_model(self) -> None:
        """The result events of section 7, plus iGate's note and update, are registered."""
        assert set(RESULT_EVENTS) == DOMAIN_RESULT_EVENTS

    def test_registry_merges_without_collisions(self) -> None:
        """EVENT_PAYLOADS holds every iGate, result and bus event type, none shadowing another."""
        assert set(EVENT_PAYLOADS) >= set(IGATE_EVENTS) | set(RESULT_EVENTS) | {"bus.ping"}
        assert not set(IGATE_EVENTS) & set(RESULT_EVENTS)

    def test_the_domain_doc_table_matches(self) -> None:
        """The event types in docs/domain.md's section 7 table are exactly the registered iGate events."""
        text = (ROOT / "docs" / "domain.md").read_text(encoding="utf-8")
        section = text[text.index("## 7.") :]
        table = section[: section.index("**Back into the bus**")]
        rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
        found = {t for row in rows for t in re.findall(r"`([a-z_]+\.[a-z_]+)`", row)}
        assert found == DOMAIN_IGATE_EVENTS
        back = set(re.findall(r"`([a-z_]+\.[a-z_]+)\{", section[section.index("**Back into the bus**") :]))
        assert back, "the section lists the events flowing back into the bus"
        assert back <= DOMAIN_RESULT_EVENTS


class TestFees:
    @pytest.mark.parametrize("amount", [500000.0, 0, -100000, True, "500000", 10**14])
    def test_bad_amount_refused(self, amount: object) -> None:
        """amount_vnd must be a whole positive VND amount: floats, zero, negatives, booleans, text refused."""
        data = example("dossier.payment_requested")
        data["payload"]["fees"][0]["amount_vnd"] = amount
        assert "payload.fees.0.amount_vnd" in refused(data)

    def test_nan_refused_in_json_and_in_the_model(self) -> None:
        """NaN never reaches a fee: the JSON parser refuses it, and so does the model."""
        data = example("dossier.payment_requested")
        data["payload"]["fees"][0]["amount_vnd"] = float("nan")
        assert "NaN" in refused(data)
        fee = dict(example("dossier.payment_requested")["payload"]["fees"][0], amount_vnd=float("nan"))
        with pytest.raises(ValidationError, match="amount_vnd"):
            Fee.model_validate(fee)

    def test_payment_needs_at_least_one_fee(self) -> None:
        """A payment request without fees is refused."""
        data = example("dossier.payment_requested")
        data["payload"]["fees"] = []
        assert "payload.fees" in refused(data)


class TestText:
    def test_nfd_input_stored_as_nfc(self) -> None:
        """Vietnamese sent decomposed (NFD) is stored composed (NFC)."""
        text = (EXAMPLES / "dossier.received.json").read_text(encoding="utf-8")
        nfd = unicodedata.normalize("NFD", text)
        assert nfd != text
        event = parse_event(nfd.encode(), payload_models=EVENT_PAYLOADS)
        assert isinstance(event.payload, DossierReceived)
        assert event.payload.applicant.name == "Nguyễn Thị Hương"
        assert unicodedata.is_normalized("NFC", event.payload.applicant.name)
        assert event.payload.land is not None
        assert "Đắk Lắk" in event.payload.land.dia_chi

    def test_overlong_string_refused(self) -> None:
        """Strings are bounded: a 201-character name is refused, naming the field."""
        data = example("dossier.received")
        data["payload"]["applicant"]["name"] = "A" * 201
        assert "payload.applicant.name" in refused(data)

    def test_unknown_field_refused(self) -> None:
        """An unknown payload field is refused by name (extra="forbid")."""
        data = example("dossier.received")
        data["payload"]["applicant"]["nickname"] = "x"
        assert "payload.applicant.nickname" in refused(data)


class TestIdNumbers:
    @pytest.mark.parametrize(
        ("id_type", "id_no", "why"),
        [
            (1, "06620100123", "12 digits"),
            (1, "0662010012345", "12 digits"),
            (1, "06620100123A", "digits"),
            (1, "999201001234", "province"),
            (1, "066501001234", "century"),
            (2, "066201001234", "9 digits"),
            (2, "24123456", "9 digits"),
        ],
    )
    def test_bad_id_refused_naming_the_field(self, id_type: int, id_no: str, why: str) -> None:
        """A CCCD must be 12 digits with a province and century digit; a CMND 9 digits."""
        data = example("dossier.received")
        data["payload"]["applicant"]["id_type"] = id_type
        data["payload"]["applicant"]["id_no"] = id_no
        reason = refused(data)
        assert "payload.applicant.id_no" in reason
        assert why in reason
        assert id_no not in reason

    @pytest.mark.parametrize(
        ("id_type", "id_no"), [(1, "066201001234"), (1, "０６６２０１００１２３４"), (2, "241234567")]
    )
    def test_good_ids_accepted(self, id_type: int, id_no: str) -> None:
        """A valid CCCD (also typed in full-width digits) and a 9-digit CMND are accepted."""
        data = example("dossier.received")
        data["payload"]["applicant"].update(id_type=id_type, id_no=id_no)
        payload = parse(data).payload
        assert isinstance(payload, DossierReceived)
        assert payload.applicant.id_no == unicodedata.normalize("NFKC", id_no)

    def test_boolean_code_refused(self) -> None:
        """A JSON true is not applicant type 1."""
        data = example("dossier.received")
        data["payload"]["applicant"]["type"] = True
        assert "payload.applicant.type" in refused(data)


class TestPhones:
    @pytest.mark.parametrize(
        "raw",
        ["0912345678", "+84912345678", "84912345678", "０９１２３４５６７８", "0912 345 678", "091.234.5678"],
    )
    def test_phone_forms_normalised(self, raw: str) -> None:
        """Every accepted form of a mobile number is stored as 0xxxxxxxxx."""
        assert normalize_mobile(raw) == "0912345678"
        data = example("dossier.received")
        data["payload"]["applicant"]["phone"] = raw
        payload = parse(data).payload
        assert isinstance(payload, DossierReceived)
        assert payload.applicant.phone == "0912345678"

    @pytest.mark.parametrize(
        "raw", ["02623123456", "01681234567", "091234567", "09123456ab", "091234567890", "0112345678", ""]
    )
    def test_bad_phone_refused_naming_the_field(self, raw: str) -> None:
        """Landlines, old 11-digit numbers, wrong lengths, letters and unknown prefixes are refused."""
        data = example("dossier.received")
        data["payload"]["applicant"]["phone"] = raw
        reason = refused(data)
        assert "payload.applicant.phone" in reason
        assert not raw or raw not in reason

    def test_msisdn_form(self) -> None:
        """SMS gateways get 84xxxxxxxxx."""
        assert to_msisdn("+84 912 345 678") == "84912345678"


class TestDates:
    def test_offset_required(self) -> None:
        """A date-time without an offset is refused."""
        data = example("dossier.received")
        data["payload"]["dates"]["received"] = "2026-11-26T09:30:00"
        assert "payload.dates.received" in refused(data)

    def test_number_refused(self) -> None:
        """A Unix timestamp is not accepted for an ISO date-time."""
        data = example("dossier.received")
        data["payload"]["dates"]["submitted"] = 1764123912
        assert "payload.dates.submitted" in refused(data)

    def test_implausible_year_refused(self) -> None:
        """Year 1900 in a dossier date is a typing error."""
        data = example("dossier.received")
        data["payload"]["dates"]["appointment"] = "1900-01-01T00:00:00+07:00"
        assert "payload.dates.appointment" in refused(data)

    def test_received_dossier_needs_receipt_date(self) -> None:
        """dossier.received without dates.received is refused; dossier.submitted without it is fine."""
        data = example("dossier.received")
        del data["payload"]["dates"]["received"]
        assert "payload.dates.received" in refused(data)
        parse(example("dossier.submitted"))

    def test_returned_dossier_needs_return_date(self) -> None:
        """dossier.returned must say when the result was returned."""
        data = example("dossier.returned")
        del data["payload"]["dates"]["returned"]
        assert "payload.dates.returned" in refused(data)

    def test_apology_moves_appointment_later(self) -> None:
        """An overdue apology whose new appointment is not later than the old one is refused."""
        data = example("dossier.overdue_apology")
        data["payload"]["new_appointment"] = data["payload"]["old_appointment"]
        assert "new_appointment must be after" in refused(data)


class TestModels:
    def test_models_are_frozen(self) -> None:
        """A validated payload cannot be changed in place."""
        payload = parse(example("dossier.received")).payload
        assert isinstance(payload, DossierReceived)
        with pytest.raises(ValidationError, match="frozen"):
            payload.applicant.name = "x"  # type: ignore[misc]

    def test_land_area_finite_and_positive(self) -> None:
        """Land area refuses infinity, NaN, zero and booleans; parcel numbers refuse booleans."""
        land = example("dossier.received")["payload"]["land"]
        for bad in (float("inf"), float("nan"), 0, True):
            with pytest.raises(ValidationError, match="dien_tich"):
                Land.model_validate({**land, "dien_tich": bad})
        with pytest.raises(ValidationError, match="so_to"):
            Land.model_validate({**land, "so_to": True})

    def test_item_code_format(self) -> None:
        """A BCCI item code must look like an S10 code ending in VN."""
        data = example("dossier.returned")
        data["payload"]["bcci"]["item_code"] = "EB12345678VN"
        assert "payload.bcci.item_code" in refused(data)

    def test_district_optional_after_2025_reform(self) -> None:
        """An address without a district (abolished in 2025) is accepted."""
        data = example("dossier.received")
        del data["payload"]["applicant"]["address"]["district"]
        payload = parse(data).payload
        assert isinstance(payload, DossierReceived)
        assert payload.applicant.address.district is None

    def test_result_ok_property(self) -> None:
        """The portal's "0" and "00" are success; anything else is not."""
        payload = parse(example("dvcqg.sync_result")).payload
        assert isinstance(payload, DvcqgSyncResult)
        assert payload.ok
        assert not DvcqgSyncResult(service="DongBoHoSoMC", error_code="-1").ok

    @pytest.mark.parametrize("name", sorted(MODELS))
    def test_every_model_forbids_extra_and_is_frozen(self, name: str) -> None:
        """Each payload model refuses unknown fields and is immutable."""
        model = MODELS[name]
        assert model.model_config.get("extra") == "forbid"
        assert model.model_config.get("frozen") is True

    def test_applicant_roundtrip(self) -> None:
        """An applicant dumped to JSON validates back to an equal model."""
        applicant = Applicant.model_validate(copy.deepcopy(example("dossier.received")["payload"]["applicant"]))
        assert Applicant.model_validate_json(applicant.model_dump_json()) == applicant
