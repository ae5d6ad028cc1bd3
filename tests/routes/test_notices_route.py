"""The shipped ``bus-notices`` route takes the bus's notices to operators, so ``unrouted`` keeps only strays.

Real broker and store, the shipped config, a worker running that one route: a ``bus.superseded`` and a
``vnpost.pool_low`` published on ``bus.results`` (as the bus publishes them) are processed by the route, and
``unrouted`` gets nothing but an event nobody binds.
"""

from __future__ import annotations

import uuid
from typing import Any

from busenv import ROOT, depth, example, publish, thread_worker, wait_for

from routes.topology import UNROUTED_QUEUE

ROUTE = "bus-notices"


def _superseded() -> dict[str, Any]:
    skipped, newer = str(uuid.uuid4()), str(uuid.uuid4())
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "bus.superseded",
        "occurred_at": "2025-12-11T12:00:05+07:00",
        "source": "igate-bus/nps-dossier-step-changed",
        "correlation_id": str(uuid.uuid4()),
        "dossier_code": "000.00.16.H16-251211-0001",
        "schema_version": 1,
        "payload": {
            "route": "nps-dossier-step-changed",
            "target": "nps",
            "event_id": skipped,
            "event_type": "dossier.step_changed",
            "position": f"2025-12-11T04:00:00.000000Z/04/{skipped}",
            "applied": f"2025-12-11T05:00:00.000000Z/10/{newer}",
        },
    }


def test_the_bus_notices_are_taken_by_their_route_not_left_in_unrouted(amqp_url: str, sqlite_url: str) -> None:
    pool_low = {**example("vnpost.pool_low"), "event_id": str(uuid.uuid4())}
    stray = {**example("vnpost.pool_low"), "event_id": str(uuid.uuid4()), "event_type": "bus.nobody_binds_this"}
    with thread_worker(amqp_url, sqlite_url, ROOT / "config", routes=[ROUTE]) as tw:
        publish(amqp_url, [_superseded(), pool_low], exchange="bus.results")
        wait_for(lambda: tw.worker.stats[ROUTE].outcomes.get("delivered", 0) == 2, timeout=30, what="2 notices")
        publish(amqp_url, [stray], exchange="bus.results")  # guard: unrouted still keeps what nobody binds
        wait_for(lambda: depth(amqp_url, UNROUTED_QUEUE) == 1, timeout=30, what="the stray in unrouted")
        assert dict(tw.worker.stats[ROUTE].outcomes) == {"delivered": 2}
    assert depth(amqp_url, UNROUTED_QUEUE) == 1
