"""Adapters that need no external schema: the diagnostic ``bus.ping`` path used by the bench and smoke tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.registry import adapter
from schemas.bus import NoopRequest, Ping
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
