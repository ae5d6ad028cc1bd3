# mypy: allow-untyped-defs, allow-incomplete-defs
"""The worker against a broker that goes away: a private RabbitMQ node this test starts on its own port.

docs/reliability.md R4: the broker's application is stopped for 20 s mid-run, then started; the worker's
consumers must be back within 30 s of the broker answering again, by themselves, with every event applied
exactly once. The 20 s outage is a ``chaos`` test (``make chaos``); ``make test`` runs the same scenario
with a 3 s outage. The shared broker at 5672 is never touched (docs/reliability.md section 2).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest
from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    ProcessWorker,
    declare_routes,
    depth,
    env_for,
    publish,
    received_events,
    wait_for,
    write_config,
)

from routes.pipeline import idempotency_key
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from chaos_broker import ChaosBroker

#: R4's budget: consumers back within this long after the broker answers again
CONSUMERS_BACK_WITHIN_S = 30.0
EVENTS = 1000
#: iGate answers each note this late; with the route's 16 threads the run lasts at least
#: EVENTS / 16 * 0.2 = 12.5 s, so it cannot finish between the first notes and the outage
SIM_LATENCY_S = 0.2


def _consumers(broker: ChaosBroker, queue: str) -> int:
    """The consumers the broker has registered on ``queue`` now (0 while the node does not answer).

    ``list_consumers`` asks the channels themselves; ``list_queues``' consumer count of a quorum queue comes
    from statistics emitted every few seconds and lags behind.
    """
    try:
        out = broker.ctl("list_consumers", "-q", "-p", "/", "queue_name", "consumer_tag", timeout=30)
    except Exception:  # the app is still starting: no answer yet is no consumer yet
        return 0
    return sum(1 for line in out.splitlines() if line.split("\t", 1)[0] == queue)


@pytest.mark.parametrize(
    "outage_s",
    [pytest.param(3.0, id="3s-outage"), pytest.param(20.0, id="20s-outage-R4", marks=pytest.mark.chaos)],
)
def test_broker_stopped_mid_run_the_worker_resumes_alone_and_loses_nothing(
    chaos_broker: ChaosBroker,
    sqlite_url,
    tmp_path,
    outage_s: float,
):
    """stop_app, hold it stopped, start_app ▶ consumers back within 30 s by themselves; every event once."""
    url = chaos_broker.amqp_url
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as sim:
        sim.set_faults(latency_s=SIM_LATENCY_S)
        cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
        events = received_events(EVENTS)
        declare_routes(url, cfg)
        publish(url, events)
        log = tmp_path / "worker.log"
        worker = ProcessWorker(env_for(url, sqlite_url, cfg), log, routes="bus-ack").start()
        try:
            wait_for(lambda: len(sim.effect_counts()) >= 100, timeout=60, what="100 notes before the outage")
            assert _consumers(chaos_broker, "route.bus-ack") >= 1, "the count below must see a live consumer"
            chaos_broker.stop_app()
            stopped_at = time.monotonic()
            during = len(sim.effect_counts())
            assert during < EVENTS, "the run finished before the outage: the test proved nothing"
            time.sleep(max(0.0, outage_s - (time.monotonic() - stopped_at)))
            assert not chaos_broker.amqp_ok(), "the broker answered during the outage: nothing was tested"
            held_s = time.monotonic() - stopped_at
            chaos_broker.start_app()
            answering_at = time.monotonic()
            wait_for(
                lambda: _consumers(chaos_broker, "route.bus-ack") >= 1,
                timeout=CONSUMERS_BACK_WITHIN_S,
                interval=0.5,
                what=f"the worker's consumer back within {CONSUMERS_BACK_WITHIN_S:.0f} s of the broker (R4)",
            )
            back_s = time.monotonic() - answering_at
            print(f"outage held {held_s:.1f} s; consumers back {back_s:.1f} s after the broker answered")
            wait_for(lambda: len(sim.effect_counts()) >= EVENTS, timeout=180, what="all notes after the restart")
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            assert any(x["event"] in {"connection_lost", "channel_closed", "broker_unreachable"} for x in lines), (
                "the worker never saw the outage"
            )
            assert sum(x["event"] == "consuming" for x in lines) >= 2, "the worker did not re-consume"
            assert worker.terminate() == 0
        finally:
            worker.stop()
        assert held_s >= outage_s
        counts = sim.effect_counts()
        assert set(counts) == {idempotency_key("bus-ack", e["event_id"]) for e in events}
        assert max(counts.values()) == 1, "duplicate effects after the broker restart"
        assert depth(url, "route.bus-ack") == 0
        assert depth(url, "dlq.bus-ack") == 0
