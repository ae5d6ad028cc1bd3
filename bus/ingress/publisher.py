"""Confirmed publishing for the HTTP ingress: a few publisher threads, each owning its own connection.

Where it sits: the last step of the ingress (signed request → validated envelope → **confirmed publish** on
``igate.events`` or ``bus.results`` → ``202``), behind ``bus/ingress/publish.py``. An HTTP request is
answered ``202`` only after the broker confirmed its message, so each request hands its message to this pool
and waits, with a deadline, for its own :class:`concurrent.futures.Future`.

Why threads and a queue: pika is not thread-safe (docs/reliability.md section 5: one connection per thread), and
a ``BlockingConnection`` waits for each confirm. So each of ``size`` threads owns one connection and one
confirming channel, takes messages from a shared bounded queue and publishes them one at a time with
``mandatory=True``; requests never touch pika. While idle, each thread keeps its connection's heartbeats
and ``connection.blocked`` notices flowing (``process_data_events``), because a BlockingConnection only does
I/O when called.

Failure behaviour, each answered by the ingress with ``503`` and ``Retry-After``:

- broker unreachable: the thread fails its message at once and does not try to connect again for
  ``reconnect_delay_s``, failing messages fast meanwhile (nothing is sent, nothing stored);
- connection lost while publishing: the message's fate is unknown (it may be stored); the caller is told
  it failed, so a retry may store it twice, which the workers' idempotency absorbs (at-least-once);
- broker blocked (memory or disk alarm): :attr:`PublisherPool.blocked` turns true on the broker's
  ``connection.blocked``; the ingress then refuses new messages at once instead of queueing them behind a
  publish that cannot finish. A publish already written waits until the broker unblocks (it is then
  confirmed late) or ``blocked_connection_timeout`` closes the connection (it is then lost, never stored);
- a message whose request gave up (its future was cancelled) before a thread took it is never published.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

import pika
import structlog
from pika.exceptions import AMQPError, NackError, UnroutableError

from routes.amqp import event_properties, parameters
from routes.topology import declare_exchanges

log = structlog.get_logger("igate_bus.ingress")

#: how often an idle publisher thread services its connection (heartbeats, blocked notices), in seconds
IDLE_TICK_S: Final = 0.25
#: how long :meth:`PublisherPool.close` waits for each thread
CLOSE_TIMEOUT_S: Final = 5.0


class PublishError(Exception):
    """The message was not confirmed; ``code`` names why (what the ingress answers 503 with).

    Codes: ``broker_unavailable`` (cannot connect, or the connection failed mid-publish), ``broker_blocked``
    (memory or disk alarm), ``broker_refused`` (nacked or unroutable), ``ingress_busy`` (the queue is full),
    ``shutting_down``.

    Args:
        code: the machine-readable reason.
        detail: the reason in words.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message to publish with the bus's standard properties.

    Attributes:
        body: the exact bytes to store.
        exchange: ``igate.events`` or ``bus.results``.
        event_id: the envelope's id (AMQP ``message_id``).
        event_type: the envelope's type (routing key and AMQP ``type``).
        correlation_id: the envelope's correlation id, if any.
    """

    body: bytes
    exchange: str
    event_id: str
    event_type: str
    correlation_id: str | None = None


_STOP: Final = object()


class _PublisherThread(threading.Thread):
    """One thread, one connection, one confirming channel; never shared."""

    def __init__(self, pool: PublisherPool, index: int) -> None:
        super().__init__(name=f"igate-bus-ingress-publisher-{index}", daemon=True)
        self._pool = pool
        self._connection: Any = None
        self._channel: Any = None
        self._retry_at = 0.0
        self._last_error = ""
        self.blocked = False

    @property
    def connected(self) -> bool:
        """Whether this thread holds an open connection now (read from other threads, for a gauge)."""
        connection = self._connection
        return connection is not None and bool(connection.is_open)

    # -- loop --------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Connect early (so the first request is fast), then publish until told to stop."""
        with contextlib.suppress(PublishError):
            self._open_channel()
        try:
            while True:
                try:
                    item = self._pool.queue.get(timeout=IDLE_TICK_S)
                except queue.Empty:
                    self._service()
                    continue
                if item is _STOP:
                    return
                self._handle(item)
        finally:
            self._drop()

    def _handle(self, item: tuple[Outbound, Future[None]]) -> None:
        message, future = item
        if not future.set_running_or_notify_cancel():
            return  # the request gave up before we got to it: never published
        try:
            self._publish(message)
        except PublishError as exc:
            future.set_exception(exc)
        except Exception as exc:  # a publisher thread must outlive any single message
            self._drop()
            future.set_exception(PublishError("broker_unavailable", f"publish failed: {type(exc).__name__}"))
        else:
            future.set_result(None)

    def _service(self) -> None:
        """Let an idle connection send heartbeats and receive ``connection.blocked``/``unblocked``."""
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(time_limit=0)
        except AMQPError as exc:
            self._fail_connection(exc)

    # -- publishing ---------------------------------------------------------------------------------------
    def _publish(self, message: Outbound) -> None:
        if self.blocked:
            raise PublishError("broker_blocked", "the broker is blocking publishers (memory or disk alarm)")
        channel = self._open_channel()
        props = event_properties(
            event_id=message.event_id, event_type=message.event_type, correlation_id=message.correlation_id
        )
        try:
            channel.basic_publish(message.exchange, message.event_type, message.body, props, mandatory=True)
        except UnroutableError:
            raise PublishError(
                "broker_refused", f"unroutable: exchange {message.exchange!r} has no queue for the message"
            ) from None
        except NackError:
            raise PublishError("broker_refused", "the broker refused (nacked) the message") from None
        except (AMQPError, OSError) as exc:
            self._fail_connection(exc)
            raise PublishError(
                "broker_unavailable", f"the broker connection failed while publishing ({type(exc).__name__})"
            ) from None

    def _open_channel(self) -> Any:
        if self._channel is not None and self._channel.is_open and self._connection.is_open:
            return self._channel
        self._drop()
        now = time.monotonic()
        if now < self._retry_at:
            raise PublishError(
                "broker_unavailable",
                f"the broker is unreachable ({self._last_error}); next attempt in {self._retry_at - now:.1f} s",
            )
        try:
            connection = pika.BlockingConnection(self._pool.params)
        except (AMQPError, OSError) as exc:
            self._fail_connection(exc)
            raise PublishError("broker_unavailable", f"the broker is unreachable ({self._last_error})") from None
        try:
            # On the underlying connection, not the BlockingConnection: the blocking wrapper queues these
            # notices until the next process_data_events, and a publish waiting for its confirm on a
            # blocked connection never gets there. The impl runs them as the frame arrives, on this thread.
            connection._impl.add_on_connection_blocked_callback(self._on_blocked)  # noqa: SLF001
            connection._impl.add_on_connection_unblocked_callback(self._on_unblocked)  # noqa: SLF001
            channel = connection.channel()
            channel.confirm_delivery()
            if self._pool.declare:
                declare_exchanges(channel)
        except (AMQPError, OSError) as exc:
            with contextlib.suppress(AMQPError, OSError):
                connection.close()
            self._fail_connection(exc)
            raise PublishError("broker_unavailable", f"the broker refused the channel ({self._last_error})") from None
        self._connection, self._channel = connection, channel
        self.blocked = False
        self._last_error = ""
        log.info("ingress_publisher_connected", thread=self.name)
        return channel

    def _on_blocked(self, _connection: Any, _frame: Any) -> None:
        self.blocked = True
        log.warning("ingress_broker_blocked", thread=self.name)

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self.blocked = False
        log.info("ingress_broker_unblocked", thread=self.name)

    def _fail_connection(self, exc: BaseException) -> None:
        first = not self._last_error
        self._last_error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        self._last_error = self._last_error[:200]
        self._retry_at = time.monotonic() + self._pool.reconnect_delay_s
        self._drop()
        if first:
            log.warning("ingress_broker_unreachable", thread=self.name, error=self._last_error)

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self.blocked = False
        if connection is not None and connection.is_open:
            with contextlib.suppress(AMQPError, OSError):
                connection.close()


class PublisherPool:
    """``size`` publisher threads fed by one bounded queue; :meth:`submit` returns the message's future.

    Args:
        amqp_url: the broker.
        size: threads, hence connections. Defaults to 4.
        heartbeat: AMQP heartbeat in seconds.
        blocked_connection_timeout: seconds a blocked connection may stay blocked before pika closes it.
        connect_timeout: socket timeout when connecting.
        queue_size: messages waiting for a thread before :meth:`submit` refuses more. Defaults to 1,000.
        reconnect_delay_s: after a failed connection, seconds before a thread tries again. Defaults to 0.5.
        declare: declare the exchanges on connect (turn off where the ingress user may only write).
        name: the connections' name in the broker's connection list.
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        size: int = 4,
        heartbeat: int = 15,
        blocked_connection_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        queue_size: int = 1000,
        reconnect_delay_s: float = 0.5,
        declare: bool = True,
        name: str = "igate-bus ingress",
    ) -> None:
        if size < 1:
            raise ValueError("a publisher pool needs at least one thread")
        self.params = parameters(
            amqp_url,
            name=name,
            heartbeat=heartbeat,
            blocked_connection_timeout=blocked_connection_timeout,
            socket_timeout=connect_timeout,
        )
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.reconnect_delay_s = reconnect_delay_s
        self.declare = declare
        self._threads = [_PublisherThread(self, i) for i in range(size)]
        self._closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the threads (each connects at once, in the background)."""
        for thread in self._threads:
            thread.start()

    @property
    def blocked(self) -> bool:
        """True while the broker has told one of the connections it blocks publishers."""
        return any(t.blocked for t in self._threads)

    @property
    def waiting(self) -> int:
        """Messages waiting for a publisher thread (approximate, for a gauge)."""
        return self.queue.qsize()

    @property
    def connected(self) -> int:
        """Publisher threads holding an open connection (for a gauge)."""
        return sum(1 for t in self._threads if t.connected)

    def submit(self, message: Outbound) -> Future[None]:
        """Queue ``message``; the future completes when the broker confirmed it, or fails with the reason.

        Cancel the future to give up: a message no thread has taken yet is then never published.

        Args:
            message: what to publish.

        Returns:
            The message's future.

        Raises:
            PublishError: at once when the pool is closed, the broker is blocking, or the queue is full.
        """
        if self._closed:
            raise PublishError("shutting_down", "the ingress is shutting down")
        if self.blocked:
            raise PublishError("broker_blocked", "the broker is blocking publishers (memory or disk alarm)")
        future: Future[None] = Future()
        try:
            self.queue.put_nowait((message, future))
        except queue.Full:
            raise PublishError("ingress_busy", f"{self.queue.maxsize} messages are already waiting") from None
        return future

    def close(self) -> None:
        """Stop the threads after the messages they hold; fail whatever is still queued. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self.queue.put(_STOP, timeout=1.0)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(CLOSE_TIMEOUT_S)
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP and item[1].set_running_or_notify_cancel():
                item[1].set_exception(PublishError("shutting_down", "the ingress is shutting down"))
