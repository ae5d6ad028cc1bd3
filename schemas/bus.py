"""The bus's own diagnostic events and the no-I/O connector's messages (benchmarks, smoke tests, demo)."""

from __future__ import annotations

from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


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


class PollReply(BaseModel):
    """What the ``noop`` connector's ``poll`` answers: the cursor moved on by one, and one fact for it.

    The diagnostic shape of a polling target: ``cursor`` is what the engine saves for the route, and
    :meth:`result_events` the facts the poll found (one ``bus.pong`` per cursor position).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency_key: str
    cursor: str
    polled_at: str

    def result_events(self) -> list[Emission]:
        """One ``bus.pong`` named by the cursor position it reached: polling it again gives the same id."""
        return [
            Emission(
                key=f"poll/{self.cursor}",
                event_type="bus.pong",
                payload={"data": {"cursor": self.cursor}, "idempotency_key": self.idempotency_key},
                occurred_at=self.polled_at,  # pydantic parses the ISO text
            )
        ]


#: the event type of a schedule's firing (routes/scheduler.py publishes it into the route's own queue)
TICK_EVENT: Final = "bus.tick"


class Tick(BaseModel):
    """Payload of ``bus.tick``: one firing of a route's schedule.

    The scheduler publishes it with ``cursor`` None; the pipeline fills in the cursor the route saved last when
    it processes the tick (a retried tick sees the cursor as it is then, not as it was when it fired).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: str = Field(min_length=1, max_length=63)
    scheduled_at: AwareDatetime
    cursor: str | None = Field(default=None, max_length=4096)


class Emission(BaseModel):
    """One result event a reply carries (a reply model's ``result_events()``), published on ``bus.results``.

    Its id is uuid5(route + "/" + ``key``): ``key`` names the fact (``EE123456785VN/0005``), never the tick
    or the delivery, so the same fact polled twice gets the same id and is deduplicated downstream.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, max_length=200)
    event_type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    payload: dict[str, Any]
    dossier_code: str | None = None
    occurred_at: AwareDatetime


BUS_EVENTS: dict[str, type[BaseModel]] = {"bus.ping": Ping, "bus.pong": NoopReply, TICK_EVENT: Tick}
