"""The worker pipeline for one delivery: validate ▶ when ▶ claim ▶ reconcile ▶ adapt+send ▶ record ▶ emit.

A route with ``order:`` in routes.yaml also runs its order step (routes/ordering.py) around the rest: enter
after ``when`` (latest: an older event is acked as ``superseded``; the dossier busy: the message waits without
spending an attempt) and leave once the outcome is known (the position moves if the effect may be applied).

It runs off the AMQP I/O thread and returns an :class:`Outcome`: the messages to publish (a result event, a
retry copy or a dead letter) before the delivery may be acked. The I/O thread publishes them with confirms
and acks only after every one is confirmed, so a crash anywhere leaves the message in the queue and the claim
in the store tells the next attempt what already happened (``routes/idempotency.py`` tables the states):

- claim NEW: nothing applied yet, send;
- claim RECLAIMED: the effect may have been applied: ask the target by idempotency key first; only its
  "not there" lets this attempt send (:meth:`IdempotencyStore.confirm_absent`), and a failed lookup leaves the
  claim "maybe applied" for the next attempt, which asks again;
- claim DONE: applied before; re-emit the stored result (same result event_id) and ack;
- claim HELD: another attempt holds a live lease: park the message in a delay queue.

A side-effecting call whose outcome is unknown is never repeated here: it goes back through the claim.

**Replies that can never succeed.** A reply the connector refuses as hostile or malformed
(:class:`schemas.errors.TargetGarbled`) is retried like any transient failure, but counted per message in
``x-garbled``; at ``retry.max_garbled`` (default 3) the message is dead-lettered at once with kind
``garbled`` (its claim left "maybe applied", so a replay reconciles first) and the observer is told, which
marks the connector degraded.

**Headers only the bus sets.** ``x-attempts``, ``x-garbled``, ``x-received-at``, ``x-error*``, ``x-route``...
(every ``x-`` header) are believed only on a delivery that came back through the bus's own retry queues or a
DLQ replay (the default exchange, which producers cannot write to: README, "Operations"). On a delivery
through ``igate.events`` or ``bus.results`` they are dropped before anything reads them, and never copied
into our retry copies or dead letters: a producer cannot spend or reset a message's attempts.

**Crash points** (``IGATE_CRASH_AT=after_claim,...``) SIGKILL the worker at a named point, for reliability
tests; they exist only when ``IGATE_BUS_TESTING=1`` too, and a worker started with crash points but without
it refuses to start (:func:`crash_plan_from_env`): a stray variable in production must not kill workers.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import jmespath
import structlog

from routes.amqp import copy_properties
from routes.emissions import Emissions, result_event
from routes.group_commit import GroupCommit
from routes.idempotency import DONE as CLAIM_DONE
from routes.idempotency import Claim, ClaimOutcome, IdempotencyStore
from routes.ordering import order_step
from routes.parking import PARKS_HEADER, park_delay, parks_before
from routes.ticks import TickSteps
from routes.topology import RESULTS_EXCHANGE, dlq, retry_queue
from schemas.bus import TICK_EVENT
from schemas.envelope import Event, EventRules, parse_event
from schemas.errors import (
    AmbiguousOutcome,
    BusError,
    ClaimHeld,
    ConfigError,
    InvalidEvent,
    PermanentError,
    TargetGarbled,
    TransientError,
)
from schemas.pii import scrub_text

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import pika
    from pydantic import BaseModel

    from connectors.base import Operation
    from routes.model import Route
    from routes.observer import Observer
    from routes.ordering import Ticket
    from routes.schedule_store import ScheduleStore

T = TypeVar("T")
#: what a pipeline thread writes for one event through the group commit: a claim (its owner) or a completion
_StoreWrite = str | tuple[str, dict[str, Any]]

#: names result event ids: uuid5(RESULT_NS, "<route>/<event_id>") is the same on every re-emit
RESULT_NS = uuid.UUID("6f1d3c52-8a0e-4d7e-9b0a-3c1f2e4d5a6b")
#: names idempotency keys sent to targets: uuid5(KEY_NS, "<route>/<event_id>")
KEY_NS = uuid.UUID("0b7e2f9a-1c4d-4e8b-a5f6-7d8c9e0a1b2c")
#: attempts this message had before this one (set by the bus on retry copies and dead letters)
ATTEMPTS_HEADER: Final = "x-attempts"
#: replies the connector refused for this message so far
GARBLED_HEADER: Final = "x-garbled"
#: when the route first received this message (ISO 8601): the time its envelope is judged against
RECEIVED_HEADER: Final = "x-received-at"
#: every header under this prefix is the bus's (or the broker's); producers' are dropped on a first delivery
BUS_HEADER_PREFIX: Final = "x-"
#: the result event of an event an ordered route did not send (something newer was applied): schemas/ordering.py
SUPERSEDED_EVENT: Final = "bus.superseded"
#: outcomes whose effect is applied at the target (the order's position moves to them)
_APPLIED: Final = frozenset({"delivered", "duplicate"})
MAX_ERROR_CHARS = 1000
CRASH_POINTS: Final = frozenset(
    {"after_claim", "after_lookup", "after_send", "after_done", "after_result_confirm", "after_ack"}
)
#: where the scheduler may crash (routes/scheduler.py): between a tick's confirmed publish and the store's record
SCHEDULE_CRASH_POINTS: Final = frozenset({"after_tick_publish"})
CRASH_AT_ENV: Final = "IGATE_CRASH_AT"
CRASH_RATE_ENV: Final = "IGATE_CRASH_RATE"
#: the switch without which crash points are refused (set only by reliability tests)
TESTING_ENV: Final = "IGATE_BUS_TESTING"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the consumer received it."""

    body: bytes
    properties: pika.BasicProperties
    exchange: str
    routing_key: str
    redelivered: bool
    #: its place among the route's deliveries as received (fifo routes, :meth:`RouteRunner.admit`)
    arrival: int | None = None

    @property
    def first(self) -> bool:
        """Whether it came through an event exchange (a producer's publish, or the broker's redelivery of one).

        The alternative is the default exchange: a copy the bus made (back from a retry queue) or a DLQ
        replay, whose ``x-`` headers the bus wrote itself.
        """
        return self.exchange != ""

    @property
    def headers(self) -> dict[str, Any]:
        """The AMQP headers the bus may read and carry on: without any ``x-`` header on a first delivery."""
        raw = self.properties.headers or {}
        if self.first:
            return {k: v for k, v in raw.items() if not str(k).lower().startswith(BUS_HEADER_PREFIX)}
        return dict(raw)

    def _count(self, name: str) -> int:
        value = self.headers.get(name, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    @property
    def attempts_before(self) -> int:
        """How many attempts this message had before this one (our own header; x-death is not trusted)."""
        return self._count(ATTEMPTS_HEADER)

    @property
    def garbled_before(self) -> int:
        """How many replies the connector refused for this message before this attempt."""
        return self._count(GARBLED_HEADER)

    @property
    def received_at(self) -> datetime | None:
        """When the route first received this message, as the bus stamped it on its copies; None if unknown."""
        value = self.headers.get(RECEIVED_HEADER)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        try:
            at = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None
        return at if at is not None and at.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A message to publish (confirmed, mandatory) before the delivery is acked."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a delivery, and what must be confirmed before its ack."""

    outcome: str  # delivered | skipped | duplicate | superseded | retry | dead_lettered
    messages: tuple[OutMessage, ...] = ()
    crash_after_confirm: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Job:
    """One delivery on its way through :meth:`RouteRunner.handle_batch`; ``outcome`` set ends its way."""

    delivery: Delivery
    started: float
    attempt: int
    garbled: int
    received_at: datetime
    log: Any
    event: Event | None = None
    event_id: str = ""
    owner: str = ""
    claimed: bool = False
    #: the claim says the effect may have been applied: a lookup must answer before anything is sent
    reclaimed: bool = False
    reply: dict[str, Any] | None = None
    outcome: Outcome | None = None
    #: a schedule's tick: the version of the route's cursor it was handed (routes/ticks.py)
    cursor_version: int | None = None
    #: the place this attempt holds in its dossier's order (ordered routes), settled when the outcome is known
    ticket: Ticket | None = None


@dataclass(frozen=True, slots=True)
class CrashPlan:
    """Where the worker SIGKILLs itself (reliability tests only), and how often when it passes there."""

    points: frozenset[str] = frozenset()
    rate: float = 1.0

    def hits(self, point: str) -> bool:
        """Whether to crash at ``point`` this time."""
        return point in self.points and (self.rate >= 1.0 or random.random() < self.rate)  # noqa: S311 - not a secret

    def crash(self, point: str) -> None:
        """SIGKILL this process at ``point`` (if it hits), saying so first: the tests check where it died."""
        if self.hits(point):
            kill(point)


def kill(point: str) -> None:
    """Log the crash point, then SIGKILL this process (no cleanup, no flush of anything else)."""
    structlog.get_logger("igate_bus.crash").warning("crash_point", point=point, pid=os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` in a third of its time: two per message on every route (issue 15).

    No ``UUID`` object: it validates its bytes, then ``str`` takes them apart again.
    """
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])  # noqa: S324 - RFC 4122 v5
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def idempotency_key(route: str, event_id: str) -> str:
    """The key a connector sends to its target for this route's effect of this event."""
    return uuid5_text(KEY_NS, f"{route}/{event_id}")


def result_event_id(route: str, event_id: str) -> str:
    """The id of the result event a route emits for an event: stable across re-emits."""
    return uuid5_text(RESULT_NS, f"{route}/{event_id}")


def crash_plan_from_env(environ: Mapping[str, str] | None = None) -> CrashPlan:
    """``IGATE_CRASH_AT=after_send,after_done`` (and ``IGATE_CRASH_RATE``) with ``IGATE_BUS_TESTING=1``.

    Raises:
        ConfigError: an unknown crash point, a rate outside (0, 1], or crash points without the testing
            switch (the worker then refuses to start: a stray variable must not kill production workers).
    """
    env = os.environ if environ is None else environ
    raw = env.get(CRASH_AT_ENV, "")
    points = frozenset(p.strip() for p in raw.split(",") if p.strip())
    if not points:
        return CrashPlan()
    known = CRASH_POINTS | SCHEDULE_CRASH_POINTS
    unknown = points - known
    if unknown:
        raise ConfigError(f"{CRASH_AT_ENV}: unknown crash point(s) {sorted(unknown)}; known: {sorted(known)}")
    if env.get(TESTING_ENV) != "1":
        raise ConfigError(
            f"{CRASH_AT_ENV} is set ({raw}) but {TESTING_ENV} is not 1: crash points SIGKILL the worker on "
            f"purpose and exist for reliability tests only; unset {CRASH_AT_ENV}, or set {TESTING_ENV}=1 in a "
            "test environment"
        )
    try:
        rate = float(env.get(CRASH_RATE_ENV, "1.0"))
    except ValueError:
        rate = -1.0
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"{CRASH_RATE_ENV} must be a number in (0, 1], got {env.get(CRASH_RATE_ENV)!r}")
    return CrashPlan(points, rate)


class RouteRunner:
    """Runs the pipeline for one route; built once, called from many worker threads."""

    def __init__(
        self,
        route: Route,
        operation: Operation,
        *,
        store: IdempotencyStore,
        payload_models: Mapping[str, type[BaseModel]],
        worker_id: str,
        lease_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        crash: CrashPlan = CrashPlan(),
        rules: EventRules | None = None,
        observer: Observer | None = None,
        schedules: ScheduleStore | None = None,
    ) -> None:
        self.route = route
        self.name = route.spec.name
        self.operation = operation
        self.store = store
        self.payload_models = payload_models
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.clock = clock
        self.crash = crash
        #: the envelope's edge rules (dossier code format, time bounds), the same as the ingress's
        self.rules = rules or EventRules()
        #: told of each outcome and each call to the target (metrics, connector health); None costs nothing
        self.observer = observer
        self._log = structlog.get_logger("igate_bus.route").bind(
            route=self.name, connector=route.connector, operation=route.operation
        )
        self._when = route.when
        self._backoff = route.spec.retry.backoff
        self._max_attempts = route.spec.retry.max_attempts
        self._max_garbled = route.spec.retry.max_garbled
        self._emits = route.spec.emits
        #: the tick steps of a scheduled route (routes/ticks.py); None for a route without a schedule
        self._ticks = TickSteps(self.name, schedules) if schedules is not None and route.spec.from_.schedule else None
        #: the result events a reply carries (routes/emissions.py); None when the reply model has none
        self._emissions = (
            Emissions(self.name, operation.reply, payload_models) if Emissions.wanted(operation.reply) else None
        )
        #: the per-dossier order step (routes/ordering.py); None for a route without ``order``
        self._order = order_step(
            route.spec.order,
            self.name,
            store,
            worker_id=worker_id,
            lease_s=lease_s,
            longest_backoff=max(self._backoff),
        )
        # the claims and completions of threads that reach the store together share one transaction
        self._writes: GroupCommit[_StoreWrite, Claim | None] = GroupCommit(self._write_store)

    # -- the pipeline -------------------------------------------------------------------------------
    def admit(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Stamp deliveries with their arrival as the worker hands them to a thread, in the queue's order.

        Only a fifo route needs it (routes/ordering.py ``Arrivals``): its threads then number a dossier's
        events in the order received, whichever thread runs first.
        """
        arrivals = self._order.admit(len(deliveries)) if self._order is not None else None
        if arrivals is None:
            return deliveries
        return [replace(d, arrival=n) for d, n in zip(deliveries, arrivals, strict=True)]

    def handle(self, delivery: Delivery) -> Outcome:
        """Process one delivery; never raises (every failure becomes a retry or a dead letter)."""
        return self.handle_batch([delivery])[0]

    def handle_batch(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Process deliveries of this route in order, one outcome each; never raises.

        Why a batch: on a route that waits on no I/O the worker hands a pipeline thread every message that
        waited for it, and the store then claims them all in one transaction before the first send and
        completes them all in one after the last, instead of two transactions per message (routes to real
        targets get batches of one: see ``Worker._dispatch``). A message's own failure (invalid,
        refused, timed out) touches only its own outcome; the guarantees are those of a single message,
        since every effect is still claimed before it is sent and recorded before its result is emitted.

        One line per step; a job whose outcome is decided skips the steps after it.
        """
        jobs = [self._job(d) for d in deliveries]
        self._each(jobs, self._validate)  # parse, the edge rules, `when`
        if self._order is not None:
            self._order_enter_all(jobs)  # per-dossier order: pass, superseded, or wait
        if self.operation.effect:
            self._claim_all(jobs)  # one transaction: NEW, RECLAIMED, DONE (re-emit) or HELD (later)
            self._each(jobs, self._reconcile)  # RECLAIMED: ask the target before anything is sent
        self._each(jobs, self._send)  # adapt and call the target
        if self.operation.effect:
            self._complete_all(jobs)  # one transaction: done, with the reply
        self._each(jobs, self._deliver)  # the result event, if the route emits one
        if self._order is not None:
            self._order_leave(jobs)  # the position moves (latest) or the event settles (fifo)
        return [self._done(job) for job in jobs]

    def handle_chain(
        self,
        deliveries: Sequence[Delivery],
        take_next: Callable[[], Sequence[Delivery] | None],
        hand_over: Callable[[list[Outcome], bool], None],
    ) -> None:
        """Process batches one after another as a pipeline thread takes them; never raises.

        ``take_next()`` gives the next batch (None: nothing waits), ``hand_over(outcomes, last)`` gets each
        batch's outcomes in order, ``last`` on the final one. A route with an effect and no order step records
        a batch's effects in the transaction that claims the next batch's events (:meth:`_complete_and_claim`):
        a batch is claimed before any of its sends, as in :meth:`handle_batch`, and its outcomes go out once its
        effects are recorded. Other routes run :meth:`handle_batch` per batch (an ordered route's next event
        of a dossier must see the one before settled).
        """
        if not self.operation.effect or self._order is not None or self._ticks is not None:
            while True:
                outcomes = self.handle_batch(deliveries)
                following = take_next()
                hand_over(outcomes, following is None)
                if following is None:
                    return
                deliveries = following
        jobs = self._validated(deliveries)
        self._claim_all(jobs)
        while True:
            self._each(jobs, self._reconcile)
            self._each(jobs, self._send)
            following = take_next()
            if following is None:
                self._complete_all(jobs)
                hand_over(self._finish(jobs), following is None)
                return
            done, jobs = jobs, self._validated(following)
            self._complete_and_claim(done, jobs)
            hand_over(self._finish(done), following is None)

    def _validated(self, deliveries: Sequence[Delivery]) -> list[_Job]:
        jobs = [self._job(d) for d in deliveries]
        self._each(jobs, self._validate)
        return jobs

    def _finish(self, jobs: list[_Job]) -> list[Outcome]:
        """The steps after the effects are recorded: the result events, then each job's outcome."""
        self._each(jobs, self._deliver)
        return [self._done(job) for job in jobs]

    def _job(self, delivery: Delivery) -> _Job:
        attempt = delivery.attempts_before + 1
        received_at = delivery.received_at or self.clock()
        log = self._log.bind(event_id=delivery.properties.message_id, attempt=attempt)
        return _Job(delivery, time.perf_counter(), attempt, delivery.garbled_before, received_at, log)

    def _each(self, jobs: list[_Job], step: Callable[[_Job], None]) -> None:
        """Run one step for every job still on its way."""
        for job in jobs:
            if job.outcome is None:
                self._guard(job, step)

    def _validate(self, job: _Job) -> None:
        delivery = job.delivery
        props = delivery.properties
        event = parse_event(
            delivery.body,
            payload_models=self.payload_models,
            content_type=props.content_type,
            message_id=props.message_id,
            amqp_type=props.type,
            routing_key=delivery.routing_key if delivery.first else None,
            max_bytes=self.route.spec.max_bytes,
            rules=self.rules,
            received_at=job.received_at,
        )
        env = event.envelope
        job.log = job.log.bind(
            event_id=str(env.event_id),
            dossier_code=env.dossier_code,
            event_type=env.event_type,
            correlation_id=env.correlation_id or str(env.event_id),  # as _emit stamps the results
        )
        job.event = event
        job.event_id = str(env.event_id)
        if TickSteps.is_tick(event):
            if self._ticks is None:
                raise InvalidEvent(f"{TICK_EVENT} reached route {self.name}, which has no schedule", field="event_type")
            job.event, job.cursor_version = self._ticks.admit(event, first=delivery.first)
        if self._when is not None and not _truthy(self._when.search(event.as_dict())):
            job.outcome = Outcome("skipped")

    def _order_enter_all(self, jobs: list[_Job]) -> None:
        """The order step for each job still on its way; a job that will not enter gives its arrival up at once."""
        assert self._order is not None  # noqa: S101 - only called for an ordered route
        try:
            for job in jobs:
                if job.outcome is None:
                    self._guard(job, self._order_enter)
                # numbered, or never will be (skipped, refused): the batch's next ones must not wait for it
                self._order.arrivals.passed(job.delivery.arrival)
        finally:
            self._order.arrivals.passed(*(job.delivery.arrival for job in jobs))

    def _order_enter(self, job: _Job) -> None:
        assert job.event is not None  # noqa: S101 - validated before the order
        assert self._order is not None  # noqa: S101 - only called for an ordered route
        env = job.event.envelope
        ticket = self._order.enter(env, arrival=job.delivery.arrival, log=job.log)
        if ticket.superseded_by is None:
            job.ticket = ticket
            return
        payload = {
            "route": self.name,
            "target": self._order.target,
            "event_id": job.event_id,
            "event_type": env.event_type,
            "position": ticket.position,
            "applied": ticket.superseded_by,
        }
        fields = {"target": self._order.target, "position": ticket.position, "applied": ticket.superseded_by}
        job.outcome = self._result(job.event, SUPERSEDED_EVENT, payload, "superseded", fields)

    def _order_leave(self, jobs: list[_Job]) -> None:
        """Settle each job's place in its dossier's order, now that its outcome is known.

        The position moves when the effect is applied or may be (the claim says done or "maybe applied"),
        so an older event is never sent after one that may have reached the target. A failure to settle (the
        store down) turns a delivered job into a retry that spends no attempt (its claim is done: the retry
        re-emits, sends nothing, and settles its place then), and so a fifo dead letter too, whose place would
        otherwise hold its dossier's later events forever; a latest lease left unsettled ends on its own and
        then counts as applied (routes/ordering.py). A fifo dead letter without a ticket (its enter failed,
        e.g. the store erred until its attempts ran out) releases the place an earlier attempt took.
        """
        assert self._order is not None  # noqa: S101 - only called for an ordered route
        for job in jobs:
            ticket, outcome = job.ticket, job.outcome
            name = outcome.outcome if outcome is not None else ""
            if ticket is None and name == "dead_lettered" and job.event is not None:
                ticket = self._order.placed(job.event.envelope)
            if ticket is None:
                continue
            job.ticket = None
            try:
                applied = name in _APPLIED or self._maybe_applied(job)
                self._order.leave(ticket, applied=applied, dead=name == "dead_lettered", log=job.log)
            except Exception as exc:  # the store down, or a bug: either way the place is not
                # settled, so the message must not be acked as if it were; it is logged with its traceback and
                # retried (as _safe_release and _safe_fail log and go on)
                job.log.exception("order_leave_failed", error=_clip(f"{type(exc).__name__}: {exc}"))
                if name in _APPLIED or (self._order.fifo and name == "dead_lettered"):
                    job.outcome = self._retry_or_dead(job, ClaimHeld(f"order not settled: {type(exc).__name__}"))

    def _maybe_applied(self, job: _Job) -> bool:
        """Whether the claim says this event's effect is applied or may be; a store that cannot say raises."""
        if not self.operation.effect:
            return False
        record = self.store.get(self.name, job.event_id)
        return record is not None and (record.state == CLAIM_DONE or record.maybe_applied)

    def _claim_all(self, jobs: list[_Job]) -> None:
        """Claim every job's event in one transaction; a key met twice in a batch is claimed once, then held."""
        jobs = [j for j in jobs if j.outcome is None]
        if not jobs:
            return
        first = self._claimants(jobs)
        try:
            claims = self._writes.submit({eid: job.owner for eid, job in first.items()}) or {}
        except Exception as exc:  # the store is down: nothing was claimed, nothing sent; retry every one
            for job in jobs:
                self._fail(job, exc)
            return
        self._took_claims(jobs, first, claims)

    def _claimants(self, jobs: list[_Job]) -> dict[str, _Job]:
        """Give the jobs this attempt's owner; the first job of each event id (the one that claims it)."""
        first: dict[str, _Job] = {}
        # this attempt of every event of the batch; random bits, not uuid4(): os.urandom releases the GIL, and
        # taking it back among the pipeline threads cost a thread switch per message (issue 15). The suffix
        # tells attempts apart, it guards nothing; the random module is reseeded in a forked child.
        owner = f"{self.worker_id}/{random.getrandbits(32):08x}"
        for job in jobs:
            job.owner = owner
            first.setdefault(job.event_id, job)
        return first

    def _took_claims(self, jobs: list[_Job], first: dict[str, _Job], claims: Mapping[str, Claim | None]) -> None:
        for job in jobs:
            claim = claims[job.event_id] if first[job.event_id] is job else None
            self._guard(job, self._take_claim, claim)
        self._crash("after_claim")

    def _complete_and_claim(self, done: list[_Job], jobs: list[_Job]) -> None:
        """:meth:`_complete_all` of ``done`` and :meth:`_claim_all` of ``jobs`` in one transaction.

        Why: a pipeline thread that takes its next delivery as it finishes one records the effect of the one
        and claims the next together: one store write per message instead of two (issue 15). The claim
        still waits behind no send. When the keys meet (the same event twice in a row) or the shared write
        fails, each half is written on its own, so each keeps its own verdict.
        """
        done = [j for j in done if j.outcome is None]
        jobs = [j for j in jobs if j.outcome is None]
        if not done or not jobs or not {j.event_id for j in done}.isdisjoint(j.event_id for j in jobs):
            self._complete_all(done)
            self._claim_all(jobs)
            return
        first = self._claimants(jobs)
        writes: dict[str, _StoreWrite] = {j.event_id: (j.owner, j.reply or {}) for j in done}
        writes.update({eid: job.owner for eid, job in first.items()})
        try:
            claims = self._writes.submit(writes) or {}
        except Exception as exc:  # written again apart: each half fails or succeeds (and logs) on its own
            self._log.warning("store_shared_write_failed", error=_clip(f"{type(exc).__name__}: {exc}"))
            self._complete_all(done)
            self._claim_all(jobs)
            return
        self._crash("after_done")
        self._took_claims(jobs, first, claims)

    def _take_claim(self, job: _Job, claim: Claim | None) -> None:
        if claim is None or claim.outcome is ClaimOutcome.HELD:
            msg = f"another attempt holds the claim for {self.lease_s:.0f}s at most"
            raise ClaimHeld(msg)
        assert job.event is not None  # noqa: S101 - validated before any claim
        if claim.outcome is ClaimOutcome.DONE:
            job.outcome = self._emit(job.event, claim.result or {}, "duplicate")
            return
        job.claimed = True
        job.reclaimed = claim.outcome is ClaimOutcome.RECLAIMED

    def _write_store(self, writes: dict[str, _StoreWrite]) -> dict[str, Claim | None]:
        """One transaction of the group commit: the claims (an owner) and completions ((owner, reply)) in it.

        Returns each claim's :class:`Claim`, and None for each completion.
        """
        claims: dict[str, str] = {}
        completions: dict[str, tuple[str, dict[str, Any]]] = {}
        for event_id, write in writes.items():
            if isinstance(write, str):
                claims[event_id] = write
            else:
                completions[event_id] = write
        claimed = self.store.write_many(self.name, claims=claims, completions=completions, lease_s=self.lease_s)
        return {**claimed, **dict.fromkeys(completions)}

    def _reconcile(self, job: _Job) -> None:
        """An earlier attempt may have applied the effect: ask the target before sending again.

        Only the target's answer moves the claim: found (the earlier reply becomes this attempt's, and
        nothing is sent) or "not there" (the store clears "maybe applied" and this attempt sends). A
        lookup that fails raises, and the claim stays "maybe applied" for the next attempt to ask again.
        """
        if not job.reclaimed:
            return
        if self.operation.lookup is None:
            raise AmbiguousOutcome(
                f"an earlier attempt may have applied {self.route.spec.to} and the target has no lookup"
            )
        key = idempotency_key(self.name, job.event_id)
        found = self._observed(f"{self.route.operation}.lookup", self.operation.lookup, key)
        job.log.info("reconciled", found=found is not None)
        self._crash("after_lookup")
        if found is not None:
            job.reply = found.model_dump(mode="json")
            return
        if not self.store.confirm_absent(self.name, job.event_id, owner=job.owner):
            job.claimed = False  # another attempt took it over meanwhile: it decides, not us
            raise ClaimHeld("the claim's lease ran out while reconciling; the attempt that took it over decides")
        job.reclaimed = False

    def _send(self, job: _Job) -> None:
        if job.reply is not None:  # the lookup found the effect: nothing to send
            return
        assert job.event is not None  # noqa: S101 - validated before any send
        request = self.route.adapter(job.event, now=self.clock())
        job.reply = self._observed(
            self.route.operation, self.operation.call, request, idempotency_key(self.name, job.event_id)
        ).model_dump(mode="json")
        self._crash("after_send")

    def _complete_all(self, jobs: list[_Job]) -> None:
        """Record every applied effect in one transaction before any result is emitted."""
        jobs = [j for j in jobs if j.outcome is None]
        if not jobs:
            return
        try:
            self._writes.submit({j.event_id: (j.owner, j.reply or {}) for j in jobs})
        except Exception as exc:  # a bug or the store being down: the effects may be applied, reconcile later
            for job in jobs:
                self._fail(job, exc)
            return
        self._crash("after_done")

    def _deliver(self, job: _Job) -> None:
        assert job.event is not None  # noqa: S101 - validated before delivery
        if self._ticks is not None and job.cursor_version is not None:
            self._ticks.save_cursor(job.reply, job.cursor_version, job.log)
        job.outcome = self._emit(job.event, job.reply or {}, "delivered")

    def _guard(self, job: _Job, step: Callable[..., None], *args: Any) -> None:
        """Run one step for one job; its failure becomes that job's retry or dead letter, never an exception."""
        try:
            step(job, *args)
        except Exception as exc:
            self._fail(job, exc)

    def _fail(self, job: _Job, exc: Exception) -> None:
        if isinstance(exc, TransientError):
            self._transient(job, exc)
        elif isinstance(exc, PermanentError):
            if job.claimed:
                if isinstance(exc, AmbiguousOutcome):  # nobody can tell: keep it "maybe applied"
                    self._safe_release(job, maybe_applied=True)
                else:  # the store keeps a claim "maybe applied" if it was
                    self._safe_fail(job, exc)
            job.outcome = self._dead(job, exc)
        else:  # a bug or the store being down: never lose the message, retry it
            job.log.error("unexpected_error", exc_info=exc)
            wrapped = TransientError(f"internal error: {type(exc).__name__}: {exc}")
            wrapped.kind = "internal"
            wrapped.maybe_applied = True  # we cannot tell how far it got
            self._transient(job, wrapped)
        job.claimed = False

    def _transient(self, job: _Job, exc: TransientError) -> None:
        """Release the claim as this attempt leaves it, then retry, or dead-letter a target answering garbage."""
        if isinstance(exc, TargetGarbled):
            job.garbled += 1
        if job.claimed:
            self._safe_release(job, maybe_applied=exc.maybe_applied)
        if isinstance(exc, TargetGarbled) and job.garbled >= self._max_garbled:
            detail = f"{job.garbled} replies the connector refused for this message; the last: {exc}"
            if self.observer is not None:
                self._tell(self.observer.after_garbled, self.route.connector, self.name, _clip(detail))
            job.outcome = self._dead(job, TargetGarbled(detail))
            return
        job.outcome = self._retry_or_dead(job, exc)

    # -- what goes out -------------------------------------------------------------------------------
    def _emit(self, event: Event, reply: dict[str, Any], outcome: str) -> Outcome:
        env = event.envelope
        messages = [
            OutMessage(RESULTS_EXCHANGE, key, body, props)
            for key, body, props in (self._emissions.messages(reply, env) if self._emissions is not None else ())
        ]
        if self._emits is None:
            if not messages:
                return Outcome(outcome)
            return Outcome(outcome, tuple(messages), crash_after_confirm=self.crash.hits("after_result_confirm"))
        first = self._result(event, self._emits, reply, outcome)
        return Outcome(outcome, (*first.messages, *messages), crash_after_confirm=first.crash_after_confirm)

    def _result(
        self,
        event: Event,
        event_type: str,
        payload: dict[str, Any],
        outcome: str,
        fields: dict[str, Any] | None = None,
    ) -> Outcome:
        """The outcome with its result event: one id per (route, event), whatever the result's type."""
        env = event.envelope
        body, props = result_event(
            route=self.name,
            event_id=result_event_id(self.name, str(env.event_id)),
            event_type=event_type,
            occurred_at=self.clock(),
            dossier_code=env.dossier_code,
            cause=env,
            payload=payload,
        )
        msg = OutMessage(RESULTS_EXCHANGE, event_type, body, props)
        crash = self.crash.hits("after_result_confirm")
        return Outcome(outcome, (msg,), crash_after_confirm=crash, fields=fields or {})

    def _retry_or_dead(self, job: _Job, exc: TransientError) -> Outcome:
        # a held claim, an open breaker or refused credentials sent nothing of this message: waiting for them
        # must not spend the route's attempts
        next_attempts = job.attempt - 1 if isinstance(exc, ClaimHeld) or exc.waits_on_connector else job.attempt
        if next_attempts >= self._max_attempts:
            return self._dead(job, exc, kind=f"exhausted:{exc.kind}")
        headers = self._bus_headers(job)
        delay, parked = self._delay(exc, headers, next_attempts)
        headers[ATTEMPTS_HEADER] = next_attempts
        headers["x-last-error"] = _clip(f"{exc.kind}: {exc}")
        msg = OutMessage("", retry_queue(self.name, delay), job.delivery.body, self._copy_props(job, headers))
        fields = {"error_kind": exc.kind, "error": _clip(str(exc)), "delay_s": delay}
        return Outcome("retry", (msg,), fields=fields | ({"parked": parked} if parked else {}))

    def _delay(self, exc: TransientError, headers: dict[str, Any], next_attempts: int) -> tuple[float, int]:
        """The delay queue to wait in, and the park's number when the connector turned the message away.

        A parked message climbs the backoff by its parks in a row (``x-parked``, routes/parking.py), never
        sooner than the connector's ``retry_after``; any other retry by its attempts, and clears the parks.
        """
        if not exc.waits_on_connector:
            headers.pop(PARKS_HEADER, None)
            return self._backoff[min(max(next_attempts - 1, 0), len(self._backoff) - 1)], 0
        parks = parks_before(headers) + 1
        headers[PARKS_HEADER] = parks
        return park_delay(self._backoff, parks, exc.retry_after), parks

    def _dead(self, job: _Job, exc: BusError, *, kind: str | None = None) -> Outcome:
        delivery = job.delivery
        headers = self._bus_headers(job)
        headers.update(
            {
                "x-error-kind": kind or exc.kind,
                "x-error": _clip(str(exc)),
                ATTEMPTS_HEADER: job.attempt,
                "x-route": self.name,
                "x-failed-at": datetime.now(UTC).isoformat(),
                "x-original-exchange": delivery.exchange,
                "x-original-routing-key": delivery.routing_key,
            }
        )
        if exc.field:
            headers["x-error-field"] = exc.field
        msg = OutMessage("", dlq(self.name), delivery.body, self._copy_props(job, headers))
        return Outcome("dead_lettered", (msg,), fields={"error_kind": kind or exc.kind, "error": _clip(str(exc))})

    def _bus_headers(self, job: _Job) -> dict[str, Any]:
        """The headers a copy of the delivery carries: the ones it may keep, and when the route first saw it."""
        headers = job.delivery.headers
        headers[RECEIVED_HEADER] = job.received_at.isoformat()
        if job.garbled:
            headers[GARBLED_HEADER] = job.garbled
        else:
            headers.pop(GARBLED_HEADER, None)
        return headers

    @staticmethod
    def _copy_props(job: _Job, headers: dict[str, Any]) -> pika.BasicProperties:
        """The copy's properties (``copy_properties``); the message id in canonical form once the event parsed."""
        props = copy_properties(job.delivery.properties, headers)
        if job.event_id:
            props.message_id = job.event_id
        return props

    # -- helpers -------------------------------------------------------------------------------------
    def _done(self, job: _Job) -> Outcome:
        outcome = job.outcome
        if outcome is None:  # every step ran and none decided: cannot happen, but never ack on a guess
            outcome = self._retry_or_dead(job, TransientError("internal error: no outcome"))
        duration_s = time.perf_counter() - job.started
        duration_ms = round(duration_s * 1000, 2)
        level = "warning" if outcome.outcome in {"retry", "dead_lettered"} else "info"
        if outcome.fields.get("parked"):  # the connector's breaker says it once per change, with a count
            level = "debug"
        getattr(job.log, level)("processed", outcome=outcome.outcome, duration_ms=duration_ms, **outcome.fields)
        if self._ticks is not None and job.cursor_version is not None:
            self._ticks.record(outcome.outcome, job.log)
        if self.observer is not None:
            kind = outcome.fields.get("error_kind")
            self._tell(self.observer.after_process, self.name, outcome.outcome, duration_s, kind)
        return outcome

    def _observed(self, operation: str, call: Callable[..., T], *args: Any) -> T:
        """Call the target, telling the observer how long the call took and what it raised."""
        observer = self.observer
        if observer is None:
            return call(*args)
        started = time.perf_counter()
        try:
            result = call(*args)
        except BaseException as exc:
            elapsed = time.perf_counter() - started
            self._tell(observer.after_connector_call, self.route.connector, operation, elapsed, exc)
            raise
        elapsed = time.perf_counter() - started
        self._tell(observer.after_connector_call, self.route.connector, operation, elapsed, None)
        return result

    def _tell(self, hook: Callable[..., None], *args: Any) -> None:
        """Run an observer hook; a broken observer is logged and never changes what happens to a message."""
        try:
            hook(*args)
        except Exception as exc:
            self._log.warning("observer_failed", hook=getattr(hook, "__name__", "?"), error=repr(exc))

    def _safe_release(self, job: _Job, *, maybe_applied: bool) -> None:
        try:
            self.store.release(self.name, job.event_id, owner=job.owner, maybe_applied=maybe_applied)
        except Exception:  # the lease will expire on its own; the next attempt reconciles
            job.log.exception("store_release_failed")

    def _safe_fail(self, job: _Job, exc: BusError) -> None:
        try:
            self.store.fail(self.name, job.event_id, owner=job.owner, error=_clip(str(exc)))
        except Exception:
            job.log.exception("store_fail_failed")

    def _crash(self, point: str) -> None:
        self.crash.crash(point)


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})


def _clip(text: str) -> str:
    text = scrub_text(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def compile_when(expression: str | None) -> Any:
    """Compile a route's JMESPath condition once, when the route is built."""
    return None if expression is None else jmespath.compile(expression)
