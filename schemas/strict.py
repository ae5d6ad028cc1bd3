r"""Strict scalars and safe text: what every field of an event must be before a model even looks at it.

Where it sits: inside the validate step, at both doors (the HTTP ingress and the worker's consumer), through
:func:`schemas.envelope.parse_event`. pydantic's lax mode is generous where a bus must not be: ``true`` is
``1``, ``2.0`` is ``2``, a number is a Unix time, ``{...}`` and ``urn:uuid:`` are UUIDs. The validators here
take JSON as the contract writes it and nothing else:

- :data:`ExactInt` (for ``Literal`` codes, which pydantic coerces even in strict mode): a JSON integer, never
  a boolean, a float or a string;
- :data:`Instant`: RFC 3339 text with a ``T`` and an offset (``Z`` or ``±HH:MM``), year 2000-2100;
  :data:`PastInstant` also refuses a time after the moment the bus received the event plus the allowed
  skew, when :func:`schemas.envelope.parse_event` says when that was (validation context
  :data:`NOT_AFTER`);
- :data:`IsoDate`: ``YYYY-MM-DD`` text only; :func:`uuid_text`: the canonical 8-4-4-4-12 form, either case.

**Text.** :func:`check_text` walks the whole event (keys and values, at any depth) and refuses, naming the
field's path and the character:

- control characters (C0, DEL, C1), except tab, line feed and carriage return in fields marked
  :func:`multiline` (free text a person typed over several lines: reasons, notes, comments, the summary);
- line and paragraph separators (U+2028, U+2029) outside multi-line fields;
- bidirectional formatting characters: the embeddings and overrides U+202A-U+202E, the isolates
  U+2066-U+2069 and the implicit marks U+200E, U+200F and U+061C. Vietnamese is written left to right and none
  of these belong in an administrative record, while each can make a name, a code or a log line read
  differently from what it holds ("Trojan Source"), so all of them are refused, the marks included;
- a byte-order mark (U+FEFF) inside text, and lone surrogates (``"\ud800"`` parses as JSON but cannot be
  encoded as UTF-8, so it would break every later step).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, ValidationInfo
from pydantic_core import PydanticUndefined

from schemas.errors import InvalidEvent

if TYPE_CHECKING:
    from collections.abc import Iterable

#: dates outside these years are typing errors, not dossiers
MIN_YEAR, MAX_YEAR = 2000, 2100
#: validation-context key: the latest instant a :data:`PastInstant` may name (receipt + skew)
NOT_AFTER: Final = "not_after"
#: key set to True in a field's ``json_schema_extra`` (and so in the JSON schema) for multi-line text
MULTILINE_KEY: Final = "multiline"

_RFC3339: Final = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_ISO_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_UUID: Final = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_BIDI: Final = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
#: refused in every string
_NEVER: Final = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI}\ufeff\ud800-\udfff]")
#: refused outside multi-line fields
_LINE: Final = re.compile("[\t\n\r\u2028\u2029]")
#: what :func:`check_text` refuses in a key or a single-line field: ``_NEVER`` and ``_LINE`` in one search
SINGLE_LINE_NEVER: Final = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\ufeff\ud800-\udfff\u2028\u2029]")
#: :data:`SINGLE_LINE_NEVER` less JSON's whitespace (tab, LF, CR): searched over a whole JSON text without
#: escapes, where those three stand only between tokens (the decoder refuses them raw inside a string)
SINGLE_LINE_NEVER_IN_RAW_JSON: Final = re.compile(
    f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI}\ufeff\ud800-\udfff\u2028\u2029]"
)
#: allowed only in multi-line fields: tab, LF, CR; the separators U+2028/9 never
_MULTILINE_NEVER: Final = re.compile("[\u2028\u2029]")
_SIMPLE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def exact_int(value: Any) -> Any:
    """A JSON integer stays; a boolean, a float (even ``2.0``) or a string is refused."""
    if type(value) is not int:
        raise ValueError(f"must be a JSON integer, not {_json_type(value)}")
    return value


def rfc3339_text(value: Any) -> Any:
    """RFC 3339 text (``2026-11-26T08:00:00+07:00``) stays; a number, a space for ``T``, no offset are refused."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 date-time with an offset, e.g. 2026-11-26T08:00:00+07:00"
            + ("" if isinstance(value, str) else f", not {_json_type(value)}")
        )
    return value


def iso_date_text(value: Any) -> Any:
    """``YYYY-MM-DD`` text stays; a number or a date-time is refused."""
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


def uuid_text(value: Any) -> Any:
    """The canonical UUID form (either case) stays; braces, ``urn:uuid:``, 32 bare digits, bytes are refused."""
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise ValueError("must be a UUID as 8-4-4-4-12 hexadecimal digits")
    return value


def _plausible_year(value: datetime) -> datetime:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"year {value.year} is outside {MIN_YEAR}-{MAX_YEAR}")
    return value


def _happened(value: datetime, info: ValidationInfo) -> datetime:
    """A time that has happened cannot be later than when the bus received the event (plus the skew)."""
    context = info.context
    not_after = context.get(NOT_AFTER) if isinstance(context, dict) else None
    if isinstance(not_after, datetime) and value > not_after:
        raise ValueError(f"is in the future: {value.isoformat()} is after {not_after.isoformat()}")
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)


#: an integer code given as a JSON integer (for ``Literal[1, 2, 3]`` and friends)
ExactInt = BeforeValidator(exact_int)
#: an aware date-time given as RFC 3339 text, year 2000-2100
Instant = Annotated[AwareDatetime, BeforeValidator(rfc3339_text), AfterValidator(_plausible_year)]
#: an :data:`Instant` that has happened: not after the event's receipt plus the allowed skew
PastInstant = Annotated[Instant, AfterValidator(_happened)]
#: a calendar date given as ``YYYY-MM-DD``
IsoDate = Annotated[date, BeforeValidator(iso_date_text)]


def not_after(received_at: datetime, future_skew_s: float) -> datetime:
    """The latest instant an event received at ``received_at`` may name."""
    return received_at + timedelta(seconds=future_skew_s)


# -- text -----------------------------------------------------------------------------------------------
def multiline(default: Any = PydanticUndefined, **field_kwargs: Any) -> Any:
    """A pydantic ``Field`` for free text that may span lines (tab, LF and CR allowed); use it as ``Field``.

    Args:
        default: the field's default; required when not given.
        **field_kwargs: any other ``Field`` argument; a dict ``json_schema_extra`` is kept.
    """
    extra = field_kwargs.pop("json_schema_extra", None)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError("multiline() takes json_schema_extra as a dict only")
    return Field(default, **field_kwargs, json_schema_extra={**(extra or {}), MULTILINE_KEY: True})


def char_name(ch: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``: how a refused character is named in an error."""
    return f"U+{ord(ch):04X}" + (f" {unicodedata.name(ch)}" if unicodedata.name(ch, "") else "")


def field_path(parts: Iterable[str | int]) -> str:
    """``payload.fees[0].name``; a key that is not a plain name is quoted with its escapes."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part[:64]!a}]"
    return out


def single_line_text(text: str) -> bool:
    """Whether :func:`check_text` accepts ``text`` wherever it sits: as a key, or in a single-line field.

    The quick test of a one-pass decoder (``schemas.envelope.loads_checked``); a text it refuses is judged
    by :func:`check_text`, which knows the field and names it.
    """
    return SINGLE_LINE_NEVER.search(text) is None


def check_text(value: Any, *, multiline_keys: frozenset[str], path: tuple[str | int, ...] = ()) -> None:
    """Refuse a string anywhere in ``value`` (a parsed JSON value) that holds a character this module forbids.

    Args:
        value: the event as parsed (dicts, lists, strings, numbers).
        multiline_keys: names of the fields that may hold tab, LF and CR (from :func:`multiline` markers).
        path: where ``value`` sits (for the error).

    Raises:
        InvalidEvent: naming the field's path and the character, e.g. ``payload.applicant.name: U+0000 ...``.
    """
    if isinstance(value, str):
        _check_string(value, path, multiline=bool(path) and path[-1] in multiline_keys)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_string(key, (*path, key), multiline=False, what="key")
            check_text(item, multiline_keys=multiline_keys, path=(*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_text(item, multiline_keys=multiline_keys, path=(*path, i))


def _check_string(text: str, path: tuple[str | int, ...], *, multiline: bool, what: str = "text") -> None:
    bad = _NEVER.search(text) or (_MULTILINE_NEVER if multiline else _LINE).search(text)
    if bad is None:
        return
    ch = bad.group()
    where = field_path(path) or "event"
    if ch in "\u2028\u2029":
        reason = "a Unicode line or paragraph separator (only LF, CR and tab break lines, in multi-line fields)"
    elif ch in "\t\n\r":
        reason = "a line break or tab, and this field is a single line"
    elif "\u061c" <= ch <= "\u2069" or ch in "\u200e\u200f":
        reason = "a bidirectional formatting character (it can make the text read as something else)"
    elif "\ud800" <= ch <= "\udfff":
        reason = "a lone surrogate (not a character; it cannot be encoded as UTF-8)"
    elif ch == "\ufeff":
        reason = "a byte-order mark inside the text"
    else:
        reason = "a control character"
    raise InvalidEvent(f"the {what} holds {char_name(ch)}: {reason} (at offset {bad.start()})", field=where)
