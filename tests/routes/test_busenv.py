"""The route-test harness itself: a helper that cannot fail would let route tests pass while broken."""

from __future__ import annotations

import pika
import pytest
from busenv import NoSuchQueue, depth


def test_depth_of_a_missing_queue_fails_the_test(amqp_url: str) -> None:
    """A misspelt or undeclared queue is an error, not an empty queue ("every queue is empty" must mean it)."""
    with pytest.raises(NoSuchQueue, match=r"'route\.no-such-route' does not exist"):
        depth(amqp_url, "route.no-such-route")


def test_depth_counts_the_ready_messages(amqp_url: str) -> None:
    """An existing queue reports what it holds, 0 included."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.queue_declare("harness-probe", durable=True)
        assert depth(amqp_url, "harness-probe") == 0
        ch.confirm_delivery()
        for n in range(3):
            ch.basic_publish("", "harness-probe", str(n).encode(), pika.BasicProperties(delivery_mode=2))
        assert depth(amqp_url, "harness-probe") == 3
    finally:
        conn.close()
