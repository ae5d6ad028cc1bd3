"""Per-dossier order toward a target: ``latest`` (never an older status after a newer one) and ``fifo``.

Where it sits: one step of the pipeline of a route whose routes.yaml entry has ``order:`` (routes/pipeline.py):
validate ▶ when ▶ **order: enter** ▶ claim ▶ reconcile ▶ send ▶ record ▶ emit ▶ **order: leave**. Each portal
event type has its own route, so without this a ``dossier.step_changed`` can reach the portal after the
``dossier.returned`` of the same dossier. Routes that name the same ``target`` share one row per dossier in
the table ``dossier_order`` (same database as the claims), so the order holds across routes, threads,
processes and hosts.

**Mode latest** (status routes: only the newest state matters). The row keeps the *position* of the newest
event applied (or maybe applied) for (target, dossier). An event whose position is older is not sent: the
route acks it as ``superseded`` with a ``bus.superseded`` result event and one log line. Otherwise the event
takes the row's *lease* (holder, lease end, its position as ``pending``) from the check until the attempt
leaves, so two threads sending two events of one dossier to the same target cannot both pass the check: the
second waits (briefly in the thread, then parked in a delay queue without spending an attempt). On leave the
position moves to the event's when the effect is applied *or may have been*: delivered, a duplicate of a done
claim, or a claim the idempotency store keeps "maybe applied" (routes/idempotency.py); an attempt that
surely sent nothing (refused before sending, rejected by the target) leaves the position as it was.
A worker that dies holding the lease (crash between send and record) cannot say what it sent: the next
attempt that finds the lease ended counts the holder's pending position as applied before it compares
("maybe applied", as the claims do). The claims still decide what is sent: a redelivered event whose position
equals the applied one passes the order and its claim says DONE or RECLAIMED as before.

**Position** = ``occurred_at`` (UTC, to the microsecond), then the national ``status``, then ``event_id``,
written as one text that sorts in that order (``2025-12-11T03:20:00.000000Z/10/<uuid>``). Why ``occurred_at``:
iGate gives no per-dossier sequence (docs/domain.md section 7: the envelope has none), while ``occurred_at``
is the time of the change on iGate's own clock, the one clock every event of a dossier shares, bounded at the
bus's edge (no later than its receipt plus a small skew). Why ``status`` next: two changes of one dossier in
the same instant (iGate writes times to the second) are ordered by the national 1-10 scale, which follows a
dossier's life for the pairs that happen together (received after submitted, returned after result ready).
Why ``event_id`` last: the order must be total and the same on every worker, or two equal positions could
each pass on a different worker; equal positions are the same event (sent again, or the same event on two
routes of one target, e.g. ``dossier.result_ready`` as a record and as a progress step), which passes.

**Mode fifo** (changes that all matter, in order: the land system's and VNPost's to iGate). Every event is
delivered, in the order the route *first saw* it per dossier: "first saw" is the commit of the event's first
``enter`` in the store, which gives it the dossier's next sequence number under the dossier row's lock (one
at a time per dossier, whatever thread, process or host). An event may be sent only when every event of the
dossier with a lower number is settled; until then it waits without spending an attempt (in place while the
earlier one is in a call in this process, which settles it soon; otherwise parked in a delay queue at once, so
a one-thread route's thread is not held for an event that is minutes away). Delivered (or a duplicate of a
delivered one) settles it ``done``; a dead letter settles it ``released``, which lets the next one go, with a
log line naming both (``order_released``), also when the dead letter failed in the order step itself; a
retry keeps it pending, so later ones keep waiting. A dead letter replayed takes its old number again and
waits for nothing older (everything older is settled).

**No event waits forever.** Each attempt of a pending event vouches for it for ``release_after`` (its row's
``alive_until``; default twice one call's lease plus the route's longest backoff, at least 10 minutes): a
live event comes back within that, from its call or its delay queue. The next event of its dossier that
finds an earlier one unvouched first doubts it (``doubted_at``) and gives it one more window, because the
workers may only now be back from an outage that also kept it away; still unseen at the end of that window
(its message lost or purged, its route no longer consumed), it is released, with ``order_released_unseen``
naming it. So a later event waits at most twice ``release_after`` plus one park. If the released one does come
back, it is pending again at its old place, waits for nothing, and is sent late (``order_returned``).

**Threads.** A route's threads take deliveries from its queue at once; the worker stamps each with its
arrival as it hands it to a thread (:class:`Arrivals`), and a thread numbers its event only once every
delivery received before it has taken its number or shown that it belongs to another dossier. So within
one worker process the number follows the queue's order whatever the route's ``concurrency``: a thread
stalled before its enter (a loaded machine) no longer lets the same dossier's next update go first.

**Limits.** The bus orders what it sees: events that reach it already out of order (iGate publishing a newer
change before an older one, or the older one stuck in another route's retry queue in fifo) are in latest mode
judged by ``occurred_at`` (the older one is superseded, which is the point) but in fifo mode delivered in the
order first seen; two worker processes consuming one queue may register a dossier's events in either order
(the arrival order holds within a process), and a fifo event given up as unseen that comes back after all is
sent after its dossier's later ones.
Latest mode trusts iGate's clock: an event stamped in the future (within the edge's skew) wins over later
ones until time catches up. An event that may have been applied and is then dead-lettered still counts as
applied, so an older one after it is superseded (a replay of the dead letter is not older, and is sent).
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
import structlog

from routes.idempotency import DriverForms, IdempotencyStore, UTCDateTime
from schemas.errors import ClaimHeld, InvalidEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection

    from config.model import OrderSpec
    from schemas.envelope import Envelope

__all__ = [
    "Decision",
    "OrderStep",
    "OrderStore",
    "Ticket",
    "Verdict",
    "order_metadata",
    "position_of",
]

#: how long a thread waits in place for a dossier's lease before parking the message (a lease lasts one call)
ORDER_WAIT_S: Final = 2.0
#: fifo's wait in place for an earlier event, only while that one is in a call in this process (it settles soon);
#: one in a delay queue or at another worker is not waited for in place: the later one is parked at once
FIFO_WAIT_S: Final = 0.5
#: fifo: the longest a thread waits for the deliveries its consumer received before its own to take their
#: numbers (a bound against a bug, not a wait that happens: theirs is a parse and one transaction)
ARRIVAL_WAIT_S: Final = 5.0
#: fifo: the least time an earlier pending event may go unseen (no attempt of it entered the order) before its
#: dossier's later events stop waiting for it; a route's own bound is longer when its retries are
RELEASE_AFTER_MIN_S: Final = 600.0
#: pause before the second look at a busy dossier; it doubles up to ORDER_POLL_MAX_S (each look is a write)
ORDER_POLL_S: Final = 0.02
ORDER_POLL_MAX_S: Final = 0.25
#: fifo states of one event
PENDING: Final = "pending"
DONE: Final = "done"
RELEASED: Final = "released"
_FIFO_STATES: Final = (PENDING, DONE, RELEASED)
_KEY_LENGTH: Final = 200

_log = structlog.get_logger("igate_bus.order")

order_metadata: Final = sa.MetaData()


def _dossier_key() -> tuple[sa.Column[str], sa.Column[str]]:
    """The columns that name one dossier toward one target, leading each table's primary key."""
    return (
        sa.Column("target", sa.String(64), primary_key=True),
        sa.Column("dossier_code", sa.String(_KEY_LENGTH), primary_key=True),
    )


#: one row per (target, dossier): latest's applied position and lease; fifo's sequence counter
order_table: Final = sa.Table(
    "dossier_order",
    order_metadata,
    *_dossier_key(),
    sa.Column("applied", sa.String(_KEY_LENGTH), nullable=True),
    sa.Column("holder", sa.String(_KEY_LENGTH), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("pending", sa.String(_KEY_LENGTH), nullable=True),
    sa.Column("next_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

#: fifo: one row per event a route of the target saw, numbered per dossier in the order first seen
fifo_table: Final = sa.Table(
    "dossier_fifo",
    order_metadata,
    *_dossier_key(),
    sa.Column("event_id", sa.String(_KEY_LENGTH), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("seen_at", UTCDateTime(), nullable=False),
    sa.Column("settled_at", UTCDateTime(), nullable=True),
    #: pending: until when its last attempt vouches for it; past that, a later event of its dossier doubts it
    sa.Column("alive_until", UTCDateTime(), nullable=True),
    #: pending: when a later event first found it unvouched (and gave it one more window); cleared when it is seen
    sa.Column("doubted_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(f"state IN ({', '.join(repr(s) for s in _FIFO_STATES)})", name="dossier_fifo_state_valid"),
    sa.Index("dossier_fifo_by_seq", "target", "dossier_code", "seq"),
)

_o = order_table.c
_f = fifo_table.c


def _add_liveness(conn: Connection) -> None:
    """Add ``alive_until`` and ``doubted_at`` to a ``dossier_fifo`` table made by an earlier release.

    Its pending rows then count from ``seen_at`` (:meth:`OrderStore.enter_fifo`).
    """
    inspector = sa.inspect(conn)
    if not inspector.has_table(fifo_table.name):
        return
    columns = {c["name"] for c in inspector.get_columns(fifo_table.name)}
    for column in (_f.alive_until, _f.doubted_at):
        if column.name not in columns:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {fifo_table.name} ADD COLUMN {column.name} {kind}"))
            _log.info("store_upgraded", table=fifo_table.name, added=column.name)


def position_of(occurred_at: datetime, status: int | None, event_id: str) -> str:
    """An event's position in latest mode, as text that sorts like (occurred_at, status, event_id).

    Raises:
        ValueError: a naive time, or a status outside 0-99.
    """
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        raise ValueError(f"occurred_at must be timezone-aware, got {occurred_at!r}")
    level = 0 if status is None else status
    if not 0 <= level <= 99:
        raise ValueError(f"status must be within 0-99, got {status!r}")
    at = occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{at}/{level:02d}/{uuid.UUID(event_id)!s}"


def _newest(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


#: lock a dossier's row (PostgreSQL's row lock; SQLite's write lock) and read it back: one statement, built once
class Verdict(StrEnum):
    """What the order says about one event."""

    PASS = "pass"  # noqa: S105 - a verdict, not a password; go on: the caller holds the dossier's lease (latest) or everything earlier is settled (fifo)
    SUPERSEDED = "superseded"  # latest: something newer was applied; ack without sending
    HELD = "held"  # latest: another attempt holds the dossier's lease
    WAIT = "wait"  # fifo: an earlier event of the dossier is still pending


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :meth:`OrderStore.enter_latest` or :meth:`OrderStore.enter_fifo`.

    Attributes:
        verdict: What to do.
        applied: latest: the newest position applied so far (None when nothing was).
        holder: latest, HELD: who holds the lease.
        seq: fifo: the event's number within its dossier.
        earlier: fifo, WAIT: the earliest pending event before this one.
        released: fifo: earlier events this call released because nothing vouched for them any more.
        returned: fifo: the event had been released (dead-lettered, or unseen too long) and is pending again.
    """

    verdict: Verdict
    applied: str | None = None
    holder: str | None = None
    seq: int | None = None
    earlier: str | None = None
    released: tuple[str, ...] = ()
    returned: bool = False


_stores: weakref.WeakKeyDictionary[IdempotencyStore, OrderStore] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class _OrderRow:
    """A dossier's row as :meth:`OrderStore._row` read it (locked until the transaction ends)."""

    applied: str | None
    holder: str | None
    lease_until: datetime | None
    pending: str | None
    next_seq: int


class _RowSQL:
    """The dossier row's two statements (lock-and-read, update) as the driver's SQL, made once per store.

    Why: through SQLAlchemy's expression layer each execution builds a cache key, an execution context and a
    result; on the portal's status routes the order step's two transactions per message were a quarter of
    the worker's time (issue 15). The idempotency store's hot path does the same (``_DriverSQL``): the same
    columns and conflict rule as the Core statements it replaced, values in the same forms
    (:class:`routes.idempotency.DriverForms`), so every other statement reads these rows as its own. The table
    and column names are ours; every value is a bound parameter.
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        forms = DriverForms.of(dialect)
        self._ph, self.when, self.read_when = forms.placeholder, forms.when, forms.read_when
        ph, table = self._ph, order_table.name
        self.lock_row = (
            f"INSERT INTO {table} (target, dossier_code, next_seq, updated_at) VALUES ({ph}, {ph}, 0, {ph})"  # noqa: S608
            " ON CONFLICT (target, dossier_code) DO UPDATE SET updated_at = excluded.updated_at"
            " RETURNING applied, holder, lease_until, pending, next_seq"
        )
        #: ``UPDATE`` of the dossier's row, one per set of columns (made at its first use)
        self._updates: dict[tuple[str, ...], str] = {}

    def update(self, columns: tuple[str, ...]) -> str:
        """The ``UPDATE`` of ``columns`` (then the target and dossier code as the last two parameters)."""
        sql = self._updates.get(columns)
        if sql is None:  # a race makes it twice, the same text
            for column in columns:
                if column not in order_table.c:
                    raise ValueError(f"{order_table.name} has no column {column!r}")
            sets = ", ".join(f"{column} = {self._ph}" for column in columns)
            where = f"target = {self._ph} AND dossier_code = {self._ph}"
            sql = self._updates[columns] = f"UPDATE {order_table.name} SET {sets} WHERE {where}"  # noqa: S608
        return sql


#: the columns of the dossier's row that hold times (written through :attr:`_RowSQL.when`)
_TIME_COLUMNS: Final = frozenset(c.name for c in order_table.c if isinstance(c.type, UTCDateTime))


class OrderStore:
    """The per-dossier positions and leases, in the idempotency store's database; thread-safe.

    Each call is one short transaction that first locks the dossier's row (one ``INSERT ... ON CONFLICT DO
    UPDATE ... RETURNING`` that makes it when missing: PostgreSQL's row lock, and on SQLite the database's
    write lock from the first statement), so every decision about one (target, dossier) is taken one at a
    time across threads, processes and hosts. The statements are built once per store, not per call: on the
    portal's status routes building and compiling them per event cost more than the portal call (issue 15).

    Args:
        store: The idempotency store whose database holds the tables (created when missing).
    """

    def __init__(self, store: IdempotencyStore) -> None:
        self._store = store
        for table in order_metadata.sorted_tables:
            store.create_table(table, upgrade=_add_liveness if table is fifo_table else None)
        #: fifo events between their PASS and their leave in a thread of this process (a count per event)
        self._calls: dict[tuple[str, str, str], int] = {}
        self._calls_lock = threading.Lock()
        #: make the dossier's row when missing, lock it and read it (the dialect's upsert), and update it
        self._sql = _RowSQL(store.dialect)

    @classmethod
    def of(cls, store: IdempotencyStore) -> OrderStore:
        """The one order store of ``store`` (made at the first call), shared by every route of the process."""
        with _stores_lock:
            found = _stores.get(store)
            if found is None:
                found = _stores[store] = cls(store)
            return found

    def _row(self, conn: Connection, target: str, dossier: str, now: datetime) -> _OrderRow:
        """Lock and read the dossier's row, creating it first."""
        for name, value in (("target", target), ("dossier_code", dossier)):
            if not value or len(value) > _KEY_LENGTH:
                raise ValueError(f"{name} must be 1-{_KEY_LENGTH} characters, got {value!r}")
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self._sql.lock_row, (target, dossier, self._sql.when(now)))
            rows = cursor.fetchall()
        finally:
            cursor.close()
        if len(rows) != 1:
            raise RuntimeError(f"the upsert of {order_table.name} returned {len(rows)} rows, not 1")
        applied, holder, lease_until, pending, next_seq = rows[0]
        return _OrderRow(applied, holder, self._sql.read_when(lease_until), pending, int(next_seq))

    def _set(self, conn: Connection, target: str, dossier: str, **values: Any) -> None:
        when = self._sql.when
        params = [when(v) if c in _TIME_COLUMNS else v for c, v in values.items()]
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self._sql.update(tuple(values)), (*params, target, dossier))
        finally:
            cursor.close()

    # -- latest --------------------------------------------------------------------------------------
    def enter_latest(
        self, target: str, dossier: str, position: str, *, owner: str, lease_s: float, now: datetime | None = None
    ) -> Decision:
        """Check ``position`` against the applied one and, when it is not older, take the dossier's lease.

        A lease that ended (its holder died or its leave failed) counts its pending position as applied
        first: the holder may have sent it.

        Returns:
            PASS (the caller holds the lease until :meth:`leave_latest`), SUPERSEDED (with the newer
            applied position) or HELD (another attempt's lease is live).
        """
        now = datetime.now(UTC) if now is None else now
        with self._store.begin() as conn:
            row = self._row(conn, target, dossier, now)
            applied = row.applied
            if row.holder is not None:
                if row.holder != owner and row.lease_until is not None and row.lease_until > now:
                    return Decision(Verdict.HELD, applied, holder=row.holder)
                applied = _newest(applied, row.pending)
            if applied is not None and position < applied:
                self._set(conn, target, dossier, applied=applied, holder=None, lease_until=None, pending=None)
                return Decision(Verdict.SUPERSEDED, applied)
            self._set(
                conn,
                target,
                dossier,
                applied=applied,
                holder=owner,
                lease_until=now + timedelta(seconds=lease_s),
                pending=position,
            )
            return Decision(Verdict.PASS, applied)

    def leave_latest(self, target: str, dossier: str, *, owner: str, applied: bool) -> bool:
        """Give the lease back; with ``applied`` (the effect happened or may have) the position moves to it.

        Returns:
            False when the caller no longer held the lease (it ended and another attempt took the row over,
            counting the caller's position as applied); nothing changes then.
        """
        now = datetime.now(UTC)
        with self._store.begin() as conn:
            row = self._row(conn, target, dossier, now)
            if row.holder != owner:
                _log.warning("order_lease_lost", target=target, dossier_code=dossier, owner=owner)
                return False
            position = _newest(row.applied, row.pending) if applied else row.applied
            self._set(conn, target, dossier, applied=position, holder=None, lease_until=None, pending=None)
            return True

    def applied(self, target: str, dossier: str) -> str | None:
        """The newest position applied for (target, dossier), or None."""
        key = sa.and_(_o.target == target, _o.dossier_code == dossier)
        with self._store.begin() as conn:
            return conn.execute(sa.select(_o.applied).where(key)).scalar_one_or_none()

    # -- fifo ----------------------------------------------------------------------------------------
    def enter_fifo(
        self,
        target: str,
        dossier: str,
        event_id: str,
        *,
        release_after_s: float = RELEASE_AFTER_MIN_S,
        now: datetime | None = None,
    ) -> Decision:
        """Number the event at its first sight, then say whether every earlier one of the dossier is settled.

        Each call vouches for the event for ``release_after_s`` (its ``alive_until``). An earlier pending
        event whose time ran out (no attempt of it entered since) is first doubted: it gets one more window,
        since the workers may only now be back from an outage and it may be on its way; still unseen when
        that ends (its message lost or purged, its route no longer consumed), it is released here, so no
        event waits forever behind one that will never come back.

        Returns:
            PASS (send it) or WAIT (with the earliest pending event before it); ``seq`` is the event's number;
            ``released`` names the earlier events this call released.
        """
        now = datetime.now(UTC) if now is None else now
        alive_until = now + timedelta(seconds=release_after_s)
        returned = False
        with self._store.begin() as conn:
            row = self._row(conn, target, dossier, now)
            mine = sa.and_(_f.target == target, _f.dossier_code == dossier, _f.event_id == event_id)
            seen = conn.execute(sa.select(_f.seq, _f.state).where(mine)).first()
            if seen is None:
                seq = row.next_seq + 1
                self._set(conn, target, dossier, next_seq=seq)
                conn.execute(
                    sa.insert(fifo_table).values(
                        target=target,
                        dossier_code=dossier,
                        event_id=event_id,
                        seq=seq,
                        state=PENDING,
                        seen_at=now,
                        alive_until=alive_until,
                    )
                )
            else:
                seq = seen.seq
                if seen.state == DONE:  # delivered before: the claim re-emits its result
                    return Decision(Verdict.PASS, seq=seq)
                # a released one (a dead letter replayed, or one given up for unseen) is pending again, at its
                # old place
                returned = seen.state == RELEASED
                conn.execute(
                    sa.update(fifo_table)
                    .where(mine)
                    .values(state=PENDING, settled_at=None, alive_until=alive_until, doubted_at=None)
                )
            released: list[str] = []
            while True:
                earlier = conn.execute(
                    sa.select(_f.event_id, _f.seen_at, _f.alive_until, _f.doubted_at)
                    .where(_f.target == target, _f.dossier_code == dossier, _f.seq < seq, _f.state == PENDING)
                    .order_by(_f.seq)
                    .limit(1)
                ).first()
                if earlier is None:
                    return Decision(Verdict.PASS, seq=seq, released=tuple(released), returned=returned)
                vouched = earlier.alive_until or earlier.seen_at + timedelta(seconds=release_after_s)
                if vouched > now:
                    return Decision(
                        Verdict.WAIT, seq=seq, earlier=earlier.event_id, released=tuple(released), returned=returned
                    )
                gone = sa.and_(_f.target == target, _f.dossier_code == dossier, _f.event_id == earlier.event_id)
                if earlier.doubted_at is None:  # one more window: only a wait that spans it proves it gone
                    conn.execute(sa.update(fifo_table).where(gone).values(doubted_at=now, alive_until=alive_until))
                    return Decision(
                        Verdict.WAIT, seq=seq, earlier=earlier.event_id, released=tuple(released), returned=returned
                    )
                conn.execute(sa.update(fifo_table).where(gone).values(state=RELEASED, settled_at=now))
                released.append(earlier.event_id)

    def settle_fifo(self, target: str, dossier: str, event_id: str, *, state: str) -> str | None:
        """Settle a pending event ``done`` or ``released``; returns the next pending event of the dossier, if any.

        Raises:
            ValueError: a state other than done or released.
        """
        return self.settle_fifo_seq(target, dossier, event_id, state=state)[1]

    def settle_fifo_seq(self, target: str, dossier: str, event_id: str, *, state: str) -> tuple[int | None, str | None]:
        """:meth:`settle_fifo`, also saying which number it settled.

        The number is None when the event was not pending (never seen, or settled already): nothing changed.

        Raises:
            ValueError: a state other than done or released.
        """
        if state not in {DONE, RELEASED}:
            raise ValueError(f"an event settles done or released, not {state!r}")
        now = datetime.now(UTC)
        with self._store.begin() as conn:
            self._row(conn, target, dossier, now)
            mine = sa.and_(_f.target == target, _f.dossier_code == dossier, _f.event_id == event_id)
            seq = conn.execute(sa.select(_f.seq).where(mine, _f.state == PENDING)).scalar_one_or_none()
            if seq is not None:
                conn.execute(sa.update(fifo_table).where(mine).values(state=state, settled_at=now))
            nxt = conn.execute(
                sa.select(_f.event_id)
                .where(_f.target == target, _f.dossier_code == dossier, _f.state == PENDING)
                .order_by(_f.seq)
                .limit(1)
            ).scalar_one_or_none()
            return seq, nxt

    def calling(self, target: str, dossier: str, event_id: str, *, now: bool) -> None:
        """Note that a thread of this process starts (``now``) or ends a fifo event's attempt past the order."""
        key = (target, dossier, event_id)
        with self._calls_lock:
            count = self._calls.get(key, 0) + (1 if now else -1)
            if count > 0:
                self._calls[key] = count
            else:
                self._calls.pop(key, None)

    def in_call(self, target: str, dossier: str, event_id: str) -> bool:
        """Whether a thread of this process works on this fifo event now (so it settles within its call)."""
        with self._calls_lock:
            return (target, dossier, event_id) in self._calls

    def fifo_states(self, target: str, dossier: str) -> list[tuple[int, str, str]]:
        """(seq, event_id, state) of every event of the dossier, in order: for tests and operators."""
        with self._store.begin() as conn:
            rows = conn.execute(
                sa.select(_f.seq, _f.event_id, _f.state)
                .where(_f.target == target, _f.dossier_code == dossier)
                .order_by(_f.seq)
            ).all()
        return [(r.seq, r.event_id, r.state) for r in rows]


@dataclass(frozen=True, slots=True)
class Ticket:
    """An event's way through the order: what :meth:`OrderStep.leave` must settle.

    Attributes:
        dossier: The dossier code.
        event_id: The event.
        position: latest: its position; fifo: its number within the dossier, as text.
        owner: latest: the lease's holder (this attempt).
        superseded_by: latest: the newer applied position when the event is not to be sent.
    """

    dossier: str
    event_id: str
    position: str
    owner: str = ""
    superseded_by: str | None = None


class Arrivals:
    """A fifo route's deliveries numbered in the order its consumer received them, within one process.

    Why: fifo numbers an event when its first attempt enters the order, and a route's threads take deliveries
    from its queue at once; without this, a thread slowed before its enter (a loaded machine, the store's
    lock) let a later update of the same dossier, taken by another thread, be numbered and sent first. The
    worker's I/O loop admits each delivery as it hands it to a thread (in the queue's order); a thread then
    takes its number only once every delivery admitted before its own has either taken its number or shown
    it belongs to another dossier. Deliveries never admitted (a runner fed by hand) wait for nothing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        #: admitted and not yet numbered: arrival ▶ its dossier once known (None: not parsed yet)
        self._open: dict[int, str | None] = {}

    def admit(self, count: int) -> list[int]:
        """Numbers for ``count`` deliveries, in the order given (called by the I/O loop, in the queue's order)."""
        with self._cond:
            first = self._next
            self._next += count
            for n in range(first, self._next):
                self._open[n] = None
            return list(range(first, self._next))

    def turn(self, arrival: int, dossier: str, *, timeout: float = ARRIVAL_WAIT_S) -> bool:
        """Wait until no delivery admitted before ``arrival`` may still take a number in ``dossier`` first.

        Returns:
            False when ``timeout`` ran out first (the caller goes on and says so).
        """
        with self._cond:
            if arrival in self._open:
                self._open[arrival] = dossier
                self._cond.notify_all()

            def clear() -> bool:
                return not any(n < arrival and d in (None, dossier) for n, d in self._open.items())

            return self._cond.wait_for(clear, timeout)

    def passed(self, *arrivals: int | None) -> None:
        """These deliveries took their number, or will never take one (settled before the order, or failed)."""
        with self._cond:
            for n in arrivals:
                if n is not None:
                    self._open.pop(n, None)
            self._cond.notify_all()


class OrderStep:
    """The order step of one route: :meth:`enter` before the claim, :meth:`leave` once the outcome is known.

    Args:
        spec: The route's ``order`` block.
        route: The route's name (for the logs).
        store: The idempotency store (the order's tables live beside the claims).
        worker_id: Names this worker's leases.
        lease_s: How long a lease lasts: the claim's lease, so an attempt's order outlives its call.
        wait_s: How long a thread waits in place for a busy dossier before the message is parked; None:
            :data:`ORDER_WAIT_S` (latest) or :data:`FIFO_WAIT_S` (fifo).
        release_after_s: fifo: how long an attempt vouches for its pending event; an earlier event nobody
            vouches for any more is released by the next of its dossier (see :func:`release_after`).
        sleep: Waits between two looks (tests pass their own).
    """

    def __init__(
        self,
        spec: OrderSpec,
        route: str,
        store: IdempotencyStore,
        *,
        worker_id: str,
        lease_s: float,
        wait_s: float | None = None,
        release_after_s: float = RELEASE_AFTER_MIN_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.route = route
        self.target = spec.target
        self.fifo = spec.mode == "fifo"
        self.orders = OrderStore.of(store)
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.wait_s = wait_s if wait_s is not None else FIFO_WAIT_S if self.fifo else ORDER_WAIT_S
        self.release_after_s = release_after_s
        self._sleep = sleep
        #: fifo: the route's deliveries in the order received, so threads number them in that order
        self.arrivals = Arrivals()
        self._log = _log.bind(route=route, target=self.target)

    def admit(self, count: int) -> list[int] | None:
        """Arrival numbers for ``count`` deliveries about to be handed to a thread; None when not fifo."""
        return self.arrivals.admit(count) if self.fifo else None

    def enter(self, envelope: Envelope, *, arrival: int | None = None, log: Any = None) -> Ticket:
        """Take the event's place in its dossier's order; a ticket with ``superseded_by`` means do not send.

        Args:
            envelope: The event.
            arrival: fifo: the delivery's number from :meth:`admit` (None: fed by hand, waits for nothing).
            log: The delivery's logger (for the lines that say an earlier event was released).

        Raises:
            InvalidEvent: the event has no dossier code (nothing to order by): dead-lettered, naming the field.
            ClaimHeld: the dossier is busy (latest: another attempt's lease; fifo: an earlier event pending)
                for longer than ``wait_s``: the message waits in a delay queue without spending an attempt.
        """
        dossier = envelope.dossier_code
        if not dossier:
            msg = f"route {self.route} keeps per-dossier order toward {self.target}: the event needs a dossier_code"
            raise InvalidEvent(msg, field="dossier_code")
        event_id = str(envelope.event_id)
        if self.fifo:
            return self._enter_fifo(dossier, event_id, arrival, log or self._log)
        deadline = time.monotonic() + self.wait_s
        pause = ORDER_POLL_S
        position = position_of(envelope.occurred_at, envelope.status, event_id)
        owner = f"{self.worker_id}/{uuid.uuid4().hex[:8]}"
        while True:
            decision = self.orders.enter_latest(self.target, dossier, position, owner=owner, lease_s=self.lease_s)
            if decision.verdict is Verdict.PASS:
                return Ticket(dossier, event_id, position, owner)
            if decision.verdict is Verdict.SUPERSEDED:
                return Ticket(dossier, event_id, position, owner, superseded_by=decision.applied)
            if time.monotonic() >= deadline:
                raise ClaimHeld(f"dossier {dossier}: another attempt holds its order toward {self.target}")
            pause = self._pause(pause)

    def _enter_fifo(self, dossier: str, event_id: str, arrival: int | None, log: Any) -> Ticket:
        """fifo: number the event (after every delivery received before it), then pass or wait.

        It waits in place only while the earlier event is in a call in this process, which settles it within
        that call; an earlier event in a delay queue (or at another worker) comes back after seconds to an
        hour, and holding this thread meanwhile would hold every other dossier of a one-thread route.
        """
        try:
            if arrival is not None and not self.arrivals.turn(arrival, dossier):
                log.warning("order_arrival_wait_timeout", dossier_code=dossier, waited_s=ARRIVAL_WAIT_S)
            deadline = time.monotonic() + self.wait_s
            pause = ORDER_POLL_S
            while True:
                decision = self.orders.enter_fifo(self.target, dossier, event_id, release_after_s=self.release_after_s)
                self.arrivals.passed(arrival)
                arrival = None
                self._say(decision, dossier, log)
                if decision.verdict is Verdict.PASS:
                    self.orders.calling(self.target, dossier, event_id, now=True)
                    return Ticket(dossier, event_id, str(decision.seq))
                earlier = decision.earlier or ""
                if time.monotonic() >= deadline or not self.orders.in_call(self.target, dossier, earlier):
                    msg = f"dossier {dossier}: waits for the earlier event {earlier} toward {self.target}"
                    raise ClaimHeld(msg)
                pause = self._pause(pause)
        finally:
            self.arrivals.passed(arrival)

    def _say(self, decision: Decision, dossier: str, log: Any) -> None:
        """One line per earlier event released for being unseen, and one when a released event came back."""
        for gone in decision.released:
            log.warning(
                "order_released_unseen",
                target=self.target,
                dossier_code=dossier,
                released_event_id=gone,
                unseen_s=self.release_after_s,
                next_seq=decision.seq,
            )
        if decision.returned:
            log.warning("order_returned", target=self.target, dossier_code=dossier, seq=decision.seq)

    def _pause(self, pause: float) -> float:
        self._sleep(pause)
        return min(pause * 2, ORDER_POLL_MAX_S)

    def leave(self, ticket: Ticket, *, applied: bool, dead: bool, log: Any) -> None:
        """Settle the ticket once the attempt's outcome is known.

        latest gives the lease back, moving the position when ``applied``; fifo settles the event ``done`` when
        applied, ``released`` when dead-lettered (logged), and keeps it pending otherwise (a retry). A fifo
        ticket from :meth:`placed` (a dead letter that failed before its enter) releases the place an earlier
        attempt took, if any.
        """
        if not self.fifo:
            self.orders.leave_latest(self.target, ticket.dossier, owner=ticket.owner, applied=applied)
            return
        try:
            if not applied and not dead:
                return  # a retry: still pending, later events of the dossier keep waiting
            state = DONE if applied else RELEASED
            seq, nxt = self.orders.settle_fifo_seq(self.target, ticket.dossier, ticket.event_id, state=state)
            if dead and seq is not None:
                log.warning("order_released", target=self.target, seq=seq, next_event_id=nxt)
        finally:
            if ticket.position:  # a ticket from enter: its call is over
                self.orders.calling(self.target, ticket.dossier, ticket.event_id, now=False)

    def placed(self, envelope: Envelope) -> Ticket | None:
        """fifo: a ticket for an event whose enter failed this attempt, to settle the place an earlier one took.

        None when the event has no dossier or the route is not fifo.
        """
        if not self.fifo or not envelope.dossier_code:
            return None
        return Ticket(envelope.dossier_code, str(envelope.event_id), "")


def release_after(spec: OrderSpec, *, lease_s: float, longest_backoff: float) -> float:
    """How long one attempt vouches for its pending fifo event.

    ``release_after`` from routes.yaml, or twice (one call's lease + the route's longest delay), at least
    :data:`RELEASE_AFTER_MIN_S`. Why that long: a live event comes back after at most its call plus its
    longest delay (and its queue's backlog, which the margin covers); only an event that will not come back
    should be given up, and giving one up too early lets its later events overtake it.
    """
    if spec.release_after is not None:
        return spec.release_after
    return max(RELEASE_AFTER_MIN_S, 2 * (lease_s + longest_backoff))


def order_step(
    spec: OrderSpec | None,
    route: str,
    store: IdempotencyStore,
    *,
    worker_id: str,
    lease_s: float,
    longest_backoff: float = 0.0,
) -> OrderStep | None:
    """The route's order step, or None when the route has no ``order`` block (it then costs nothing)."""
    if spec is None:
        return None
    return OrderStep(
        spec,
        route,
        store,
        worker_id=worker_id,
        lease_s=lease_s,
        release_after_s=release_after(spec, lease_s=lease_s, longest_backoff=longest_backoff),
    )
