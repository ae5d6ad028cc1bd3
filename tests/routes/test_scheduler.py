"""The scheduler's decisions, wake-up by wake-up, against a real store with the clock in the test's hand.

What is decided here, and tested without waiting for time to pass: only the lease holder fires; a takeover
loses no firing; a tick is fired for each scheduled time once; the misfire policies after downtime. The
publish function records what the scheduler hands it (these tests are about the scheduler's decisions; the
broker side is tested with a real worker in test_schedule_route.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from config.model import ScheduleSpec
from routes.idempotency import IdempotencyStore
from routes.schedule import Schedule, tick_id
from routes.schedule_store import ScheduleStore
from routes.scheduler import ScheduledRoute, Scheduler, tick_message
from routes.topology import route_queue

if TYPE_CHECKING:
    from collections.abc import Iterator

T0 = datetime(2026, 11, 28, 19, 0, tzinfo=UTC)


@dataclass
class Clock:
    """The time every scheduler of a test reads."""

    now: datetime = T0 - timedelta(seconds=30)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Published:
    """What the schedulers handed to their publish function: (owner, queue, scheduled_at)."""

    items: list[tuple[str, str, str]] = field(default_factory=list)

    def fn(self, owner: str) -> Any:
        def publish(queue: str, body: bytes, props: Any) -> None:
            event = json.loads(body)
            assert props.message_id == event["event_id"]
            self.items.append((owner, queue, event["payload"]["scheduled_at"]))

        return publish


@pytest.fixture
def store(sqlite_url: str) -> Iterator[ScheduleStore]:
    """A schedule store on a fresh SQLite file."""
    idem = IdempotencyStore(sqlite_url)
    try:
        yield ScheduleStore(idem)
    finally:
        idem.close()


def _scheduler(store: ScheduleStore, clock: Clock, published: Published, owner: str, **spec: Any) -> Scheduler:
    route = ScheduledRoute("poll", Schedule(ScheduleSpec(**spec)))
    return Scheduler([route], store, publish=published.fn(owner), owner=owner, clock=clock)


def _vn(at: datetime) -> str:
    return at.astimezone(Schedule(ScheduleSpec(every="1m")).zone).isoformat()


class TestOwnership:
    """Two workers wake alike; only the lease holder fires, and a takeover loses no firing."""

    def test_only_the_holder_fires_each_time_once(self, store: ScheduleStore) -> None:
        """A and B wake every 15 s for 10 minutes: 10 ticks, all by A, one per minute."""
        clock, published = Clock(), Published()
        a = _scheduler(store, clock, published, "A", every="1m")
        b = _scheduler(store, clock, published, "B", every="1m")
        for _ in range(41):
            a.wake("poll")
            b.wake("poll")
            clock.now += timedelta(seconds=15)
        assert published.items == [("A", route_queue("poll"), _vn(T0 + timedelta(minutes=i))) for i in range(10)]

    def test_a_dead_holder_is_replaced_within_two_intervals_and_nothing_is_lost(self, store: ScheduleStore) -> None:
        """A stops waking (SIGKILL) after 19:02; B fires 19:03 and every minute after, none twice, none missing."""
        clock, published = Clock(), Published()
        a = _scheduler(store, clock, published, "A", every="1m")
        b = _scheduler(store, clock, published, "B", every="1m")
        killed_at = T0 + timedelta(minutes=2, seconds=10)
        while clock.now < T0 + timedelta(minutes=8):
            if clock.now < killed_at:
                a.wake("poll")
            b.wake("poll")
            clock.now += timedelta(seconds=5)
        times = [at for _, _, at in published.items]
        assert times == [_vn(T0 + timedelta(minutes=i)) for i in range(8)]
        takeover = next(i for i, (owner, _, _) in enumerate(published.items) if owner == "B")
        # A renewed at 19:02:05 last; its 30 s lease ended before 19:03
        assert published.items[takeover][2] == _vn(T0 + timedelta(minutes=3))
        assert {owner for owner, _, _ in published.items[:takeover]} == {"A"}

    def test_a_graceful_stop_hands_over_at_the_next_wake_up(self, store: ScheduleStore) -> None:
        """A stops (SIGTERM): its lease ends at once and B holds the schedule at its next wake-up."""
        clock, published = Clock(), Published()
        a = _scheduler(store, clock, published, "A", every="1m")
        b = _scheduler(store, clock, published, "B", every="1m")
        a.wake("poll")
        b.wake("poll")
        a.stop()
        b.wake("poll")
        row = store.get("poll")
        assert row is not None
        assert row.owner == "B"


class TestMisfire:
    """The bus was down at the firing time: ``run_once`` fires once, ``skip`` waits; a late wake-up catches up."""

    def _down(self, store: ScheduleStore, hours: float, **spec: Any) -> tuple[Published, ScheduleStore]:
        clock, published = Clock(), Published()
        first = _scheduler(store, clock, published, "A", every="1h", **spec)
        first.wake("poll")  # creates the row: next firing 19:00
        clock.now = T0 + timedelta(hours=hours)
        again = _scheduler(store, clock, published, "A", every="1h", **spec)  # the restarted worker
        again.wake("poll")
        again.wake("poll")
        return published, store

    def test_run_once_fires_the_latest_missed_firing_once(self, store: ScheduleStore) -> None:
        """Down 19:00 to 00:20 (6 firings missed): one tick, for 00:00; the next firing is 01:00."""
        published, _ = self._down(store, 5 + 1 / 3, misfire="run_once")
        assert [at for _, _, at in published.items] == [_vn(T0 + timedelta(hours=5))]
        row = store.get("poll")
        assert row is not None
        assert row.next_run_at == T0 + timedelta(hours=6)

    def test_skip_fires_nothing_and_waits_for_the_next_firing(self, store: ScheduleStore) -> None:
        """Same downtime with ``skip``: no tick; ``status`` shows the skip; the next firing is 01:00."""
        published, _ = self._down(store, 5 + 1 / 3, misfire="skip")
        assert published.items == []
        row = store.get("poll")
        assert row is not None
        assert (row.next_run_at, row.last_outcome) == (T0 + timedelta(hours=6), "skipped: misfire")

    def test_a_little_late_within_grace_is_on_time(self, store: ScheduleStore) -> None:
        """Back at 19:05 with ``skip`` and the default grace (10 min): 19:00 still fires."""
        published, _ = self._down(store, 5 / 60, misfire="skip")
        assert [at for _, _, at in published.items] == [_vn(T0)]

    def test_later_than_grace_with_skip_is_skipped(self, store: ScheduleStore) -> None:
        """Back at 19:05 with ``grace: 1m`` and ``skip``: 19:00 is dropped."""
        published, _ = self._down(store, 5 / 60, misfire="skip", grace="1m")
        assert published.items == []


class TestTickMessage:
    """A tick is an ordinary event of the bus, with an id every worker derives alike."""

    def test_the_tick_envelope(self) -> None:
        """Its id comes from route and time; it carries no cursor (the pipeline hands the saved one in)."""
        body, props = tick_message("poll", T0, fired_at=T0 + timedelta(seconds=1))
        event = json.loads(body)
        assert event["event_id"] == props.message_id == tick_id("poll", T0)
        assert (event["event_type"], props.type, event["source"]) == ("bus.tick", "bus.tick", "igate-bus/scheduler")
        assert event["payload"] == {"route": "poll", "scheduled_at": _vn(T0), "cursor": None}
        assert props.headers["x-received-at"] == (T0 + timedelta(seconds=1)).isoformat()
