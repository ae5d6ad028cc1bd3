"""Connection parameters and message properties, set the same way everywhere the bus talks AMQP.

pika's defaults are unsafe for a bus: no heartbeat unless the broker proposes one, one connection attempt,
no timeout on a blocked (alarmed) connection. Every connection goes through :func:`parameters`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pika


def parameters(
    url: str,
    *,
    name: str,
    heartbeat: int = 15,
    blocked_connection_timeout: float = 10.0,
    socket_timeout: float = 5.0,
) -> pika.URLParameters:
    """Parameters from an ``amqp://`` / ``amqps://`` URL with the bus's heartbeat and timeouts applied."""
    if heartbeat <= 0:
        raise ValueError("heartbeat must be positive: 0 disables dead-peer detection")
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = blocked_connection_timeout
    params.socket_timeout = socket_timeout
    params.stack_timeout = socket_timeout * 3
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name, "product": "igate-bus"}
    return params


def event_properties(
    *,
    event_id: str,
    event_type: str,
    correlation_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> pika.BasicProperties:
    """Persistent JSON properties; ``message_id`` is the event id, ``type`` the event type."""
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id=event_id,
        type=event_type,
        correlation_id=correlation_id,
        timestamp=int(datetime.now(UTC).timestamp()),
        headers=headers or {},
    )


def copy_properties(props: pika.BasicProperties, headers: dict[str, Any]) -> pika.BasicProperties:
    """The properties of a copy of a message the bus republishes: a retry, a dead letter, a replay.

    The one place that decides what a copy keeps, so the pipeline's copies and ``dlq replay`` cannot drift
    apart: everything that describes the body or the event (content type and encoding, message id = event
    id, type, correlation id, timestamp, app id) and the given headers, persistent. Left out: ``expiration``
    (a per-message TTL would let the copy vanish from a delay queue or a DLQ), ``user_id`` (the broker
    checks it against whoever publishes the copy), ``reply_to`` and ``priority`` (unused by the bus).
    """
    return pika.BasicProperties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        delivery_mode=2,
        message_id=props.message_id,
        type=props.type,
        correlation_id=props.correlation_id,
        timestamp=props.timestamp,
        app_id=props.app_id,
        headers=headers,
    )


def worker_id() -> str:
    """host:pid:random — unique per process, readable in the store and the broker's connection list."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def broker_version(connection: Any) -> str:
    """The broker's version string from the connection's server properties ("unknown" if absent)."""
    props = getattr(connection, "server_properties", None) or {}
    version = props.get("version", b"unknown")
    return version.decode() if isinstance(version, bytes) else str(version)
