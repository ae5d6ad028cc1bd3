"""The schedules' rows, on SQLite and PostgreSQL: one lease holder at a time, firing times, outcomes, cursor CAS.

What concurrency could break (the lease, its race, moving forwards only, the cursor's compare-and-set, table
creation) runs on both back ends (the ``store_url`` fixture); plain reads and writes on SQLite. The race test
has threads hammer ``acquire`` through separate pooled connections, as several workers would.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from concurrently import run_concurrently

from routes.idempotency import IdempotencyStore
from routes.schedule_store import ScheduleStore

if TYPE_CHECKING:
    from collections.abc import Iterator

T0 = datetime(2026, 11, 28, 19, 0, tzinfo=UTC)


def _opened(url: str) -> Iterator[ScheduleStore]:
    idem = IdempotencyStore(url)
    schedules = ScheduleStore(idem)
    schedules.ensure("poll", T0)
    try:
        yield schedules
    finally:
        idem.close()


@pytest.fixture
def store(store_url: str) -> Iterator[ScheduleStore]:
    """A schedule store with one schedule row, on each back end (for what concurrency could break)."""
    yield from _opened(store_url)


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[ScheduleStore]:
    """A schedule store with one schedule row, on SQLite only (plain reads and writes: Core is the same SQL)."""
    yield from _opened(sqlite_url)


def _take(store: ScheduleStore, name: str, now: datetime, won: list[str], barrier: threading.Barrier) -> None:
    barrier.wait()
    if store.acquire("poll", name, lease_s=5, now=now):
        won.append(name)


class TestLease:
    """One owner at a time; a lease that ended is taken over; a graceful stop hands over at once."""

    def test_one_owner_until_its_lease_ends(self, store: ScheduleStore) -> None:
        """A holds it; B is refused while A's lease lives and wins once it ended; A then lost it."""
        assert store.acquire("poll", "A", lease_s=10, now=T0)
        assert not store.acquire("poll", "B", lease_s=10, now=T0 + timedelta(seconds=9))
        assert store.acquire("poll", "A", lease_s=10, now=T0 + timedelta(seconds=9))  # renewed to T0+19
        assert not store.acquire("poll", "B", lease_s=10, now=T0 + timedelta(seconds=18))
        assert store.acquire("poll", "B", lease_s=10, now=T0 + timedelta(seconds=19))
        assert not store.acquire("poll", "A", lease_s=10, now=T0 + timedelta(seconds=20))
        row = store.get("poll")
        assert row is not None
        assert (row.owner, row.lease_until) == ("B", T0 + timedelta(seconds=29))

    def test_release_hands_over_at_once(self, sqlite_store: ScheduleStore) -> None:
        """A worker stopping gracefully ends its lease: the next worker to wake takes the schedule."""
        assert sqlite_store.acquire("poll", "A", lease_s=60, now=T0)
        assert not sqlite_store.release("poll", "B", now=T0)  # not B's to release
        assert sqlite_store.release("poll", "A", now=T0 + timedelta(seconds=1))
        assert sqlite_store.acquire("poll", "B", lease_s=60, now=T0 + timedelta(seconds=1))

    def test_racing_workers_never_both_win(self, store: ScheduleStore) -> None:
        """8 threads try to take the lease at each of 25 instants: exactly one wins each time."""
        winners: list[list[str]] = []
        for step in range(25):
            now = T0 + timedelta(seconds=10 * step)  # each step is after the last lease (5 s) ended
            won: list[str] = []
            barrier = threading.Barrier(8)

            run_concurrently(_take, [(store, f"W{i}", now, won, barrier) for i in range(8)], timeout=60)
            winners.append(won)
        assert [len(w) for w in winners] == [1] * 25, winners

    def test_ensure_keeps_an_existing_row(self, sqlite_store: ScheduleStore) -> None:
        """A restarted worker keeps the row's next firing, so it knows what it missed while down."""
        sqlite_store.ensure("poll", T0 + timedelta(days=1))
        row = sqlite_store.get("poll")
        assert row is not None
        assert row.next_run_at == T0


class TestFiring:
    """``advance`` moves the next firing on only for the live holder, and only forwards."""

    def test_the_holder_advances(self, sqlite_store: ScheduleStore) -> None:
        """After publishing the 19:00 tick the holder records it and the next firing."""
        assert sqlite_store.acquire("poll", "A", lease_s=10, now=T0)
        assert sqlite_store.advance("poll", "A", next_run_at=T0 + timedelta(minutes=5), fired=T0, now=T0)
        row = sqlite_store.get("poll")
        assert row is not None
        assert (row.next_run_at, row.last_scheduled_at, row.last_fired_at) == (T0 + timedelta(minutes=5), T0, T0)

    def test_a_holder_whose_lease_ended_cannot_advance(self, sqlite_store: ScheduleStore) -> None:
        """A paused holder waking after its lease cannot move the schedule: the new holder decides."""
        assert sqlite_store.acquire("poll", "A", lease_s=10, now=T0)
        later = T0 + timedelta(seconds=11)
        assert not sqlite_store.advance("poll", "A", next_run_at=T0 + timedelta(minutes=5), fired=T0, now=later)
        assert not sqlite_store.advance("poll", "B", next_run_at=T0 + timedelta(minutes=5), fired=T0, now=T0)

    def test_never_backwards(self, store: ScheduleStore) -> None:
        """Two holders across a lease change both fired 19:00: the second advance changes nothing."""
        assert store.acquire("poll", "A", lease_s=10, now=T0)
        assert store.advance("poll", "A", next_run_at=T0 + timedelta(minutes=5), fired=T0, now=T0)
        assert not store.advance("poll", "A", next_run_at=T0 + timedelta(minutes=5), fired=T0, now=T0)

    def test_a_skip_is_recorded_as_the_last_outcome(self, sqlite_store: ScheduleStore) -> None:
        """The misfire policy ``skip`` shows in ``status`` as the last outcome."""
        assert sqlite_store.acquire("poll", "A", lease_s=10, now=T0)
        assert sqlite_store.advance("poll", "A", next_run_at=T0 + timedelta(minutes=5), skipped=True, now=T0)
        row = sqlite_store.get("poll")
        assert row is not None
        assert (row.last_outcome, row.last_scheduled_at) == ("skipped: misfire", None)


class TestCursor:
    """A cursor save is a compare-and-set on its version: an older reader never overwrites a newer save."""

    def test_first_save_and_read_back(self, sqlite_store: ScheduleStore) -> None:
        """No cursor before the first save; then the saved one, version 1."""
        assert sqlite_store.cursor("poll") == (None, 0)
        assert sqlite_store.save_cursor("poll", "EE123456785VN/0005", expect_version=0)
        assert sqlite_store.cursor("poll") == ("EE123456785VN/0005", 1)

    def test_a_stale_reader_loses(self, store: ScheduleStore) -> None:
        """Two ticks read version 0; the first saves; the second's save is refused and the first's stays."""
        assert store.save_cursor("poll", "a", expect_version=0)
        assert not store.save_cursor("poll", "b", expect_version=0)
        assert store.cursor("poll") == ("a", 1)

    def test_an_oversized_cursor_is_refused(self, sqlite_store: ScheduleStore) -> None:
        """A cursor is a position, not a payload."""
        with pytest.raises(ValueError, match="at most 4096"):
            sqlite_store.save_cursor("poll", "x" * 5000)

    def test_outcomes_and_rows(self, sqlite_store: ScheduleStore) -> None:
        """``record_outcome`` is what ``status`` shows as the last outcome."""
        sqlite_store.record_outcome("poll", "delivered", now=T0)
        sqlite_store.ensure("another", T0)
        rows = sqlite_store.rows()
        assert [r.route for r in rows] == ["another", "poll"]
        assert (rows[1].last_outcome, rows[1].last_outcome_at) == ("delivered", T0)

    def test_the_table_is_created_once_by_many_processes(self, store_url: str) -> None:
        """Opening the store again (another worker starting) keeps the rows."""
        idem = IdempotencyStore(store_url)
        try:
            first = ScheduleStore(idem)
            first.ensure("poll", T0)
            again = ScheduleStore(idem)
            assert again.exists()
            assert again.get("poll") is not None
        finally:
            idem.close()
