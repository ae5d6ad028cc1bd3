"""The envelope's edge rules as pure functions: strict scalars, safe text, dossier codes, times against receipt.

The same rules run at both doors (``tests/bus/test_edge_both_doors.py`` drives them through the ingress and a
worker); here each rule is pinned on its own, with the message an integrator reads.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config.settings import Settings
from schemas.envelope import (
    DEFAULT_DOSSIER_CODE_PATTERN,
    EventRules,
    is_json_content_type,
    multiline_keys,
    parse_event,
)
from schemas.errors import InvalidEvent
from schemas.events import EVENT_PAYLOADS
from schemas.igate import DossierReceived, RatingSubmitted
from schemas.strict import check_text, field_path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "events"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _event(event_type: str = "dossier.received", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{event_type}.json").read_text(encoding="utf-8"))
    data["event_id"] = str(uuid.uuid4())
    data["occurred_at"] = NOW.isoformat()
    data.update(changes)
    return data


def _parse(data: dict[str, Any], **kwargs: Any) -> Any:
    return parse_event(json.dumps(data).encode(), payload_models=EVENT_PAYLOADS, received_at=NOW, **kwargs)


class TestText:
    """check_text: control, bidi, BOM and surrogates refused everywhere, line breaks only in multi-line fields."""

    @pytest.mark.parametrize(
        ("char", "why"),
        [
            ("\x00", "U+0000: a control character"),
            ("\x1b", "control character"),
            ("\x7f", "control character"),
            ("\x85", "control character"),
            ("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
            ("\u202a", "bidirectional"),
            ("\u2067", "U+2067 RIGHT-TO-LEFT ISOLATE"),
            ("\u200e", "U+200E LEFT-TO-RIGHT MARK"),
            ("\u061c", "ARABIC LETTER MARK"),
            ("\ufeff", "byte-order mark"),
            ("\ud800", "lone surrogate"),
        ],
    )
    def test_refused_even_in_a_multiline_field_naming_path_and_character(self, char: str, why: str) -> None:
        """The path of the field and the character's name are in the error."""
        data = {"payload": {"fees": [{"name": "ok"}, {"comment": f"a{char}b"}]}}
        with pytest.raises(InvalidEvent) as caught:
            check_text(data, multiline_keys=frozenset({"comment"}))
        assert caught.value.field == "payload.fees[1].comment"
        assert why in str(caught.value)
        assert "offset 1" in str(caught.value)

    @pytest.mark.parametrize("char", ["\n", "\r", "\t"])
    def test_line_breaks_only_where_the_field_is_multiline(self, char: str) -> None:
        """Tab, LF and CR pass in a multi-line field and are refused in any other."""
        check_text({"payload": {"reason": f"a{char}b"}}, multiline_keys=frozenset({"reason"}))
        with pytest.raises(InvalidEvent, match="single line"):
            check_text({"payload": {"name": f"a{char}b"}}, multiline_keys=frozenset({"reason"}))

    def test_line_separators_are_refused_even_in_multiline_fields(self) -> None:
        """U+2028 is no line break a record understands."""
        with pytest.raises(InvalidEvent, match=r"U\+2028 LINE SEPARATOR: a Unicode line"):
            check_text({"reason": "a\u2028b"}, multiline_keys=frozenset({"reason"}))

    def test_keys_are_checked_and_shown_escaped(self) -> None:
        """A key holding an override is refused, its path printed with escapes, never the raw character."""
        with pytest.raises(InvalidEvent) as caught:
            check_text({"payload": {"\u202eeman": 1}}, multiline_keys=frozenset())
        assert caught.value.field == "payload['\\u202eeman']"
        assert "\u202e" not in str(caught.value)

    def test_vietnamese_and_emoji_pass(self) -> None:
        """Letters with diacritics, Đ, emoji with joiners: nothing to refuse."""
        check_text({"name": "Nguyễn Thị Hương Đắk Lắk 👩‍👩‍👧 ✅"}, multiline_keys=frozenset())

    def test_multiline_fields_come_from_the_markers(self) -> None:
        """reason, note, comment, summary are multi-line where the models mark them, names are not."""
        assert {"summary"} <= multiline_keys(DossierReceived)
        assert "name" not in multiline_keys(DossierReceived)
        assert multiline_keys(RatingSubmitted) == {"comment"}

    def test_paths_read_as_code(self) -> None:
        """Dots between names, brackets for indexes and for keys that are not plain names."""
        assert field_path(["payload", "fees", 0, "name"]) == "payload.fees[0].name"
        assert field_path(["a b"]) == "['a b']"


class TestRules:
    """EventRules: the dossier code's format, the time bounds, what settings may configure."""

    def test_the_default_dossier_code_is_domain_md_s_form(self) -> None:
        """{unit}-{yyMMdd}-{NNNN}; the unit in QĐ 20 form, a real month and day, 4 or 5 digits."""
        rules = EventRules()
        for good in ("000.00.16.H16-190812-0001", "H56.14-261126-12345", "000.00.01.H22-240229-0007"):
            rules.check_dossier_code(good)
        for bad in (
            "../../admin?x=1#",
            "000.00.16.H16-261126-T00001",
            "000.00.16.H16-261326-0001",
            "000.00.16.H16-261132-0001",
            "000.00.16.H16-261126-001",
            "000.00.16.h16-261126-0001",
            "PING-1",
            " 000.00.16.H16-261126-0001",
        ):
            with pytest.raises(InvalidEvent) as caught:
                rules.check_dossier_code(bad)
            assert caught.value.field == "dossier_code"

    def test_a_permissive_pattern_still_cannot_let_unsafe_codes_through(self) -> None:
        """A province's ".*" still refuses slashes, '..', spaces: a code goes into URLs and file names."""
        rules = EventRules.build(dossier_code=".*")
        rules.check_dossier_code("HS_2026.0001-A")
        for bad in ("../x", "a..b", "a/b", "a b", "x?y", "-a", "a."):
            with pytest.raises(InvalidEvent, match="characters a dossier code may not"):
                rules.check_dossier_code(bad)

    def test_settings_build_the_rules_and_refuse_a_broken_pattern(self) -> None:
        """IGATE_BUS_DOSSIER_CODE_PATTERN, _EVENT_FUTURE_SKEW, _EVENT_MAX_AGE; a pattern that does not compile."""
        rules = Settings(event_future_skew="2m", event_max_age="30d", dossier_code_pattern=r"HS-\d{6}").event_rules()
        assert (rules.future_skew_s, rules.max_age_s, rules.dossier_code.pattern) == (120.0, 2_592_000.0, r"HS-\d{6}")
        assert Settings().event_rules().dossier_code.pattern == DEFAULT_DOSSIER_CODE_PATTERN
        with pytest.raises(ValidationError, match="does not compile"):
            Settings(dossier_code_pattern="[a-")

    def test_times_against_receipt(self) -> None:
        """Up to the skew after receipt is fine; past it is refused; the maximum age only when configured."""
        rules = EventRules.build(future_skew_s=300, max_age_s=3600, dossier_code=DEFAULT_DOSSIER_CODE_PATTERN)
        rules.check_time(NOW + timedelta(seconds=300), NOW)
        rules.check_time(NOW - timedelta(seconds=3600), NOW)
        with pytest.raises(InvalidEvent, match="in the future"):
            rules.check_time(NOW + timedelta(seconds=301), NOW)
        with pytest.raises(InvalidEvent, match="before the bus received"):
            rules.check_time(NOW - timedelta(seconds=3601), NOW)
        EventRules().check_time(NOW - timedelta(days=3650), NOW)  # no maximum age by default


class TestParse:
    """parse_event: one rule for both doors."""

    @pytest.mark.parametrize(
        ("value", "ok"),
        [
            ("application/json", True),
            ("Application/JSON; charset=UTF-8", True),
            ("application/json ;charset = utf-8", True),
            (None, False),
            ("", False),
            ("text/json", False),
            ("application/json; charset=latin-1", False),
            ("application/json; charset=utf-8; x=1", False),
        ],
    )
    def test_content_type(self, value: str | None, ok: bool) -> None:
        """JSON in UTF-8 only; a missing type is refused like a wrong one."""
        assert is_json_content_type(value) is ok
        if not ok:
            with pytest.raises(InvalidEvent) as caught:
                _parse(_event(), content_type=value)
            assert caught.value.field == "content_type"

    def test_message_id_is_compared_as_a_uuid(self) -> None:
        """Upper case is the same event; another id or no UUID at all is refused, naming message_id."""
        data = _event()
        assert str(_parse(data, message_id=data["event_id"].upper()).envelope.event_id) == data["event_id"]
        for other in (str(uuid.uuid4()), "abc", "{" + data["event_id"] + "}"):
            with pytest.raises(InvalidEvent) as caught:
                _parse(data, message_id=other)
            assert caught.value.field == "message_id"

    def test_type_and_routing_key_must_name_the_event_type(self) -> None:
        """A dossier.returned delivered under dossier.received is refused; matching ones pass."""
        data = _event()
        _parse(data, amqp_type="dossier.received", routing_key="dossier.received")
        with pytest.raises(InvalidEvent, match="differs from event_type") as caught:
            _parse(data, amqp_type="dossier.returned")
        assert caught.value.field == "type"
        with pytest.raises(InvalidEvent) as caught:
            _parse(data, routing_key="dossier.returned")
        assert caught.value.field == "routing_key"

    def test_payload_times_that_happened_are_bounded_too(self) -> None:
        """dates.received after receipt + skew ▶ refused; the appointment (a time to come) is not bounded."""
        data = _event()
        data["payload"]["dates"]["appointment"] = (NOW + timedelta(days=30)).isoformat()
        _parse(data)
        data["payload"]["dates"]["received"] = (NOW + timedelta(hours=1)).isoformat()
        with pytest.raises(InvalidEvent, match=r"payload\.dates\.received: .*is in the future"):
            _parse(data)

    def test_without_a_receipt_time_nothing_is_bounded_by_it(self) -> None:
        """A dry run (`igate-bus map`, adapter tests) checks everything but the times against a receipt."""
        data = _event(occurred_at="2099-01-01T00:00:00+07:00")
        parse_event(json.dumps(data).encode(), payload_models=EVENT_PAYLOADS)
        with pytest.raises(InvalidEvent, match="occurred_at"):
            _parse(data)
