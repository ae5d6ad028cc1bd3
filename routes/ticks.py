"""The pipeline's steps for a schedule's ``bus.tick``: admit it, hand it the route's cursor, save the new one.

Where this sits: inside the pipeline of a scheduled route (tick ▶ **validate + cursor** ▶ claim ▶ adapter ▶
connector ▶ **save cursor** ▶ emit ▶ **last outcome**). :class:`routes.pipeline.RouteRunner` calls these hooks
only for a tick, so a route's other events never pay for them.

- **Admission.** Only the bus fires ticks, straight into the route's queue (the default exchange, which
  producers cannot write to). A ``bus.tick`` that came through ``igate.events`` or ``bus.results`` was
  published by someone else and is dead-lettered as invalid, as is a tick fired for another route.
- **Cursor.** The tick's ``cursor`` is the route's saved cursor *when the tick is processed* (a tick retried
  an hour later sees the cursor as it is then). A reply with a ``cursor`` field saves it after the effect is
  recorded, compare-and-set against the version this tick read: a tick that read an older cursor never
  overwrites a newer one. A save that fails is logged and the tick still completes: the next tick polls again
  from the older cursor, and the facts it finds again keep their ids (``routes/emissions.py``), so they are
  deduplicated downstream rather than lost.
- **Last outcome**: written for ``igate-bus status``; a failure to write it never changes the tick's fate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.bus import TICK_EVENT, Tick
from schemas.envelope import Event
from schemas.errors import InvalidEvent

if TYPE_CHECKING:
    from routes.schedule_store import ScheduleStore


@dataclass(frozen=True, slots=True)
class TickSteps:
    """The tick hooks of one scheduled route."""

    route: str
    store: ScheduleStore

    @staticmethod
    def is_tick(event: Event) -> bool:
        """Whether the event is a schedule's firing."""
        return event.envelope.event_type == TICK_EVENT

    def admit(self, event: Event, *, first: bool) -> tuple[Event, int]:
        """The tick with the route's current cursor, and that cursor's version (for the compare-and-set).

        Args:
            event: the validated ``bus.tick``.
            first: whether it came through an event exchange (then it was not fired by the bus).

        Raises:
            InvalidEvent: a tick the bus did not fire into this route's queue.
        """
        payload = event.payload
        if first:
            raise InvalidEvent(
                f"{TICK_EVENT} came through an exchange: only the route's own schedule fires ticks, into its queue",
                field="event_type",
            )
        if not isinstance(payload, Tick) or payload.route != self.route:
            fired_for = payload.route if isinstance(payload, Tick) else "?"
            message = f"a tick fired for route {fired_for!r} reached route {self.route!r}"
            raise InvalidEvent(message, field="payload.route")
        cursor, version = self.store.cursor(self.route)
        return Event(event.envelope, payload.model_copy(update={"cursor": cursor})), version

    def save_cursor(self, reply: dict[str, Any] | None, version: int, log: Any) -> None:
        """Save the reply's ``cursor`` if it carries one, unless another tick saved one since this one read."""
        cursor = (reply or {}).get("cursor")
        if not isinstance(cursor, str):
            return
        try:
            saved = self.store.save_cursor(self.route, cursor, expect_version=version)
        except Exception as exc:
            log.warning("cursor_not_saved", reason=f"{type(exc).__name__}: {exc}")
            return
        if not saved:
            log.warning("cursor_not_saved", reason="another tick saved a cursor after this one read it")

    def record(self, outcome: str, log: Any) -> None:
        """Remember what became of the tick (``igate-bus status``: last outcome)."""
        try:
            self.store.record_outcome(self.route, outcome)
        except Exception as exc:
            log.warning("schedule_outcome_not_saved", reason=f"{type(exc).__name__}: {exc}")
