"""Adapters that need no external schema: the diagnostic ``bus.ping`` path used by the bench and smoke tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
