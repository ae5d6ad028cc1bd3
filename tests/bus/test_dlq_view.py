# mypy: allow-untyped-defs
"""How dead letters look to an operator: masked like the logs, short unique ids, a readable reason (pure)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from busenv import example
from rich.console import Console

from bus.cli_dlq import render_list
from bus.dlq_view import (
    ELLIPSIS,
    MIN_PREFIX,
    SelectorError,
    cut,
    mask_text,
    masked_letter,
    masked_summary,
    printable,
    reason,
    resolve_ids,
    revealed_letter,
    short_ids,
    terminal_json,
)
from bus.logging import MaskPersonalData
from routes.dlq import DeadLetter

PERSONAL = ("Nguyễn Thị Hương", "066190012345", "0912000111", "nthuong.bmt@example.com", "Số 12 đường Lê Duẩn")


def letter(body: bytes, **headers: Any) -> DeadLetter:
    """A dead letter as routes/dlq.py decodes it."""
    return DeadLetter(
        queue="dlq.bus-ack",
        route="bus-ack",
        event_id="545c7ff2-337c-5b06-afde-9b28761d7004",
        event_type="dossier.received",
        dossier_code="000.00.16.H16-261126-0001",
        error_kind=str(headers.get("x-error-kind", "invalid")),
        error=str(headers.get("x-error", "")),
        attempts=1,
        failed_at="2026-11-26T02:30:00+00:00",
        exchange="igate.events",
        routing_key="dossier.received",
        size=len(body),
        headers=headers,
        body=body,
    )


class TestMasking:
    def test_the_body_is_masked_exactly_as_the_logging_chain_masks_it(self):
        """Every personal value of a dossier event is gone, and what is left equals the logs' own masking."""
        event = example("dossier.received")
        shown = masked_letter(letter(json.dumps(event, ensure_ascii=False).encode()))
        text = json.dumps(shown, ensure_ascii=False)
        for value in PERSONAL:
            assert value not in text, value
        assert shown["body"] == MaskPersonalData().mask_value(event)
        assert shown["body"]["dossier_code"] == event["dossier_code"]  # what an operator needs stays
        assert shown["event_id"] == event["event_id"]

    def test_headers_and_error_texts_are_masked_too(self):
        """An x-error or x-last-error quoting a phone or an e-mail is masked; a non-JSON body is scrubbed as text."""
        raw = b"not json: phone 0912000111, id 066190012345"
        d = letter(
            raw,
            **{"x-error": "rejected: contact 0912000111 or a@b.vn", "x-last-error": "CCCD 066190012345 refused"},
        )
        shown = json.dumps(masked_letter(d), ensure_ascii=False)
        assert "0912000111" not in shown and "066190012345" not in shown and "a@b.vn" not in shown
        assert "0912000111" not in json.dumps(masked_summary(d), ensure_ascii=False)
        assert mask_text("call 0912000111") == "call ***11"

    def test_reveal_shows_the_letter_whole(self):
        """--reveal's document holds the personal data, byte headers decoded."""
        event = example("dossier.received")
        shown = revealed_letter(letter(json.dumps(event, ensure_ascii=False).encode(), **{"x-route": b"bus-ack"}))
        assert shown["body"] == event
        assert shown["headers"]["x-route"] == "bus-ack"


class TestShortIds:
    def test_prefixes_are_unique_and_at_least_eight_characters(self):
        """Ids sharing 34 characters get 35; lone ids get 8; every prefix names exactly one id."""
        twins = [f"0123abcd-0000-4000-8000-00000000000{i}" for i in range(3)]
        lone = ["545c7ff2-337c-5b06-afde-9b28761d7004", "9f0e1d2c-0000-4000-8000-000000000001"]
        shown = short_ids([*twins, *lone, twins[0]])
        assert shown[lone[0]] == "545c7ff2" and shown[lone[1]] == "9f0e1d2c"
        assert all(len(shown[t]) == len(twins[0]) for t in twins)
        for full, prefix in shown.items():
            assert len(prefix) >= MIN_PREFIX
            assert [i for i in shown if i.startswith(prefix)] == [full]

    def test_near_twins_get_one_more_character_than_they_share(self):
        """Two ids equal on their first 10 characters ▶ 11-character prefixes."""
        shown = short_ids(["abcdef0123x", "abcdef0123y", "ffffffff00"])
        assert shown == {"abcdef0123x": "abcdef0123x", "abcdef0123y": "abcdef0123y", "ffffffff00": "ffffffff"}
        shown = short_ids(["abcdef0123xa-1", "abcdef0123ya-2"])
        assert shown == {"abcdef0123xa-1": "abcdef0123x", "abcdef0123ya-2": "abcdef0123y"}


class TestResolve:
    IDS = ("0123abcd-1111-4000-8000-000000000001", "0123abcd-2222-4000-8000-000000000002", "545c7ff2-aaaa")

    def test_a_unique_prefix_or_a_whole_id_names_one_event(self):
        """8+ characters naming one id resolve to it; whole ids resolve whatever their length; case is ignored."""
        got = resolve_ids(["545C7FF2", "0123abcd-2", "short-id"], [*self.IDS, "short-id"])
        assert got.event_ids == {self.IDS[2], self.IDS[1], "short-id"}
        assert got.unmatched == ()

    def test_an_ambiguous_prefix_is_refused_naming_the_candidates(self):
        """'0123abcd' matches two ▶ SelectorError listing both with the prefix that tells them apart."""
        with pytest.raises(SelectorError, match="ambiguous") as info:
            resolve_ids(["0123abcd"], self.IDS)
        assert "0123abcd-1" in str(info.value) and "0123abcd-2" in str(info.value)

    def test_too_short_is_refused_and_unknown_is_reported(self):
        """7 characters ▶ refused; a long prefix matching nothing ▶ returned as unmatched."""
        with pytest.raises(SelectorError, match="too short"):
            resolve_ids(["545c7ff"], self.IDS)
        assert resolve_ids(["deadbeef"], self.IDS).unmatched == ("deadbeef",)


class TestReason:
    HTTP_404 = (
        'HTTP 404: {"timestamp":"2026-11-26T09:30:00.000+07:00","status":404,"error":"Not Found",'
        '"message":"dossier 000.00.16.H16-261126-X00000 not found","path":"/pa/dossier/000.00.16.H16-261126-X00000'
    )

    def test_a_quoted_json_reply_becomes_its_message(self):
        """The raw body (cut mid-JSON by the 200-character cap) gives way to the reply's own message."""
        assert reason(self.HTTP_404 + ELLIPSIS) == "HTTP 404: dossier 000.00.16.H16-261126-X00000 not found"
        assert reason('HTTP 503 (not applied): {"detail": "maintenance"}') == "HTTP 503 (not applied): maintenance"
        assert reason("HTTP 500: {}") == "HTTP 500"

    def test_the_first_clause_only_and_cut_at_a_word_boundary(self):
        """'; ' ends a clause; the cut ends on a whole word followed by an ellipsis."""
        text = "payload.applicant.id_no: Value error, a CCCD has 12 digits, got 5; payload.fees.0: not an integer"
        assert reason(text, width=80) == "payload.applicant.id_no: Value error, a CCCD has 12 digits, got 5"
        short = reason(text, width=30)
        assert short == "payload.applicant.id_no…"  # the next word would not fit; the colon goes
        assert len(short) <= 30

    def test_cut_never_splits_a_word_that_fits(self):
        """Every cut ends with a whole word of the original text."""
        text = "the portal refused the record because the agency code is unknown to it"
        for width in range(8, len(text)):
            out = cut(text, width)
            assert len(out) <= width and out.endswith(ELLIPSIS)
            assert text.startswith(out[:-1]) and text[len(out) - 1] == " ", (width, out)
        assert cut("averyveryverylongword", 10) == "averyvery…"


class TestTerminalSafety:
    def test_control_characters_from_a_message_never_reach_the_terminal(self):
        """An ESC sequence or a bidi override in a letter's fields is shown escaped, in both layouts."""
        hostile = "\x1b]0;owned\x07\x1b[2J\u202e"
        d = DeadLetter(
            queue="dlq.bus-ack",
            route="bus-ack",
            event_id="545c7ff2-337c-5b06-afde-9b28761d7004",
            event_type="dossier." + hostile,
            dossier_code=hostile,
            error_kind="invalid" + hostile,
            error="bad " + hostile,
            attempts=1,
            failed_at=None,
            exchange="igate.events",
            routing_key="x",
            size=2,
            headers={},
            body=b"{}",
        )
        for width in (80, 200):
            out = io.StringIO()
            render_list([d], Console(file=out, width=width, force_terminal=False))
            text = out.getvalue()
            assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, text
            assert "\\x1b" in text  # shown, escaped
        assert printable("Nguyễn Thị Hương") == "Nguyễn Thị Hương"

    def test_json_output_escapes_what_json_dumps_leaves_raw(self):
        """DEL, C1 controls, bidi overrides and tag characters become JSON escapes; the JSON decodes unchanged."""
        value = {"error": "x\u202ey\x7f\x9b\U000e0001 Nguyễn", "n": [1]}
        text = terminal_json(value)
        assert json.loads(text) == value
        assert all(ch.isprintable() or ch == "\n" for ch in text)
        assert "Nguyễn" in text
