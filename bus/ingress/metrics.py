"""The ingress process's Prometheus series: what its doors accepted, refused and why, and how long it took.

Where it sits: beside the ingress's doors (``POST /events``, the callbacks), fed by the endpoint wrapper
(``bus/ingress/handling.py``) and the confirmed publish (``bus/ingress/publish.py``); served on the
ingress's ``GET /metrics``. This is the one place the ingress's series are defined. A worker's series
(per route outcomes, pipeline and connector latencies, queues) are defined in ``bus/metrics.py`` and are
exported by the worker only: each process exports what it does. Each app has its own
``CollectorRegistry`` (never the global one), so several apps in one test process do not collide.

Series (prefix ``igate_bus_ingress_``), ``endpoint`` being the route template (``/events``,
``/callbacks/vilis/{action}/{security_code}``, ...; never the path, which carries the land system's
security code), or ``(unmatched)`` for a path or method the ingress does not serve:

- ``requests_total{endpoint,outcome}``: every answer; ``outcome`` is ``accepted``, ``duplicate``,
  ``refused`` (4xx), ``unavailable`` (503) or ``error`` (500).
- ``refusals_total{endpoint,reason}``: each 4xx by its error code (``bad_signature``, ``invalid_event``...).
- ``unavailable_total{endpoint,reason}``: each 503 by its error code (``broker_unavailable``,
  ``broker_blocked``, ``broker_refused``, ``publish_timeout``, ``ingress_busy``, ``shutting_down``).
- ``request_seconds{endpoint,outcome}``: histogram, from the request's start to its answer.
- ``request_body_bytes{endpoint}``: histogram of the bodies read in full.
- ``publish_confirm_seconds{exchange,result}``: histogram, from handing a message to a publisher thread to
  the broker's answer; ``result`` is ``confirmed``, ``late`` (confirmed after the request was answered
  ``publish_timeout``), ``failed`` or ``withdrawn`` (given up before a thread took it; never published).
- read at scrape time: ``replay_cache_entries{cache}`` and ``replay_cache_evicted_early_total{cache}``
  (``cache`` is ``events`` or ``callbacks``; an early eviction means the cache is too small for the
  traffic and a replay could get through), ``broker_blocked`` (1 while the broker blocks publishers),
  ``publish_queue_messages`` (messages waiting for a publisher thread) and ``publishers_connected``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bus.metrics import LATENCY_BUCKETS, NAMESPACE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from prometheus_client.core import Metric

    from bus.ingress.replay import ReplayCache

SUBSYSTEM: Final = "ingress"
#: the ``outcome`` label of ``requests_total`` and ``request_seconds``
OUTCOMES: Final = ("accepted", "duplicate", "refused", "unavailable", "error")
#: what ``endpoint`` says for a request no route of the ingress matched
UNMATCHED: Final = "(unmatched)"
#: request bodies: a callback's few hundred bytes to the 1 MiB limit (16 MiB at most)
BODY_BUCKETS: Final = (256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216)


def outcome_of(status: int, logged: str) -> str:
    """The ``outcome`` label of an answer: from its status, or ``logged`` (accepted, duplicate) for a 2xx."""
    if status == 503:
        return "unavailable"
    if status >= 500:
        return "error"
    if status >= 400:
        return "refused"
    return logged


class IngressMetrics:
    """The ingress's counters and histograms, in the app's own registry.

    Args:
        endpoints: route templates whose ``requests_total`` exist (at zero) from the start, so dashboards
            see every door before its first request.
        registry: where to register; a fresh ``CollectorRegistry`` by default.
    """

    def __init__(self, endpoints: Iterable[str] = (), *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common: dict[str, Any] = {"namespace": NAMESPACE, "subsystem": SUBSYSTEM, "registry": self.registry}
        self.requests = Counter(
            "requests", "Answers of the ingress, by endpoint and outcome.", ["endpoint", "outcome"], **common
        )
        self.refusals = Counter(
            "refusals", "4xx answers, by endpoint and error code.", ["endpoint", "reason"], **common
        )
        self.unavailable = Counter(
            "unavailable", "503 answers, by endpoint and error code.", ["endpoint", "reason"], **common
        )
        self.latency = Histogram(
            "request_seconds",
            "Time from a request's start to its answer, by endpoint and outcome.",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.body_bytes = Histogram(
            "request_body_bytes",
            "Size of the request bodies read in full.",
            ["endpoint"],
            buckets=BODY_BUCKETS,
            **common,
        )
        self.confirm = Histogram(
            "publish_confirm_seconds",
            "Time from handing a message to a publisher thread to the broker's answer, by exchange and result.",
            ["exchange", "result"],
            buckets=LATENCY_BUCKETS,
            **common,
        )
        for endpoint in endpoints:
            for outcome in OUTCOMES:
                self.requests.labels(endpoint, outcome)

    def record_request(
        self, endpoint: str, *, status: int, outcome: str, error: str | None, duration_s: float | None
    ) -> None:
        """Count one answer (and time it, when its start is known).

        Args:
            endpoint: the route template, or :data:`UNMATCHED`.
            status: the HTTP status.
            outcome: the logged outcome (``accepted``, ``duplicate``, ``rejected``); the status decides
                for an error.
            error: the error code of a refusal.
            duration_s: seconds since the request started; None when unknown.
        """
        label = outcome_of(status, outcome)
        self.requests.labels(endpoint, label).inc()
        if duration_s is not None:
            self.latency.labels(endpoint, label).observe(duration_s)
        if error is None:
            return
        if status == 503:
            self.unavailable.labels(endpoint, error).inc()
        elif 400 <= status < 500:
            self.refusals.labels(endpoint, error).inc()

    def record_body(self, endpoint: str, size: int) -> None:
        """The size of a body read in full."""
        self.body_bytes.labels(endpoint).observe(size)

    def record_confirm(self, exchange: str, result: str, duration_s: float) -> None:
        """How long the broker took to answer a publish, and how it ended."""
        self.confirm.labels(exchange, result).observe(duration_s)


@runtime_checkable
class PublisherLoad(Protocol):
    """What a publisher can tell of its load (:class:`bus.ingress.publisher.PublisherPool` does)."""

    @property
    def waiting(self) -> int:
        """Messages waiting for a publisher thread."""

    @property
    def connected(self) -> int:
        """Publisher threads with an open connection."""


class IngressCollector:
    """The ingress's gauges, read when Prometheus scrapes: replay caches and the publisher.

    Args:
        caches: the replay caches by name (``events``, ``callbacks``).
        sink: the publisher now (None before the app started and after it stopped).
    """

    def __init__(self, caches: Mapping[str, ReplayCache], sink: Callable[[], Any]) -> None:
        self._caches = caches
        self._sink = sink

    def describe(self) -> list[Metric]:
        """Nothing up front."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The gauges now."""
        p = f"{NAMESPACE}_{SUBSYSTEM}_"
        entries = GaugeMetricFamily(
            p + "replay_cache_entries", "Accepted event_ids remembered, by cache.", labels=["cache"]
        )
        evicted = CounterMetricFamily(
            p + "replay_cache_evicted_early",
            "Entries evicted before their TTL because the cache was full (a replay could get through).",
            labels=["cache"],
        )
        for name, cache in self._caches.items():
            entries.add_metric([name], float(len(cache)))
            evicted.add_metric([name], float(cache.evicted_early))
        yield from (entries, evicted)
        sink = self._sink()
        if sink is None:
            return
        blocked = GaugeMetricFamily(p + "broker_blocked", "1 while the broker blocks publishers (memory or disk).")
        blocked.add_metric([], 1.0 if sink.blocked else 0.0)
        yield blocked
        if isinstance(sink, PublisherLoad):
            waiting = GaugeMetricFamily(p + "publish_queue_messages", "Messages waiting for a publisher thread.")
            waiting.add_metric([], float(sink.waiting))
            connected = GaugeMetricFamily(p + "publishers_connected", "Publisher threads with an open connection.")
            connected.add_metric([], float(sink.connected))
            yield from (waiting, connected)
