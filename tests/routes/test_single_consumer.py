"""``single_consumer: true``: one consumer of a route's queue at a time, however many workers run.

Two real workers on the real broker share one route whose queue is a single-active-consumer queue: every
delivery goes to the one that registered first, none to the other; when that one stops, the other takes
the queue over and gets what comes next. This is what keeps ``vnpost-tracking-to-igate`` (and the land
system's routes) in their queue's order under ``igate-bus run --processes N``.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

from busenv import ping_events, publish, thread_worker, wait_for, write_config

if TYPE_CHECKING:
    from pathlib import Path

ROUTE = "bus-ping"


def _consumers(amqp_url: str, queue: str) -> int:
    """Consumers registered on the queue, by the management API (the single active one and the waiting)."""
    vhost = urllib.parse.urlsplit(amqp_url).path.lstrip("/")
    url = f"http://127.0.0.1:15672/api/queues/{vhost}/{urllib.parse.quote(queue, safe='')}"
    request = urllib.request.Request(url, headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})  # guest:guest
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - the local broker's API
        return int(json.loads(reply.read()).get("consumers", 0))


def test_one_worker_consumes_and_the_other_takes_over_when_it_stops(
    amqp_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9", concurrency=1)
    routes = cfg / "routes.yaml"
    text = routes.read_text()
    head, sep, ping = text.partition("  - name: bus-ping\n")
    routes.write_text(
        head + sep + ping.replace("    concurrency: 1\n", "    concurrency: 1\n    single_consumer: true\n")
    )
    assert "single_consumer: true" in routes.read_text()

    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    with second:
        a = first.enter_context(thread_worker(amqp_url, sqlite_url, cfg, routes=[ROUTE]))
        b = second.enter_context(thread_worker(amqp_url, sqlite_url, cfg, routes=[ROUTE]))
        # guard: both are consumers of the queue, so the broker could have split the deliveries
        wait_for(lambda: _consumers(amqp_url, f"route.{ROUTE}") == 2, timeout=30, what="two consumers")

        def delivered(tw: object) -> int:
            return int(tw.worker.stats[ROUTE].outcomes.get("delivered", 0))  # type: ignore[attr-defined]

        publish(amqp_url, ping_events(30))
        wait_for(lambda: delivered(a) + delivered(b) == 30, timeout=60, what="30 pings")
        counts = sorted([delivered(a), delivered(b)])
        assert counts == [0, 30], counts
        active, standby = (a, b) if delivered(a) else (b, a)
        # the active one stops; the other takes the queue over
        (first if active is a else second).close()
        publish(amqp_url, ping_events(10))
        wait_for(lambda: delivered(standby) == 10, timeout=60, what="the standby taking over")
    first.close()
