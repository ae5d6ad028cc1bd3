"""Queues and bindings of ours that no route declares any more, and their careful removal.

Where it sits: beside the topology (``routes/topology.py``). Removing a route from routes.yaml leaves
``route.<name>`` bound on the broker: events keep arriving in a queue nobody consumes, silently, and
``status`` (which lists the configured routes) no longer shows it. A binding key removed from a route does
the same to a queue that is still used. Declaring is idempotent but never undeclares, so this module
compares what the broker has (listed by ``routes/broker_admin.py``) with what the routes declare:

- **candidates** are only our queues: named ``route.<name>``, ``retry.<name>.<delay>``, ``dlq.<name>``
  *and* carrying the arguments the bus gives them (:func:`is_ours`), and bindings from our exchanges
  (``igate.events``, ``bus.results``, ``bus.unrouted``) to such queues. Any other queue, and any other
  team's queue bound to our exchanges, is never touched;
- :func:`find_stale` is pure; :func:`prune` acts over AMQP, queue by queue, and says what it did:

  ========================================  ===========================================================
  what is stale                             ``prune`` does
  ========================================  ===========================================================
  a binding to a queue a route still uses   unbinds it (the route no longer asks for those events)
  a queue with consumers                    nothing: an older worker still runs that route; ``--force``
                                            deletes it anyway
  an empty queue without consumers          unbinds it, counts it again, and deletes it (``if-empty``
                                            for a classic queue; a quorum queue cannot, and the unbind
                                            is what keeps new events out of it meanwhile)
  a queue holding messages                  unbinds it, so that new events stop piling up there (they
                                            go to the routes that bind them, or to ``unrouted``), and
                                            keeps it with its messages; ``--force`` deletes them
  a route queue whose retry queues still    kept (unbound): their messages come back to it when their
  hold messages                             delay ends, and would be dropped without it
  ========================================  ===========================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pika.exceptions import AMQPError, ChannelClosedByBroker

from routes.topology import EVENTS_EXCHANGE, RESULTS_EXCHANGE, UNROUTED_EXCHANGE

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pika

    from routes.broker_admin import Binding, QueueName
    from routes.topology import Topology

OUR_EXCHANGES: Final = frozenset({EVENTS_EXCHANGE, RESULTS_EXCHANGE, UNROUTED_EXCHANGE})
#: AMQP reply codes of a refused delete or a missing queue
_PRECONDITION_FAILED, _NOT_FOUND = 406, 404


_ROUTE = r"[a-z][a-z0-9-]{0,62}"  # config/model.py ROUTE_NAME
_OUR_NAME: Final = re.compile(
    rf"^(?:route\.(?P<route>{_ROUTE})|dlq\.(?P<dlq>{_ROUTE})|retry\.(?P<retry>{_ROUTE})\.\d+(?:ms|s|m|h))$"
)


def is_ours(queue: QueueName) -> bool:
    """Whether the bus made this queue: our name *and* the arguments ``routes/topology.py`` gives it.

    The name alone could be another team's (``route.x`` is not a rare name); the dead-letter target set on
    our route queues (``dlq.<name>``) and retry queues (``route.<name>``), and the bare classic DLQs, are ours.
    """
    m = _OUR_NAME.match(queue.name)
    if m is None:
        return False
    args = queue.arguments
    target = args.get("x-dead-letter-routing-key")
    if m.group("route"):
        return queue.type == "quorum" and target == f"dlq.{m.group('route')}"
    if m.group("retry"):
        return queue.type == "quorum" and target == f"route.{m.group('retry')}" and "x-message-ttl" in args
    return queue.type == "classic" and set(args) <= {"x-queue-type"}


@dataclass(frozen=True, slots=True)
class StaleQueue:
    """A queue of ours that no route declares, with its type and the bindings that still feed it."""

    name: str
    type: str = "classic"
    bindings: tuple[Binding, ...] = ()


@dataclass(frozen=True, slots=True)
class Stale:
    """Everything of ours on the broker that the routes do not declare."""

    queues: tuple[StaleQueue, ...] = ()
    bindings: tuple[Binding, ...] = ()  # to queues the routes still declare

    def __bool__(self) -> bool:
        return bool(self.queues or self.bindings)

    def lines(self) -> list[str]:
        """One line per finding, for a log or the end of a table."""
        out = [
            f"queue {q.name} is declared by no route"
            + (
                f" and still bound ({', '.join(f'{b.exchange}:{b.routing_key}' for b in q.bindings)})"
                if q.bindings
                else ""
            )
            for q in self.queues
        ]
        out += [f"binding {b.exchange}:{b.routing_key} -> {b.queue} is declared by no route" for b in self.bindings]
        return out

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, for ``status --json``."""
        return {
            "queues": [
                {"name": q.name, "type": q.type, "bindings": [[b.exchange, b.routing_key] for b in q.bindings]}
                for q in self.queues
            ],
            "bindings": [
                {"exchange": b.exchange, "queue": b.queue, "routing_key": b.routing_key} for b in self.bindings
            ],
        }


def find_stale(topology: Topology, queues: Iterable[QueueName], bindings: Iterable[Binding]) -> Stale:
    """Our queues and bindings on the broker that ``topology`` does not declare (pure).

    Args:
        topology: what the routes of the config declare (every route, enabled or not: a disabled route keeps
            its queues for when it is enabled again).
        queues: the vhost's queues, as listed.
        bindings: the vhost's exchange-to-queue bindings, as listed.
    """
    declared = {q.name for q in topology.queues}
    wanted = {(exchange, q.name, key) for q in topology.queues for exchange, key in q.bindings}
    our_queues = {q.name: q for q in queues if is_ours(q)}
    ours = [b for b in bindings if b.exchange in OUR_EXCHANGES and b.queue in our_queues]
    stale_queues = tuple(
        StaleQueue(q.name, q.type, tuple(sorted((b for b in ours if b.queue == q.name), key=_order)))
        for q in sorted(our_queues.values(), key=lambda q: q.name)
        if q.name not in declared
    )
    stale_bindings = tuple(
        sorted(
            (b for b in ours if b.queue in declared and (b.exchange, b.queue, b.routing_key) not in wanted),
            key=_order,
        )
    )
    return Stale(stale_queues, stale_bindings)


def _order(b: Binding) -> tuple[str, str, str]:
    return (b.queue, b.exchange, b.routing_key)


@dataclass(slots=True)
class PruneReport:
    """What :func:`prune` did, one line each."""

    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def prune(connection: pika.BlockingConnection, stale: Stale, *, force: bool = False) -> PruneReport:
    """Remove what :func:`find_stale` found, as the module's table says; never raises for one queue's refusal.

    A stale queue is unbound before it is counted, so nothing new reaches it from our exchanges between the
    count and the delete: quorum queues cannot be deleted ``if-empty`` (RabbitMQ answers NOT_IMPLEMENTED and
    closes the connection), so for them the unbind is what makes "delete only when empty" hold.

    Args:
        connection: a blocking connection to the vhost.
        stale: the findings (only our names can be in them).
        force: delete stale queues even with messages or consumers.
    """
    report = PruneReport()
    try:
        for b in stale.bindings:
            _unbind(connection, b, report)
        counts = {q.name: _counts(connection, q.name) for q in stale.queues}
        # retry queues first: a route queue must outlive the messages its retry queues will send back to it
        for q in sorted(stale.queues, key=lambda q: not q.name.startswith("retry.")):
            counts[q.name] = _prune_queue(connection, q, counts, report, force=force)
    except AMQPError as exc:  # the connection itself is gone: say how far we got
        report.kept.append(f"stopped: the broker connection failed ({exc!r}); run --prune again")
    return report


def _prune_queue(
    connection: pika.BlockingConnection,
    q: StaleQueue,
    counts: dict[str, tuple[int | None, int]],
    report: PruneReport,
    *,
    force: bool,
) -> tuple[int | None, int]:
    """Prune one stale queue; returns its counts afterwards ((None, 0) when it is gone)."""
    depth, consumers = counts[q.name]
    if depth is None:
        report.done.append(f"queue {q.name}: already gone")
        return None, 0
    if force:
        gone = _delete(connection, q, report, note=f"forced: {depth} message(s), {consumers} consumer(s)")
        return (None, 0) if gone else (depth, consumers)
    if consumers:
        report.kept.append(
            f"queue {q.name}: kept, {consumers} consumer(s) still read it (an older worker runs this route?); "
            "--force deletes it"
        )
        return depth, consumers
    for b in q.bindings:
        _unbind(connection, b, report)
    depth, consumers = _counts(connection, q.name)  # after the unbind: only the default exchange can add now
    if depth is None:
        report.done.append(f"queue {q.name}: already gone")
        return None, 0
    returning = _returning(q.name, counts)
    if depth or consumers or returning:
        why = (
            f"{depth} message(s)"
            if depth
            else f"{consumers} consumer(s)"
            if consumers
            else f"{returning} message(s) still to come back from its retry queues"
        )
        unbound = ", now unbound" if q.bindings else ""
        report.kept.append(f"queue {q.name}: kept with {why}{unbound}; --force deletes it with its messages")
        return depth, consumers
    gone = _delete(connection, q, report, note="empty")
    return (None, 0) if gone else (depth, consumers)


def _returning(queue: str, counts: dict[str, tuple[int | None, int]]) -> int:
    """Messages in the stale retry queues of a stale route queue, which their TTL sends back to it."""
    if not queue.startswith("route."):
        return 0
    prefix = "retry." + queue.removeprefix("route.") + "."
    return sum(depth or 0 for name, (depth, _) in counts.items() if name.startswith(prefix))


def _counts(connection: pika.BlockingConnection, queue: str) -> tuple[int | None, int]:
    channel = connection.channel()
    try:
        ok = channel.queue_declare(queue, passive=True)
        return int(ok.method.message_count), int(ok.method.consumer_count)
    except ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            return None, 0
        raise
    finally:
        if channel.is_open:
            channel.close()


def _unbind(connection: pika.BlockingConnection, b: Binding, report: PruneReport) -> None:
    channel = connection.channel()
    try:
        channel.queue_unbind(b.queue, b.exchange, routing_key=b.routing_key)
        report.done.append(f"unbound {b.exchange}:{b.routing_key} -> {b.queue}")
    except ChannelClosedByBroker as exc:
        report.kept.append(f"binding {b.exchange}:{b.routing_key} -> {b.queue}: the broker refused ({exc.reply_text})")
    finally:
        if channel.is_open:
            channel.close()


def _delete(connection: pika.BlockingConnection, q: StaleQueue, report: PruneReport, *, note: str) -> bool:
    """Delete one queue (``if-empty`` where the queue type supports it, unless forced); True when it is gone."""
    forced = note.startswith("forced")
    channel = connection.channel()
    try:
        ok = channel.queue_delete(q.name, if_empty=not forced and q.type == "classic")
    except ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            report.done.append(f"queue {q.name}: already gone")
            return True
        if exc.reply_code == _PRECONDITION_FAILED:  # a message arrived between our count and the delete
            report.kept.append(f"queue {q.name}: kept, it is no longer empty; run --prune again or --force")
        else:
            report.kept.append(f"queue {q.name}: the broker refused the delete ({exc.reply_text})")
        return False
    else:
        report.done.append(f"deleted queue {q.name} ({note}; {int(ok.method.message_count)} message(s) deleted)")
        return True
    finally:
        if channel.is_open:
            channel.close()
