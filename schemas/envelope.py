"""The bus envelope and the one function that turns raw bytes into a validated event, at both doors.

Every message on the bus, from iGate or from a route's result, is an envelope around a payload model chosen by
``event_type``. :func:`parse_event` is the one rule for both doors: the HTTP ingress calls it on a posted
body, the worker on every delivery it consumes (``routes/pipeline.py``), so an event one door refuses the
other refuses too. Parsing is strict because a message a route received that does not parse is dead-lettered
at once with the reason, never retried:

1. content type ``application/json`` (charset absent or UTF-8; a missing type is refused, as HTTP's 415);
2. size, UTF-8, JSON (no duplicate keys, no NaN, no BOM), text normalised to NFC;
3. safe text everywhere (:func:`schemas.strict.check_text`: no control characters outside multi-line
   fields, no bidirectional overrides, isolates or marks, no lone surrogates), naming the field;
4. the envelope with strict types (:class:`Envelope`: ``true`` is not ``1``, ``2.0`` not ``2``, ``"2"`` not
   ``2``, a UUID in its canonical form only, a time as RFC 3339 text with an offset);
5. the edge's rules (:class:`EventRules`, from settings): the dossier code's format, and ``occurred_at``
   not after the moment the bus received the event plus a small skew, nor before 2000 (nor, when
   configured, older than a maximum age at receipt);
6. the transport's word against the envelope's: the AMQP ``message_id`` is the same UUID as ``event_id``
   (compared as UUIDs: either case), the AMQP ``type`` and routing key, when given, name ``event_type``;
7. the payload model of ``event_type``, with the same receipt time, so the times a payload says have
   happened (``dates.submitted``, ``paid_at``...) are not in the future either.

**The time of receipt.** The bounds use when the bus *first* received the event, never the producer's
clock or the AMQP ``timestamp`` a producer sets: the ingress passes the time of the request; the worker the
time of the first delivery to the route, which it carries in its own ``x-received-at`` header on retry
copies and dead letters. So a message that waits in the retry queues for hours, or is replayed from a DLQ
days later, is judged as it was when it arrived and does not become invalid by getting old.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
)

from schemas.errors import InvalidEvent
from schemas.pii import marked_field_names
from schemas.strict import (
    MULTILINE_KEY,
    NOT_AFTER,
    SINGLE_LINE_NEVER,
    SINGLE_LINE_NEVER_IN_RAW_JSON,
    ExactInt,
    Instant,
    check_text,
    not_after,
    uuid_text,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

#: 1 MiB: far above any real dossier event (attachments travel as URLs), far below the broker's frame cap.
DEFAULT_MAX_BYTES = 1_048_576
JSON_MEDIA_TYPE: Final = "application/json"
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
SCHEMA_VERSION = 1
#: how far in the future (against its receipt) an event's time may be: clocks drift, a few minutes is plenty
DEFAULT_FUTURE_SKEW_S: Final = 300.0
#: a dossier code as docs/domain.md section 0 gives it: ``{MaDinhDanh of the receiving unit}-{yyMMdd}-{NNNN}``,
#: e.g. ``000.00.16.H16-190812-0001``; the unit's id is dot-separated groups (QĐ 20/2020: ``000.00.16.H16``,
#: ``H56.14``), the date a real month and day, the counter 4 digits (5 when a unit passes 9,999 in a day,
#: and in TH's ``{unit}-{yyMMdd}-{5 random digits}`` form). A province whose codes differ configures its own
#: (``IGATE_BUS_DOSSIER_CODE_PATTERN``).
DEFAULT_DOSSIER_CODE_PATTERN: Final = (
    r"[A-Z0-9]{1,3}(?:\.[A-Z0-9]{1,3}){1,4}-[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])-[0-9]{4,5}"
)
#: what any configured pattern may let through at most: a dossier code goes into URLs, file names and
#: records, so whatever a province configures, it is letters, digits, dots, dashes and underscores, starting
#: and ending with a letter or digit, never two dots in a row
DOSSIER_CODE_SAFE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,58}[A-Za-z0-9])?")
#: a code in our own ids: letters, digits, dots, dashes, underscores (agency, nation code)
_CODE: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$"
#: an opaque id a producer chose (correlation, trace): printable ASCII without spaces or quotes
_OPAQUE_ID: Final = r"^[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,99}$"


#: a UUID as 8-4-4-4-12 hexadecimal text (either case); it compares, keys and prints in lower case
EventId = Annotated[UUID, BeforeValidator(uuid_text)]


class Envelope(BaseModel):
    """What every event carries around its payload; the fields docs/design.md and docs/domain.md section 7 name.

    Strict: no field takes a value of another JSON type (``true`` for 1, ``2.0`` for 2, ``"2"`` for 2, a
    number for a time), and every string has a pattern or a bound.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId = Field(description="Idempotency key; also the AMQP message_id.")
    event_type: StrictStr = Field(pattern=EVENT_TYPE_PATTERN, max_length=100, examples=["dossier.received"])
    occurred_at: Instant = Field(
        description="RFC 3339 with offset (Asia/Ho_Chi_Minh, +07:00); not after its receipt plus a few minutes."
    )
    source: StrictStr = Field(pattern=r"^[a-z][a-z0-9._/-]{0,49}$", examples=["igate"])
    dossier_code: StrictStr | None = Field(
        default=None, max_length=60, examples=["000.00.16.H16-190812-0001"], description="docs/domain.md's format."
    )
    correlation_id: StrictStr | None = Field(default=None, pattern=_OPAQUE_ID)
    schema_version: StrictInt = Field(default=SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    nation_code: StrictStr | None = Field(default=None, pattern=_CODE)
    igate_id: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{24}$")
    agency_code: StrictStr | None = Field(default=None, pattern=_CODE, examples=["000.00.16.H16"])
    procedure_code: StrictStr | None = Field(
        default=None, pattern=r"^[12]\.\d{6}(\.000\.00\.00)?(\.H\d{2})?$", examples=["1.003560.000.00.00.H16"]
    )
    channel: Annotated[Literal[1, 2, 3], ExactInt] | None = Field(
        default=None, description="1 in person, 2 online, 3 postal"
    )
    service_level: Annotated[Literal[2, 3, 4], ExactInt] | None = None
    status: StrictInt | None = Field(default=None, ge=1, le=10, description="National 1-10 dossier status")
    trace_id: StrictStr | None = Field(default=None, pattern=_OPAQUE_ID)
    payload: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventRules:
    """The edge's rules beyond the models, the same at both doors (built from settings: ``Settings.event_rules``).

    Attributes:
        future_skew_s: how far after its receipt an event's time (``occurred_at``, and the payload's times of
            things that happened) may be.
        max_age_s: when set, how much older than its receipt ``occurred_at`` may be; None (the default)
            bounds only by the year 2000, because iGate may publish events that waited in its own outbox.
        dossier_code: the pattern a ``dossier_code`` must match whole.
    """

    future_skew_s: float = DEFAULT_FUTURE_SKEW_S
    max_age_s: float | None = None
    dossier_code: re.Pattern[str] = field(default_factory=lambda: re.compile(DEFAULT_DOSSIER_CODE_PATTERN))

    @classmethod
    def build(
        cls, *, future_skew_s: float = DEFAULT_FUTURE_SKEW_S, max_age_s: float | None = None, dossier_code: str
    ) -> EventRules:
        """Rules from settings' values; ``ValueError`` names what is wrong (a pattern that does not compile)."""
        if not 0 <= future_skew_s <= 86_400:
            raise ValueError(f"the future skew must be 0 s to 1 day, got {future_skew_s:g} s")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError("the maximum age must be positive")
        try:
            pattern = re.compile(dossier_code)
        except re.error as exc:
            raise ValueError(f"the dossier code pattern does not compile: {exc}") from None
        return cls(future_skew_s=future_skew_s, max_age_s=max_age_s, dossier_code=pattern)

    def check_dossier_code(self, code: str) -> None:
        """Refuse a dossier code that is not of the configured format, or not of the safe characters."""
        if not self.dossier_code.fullmatch(code):
            raise InvalidEvent(
                f"{code[:60]!r} is not a dossier code of the form {self.dossier_code.pattern}", field="dossier_code"
            )
        if not DOSSIER_CODE_SAFE.fullmatch(code) or ".." in code:
            raise InvalidEvent(
                f"{code[:60]!r} holds characters a dossier code may not (letters, digits, '.', '-', '_' only, no '..')",
                field="dossier_code",
            )

    def check_time(self, occurred_at: datetime, received_at: datetime) -> None:
        """Refuse an ``occurred_at`` after ``received_at`` plus the skew, or older than the maximum age."""
        latest = not_after(received_at, self.future_skew_s)
        if occurred_at > latest:
            raise InvalidEvent(
                f"{occurred_at.isoformat()} is in the future: more than {self.future_skew_s:g} s after the bus "
                f"received the event ({received_at.isoformat(timespec='seconds')})",
                field="occurred_at",
            )
        if self.max_age_s is not None and occurred_at < received_at - timedelta(seconds=self.max_age_s):
            raise InvalidEvent(
                f"{occurred_at.isoformat()} is more than {self.max_age_s:g} s before the bus received the event "
                f"({received_at.isoformat(timespec='seconds')})",
                field="occurred_at",
            )


@dataclass(frozen=True, slots=True)
class Event:
    """A parsed event: the envelope and its payload validated against the model for its type."""

    envelope: Envelope
    payload: BaseModel

    def as_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data, with the payload as validated (what ``when`` conditions see)."""
        data = self.envelope.model_dump(mode="json")
        data["payload"] = self.payload.model_dump(mode="json")
        return data


def _nfc_text(text: str) -> str:
    """``text`` in NFC (ASCII, and text already in NFC, come back as they are, without a copy)."""
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


#: brackets in a body above which :func:`loads_checked` walks the value again (an event holds a few dozen)
_WALK_BRACKETS: Final = 200
#: a match when :func:`single_line_text` refuses the text (the pattern's own search: no call of ours per string)
_single_line_refused: Final = SINGLE_LINE_NEVER.search
_single_line_refused_raw: Final = SINGLE_LINE_NEVER_IN_RAW_JSON.search


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The decoder's ``object_pairs_hook`` for a body :func:`_plain_body` passed: only duplicate keys to refuse."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidEvent(f"duplicate key {key!r} in JSON object")
            seen.add(key)
    return out


def _plain_body(text: str) -> bool:
    """Whether every key and string of the JSON ``text`` is already NFC and passes :func:`single_line_text`.

    Judged on the whole text at once (three C-speed scans instead of a test per key and string, issue 15):
    without a backslash every key and string is a piece of the text as written; outside them stand only
    JSON's punctuation, literals and whitespace, which :data:`SINGLE_LINE_NEVER_IN_RAW_JSON` leaves out
    (the decoder refuses tab, LF and CR raw inside a string); and a text in NFC has its quoted pieces in
    NFC, as a quote mark composes with nothing on either side, so normalisation never reaches across it.
    """
    return "\\" not in text and not _single_line_refused_raw(text) and unicodedata.is_normalized("NFC", text)


#: an escape that decodes to an ASCII character :func:`single_line_text` refuses (a control, DEL): ``\\b``,
#: ``\\f``, ``\\n``, ``\\r``, ``\\t`` or ``\\u`` 0000-001F/007F (after an escaped backslash it matches too:
#: a needless search then, never a missed one)
_ASCII_REFUSED_ESCAPE: Final = re.compile(r"\\(?:[bfnrt]|u00[01][0-9A-Fa-f]|u007[Ff])")


def _ascii_as_written(text: str) -> bool:
    """Whether no ASCII key or string of the JSON ``text`` can hold a character single_line_text refuses.

    True when no DEL is written raw and no escape decodes to a control or DEL (the decoder refuses the other
    controls raw); any other escape decodes to printable ASCII, or to text that is not ASCII and is searched
    anyway.
    """
    return "\x7f" not in text and ("\\" not in text or not _ASCII_REFUSED_ESCAPE.search(text))


class _StrictObjects:
    """The decoder's ``object_pairs_hook`` of :func:`loads_checked`: each object as it is decoded.

    Refuses a duplicate key (among the raw keys), puts keys and strings (in the
    object and in its arrays) in NFC, and notes whether any of them fails :func:`single_line_text`. The
    decoder builds objects innermost first, so every object is seen once and nothing is walked twice.

    Args:
        ascii_clean: :func:`_ascii_as_written` passed the body: an ASCII key or string cannot hold a refused
            character, so ASCII text is not searched, only the rest (issue 15: a search per key and per
            string was a fifth of an event's decoding).
    """

    __slots__ = ("ascii_clean", "clean")

    def __init__(self, *, ascii_clean: bool = False) -> None:
        #: every key and string so far passed :func:`single_line_text`
        self.clean = True
        self.ascii_clean = ascii_clean

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        refused = _single_line_refused
        clean = self.clean
        search_ascii = not self.ascii_clean
        renamed = False
        for key, value in pairs:
            if key in out:
                raise InvalidEvent(f"duplicate key {key!r} in JSON object")
            if type(value) is str:
                ascii_text = value.isascii()
                if not ascii_text:
                    value = _nfc_text(value)  # noqa: PLW2901 - the NFC form is what is kept
                if clean and (search_ascii or not ascii_text) and refused(value):
                    clean = False
            elif type(value) is list:
                value = self._array(value)  # noqa: PLW2901 - its strings in NFC
            out[key] = value
            ascii_key = key.isascii()
            renamed = renamed or not ascii_key
            if clean and (search_ascii or not ascii_key) and refused(key):
                clean = False
        self.clean = clean and self.clean
        if renamed:  # as nfc(): keys in NFC, a later key that becomes equal to an earlier one wins
            out = {_nfc_text(k): v for k, v in out.items()}
        return out

    def _array(self, items: list[Any]) -> list[Any]:
        """An array's strings (and its arrays') in NFC; its objects were seen when they were decoded."""
        for i, item in enumerate(items):
            if type(item) is str:
                if item.isascii() and self.ascii_clean:
                    continue
                text = _nfc_text(item)
                items[i] = text
                if self.clean and _single_line_refused(text):
                    self.clean = False
            elif type(item) is list:
                items[i] = self._array(item)
        return items


def _reject_constant(name: str) -> Any:
    raise InvalidEvent(f"JSON constant {name} is not allowed")


def nfc(value: Any) -> Any:
    """Normalise every string in a JSON value to NFC, so NFD input compares and stores like NFC input."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [nfc(v) for v in value]
    if isinstance(value, dict):
        return {nfc(k): nfc(v) for k, v in value.items()}
    return value


def loads_strict(body: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Decode JSON bytes strictly: size cap, UTF-8 only, no duplicate keys, no NaN/Infinity, NFC text."""
    return loads_checked(body, max_bytes=max_bytes)[0]


def loads_checked(body: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Any, bool]:
    """:func:`loads_strict`'s value, and whether every key and string in it passed :func:`single_line_text`.

    One pass (issue 15): the decoder's hook refuses duplicate keys, puts text in NFC and tests it for the
    characters :func:`schemas.strict.check_text` refuses, as each object is decoded, instead of walking the
    value again for NFC and again for the check (a third of the worker's time parsing an event). When the
    second value is True, ``check_text`` accepts the value whatever its multi-line fields; when False, it
    has to judge (and name the field). A value that is not an object is put in NFC by :func:`nfc`, and is
    never called clean.
    """
    if len(body) > max_bytes:
        raise InvalidEvent(f"body is {len(body)} bytes, over the limit of {max_bytes}")
    if not body:
        raise InvalidEvent("body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"body is not UTF-8: byte {exc.start} is {body[exc.start : exc.start + 1]!r}") from None
    if text.startswith("\ufeff"):
        raise InvalidEvent("body starts with a byte-order mark")
    plain = _plain_body(text)
    objects = None if plain else _StrictObjects(ascii_clean=_ascii_as_written(text))
    try:
        data = json.loads(text, object_pairs_hook=objects or _unique_keys, parse_constant=_reject_constant)
        if not isinstance(data, dict):
            return nfc(data), False
        if text.count("[") + text.count("{") > _WALK_BRACKETS:
            # enough brackets to nest deep: walked back by nfc() as before, whose recursion refuses a value
            # nested deeper than Python can walk (the C decoder nests deeper), so that limit stays as it was
            data = nfc(data)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # json's C parser nests deeper than Python recursion can walk back
        raise InvalidEvent("JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise InvalidEvent(f"JSON value refused: {exc}") from None
    return data, plain or (objects is not None and objects.clean)


def format_validation_error(exc: ValidationError, *, prefix: str = "") -> str:
    """One line naming each failing field by its dotted path: what goes into ``x-error``."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:10]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{prefix}{loc}: {err['msg']}" if loc else f"{prefix.rstrip('.')}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def is_json_content_type(content_type: str | None) -> bool:
    """Whether a content type is JSON in UTF-8: ``application/json``, with no charset or ``charset=utf-8``.

    The one rule for both doors (the ingress's 415, the worker's dead letter); case and spaces do not matter.
    """
    if content_type is None:
        return False
    media, _, params = content_type.partition(";")
    if media.strip().lower() != JSON_MEDIA_TYPE:
        return False
    charset = params.strip().lower().replace(" ", "")
    return charset in {"", "charset=utf-8"}


@functools.cache
def multiline_keys(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` (at any depth) marked :func:`schemas.strict.multiline`: tab and line breaks allowed."""
    return marked_field_names([model], MULTILINE_KEY)


def parse_event(
    body: bytes,
    *,
    payload_models: Mapping[str, type[BaseModel]],
    content_type: str | None = JSON_MEDIA_TYPE,
    message_id: str | None = None,
    amqp_type: str | None = None,
    routing_key: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    rules: EventRules | None = None,
    received_at: datetime | None = None,
) -> Event:
    """Validate raw bytes into an :class:`Event`, or raise :class:`InvalidEvent` naming what is wrong.

    Args:
        body: the raw message body.
        payload_models: event type to payload model; an unknown type is invalid.
        content_type: the AMQP/HTTP content type; anything but JSON (and None) is refused. A door that has
            already answered for the content type (the ingress's 415) passes :data:`JSON_MEDIA_TYPE`.
        message_id: the AMQP message_id, which must be the same UUID as the envelope's event_id when set.
        amqp_type: the AMQP ``type`` property, which must equal ``event_type`` when set.
        routing_key: the key the message was published with on an event exchange, which must equal
            ``event_type`` when given (the worker passes it for a first delivery only).
        max_bytes: size cap on the body.
        rules: the dossier code's format and the time bounds; the defaults when None.
        received_at: when the bus first received the event (timezone-aware); None checks no time against a
            receipt (a dry run: ``igate-bus map``, adapter tests).
    """
    if not is_json_content_type(content_type):
        shown = "missing" if content_type is None else repr(content_type[:100])
        raise InvalidEvent(f"{shown}: it must be {JSON_MEDIA_TYPE} (UTF-8)", field="content_type")
    rules = rules or _DEFAULT_RULES
    data, clean = loads_checked(body, max_bytes=max_bytes)
    if not isinstance(data, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(data).__name__}")
    event_type = data.get("event_type")
    model = payload_models.get(event_type) if isinstance(event_type, str) else None
    if not clean:  # some text holds a character refused somewhere: check_text judges it, field by field
        check_text(data, multiline_keys=multiline_keys(model) if model is not None else frozenset())
    try:
        envelope = Envelope.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(format_validation_error(exc)) from None
    if model is None:
        raise InvalidEvent(f"unknown event type {envelope.event_type!r}", field="event_type")
    _check_transport(envelope, message_id=message_id, amqp_type=amqp_type, routing_key=routing_key)
    if envelope.dossier_code is not None:
        rules.check_dossier_code(envelope.dossier_code)
    context: dict[str, Any] = {}
    if received_at is not None:
        rules.check_time(envelope.occurred_at, received_at)
        context[NOT_AFTER] = not_after(received_at, rules.future_skew_s)
    try:
        payload = model.model_validate(envelope.payload, context=context)
    except ValidationError as exc:
        raise InvalidEvent(format_validation_error(exc, prefix="payload.")) from None
    return Event(envelope=envelope, payload=payload)


_DEFAULT_RULES: Final = EventRules()


def _check_transport(
    envelope: Envelope, *, message_id: str | None, amqp_type: str | None, routing_key: str | None
) -> None:
    """The transport's word must agree with the envelope's: the same event id, the same event type."""
    if message_id is not None:
        try:
            same = UUID(uuid_text(message_id)) == envelope.event_id
        except (ValueError, TypeError):
            raise InvalidEvent(
                f"{message_id[:60]!r} is not a UUID (it must be the event_id)", field="message_id"
            ) from None
        if not same:
            raise InvalidEvent(f"{message_id} differs from event_id {envelope.event_id}", field="message_id")
    if amqp_type is not None and amqp_type != envelope.event_type:
        raise InvalidEvent(f"{amqp_type[:100]!r} differs from event_type {envelope.event_type!r}", field="type")
    if routing_key is not None and routing_key != envelope.event_type:
        raise InvalidEvent(
            f"published with routing key {routing_key[:100]!r} but event_type is {envelope.event_type!r}: a "
            "route bound to the key would handle an event of another type",
            field="routing_key",
        )
