"""Confirmed publishing for the CLI, the HTTP ingress and tests: nothing counts as sent until the broker confirms.

``mandatory=True`` on every publish: without it RabbitMQ confirms an unroutable message and drops it. With
the alternate exchange on ``igate.events`` an unbound event type is routed to ``unrouted`` instead, so a
return here means the exchange or queue itself is missing.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import pika
from pika.exceptions import AMQPError, NackError, UnroutableError

from routes.amqp import event_properties, parameters
from routes.topology import EVENTS_EXCHANGE, declare_exchanges

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


class PublishFailed(Exception):
    """The broker did not confirm the message (nacked, returned, or the connection failed)."""


@dataclass(frozen=True, slots=True)
class Published:
    """One confirmed publish."""

    event_id: str
    event_type: str
    exchange: str


class Publisher:
    """A blocking, confirming publisher on its own connection (never shared with a consumer)."""

    def __init__(
        self,
        amqp_url: str,
        *,
        name: str = "igate-bus publisher",
        heartbeat: int = 15,
        blocked_connection_timeout: float = 10.0,
    ) -> None:
        self._params = parameters(
            amqp_url, name=name, heartbeat=heartbeat, blocked_connection_timeout=blocked_connection_timeout
        )
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def _ensure(self) -> Any:
        if self._connection is None or self._connection.is_closed or self._channel is None or self._channel.is_closed:
            self.close()
            self._connection = pika.BlockingConnection(self._params)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            declare_exchanges(self._channel)
        return self._channel

    def publish_raw(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: pika.BasicProperties,
    ) -> None:
        """Publish and wait for the confirm; raise :class:`PublishFailed` otherwise."""
        try:
            self._ensure().basic_publish(exchange, routing_key, body, properties, mandatory=True)
        except UnroutableError:
            raise PublishFailed(f"unroutable: exchange {exchange!r} key {routing_key!r}") from None
        except NackError:
            raise PublishFailed(f"broker refused (nack) the message for {exchange!r}/{routing_key!r}") from None
        except AMQPError as exc:
            self.close()
            raise PublishFailed(f"broker connection failed: {exc!r}") from None

    def publish_event(self, event: dict[str, Any], *, exchange: str = EVENTS_EXCHANGE) -> Published:
        """Publish an envelope (already validated by the caller) with the bus's standard properties."""
        event_id = str(event["event_id"])
        event_type = str(event["event_type"])
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        props = event_properties(event_id=event_id, event_type=event_type, correlation_id=event.get("correlation_id"))
        self.publish_raw(body, exchange=exchange, routing_key=event_type, properties=props)
        return Published(event_id=event_id, event_type=event_type, exchange=exchange)

    def publish_many(self, events: Iterable[dict[str, Any]], *, exchange: str = EVENTS_EXCHANGE) -> Iterator[Published]:
        """Publish each event in turn, confirmed one by one (fine for the CLI and tests)."""
        for event in events:
            yield self.publish_event(event, exchange=exchange)

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        conn, self._connection, self._channel = self._connection, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(AMQPError):
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
