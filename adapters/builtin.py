"""Adapters that need no external schema: the diagnostic ``bus.ping`` path, schedules' ticks, the bus's notices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from adapters.registry import adapter
from schemas.bus import TICK_EVENT, NoopRequest, Ping, Tick
from schemas.errors import MappingError

if TYPE_CHECKING:
    from datetime import datetime

    from schemas.envelope import Event


@adapter(accepts=("bus.ping",), produces=NoopRequest)
def ping(event: Event, *, now: datetime) -> NoopRequest:
    """Echo the ping's sequence number; a negative ``note`` of ``"fail"`` proves the mapping-error path."""
    del now
    payload = event.payload
    if not isinstance(payload, Ping):
        raise MappingError(f"expected a bus.ping payload, got {type(payload).__name__}", field="payload")
    if payload.note == "unmappable":
        raise MappingError("note 'unmappable' cannot be mapped (diagnostic)", field="payload.note")
    return NoopRequest(data={"seq": payload.seq, "dossier_code": event.envelope.dossier_code or ""})


@adapter(accepts=(TICK_EVENT,), produces=NoopRequest)
def tick(event: Event, *, now: datetime) -> NoopRequest:
    """A schedule's firing as the ``noop`` connector's request: the route, the scheduled time and the cursor."""
    del now
    payload = event.payload
    if not isinstance(payload, Tick):
        raise MappingError(f"expected a bus.tick payload, got {type(payload).__name__}", field="payload")
    return NoopRequest(
        data={"route": payload.route, "scheduled_at": payload.scheduled_at.isoformat(), "cursor": payload.cursor or ""}
    )


#: result events the bus emits for the operator, not for a target system: the ``bus-notices`` route takes them
NOTICE_EVENTS = ("bus.superseded", "vnpost.pool_low")


@adapter(accepts=NOTICE_EVENTS, produces=NoopRequest)
def notice(event: Event, *, now: datetime) -> NoopRequest:
    """A notice as the ``noop`` connector's request: what it says, without personal data.

    Why a route at all: with no route binding them these events went to ``unrouted``, one per superseded
    status (thousands a day with the portal's order), burying the events that really went astray. Taken by
    ``bus-notices``, each is counted per route in ``/metrics`` and logged once as processed.
    """
    del now
    payload = event.payload
    data: dict[str, Any] = {"event_type": event.envelope.event_type, "dossier_code": event.envelope.dossier_code or ""}
    if isinstance(payload, BaseModel):
        data.update(payload.model_dump(mode="json"))
    return NoopRequest(data=data)
