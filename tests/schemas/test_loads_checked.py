"""The one-pass decoder (schemas/envelope.py ``loads_checked``) against what it replaced: decode with
duplicate keys refused, then put every key and string in NFC, then ``check_text`` over the whole value.

Its ``clean`` says ``check_text`` accepts the value even with every field single-line; the worker then skips
``check_text`` (issue 15), so a clean verdict on a value ``check_text`` refuses would let a control or bidi
character through. Hypothesis draws JSON values with such characters, NFD text, escapes and nesting.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.envelope import loads_checked, loads_strict
from schemas.errors import InvalidEvent
from schemas.strict import check_text

# text with what the checks care about: controls, tab and line breaks, bidi marks, separators, a BOM,
# decomposed Vietnamese (NFD), plain letters
_CHARS = st.sampled_from(
    [
        *("a", "Z", " ", "\x00", "\x1f", "\x7f", "\x85", "\t", "\n", "\r", "\u200e", "\u202e", "\u2028", "\u2029"),
        *("\ufeff", "D\u0323", "e\u0302\u0301", "\u1ea1", "\u0110", "\u0301", "\u00e0", '"', "\\", "/"),
    ]
)


def _json_of(chars: st.SearchStrategy[str]) -> tuple[st.SearchStrategy[str], st.SearchStrategy[object]]:
    """Short texts of ``chars``, and small JSON values with such texts as keys and strings."""
    text = st.lists(chars, max_size=6).map("".join)
    value = st.recursive(
        st.none() | st.booleans() | st.integers(-(10**6), 10**6) | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )
    return text, value


_TEXT, _JSON = _json_of(_CHARS)

# text that json.dumps(ensure_ascii=False) writes with no escape at all
_RAW_CHARS = st.sampled_from(
    [
        *("a", "Z", " ", "/", "\x7f", "\x85", "\x9f", "\u200e", "\u202e", "\u2028", "\u2029", "\ufeff"),
        *("D\u0323", "e\u0302\u0301", "\u1ea1", "\u0110", "\u0301", "\u00e0"),
    ]
)
_RAW_TEXT, _RAW_JSON = _json_of(_RAW_CHARS)


def _nfc(value: Any) -> Any:
    """What the old decoder did after json.loads: every key and string in NFC."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [_nfc(v) for v in value]
    if isinstance(value, dict):
        return {_nfc(k): _nfc(v) for k, v in value.items()}
    return value


def _check_text_accepts(value: Any) -> bool:
    try:
        check_text(value, multiline_keys=frozenset())
    except InvalidEvent:
        return False
    return True


class TestLoadsChecked:
    """The same value as decode-then-NFC; clean exactly when check_text accepts it with no multi-line field."""

    @settings(max_examples=400, deadline=None)
    @given(value=st.dictionaries(_TEXT, _JSON, max_size=5), ascii_only=st.booleans())
    def test_same_value_and_clean_exactly_when_check_text_accepts(
        self, value: dict[str, Any], ascii_only: bool
    ) -> None:
        """Escaped or raw, any drawn object decodes to the old value; clean ⇔ check_text accepts it."""
        body = json.dumps(value, ensure_ascii=ascii_only).encode()
        data, clean = loads_checked(body)
        assert data == _nfc(json.loads(body))
        assert clean == _check_text_accepts(data)

    @settings(max_examples=400, deadline=None)
    @given(value=st.dictionaries(_RAW_TEXT, _RAW_JSON, max_size=5))
    def test_a_body_without_escapes_is_judged_the_same(self, value: dict[str, Any]) -> None:
        """Written with no backslash, ASCII text is not searched (only DEL could be refused there): the same
        verdict as check_text, DEL, C1 controls, bidi marks and separators raw in keys and strings included."""
        body = json.dumps(value, ensure_ascii=False).encode()
        assert b"\\" not in body
        data, clean = loads_checked(body)
        assert data == _nfc(json.loads(body))
        assert clean == _check_text_accepts(data)

    def test_del_in_ascii_text_is_not_clean(self) -> None:
        """DEL is the one refused ASCII character the decoder lets through raw: in a key or a value, not clean."""
        assert loads_checked(b'{"a": "x\x7fy"}') == ({"a": "x\x7fy"}, False)
        assert loads_checked(b'{"a\x7f": 1}') == ({"a\x7f": 1}, False)
        assert loads_checked(b'{"a": ["x", "\x7f"]}') == ({"a": ["x", "\x7f"]}, False)
        assert loads_checked(b'{"a": ["x", "y"], "b": "z"}') == ({"a": ["x", "y"], "b": "z"}, True)

    @given(value=_JSON)
    def test_a_value_that_is_not_an_object_is_never_clean(self, value: Any) -> None:
        """Arrays, strings and numbers at the top come back in NFC, not called clean (the worker refuses them)."""
        body = json.dumps([value]).encode()
        data, clean = loads_checked(body)
        assert data == _nfc(json.loads(body))
        assert clean is False

    def test_duplicate_keys_are_refused_at_any_depth(self) -> None:
        """A key twice in one object, nested or not, is refused; equal keys in different objects are fine."""
        with pytest.raises(InvalidEvent, match="duplicate key 'a'"):
            loads_checked(b'{"x": [{"a": 1, "a": 2}]}')
        assert loads_strict(b'{"a": {"a": 1}, "b": [{"a": 2}]}') == {"a": {"a": 1}, "b": [{"a": 2}]}

    def test_nfd_keys_become_nfc_and_the_later_equal_key_wins(self) -> None:
        """Two raw keys that differ only by normalisation are not duplicates; the later one's value is kept."""
        data, clean = loads_checked('{"Đe\u0302": 1, "Đ\u00ea": 2}'.encode())
        assert data == {"Đ\u00ea": 2}
        assert clean is True

    @pytest.mark.parametrize(
        "body",
        [b'{"a":' * 900 + b"1" + b"}" * 900, b'{"X": ' + b"[" * 600 + b"]" * 600 + b"}"],
        ids=["objects-900-deep", "arrays-600-deep"],
    )
    def test_too_deep_is_refused_as_before(self, body: bytes) -> None:
        """The C decoder nests deeper than Python walks back: such a value is still refused, not let through."""
        with pytest.raises(InvalidEvent, match="nested too deeply"):
            loads_checked(body)


class TestPlainBodies:
    """A body with no escape, in NFC and with no refused character is judged as a whole (issue 15)."""

    def test_the_whole_text_pattern_is_the_single_line_one_less_json_whitespace(self) -> None:
        """Every code point: refused over a whole body ⇔ refused in a single-line field, but for tab, LF, CR
        (JSON's whitespace between tokens; raw inside a string the decoder refuses them itself)."""
        from schemas.strict import SINGLE_LINE_NEVER, SINGLE_LINE_NEVER_IN_RAW_JSON

        differ = [
            cp
            for cp in range(0x110000)
            if bool(SINGLE_LINE_NEVER.match(chr(cp))) != bool(SINGLE_LINE_NEVER_IN_RAW_JSON.match(chr(cp)))
        ]
        assert differ == [0x09, 0x0A, 0x0D]
        for raw in (b'{"a": "x\ty"}', b'{"a": "x\ny"}', b'{"a": "x\ry"}'):
            with pytest.raises(InvalidEvent, match="malformed JSON"):
                loads_checked(raw)

    def test_the_shipped_example_takes_the_whole_text_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The example event (Vietnamese, pretty-printed) decodes without the per-object hook: that hook is
        stubbed to fail, and the value is still the full walk's, called clean."""
        from pathlib import Path

        from schemas import envelope

        body = (Path(__file__).parents[2] / "examples" / "events" / "dossier.received.json").read_bytes()
        monkeypatch.setattr(envelope, "_StrictObjects", None)
        data, clean = loads_checked(body)
        assert data == _nfc(json.loads(body)) and clean is True
        assert _check_text_accepts(data)

    @pytest.mark.parametrize(
        ("body", "clean"),
        [
            ('{"a": "D\u0323"}', True),  # NFD: the walk puts it in NFC
            ('{"a": "x\u202ey"}', False),  # a bidi override
            ('{"a": "x\u0085y"}', False),  # a C1 control
            ('{"a\u2028": 1}', False),  # a separator in a key
            ('{"a": "\\u00e9"}', True),  # an escape: the walk
        ],
    )
    def test_other_bodies_still_take_the_walk(self, body: str, clean: bool) -> None:
        """NFD text, a refused character or an escape anywhere ▶ the per-object walk, with its verdict."""
        data, got = loads_checked(body.encode())
        assert data == _nfc(json.loads(body))
        assert got is clean

    def test_duplicate_keys_are_refused_on_the_whole_text_path_too(self) -> None:
        """A plain body with a key twice, nested or not ▶ refused, naming the key."""
        for body in (b'{"a": 1, "a": 2}', b'{"x": [{"b": "\xc3\xa9", "b": 2}]}'):
            with pytest.raises(InvalidEvent, match="duplicate key"):
                loads_checked(body)


class TestEscapedAsciiText:
    """With escapes in the body, ASCII text is searched only when an escape could decode to a refused one."""

    @pytest.mark.parametrize("code", range(0x80))
    def test_every_ascii_character_escaped_is_judged_as_check_text_does(self, code: int) -> None:
        """Each ASCII character as ``\\u00XX`` (upper and lower hex), beside an escaped Vietnamese letter,
        in a value and in a key ▶ clean exactly when check_text accepts the decoded value."""
        for escape in (f"\\u{code:04x}", f"\\u{code:04X}"):
            for body in (f'{{"a": "x{escape}y", "b": "\\u1ea1"}}', f'{{"k{escape}": "\\u1ea1"}}'):
                data, clean = loads_checked(body.encode())
                assert data == _nfc(json.loads(body))
                assert clean == _check_text_accepts(data), body

    @pytest.mark.parametrize("escape", ["\\b", "\\f", "\\n", "\\r", "\\t", '\\"', "\\\\", "\\/"])
    def test_short_escapes_are_judged_as_check_text_does(self, escape: str) -> None:
        """``\\n`` and the other short escapes, in a value and in a key ▶ the same verdict as check_text."""
        for body in (f'{{"a": "x{escape}y", "b": "\\u1ea1"}}', f'{{"k{escape}": 1}}'):
            data, clean = loads_checked(body.encode())
            assert clean == _check_text_accepts(data), body
