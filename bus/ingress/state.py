"""What the ingress's request handlers share: settings, secrets, replay caches, the publisher, the metrics.

Where it sits: built once by the app factory (``bus/ingress/app.py``), kept in ``app.state.igate_ingress``,
and handed to each endpoint's work by the wrapper (``bus/ingress/handling.py``). :class:`EventSink` is the
seam the publisher sits behind (:class:`bus.ingress.publisher.PublisherPool` in production; tests may put a
publisher there that fails on purpose).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from schemas.envelope import EventRules

if TYPE_CHECKING:
    from concurrent.futures import Future

    from fastapi import Request

    from bus.ingress.metrics import IngressMetrics
    from bus.ingress.publisher import Outbound
    from bus.ingress.replay import ReplayCache
    from bus.ingress.settings import IngressSettings, Secrets


class EventSink(Protocol):
    """What the ingress publishes through (:class:`bus.ingress.publisher.PublisherPool` by default)."""

    @property
    def blocked(self) -> bool:
        """True while the broker blocks publishers."""

    def start(self) -> None:
        """Start publishing (called in the app's lifespan)."""

    def submit(self, message: Outbound) -> Future[None]:
        """Queue a message; its future completes on the broker's confirm (raise PublishError to refuse)."""

    def close(self) -> None:
        """Stop; fail what is still queued."""


@dataclass(slots=True)
class IngressState:
    """What the request handlers share (kept in ``app.state.igate_ingress``).

    Attributes:
        cfg: the settings.
        secrets: iGate's HMAC secrets and the callback credentials.
        accepted: the event types ``POST /events`` takes.
        events: the replay cache of ``POST /events``.
        callbacks: the replay cache of the callbacks.
        metrics: the ingress's series.
        rules: the envelope's edge rules, the same the workers apply (``Settings.event_rules``).
        sink: the publisher, while the app runs.
    """

    cfg: IngressSettings
    secrets: Secrets
    accepted: frozenset[str]
    events: ReplayCache
    callbacks: ReplayCache
    metrics: IngressMetrics
    rules: EventRules = field(default_factory=EventRules)
    sink: EventSink | None = None


def state_of(request: Request) -> IngressState:
    """The state of the app serving ``request``."""
    state: IngressState = request.app.state.igate_ingress
    return state
