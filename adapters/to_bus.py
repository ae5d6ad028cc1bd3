"""What every inbound adapter (an external system's call → a bus event) shares: identity, envelope, refusal.

Where it sits: at the start of the *result* side of a message's path. A system the bus delivered to (or
that works on a dossier by itself) calls back over HTTP; the ingress (``bus/ingress/``) authenticates the
call, and an ``adapters/<system>_to_bus.py`` maps it, with the helpers here, into an envelope that the
ingress validates with the one strict parser (:func:`schemas.envelope.parse_event`) and publishes on
``bus.results``. These adapters are the mirror of the route adapters in :mod:`adapters.registry` (an event
into a target's request), so they are not registered there: the ingress's callback registry
(``bus/ingress/systems.py``) names them. Everything here is pure: no I/O, no clock (``now`` is passed in),
no logging.

A retried callback must be the same event, so each ``event_id`` is a UUID5 of the call's own identity
(:func:`callback_event_id`), chosen per system by its adapter.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from schemas.envelope import SCHEMA_VERSION

#: Asia/Ho_Chi_Minh has no daylight saving time: a fixed +07:00 is exact
VN_TZ: Final = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")
#: the namespace of every callback's UUID5 event id (itself a UUID5 of the bus's callback URL space)
CALLBACK_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:igate-bus:callbacks")


class CallbackRejected(Exception):
    """A callback that cannot be turned into an event: the caller's fault, answered with a 4xx.

    Args:
        code: a stable machine-readable reason (``invalid_callback``, ``unknown_action``, ...).
        detail: the precise reason, safe to send back.
        status: the HTTP status to answer with.
    """

    def __init__(self, code: str, detail: str, *, status: int = 422) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


def canonical_json(data: Any) -> bytes:
    """The JSON of ``data`` with sorted keys and no spaces: equal bytes for equal content.

    Args:
        data: a JSON value.

    Returns:
        The UTF-8 bytes.
    """
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def callback_event_id(*parts: str) -> str:
    """A UUID5 event id from a callback's identity, so a retried callback is the same event.

    Args:
        *parts: the system and the call's own identifying values, in a fixed order.

    Returns:
        The UUID, as text.
    """
    return str(uuid.uuid5(CALLBACK_NAMESPACE, "/".join(parts)))


def vn_time(at: datetime) -> str:
    """An aware date-time as ISO 8601 in Vietnam time, the way the bus writes times it originates.

    Args:
        at: an aware datetime.

    Returns:
        The text, e.g. ``2026-12-05T10:00:00+07:00`` (fractions kept when there are any).
    """
    return at.astimezone(VN_TZ).isoformat()


def json_ready(value: Any) -> Any:
    """``value`` with every datetime rendered by :func:`vn_time`, as JSON-ready data.

    Args:
        value: a payload of dicts, lists, tuples, strings, numbers, booleans, None and aware datetimes.

    Returns:
        The same structure with datetimes as text.
    """
    if isinstance(value, datetime):
        return vn_time(value)
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def envelope(
    *,
    event_id: str,
    event_type: str,
    source: str,
    now: datetime,
    payload: dict[str, Any],
    dossier_code: str | None = None,
    status: int | None = None,
) -> dict[str, Any]:
    """A bus envelope around a result payload (validated afterwards by the ingress with ``parse_event``).

    Args:
        event_id: the deterministic id.
        event_type: a result event type.
        source: the calling system.
        now: when the bus received the call (``occurred_at``).
        payload: the result payload (datetimes allowed: rendered in Vietnam time).
        dossier_code: the dossier it is about, when the call names one.
        status: the national 1-10 status it implies, when it implies one.

    Returns:
        The envelope as JSON-ready data.
    """
    event: dict[str, Any] = {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": now.astimezone(VN_TZ).isoformat(timespec="seconds"),
        "source": source,
        "schema_version": SCHEMA_VERSION,
        "payload": json_ready(payload),
    }
    if dossier_code is not None:
        event["dossier_code"] = dossier_code
    if status is not None:
        event["status"] = status
    return event
