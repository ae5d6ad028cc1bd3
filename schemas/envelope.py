"""The bus envelope and the one function that turns raw bytes into a validated event.

Every message on the bus, from iGate or from a route's result, is an envelope around a payload model chosen by
``event_type``. Parsing is strict because a message a route received that does not parse is dead-lettered at
once with the reason, never retried: size, content type, UTF-8, JSON (no duplicate keys, no NaN), text
normalised to NFC, then the envelope and the payload model.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import InvalidEvent

if TYPE_CHECKING:
    from collections.abc import Mapping

#: 1 MiB: far above any real dossier event (attachments travel as URLs), far below the broker's frame cap.
DEFAULT_MAX_BYTES = 1_048_576
JSON_CONTENT_TYPES = frozenset({"application/json", "application/json; charset=utf-8"})
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
SCHEMA_VERSION = 1


class Envelope(BaseModel):
    """What every event carries around its payload; the fields docs/design.md and docs/domain.md section 7 name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: UUID = Field(description="Idempotency key; also the AMQP message_id.")
    event_type: str = Field(pattern=EVENT_TYPE_PATTERN, max_length=100, examples=["dossier.received"])
    occurred_at: AwareDatetime = Field(description="RFC 3339 with offset (Asia/Ho_Chi_Minh, +07:00).")
    source: str = Field(min_length=1, max_length=50, examples=["igate"])
    dossier_code: str | None = Field(default=None, max_length=60, examples=["000.00.16.H16-190812-0001"])
    correlation_id: str | None = Field(default=None, max_length=100)
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    nation_code: str | None = Field(default=None, max_length=60)
    igate_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{24}$")
    agency_code: str | None = Field(default=None, max_length=40, examples=["000.00.16.H16"])
    procedure_code: str | None = Field(
        default=None, pattern=r"^[12]\.\d{6}(\.000\.00\.00)?(\.H\d{2})?$", examples=["1.003560.000.00.00.H16"]
    )
    channel: Literal[1, 2, 3] | None = Field(default=None, description="1 in person, 2 online, 3 postal")
    service_level: Literal[2, 3, 4] | None = None
    status: int | None = Field(default=None, ge=1, le=10, description="National 1-10 dossier status")
    trace_id: str | None = Field(default=None, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)


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


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidEvent(f"duplicate key {key!r} in JSON object")
        out[key] = value
    return out


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
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise InvalidEvent("JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise InvalidEvent(f"JSON value refused: {exc}") from None
    try:
        return nfc(data)
    except RecursionError:  # json's C parser nests deeper than Python recursion can walk back
        raise InvalidEvent("JSON nested too deeply") from None


def format_validation_error(exc: ValidationError, *, prefix: str = "") -> str:
    """One line naming each failing field by its dotted path: what goes into ``x-error``."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:10]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{prefix}{loc}: {err['msg']}" if loc else f"{prefix.rstrip('.')}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_event(
    body: bytes,
    *,
    payload_models: Mapping[str, type[BaseModel]],
    content_type: str | None = "application/json",
    message_id: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Event:
    """Validate raw bytes into an :class:`Event`, or raise :class:`InvalidEvent` naming what is wrong.

    Args:
        body: the raw message body.
        payload_models: event type to payload model; an unknown type is invalid.
        content_type: the AMQP/HTTP content type; anything but JSON is refused.
        message_id: the AMQP message_id, which must equal the envelope's event_id when set.
        max_bytes: size cap on the body.
    """
    if content_type is not None and content_type.lower().replace(" ", "") not in {
        c.replace(" ", "") for c in JSON_CONTENT_TYPES
    }:
        raise InvalidEvent(f"content type {content_type!r} is not application/json")
    data = loads_strict(body, max_bytes=max_bytes)
    if not isinstance(data, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(data).__name__}")
    try:
        envelope = Envelope.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(format_validation_error(exc)) from None
    model = payload_models.get(envelope.event_type)
    if model is None:
        raise InvalidEvent(f"unknown event type {envelope.event_type!r}", field="event_type")
    if message_id is not None and message_id != str(envelope.event_id):
        raise InvalidEvent(f"message_id {message_id!r} differs from event_id {envelope.event_id}")
    try:
        payload = model.model_validate(envelope.payload)
    except ValidationError as exc:
        raise InvalidEvent(format_validation_error(exc, prefix="payload.")) from None
    return Event(envelope=envelope, payload=payload)
