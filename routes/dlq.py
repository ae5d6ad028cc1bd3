"""Dead letters for operators: list, show, replay (all or filtered) and purge, per route or the unrouted queue.

Listing browses with ``basic.get`` without acking and then closes the channel, which returns every browsed
message to its place (DLQs are classic queues, so browsing does not count as a delivery). Replay sends a dead
letter straight to its route's queue (not back through the exchange, where routes that already handled the
event would see it again), with the same body and so the same ``event_id``, and acks it in the DLQ only after
the broker confirmed the republish. Messages from ``unrouted`` are republished to their original exchange.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pika.exceptions import ChannelClosedByBroker

from routes.amqp import copy_properties
from routes.topology import UNROUTED_QUEUE, dlq, route_queue

if TYPE_CHECKING:
    import pika

#: headers the failure added; replay removes them so the route starts the message afresh
FAILURE_HEADERS = (
    "x-error-kind",
    "x-error",
    "x-attempts",
    "x-parked",
    "x-failed-at",
    "x-last-error",
    "x-error-field",
    "x-garbled",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
    "x-pub-seq",
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter as an operator sees it."""

    queue: str
    route: str | None
    event_id: str | None
    event_type: str | None
    dossier_code: str | None
    error_kind: str
    error: str
    attempts: int | None
    failed_at: str | None
    exchange: str
    routing_key: str
    size: int
    headers: dict[str, Any]
    body: bytes

    def summary(self) -> dict[str, Any]:
        """JSON-ready fields (no body) for ``dlq list --json``."""
        return {
            "queue": self.queue,
            "route": self.route,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "dossier_code": self.dossier_code,
            "error_kind": self.error_kind,
            "error": self.error,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
            "size": self.size,
        }


def queue_for(route: str) -> str:
    """``unrouted`` names the unrouted queue; anything else is a route's DLQ."""
    return UNROUTED_QUEUE if route == UNROUTED_QUEUE else dlq(route)


def _decode(queue: str, method: Any, props: Any, body: bytes) -> DeadLetter:
    headers = dict(props.headers or {})
    env: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            env = parsed
    except (ValueError, RecursionError):
        pass
    death = (headers.get("x-death") or [{}])[0] if isinstance(headers.get("x-death"), list) else {}
    kind = headers.get("x-error-kind") or (
        f"broker:{death.get('reason')}" if death else ("unrouted" if queue == UNROUTED_QUEUE else "unknown")
    )
    error = headers.get("x-error") or (
        f"dead-lettered by the broker ({death.get('reason')}) from {death.get('queue')}"
        if death
        else "no route binds this event type"
        if queue == UNROUTED_QUEUE
        else ""
    )
    attempts = headers.get("x-attempts")

    def s(v: Any) -> str | None:
        return None if v is None else (v.decode() if isinstance(v, bytes) else str(v))

    return DeadLetter(
        queue=queue,
        route=s(headers.get("x-route")) or (queue.removeprefix("dlq.") if queue.startswith("dlq.") else None),
        event_id=s(props.message_id) or s(env.get("event_id")),
        event_type=s(props.type) or s(env.get("event_type")),
        dossier_code=s(env.get("dossier_code")),
        error_kind=str(s(kind)),
        error=str(s(error)),
        attempts=attempts if isinstance(attempts, int) else None,
        failed_at=s(headers.get("x-failed-at")),
        exchange=s(headers.get("x-original-exchange")) or method.exchange,
        routing_key=s(headers.get("x-original-routing-key")) or method.routing_key,
        size=len(body),
        headers=headers,
        body=body,
    )


Filter = Callable[[DeadLetter], bool]


def match(*, event_ids: set[str] | None = None, kind: str | None = None, dossier_code: str | None = None) -> Filter:
    """A filter on event ids (any case: they are UUIDs), error kind (prefix) and dossier code; none matches all."""
    ids = {i.lower() for i in event_ids or ()}

    def f(d: DeadLetter) -> bool:
        return (
            (not ids or (d.event_id or "").lower() in ids)
            and (kind is None or d.error_kind.startswith(kind))
            and (dossier_code is None or d.dossier_code == dossier_code)
        )

    return f


class DeadLetters:
    """DLQ operations on one blocking connection."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self._conn = connection

    def depth(self, route: str) -> int:
        """How many messages wait in the route's DLQ (or ``unrouted``); 0 when the queue does not exist."""
        ch = self._conn.channel()
        try:
            return int(ch.queue_declare(queue_for(route), passive=True).method.message_count)
        except ChannelClosedByBroker:
            return 0
        finally:
            if ch.is_open:
                ch.close()

    def browse(self, route: str, *, limit: int = 1000, where: Filter | None = None) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, left in place."""
        queue = queue_for(route)
        ch = self._conn.channel()
        out: list[DeadLetter] = []
        try:
            seen = 0
            while seen < limit:
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                seen += 1
                d = _decode(queue, method, props, body)
                if where is None or where(d):
                    out.append(d)
        except ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
        finally:
            if ch.is_open:
                ch.close()  # returns every browsed message to the queue
        return out

    def event_ids(self, route: str, *, limit: int = 100_000) -> set[str]:
        """The event ids of up to ``limit`` dead letters, left in place (bodies are not kept: a DLQ may be big)."""
        ids: set[str] = set()

        def collect(d: DeadLetter) -> bool:
            if d.event_id:
                ids.add(d.event_id)
            return False

        self.browse(route, limit=limit, where=collect)
        return ids

    def _take(self, route: str, where: Filter, act: Callable[[DeadLetter, Any], bool], limit: int) -> int:
        """Get messages; for each match run ``act`` (True: ack it); the rest go back when the channel closes."""
        queue = queue_for(route)
        ch = self._conn.channel()
        done = 0
        try:
            for _ in range(limit):
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                d = _decode(queue, method, props, body)
                if where(d) and act(d, props):
                    ch.basic_ack(method.delivery_tag)
                    done += 1
        except ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
        finally:
            if ch.is_open:
                ch.close()
        return done

    def replay(self, route: str, *, where: Filter | None = None, limit: int = 100_000) -> int:
        """Send matching dead letters back to their route (same body, same event_id); returns how many."""
        pub = self._conn.channel()
        pub.confirm_delivery()
        now = datetime.now(UTC).isoformat()

        def act(d: DeadLetter, props: Any) -> bool:
            headers = {k: v for k, v in d.headers.items() if k not in FAILURE_HEADERS}
            headers["x-replayed-at"] = now
            headers["x-replays"] = int(headers.get("x-replays", 0) or 0) + 1
            new = copy_properties(props, headers)  # the pipeline's own copy: nothing a replay could drop
            if d.queue == UNROUTED_QUEUE:
                pub.basic_publish(d.exchange, d.routing_key, d.body, new, mandatory=True)
            else:
                pub.basic_publish("", route_queue(route), d.body, new, mandatory=True)
            return True  # basic_publish raised if the broker did not confirm

        try:
            return self._take(route, where or (lambda _d: True), act, limit)
        finally:
            if pub.is_open:
                pub.close()

    def purge(self, route: str, *, where: Filter | None = None, limit: int = 100_000) -> int:
        """Delete matching dead letters; returns how many."""
        return self._take(route, where or (lambda _d: True), lambda _d, _p: True, limit)
