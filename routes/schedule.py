"""A route's schedule as times: when it fires next, which firing is due now, and each firing's tick id.

Where this sits: the source of a polling route (schedule ▶ **tick** ▶ route ▶ adapter ▶ connector). The YAML
shape is :class:`config.model.ScheduleSpec`; here it becomes a pure function of time that every worker computes
alike, so two workers agree on the firing times (and so on the tick ids) without talking to each other:

- ``every``: a grid from 2000-01-01 00:00 in the schedule's time zone, stepped by the interval in absolute
  time (an interval is a duration, so a DST change in the zone never makes it fire twice or skip);
- ``cron``: APScheduler 3's :class:`~apscheduler.triggers.cron.CronTrigger` read in the time zone.

Nothing here reads a clock or the store: :mod:`routes.scheduler` passes ``now`` in, and the store keeps the
next firing, so a restarted worker knows what it missed (APScheduler's own misfire handling lives in memory
and forgets it across a restart).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from config.model import ScheduleSpec

#: names tick event ids: uuid5(TICK_NS, "<route>/<scheduled time, UTC ISO>") is the same on every worker
TICK_NS: Final = uuid.UUID("3a0c8e51-7d2b-4f6a-9c1e-5b8d0f2a4e67")
#: the origin of every interval grid (in the schedule's zone)
GRID_ORIGIN: Final = datetime(2000, 1, 1)
#: how many cron firings are walked to find the latest one due; past that (a minutely cron missed for over
#: two months) the tick is for the firing the walk reached, and the next one is the first after now
MAX_WALK: Final = 100_000


class ScheduleError(ValueError):
    """A schedule that cannot fire (a cron expression APScheduler refuses); the message says why."""


def tick_id(route: str, scheduled_at: datetime) -> str:
    """The event id of a route's tick for one scheduled time: every worker derives the same one."""
    return str(uuid.uuid5(TICK_NS, f"{route}/{scheduled_at.astimezone(UTC).isoformat()}"))


@dataclass(frozen=True, slots=True)
class Due:
    """The firings a wake-up found due since the last one fired: the oldest few, the latest and how many."""

    #: the oldest firings due, in order (at most the ``first`` asked for)
    first: tuple[datetime, ...]
    #: the latest firing due
    latest: datetime
    #: how many firings are due (the walk stops counting at :data:`MAX_WALK` for cron)
    count: int
    #: how late the oldest one is at ``now``
    late_s: float


class Schedule:
    """One route's firing times; pure and thread-safe.

    Args:
        spec: the route's ``from.schedule``.

    Raises:
        ScheduleError: the cron expression does not parse (the message is APScheduler's, e.g. the field).
    """

    def __init__(self, spec: ScheduleSpec) -> None:
        self.spec = spec
        self.zone = ZoneInfo(spec.timezone)
        self.grace_s = spec.grace
        self._every = spec.every
        self._origin = GRID_ORIGIN.replace(tzinfo=self.zone).astimezone(UTC)
        self._cron: Any = None
        if spec.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                self._cron = CronTrigger.from_crontab(spec.cron, timezone=self.zone)
            except ValueError as exc:
                raise ScheduleError(f"cron {spec.cron!r}: {exc}") from None

    @property
    def interval_s(self) -> float | None:
        """The interval of an ``every`` schedule; None for cron."""
        return self._every

    def typical_interval_s(self, now: datetime) -> float:
        """About how long between two firings around ``now`` (for leases and wake-ups of cron schedules)."""
        if self._every is not None:
            return self._every
        first = self.next_after(now)
        return (self.next_after(first) - first).total_seconds()

    def trigger(self) -> Any:
        """An APScheduler 3 trigger that wakes a worker at each firing (the store decides what fires)."""
        if self._cron is not None:
            return self._cron
        from apscheduler.triggers.interval import IntervalTrigger

        return IntervalTrigger(seconds=self._every, start_date=self._origin, timezone=UTC)

    def next_after(self, t: datetime) -> datetime:
        """The first firing strictly after ``t`` (UTC-aware)."""
        t = t.astimezone(UTC)
        if self._every is not None:
            steps = math.floor((t - self._origin).total_seconds() / self._every) + 1
            at = self._origin + timedelta(seconds=steps * self._every)
            while at <= t:  # float rounding of a huge step count
                at += timedelta(seconds=self._every)
            return at
        at = self._cron.get_next_fire_time(t, t)
        if at is None:  # no such date (February 31st): check refuses it, so a worker never gets here
            raise ScheduleError(f"cron {self.spec.cron!r} names no date that exists: it would never fire")
        result: datetime = at.astimezone(UTC)
        return result

    def due(self, next_run_at: datetime, now: datetime, *, first: int = 2) -> Due | None:
        """The firings in ``[next_run_at, now]``, or None when ``next_run_at`` is still ahead.

        Args:
            next_run_at: the first firing not yet fired (the store keeps it).
            now: the wake-up's time.
            first: how many of the oldest to list.
        """
        now = now.astimezone(UTC)
        if next_run_at > now:
            return None
        late_s = (now - next_run_at).total_seconds()
        if self._every is not None:
            count = math.floor(late_s / self._every) + 1
            step = timedelta(seconds=self._every)
            oldest = tuple(next_run_at + i * step for i in range(min(first, count)))
            return Due(oldest, next_run_at + (count - 1) * step, count, late_s)
        times, at, count = [next_run_at], next_run_at, 1
        for _ in range(MAX_WALK):
            following = self.next_after(at)
            if following > now:
                break
            at, count = following, count + 1
            if len(times) < first:
                times.append(at)
        return Due(tuple(times), at, count, late_s)


def schedule_problem(spec: ScheduleSpec) -> str | None:
    """Why a schedule cannot fire, for ``igate-bus check``; None when it can.

    A cron that parses may still name no date at all (``0 0 31 2 *``, February 31st): refused too, since
    the route would be accepted and never run.
    """
    try:
        Schedule(spec).next_after(datetime.now(UTC))
    except ScheduleError as exc:
        return str(exc)
    return None
