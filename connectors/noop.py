"""A connector with no I/O: it echoes the request. Routes through it measure the engine alone (``make bench``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from connectors.base import Health
from connectors.kit.declare import Declared, operation
from schemas.bus import NoopReply, NoopRequest, PollReply

if TYPE_CHECKING:
    from config.model import ConnectorSpec


class NoopConnector(Declared):
    """Echoes; remembers nothing, so ``lookup`` finds nothing and a reclaimed event is simply sent again."""

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        self.name = name
        self.spec = spec

    @operation(NoopRequest, NoopReply, lookup="lookup", waits_on_io=False)
    def send(self, request: NoopRequest, idempotency_key: str) -> NoopReply:
        """Echo the request back."""
        return NoopReply(data=request.data, idempotency_key=idempotency_key)

    @operation(NoopRequest, PollReply, lookup="lookup_poll", waits_on_io=False)
    def poll(self, request: NoopRequest, idempotency_key: str) -> PollReply:
        """Move the request's ``cursor`` (a count, empty at first) on by one: a polling target with no I/O."""
        previous = request.data.get("cursor", "")
        position = int(previous) if isinstance(previous, int) or str(previous).isdigit() else 0
        return PollReply(
            idempotency_key=idempotency_key,
            cursor=str(position + 1),
            polled_at=str(request.data.get("scheduled_at", "")),
        )

    def lookup_poll(self, idempotency_key: str) -> PollReply | None:
        """Nothing is remembered: never found."""
        del idempotency_key
        return None

    def lookup(self, idempotency_key: str) -> NoopReply | None:
        """Nothing is remembered: never found."""
        del idempotency_key
        return None

    def probe(self) -> Health:
        """Always up: there is nothing to reach."""
        return Health(state="up", detail="no I/O", latency_ms=0.0, checked_at=datetime.now(UTC))

    def close(self) -> None:
        """Nothing to release."""
