"""A connector with no I/O: it echoes the request. Routes through it measure the engine alone (``make bench``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from connectors.base import Health, Operation, OperationSpec
from schemas.bus import NoopReply, NoopRequest
from schemas.errors import MappingError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import BaseModel

    from config.model import ConnectorSpec


class NoopConnector:
    """Echoes; remembers nothing, so ``lookup`` finds nothing and a reclaimed event is simply sent again."""

    OPERATIONS: ClassVar[Mapping[str, OperationSpec]] = {
        "send": OperationSpec(
            request=NoopRequest, reply=NoopReply, effect=True, has_lookup=True, doc="Echo the request back."
        ),
    }

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        self.name = name
        self.spec = spec

    def _send(self, request: BaseModel, idempotency_key: str) -> BaseModel:
        if not isinstance(request, NoopRequest):
            raise MappingError(f"noop.send takes NoopRequest, got {type(request).__name__}")
        return NoopReply(data=request.data, idempotency_key=idempotency_key)

    def _lookup(self, idempotency_key: str) -> BaseModel | None:
        del idempotency_key
        return None

    def operations(self) -> Mapping[str, Operation]:
        """The one ``send`` operation."""
        return {
            "send": Operation("send", NoopRequest, NoopReply, self._send, self._lookup, effect=True, waits_on_io=False)
        }

    def probe(self) -> Health:
        """Always up: there is nothing to reach."""
        return Health(state="up", detail="no I/O", latency_ms=0.0, checked_at=datetime.now(UTC))

    def close(self) -> None:
        """Nothing to release."""
