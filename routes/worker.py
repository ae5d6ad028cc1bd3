"""The worker loop: consume, run the pipeline off the I/O thread, publish its output with confirms, then ack.

Each route's queue is consumed; what the pipeline produced is published with confirms, and a delivery is
acked only when every one of those publishes is confirmed.

One pika ``SelectConnection`` I/O loop owns two connections: one for consuming, one for publishing (an
alarmed broker blocks publishers, and must not also stop our acks). pika is not thread-safe, so the I/O loop
is the only thread that touches AMQP; pipeline threads hand their outcome back through
``add_callback_threadsafe``. Confirms are asynchronous (a delivery waits only for its own publishes), which
keeps throughput near a raw pika consumer.

Failure handling:
- a lost connection (broker gone, network): both connections are dropped, every unacked delivery returns
  to its queue on the broker side, outcomes of the old connections are discarded (their claims in the store
  make the redelivery cheap and effect-free), and the worker reconnects with backoff, redeclares, re-consumes;
- SIGTERM/SIGINT (:meth:`Worker.stop`): cancel consumers, finish in-flight work, wait for its confirms, ack,
  close. Nothing is lost, and nothing is half-done that the store does not know about.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import takewhile
from typing import TYPE_CHECKING, Any

import pika
import structlog
from pika.adapters.select_connection import IOLoop

from routes.amqp import broker_version, parameters
from routes.pipeline import CrashPlan, Delivery, Outcome, RouteRunner, kill
from routes.topology import route_queue

if TYPE_CHECKING:
    from collections.abc import Callable

    from routes.observer import Observer
    from routes.scheduler import Scheduler

PUB_SEQ_HEADER = "x-pub-seq"
#: most deliveries one pipeline thread takes at once on a route that waits on no I/O (one transaction each
#: for their claims and completions)
MAX_BATCH = 32
#: batches at once for a route whose operation waits on no I/O: one runs while the next is handed over
CPU_ONLY_THREADS = 2


@dataclass(slots=True)
class _InFlight:
    """A delivery between its arrival and its ack."""

    runner: RouteRunner
    generation: int
    channel: Any
    delivery_tag: int
    outcome: Outcome | None = None
    remaining: int = 0
    failed: bool = False


@dataclass(slots=True)
class RouteStats:
    """Counters per route, read by ``status`` and the metrics endpoint."""

    received: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    requeued: int = 0


class Worker:
    """Runs a set of routes until :meth:`stop`; reconnects by itself when the broker goes away."""

    def __init__(
        self,
        amqp_url: str,
        runners: list[RouteRunner],
        *,
        declare: Callable[[], None] | None = None,
        heartbeat: int = 15,
        blocked_connection_timeout: float = 10.0,
        drain_timeout: float = 60.0,
        reconnect_max_delay: float = 15.0,
        crash: CrashPlan = CrashPlan(),  # noqa: B008 - frozen, so one shared default is safe
        observer: Observer | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self._url = amqp_url
        #: fires the ticks of the worker's scheduled routes while it runs (routes/scheduler.py)
        self.scheduler = scheduler
        self._runners = runners
        self._declare = declare
        self._heartbeat = heartbeat
        self._blocked_timeout = blocked_connection_timeout
        self._drain_timeout = drain_timeout
        self._reconnect_max = reconnect_max_delay
        self._crash = crash
        self._log = structlog.get_logger("igate_bus.worker")
        self._ioloop: Any = None
        self._generation = 0
        self._consume_conn: Any = None
        self._publish_conn: Any = None
        self._pub_channel: Any = None
        self._pub_seq = 0
        self._pending: dict[int, _InFlight] = {}
        self._channels: dict[str, Any] = {}
        self._consumer_tags: dict[str, str] = {}
        self._executors = {r.name: ThreadPoolExecutor(r.route.spec.concurrency, f"route-{r.name}") for r in runners}
        self._waiting: dict[str, deque[tuple[_InFlight, Delivery]]] = {r.name: deque() for r in runners}
        self._busy = {r.name: 0 for r in runners}  # pipeline threads taking this route's deliveries
        #: taking from ``_waiting`` (the I/O loop and pipeline threads) and dropping it (``_teardown``)
        self._take_lock = threading.Lock()
        #: pipeline threads that found nothing more to take since the I/O loop last counted them, per route
        self._idle: dict[str, int] = {r.name: 0 for r in runners}
        self._dispatch_due: set[str] = set()
        #: outcomes handed back by pipeline threads, drained by the I/O loop (see _handoff)
        self._processed: deque[tuple[RouteRunner, list[_InFlight], Future[list[Outcome]]]] = deque()
        self._wake_lock = threading.Lock()
        self._wake_due = False
        self._running = 0  # deliveries taken and not yet handed back from the pipeline
        self._unacked = 0  # deliveries of the live generation not yet acked
        self._stop_requested = threading.Event()
        self._stopping = False
        self._drain_deadline = 0.0
        self._reconnect_delay = 1.0
        self._ready = threading.Event()
        self.stats = {r.name: RouteStats() for r in runners}
        #: told when the worker boots and stops and when a consumer takes a message (metrics, health)
        self.observer = observer

    # -- public --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Block running the I/O loop until :meth:`stop` has drained everything."""
        self._ioloop = IOLoop()
        self._ioloop.add_callback_threadsafe(self._connect)
        self._ioloop.call_later(0.2, self._tick)
        if self.observer is not None:
            self._tell(self.observer.before_worker_boot, self)
        if self.scheduler is not None:
            self.scheduler.start()
        try:
            self._ioloop.start()
        finally:
            if self.scheduler is not None:  # first: its leases end now, so another worker fires on time
                self.scheduler.stop()
            for ex in self._executors.values():
                ex.shutdown(wait=True)
            self._ioloop.close()
            self._log.info("worker_stopped", stats={k: v.outcomes for k, v in self.stats.items()})
            if self.observer is not None:
                self._tell(self.observer.after_worker_shutdown, self)

    def stop(self) -> None:
        """Ask the worker to stop gracefully; safe from signal handlers and other threads."""
        self._stop_requested.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker gracefully (call from the main thread)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: self.stop())

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker consumes from every route (for tests and the demo)."""
        return self._ready.wait(timeout)

    def _tell(self, hook: Callable[..., None], *args: Any) -> None:
        """Run an observer hook; a broken observer is logged and never stops the worker."""
        try:
            hook(*args)
        except Exception as exc:
            self._log.warning("observer_failed", hook=getattr(hook, "__name__", "?"), error=repr(exc))

    # -- connection lifecycle --------------------------------------------------------------------------
    def _params(self, role: str) -> pika.URLParameters:
        return parameters(
            self._url,
            name=f"igate-bus worker {role} pid {os.getpid()}",
            heartbeat=self._heartbeat,
            blocked_connection_timeout=self._blocked_timeout,
        )

    def _connect(self) -> None:
        if self._stopping:
            return
        self._generation += 1
        gen = self._generation
        try:
            if self._declare is not None:
                self._declare()
        except Exception as exc:  # broker down, or a topology the broker refuses
            from schemas.errors import ConfigError

            if isinstance(exc, ConfigError):
                self._log.error("topology_refused", error=str(exc))
                self._stop_requested.set()
                return
            self._log.warning("broker_unreachable", error=repr(exc), retry_in_s=self._reconnect_delay)
            self._schedule_reconnect()
            return
        self._publish_conn = pika.SelectConnection(
            self._params("publish"),
            on_open_callback=partial(self._on_publish_open, gen),
            on_open_error_callback=partial(self._on_open_error, gen),
            on_close_callback=partial(self._on_closed, gen, "publish"),
            custom_ioloop=self._ioloop,
        )

    def _on_open_error(self, gen: int, _conn: Any, exc: BaseException) -> None:
        if gen != self._generation:
            return
        self._log.warning("broker_unreachable", error=repr(exc), retry_in_s=self._reconnect_delay)
        self._teardown()
        self._schedule_reconnect()

    def _on_publish_open(self, gen: int, conn: Any) -> None:
        if gen != self._generation:
            return
        self._log.info("connected", role="publish", broker_version=broker_version(conn))
        conn.channel(on_open_callback=partial(self._on_publish_channel, gen))

    def _on_publish_channel(self, gen: int, channel: Any) -> None:
        if gen != self._generation:
            return
        self._pub_channel = channel
        self._pub_seq = 0
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(partial(self._on_channel_closed, gen, "publish"))
        channel.confirm_delivery(ack_nack_callback=self._on_confirm)
        self._consume_conn = pika.SelectConnection(
            self._params("consume"),
            on_open_callback=partial(self._on_consume_open, gen),
            on_open_error_callback=partial(self._on_open_error, gen),
            on_close_callback=partial(self._on_closed, gen, "consume"),
            custom_ioloop=self._ioloop,
        )

    def _on_consume_open(self, gen: int, conn: Any) -> None:
        if gen != self._generation:
            return
        for runner in self._runners:
            conn.channel(on_open_callback=partial(self._on_consume_channel, gen, runner))

    def _on_consume_channel(self, gen: int, runner: RouteRunner, channel: Any) -> None:
        if gen != self._generation:
            return
        channel.add_on_close_callback(partial(self._on_channel_closed, gen, f"consume {runner.name}"))
        self._channels[runner.name] = channel

        def start(_frame: Any) -> None:
            tag = channel.basic_consume(route_queue(runner.name), partial(self._on_message, gen, runner))
            self._consumer_tags[runner.name] = tag
            self._log.info(
                "consuming", route=runner.name, queue=route_queue(runner.name), prefetch=runner.route.spec.prefetch
            )
            if len(self._consumer_tags) == len(self._runners):
                self._reconnect_delay = 1.0
                self._ready.set()

        channel.basic_qos(prefetch_count=runner.route.spec.prefetch, callback=start)

    def _on_channel_closed(self, gen: int, role: str, _channel: Any, reason: Exception) -> None:
        if gen != self._generation or self._stopping:
            return
        self._log.warning("channel_closed", role=role, reason=repr(reason))
        self._connection_lost()

    def _on_closed(self, gen: int, role: str, _conn: Any, reason: Exception) -> None:
        if gen != self._generation:
            return
        if self._stopping:
            self._maybe_finish_stop()
            return
        self._log.warning("connection_lost", role=role, reason=repr(reason), retry_in_s=self._reconnect_delay)
        self._connection_lost()

    def _connection_lost(self) -> None:
        self._ready.clear()
        self._teardown()
        self._schedule_reconnect()

    def _teardown(self) -> None:
        """Forget the current generation: its deliveries go back to the broker, its outcomes are dropped."""
        self._generation += 1
        with self._take_lock:
            for waiting in self._waiting.values():  # never started: the broker redelivers them
                self._running -= len(waiting)
                waiting.clear()
        self._pending.clear()
        self._channels.clear()
        self._consumer_tags.clear()
        self._unacked = 0
        self._pub_channel = None
        for conn in (self._consume_conn, self._publish_conn):
            if conn is not None and conn.is_open:
                conn.close()
        self._consume_conn = self._publish_conn = None

    def _schedule_reconnect(self) -> None:
        if self._stopping:
            self._maybe_finish_stop()
            return
        delay = self._reconnect_delay
        self._reconnect_delay = min(self._reconnect_delay * 2, self._reconnect_max)
        self._ioloop.call_later(delay, self._connect)

    # -- messages ------------------------------------------------------------------------------------
    def _on_message(self, gen: int, runner: RouteRunner, channel: Any, method: Any, props: Any, body: bytes) -> None:
        if gen != self._generation:
            return
        self.stats[runner.name].received += 1
        if self.observer is not None:
            self._tell(self.observer.after_receive, runner.name, props.timestamp)
        rec = _InFlight(runner, gen, channel, method.delivery_tag)
        delivery = Delivery(body, props, method.exchange, method.routing_key, method.redelivered)
        self._running += 1
        self._unacked += 1
        self._waiting[runner.name].append((rec, delivery))
        if runner.name not in self._dispatch_due:
            # dispatch after pika has handed over every delivery of this read, so they can share a batch
            self._dispatch_due.add(runner.name)
            self._ioloop.call_later(0, partial(self._dispatch, runner))

    def _dispatch(self, runner: RouteRunner) -> None:
        """Start pipeline threads on waiting deliveries, up to the route's concurrency.

        A route whose operation waits on I/O (every real target) gets one delivery per thread at a time, so a
        claim never waits behind other sends in its batch and its lease (2 × the connector's total timeout +
        5 s) cannot run out before its own send starts; its threads overlap the waiting. A route that waits on
        nothing gets batches spread evenly over at most two threads, ``MAX_BATCH`` each at most: its claims
        and completions share a transaction per batch, and more threads would only contend for the GIL.

        A thread that finishes takes the next waiting delivery itself (:meth:`_pipeline`), so while
        deliveries wait, none goes through the I/O loop and the executor's queue to reach a thread (two
        thread wake-ups each, and a thread idle in between, issue 15); what arrives while every thread is
        busy waits here.
        """
        name = runner.name
        self._dispatch_due.discard(name)
        waiting = self._waiting[name]
        threads, most = self._threads(runner)
        free = threads - self._busy[name]
        while waiting and free > 0:
            with self._take_lock:  # arrivals are stamped in the queue's order, whichever thread takes them
                size = min(most, -(-len(waiting) // free))
                batch = [waiting.popleft() for _ in range(min(size, len(waiting)))]
                deliveries = runner.admit([d for _, d in batch]) if batch else []
            if not batch:
                break
            self._busy[name] += 1
            free -= 1
            work = partial(self._pipeline, runner, [r for r, _ in batch])
            self._executors[name].submit(work, deliveries)

    @staticmethod
    def _threads(runner: RouteRunner) -> tuple[int, int]:
        """The route's pipeline threads at most, and the deliveries one thread takes at a time."""
        if not runner.operation.waits_on_io:
            return min(runner.route.spec.concurrency, CPU_ONLY_THREADS), MAX_BATCH
        return runner.route.spec.concurrency, 1

    def _pipeline(self, runner: RouteRunner, recs: list[_InFlight], deliveries: list[Delivery]) -> None:
        """Runs in a pipeline thread: the route's chain of batches (:meth:`RouteRunner.handle_chain`).

        It takes the next waiting batch as each finishes and hands each batch's outcomes over in order. When
        nothing waits the thread is counted idle for the I/O loop (:meth:`_drain_processed`), which starts a
        thread again for what arrives after. Every batch taken is handed over exactly once, the
        last one as last, even if the chain broke (then as an exception: the broker redelivers).
        """
        most = self._threads(runner)[1]
        waiting = self._waiting[runner.name]
        taken: deque[list[_InFlight]] = deque([recs])

        def take_next() -> list[Delivery] | None:
            with self._take_lock:
                batch = [waiting.popleft() for _ in range(min(most, len(waiting)))]
                deliveries = runner.admit([d for _, d in batch]) if batch else []  # in the queue's order
            if not batch:
                return None
            taken.append([r for r, _ in batch])
            return deliveries

        def hand_over(outcomes: list[Outcome], last: bool) -> None:
            future: Future[list[Outcome]] = Future()
            future.set_result(outcomes)
            self._handoff(runner, taken.popleft(), future, last=last)

        try:
            runner.handle_chain(deliveries, take_next, hand_over)
        except BaseException as exc:  # handle_chain() never raises; if it did, the broker redelivers
            while taken:
                future: Future[list[Outcome]] = Future()
                future.set_exception(exc)
                self._handoff(runner, taken.popleft(), future, last=not taken)
            if not isinstance(exc, Exception):
                raise

    def _handoff(
        self, runner: RouteRunner, recs: list[_InFlight], future: Future[list[Outcome]], *, last: bool = True
    ) -> None:
        """Runs in a pipeline thread: pass the outcomes to the I/O loop, the only thread that may use pika.

        One wake-up of the I/O loop per group of completions, not one per batch: each wake-up is a pipe
        write, a poll and a callback (about 550 µs of CPU per message on a real route, issue 15). The
        outcome is queued first and the flag tested after, while the loop clears the flag before it drains
        the queue, so an outcome is either drained by a wake-up already coming or asks for its own.
        """
        self._processed.append((runner, recs, future))
        with self._wake_lock:
            if last:  # this thread takes nothing more: counted before the flag is tested, so it is drained too
                self._idle[runner.name] += 1
            if self._wake_due:
                return
            self._wake_due = True
        self._ioloop.add_callback_threadsafe(self._drain_processed)

    def _drain_processed(self) -> None:
        """On the I/O loop: hand every outcome queued since the last wake-up to :meth:`_on_processed`."""
        with self._wake_lock:
            self._wake_due = False
            idle, self._idle = self._idle, dict.fromkeys(self._idle, 0)
        while self._processed:
            self._on_processed(*self._processed.popleft())
        for runner in self._runners:
            if idle[runner.name]:
                self._busy[runner.name] -= idle[runner.name]
                if self._waiting[runner.name]:
                    self._dispatch(runner)

    def _on_processed(self, runner: RouteRunner, recs: list[_InFlight], future: Future[list[Outcome]]) -> None:
        self._running -= len(recs)
        exc = future.exception()
        outcomes: list[Outcome | None] = [None] * len(recs)
        if exc is None and len(result := future.result()) == len(recs):
            outcomes = list(result)
        else:  # handle_batch() never raises; if it did, let the broker redeliver
            self._log.error("pipeline_crashed", route=runner.name, error=repr(exc))
        for rec, outcome in zip(recs, outcomes, strict=True):
            if rec.generation != self._generation:
                continue  # its channel is gone: the broker redelivers it, and the store makes that cheap
            if outcome is None:
                self._settle(rec, requeue=True)
            else:
                self._publish_outcome(rec, outcome)
        if self._waiting[runner.name]:
            self._dispatch(runner)

    def _publish_outcome(self, rec: _InFlight, outcome: Outcome) -> None:
        rec.outcome = outcome
        stats = self.stats[rec.runner.name].outcomes
        stats[outcome.outcome] = stats.get(outcome.outcome, 0) + 1
        if not outcome.messages:
            self._settle(rec, requeue=False)
            return
        if self._pub_channel is None or not self._pub_channel.is_open:
            self._settle(rec, requeue=True)
            return
        rec.remaining = len(outcome.messages)
        for msg in outcome.messages:
            self._pub_seq += 1
            headers = dict(msg.properties.headers or {})
            headers[PUB_SEQ_HEADER] = self._pub_seq
            msg.properties.headers = headers
            self._pending[self._pub_seq] = rec
            self._pub_channel.basic_publish(msg.exchange, msg.routing_key, msg.body, msg.properties, mandatory=True)

    def _on_return(self, _channel: Any, method: Any, props: Any, _body: bytes) -> None:
        seq = (props.headers or {}).get(PUB_SEQ_HEADER)
        rec = self._pending.get(seq) if isinstance(seq, int) else None
        self._log.error(
            "publish_returned", exchange=method.exchange, routing_key=method.routing_key, reply_text=method.reply_text
        )
        if rec is not None:
            rec.failed = True

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:  # _pending is in publish order: the confirmed ones are a prefix of it
            tags = list(takewhile(lambda t: t <= method.delivery_tag, self._pending))
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            rec = self._pending.pop(tag, None)
            if rec is None:
                continue
            if not acked:
                rec.failed = True
            rec.remaining -= 1
            if rec.remaining == 0:
                if rec.outcome is not None and rec.outcome.crash_after_confirm:
                    kill("after_result_confirm")
                self._settle(rec, requeue=rec.failed)

    def _settle(self, rec: _InFlight, *, requeue: bool) -> None:
        if rec.generation != self._generation or not rec.channel.is_open:
            return
        self._unacked -= 1
        stats = self.stats[rec.runner.name]
        if requeue:
            rec.channel.basic_nack(rec.delivery_tag, requeue=True)
            stats.requeued += 1
        else:
            rec.channel.basic_ack(rec.delivery_tag)
            stats.acked += 1
            self._crash.crash("after_ack")

    # -- stopping ------------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._stop_requested.is_set() and not self._stopping:
            self._begin_stop()
        if self._stopping:
            self._maybe_finish_stop()
        if not self._ioloop_stopped:
            self._ioloop.call_later(0.2, self._tick)

    _ioloop_stopped = False

    def _begin_stop(self) -> None:
        self._stopping = True
        self._drain_deadline = time.monotonic() + self._drain_timeout
        self._log.info("stopping", in_flight=self._running, unconfirmed=len(self._pending))
        for name, tag in list(self._consumer_tags.items()):
            channel = self._channels.get(name)
            if channel is not None and channel.is_open:
                channel.basic_cancel(tag)

    def _maybe_finish_stop(self) -> None:
        drained = self._running == 0 and not self._pending
        if not drained and time.monotonic() < self._drain_deadline:
            return
        if not drained:
            self._log.warning("drain_timeout", in_flight=self._running, unconfirmed=len(self._pending))
        open_conns = [c for c in (self._consume_conn, self._publish_conn) if c is not None and not c.is_closed]
        for conn in open_conns:
            if not conn.is_closing:
                conn.close()
        if not open_conns and not self._ioloop_stopped:
            if self._running and time.monotonic() < self._drain_deadline:
                return
            self._ioloop_stopped = True
            self._ioloop.stop()
