"""Wiring: from settings and the config folder to connectors, route runners, the topology and a worker.

Everything here happens once at start; nothing on the per-message path is decided here at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pika

from config.loader import LoadedConfig, load_config
from config.settings import Settings
from connectors.base import Connector, connector_type
from connectors.kit.state import ConnectorState, HasState
from routes.amqp import parameters
from routes.idempotency import IdempotencyStore
from routes.model import Route, build_routes
from routes.pipeline import RouteRunner, crash_plan_from_env
from routes.topology import RouteTopology, Topology, build_topology, declare
from schemas.errors import ConfigError
from schemas.events import EVENT_PAYLOADS

if TYPE_CHECKING:
    from collections.abc import Iterable

    from bus.ops_api import Ops
    from routes.broker_admin import ManagementApi
    from routes.observer import Observer
    from routes.schedule_store import ScheduleStore
    from routes.scheduler import Scheduler
    from routes.stale import Stale
    from routes.worker import Worker

#: extra seconds on top of twice the connector's total deadline before a claim may be taken over
LEASE_MARGIN_S = 5.0


@dataclass
class App:
    """The loaded configuration and the objects built from it."""

    settings: Settings
    config: LoadedConfig
    routes: list[Route]
    connectors: dict[str, Connector] = field(default_factory=dict)
    store: IdempotencyStore | None = None
    #: the schedules' rows (leases, firing times, cursors), in the same database as ``store``
    schedules: ScheduleStore | None = None
    #: health monitor, metrics and ops HTTP server of this process (bus/ops_api.py), once a worker built them
    ops: Ops | None = None

    def close(self) -> None:
        """Stop the ops (probes use the connectors), then close connectors and the store."""
        if self.ops is not None:
            self.ops.stop()
        for conn in self.connectors.values():
            conn.close()
        if self.store is not None:
            self.store.close()


def load_app(settings: Settings | None = None) -> App:
    """Load and validate the config; raises ``ConfigInvalid`` with every problem found."""
    settings = settings or Settings()
    loaded = load_config(settings.config_dir)
    routes = build_routes(loaded)
    return App(settings=settings, config=loaded, routes=routes)


def select_routes(routes: list[Route], names: Iterable[str] | None) -> list[Route]:
    """The enabled routes, or the named ones; an unknown name is a ConfigError naming the known ones."""
    enabled = [r for r in routes if r.spec.enabled]
    if not names:
        return enabled
    wanted = list(names)
    known = {r.spec.name for r in routes}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"unknown route(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [r for r in routes if r.spec.name in wanted]


def topology_of(routes: Iterable[Route]) -> Topology:
    """The broker topology the routes need."""
    return build_topology(
        RouteTopology(
            name=r.spec.name,
            exchange=r.spec.from_.exchange,
            keys=tuple(r.spec.from_.events),
            backoff=tuple(r.spec.retry.backoff),
            delivery_limit=r.spec.delivery_limit,
            single_consumer=r.spec.single_consumer,
        )
        for r in routes
    )


def declare_topology(settings: Settings, routes: Iterable[Route]) -> None:
    """Declare the topology on a short-lived blocking connection."""
    params = parameters(
        settings.amqp_url.get_secret_value(),
        name="igate-bus declare",
        heartbeat=settings.heartbeat,
        blocked_connection_timeout=settings.blocked_connection_timeout,
    )
    conn = pika.BlockingConnection(params)
    try:
        declare(conn, topology_of(routes))
    finally:
        if conn.is_open:
            conn.close()


def management_api(settings: Settings) -> ManagementApi:
    """The broker's management API for these settings: the one place the URLs' secrets are read for it."""
    from routes.broker_admin import ManagementApi

    management = settings.management_url
    return ManagementApi.for_broker(
        settings.amqp_url.get_secret_value(), management.get_secret_value() if management else None
    )


def stale_topology(app: App) -> Stale:
    """Our queues and bindings on the broker that no route of the config declares (routes/stale.py).

    Every route counts, disabled ones too: a disabled route keeps its queues for when it is enabled again.

    Raises:
        ManagementUnavailable: the management API could not list the vhost.
    """
    from routes.stale import find_stale

    with management_api(app.settings) as api:
        return find_stale(topology_of(app.routes), api.queues(), api.bindings())


def warn_stale(app: App) -> None:
    """Log each stale queue and binding once, at worker start; never raises (a check, not a condition to run)."""
    from bus.logging import get_logger
    from routes.broker_admin import ManagementUnavailable

    log = get_logger("igate_bus.topology")
    try:
        stale = stale_topology(app)
    except ManagementUnavailable as exc:
        log.warning("stale_topology_unchecked", reason=str(exc))
        return
    except Exception as exc:  # the worker must start whatever this check runs into
        log.warning("stale_topology_unchecked", reason=f"{type(exc).__name__}: {exc}")
        return
    for finding in stale.lines():
        log.warning("stale_topology", finding=finding, fix="igate-bus topology --prune")


def open_store(app: App) -> IdempotencyStore:
    """The process's store, opened on first use and shared by the pipeline and the connectors' state."""
    if app.store is None:
        app.store = IdempotencyStore(app.settings.store_url.get_secret_value())
    return app.store


def build_connectors(app: App, names: Iterable[str]) -> dict[str, Connector]:
    """Build (once) each named connector from connectors.yaml, its state (connectors/kit/state.py) attached.

    The state opens the store only when the connector first uses it: ``status`` and ``map`` build
    connectors that never touch it.
    """
    specs = app.config.connectors.connectors
    for name in names:
        if name not in app.connectors:
            spec = specs[name]
            conn = connector_type(spec.type)(name, spec)
            if isinstance(conn, HasState):
                conn.attach_state(lambda n=name: ConnectorState(open_store(app), connector=n))  # type: ignore[misc]
            app.connectors[name] = conn
    return {n: app.connectors[n] for n in names}


def build_runners(
    app: App, routes: list[Route], *, worker_id: str, observer: Observer | None = None
) -> list[RouteRunner]:
    """One pipeline runner per route, sharing connectors, the store and the observer (metrics, health).

    Raises:
        ConfigError: crash points are set without the testing switch (``routes.pipeline.crash_plan_from_env``).
    """
    crash = crash_plan_from_env()  # first: a refused start touches nothing
    store = open_store(app)
    schedules = schedule_store(app) if any(r.spec.from_.schedule for r in routes) else None
    connectors = build_connectors(app, sorted({r.connector for r in routes}))
    rules = app.settings.event_rules()
    runners = []
    for r in routes:
        spec = app.config.connectors.connectors[r.connector]
        op = connectors[r.connector].operations()[r.operation]
        runners.append(
            RouteRunner(
                r,
                op,
                store=store,
                payload_models=EVENT_PAYLOADS,
                worker_id=worker_id,
                lease_s=spec.timeout.total * 2 + LEASE_MARGIN_S,
                crash=crash,
                rules=rules,
                observer=observer,
                schedules=schedules,
            )
        )
    return runners


def schedule_store(app: App) -> ScheduleStore:
    """The schedules' rows in the app's store (built once; the table is created when missing)."""
    from routes.schedule_store import ScheduleStore

    if app.schedules is None:
        app.schedules = ScheduleStore(open_store(app))
    return app.schedules


def build_scheduler(app: App, routes: Iterable[Route], *, worker_id: str) -> Scheduler | None:
    """The scheduler of the routes that have a schedule, publishing their ticks on its own connection.

    None when no route has one (a worker without schedules starts no scheduler thread).
    """
    from routes.publisher import Publisher, PublishFailed
    from routes.schedule import Schedule
    from routes.scheduler import ScheduledRoute, Scheduler

    scheduled = [ScheduledRoute(r.name, Schedule(r.spec.from_.schedule)) for r in routes if r.spec.from_.schedule]
    if not scheduled:
        return None
    publisher = Publisher(
        app.settings.amqp_url.get_secret_value(),
        name=f"igate-bus scheduler {worker_id}",
        heartbeat=app.settings.heartbeat,
        blocked_connection_timeout=app.settings.blocked_connection_timeout,
    )

    def publish(queue: str, body: bytes, props: pika.BasicProperties) -> None:
        try:
            publisher.publish_raw(body, exchange="", routing_key=queue, properties=props)
        except PublishFailed:
            # between firings nobody services the connection's heartbeats, so the broker may have closed it:
            # once more on a fresh one (the same tick id, so a tick that did get through runs once anyway)
            publisher.publish_raw(body, exchange="", routing_key=queue, properties=props)

    return Scheduler(
        scheduled,
        schedule_store(app),
        publish=publish,
        owner=worker_id,
        on_stop=publisher.close,
        crash=crash_plan_from_env(),
    )


def build_worker(
    app: App, route_names: Iterable[str] | None = None, *, worker_id: str | None = None, observe: bool = True
) -> Worker:
    """A worker for the selected routes, declaring their topology on every (re)connect.

    With ``observe`` (the default) the worker also gets the process's observability (``app.ops``, see
    bus/ops_api.py): metrics and connector health fed by its routes, probes on schedule while it runs, and
    ``GET /health`` and ``GET /metrics`` on ``IGATE_BUS_OPS_PORT`` (default 8610, 0 disables the server).
    """
    from routes.amqp import worker_id as make_worker_id
    from routes.worker import Worker

    routes = select_routes(app.routes, route_names)
    if not routes:
        raise ConfigError("no route to run: every route is disabled or none was selected")
    crash = crash_plan_from_env()  # before anything starts: crash points without the testing switch refuse
    observer = None
    if observe:
        from bus.ops_api import make_ops

        app.ops = make_ops(app, routes=routes)
        observer = app.ops.observer
    worker_id = worker_id or app.settings.worker_id or make_worker_id()
    runners = build_runners(app, routes, worker_id=worker_id, observer=observer)
    return Worker(
        app.settings.amqp_url.get_secret_value(),
        runners,
        declare=lambda: declare_topology(app.settings, app.routes),
        heartbeat=app.settings.heartbeat,
        blocked_connection_timeout=app.settings.blocked_connection_timeout,
        crash=crash,
        observer=observer,
        scheduler=build_scheduler(app, routes, worker_id=worker_id),
    )
