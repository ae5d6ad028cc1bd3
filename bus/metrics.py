"""Prometheus metrics of the bus, the observer that feeds them, and the queue inspection behind depth and age.

Where it sits: beside the whole path (event → route → adapter → connector → result/DLQ). This module defines
the series a **worker** exports (the ingress defines its own in ``bus/ingress/metrics.py``: each process
exports what it does). Each worker process has one :class:`BusMetrics` with its own ``CollectorRegistry``
(never the global one, so two workers in one test process do not collide), and
:func:`register_worker_collectors` adds the series read at scrape time. :class:`MetricsObserver` is the
:class:`routes.observer.Observer` that wiring hands to the worker and its route runners: it counts outcomes,
times the pipeline and the connector calls, tells the :class:`bus.health.HealthMonitor` of every call, and
notes the timestamp of each message a consumer takes (:class:`HeadAges`). Queue depths, connector health and
the worker's counters are read when Prometheus scrapes, by custom collectors, so they cost nothing per
message.

Series (prefix ``igate_bus_``): ``messages_processed_total{route,outcome}``,
``messages_failed_total{route,error_kind}``, ``messages_retried_total{route}``,
``messages_dead_lettered_total{route}``, ``processing_seconds{route,outcome}`` (histogram),
``connector_call_seconds{connector,operation,result}`` (histogram), ``deliveries_*_total{route}`` (the
worker's received/acked/requeued), ``worker_consuming``, ``connector_state{connector,state}``,
``connector_breaker_state{connector,state}``, ``connector_error_rate``, ``connector_latency_p95_seconds``,
``connector_last_success_timestamp_seconds``, ``connector_probe_latency_seconds``, ``broker_up``,
``queue_messages{queue,route,kind}``, ``queue_consumers``, ``queue_oldest_message_age_seconds``.

The age of the oldest message, and why it is measured two ways:

- **DLQs and** ``unrouted`` are classic queues: the head is peeked with ``basic.get`` and put back with
  ``basic.nack(requeue=True)``, which costs nothing there (``routes/dlq.py`` browses the same way). The age
  is taken from ``x-failed-at`` (time in the DLQ), else the AMQP ``timestamp``.
- **Route queues** are quorum queues with ``x-delivery-limit``: a peeked and requeued message counts as a
  delivery, so monitoring would push messages toward the DLQ. They are never peeked. Instead the worker's
  consumer notes the ``timestamp`` of each message it takes (:class:`HeadAges`): the messages still ready
  queued behind it, so none is older than ``now - that timestamp``. The estimate is also capped by the time
  since a scrape last saw the queue empty (a message that arrives after an idle hour is not an hour old).
  It is exact while the consumer keeps taking messages, and it grows while the consumer is stuck, which is
  what an alert wants. Its limits: AMQP timestamps have one-second resolution and come from the publisher's
  clock (a message without one counts from when the consumer took it); a retried message keeps its first
  timestamp, so its age includes its time in the delay queues; and only a process that runs the route's
  consumer knows it (elsewhere the age is absent, never guessed). Retry queues get depth only: their TTL
  bounds their age.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import pika
import structlog
from pika.exceptions import ChannelClosedByBroker
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bus.health import BREAKER_STATES, STATES
from routes.amqp import parameters
from routes.observer import Observer
from routes.topology import UNROUTED_QUEUE, dlq, retry_queue, route_queue

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from prometheus_client.core import Metric

    from bus.health import HealthMonitor
    from routes.model import Route
    from routes.worker import Worker

log = structlog.get_logger("igate_bus.metrics")

NAMESPACE: Final = "igate_bus"
OUTCOMES: Final = ("delivered", "skipped", "duplicate", "superseded", "retry", "dead_lettered")
#: pipeline and connector latencies: from a local noop (ms) to a slow SOAP target (tens of seconds)
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: seconds a queue inspection may take (connect, declare, peek) before the broker counts as unreachable
INSPECT_TIMEOUT_S: Final = 3.0
#: a scrape within this many seconds of the last one reuses its queue figures (bursts of scrapes, /health)
INSPECT_CACHE_S: Final = 1.0

QueueKind = Literal["route", "retry", "dlq", "unrouted"]


# -- the age of a route queue's head ---------------------------------------------------------------------
class HeadAges:
    """Per route, the AMQP timestamp of the last message its consumer took, and when the queue was last empty.

    :meth:`seen` runs on the AMQP I/O thread for every message: one clock read and one dict store (atomic
    in CPython), no lock.
    """

    __slots__ = ("_clock", "_empty", "_seen")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._empty: dict[str, float] = {}

    def seen(self, route: str, published_at: int | None) -> None:
        """The consumer of ``route`` took a message published at ``published_at`` (epoch seconds, or None)."""
        self._seen[route] = float(published_at) if published_at else self._clock()

    def estimate(self, route: str, depth: int | None) -> float | None:
        """The age in seconds of the oldest ready message, at most; None when this process cannot tell.

        Args:
            route: the route.
            depth: ready messages in its queue now (None: the queue is missing).
        """
        now = self._clock()
        if depth is None:
            return None
        if depth == 0:
            self._empty[route] = now
            return 0.0
        published = self._seen.get(route)
        if published is None:
            return None
        age = now - published
        empty_at = self._empty.get(route)
        if empty_at is not None and empty_at > published:
            age = min(age, now - empty_at)
        return round(max(age, 0.0), 3)


# -- queue inspection ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue as the broker reported it (``depth`` None: the queue does not exist)."""

    queue: str
    kind: QueueKind
    route: str | None
    depth: int | None
    consumers: int | None
    oldest_age_s: float | None


@dataclass(frozen=True, slots=True)
class RouteQueues:
    """A route's queues: the one it consumes, its delay queues and its DLQ."""

    route: str
    connector: str
    main: QueueInfo
    retry: tuple[QueueInfo, ...]
    dead: QueueInfo


def queues_of(routes: Iterable[Route]) -> list[tuple[str, QueueKind, str | None]]:
    """(queue, kind, route) for every queue of ``routes``, then ``unrouted``; names from routes.topology."""
    out: list[tuple[str, QueueKind, str | None]] = []
    for r in routes:
        name = r.spec.name
        out.append((route_queue(name), "route", name))
        out.extend((retry_queue(name, d), "retry", name) for d in sorted(set(r.spec.retry.backoff)))
        out.append((dlq(name), "dlq", name))
    out.append((UNROUTED_QUEUE, "unrouted", None))
    return out


def group_by_route(routes: Sequence[Route], infos: Sequence[QueueInfo]) -> list[RouteQueues]:
    """The inspected queues arranged per route (routes whose queues were not inspected are left out)."""
    by_name = {i.queue: i for i in infos}
    out = []
    for r in routes:
        name = r.spec.name
        main, dead = by_name.get(route_queue(name)), by_name.get(dlq(name))
        if main is None or dead is None:
            continue
        retry = tuple(by_name[q] for q, kind, _ in queues_of([r]) if kind == "retry" and q in by_name)
        out.append(RouteQueues(name, r.connector, main, retry, dead))
    return out


def _peek_age(channel: Any, queue: str, now: float) -> float | None:
    """Age of a classic queue's head: got without ack and put back at once (free on a classic queue)."""
    method, props, _body = channel.basic_get(queue, auto_ack=False)
    if method is None:
        return None
    channel.basic_nack(method.delivery_tag, requeue=True)
    failed_at = (props.headers or {}).get("x-failed-at")
    if isinstance(failed_at, bytes):
        failed_at = failed_at.decode(errors="replace")
    if isinstance(failed_at, str):
        try:
            return round(max(now - datetime.fromisoformat(failed_at).timestamp(), 0.0), 3)
        except ValueError:
            pass
    if props.timestamp:
        return round(max(now - float(props.timestamp), 0.0), 3)
    return None


class QueueInspector:
    """Reads depth, consumers and head age of every queue of some routes on a short-lived connection.

    Args:
        amqp_url: the broker.
        routes: whose queues to read (plus ``unrouted``).
        head_ages: the consumer's view of route queue heads, in a worker process; None elsewhere.
        peek_classic: peek DLQs and ``unrouted`` for their head's age.
        timeout_s: socket timeout of the connection. Defaults to 3 s.
        cache_s: reuse the last figures within this many seconds. Defaults to 1 s.
    """

    def __init__(
        self,
        amqp_url: str,
        routes: Sequence[Route],
        *,
        head_ages: HeadAges | None = None,
        peek_classic: bool = True,
        timeout_s: float = INSPECT_TIMEOUT_S,
        cache_s: float = INSPECT_CACHE_S,
    ) -> None:
        self.routes = list(routes)
        self._url = amqp_url
        self._queues = queues_of(self.routes)
        self._head_ages = head_ages
        self._peek = peek_classic
        self._timeout = timeout_s
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[QueueInfo]] | None = None

    def inspect(self) -> list[QueueInfo]:
        """Every queue now (or within ``cache_s``).

        Raises:
            pika.exceptions.AMQPError: the broker is unreachable or refused us.
            OSError: the same, from the socket.
        """
        with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached[0] < self._cache_s:
                return cached[1]
            infos = self._read()
            self._cached = (time.monotonic(), infos)
            return infos

    def _read(self) -> list[QueueInfo]:
        params = parameters(
            self._url,
            name="igate-bus monitor",
            socket_timeout=self._timeout,
            blocked_connection_timeout=self._timeout,
        )
        conn = pika.BlockingConnection(params)
        try:
            channel = conn.channel()
            out = []
            for queue, kind, route in self._queues:
                try:
                    ok = channel.queue_declare(queue, passive=True)
                except ChannelClosedByBroker:  # 404: not declared (yet); the channel is gone with it
                    out.append(QueueInfo(queue, kind, route, None, None, None))
                    channel = conn.channel()
                    continue
                depth, consumers = int(ok.method.message_count), int(ok.method.consumer_count)
                age: float | None = None
                if kind in {"dlq", "unrouted"}:
                    age = 0.0 if depth == 0 else (_peek_age(channel, queue, time.time()) if self._peek else None)
                elif kind == "route" and route is not None:
                    age = self._head_ages.estimate(route, depth) if self._head_ages else (0.0 if depth == 0 else None)
                out.append(QueueInfo(queue, kind, route, depth, consumers, age))
            return out
        finally:
            if conn.is_open:
                conn.close()


# -- counters and histograms fed by the observer ---------------------------------------------------------
class BusMetrics:
    """The process's registry, with the per-message counters and histograms already in it.

    Args:
        routes: route names whose series exist (at zero) from the start, so dashboards see every route.
        registry: where to register; a fresh ``CollectorRegistry`` by default.
    """

    def __init__(self, routes: Iterable[str] = (), *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.processed = Counter(
            "messages_processed",
            "Deliveries that got an outcome, by route and outcome.",
            ["route", "outcome"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.failed = Counter(
            "messages_failed",
            "Deliveries that failed (retried or dead-lettered), by route and error kind.",
            ["route", "error_kind"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.retried = Counter(
            "messages_retried", "Deliveries sent to a delay queue.", ["route"], namespace=NAMESPACE, registry=reg
        )
        self.dead_lettered = Counter(
            "messages_dead_lettered", "Deliveries sent to the DLQ.", ["route"], namespace=NAMESPACE, registry=reg
        )
        self.processing = Histogram(
            "processing_seconds",
            "Time in the pipeline per delivery (validate to outcome, before publish and ack).",
            ["route", "outcome"],
            namespace=NAMESPACE,
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self.connector_calls = Histogram(
            "connector_call_seconds",
            "Calls to targets; result is ok, failed (transient), rejected (the target said no) or breaker_open.",
            ["connector", "operation", "result"],
            namespace=NAMESPACE,
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        #: the call histogram's children by (connector, operation, result): a labels() lookup per call cost more
        self._calls: dict[tuple[str, str, str], Any] = {}
        for route in routes:
            for outcome in OUTCOMES:
                self._child(route, outcome)
            self.retried.labels(route)
            self.dead_lettered.labels(route)

    def _child(self, route: str, outcome: str) -> tuple[Any, Any]:
        pair = self._children.get((route, outcome))
        if pair is None:
            pair = (self.processed.labels(route, outcome), self.processing.labels(route, outcome))
            self._children[(route, outcome)] = pair
        return pair

    def record_outcome(self, route: str, outcome: str, duration_s: float, error_kind: str | None) -> None:
        """Count one delivery's outcome and time; a few lock-protected additions."""
        counter, histogram = self._child(route, outcome)
        counter.inc()
        histogram.observe(duration_s)
        if outcome == "retry":
            self.retried.labels(route).inc()
        elif outcome == "dead_lettered":
            self.dead_lettered.labels(route).inc()
        else:
            return
        self.failed.labels(route, error_kind or "unknown").inc()

    def record_call(self, connector: str, operation: str, duration_s: float, error: BaseException | None) -> None:
        """Time one call to a target, labelled with how it ended."""
        key = (connector, operation, _call_result(error))
        child = self._calls.get(key)
        if child is None:
            child = self._calls[key] = self.connector_calls.labels(*key)
        child.observe(duration_s)


def _call_result(error: BaseException | None) -> str:
    from schemas.errors import BreakerOpen, TransientError

    if error is None:
        return "ok"
    if isinstance(error, BreakerOpen):
        return "breaker_open"
    return "failed" if isinstance(error, TransientError) else "rejected"


class MetricsObserver(Observer):
    """The engine's observer: metrics, connector health from live calls, and the heads consumers take.

    Args:
        metrics: the counters and histograms.
        monitor: told of every call to a target; None to keep health out of it.
        head_ages: told of every message a consumer takes.
    """

    def __init__(self, metrics: BusMetrics, monitor: HealthMonitor | None, head_ages: HeadAges) -> None:
        self.metrics = metrics
        self.monitor = monitor
        self.head_ages = head_ages

    def after_receive(self, route: str, published_at: int | None) -> None:
        """Note the timestamp of the message the consumer took (the head of the queue a moment ago)."""
        self.head_ages.seen(route, published_at)

    def after_connector_call(
        self, connector: str, operation: str, duration_s: float, error: BaseException | None
    ) -> None:
        """Time the call and feed the connector's live error rate and p95."""
        self.metrics.record_call(connector, operation, duration_s, error)
        if self.monitor is not None:
            self.monitor.record_call(connector, duration_s, error)

    def after_garbled(self, connector: str, route: str, detail: str) -> None:
        """The target kept answering garbage: its connector shows degraded."""
        del route
        if self.monitor is not None:
            self.monitor.record_garbled(connector, detail)

    def after_process(self, route: str, outcome: str, duration_s: float, error_kind: str | None) -> None:
        """Count the outcome and time the pipeline."""
        self.metrics.record_outcome(route, outcome, duration_s, error_kind)


# -- collectors read at scrape time ----------------------------------------------------------------------
class HealthCollector:
    """Connector health as gauges, from :meth:`bus.health.HealthMonitor.snapshot` at scrape time."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self._monitor = monitor

    def describe(self) -> list[Metric]:
        """Nothing up front, so registering never probes anything."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The gauges of every connector."""
        p = NAMESPACE + "_connector_"
        state = GaugeMetricFamily(p + "state", "1 for the connector's current state.", labels=["connector", "state"])
        breaker = GaugeMetricFamily(p + "breaker_state", "1 for the breaker's state.", labels=["connector", "state"])
        rate = GaugeMetricFamily(p + "error_rate", "Failed share of recent live calls.", labels=["connector"])
        p95 = GaugeMetricFamily(p + "latency_p95_seconds", "p95 of recent live calls.", labels=["connector"])
        last = GaugeMetricFamily(
            p + "last_success_timestamp_seconds", "When a call or probe last succeeded.", labels=["connector"]
        )
        probe = GaugeMetricFamily(p + "probe_latency_seconds", "Latency of the last probe.", labels=["connector"])
        failures = GaugeMetricFamily(p + "probe_failures", "Failed probes in a row.", labels=["connector"])
        for name, h in self._monitor.snapshot().items():
            for s in STATES:
                state.add_metric([name, s], 1.0 if h.state == s else 0.0)
            if h.breaker is not None:
                for b in BREAKER_STATES:
                    breaker.add_metric([name, b], 1.0 if h.breaker == b else 0.0)
            if h.error_rate is not None:
                rate.add_metric([name], h.error_rate)
            if h.p95_ms is not None:
                p95.add_metric([name], h.p95_ms / 1000)
            if h.last_success is not None:
                last.add_metric([name], h.last_success.timestamp())
            if h.probe is not None and h.probe.latency_ms is not None:
                probe.add_metric([name], h.probe.latency_ms / 1000)
            failures.add_metric([name], float(h.probe_failures))
        yield from (state, breaker, rate, p95, last, probe, failures)


class QueueCollector:
    """Depth, consumers and head age of every queue of the routes, read from the broker at scrape time."""

    def __init__(self, inspector: QueueInspector) -> None:
        self._inspector = inspector
        self._failing = False

    def describe(self) -> list[Metric]:
        """Nothing up front, so registering never connects to the broker."""
        return []

    def collect(self) -> Iterator[Metric]:
        """``broker_up``, then the queue gauges when the broker answered."""
        up = GaugeMetricFamily(NAMESPACE + "_broker_up", "1 when the broker answered the last queue inspection.")
        try:
            infos = self._inspector.inspect()
        except Exception as exc:  # a scrape must answer even with the broker gone: broker_up says it
            if not self._failing:
                log.warning("queue_inspection_failed", error=repr(exc))
            self._failing = True
            up.add_metric([], 0.0)
            yield up
            return
        self._failing = False
        up.add_metric([], 1.0)
        yield up
        labels = ["queue", "route", "kind"]
        depth = GaugeMetricFamily(NAMESPACE + "_queue_messages", "Messages ready in the queue.", labels=labels)
        consumers = GaugeMetricFamily(NAMESPACE + "_queue_consumers", "Consumers of the queue.", labels=labels)
        age = GaugeMetricFamily(
            NAMESPACE + "_queue_oldest_message_age_seconds",
            "Age of the oldest ready message (route queues: an upper bound from the consumer; see bus/metrics.py).",
            labels=labels,
        )
        for i in infos:
            if i.depth is None:
                continue
            values = [i.queue, i.route or "", i.kind]
            depth.add_metric(values, float(i.depth))
            consumers.add_metric(values, float(i.consumers or 0))
            if i.oldest_age_s is not None:
                age.add_metric(values, i.oldest_age_s)
        yield from (depth, consumers, age)


def register_worker_collectors(
    registry: CollectorRegistry, monitor: HealthMonitor, inspector: QueueInspector, worker: Callable[[], Worker | None]
) -> None:
    """Add what a worker process exports besides :class:`BusMetrics`, all read when Prometheus scrapes.

    Args:
        registry: the worker's registry (:attr:`BusMetrics.registry`).
        monitor: connector health (:class:`HealthCollector`).
        inspector: the routes' queues (:class:`QueueCollector`).
        worker: the process's worker once it booted (:class:`WorkerCollector`).
    """
    registry.register(HealthCollector(monitor))
    registry.register(QueueCollector(inspector))
    registry.register(WorkerCollector(worker))


class WorkerCollector:
    """The worker's own counters (``Worker.stats``) and whether it consumes, read at scrape time."""

    def __init__(self, worker: Callable[[], Worker | None]) -> None:
        self._worker = worker

    def describe(self) -> list[Metric]:
        """Nothing up front."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Received, acked and requeued deliveries per route; ``worker_consuming``."""
        worker = self._worker()
        if worker is None:
            return
        p = NAMESPACE + "_deliveries_"
        received = CounterMetricFamily(p + "received", "Deliveries the consumer took.", labels=["route"])
        acked = CounterMetricFamily(p + "acked", "Deliveries acked.", labels=["route"])
        requeued = CounterMetricFamily(p + "requeued", "Deliveries handed back to the broker.", labels=["route"])
        for route, st in list(worker.stats.items()):
            received.add_metric([route], float(st.received))
            acked.add_metric([route], float(st.acked))
            requeued.add_metric([route], float(st.requeued))
        consuming = GaugeMetricFamily(NAMESPACE + "_worker_consuming", "1 while the worker consumes every route.")
        consuming.add_metric([], 1.0 if worker.wait_ready(0) else 0.0)
        yield from (received, acked, requeued, consuming)
