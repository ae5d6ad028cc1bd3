"""The worker's scheduler: the lease holder of each schedule publishes a ``bus.tick`` into the route's queue.

Where this sits: the source of a polling route (**schedule ▶ tick** ▶ route queue ▶ pipeline ▶ connector). A
tick is an ordinary event once published: the route's consumer runs it through the same pipeline (claim,
retries, dead letters), so everything the bus promises for events holds for ticks.

**Who fires.** Every worker runs an APScheduler 3 ``BackgroundScheduler`` with two jobs per schedule, both
calling :meth:`Scheduler.wake`: the schedule's own trigger (cron or interval, in its time zone) for a wake-up
on time, and a short *beat* (a quarter of the interval, 250 ms to 10 s) that renews the lease and notices a
dead holder. A wake-up takes or renews the schedule's lease in the store
(:meth:`routes.schedule_store.ScheduleStore.acquire`); only the holder goes on. The lease lasts three beats,
so a holder that dies is replaced within the interval plus a beat (:data:`LEASE_BEATS`), inside the "two
intervals" the README promises.

**What fires.** The store's ``next_run_at`` is the first scheduled time not fired yet. When it has come, the
holder publishes the tick of each firing due, oldest first, with a confirm, then moves ``next_run_at`` past
it. The tick's id is uuid5(route + scheduled time): a tick published twice (a holder that died between
publish and advance, or two holders across a lease that ran out under a paused process) is claimed once
and executed once.

**Misfires.** Up to :data:`CATCH_UP` firings due at one wake-up, the oldest no later than the schedule's
``grace``, are each fired: a slow wake-up or a takeover loses none. More, or later (the bus was down at
02:00), is a misfire, logged once (``schedule_misfired``, with how many were missed) and handled by the
schedule's ``misfire``: ``run_once`` fires one tick, for the latest firing due, never a burst; ``skip``
fires nothing and waits for the next firing (``status`` shows ``skipped: misfire``). APScheduler's own
misfire handling is switched off (``misfire_grace_time=None``, ``coalesce=True``): its default of one second
would silently drop a wake-up that a busy machine started late, and it forgets everything across a
restart; the store does not.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

import structlog

from routes.amqp import event_properties
from routes.pipeline import RECEIVED_HEADER, CrashPlan
from routes.schedule import Schedule, tick_id
from routes.topology import route_queue
from schemas.bus import TICK_EVENT

if TYPE_CHECKING:
    from collections.abc import Callable

    import pika

    from routes.schedule_store import ScheduleStore

#: shortest and longest beat (lease renewal and takeover check), in seconds
MIN_BEAT_S: Final = 0.25
MAX_BEAT_S: Final = 10.0
#: a lease lasts this many beats: a holder may miss two renewals (a slow store, a GC pause) and keep it
LEASE_BEATS: Final = 3
#: at most this many firings due at one wake-up, none later than ``grace``, are each fired (a slow wake-up
#: or a takeover loses none); more, or later, is a misfire and follows the schedule's ``misfire`` policy
CATCH_UP: Final = 2
VN_TZ: Final = ZoneInfo("Asia/Ho_Chi_Minh")
#: the ``source`` of every tick
TICK_SOURCE: Final = "igate-bus/scheduler"


@dataclass(frozen=True, slots=True)
class ScheduledRoute:
    """A route with a schedule, as the scheduler needs it."""

    name: str
    schedule: Schedule

    def beat_s(self, now: datetime) -> float:
        """How often a worker renews (or tries to take) this schedule's lease."""
        return min(max(self.schedule.typical_interval_s(now) / 4, MIN_BEAT_S), MAX_BEAT_S)


def tick_message(route: str, scheduled_at: datetime, *, fired_at: datetime) -> tuple[bytes, pika.BasicProperties]:
    """The ``bus.tick`` event of one firing, ready to publish into the route's queue.

    ``x-received-at`` is the firing time: the tick is judged as of when it was fired, however long it then
    waits in a retry queue.
    """
    event_id = tick_id(route, scheduled_at)
    event = {
        "event_id": event_id,
        "event_type": TICK_EVENT,
        "occurred_at": scheduled_at.astimezone(VN_TZ).isoformat(),
        "source": TICK_SOURCE,
        "payload": {"route": route, "scheduled_at": scheduled_at.astimezone(VN_TZ).isoformat(), "cursor": None},
    }
    props = event_properties(
        event_id=event_id,
        event_type=TICK_EVENT,
        headers={"x-route": route, RECEIVED_HEADER: fired_at.astimezone(UTC).isoformat()},
    )
    return json.dumps(event, separators=(",", ":")).encode(), props


class Scheduler:
    """Fires the schedules of one worker's routes while it runs; one instance per worker process.

    Args:
        routes: the scheduled routes this worker runs.
        store: the schedules' rows (leases, firing times).
        publish: publishes a tick into a queue with a confirm, raising when the broker did not take it.
        owner: this worker's id (the lease's owner; ``status`` shows it).
        clock: the current time, UTC-aware.
        on_stop: called last by :meth:`stop` (closes the publisher's connection).
        crash: where to SIGKILL the process (reliability tests: ``after_tick_publish``).
    """

    def __init__(
        self,
        routes: list[ScheduledRoute],
        store: ScheduleStore,
        *,
        publish: Callable[[str, bytes, pika.BasicProperties], None],
        owner: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_stop: Callable[[], None] | None = None,
        crash: CrashPlan = CrashPlan(),  # noqa: B008 - frozen, so one shared default is safe
    ) -> None:
        self._crash = crash
        self._on_stop = on_stop
        self.routes = {r.name: r for r in routes}
        self.store = store
        self.owner = owner
        self._publish = publish
        self._clock = clock
        self._lock = threading.Lock()  # one wake-up at a time: the publisher is one AMQP channel
        self._holding: set[str] = set()
        self._ensured: set[str] = set()
        self._failing: dict[str, str] = {}
        self._scheduler: Any = None
        self._log = structlog.get_logger("igate_bus.scheduler").bind(owner=owner)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the missing rows, then wake each schedule now, on its trigger, and on its beat."""
        if self._scheduler is not None or not self.routes:
            return
        import logging

        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        for name in ("apscheduler.scheduler", "apscheduler.executors.default"):  # our own lines say it all
            logging.getLogger(name).setLevel(logging.WARNING)
        now = self._clock()
        scheduler = BackgroundScheduler(
            timezone=UTC, daemon=True, job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
        )
        for route in self.routes.values():
            scheduler.add_job(
                self.wake,
                IntervalTrigger(seconds=route.beat_s(now), timezone=UTC),
                args=[route.name],
                id=f"beat:{route.name}",
                next_run_time=now,
            )
            scheduler.add_job(self.wake, route.schedule.trigger(), args=[route.name], id=f"fire:{route.name}")
        scheduler.start()
        self._scheduler = scheduler
        self._log.info("scheduler_started", schedules=sorted(self.routes))

    def stop(self) -> None:
        """Stop waking, then end the leases this worker holds so another worker takes over at once."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        with self._lock:
            for name in sorted(self._holding):
                try:
                    self.store.release(name, self.owner, now=self._clock())
                except Exception as exc:  # the lease runs out by itself
                    self._log.warning("schedule_release_failed", route=name, error=repr(exc))
            self._holding.clear()
            if self._on_stop is not None:
                self._on_stop()

    # -- one wake-up ----------------------------------------------------------------------------------
    def wake(self, name: str) -> None:
        """Renew or take the lease of ``name``; as its holder, fire what is due. Never raises."""
        with self._lock:
            try:
                self._wake(self.routes[name])
            except Exception as exc:  # the store or the broker is down: the next wake-up tries again
                error = f"{type(exc).__name__}: {exc}"
                if self._failing.get(name) != error:  # once per new error, not once per beat
                    self._log.warning("schedule_wake_failed", route=name, error=error)
                self._failing[name] = error
                return
            if self._failing.pop(name, None) is not None:
                self._log.info("schedule_wake_recovered", route=name)

    def _wake(self, route: ScheduledRoute) -> None:
        now = self._clock()
        if route.name not in self._ensured:  # a restart keeps the row, and so what it missed meanwhile
            self.store.ensure(route.name, route.schedule.next_after(now))
            self._ensured.add(route.name)
        if not self._hold(route, now):
            return
        row = self.store.get(route.name)
        if row is None or row.next_run_at is None:
            return
        due = route.schedule.due(row.next_run_at, now, first=CATCH_UP)
        if due is None:
            return
        following = route.schedule.next_after(max(now, due.latest))
        if due.count <= CATCH_UP and due.late_s <= route.schedule.grace_s:
            for at in due.first:  # on time, or a wake-up (a takeover) a little late: each one fires
                if not self._fire(route, at, following if at == due.latest else route.schedule.next_after(at)):
                    return
            return
        policy = route.schedule.spec.misfire
        self._log.warning(
            "schedule_misfired",
            route=route.name,
            missed=due.count,
            since=due.first[0].isoformat(),
            late_s=round(due.late_s, 3),
            policy=policy,
            action="run the latest once" if policy == "run_once" else "skip to the next firing",
        )
        if policy == "skip":
            self.store.advance(route.name, self.owner, next_run_at=following, skipped=True, now=now)
        else:
            self._fire(route, due.latest, following)

    def _hold(self, route: ScheduledRoute, now: datetime) -> bool:
        """Take or renew the lease; log when this worker gains or loses the schedule."""
        lease_s = route.beat_s(now) * LEASE_BEATS
        if not self.store.acquire(route.name, self.owner, lease_s=lease_s, now=now):
            if route.name in self._holding:
                self._holding.discard(route.name)
                self._log.warning("schedule_lost", route=route.name)
            return False
        if route.name not in self._holding:
            self._holding.add(route.name)
            self._log.info("schedule_acquired", route=route.name, lease_s=lease_s)
        return True

    def _fire(self, route: ScheduledRoute, at: datetime, following: datetime) -> bool:
        """Publish the tick of ``at`` (confirmed), then move the schedule on; False if the lease was lost."""
        body, props = tick_message(route.name, at, fired_at=self._clock())
        self._publish(route_queue(route.name), body, props)  # confirmed before the store moves on
        self._crash.crash("after_tick_publish")  # the next holder fires it again: the claim runs it once
        log = self._log.bind(route=route.name, scheduled_at=at.isoformat(), event_id=props.message_id)
        if self.store.advance(route.name, self.owner, next_run_at=following, fired=at, now=self._clock()):
            log.info("tick_fired", next_run_at=following.isoformat())
            return True
        # our lease ran out meanwhile: the next holder may fire it again, and the claim runs it once
        log.warning("tick_fired_lease_lost")
        return False
