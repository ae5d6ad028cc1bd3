"""Golden cases and failure paths of ``adapters/igate_to_nps.py``: iGate events into the national portal's records.

Each file in ``cases/igate_to_nps/`` holds an event (the full envelope), the adapter's name, a ``now`` and the
expected request as ``model_dump(mode="json")``. The event is built from the file the way the worker validates
it but without the ingress's NFC step, so a case can hand the adapter NFD text; every case is also run
through :func:`schemas.envelope.parse_event` and must give the same request.
"""

from __future__ import annotations

import copy
import json
import logging
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from adapters import igate_to_nps
from adapters.igate_to_nps import (
    ELLIPSIS,
    PORTAL_STATUS,
    clip,
    is_grapheme_boundary,
    settled_status,
    supplement_round_id,
    utf16_len,
)
from adapters.registry import adapters
from schemas.envelope import Envelope, Event, parse_event
from schemas.errors import MappingError
from schemas.events import EVENT_PAYLOADS
from schemas.igate import EVENT_STATUS, PaymentSettled
from schemas.nps import CapNhatTienDoHoSoMCRequest, DongBoDanhGiaRequest, DongBoHoSoMCRequest

CASES_DIR = Path(__file__).parent / "cases" / "igate_to_nps"
CASES = sorted(CASES_DIR.glob("*.json"))
OTHER_NOW = datetime(2001, 1, 1, tzinfo=UTC)
#: the event types docs/domain.md section 7 sends to the portal (result_ready too: status 9 and the end step)
PORTAL_EVENTS = frozenset(
    {
        "dossier.submitted",
        "dossier.received",
        "dossier.refused",
        "dossier.step_changed",
        "dossier.supplement_requested",
        "dossier.supplement_received",
        "payment.settled",
        "dossier.withdrawn",
        "dossier.stopped",
        "dossier.result_ready",
        "dossier.returned",
        "rating.submitted",
    }
)
#: the cases whose record's status comes from the table (payment.settled keeps the dossier's status)
STATUS_CASES = [
    p
    for p in CASES
    if "isUpdating" in (case := json.loads(p.read_text(encoding="utf-8")))["expected"]
    and case["event"]["event_type"] != "payment.settled"
]
#: the edge cases the issue asks for, by file name
REQUIRED_EDGE_CASES = frozenset(
    {
        "nfd_input",
        "missing_optional_dates",
        "several_fees_and_supplements",
        "bcci_channel3",
        "cmnd_9_digits",
        "overlong_summary",
    }
)


def load(name: str) -> dict[str, Any]:
    """One golden case by file stem."""
    data: dict[str, Any] = json.loads((CASES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


def build(raw: dict[str, Any]) -> Event:
    """The event as the worker's models validate it, without the ingress's NFC step (NFD input survives)."""
    envelope = Envelope.model_validate(raw)
    payload = EVENT_PAYLOADS[envelope.event_type].model_validate(envelope.payload)
    return Event(envelope=envelope, payload=payload)


def parsed(raw: dict[str, Any]) -> Event:
    """The event as ``parse_event`` gives it from the wire (strict JSON, NFC, models)."""
    body = json.dumps(raw, ensure_ascii=False).encode()
    return parse_event(body, payload_models=EVENT_PAYLOADS)


def run(case: dict[str, Any], event: Event, *, now: datetime | None = None) -> Any:
    """Call the case's adapter function directly (``igate_to_nps.<fn>``)."""
    module, fn = case["adapter"].split(".")
    assert module == "igate_to_nps"
    at = datetime.fromisoformat(case["now"]) if now is None else now
    return getattr(igate_to_nps, fn)(event, now=at)


def strings(value: Any) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def event_from(name: str, **changes: Any) -> tuple[dict[str, Any], Event]:
    """A golden case's event with envelope fields changed (``None`` removes one)."""
    case = load(name)
    raw = copy.deepcopy(case["event"])
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return case, build(raw)


class TestGoldenCases:
    """Each case file: the adapter's request equals ``expected``, by direct call and through the wire."""

    def test_cases_exist(self) -> None:
        """The folder holds cases; an empty glob would make every parametrised test vanish silently."""
        assert len(CASES) >= 20
        assert len(STATUS_CASES) >= 15

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_matches_expected(self, path: Path) -> None:
        """The adapter called directly on the case's event gives exactly the expected request."""
        case = load(path.stem)

        result = run(case, build(case["event"]))

        assert result.model_dump(mode="json") == case["expected"]

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_same_through_parse_event(self, path: Path) -> None:
        """Parsed from the wire (NFC at the ingress), the event maps to the same request."""
        case = load(path.stem)

        result = run(case, parsed(case["event"]))

        assert result.model_dump(mode="json") == case["expected"]

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_registered_for_its_event(self, path: Path) -> None:
        """The case's adapter name is registered, accepts the event's type and produces the result's model."""
        case = load(path.stem)
        registered = adapters()[case["adapter"]]

        result = registered(build(case["event"]), now=datetime.fromisoformat(case["now"]))

        assert case["event"]["event_type"] in registered.accepts
        assert type(result) is registered.produces

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_now_changes_nothing(self, path: Path) -> None:
        """Another ``now`` gives the same request: the adapter reads no clock."""
        case = load(path.stem)
        event = build(case["event"])

        assert run(case, event) == run(case, event, now=OTHER_NOW)

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_output_text_is_nfc(self, path: Path) -> None:
        """Every string of every expected request is NFC."""
        case = load(path.stem)

        not_nfc = [s for s in strings(case["expected"]) if unicodedata.normalize("NFC", s) != s]

        assert not_nfc == []

    def test_every_adapter_has_a_case(self) -> None:
        """Each registered igate_to_nps function is exercised by at least one case file."""
        registered = {name for name in adapters() if name.startswith("igate_to_nps.")}
        covered = {load(p.stem)["adapter"] for p in CASES}

        assert registered - covered == set()
        assert len(registered) == 14

    def test_edge_cases_are_present(self) -> None:
        """NFD, missing dates, many fees and supplements, BCCI, CMND and overlong summary each have a case."""
        assert REQUIRED_EDGE_CASES - {p.stem for p in CASES} == set()

    def test_nfd_case_really_sends_nfd(self) -> None:
        """The NFD case's event text is decomposed, so its case proves the adapter normalises."""
        payload = load("nfd_input")["event"]["payload"]

        for text in (payload["applicant"]["name"], payload["summary"], payload["procedure_name"]):
            assert unicodedata.normalize("NFC", text) != text

    def test_nfd_and_nfc_input_give_the_same_record(self) -> None:
        """The NFD case's record equals the record of the same event written in NFC, field for field."""
        nfd = load("nfd_input")["expected"]["data"][0]
        nfc = load("received")["expected"]["data"][0]

        assert nfd == nfc

    def test_overlong_summary_is_cut_within_the_limit_at_a_boundary(self) -> None:
        """A 1002-unit summary becomes at most 1000 units ending in '…', with no lone skin-tone modifier."""
        summary = load("overlong_summary")["expected"]["data"][0]["TrichYeuHoSo"]

        assert utf16_len(summary) <= 1000
        assert summary.endswith(ELLIPSIS)
        assert "\U0001f44d" not in summary  # the thumb would fit alone, but not with its modifier
        assert "\U0001f3fd" not in summary

    def test_supplement_round_keeps_its_id_from_request_to_receipt(self) -> None:
        """The request and the receipt of one supplement round carry the same HoSoBoSungId."""
        asked = load("supplement_requested")["expected"]["data"][0]["DanhSachHoSoBoSung"][0]
        received = load("supplement_received")["expected"]["data"][0]["DanhSachHoSoBoSung"][0]

        assert asked["HoSoBoSungId"] == received["HoSoBoSungId"]
        assert (asked["TrangThaiBoSung"], received["TrangThaiBoSung"]) == ("1", "2")

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_adapters_do_not_log(self, path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """No log record and no structlog event while mapping: personal data is passed on, never logged."""
        case = load(path.stem)
        event = build(case["event"])

        with caplog.at_level(logging.DEBUG), structlog.testing.capture_logs() as logged:
            run(case, event)

        assert caplog.records == []
        assert logged == []


class TestStatus:
    """One table from event type to the national 1-10 status."""

    def test_table_extends_igates_event_status(self) -> None:
        """PORTAL_STATUS is schemas.igate's EVENT_STATUS plus supplement_received → 4, nothing changed."""
        assert {k: v for k, v in PORTAL_STATUS.items() if k in EVENT_STATUS} == EVENT_STATUS
        assert set(PORTAL_STATUS) - set(EVENT_STATUS) == {"dossier.supplement_received"}
        assert PORTAL_STATUS["dossier.supplement_received"] == 4

    def test_every_event_the_portal_receives_has_an_adapter(self) -> None:
        """Each event type docs/domain.md section 7 sends to the portal is accepted by some igate_to_nps adapter."""
        accepted = set().union(*(a.accepts for n, a in adapters().items() if n.startswith("igate_to_nps.")))

        assert PORTAL_EVENTS - accepted == set()

    @pytest.mark.parametrize("path", STATUS_CASES, ids=[p.stem for p in STATUS_CASES])
    def test_record_status_is_the_tables(self, path: Path) -> None:
        """A record's TrangThaiHoSo is the table's status for its event type (payment.settled excepted)."""
        case = load(path.stem)

        status = case["expected"]["data"][0]["TrangThaiHoSo"]

        assert status == str(PORTAL_STATUS[case["event"]["event_type"]])

    @pytest.mark.parametrize(
        ("status", "dates", "expected"),
        [
            (6, {}, 6),
            (None, {"received": "2026-11-26T09:30:00+07:00", "returned": "2026-12-11T10:20:00+07:00"}, 10),
            (None, {"received": "2026-11-26T09:30:00+07:00", "finished": "2026-12-09T15:00:00+07:00"}, 9),
            (None, {"received": "2026-11-26T09:30:00+07:00"}, 4),
            (None, {}, 1),
        ],
        ids=["envelope-status-wins", "returned", "finished", "received", "not-yet-received"],
    )
    def test_settled_status(self, status: int | None, dates: dict[str, str], expected: int) -> None:
        """payment.settled keeps the dossier's status: the envelope's, else the latest its dates show."""
        case = load("payment_settled")
        raw = copy.deepcopy(case["event"])
        raw["payload"]["dates"] = {"submitted": "2026-11-26T08:05:12+07:00", **dates}
        if status is None:
            raw.pop("status", None)
        else:
            raw["status"] = status
        event = build(raw)
        assert isinstance(event.payload, PaymentSettled)

        assert settled_status(event, event.payload) == expected

    def test_envelope_status_does_not_override_the_event_type(self) -> None:
        """A dossier.received whose envelope says 4 is still recorded as 2: the event type decides."""
        case, event = event_from("received", status=4)

        assert run(case, event).data[0].TrangThaiHoSo == "2"

    def test_records_are_creates(self) -> None:
        """Every record goes out as a create; the connector turns "đã tồn tại" into an update."""
        creates = {load(p.stem)["expected"].get("isUpdating") for p in CASES} - {None}

        assert creates == {False}


class TestClip:
    """Cutting text to the portal's limits: NFC, UTF-16 units, grapheme boundaries, an ellipsis."""

    def test_short_text_is_only_normalised(self) -> None:
        """Text within the limit comes back whole, in NFC."""
        assert clip(unicodedata.normalize("NFD", "Đắk Lắk"), 7) == "Đắk Lắk"

    def test_nfd_is_measured_after_normalising(self) -> None:
        """NFD 'Đắk Lắk' has 11 code points but 7 in NFC, so a limit of 7 keeps it whole."""
        text = unicodedata.normalize("NFD", "Đắk Lắk")

        assert len(text) == 11
        assert clip(text, 7) == "Đắk Lắk"

    def test_long_text_fits_and_ends_with_an_ellipsis(self) -> None:
        """Cut text is at most the limit, ellipsis included, with trailing spaces dropped before it."""
        assert clip("Hồ sơ đất đai số một", 8) == "Hồ sơ đ…"
        assert clip("Hồ sơ đất", 7) == "Hồ sơ…"

    def test_combining_marks_stay_with_their_letter(self) -> None:
        """A letter with a mark NFC cannot compose (x + combining tilde) is never separated from the mark."""
        text = "abcx\u0303def"

        assert clip(text, 5) == "abc…"

    def test_zwj_emoji_sequence_is_not_split(self) -> None:
        """A family emoji (man ZWJ woman ZWJ girl) is kept whole or dropped whole."""
        family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
        text = "ab" + family + "cd"

        cut = clip(text, 6)

        assert cut == "ab…"
        assert clip(text, 11) == "ab" + family + "…"

    def test_flags_are_cut_between_pairs_only(self) -> None:
        """Regional indicators pair up into flags: a cut falls between two flags, never inside one."""
        vn, jp = "\U0001f1fb\U0001f1f3", "\U0001f1ef\U0001f1f5"

        assert clip(vn + jp + "x", 7) == vn + "…"

    def test_crlf_is_one_cluster(self) -> None:
        """CR LF is never cut in the middle."""
        assert not is_grapheme_boundary("a\r\nb", 2)
        assert is_grapheme_boundary("a\r\nb", 1)

    def test_emoji_count_two_utf16_units(self) -> None:
        """Characters outside the BMP count twice, as .NET and nvarchar count them."""
        assert utf16_len("a👍") == 3


class TestFailures:
    """Each failure is a MappingError naming the event's field, with no personal data in the message."""

    @pytest.mark.parametrize(
        ("name", "changes", "field"),
        [
            ("received", {"dossier_code": None}, "dossier_code"),
            ("submitted", {"procedure_code": None}, "procedure_code"),
            ("stopped", {"channel": None}, "channel"),
            ("returned", {"dossier_code": "BN 0001/2026"}, "dossier_code"),
            ("step_changed", {"dossier_code": None}, "dossier_code"),
            ("step_changed", {"dossier_code": "BN 0001/2026"}, "dossier_code"),
            ("result_ready_progress", {"dossier_code": None}, "dossier_code"),
            ("rating_submitted", {"dossier_code": None}, "dossier_code"),
            ("rating_submitted", {"dossier_code": "mã hồ sơ"}, "dossier_code"),
        ],
        ids=[
            "no-dossier-code",
            "no-procedure-code",
            "no-channel",
            "code-the-portal-refuses",
            "step-no-dossier-code",
            "step-code-the-portal-refuses",
            "progress-no-dossier-code",
            "rating-no-dossier-code",
            "rating-code-the-portal-refuses",
        ],
    )
    def test_envelope_field(self, name: str, changes: dict[str, Any], field: str) -> None:
        """A missing or unusable envelope field is a MappingError naming it."""
        case, event = event_from(name, **changes)

        with pytest.raises(MappingError) as caught:
            run(case, event)

        assert caught.value.field == field

    @pytest.mark.parametrize(
        "name", ["received", "supplement_requested", "payment_settled", "withdrawn", "result_ready"]
    )
    def test_no_procedure_name(self, name: str) -> None:
        """The portal requires TenTTHC: an event without ``procedure_name`` names that payload field."""
        case = load(name)
        raw = copy.deepcopy(case["event"])
        del raw["payload"]["procedure_name"]

        with pytest.raises(MappingError) as caught:
            run(case, build(raw))

        assert caught.value.field == "payload.procedure_name"

    @pytest.mark.parametrize(
        "fn",
        [
            "dossier_submitted",
            "dossier_received",
            "dossier_refused",
            "dossier_supplement_requested",
            "dossier_supplement_received",
            "dossier_payment_requested",
            "payment_settled",
            "dossier_withdrawn",
            "dossier_stopped",
            "dossier_result_ready",
            "dossier_result_ready_progress",
            "dossier_returned",
            "dossier_step_changed",
        ],
    )
    def test_wrong_payload(self, fn: str) -> None:
        """An event of another type (a rating) handed to a dossier adapter names ``payload``."""
        event = build(load("rating_submitted")["event"])

        with pytest.raises(MappingError) as caught:
            getattr(igate_to_nps, fn)(event, now=OTHER_NOW)

        assert caught.value.field == "payload"

    def test_rating_adapter_refuses_a_dossier_payload(self) -> None:
        """rating_submitted on a dossier.received event names ``payload``."""
        event = build(load("received")["event"])

        with pytest.raises(MappingError) as caught:
            igate_to_nps.rating_submitted(event, now=OTHER_NOW)

        assert caught.value.field == "payload"

    def test_refusal_message_holds_no_personal_data(self) -> None:
        """A refused mapping's message names fields, never the applicant's name, id, phone or e-mail."""
        case, event = event_from("received", dossier_code="BN 0001/2026")

        with pytest.raises(MappingError) as caught:
            run(case, event)

        message = str(caught.value)
        assert "MaHoSo" in message
        for personal in ("Nguyễn Thị Hương", "066190012345", "0912000111", "nthuong.bmt@example.com"):
            assert personal not in message


class TestHelpers:
    """The small rules the records depend on."""

    def test_supplement_round_id(self) -> None:
        """The round id is the dossier code and the pre-supplement appointment in portal time."""
        at = datetime.fromisoformat("2026-12-10T10:00:00+00:00")

        assert supplement_round_id("000.00.16.H16-261126-0001", at) == "000.00.16.H16-261126-0001-BS-20261210170000"

    def test_produced_models(self) -> None:
        """Record adapters produce DongBoHoSoMCRequest, progress ones CapNhatTienDo, the rating DongBoDanhGia."""
        produced = {n: a.produces for n, a in adapters().items() if n.startswith("igate_to_nps.")}

        assert produced["igate_to_nps.dossier_step_changed"] is CapNhatTienDoHoSoMCRequest
        assert produced["igate_to_nps.dossier_result_ready_progress"] is CapNhatTienDoHoSoMCRequest
        assert produced["igate_to_nps.rating_submitted"] is DongBoDanhGiaRequest
        others = {m for n, m in produced.items() if not n.endswith(("step_changed", "_progress", "rating_submitted"))}
        assert others == {DongBoHoSoMCRequest}
