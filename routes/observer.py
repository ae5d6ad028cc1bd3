"""Hooks the engine calls so the process can watch it: metrics, connector health, the age of queue heads.

Where it sits: beside every step of a message's path (event → route → adapter → connector → result/DLQ).
The worker calls :meth:`Observer.after_receive` when its consumer takes a message, the pipeline calls
:meth:`Observer.after_connector_call` around each call to the target and :meth:`Observer.after_process`
when a delivery has its outcome, and the worker calls the boot and shutdown hooks around its I/O loop.

Every hook is a no-op here, so an observer overrides only what it needs (dramatiq's middleware). The
engine never imports from ``bus/``: the bus process implements this class (``bus/metrics.py``) and wiring
hands it to the worker. Hooks on the per-message path run on hot threads (the AMQP I/O thread, the pipeline
threads), so they must be cheap: no I/O, no lock held for long, and they must not raise. The engine guards
each call anyway, so a broken observer can never change what happens to a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from routes.worker import Worker


class Observer:
    """No-op hooks on the worker and the pipeline; subclass and override what you need."""

    def before_worker_boot(self, worker: Worker) -> None:
        """Called in the worker's thread before its I/O loop starts (start probes, an HTTP server...)."""

    def after_worker_shutdown(self, worker: Worker) -> None:
        """Called in the worker's thread after its I/O loop stopped and its pipeline threads finished."""

    def after_receive(self, route: str, published_at: int | None) -> None:
        """Called on the AMQP I/O thread when the consumer of ``route`` takes a message.

        Args:
            route: the route whose queue delivered it.
            published_at: the message's AMQP ``timestamp`` property (seconds since the epoch), if it has one.
        """

    def after_connector_call(
        self, connector: str, operation: str, duration_s: float, error: BaseException | None
    ) -> None:
        """Called on a pipeline thread after a call to a target (an operation or its lookup).

        Args:
            connector: the connector's name in connectors.yaml.
            operation: the operation, ``<operation>.lookup`` for a reconciling lookup.
            duration_s: how long the call took.
            error: what it raised (a :mod:`schemas.errors` error, or anything else), None on success.
        """

    def after_garbled(self, connector: str, route: str, detail: str) -> None:
        """Called on a pipeline thread when a message is dead-lettered because its target kept answering garbage.

        Replies the connector refuses (a DOCTYPE, not the protocol's format, the wrong shape, over the cap)
        are a fault of the target to surface now: the health monitor shows the connector degraded.

        Args:
            connector: the connector's name in connectors.yaml.
            route: the route whose message was dead-lettered.
            detail: how many replies were refused, and the last reason (scrubbed, no reply body).
        """

    def after_process(self, route: str, outcome: str, duration_s: float, error_kind: str | None) -> None:
        """Called on a pipeline thread when a delivery has its outcome (before its publishes and ack).

        Args:
            route: the route.
            outcome: ``delivered``, ``skipped``, ``duplicate``, ``retry`` or ``dead_lettered``.
            duration_s: time spent in the pipeline.
            error_kind: the error kind of a retry or dead letter (``unavailable``, ``rejected``...), else None.
        """
