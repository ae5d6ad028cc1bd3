"""``GET /health`` and ``GET /metrics``: the bus's state for load balancers, Prometheus and operators.

Where it sits: outside the message path (event → route → adapter → connector → result/DLQ), watching all
of it. :class:`Ops` gathers what a process knows of itself: the :class:`bus.health.HealthMonitor` of its
connectors, its own metrics (a worker's :class:`bus.metrics.BusMetrics`, or the registry the ingress passes),
the broker and the store it uses, and its worker when it runs one. :data:`router` serves it; the HTTP
ingress (``bus/ingress/``) includes the router, and a worker (``igate-bus run``) serves it on its own small
HTTP server (:class:`OpsServer`), so a worker without an ingress is still observable.

Using it from another FastAPI app::

    ops = make_ops(app)              # app: bus.wiring.App
    attach_ops(fastapi_app, ops)     # the router finds it in fastapi_app.state
    fastapi_app.include_router(bus.ops_api.router)
    ops.start()                      # probes on schedule (in the lifespan); ops.stop() at shutdown

Endpoints:

- ``GET /health``: liveness. Always 200 while the process serves; the body carries every connector's state
  from the monitor (no I/O, so it is cheap to poll).
- ``GET /health/ready`` (or ``GET /health?ready=1``): readiness. Checks the broker (and reads the routes'
  queues), the store and the worker (consuming?) with timeouts; 200 when ready, 503 otherwise, the same
  body either way. A connector that is ``down`` makes the process not ready (``Ops.ready_needs_connectors``):
  the bus cannot do its work, although its queues keep every message; set it False for an ingress whose
  only job is to accept events.
- ``GET /metrics``: the Prometheus text exposition of the process's own series: a worker's are defined in
  ``bus/metrics.py`` (per route outcomes, latencies, queues, connectors, its consumer), the ingress's in
  ``bus/ingress/metrics.py`` (requests, refusals, 503s, latencies, replay cache). Each process exports what
  it does, never another role's series at zero.

A worker's server listens on ``IGATE_BUS_OPS_HOST`` (default 127.0.0.1) port ``IGATE_BUS_OPS_PORT`` (default
8610; 0 disables it). A port already taken is logged and the worker runs on without it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from bus.health import PROBE_MARGIN_S, STATES, HealthMonitor
from bus.metrics import (
    BusMetrics,
    HeadAges,
    MetricsObserver,
    QueueInfo,
    QueueInspector,
    group_by_route,
    register_worker_collectors,
)
from connectors.base import Health
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from bus.health import ConnectorHealth
    from bus.wiring import App
    from connectors.base import Connector, Operation
    from routes.idempotency import IdempotencyStore
    from routes.model import Route
    from routes.worker import Worker

log = structlog.get_logger("igate_bus.ops")

T = TypeVar("T")

OPS_PORT_ENV: Final = "IGATE_BUS_OPS_PORT"
OPS_HOST_ENV: Final = "IGATE_BUS_OPS_HOST"
#: the worker's ops server port when ``IGATE_BUS_OPS_PORT`` is unset
DEFAULT_OPS_PORT: Final = 8610
DEFAULT_OPS_HOST: Final = "127.0.0.1"
#: seconds each readiness check (broker, store) may take
CHECK_TIMEOUT_S: Final = 3.0
#: the key the store check reads (a claim that never exists)
STORE_PROBE_KEY: Final = ("igate-bus", "health-check")
_STATE_ATTR: Final = "igate_ops"
_SERVER_START_S: Final = 5.0

ConnectorState = Literal["up", "degraded", "down", "unknown"]


# -- response models (documented in the OpenAPI schema) --------------------------------------------------
class ProbeResult(BaseModel):
    """The last probe of a connector."""

    state: Literal["up", "degraded", "down"] = Field(description="What the probe concluded.")
    detail: str = Field(description="Why, in words.", examples=["search answered", "unavailable: refused"])
    latency_ms: float | None = Field(default=None, description="How long the probe took.")
    checked_at: datetime | None = Field(default=None, description="When it ran.")


class ConnectorStatus(BaseModel):
    """One connector's health, from its probes and the live calls of the routes."""

    name: str = Field(description="The connector's name in connectors.yaml.", examples=["igate"])
    state: ConnectorState = Field(description="up, degraded, down, or unknown before the first probe.")
    detail: str = Field(description="Why it is in that state.")
    since: datetime | None = Field(default=None, description="When it entered that state.")
    breaker: str | None = Field(default=None, description="closed, half-open or open; null without a breaker.")
    last_success: datetime | None = Field(default=None, description="Last successful call or probe.")
    last_failure: datetime | None = Field(default=None, description="Last failed call or probe.")
    error_rate: float | None = Field(default=None, description="Failed share of recent live calls (0-1).")
    calls: int = Field(default=0, description="Live calls in the window the error rate covers.")
    p95_ms: float | None = Field(default=None, description="95th percentile latency of recent live calls.")
    probe: ProbeResult | None = Field(default=None, description="The last probe; null before the first.")
    probe_failures: int = Field(default=0, description="Failed probes in a row.")
    probe_interval_s: float = Field(description="Seconds between probes.")


class Check(BaseModel):
    """One readiness check."""

    ok: bool
    detail: str = Field(examples=["9 queues read", "ConnectionRefusedError: [Errno 111] Connection refused"])
    latency_ms: float | None = None


class QueueStatus(BaseModel):
    """One queue of a route."""

    queue: str = Field(examples=["route.bus-ack"])
    depth: int | None = Field(description="Messages ready; null when the queue does not exist.")
    consumers: int | None = None
    oldest_age_s: float | None = Field(
        default=None, description="Age of the oldest ready message (route queues: an upper bound); null if unknown."
    )


class RouteStatus(BaseModel):
    """A route's queues and the state of the connector it sends to."""

    name: str = Field(examples=["bus-ack"])
    connector: str = Field(examples=["igate"])
    state: ConnectorState = Field(description="The state of the route's connector.")
    queue: QueueStatus
    retry: list[QueueStatus] = Field(description="The delay queues, shortest delay first.")
    dlq: QueueStatus


class HealthReport(BaseModel):
    """The body of ``GET /health`` and ``GET /health/ready``."""

    status: ConnectorState = Field(description="The worst connector state (up when there is no connector).")
    live: bool = Field(default=True, description="Always true: the process answered.")
    ready: bool | None = Field(default=None, description="Readiness; null when it was not asked for.")
    checks: dict[str, Check] = Field(default_factory=dict, description="broker, store, worker (readiness only).")
    connectors: dict[str, ConnectorStatus]
    routes: list[RouteStatus] = Field(default_factory=list, description="Route queues (readiness only).")
    uptime_s: float
    checked_at: datetime


def connector_status(h: ConnectorHealth) -> ConnectorStatus:
    """The response model of a monitor snapshot entry."""
    return ConnectorStatus.model_validate(h.as_dict())


def worst(states: Iterable[str]) -> ConnectorState:
    """The worst of some connector states (``up`` when there are none)."""
    present = set(states)
    return next((s for s in STATES if s in present), "up")


def route_statuses(routes: Sequence[Route], infos: Sequence[QueueInfo], states: Mapping[str, str]) -> list[RouteStatus]:
    """Route rows from inspected queues and connector states (shared by readiness and ``igate-bus status``)."""

    def q(i: QueueInfo) -> QueueStatus:
        return QueueStatus(queue=i.queue, depth=i.depth, consumers=i.consumers, oldest_age_s=i.oldest_age_s)

    return [
        RouteStatus(
            name=g.route,
            connector=g.connector,
            state=worst([states.get(g.connector, "unknown")]),
            queue=q(g.main),
            retry=[q(i) for i in g.retry],
            dlq=q(g.dead),
        )
        for g in group_by_route(routes, infos)
    ]


# -- the process's observability -------------------------------------------------------------------------
class _Unbuildable:
    """Stands for a connector this process cannot build (say, its credentials are not in its environment)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self._reason = reason

    def operations(self) -> Mapping[str, Operation]:
        """None: nothing can be sent through it."""
        return {}

    def probe(self) -> Health:
        """Always down, with the reason it could not be built."""
        return Health("down", f"not configured in this process: {self._reason}", None, datetime.now(UTC))

    def close(self) -> None:
        """Nothing to release."""


@dataclass(eq=False)
class Ops:
    """What ``/health``, ``/metrics`` and ``igate-bus status`` read in one process. Build with :func:`make_ops`.

    Attributes:
        app: the loaded config and built objects (its ``store`` is used when there is one).
        routes: the routes whose queues are reported.
        monitor: connector health.
        metrics: the worker's per-message metrics; None in a process that runs no routes (the ingress).
        head_ages: the consumers' view of route queue heads.
        inspector: reads the routes' queues.
        registry: what ``GET /metrics`` serves: this process's own series.
        worker: the worker of this process, once it booted.
        ready_needs_connectors: a ``down`` connector makes readiness fail.
    """

    app: App
    routes: list[Route]
    monitor: HealthMonitor
    metrics: BusMetrics | None
    head_ages: HeadAges
    inspector: QueueInspector
    registry: CollectorRegistry
    worker: Worker | None = None
    ready_needs_connectors: bool = True
    server: OpsServer | None = None
    started_at: float = field(default_factory=time.monotonic)
    observer: _OpsObserver | None = field(init=False)
    _own_store: IdempotencyStore | None = field(default=None, init=False)
    _pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="igate-bus-ops"), init=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopped: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.observer = _OpsObserver(self, self.metrics) if self.metrics is not None else None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, *, worker: Worker | None = None, serve: bool = False) -> None:
        """Start probing on schedule; with ``serve``, also the HTTP server on ``IGATE_BUS_OPS_PORT``.

        Args:
            worker: the process's worker, for its readiness and counters.
            serve: start :class:`OpsServer` (the worker does; an ingress serves the router itself).
        """
        if worker is not None:
            self.worker = worker
        self.monitor.start()
        if not serve or self.server is not None:
            return
        try:
            host, port = ops_address()
        except ConfigError as exc:
            log.error("ops_server_disabled", error=str(exc))  # noqa: TRY400 - a bad setting, no traceback
            return
        if port:
            server = OpsServer(ops_app(self), host, port)
            if server.start():
                self.server = server

    def stop(self) -> None:
        """Stop the server and the probes, close what this object opened; safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self.server is not None:
            self.server.stop()
        self.monitor.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_store is not None:
            self._own_store.close()

    # -- reports ---------------------------------------------------------------------------------------
    def liveness(self) -> HealthReport:
        """Connector states from the monitor; no I/O."""
        connectors = {n: connector_status(h) for n, h in self.monitor.snapshot().items()}
        return HealthReport(
            status=worst(c.state for c in connectors.values()),
            connectors=connectors,
            uptime_s=round(time.monotonic() - self.started_at, 3),
            checked_at=datetime.now(UTC),
        )

    def readiness(self) -> HealthReport:
        """Liveness plus the broker (and the routes' queues), the store and the worker, each with a timeout."""
        broker_f = self._pool.submit(self.inspector.inspect)
        store_f = self._pool.submit(self._ping_store)
        infos, broker = _finish(broker_f, lambda i: f"{len(i)} queues read")
        _, store = _finish(store_f, lambda detail: detail)
        report = self.liveness()
        checks = {"broker": broker, "store": store}
        if self.worker is not None:
            consuming = self.worker.wait_ready(0)
            checks["worker"] = Check(
                ok=consuming, detail="consuming every route" if consuming else "not consuming (connecting?)"
            )
        states = {n: c.state for n, c in report.connectors.items()}
        down = sorted(n for n, s in states.items() if s == "down")
        ready = all(c.ok for c in checks.values()) and not (self.ready_needs_connectors and down)
        if down:
            checks["connectors"] = Check(ok=not self.ready_needs_connectors, detail=f"down: {', '.join(down)}")
        report.ready = ready
        report.checks = checks
        report.routes = route_statuses(self.routes, infos or [], states)
        return report

    def _ping_store(self) -> str:
        store = self.app.store
        if store is None:
            with self._lock:
                if self._own_store is None:
                    from routes.idempotency import IdempotencyStore

                    # create=True: a reachable store whose table no worker has made yet is ready, not broken
                    # (creating it is idempotent and is what the first worker would do anyway)
                    self._own_store = IdempotencyStore(self.app.settings.store_url.get_secret_value(), create=True)
                store = self._own_store
        store.get(*STORE_PROBE_KEY)
        return "answered"


def _finish(future: Any, describe: Callable[[Any], str]) -> tuple[Any, Check]:
    """Wait for a check with its timeout; its value (None on failure) and its :class:`Check`."""
    started = time.monotonic()
    try:
        value = future.result(timeout=CHECK_TIMEOUT_S)
    except FutureTimeout:
        return None, Check(ok=False, detail=f"no answer within {CHECK_TIMEOUT_S:g}s", latency_ms=None)
    except Exception as exc:
        return None, Check(ok=False, detail=f"{type(exc).__name__}: {exc}"[:300], latency_ms=None)
    return value, Check(ok=True, detail=describe(value), latency_ms=round((time.monotonic() - started) * 1000, 1))


class _OpsObserver(MetricsObserver):
    """The observer wiring hands to the worker: metrics and health, plus starting and stopping :class:`Ops`."""

    def __init__(self, ops: Ops, metrics: BusMetrics) -> None:
        super().__init__(metrics, ops.monitor, ops.head_ages)
        self._ops = ops

    def before_worker_boot(self, worker: Worker) -> None:
        """Start the probes and the worker's ops HTTP server."""
        self._ops.start(worker=worker, serve=True)

    def after_worker_shutdown(self, worker: Worker) -> None:
        """Stop them."""
        del worker
        self._ops.stop()


def make_ops(
    app: App,
    *,
    routes: Sequence[Route] | None = None,
    connectors: Iterable[str] | None = None,
    ready_needs_connectors: bool = True,
    registry: CollectorRegistry | None = None,
) -> Ops:
    """Build the observability of a process from its loaded config.

    Args:
        app: from :func:`bus.wiring.load_app`; connectors already built there are reused.
        routes: whose queues to report; the enabled routes by default.
        connectors: which connectors to watch; those of ``routes`` by default. One that cannot be built here
            (an unset credential) is reported ``down`` with the reason, never raised.
        ready_needs_connectors: a ``down`` connector makes readiness fail.
        registry: the series of a process that runs no routes (the ingress passes its own), served as they
            are by ``GET /metrics``. None: a worker's (``bus/metrics.py``): per-route counters fed by
            :attr:`Ops.observer`, connector health, queues and the worker's counters read at scrape time.
    """
    from bus.wiring import build_connectors, select_routes

    chosen = list(routes) if routes is not None else select_routes(app.routes, None)
    names = sorted(set(connectors) if connectors is not None else {r.connector for r in chosen})
    specs = app.config.connectors.connectors
    watched: dict[str, Connector] = {}
    for name in names:
        try:
            watched[name] = build_connectors(app, [name])[name]
        except (ConfigError, KeyError) as exc:
            watched[name] = _Unbuildable(name, str(exc))
    intervals = {n: specs[n].probe_interval for n in names if n in specs}
    timeouts = {n: specs[n].timeout.total + PROBE_MARGIN_S for n in names if n in specs}
    head_ages = HeadAges()
    monitor = HealthMonitor(watched, intervals=intervals, probe_timeouts=timeouts)
    inspector = QueueInspector(app.settings.amqp_url.get_secret_value(), chosen, head_ages=head_ages)
    metrics: BusMetrics | None = None
    if registry is None:
        metrics = BusMetrics(r.spec.name for r in chosen)
        registry = metrics.registry
    ops = Ops(
        app=app,
        routes=chosen,
        monitor=monitor,
        metrics=metrics,
        head_ages=head_ages,
        inspector=inspector,
        registry=registry,
        ready_needs_connectors=ready_needs_connectors,
    )
    if metrics is not None:
        register_worker_collectors(metrics.registry, monitor, inspector, lambda: ops.worker)
    return ops


def attach_ops(fastapi_app: FastAPI, ops: Ops) -> None:
    """Make ``ops`` what :data:`router` serves in ``fastapi_app``."""
    setattr(fastapi_app.state, _STATE_ATTR, ops)


def get_ops(request: Request) -> Ops:
    """The :class:`Ops` attached to the app serving ``request`` (a FastAPI dependency)."""
    ops = getattr(request.app.state, _STATE_ATTR, None)
    if not isinstance(ops, Ops):
        raise HTTPException(status_code=503, detail="the bus's health state is not attached to this app")
    return ops


OpsDep = Annotated[Ops, Depends(get_ops)]

# -- the router ------------------------------------------------------------------------------------------
router = APIRouter(tags=["operations"])

_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthReport, "description": "Not ready: a check failed (the body says which)."}
}
#: how ``GET /metrics`` is documented, wherever it is served
METRICS_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}
}


def exposition(registry: CollectorRegistry) -> Response:
    """``registry`` in the Prometheus text exposition format."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _ready_response(ops: Ops) -> JSONResponse:
    report = ops.readiness()
    return JSONResponse(report.model_dump(mode="json"), status_code=200 if report.ready else 503)


@router.get(
    "/health",
    response_model=HealthReport,
    responses=_READY_RESPONSES,
    summary="Liveness (and readiness with ?ready=1)",
)
def health(
    ops: OpsDep,
    ready: Annotated[bool, Query(description="Also check the broker, the store and the worker.")] = False,
) -> Any:
    """Liveness: 200 with every connector's state. With ``ready=1``, the readiness answer instead."""
    if ready:
        return _ready_response(ops)
    return ops.liveness()


@router.get("/health/ready", response_model=HealthReport, responses=_READY_RESPONSES, summary="Readiness")
def health_ready(ops: OpsDep) -> Any:
    """Readiness: broker, store, worker and connectors; 200 when ready, 503 otherwise."""
    return _ready_response(ops)


@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSES, summary="Prometheus metrics")
def metrics(ops: OpsDep) -> Response:
    """Every metric of the process in the Prometheus text exposition format."""
    return exposition(ops.registry)


# -- the worker's own HTTP server ------------------------------------------------------------------------
def ops_address(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(host, port) from ``IGATE_BUS_OPS_HOST`` and ``IGATE_BUS_OPS_PORT``; port 0 means no server.

    Raises:
        ConfigError: the port is not a number from 0 to 65535.
    """
    env = os.environ if environ is None else environ
    raw = env.get(OPS_PORT_ENV, "").strip() or str(DEFAULT_OPS_PORT)
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{OPS_PORT_ENV}={raw!r}: expected a port number (0 disables the ops server)")
    return env.get(OPS_HOST_ENV, "").strip() or DEFAULT_OPS_HOST, port


def ops_app(ops: Ops) -> FastAPI:
    """A FastAPI app serving only :data:`router` for ``ops`` (the worker's ops server)."""
    app = FastAPI(title="igate-bus ops", docs_url=None, redoc_url=None)
    app.include_router(router)
    attach_ops(app, ops)
    return app


class OpsServer:
    """uvicorn in a daemon thread (httpx's ``serve_in_thread``), on a socket bound before it starts.

    Args:
        app: the ASGI app.
        host: the interface.
        port: the port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Bind and serve; False (and a warning) when the port cannot be bound, never an exception."""
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            log.warning("ops_server_unavailable", host=self.host, port=self.port, error=str(exc))
            return False
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            loop="asyncio",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="igate-bus-ops-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _SERVER_START_S
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("ops_server_started", url=self.url)
        return True

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and wait for the thread (a few seconds at most)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
