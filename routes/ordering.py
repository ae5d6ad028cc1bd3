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
dossier with a lower number is settled; until then it waits without spending an attempt. Delivered (or a
duplicate of a delivered one) settles it ``done``; a dead letter settles it ``released``, which lets the next
one go, with a log line naming both; a retry keeps it pending, so later ones keep waiting. A dead letter
replayed takes its old number again and waits for nothing older (everything older is settled).

**Limits.** The bus orders what it sees: events that reach it already out of order (iGate publishing a newer
change before an older one, or the older one stuck in another route's retry queue in fifo) are in latest mode
judged by ``occurred_at`` (the older one is superseded, which is the point) but in fifo mode delivered in the
order first seen; threads that take deliveries from one queue at once may register them in either order (up to
the route's ``concurrency``; a route that needs the queue's order exactly runs with ``concurrency: 1``).
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

from routes.idempotency import IdempotencyStore, UTCDateTime
from schemas.errors import ClaimHeld, InvalidEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection, Row

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
#: fifo's wait in place for an earlier event: shorter, since that one is often in a delay queue, not in a call
FIFO_WAIT_S: Final = 0.5
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
    sa.CheckConstraint(f"state IN ({', '.join(repr(s) for s in _FIFO_STATES)})", name="dossier_fifo_state_valid"),
    sa.Index("dossier_fifo_by_seq", "target", "dossier_code", "seq"),
)

_o = order_table.c
_f = fifo_table.c


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
_TOUCH: Final = (
    sa.update(order_table)
    .where(_o.target == sa.bindparam("t"), _o.dossier_code == sa.bindparam("d"))
    .values(updated_at=sa.bindparam("now", type_=UTCDateTime()))
    .returning(*order_table.c)
)


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
    """

    verdict: Verdict
    applied: str | None = None
    holder: str | None = None
    seq: int | None = None
    earlier: str | None = None


_stores: weakref.WeakKeyDictionary[IdempotencyStore, OrderStore] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


class OrderStore:
    """The per-dossier positions and leases, in the idempotency store's database; thread-safe.

    Each call is one short transaction that first locks the dossier's row (an ``UPDATE ... RETURNING`` of it:
    PostgreSQL's row lock, and on SQLite the database's write lock from the first statement; when the dossier has
    no row yet, an ``INSERT ... ON CONFLICT DO NOTHING`` makes it and the ``UPDATE`` follows), so every decision
    about one (target, dossier) is taken one at a time across threads, processes and hosts.

    Args:
        store: The idempotency store whose database holds the tables (created when missing).
    """

    def __init__(self, store: IdempotencyStore) -> None:
        self._store = store
        for table in order_metadata.sorted_tables:
            store.create_table(table)

    @classmethod
    def of(cls, store: IdempotencyStore) -> OrderStore:
        """The one order store of ``store`` (made at the first call), shared by every route of the process."""
        with _stores_lock:
            found = _stores.get(store)
            if found is None:
                found = _stores[store] = cls(store)
            return found

    def _row(self, conn: Connection, target: str, dossier: str, now: datetime) -> Row[Any]:
        """Lock and read the dossier's row, creating it first."""
        for name, value in (("target", target), ("dossier_code", dossier)):
            if not value or len(value) > _KEY_LENGTH:
                raise ValueError(f"{name} must be 1-{_KEY_LENGTH} characters, got {value!r}")
        params = {"t": target, "d": dossier, "now": now}
        row = conn.execute(_TOUCH, params).first()  # locks the row and reads it, in one statement
        if row is None:  # the dossier's first event toward this target: make the row, then lock it as above
            fresh = self._store.insert(order_table).values(
                target=target, dossier_code=dossier, next_seq=0, updated_at=now
            )
            conn.execute(fresh.on_conflict_do_nothing(index_elements=[_o.target, _o.dossier_code]))
            row = conn.execute(_TOUCH, params).one()
        return row

    def _set(self, conn: Connection, target: str, dossier: str, **values: Any) -> None:
        key = sa.and_(_o.target == target, _o.dossier_code == dossier)
        conn.execute(sa.update(order_table).where(key).values(**values))

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
    def enter_fifo(self, target: str, dossier: str, event_id: str, *, now: datetime | None = None) -> Decision:
        """Number the event at its first sight, then say whether every earlier one of the dossier is settled.

        Returns:
            PASS (send it) or WAIT (with the earliest pending event before it); ``seq`` is the event's number.
        """
        now = datetime.now(UTC) if now is None else now
        with self._store.begin() as conn:
            row = self._row(conn, target, dossier, now)
            mine = sa.and_(_f.target == target, _f.dossier_code == dossier, _f.event_id == event_id)
            seen = conn.execute(sa.select(_f.seq, _f.state).where(mine)).first()
            if seen is None:
                seq = row.next_seq + 1
                self._set(conn, target, dossier, next_seq=seq)
                conn.execute(
                    sa.insert(fifo_table).values(
                        target=target, dossier_code=dossier, event_id=event_id, seq=seq, state=PENDING, seen_at=now
                    )
                )
            else:
                seq = seen.seq
                if seen.state == DONE:  # delivered before: the claim re-emits its result
                    return Decision(Verdict.PASS, seq=seq)
                if seen.state == RELEASED:  # a dead letter replayed: pending again, at its old place
                    conn.execute(sa.update(fifo_table).where(mine).values(state=PENDING, settled_at=None))
            earlier = conn.execute(
                sa.select(_f.event_id)
                .where(_f.target == target, _f.dossier_code == dossier, _f.seq < seq, _f.state == PENDING)
                .order_by(_f.seq)
                .limit(1)
            ).scalar_one_or_none()
            if earlier is not None:
                return Decision(Verdict.WAIT, seq=seq, earlier=earlier)
            return Decision(Verdict.PASS, seq=seq)

    def settle_fifo(self, target: str, dossier: str, event_id: str, *, state: str) -> str | None:
        """Settle a pending event ``done`` or ``released``; returns the next pending event of the dossier, if any.

        Raises:
            ValueError: a state other than done or released.
        """
        if state not in {DONE, RELEASED}:
            raise ValueError(f"an event settles done or released, not {state!r}")
        now = datetime.now(UTC)
        with self._store.begin() as conn:
            self._row(conn, target, dossier, now)
            mine = sa.and_(_f.target == target, _f.dossier_code == dossier, _f.event_id == event_id)
            conn.execute(sa.update(fifo_table).where(mine, _f.state == PENDING).values(state=state, settled_at=now))
            return conn.execute(
                sa.select(_f.event_id)
                .where(_f.target == target, _f.dossier_code == dossier, _f.state == PENDING)
                .order_by(_f.seq)
                .limit(1)
            ).scalar_one_or_none()

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
        self._sleep = sleep

    def enter(self, envelope: Envelope) -> Ticket:
        """Take the event's place in its dossier's order; a ticket with ``superseded_by`` means do not send.

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
        deadline = time.monotonic() + self.wait_s
        pause = ORDER_POLL_S
        if self.fifo:
            while True:
                decision = self.orders.enter_fifo(self.target, dossier, event_id)
                if decision.verdict is Verdict.PASS:
                    return Ticket(dossier, event_id, str(decision.seq))
                if time.monotonic() >= deadline:
                    msg = f"dossier {dossier}: waits for the earlier event {decision.earlier} toward {self.target}"
                    raise ClaimHeld(msg)
                pause = self._pause(pause)
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

    def _pause(self, pause: float) -> float:
        self._sleep(pause)
        return min(pause * 2, ORDER_POLL_MAX_S)

    def leave(self, ticket: Ticket, *, applied: bool, dead: bool, log: Any) -> None:
        """Settle the ticket once the attempt's outcome is known.

        latest gives the lease back, moving the position when ``applied``; fifo settles the event ``done`` when
        applied, ``released`` when dead-lettered (logged), and keeps it pending otherwise (a retry).
        """
        if not self.fifo:
            self.orders.leave_latest(self.target, ticket.dossier, owner=ticket.owner, applied=applied)
            return
        if not applied and not dead:
            return  # a retry: still pending, later events of the dossier keep waiting
        nxt = self.orders.settle_fifo(self.target, ticket.dossier, ticket.event_id, state=DONE if applied else RELEASED)
        if dead:
            log.warning("order_released", target=self.target, seq=int(ticket.position), next_event_id=nxt)


def order_step(
    spec: OrderSpec | None, route: str, store: IdempotencyStore, *, worker_id: str, lease_s: float
) -> OrderStep | None:
    """The route's order step, or None when the route has no ``order`` block (it then costs nothing)."""
    if spec is None:
        return None
    return OrderStep(spec, route, store, worker_id=worker_id, lease_s=lease_s)
