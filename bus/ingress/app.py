"""The ingress app factory (``igate-bus serve``): the doors, the operations endpoints, the publisher's life.

Where it sits: at the start of a message's path for senders that speak HTTP rather than AMQP.
:func:`create_app` reads the settings and secrets (``bus/ingress/settings.py``), builds the shared state
(replay caches, metrics), mounts ``POST /events`` (``bus/ingress/events.py``) and every callback of the
registry (``bus/ingress/systems.py``), the operations endpoints and ``/openapi.json``, and starts the
publisher threads (``bus/ingress/publisher.py``) with the app's lifespan, stopping them after it.

``GET /health``, ``GET /health/ready`` and ``GET /metrics``: with ``observe`` (what ``serve`` does), the
operations router of ``bus/ops_api.py`` with this process's health monitor; its ``/metrics`` serves the
ingress's own series (``bus/ingress/metrics.py``), not a worker's. Without it, a bare liveness ``/health``
and the same ``/metrics``.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Literal

from fastapi import FastAPI, Response
from pydantic import BaseModel

from bus.ingress import events
from bus.ingress.callbacks import mount as mount_callbacks
from bus.ingress.handling import count_unhandled
from bus.ingress.metrics import IngressCollector, IngressMetrics
from bus.ingress.openapi import openapi
from bus.ingress.problems import install_handlers
from bus.ingress.publisher import PublisherPool
from bus.ingress.replay import ReplayCache
from bus.ingress.settings import IngressSettings, read_secrets
from bus.ingress.state import EventSink, IngressState
from bus.ingress.systems import CALLBACKS, NOT_ACCEPTED
from bus.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from prometheus_client import CollectorRegistry

    from config.settings import Settings

log = get_logger("igate_bus.ingress")

TITLE: Final = "igate-bus ingress"


class Liveness(BaseModel):
    """The bare liveness answer (when the operations router is not mounted)."""

    status: Literal["up"] = "up"


def _include_ops(
    app: FastAPI, settings: Settings, registry: CollectorRegistry, *, observe: bool
) -> Callable[[], None] | None:
    """Mount ``bus/ops_api.py``'s router with this process's :class:`Ops`; return what stops them.

    Without ``observe`` a bare liveness ``GET /health`` is served, and ``GET /metrics`` all the same. Either
    way ``/metrics`` serves ``registry``: the ingress's series only.
    """
    from bus import ops_api

    if not observe:

        @app.get("/health", summary="Liveness", response_model=Liveness)
        async def health() -> Liveness:
            """Liveness only: the process answers."""
            return Liveness()

        @app.get("/metrics", response_class=Response, summary="Prometheus metrics", responses=ops_api.METRICS_RESPONSES)
        def metrics() -> Response:
            """The ingress's metrics in the Prometheus text exposition format."""
            return ops_api.exposition(registry)

        return None
    from bus.wiring import load_app

    loaded = load_app(settings)
    # an ingress only accepts events: a target being down must not make it "not ready"
    ops = ops_api.make_ops(loaded, ready_needs_connectors=False, registry=registry)
    ops_api.attach_ops(app, ops)
    app.include_router(ops_api.router)

    def stop() -> None:
        ops.stop()
        loaded.close()

    return stop


def create_app(
    settings: Settings,
    *,
    ingress: IngressSettings | None = None,
    publisher_factory: Callable[[], EventSink] | None = None,
    observe: bool = True,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The ingress ASGI app; its publisher starts and stops with the app's lifespan.

    Args:
        settings: the bus settings (broker URL, heartbeat, config folder for the ops router).
        ingress: the ingress settings; read from the environment when None.
        publisher_factory: builds the publisher; a :class:`bus.ingress.publisher.PublisherPool` on
            ``settings.amqp_url`` when None.
        observe: serve ``bus/ops_api.py``'s ``/health`` with this process's :class:`bus.ops_api.Ops` (loads
            the config folder, probes the connectors); False serves a bare liveness ``/health``. ``/metrics``
            is served either way.
        environ: where the secrets are read (``os.environ`` when None).

    Returns:
        The FastAPI app.

    Raises:
        ConfigError: a secret is missing or too short.
    """
    cfg = ingress if ingress is not None else IngressSettings()
    secrets = read_secrets(cfg, environ)
    accepted = frozenset(cfg.accepted_event_types)
    state = IngressState(
        cfg=cfg,
        secrets=secrets,
        accepted=accepted,
        events=ReplayCache(ttl_s=cfg.replay_ttl, max_entries=cfg.replay_max_entries),
        callbacks=ReplayCache(ttl_s=cfg.replay_ttl, max_entries=cfg.replay_max_entries),
        metrics=IngressMetrics([events.PATH, *(cb.path for cb in CALLBACKS)]),
        rules=settings.event_rules(),
    )
    state.metrics.registry.register(
        IngressCollector({"events": state.events, "callbacks": state.callbacks}, lambda: state.sink)
    )

    def default_factory() -> EventSink:
        return PublisherPool(
            settings.amqp_url.get_secret_value(),
            size=cfg.publisher_threads,
            heartbeat=settings.heartbeat,
            blocked_connection_timeout=settings.blocked_connection_timeout,
            connect_timeout=min(cfg.publish_timeout, 5.0),
            queue_size=cfg.publish_queue_size,
            reconnect_delay_s=cfg.reconnect_delay,
            declare=cfg.declare_exchanges,
        )

    factory = publisher_factory or default_factory
    stop_ops: Callable[[], None] | None = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sink = factory()
        sink.start()
        state.sink = sink
        ops = getattr(_app.state, "igate_ops", None)
        if ops is not None:
            ops.start()
        log.info("ingress_started", accepted=len(accepted), callbacks=sorted(secrets.callbacks))
        try:
            yield
        finally:
            state.sink = None
            await asyncio.to_thread(sink.close)
            if stop_ops is not None:
                await asyncio.to_thread(stop_ops)
            log.info("ingress_stopped")

    app = FastAPI(
        title=TITLE,
        version="1",
        description=(
            "Signed events from iGate and callbacks from external systems, published on RabbitMQ with "
            "publisher confirms. Success is answered only once the broker confirmed the message."
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.igate_ingress = state
    app.openapi = lambda: openapi(app, accepted)  # type: ignore[method-assign]
    install_handlers(app, count=count_unhandled)
    events.mount(app)
    mount_callbacks(app, CALLBACKS, not_accepted=NOT_ACCEPTED)
    stop_ops = _include_ops(app, settings, state.metrics.registry, observe=observe)
    return app
