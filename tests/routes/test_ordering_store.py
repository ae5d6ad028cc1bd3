"""The per-dossier order store on SQLite and PostgreSQL: latest's positions and leases, fifo's numbering.

routes/ordering.py promises that an older status is never sent after a newer one (latest) and that every event
is delivered in the order first seen (fifo), across threads and processes; these tests check each decision the
pipeline relies on, and that of many threads racing one dossier exactly one holds it at a time.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest
from concurrently import run_concurrently

from routes.idempotency import IdempotencyStore
from routes.ordering import OrderStore, Verdict, order_table, position_of

if TYPE_CHECKING:
    from collections.abc import Iterator

T0 = datetime(2026, 11, 26, 3, 0, 0, tzinfo=UTC)
VN = timezone(timedelta(hours=7))
TARGET = "nps"
D1 = "000.00.16.H16-261126-0001"


@pytest.fixture
def orders(store_url: str) -> Iterator[OrderStore]:
    """An order store on each back end, over a fresh idempotency store."""
    store = IdempotencyStore(store_url)
    yield OrderStore.of(store)
    store.close()


def _pos(minutes: int, status: int | None = 4, event_id: str | None = None) -> str:
    return position_of(T0 + timedelta(minutes=minutes), status, event_id or str(uuid.uuid4()))


# -- positions ----------------------------------------------------------------------------------------------
def test_position_sorts_by_time_then_status_then_event_id() -> None:
    """Text order is (occurred_at UTC, status, event_id), whatever the offset the time was written with."""
    a = "00000000-0000-0000-0000-000000000001"
    b = "00000000-0000-0000-0000-000000000002"
    assert position_of(T0, 9, b) < position_of(T0 + timedelta(microseconds=1), 1, a)
    assert position_of(T0, 9, b) < position_of(T0, 10, a)
    assert position_of(T0, 10, a) < position_of(T0, 10, b)
    assert position_of(T0.astimezone(VN), 4, a) == position_of(T0, 4, a)
    assert position_of(T0, None, a).split("/")[1] == "00"


def test_position_refuses_a_naive_time_and_a_status_of_three_digits() -> None:
    """A naive time cannot be placed on iGate's clock; a status over 99 would break the text order."""
    with pytest.raises(ValueError, match="timezone-aware"):
        position_of(datetime(2026, 1, 1), 4, str(uuid.uuid4()))
    with pytest.raises(ValueError, match="0-99"):
        position_of(T0, 100, str(uuid.uuid4()))


# -- latest -------------------------------------------------------------------------------------------------
def test_latest_first_event_passes_and_holds_the_lease(orders: OrderStore) -> None:
    """Nothing applied: PASS, and a second attempt is HELD until the first leaves."""
    p = _pos(0)
    assert orders.enter_latest(TARGET, D1, p, owner="w/a", lease_s=30, now=T0).verdict is Verdict.PASS
    held = orders.enter_latest(TARGET, D1, _pos(5), owner="w/b", lease_s=30, now=T0)
    assert held.verdict is Verdict.HELD
    assert held.holder == "w/a"
    assert orders.leave_latest(TARGET, D1, owner="w/a", applied=True)
    assert orders.applied(TARGET, D1) == p


def test_latest_older_is_superseded_newer_and_equal_pass(orders: OrderStore) -> None:
    """Applied at 10 min: an event at 5 min is SUPERSEDED (told the applied one); 10 (same) and 20 pass."""
    p10 = _pos(10)
    orders.enter_latest(TARGET, D1, p10, owner="w/a", lease_s=30, now=T0)
    orders.leave_latest(TARGET, D1, owner="w/a", applied=True)
    older = orders.enter_latest(TARGET, D1, _pos(5), owner="w/b", lease_s=30, now=T0)
    assert older.verdict is Verdict.SUPERSEDED
    assert older.applied == p10
    assert orders.enter_latest(TARGET, D1, p10, owner="w/c", lease_s=30, now=T0).verdict is Verdict.PASS
    orders.leave_latest(TARGET, D1, owner="w/c", applied=True)
    assert orders.enter_latest(TARGET, D1, _pos(20), owner="w/d", lease_s=30, now=T0).verdict is Verdict.PASS


def test_latest_leave_without_effect_keeps_the_position(orders: OrderStore) -> None:
    """An attempt that surely applied nothing (refused before sending) does not move the position."""
    p10 = _pos(10)
    orders.enter_latest(TARGET, D1, p10, owner="w/a", lease_s=30, now=T0)
    orders.leave_latest(TARGET, D1, owner="w/a", applied=True)
    orders.enter_latest(TARGET, D1, _pos(20), owner="w/b", lease_s=30, now=T0)
    orders.leave_latest(TARGET, D1, owner="w/b", applied=False)
    assert orders.applied(TARGET, D1) == p10
    assert orders.enter_latest(TARGET, D1, _pos(15), owner="w/c", lease_s=30, now=T0).verdict is Verdict.PASS


def test_latest_a_dead_holder_counts_as_applied_once_its_lease_ended(orders: OrderStore) -> None:
    """Crash between send and record: the lease ends, and the next attempt treats the holder's position as
    applied (it may have been sent), so an older event is superseded rather than sent after it."""
    p20 = _pos(20)
    orders.enter_latest(TARGET, D1, p20, owner="dead/a", lease_s=30, now=T0)
    # still live: held
    assert orders.enter_latest(TARGET, D1, _pos(5), owner="w/b", lease_s=30, now=T0).verdict is Verdict.HELD
    later = T0 + timedelta(seconds=31)
    d = orders.enter_latest(TARGET, D1, _pos(5), owner="w/b", lease_s=30, now=later)
    assert d.verdict is Verdict.SUPERSEDED
    assert d.applied == p20
    assert orders.applied(TARGET, D1) == p20
    # the dead holder's late leave changes nothing (it lost the lease)
    assert not orders.leave_latest(TARGET, D1, owner="dead/a", applied=False)
    assert orders.applied(TARGET, D1) == p20
    # its own redelivery is not older: it passes, and its claim decides whether anything is sent again
    assert orders.enter_latest(TARGET, D1, p20, owner="w/c", lease_s=30, now=later).verdict is Verdict.PASS


def test_latest_targets_and_dossiers_are_independent(orders: OrderStore) -> None:
    """A lease on (nps, D1) does not hold (nps, D2) nor (other, D1)."""
    orders.enter_latest(TARGET, D1, _pos(10), owner="w/a", lease_s=30, now=T0)
    assert orders.enter_latest(TARGET, "D2", _pos(1), owner="w/b", lease_s=30, now=T0).verdict is Verdict.PASS
    assert orders.enter_latest("other", D1, _pos(1), owner="w/c", lease_s=30, now=T0).verdict is Verdict.PASS


def test_latest_threads_racing_one_dossier_never_hold_it_together(orders: OrderStore) -> None:
    """16 threads × 10 events of one dossier in random time order: never two holders at once, and each
    event that passed is newer than (or equal to) every event applied before it passed."""
    lock = threading.Lock()
    holders: list[str] = []
    overlaps: list[str] = []
    passed: list[tuple[str, str | None]] = []
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for j in range(10):
                pos = _pos((k * 7 + j * 13) % 50)
                owner = f"t{k}/{j}"
                while True:
                    d = orders.enter_latest(TARGET, D1, pos, owner=owner, lease_s=60)
                    if d.verdict is not Verdict.HELD:
                        break
                if d.verdict is Verdict.PASS:
                    with lock:
                        if holders:
                            overlaps.append(owner)
                        holders.append(owner)
                        passed.append((pos, d.applied))
                    with lock:
                        holders.remove(owner)
                    orders.leave_latest(TARGET, D1, owner=owner, applied=True)
        except BaseException as exc:
            errors.append(exc)

    run_concurrently(run, [(k,) for k in range(16)], timeout=60)
    assert not errors, errors
    assert not overlaps, f"two holders at once: {overlaps[:3]}"
    assert passed, "nothing passed"
    regressions = [(p, a) for p, a in passed if a is not None and p < a]
    assert not regressions, f"older positions passed after newer ones: {regressions[:3]}"
    assert orders.applied(TARGET, D1) == max(p for p, _ in passed)


# -- fifo ---------------------------------------------------------------------------------------------------
def test_fifo_numbers_events_in_the_order_first_seen_and_waits_for_earlier(orders: OrderStore) -> None:
    """A, B, C first seen in that order: A passes; B and C wait for A; A done ▶ B passes, C waits for B."""
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    assert orders.enter_fifo(TARGET, D1, a).verdict is Verdict.PASS
    wb = orders.enter_fifo(TARGET, D1, b)
    wc = orders.enter_fifo(TARGET, D1, c)
    assert (wb.verdict, wb.earlier, wb.seq) == (Verdict.WAIT, a, 2)
    assert (wc.verdict, wc.earlier, wc.seq) == (Verdict.WAIT, a, 3)
    # seeing B again keeps its number
    assert orders.enter_fifo(TARGET, D1, b).seq == 2
    assert orders.settle_fifo(TARGET, D1, a, state="done") == b
    assert orders.enter_fifo(TARGET, D1, b).verdict is Verdict.PASS
    assert orders.enter_fifo(TARGET, D1, c).earlier == b
    assert orders.fifo_states(TARGET, D1) == [(1, a, "done"), (2, b, "pending"), (3, c, "pending")]


def test_fifo_a_dead_letter_releases_the_next_and_its_replay_takes_its_place(orders: OrderStore) -> None:
    """A released (dead-lettered) ▶ B passes; A replayed ▶ pending at seq 1 again, passing (nothing earlier)."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    orders.enter_fifo(TARGET, D1, a)
    orders.enter_fifo(TARGET, D1, b)
    assert orders.settle_fifo(TARGET, D1, a, state="released") == b
    assert orders.enter_fifo(TARGET, D1, b).verdict is Verdict.PASS
    replay = orders.enter_fifo(TARGET, D1, a)
    assert (replay.verdict, replay.seq) == (Verdict.PASS, 1)
    assert orders.fifo_states(TARGET, D1)[0] == (1, a, "pending")


def test_fifo_a_done_event_seen_again_passes_and_stays_done(orders: OrderStore) -> None:
    """A redelivered event that was delivered passes (its claim re-emits) and does not block later ones."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    orders.enter_fifo(TARGET, D1, a)
    orders.settle_fifo(TARGET, D1, a, state="done")
    orders.enter_fifo(TARGET, D1, b)
    assert orders.enter_fifo(TARGET, D1, a).verdict is Verdict.PASS
    assert orders.enter_fifo(TARGET, D1, b).verdict is Verdict.PASS


def test_fifo_settle_refuses_an_unknown_state(orders: OrderStore) -> None:
    """Only done and released settle an event."""
    with pytest.raises(ValueError, match="done or released"):
        orders.settle_fifo(TARGET, D1, str(uuid.uuid4()), state="pending")


def test_fifo_threads_numbering_one_dossier_give_each_event_one_distinct_number(orders: OrderStore) -> None:
    """8 threads first-seeing 25 events each of one dossier: 200 numbers, 1..200, none twice."""
    seqs: dict[str, int] = {}
    lock = threading.Lock()

    def run() -> None:
        for _ in range(25):
            eid = str(uuid.uuid4())
            d = orders.enter_fifo(TARGET, D1, eid)
            with lock:
                seqs[eid] = int(d.seq or 0)

    run_concurrently(run, [()] * 8, timeout=60)
    assert sorted(seqs.values()) == list(range(1, 201))


def test_fifo_an_earlier_event_unseen_for_two_windows_is_released_by_the_next(orders: OrderStore) -> None:
    """A's attempts vouch for it 60 s at a time. B within that waits; B after it doubts A and gives it one
    more window (the workers may just be back from an outage); A still unseen at its end (its message lost)
    ▶ B releases it and passes, naming it; A coming back later is pending again, at its place."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    orders.enter_fifo(TARGET, D1, a, release_after_s=60, now=T0)
    early = orders.enter_fifo(TARGET, D1, b, release_after_s=60, now=T0 + timedelta(seconds=59))
    assert (early.verdict, early.earlier, early.released) == (Verdict.WAIT, a, ())
    doubt = orders.enter_fifo(TARGET, D1, b, release_after_s=60, now=T0 + timedelta(seconds=61))
    assert (doubt.verdict, doubt.earlier, doubt.released) == (Verdict.WAIT, a, ())
    still = orders.enter_fifo(TARGET, D1, b, release_after_s=60, now=T0 + timedelta(seconds=120))
    assert (still.verdict, still.released) == (Verdict.WAIT, ())
    late = orders.enter_fifo(TARGET, D1, b, release_after_s=60, now=T0 + timedelta(seconds=122))
    assert (late.verdict, late.released) == (Verdict.PASS, (a,))
    assert orders.fifo_states(TARGET, D1) == [(1, a, "released"), (2, b, "pending")]
    back = orders.enter_fifo(TARGET, D1, a, release_after_s=60, now=T0 + timedelta(seconds=123))
    assert (back.verdict, back.seq, back.returned) == (Verdict.PASS, 1, True)


def test_fifo_a_doubted_event_seen_again_is_vouched_for_afresh(orders: OrderStore) -> None:
    """After an outage B doubts A (unseen 2 h); A comes back within the extra window ▶ no longer doubted: B
    waits for it a whole window again instead of releasing it."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    orders.enter_fifo(TARGET, D1, a, release_after_s=60, now=T0)
    assert orders.enter_fifo(TARGET, D1, b, release_after_s=60, now=T0 + timedelta(hours=2)).verdict is Verdict.WAIT
    orders.enter_fifo(TARGET, D1, a, release_after_s=60, now=T0 + timedelta(hours=2, seconds=30))
    after = orders.enter_fifo(TARGET, D1, b, release_after_s=60, now=T0 + timedelta(hours=2, seconds=100))
    assert (after.verdict, after.released) == (Verdict.WAIT, ())


def test_fifo_each_attempt_of_the_earlier_event_vouches_for_it_again(orders: OrderStore) -> None:
    """A retried (seen again at +50 s) is alive until +110 s: B still waits at +100 s."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    orders.enter_fifo(TARGET, D1, a, release_after_s=60, now=T0)
    orders.enter_fifo(TARGET, D1, a, release_after_s=60, now=T0 + timedelta(seconds=50))
    wait = orders.enter_fifo(TARGET, D1, b, release_after_s=60, now=T0 + timedelta(seconds=100))
    assert (wait.verdict, wait.earlier) == (Verdict.WAIT, a)


def test_fifo_settle_says_which_number_it_settled(orders: OrderStore) -> None:
    """Settling a pending event names its number; an event never seen, or settled already, changes nothing."""
    a = str(uuid.uuid4())
    orders.enter_fifo(TARGET, D1, a)
    assert orders.settle_fifo_seq(TARGET, D1, a, state="released") == (1, None)
    assert orders.settle_fifo_seq(TARGET, D1, a, state="released") == (None, None)
    assert orders.settle_fifo_seq(TARGET, D1, str(uuid.uuid4()), state="released") == (None, None)


def test_fifo_table_of_an_earlier_release_gets_alive_until(store_url: str) -> None:
    """A dossier_fifo table made without alive_until gains it on open; its pending rows count from seen_at."""
    import sqlalchemy as sa

    from routes.idempotency import UTCDateTime

    old = sa.MetaData()
    old_fifo = sa.Table(
        "dossier_fifo",
        old,
        sa.Column("target", sa.String(64), primary_key=True),
        sa.Column("dossier_code", sa.String(200), primary_key=True),
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.Column("settled_at", UTCDateTime(), nullable=True),
    )
    a = str(uuid.uuid4())
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(
            sa.insert(old_fifo).values(target=TARGET, dossier_code=D1, event_id=a, seq=1, state="pending", seen_at=T0)
        )
    engine.dispose()
    store = IdempotencyStore(store_url)
    try:
        orders = OrderStore(store)
        with store.begin() as conn:  # the dossier's counter, as the earlier release left it
            conn.execute(sa.insert(order_table).values(target=TARGET, dossier_code=D1, next_seq=1, updated_at=T0))
        b = str(uuid.uuid4())
        wait = orders.enter_fifo(TARGET, D1, b, release_after_s=600, now=T0 + timedelta(seconds=599))
        assert (wait.verdict, wait.seq) == (Verdict.WAIT, 2)
        doubt = orders.enter_fifo(TARGET, D1, b, release_after_s=600, now=T0 + timedelta(seconds=601))
        assert (doubt.verdict, doubt.released) == (Verdict.WAIT, ())
        gone = orders.enter_fifo(TARGET, D1, b, release_after_s=600, now=T0 + timedelta(seconds=1202))
        assert gone.released == (a,)
    finally:
        store.close()


def test_the_lease_is_stored_in_the_core_form_and_read_back_aware(orders: OrderStore) -> None:
    """The dossier row's lock-and-read and update (the driver's SQL) write the lease as SQLAlchemy's own
    statements do and read it back UTC-aware: a lease taken at a whole second, read by a Core select, holds
    until exactly then (HELD a microsecond before its end, PASS at it)."""
    import sqlalchemy as sa

    lease_from = datetime(2026, 11, 26, 3, 0, 0, tzinfo=UTC)
    assert orders.enter_latest(TARGET, D1, _pos(1), owner="w1", lease_s=30, now=lease_from).verdict is Verdict.PASS
    with orders._store.begin() as conn:
        lease_until = conn.execute(
            sa.select(order_table.c.lease_until).where(order_table.c.dossier_code == D1)
        ).scalar()
    assert lease_until == lease_from + timedelta(seconds=30)
    just_before = lease_until - timedelta(microseconds=1)
    assert orders.enter_latest(TARGET, D1, _pos(2), owner="w2", lease_s=30, now=just_before).verdict is Verdict.HELD
    assert orders.enter_latest(TARGET, D1, _pos(2), owner="w2", lease_s=30, now=lease_until).verdict is Verdict.PASS
