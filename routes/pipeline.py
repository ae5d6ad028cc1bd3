"""The worker pipeline for one delivery: validate ▶ when ▶ claim ▶ adapt ▶ send ▶ record ▶ emit.

It runs off the AMQP I/O thread and returns an :class:`Outcome`: the messages to publish (a result event, a
retry copy or a dead letter) before the delivery may be acked. The I/O thread publishes them with confirms
and acks only after every one is confirmed, so a crash anywhere leaves the message in the queue and the claim
in the store tells the next attempt what already happened:

- claim NEW: nothing applied yet, send;
- claim RECLAIMED: an earlier attempt may have applied the effect: ask the target by idempotency key first;
- claim DONE: applied before; re-emit the stored result (same result event_id) and ack;
- claim HELD: another attempt holds a live lease: park the message in a delay queue.

A side-effecting call whose outcome is unknown is never repeated here: it goes back through the claim.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import jmespath
import structlog

from routes.amqp import copy_properties, event_properties
from routes.idempotency import Claim, ClaimOutcome, IdempotencyStore
from routes.parking import PARKS_HEADER, park_delay, parks_before
from routes.topology import RESULTS_EXCHANGE, dlq, retry_queue
from schemas.envelope import Event, parse_event
from schemas.errors import (
    AmbiguousOutcome,
    BusError,
    ClaimHeld,
    PermanentError,
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

T = TypeVar("T")

VN_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
#: names result event ids: uuid5(RESULT_NS, "<route>/<event_id>") is the same on every re-emit
RESULT_NS = uuid.UUID("6f1d3c52-8a0e-4d7e-9b0a-3c1f2e4d5a6b")
#: names idempotency keys sent to targets: uuid5(KEY_NS, "<route>/<event_id>")
KEY_NS = uuid.UUID("0b7e2f9a-1c4d-4e8b-a5f6-7d8c9e0a1b2c")
ATTEMPTS_HEADER = "x-attempts"
MAX_ERROR_CHARS = 1000
CRASH_POINTS = frozenset({"after_claim", "after_send", "after_done", "after_result_confirm", "after_ack"})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the consumer received it."""

    body: bytes
    properties: pika.BasicProperties
    exchange: str
    routing_key: str
    redelivered: bool

    @property
    def headers(self) -> dict[str, Any]:
        """The AMQP headers (empty dict when there are none)."""
        return dict(self.properties.headers or {})

    @property
    def attempts_before(self) -> int:
        """How many attempts this message had before this one (our own header; x-death is not trusted)."""
        value = self.headers.get(ATTEMPTS_HEADER, 0)
        return value if isinstance(value, int) and value >= 0 else 0


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

    outcome: str  # delivered | skipped | duplicate | retry | dead_lettered
    messages: tuple[OutMessage, ...] = ()
    crash_after_confirm: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Job:
    """One delivery on its way through :meth:`RouteRunner.handle_batch`; ``outcome`` set ends its way."""

    delivery: Delivery
    started: float
    attempt: int
    log: Any
    event: Event | None = None
    event_id: str = ""
    owner: str = ""
    claimed: bool = False
    reply: dict[str, Any] | None = None
    outcome: Outcome | None = None


def idempotency_key(route: str, event_id: str) -> str:
    """The key a connector sends to its target for this route's effect of this event."""
    return str(uuid.uuid5(KEY_NS, f"{route}/{event_id}"))


def result_event_id(route: str, event_id: str) -> str:
    """The id of the result event a route emits for an event: stable across re-emits."""
    return str(uuid.uuid5(RESULT_NS, f"{route}/{event_id}"))


def crash_points_from_env() -> frozenset[str]:
    """``IGATE_CRASH_AT=after_send,after_done`` makes the worker SIGKILL itself there (reliability tests)."""
    raw = os.environ.get("IGATE_CRASH_AT", "")
    points = frozenset(p.strip() for p in raw.split(",") if p.strip())
    unknown = points - CRASH_POINTS
    if unknown:
        raise ValueError(f"IGATE_CRASH_AT: unknown crash point(s) {sorted(unknown)}; known: {sorted(CRASH_POINTS)}")
    return points


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
        crash_points: frozenset[str] = frozenset(),
        crash_rate: float = 1.0,
        observer: Observer | None = None,
    ) -> None:
        self.route = route
        self.name = route.spec.name
        self.operation = operation
        self.store = store
        self.payload_models = payload_models
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.clock = clock
        self.crash_points = crash_points
        self.crash_rate = crash_rate
        #: told of each outcome and each call to the target (metrics, connector health); None costs nothing
        self.observer = observer
        self._log = structlog.get_logger("igate_bus.route").bind(
            route=self.name, connector=route.connector, operation=route.operation
        )
        self._when = route.when
        self._backoff = route.spec.retry.backoff
        self._max_attempts = route.spec.retry.max_attempts
        self._emits = route.spec.emits

    # -- the pipeline -------------------------------------------------------------------------------
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
        """
        jobs = [self._job(d) for d in deliveries]
        for job in jobs:
            self._guard(job, self._validate)
        if self.operation.effect:
            self._claim_all([j for j in jobs if j.outcome is None])
        for job in jobs:
            if job.outcome is None:
                self._guard(job, self._send)
        if self.operation.effect:
            self._complete_all([j for j in jobs if j.outcome is None])
        for job in jobs:
            if job.outcome is None:
                self._guard(job, self._deliver)
        return [self._done(job) for job in jobs]

    def _job(self, delivery: Delivery) -> _Job:
        attempt = delivery.attempts_before + 1
        log = self._log.bind(event_id=delivery.properties.message_id, attempt=attempt)
        return _Job(delivery, time.perf_counter(), attempt, log)

    def _validate(self, job: _Job) -> None:
        delivery = job.delivery
        event = parse_event(
            delivery.body,
            payload_models=self.payload_models,
            content_type=delivery.properties.content_type,
            message_id=delivery.properties.message_id,
            max_bytes=self.route.spec.max_bytes,
        )
        env = event.envelope
        job.log = job.log.bind(
            event_id=str(env.event_id),
            dossier_code=env.dossier_code,
            event_type=env.event_type,
            correlation_id=env.correlation_id or str(env.event_id),  # as _emit stamps the results
        )
        if self._when is not None and not _truthy(self._when.search(event.as_dict())):
            job.outcome = Outcome("skipped")
            return
        job.event = event
        job.event_id = str(env.event_id)

    def _claim_all(self, jobs: list[_Job]) -> None:
        """Claim every job's event in one transaction; a key met twice in a batch is claimed once, then held."""
        if not jobs:
            return
        first: dict[str, _Job] = {}
        owner = f"{self.worker_id}/{uuid.uuid4().hex[:8]}"  # this attempt of every event of the batch
        for job in jobs:
            job.owner = owner
            first.setdefault(job.event_id, job)
        try:
            claims = self.store.claim_many(
                self.name, {eid: job.owner for eid, job in first.items()}, lease_s=self.lease_s
            )
        except Exception as exc:  # the store is down: nothing was claimed, nothing sent; retry every one
            for job in jobs:
                self._fail(job, exc)
            return
        for job in jobs:
            claim = claims[job.event_id] if first[job.event_id] is job else None
            self._guard(job, self._take_claim, claim)
        self._crash("after_claim")

    def _take_claim(self, job: _Job, claim: Claim | None) -> None:
        if claim is None or claim.outcome is ClaimOutcome.HELD:
            msg = f"another attempt holds the claim for {self.lease_s:.0f}s at most"
            raise ClaimHeld(msg)
        assert job.event is not None  # noqa: S101 - validated before any claim
        if claim.outcome is ClaimOutcome.DONE:
            job.outcome = self._emit(job.event, claim.result or {}, "duplicate")
            return
        job.claimed = True
        if claim.outcome is ClaimOutcome.RECLAIMED:
            job.reply = self._reconcile(idempotency_key(self.name, job.event_id), job.log)

    def _send(self, job: _Job) -> None:
        if job.reply is None:
            assert job.event is not None  # noqa: S101 - validated before any send
            request = self.route.adapter(job.event, now=self.clock())
            job.reply = self._observed(
                self.route.operation, self.operation.call, request, idempotency_key(self.name, job.event_id)
            ).model_dump(mode="json")
            self._crash("after_send")

    def _complete_all(self, jobs: list[_Job]) -> None:
        """Record every applied effect in one transaction before any result is emitted."""
        if not jobs:
            return
        try:
            self.store.complete_many(self.name, {j.event_id: (j.owner, j.reply or {}) for j in jobs})
        except Exception as exc:  # a bug or the store being down: the effects may be applied, reconcile later
            for job in jobs:
                self._fail(job, exc)
            return
        self._crash("after_done")

    def _deliver(self, job: _Job) -> None:
        assert job.event is not None  # noqa: S101 - validated before delivery
        job.outcome = self._emit(job.event, job.reply or {}, "delivered")

    def _guard(self, job: _Job, step: Callable[..., None], *args: Any) -> None:
        """Run one step for one job; its failure becomes that job's retry or dead letter, never an exception."""
        try:
            step(job, *args)
        except Exception as exc:
            self._fail(job, exc)

    def _fail(self, job: _Job, exc: Exception) -> None:
        if isinstance(exc, TransientError):
            if job.claimed:
                self._safe_release(job, maybe_applied=exc.maybe_applied)
            job.outcome = self._retry_or_dead(job.delivery, exc, job.attempt)
        elif isinstance(exc, PermanentError):
            if job.claimed and not isinstance(exc, AmbiguousOutcome):
                self._safe_fail(job, exc)
            job.outcome = self._dead(job.delivery, exc, job.attempt)
        else:  # a bug or the store being down: never lose the message, retry it
            job.log.error("unexpected_error", exc_info=exc)
            if job.claimed:
                self._safe_release(job, maybe_applied=True)
            wrapped = TransientError(f"internal error: {type(exc).__name__}: {exc}")
            wrapped.kind = "internal"
            job.outcome = self._retry_or_dead(job.delivery, wrapped, job.attempt)
        job.claimed = False

    # -- steps ---------------------------------------------------------------------------------------
    def _reconcile(self, key: str, log: Any) -> dict[str, Any] | None:
        """An earlier attempt may have applied the effect: ask the target before sending again."""
        if self.operation.lookup is None:
            raise AmbiguousOutcome(
                f"an earlier attempt may have applied {self.route.spec.to} and the target has no lookup"
            )
        found = self._observed(f"{self.route.operation}.lookup", self.operation.lookup, key)
        log.info("reconciled", found=found is not None)
        return None if found is None else found.model_dump(mode="json")

    def _emit(self, event: Event, reply: dict[str, Any], outcome: str) -> Outcome:
        if self._emits is None:
            return Outcome(outcome)
        env = event.envelope
        rid = result_event_id(self.name, str(env.event_id))
        correlation = env.correlation_id or str(env.event_id)
        result = {
            "event_id": rid,
            "event_type": self._emits,
            "occurred_at": self.clock().astimezone(VN_TZ).isoformat(),
            "source": f"igate-bus/{self.name}",
            "dossier_code": env.dossier_code,
            "correlation_id": correlation,
            "payload": reply,
        }
        props = event_properties(
            event_id=rid,
            event_type=self._emits,
            correlation_id=correlation,
            headers={"x-route": self.name, "x-cause": str(env.event_id)},
        )
        body = json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()
        msg = OutMessage(RESULTS_EXCHANGE, self._emits, body, props)
        return Outcome(outcome, (msg,), crash_after_confirm="after_result_confirm" in self.crash_points)

    def _retry_or_dead(self, delivery: Delivery, exc: TransientError, attempt: int) -> Outcome:
        # a held claim, an open breaker or refused credentials sent nothing of this message: waiting for them
        # must not spend the route's attempts
        next_attempts = attempt - 1 if isinstance(exc, ClaimHeld) or exc.waits_on_connector else attempt
        if next_attempts >= self._max_attempts:
            return self._dead(delivery, exc, attempt, kind=f"exhausted:{exc.kind}")
        headers = delivery.headers
        delay, parked = self._delay(exc, headers, next_attempts)
        headers[ATTEMPTS_HEADER] = next_attempts
        headers["x-last-error"] = _clip(f"{exc.kind}: {exc}")
        props = copy_properties(delivery.properties, headers)
        msg = OutMessage("", retry_queue(self.name, delay), delivery.body, props)
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

    def _dead(self, delivery: Delivery, exc: BusError, attempt: int, *, kind: str | None = None) -> Outcome:
        headers = delivery.headers
        headers.update(
            {
                "x-error-kind": kind or exc.kind,
                "x-error": _clip(str(exc)),
                "x-attempts": attempt,
                "x-route": self.name,
                "x-failed-at": datetime.now(UTC).isoformat(),
                "x-original-exchange": delivery.exchange,
                "x-original-routing-key": delivery.routing_key,
            }
        )
        props = copy_properties(delivery.properties, headers)
        msg = OutMessage("", dlq(self.name), delivery.body, props)
        return Outcome("dead_lettered", (msg,), fields={"error_kind": kind or exc.kind, "error": _clip(str(exc))})

    # -- helpers -------------------------------------------------------------------------------------
    def _done(self, job: _Job) -> Outcome:
        outcome = job.outcome
        if outcome is None:  # every step ran and none decided: cannot happen, but never ack on a guess
            outcome = self._retry_or_dead(job.delivery, TransientError("internal error: no outcome"), job.attempt)
        duration_s = time.perf_counter() - job.started
        duration_ms = round(duration_s * 1000, 2)
        level = "warning" if outcome.outcome in {"retry", "dead_lettered"} else "info"
        if outcome.fields.get("parked"):  # the connector's breaker says it once per change, with a count
            level = "debug"
        getattr(job.log, level)("processed", outcome=outcome.outcome, duration_ms=duration_ms, **outcome.fields)
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
        if point in self.crash_points and (self.crash_rate >= 1.0 or _rand() < self.crash_rate):
            os.kill(os.getpid(), signal.SIGKILL)


def _rand() -> float:
    import random

    return random.random()  # noqa: S311 - chooses when to crash in a test, not a secret  # noqa: S311 - chooses when to crash in a test, not a secret


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})


def _clip(text: str) -> str:
    text = scrub_text(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def compile_when(expression: str | None) -> Any:
    """Compile a route's JMESPath condition once, when the route is built."""
    return None if expression is None else jmespath.compile(expression)
