"""The bus's own diagnostic events and the no-I/O connector's messages (benchmarks, smoke tests, demo)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Ping(BaseModel):
    """Payload of ``bus.ping``: a numbered probe event that travels a route with no external I/O."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=0)
    note: str = Field(default="", max_length=200)


class NoopRequest(BaseModel):
    """What the ``noop`` connector receives: the data it echoes back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: dict[str, int | str] = Field(default_factory=dict)


class NoopReply(BaseModel):
    """What the ``noop`` connector answers: the same data, and the key it was sent under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: dict[str, int | str] = Field(default_factory=dict)
    idempotency_key: str


BUS_EVENTS: dict[str, type[BaseModel]] = {"bus.ping": Ping, "bus.pong": NoopReply}
