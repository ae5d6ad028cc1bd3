"""The private chaos broker can be killed, stopped and emptied of connections, and keeps confirmed messages.

Why: R1–R6 rest on two facts checked here: a quorum queue on the private node keeps every confirmed
persistent message across `kill -9`, and nothing done to the private node reaches the shared broker at
5672 (a connection opened to it before the test is still usable after).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import pika
import pika.exceptions
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chaos_broker import ChaosBroker
    from pika.adapters.blocking_connection import BlockingChannel

SHARED_HOST = os.environ.get("IGATE_BUS_TEST_AMQP_HOST", "127.0.0.1")
SHARED_PORT = int(os.environ.get("IGATE_BUS_TEST_AMQP_PORT", "5672"))
QUEUE = "chaos.quorum"


@pytest.fixture
def shared_connection() -> Iterator[pika.BlockingConnection]:
    """A connection to the shared broker held open for the whole test, to prove it was never restarted."""
    params = pika.ConnectionParameters(SHARED_HOST, SHARED_PORT, heartbeat=30, socket_timeout=3)
    try:
        conn = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"the shared RabbitMQ at {SHARED_HOST}:{SHARED_PORT} is not reachable: {exc!r}")
    try:
        yield conn
        conn.channel().close()  # a round trip on the original connection: the shared node never went away
        fresh = pika.BlockingConnection(params)  # and it still accepts new connections
        fresh.close()
    finally:
        if conn.is_open:
            conn.close()


def _connect(broker: ChaosBroker) -> pika.BlockingConnection:
    params = pika.URLParameters(broker.amqp_url)
    params.heartbeat = 10
    params.socket_timeout = 3
    params.blocked_connection_timeout = 10
    return pika.BlockingConnection(params)


def _declare(channel: BlockingChannel) -> None:
    channel.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})


def _publish_confirmed(channel: BlockingChannel, count: int) -> None:
    channel.confirm_delivery()
    for i in range(count):
        channel.basic_publish(
            exchange="",
            routing_key=QUEUE,
            body=str(i).encode(),
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, message_id=str(i)),
            mandatory=True,
        )  # raises NackError/UnroutableError unless the broker confirmed it


def _drain(broker: ChaosBroker, expected: int, timeout: float = 20.0) -> list[int]:
    """Read every message of the queue, retrying while the quorum queue recovers after a restart."""
    bodies: list[int] = []
    deadline = time.monotonic() + timeout
    while len(bodies) < expected and time.monotonic() < deadline:
        try:
            conn = _connect(broker)
        except pika.exceptions.AMQPConnectionError:
            time.sleep(0.2)
            continue
        try:
            channel = conn.channel()
            while (got := channel.basic_get(QUEUE, auto_ack=True))[0] is not None:
                bodies.append(int(got[2]))
        except pika.exceptions.AMQPError:
            pass  # e.g. the queue's Raft member is not elected yet: try again
        finally:
            if conn.is_open:
                conn.close()
        if len(bodies) < expected:
            time.sleep(0.2)
    return bodies


def test_quorum_queue_keeps_all_confirmed_messages_across_kill9(
    chaos_broker: ChaosBroker, shared_connection: pika.BlockingConnection
) -> None:
    """200 confirmed persistent messages in a quorum queue are all there after kill -9 and a restart."""
    conn = _connect(chaos_broker)
    try:
        channel = conn.channel()
        _declare(channel)
        # Ra saves the new queue's registration 500 ms after the declare (see ChaosBroker.kill9); real
        # queues are declared long before a crash. The messages themselves get no such grace.
        time.sleep(1.0)
        _publish_confirmed(channel, 200)
    finally:
        conn.close()

    killed = chaos_broker.kill9()  # at once after the last confirm
    assert chaos_broker.os_pid is None
    assert not chaos_broker.amqp_ok(timeout=1)
    restart_s = chaos_broker.restart_after_kill()
    assert chaos_broker.os_pid not in (None, killed)
    print(f"restart after kill -9: AMQP back in {restart_s:.2f} s")

    bodies = _drain(chaos_broker, 200)
    assert sorted(bodies) == list(range(200))


def test_close_all_connections_stop_app_start_app_pause_and_the_pid_guard(
    chaos_broker: ChaosBroker, shared_connection: pika.BlockingConnection
) -> None:
    """close_all_connections forces clients off (320); stop_app refuses AMQP; start_app brings messages back.

    Also: pause/resume (SIGSTOP/SIGCONT) make AMQP hang and come back, and a pid file that names another
    process is ignored, so no lever can signal it.
    """
    conn = _connect(chaos_broker)
    try:
        channel = conn.channel()
        _declare(channel)
        _publish_confirmed(channel, 10)
        chaos_broker.close_all_connections("chaos test")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:  # noqa: PT012
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        assert closed.value.reply_code == 320
    finally:
        if conn.is_open:
            conn.close()

    node_pid = chaos_broker.os_pid
    chaos_broker.stop_app()
    assert not chaos_broker.amqp_ok(timeout=1)
    assert chaos_broker.os_pid == node_pid  # the Erlang node itself keeps running
    start_app_s = chaos_broker.start_app()
    print(f"start_app: AMQP back in {start_app_s:.2f} s")
    assert sorted(_drain(chaos_broker, 10)) == list(range(10))

    chaos_broker.pause()  # SIGSTOP: TCP still accepts, AMQP never answers (R5)
    try:
        assert not chaos_broker.amqp_ok(timeout=1)
    finally:
        chaos_broker.resume()
    assert chaos_broker.amqp_ok()

    # The signal guard: a pid file naming another process (here pytest itself) is ignored and the node's
    # own beam is found instead, so kill9, pause and stop can never signal anything but this node.
    real = int(chaos_broker.pid_file.read_text(encoding="ascii"))
    try:
        chaos_broker.pid_file.write_text(str(os.getpid()), encoding="ascii")
        assert chaos_broker.os_pid == real
        chaos_broker.pid_file.unlink()  # early in boot there is no pid file yet
        assert chaos_broker.os_pid == real
    finally:
        chaos_broker.pid_file.write_text(str(real), encoding="ascii")
