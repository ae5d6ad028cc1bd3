"""Every RabbitMQ name and argument of the bus, and their idempotent declaration from config.

A message's path through the broker: iGate publishes to ``igate.events`` (topic, key = event type); each
route's quorum queue ``route.<name>`` is bound with the route's keys; a transient failure parks a copy in
``retry.<name>.<delay>`` whose TTL dead-letters it back to the route queue; a permanent failure lands in
``dlq.<name>``. Results go to ``bus.results``. Both exchanges have the alternate exchange ``bus.unrouted`` into
the ``unrouted`` queue, so an event no route wants is kept, never confirmed and dropped.

Every queue argument is set explicitly (delivery limit, dead-letter strategy, overflow) so behaviour does not
depend on the broker version's defaults (RabbitMQ 3.10 has no default delivery limit; 4.x has 20).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pika.exceptions import ChannelClosedByBroker

from config.model import format_duration
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pika

EVENTS_EXCHANGE = "igate.events"
RESULTS_EXCHANGE = "bus.results"
UNROUTED_EXCHANGE = "bus.unrouted"
UNROUTED_QUEUE = "unrouted"


def route_queue(route: str) -> str:
    """The quorum queue a route consumes."""
    return f"route.{route}"


def format_delay(seconds: float) -> str:
    """``5s``, ``2m``, ``1h``, ``1500ms``: the delay as it appears in a retry queue's name (and in routes.yaml)."""
    return format_duration(seconds)


def retry_queue(route: str, delay_s: float) -> str:
    """The delay queue that holds a route's messages for ``delay_s`` before they return."""
    return f"retry.{route}.{format_delay(delay_s)}"


def dlq(route: str) -> str:
    """The dead-letter queue of a route."""
    return f"dlq.{route}"


@dataclass(frozen=True, slots=True)
class QueueDecl:
    """One queue with its arguments and bindings."""

    name: str
    arguments: dict[str, Any]
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)


@dataclass(frozen=True, slots=True)
class RouteTopology:
    """What one route needs from the broker."""

    name: str
    exchange: str
    keys: tuple[str, ...]
    backoff: tuple[float, ...]
    delivery_limit: int
    #: one consumer at a time (``x-single-active-consumer``): the route's order across worker processes
    single_consumer: bool = False


@dataclass(slots=True)
class Topology:
    """The whole declared topology: exchanges, then queues with their bindings."""

    queues: list[QueueDecl] = field(default_factory=list)


def _quorum(delivery_limit: int, dlx_key: str, **extra: Any) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlx_key,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        **extra,
    }


def build_topology(routes: Iterable[RouteTopology]) -> Topology:
    """The queues for ``routes`` (pure: nothing is declared here)."""
    topo = Topology(queues=[QueueDecl(UNROUTED_QUEUE, {"x-queue-type": "classic"}, ((UNROUTED_EXCHANGE, ""),))])
    for r in routes:
        main = route_queue(r.name)
        single = {"x-single-active-consumer": True} if r.single_consumer else {}
        topo.queues.append(
            QueueDecl(main, _quorum(r.delivery_limit, dlq(r.name), **single), tuple((r.exchange, k) for k in r.keys))
        )
        for delay in sorted(set(r.backoff)):
            topo.queues.append(
                QueueDecl(
                    retry_queue(r.name, delay),
                    _quorum(r.delivery_limit, main, **{"x-message-ttl": round(delay * 1000)}),
                )
            )
        # classic: listing a DLQ requeues what it browsed, and a quorum queue would count that as a delivery
        topo.queues.append(QueueDecl(dlq(r.name), {"x-queue-type": "classic"}))
    return topo


_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for (?:queue|exchange) '([^']+)'.*?received (.*)")


def declare_exchanges(channel: Any) -> None:
    """Declare the exchanges and the unrouted queue (idempotent); publishers call this before publishing.

    The unrouted queue comes with the exchanges: an alternate exchange with no queue behind it would make
    every event no route binds unroutable, which a mandatory publish then refuses.
    """
    channel.exchange_declare(UNROUTED_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(UNROUTED_QUEUE, durable=True, arguments={"x-queue-type": "classic"})
    channel.queue_bind(UNROUTED_QUEUE, UNROUTED_EXCHANGE, routing_key="")
    for name in (EVENTS_EXCHANGE, RESULTS_EXCHANGE):
        channel.exchange_declare(
            name, exchange_type="topic", durable=True, arguments={"alternate-exchange": UNROUTED_EXCHANGE}
        )


def declare(connection: pika.BlockingConnection, topology: Topology) -> None:
    """Declare exchanges, queues and bindings; a refused redeclare becomes a ConfigError naming the argument."""
    channel = connection.channel()
    try:
        declare_exchanges(channel)
        for q in topology.queues:
            try:
                channel.queue_declare(q.name, durable=True, arguments=q.arguments)
            except ChannelClosedByBroker as exc:
                raise _refused(q, exc) from None
            for exchange, key in q.bindings:
                channel.queue_bind(q.name, exchange, routing_key=key)
    except ChannelClosedByBroker as exc:
        raise ConfigError(f"RabbitMQ refused the topology: {exc.reply_text}") from None
    finally:
        if channel.is_open:
            channel.close()


def _refused(q: QueueDecl, exc: ChannelClosedByBroker) -> ConfigError:
    text = str(exc.reply_text)
    m = _INEQUIVALENT.search(text)
    if exc.reply_code == 406 and m:
        arg, received = m.group(1), m.group(3)
        wanted = q.arguments.get(arg, "(not set)")
        return ConfigError(
            f"queue {q.name!r}: RabbitMQ refused the redeclare because argument {arg!r} differs "
            f"(config wants {wanted!r}; broker says: received {received}). Drain and delete the queue, "
            f"or restore the old value.",
            field=arg,
        )
    return ConfigError(f"queue {q.name!r}: RabbitMQ refused the declaration: {text}")


def unbind_stale(connection: pika.BlockingConnection, topology: Topology) -> None:
    """Nothing yet: RabbitMQ 3.10 without the management API cannot list bindings over AMQP.

    A key removed from routes.yaml stays bound until ``rabbitmqctl`` removes it; ``igate-bus topology``
    prints what the config wants so an operator can compare.
    """
    del connection, topology
