"""Each schedule's row in the store: who owns it (a lease), when it fires next, how it went, and its cursor.

Where this sits: beside the idempotency claims (same database, same URL), read and written by
:mod:`routes.scheduler` (ownership and firing times) and the pipeline (:mod:`routes.ticks`: the last outcome
and the route's cursor).

**Ownership.** One worker at a time fires a schedule: it holds the row's lease (``owner``, ``lease_until``).
:meth:`ScheduleStore.acquire` is one compare-and-set ``UPDATE ... WHERE owner = me OR lease ended``, atomic on
SQLite (the single write lock) and on PostgreSQL (the row lock re-checks the ``WHERE`` after a concurrent
writer), so two workers never both win. The holder renews it on every wake-up; a worker that dies stops
renewing, and the first other worker to wake after the lease ended takes it over. A worker that stops
gracefully ends its lease at once (:meth:`ScheduleStore.release`).

**Firing.** ``next_run_at`` is the first scheduled time not fired yet. The holder publishes the tick first and
then moves ``next_run_at`` on (:meth:`ScheduleStore.advance`, only while its lease is live): a crash between
the two makes the next holder publish the same tick again, with the same id, which the claim deduplicates;
the other order could lose a tick.

**Cursor.** A polling route may keep where it got to (``cursor``, e.g. "tracking polled up to here"); each
save bumps ``cursor_version``, and :meth:`ScheduleStore.save_cursor` with ``expect_version`` is a
compare-and-set, so a tick that read an older cursor never overwrites a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa

from routes.idempotency import MAX_KEY_LENGTH, UTCDateTime

if TYPE_CHECKING:
    from collections.abc import Callable

    from routes.idempotency import IdempotencyStore

#: the longest cursor a route may save
MAX_CURSOR_CHARS: Final = 4096

metadata: Final = sa.MetaData()

#: one row per scheduled route
schedules_table: Final = sa.Table(
    "schedules",
    metadata,
    sa.Column("route", sa.String(MAX_KEY_LENGTH), primary_key=True),
    sa.Column("owner", sa.String(MAX_KEY_LENGTH), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("next_run_at", UTCDateTime(), nullable=True),
    sa.Column("last_scheduled_at", UTCDateTime(), nullable=True),
    sa.Column("last_fired_at", UTCDateTime(), nullable=True),
    sa.Column("last_outcome", sa.String(64), nullable=True),
    sa.Column("last_outcome_at", UTCDateTime(), nullable=True),
    sa.Column("cursor", sa.Text, nullable=True),
    sa.Column("cursor_version", sa.Integer, nullable=False, server_default=sa.text("0")),
)

_c = schedules_table.c


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule's row as it is (``status``, tests).

    Attributes:
        route: the route's name.
        owner: the worker holding (or last holding) the lease.
        lease_until: when that lease ends (UTC); past means nobody owns the schedule now.
        next_run_at: the first scheduled time not fired yet.
        last_scheduled_at: the scheduled time of the last tick fired.
        last_fired_at: when that tick was published.
        last_outcome: what became of the last tick processed (``delivered``, ``retry``, ``dead_lettered``...),
            or ``skipped: misfire`` when the misfire policy dropped a late firing.
        last_outcome_at: when.
        cursor: the route's saved cursor.
        cursor_version: how many times the cursor was saved.
    """

    route: str
    owner: str | None
    lease_until: datetime | None
    next_run_at: datetime | None
    last_scheduled_at: datetime | None
    last_fired_at: datetime | None
    last_outcome: str | None
    last_outcome_at: datetime | None
    cursor: str | None
    cursor_version: int

    def owned(self, now: datetime) -> bool:
        """Whether someone holds a live lease at ``now``."""
        return self.owner is not None and self.lease_until is not None and self.lease_until > now


class ScheduleStore:
    """Leases, firing times, outcomes and cursors of the schedules; thread-safe, several processes at once.

    Args:
        store: the idempotency store whose database (SQLite or PostgreSQL) keeps the schedules' rows too.
        create: create the table when it is missing (safe when several processes start at once).
        clock: the current time (UTC-aware); the wall clock by default.
    """

    def __init__(
        self, store: IdempotencyStore, *, create: bool = True, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._store = store
        self._clock = clock
        if create:
            store.create_table(schedules_table)

    def exists(self) -> bool:
        """Whether the table is there (``status`` against a store no worker with schedules has opened)."""
        with self._store.begin() as conn:
            return sa.inspect(conn).has_table(schedules_table.name)

    def _now(self, now: datetime | None) -> datetime:
        return (now or self._clock()).astimezone(UTC)

    # -- ownership and firing -----------------------------------------------------------------------
    def ensure(self, route: str, next_run_at: datetime) -> None:
        """Create the route's row, first firing ``next_run_at``, unless it exists (a restart keeps its row)."""
        stmt = self._store.insert(schedules_table).values(route=route, next_run_at=next_run_at, cursor_version=0)
        with self._store.begin() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[_c.route]))

    def acquire(self, route: str, owner: str, *, lease_s: float, now: datetime | None = None) -> bool:
        """Take or renew the schedule's lease for ``owner``: True when ``owner`` holds it now."""
        now = self._now(now)
        stmt = (
            sa.update(schedules_table)
            .where(
                _c.route == route,
                sa.or_(_c.owner == owner, _c.owner.is_(None), _c.lease_until.is_(None), _c.lease_until <= now),
            )
            .values(owner=owner, lease_until=now + timedelta(seconds=lease_s))
        )
        with self._store.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def release(self, route: str, owner: str, *, now: datetime | None = None) -> bool:
        """End ``owner``'s lease now (a graceful stop), so another worker takes the schedule at its next wake-up."""
        now = self._now(now)
        stmt = (
            sa.update(schedules_table)
            .where(_c.route == route, _c.owner == owner, _c.lease_until > now)
            .values(lease_until=now)
        )
        with self._store.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def advance(
        self,
        route: str,
        owner: str,
        *,
        next_run_at: datetime,
        fired: datetime | None = None,
        skipped: bool = False,
        now: datetime | None = None,
    ) -> bool:
        """Move ``next_run_at`` on after a firing (``fired``: the tick's time) or a skip; only with a live lease.

        Returns:
            False when ``owner``'s lease ended meanwhile (another worker decides now) or the row already moved
            past ``next_run_at``.
        """
        now = self._now(now)
        values: dict[str, object] = {"next_run_at": next_run_at}
        if fired is not None:
            values |= {"last_scheduled_at": fired, "last_fired_at": now}
        if skipped:
            values |= {"last_outcome": "skipped: misfire", "last_outcome_at": now}
        stmt = (
            sa.update(schedules_table)
            .where(
                _c.route == route,
                _c.owner == owner,
                _c.lease_until > now,
                sa.or_(_c.next_run_at.is_(None), _c.next_run_at < next_run_at),
            )
            .values(**values)
        )
        with self._store.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    # -- what the pipeline writes ---------------------------------------------------------------------
    def record_outcome(self, route: str, outcome: str, *, now: datetime | None = None) -> None:
        """What became of a tick of ``route`` (``status`` shows the last one)."""
        now = self._now(now)
        stmt = (
            sa.update(schedules_table).where(_c.route == route).values(last_outcome=outcome[:64], last_outcome_at=now)
        )
        with self._store.begin() as conn:
            conn.execute(stmt)

    def cursor(self, route: str) -> tuple[str | None, int]:
        """The route's saved cursor and its version (None and 0 before the first save)."""
        with self._store.begin() as conn:
            row = conn.execute(sa.select(_c.cursor, _c.cursor_version).where(_c.route == route)).first()
        return (None, 0) if row is None else (row.cursor, int(row.cursor_version))

    def save_cursor(self, route: str, cursor: str, *, expect_version: int | None = None) -> bool:
        """Save the route's cursor; with ``expect_version``, only if nobody saved one since (compare-and-set).

        Raises:
            ValueError: a cursor longer than :data:`MAX_CURSOR_CHARS`.
        """
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError(f"a cursor is at most {MAX_CURSOR_CHARS} characters, got {len(cursor)}")
        where = [_c.route == route]
        if expect_version is not None:
            where.append(_c.cursor_version == expect_version)
        stmt = sa.update(schedules_table).where(*where).values(cursor=cursor, cursor_version=_c.cursor_version + 1)
        with self._store.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    # -- reading --------------------------------------------------------------------------------------
    def get(self, route: str) -> ScheduleRow | None:
        """The route's row, or None before any worker ran its schedule."""
        rows = self._select(_c.route == route)
        return rows[0] if rows else None

    def rows(self) -> list[ScheduleRow]:
        """Every schedule's row, by route name."""
        return self._select(sa.true())

    def _select(self, where: sa.ColumnElement[bool]) -> list[ScheduleRow]:
        stmt = sa.select(schedules_table).where(where).order_by(_c.route)
        with self._store.begin() as conn:
            return [ScheduleRow(**row._asdict()) for row in conn.execute(stmt)]
