"""Remote names, paths and keys: every hostile kind refused with its own reason; good names kept, in NFC.

Why: a name travels from an event to a server. One that climbs (``../x``), carries a separator, a NUL or a
newline, hides text (U+202E) or means something else on a Windows server must be refused before any
connection, naming the field.
"""

from __future__ import annotations

import unicodedata

import pytest
from pydantic import ValidationError

from connectors._sftp import check_key, temp_name
from schemas.errors import MappingError
from schemas.sftp import MAX_NAME_BYTES, FileReady, PutFileRequest, check_name, check_relative_path

HOSTILE_NAMES = {
    "../x": "path separator '/'",
    "..": "climbs the directory tree",
    ".": "climbs the directory tree",
    "": "must not be empty",
    "a/b": "path separator '/'",
    "a\\b": "path separator",
    "x\x00y": "control character: U\\+0000",
    "x\ny": "control character: U\\+000A",
    "x\ry": "control character: U\\+000D",
    "\tx": "control character: U\\+0009",
    "x\x7f": "control character: U\\+007F",
    "x\x85": "control character: U\\+0085",
    "invoice\u202efdp.exe": "format character.*U\\+202E",
    "a\u200bb": "format character.*U\\+200B",
    "a\u2028b": "line separator: U\\+2028",
    "a\u00a0b": "space character U\\+00A0",
    "x\ue000": "private-use character",
    "x\U000e0041": "format character",  # a tag character
    "\U0010ffff": "unassigned character",
    ".hidden": "must not start with a dot",
    ".x.part": "must not start with a dot",
    " x": "start or end with a space",
    "x ": "start or end with a space",
    "x.": "must not end with a dot",
    "CON": "reserved device name",
    "nul.txt": "reserved device name",
    "Com1.pdf": "reserved device name",
    "a:b": "':'",
    "a*b": "'\\*'",
    "a?b": "'\\?'",
    'a"b': "'\"'",
    "a<b": "'<'",
    "a|b": "'\\|'",
    "x" * (MAX_NAME_BYTES + 1): f"at most {MAX_NAME_BYTES} bytes",
    "đ" * (MAX_NAME_BYTES // 2 + 1): f"at most {MAX_NAME_BYTES} bytes",  # 2 bytes each in UTF-8
}


@pytest.mark.parametrize(("name", "reason"), list(HOSTILE_NAMES.items()), ids=[repr(n)[:30] for n in HOSTILE_NAMES])
def test_a_hostile_name_is_refused_with_its_reason(name: str, reason: str) -> None:
    """Each kind of bad name ▶ ValueError whose message says which rule (never the raw character)."""
    with pytest.raises(ValueError, match=reason) as info:
        check_name(name)
    assert "\x00" not in str(info.value) and "\n" not in str(info.value)


def test_a_surrogate_is_refused() -> None:
    """A lone surrogate (not encodable in UTF-8) ▶ refused, not a crash when the name is encoded."""
    with pytest.raises(ValueError, match="surrogate"):
        check_name("x\ud800")


@pytest.mark.parametrize(
    "name",
    ["Biên lai 2026-11.pdf", "DOICHIEU_20261128.csv", "hồ sơ (bản sao) #2.PDF", "a.b.c", "CONSOLE.txt", "x" * 200],
)
def test_good_names_are_kept(name: str) -> None:
    """Vietnamese, spaces inside, punctuation, dots inside, 200 ASCII bytes ▶ accepted unchanged (NFC)."""
    assert check_name(name) == name


def test_a_name_in_nfd_becomes_nfc() -> None:
    """'Đắk Lắk.pdf' typed in NFD ▶ the NFC name, so both spellings are one file on the server."""
    nfd = unicodedata.normalize("NFD", "Đắk Lắk.pdf")
    assert nfd != "Đắk Lắk.pdf"
    assert check_name(nfd) == "Đắk Lắk.pdf"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", "relative"),
        ("a//b", "segment 2: .*empty"),
        ("a/", "segment 2: .*empty"),
        ("a/../b", "segment 2: .*climbs"),
        ("../../etc", "segment 1: .*climbs"),
        ("a/b\nc", "segment 2: .*U\\+000A"),
        ("/".join(["d"] * 9), "at most 8 segments"),
        ("", "must not be empty"),
    ],
)
def test_a_hostile_relative_path_is_refused_naming_the_segment(path: str, reason: str) -> None:
    """Paths: absolute, empty segments, a climbing or bad segment, too deep ▶ refused, segment named."""
    with pytest.raises(ValueError, match=reason):
        check_relative_path(path)


def test_relative_paths_are_checked_per_segment_and_may_be_empty_where_allowed() -> None:
    """'2026/11/x' is kept; '' is the base directory only where allowed."""
    assert check_relative_path("2026/11/x") == "2026/11/x"
    assert check_relative_path("", allow_empty=True) == ""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("remote_name", "../x"),
        ("remote_name", "a\x00b"),
        ("remote_name", "a\nb"),
        ("remote_dir", "../up"),
        ("source", "/etc/passwd"),
    ],
)
def test_the_request_models_name_the_field(field: str, value: str) -> None:
    """A bad name in a request or a file.ready payload ▶ a validation error located at that field."""
    good = {"source": "out/a.csv", "remote_dir": "in", "remote_name": "a.csv"}
    for model in (PutFileRequest, FileReady):
        data = {**good, field: value, **({"target": "finance"} if model is FileReady else {})}
        with pytest.raises(ValidationError) as info:
            model.model_validate(data)
        assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("key", ["", ".x", "../k", "a/b", "k\x00", "k\n", "k" * 129, "ключ"])
def test_an_unsafe_idempotency_key_is_a_mapping_error(key: str) -> None:
    """The key names a ledger file on the server: anything but [A-Za-z0-9._-], 1-128 chars ▶ refused."""
    with pytest.raises(MappingError) as info:
        check_key(key)
    assert info.value.field == "idempotency_key"


def test_the_temporary_name_is_hidden_fits_the_file_system_and_depends_on_the_key() -> None:
    """'.<name>.<16 hex>.part': a dot name, under 255 bytes for the longest name, one per key."""
    longest = "đ" * (MAX_NAME_BYTES // 2)
    name = temp_name(longest, "0b7e2f9a-1c4d-4e8b-a5f6-7d8c9e0a1b2c")
    assert name.startswith(f".{longest}.") and name.endswith(".part")
    assert len(name.encode()) <= 255
    assert temp_name("a", "k1") != temp_name("a", "k2")
