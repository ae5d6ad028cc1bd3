# mypy: allow-untyped-defs, allow-incomplete-defs
"""The worker against a broker that goes away: a private RabbitMQ node this test starts on its own port.

The shared broker at 5672 is never touched (docs/reliability.md section 2).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

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


def test_broker_stopped_and_started_mid_run_the_worker_resumes_alone_and_loses_nothing(
    chaos_broker: ChaosBroker,
    sqlite_url,
    tmp_path,
):
    """stop_app then start_app during a run ▶ the worker reconnects by itself; every event applied once."""
    url = chaos_broker.amqp_url
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as sim:
        sim.set_faults(latency_s=0.005)
        cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
        events = received_events(1000)
        declare_routes(url, cfg)
        publish(url, events)
        log = tmp_path / "worker.log"
        worker = ProcessWorker(env_for(url, sqlite_url, cfg), log, routes="bus-ack").start()
        try:
            wait_for(lambda: len(sim.effect_counts()) >= 200, timeout=60, what="200 notes before the outage")
            chaos_broker.stop_app()
            during = len(sim.effect_counts())
            assert during < 1000, "the run finished before the outage: the test proved nothing"
            chaos_broker.start_app()
            wait_for(lambda: len(sim.effect_counts()) >= 1000, timeout=120, what="all notes after the restart")
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            assert any(x["event"] in {"connection_lost", "channel_closed"} for x in lines), (
                "the worker never saw the outage"
            )
            assert sum(x["event"] == "consuming" for x in lines) >= 2, "the worker did not re-consume"
            assert worker.terminate() == 0
        finally:
            worker.stop()
        counts = sim.effect_counts()
        assert set(counts) == {idempotency_key("bus-ack", e["event_id"]) for e in events}
        assert max(counts.values()) == 1, "duplicate effects after the broker restart"
        assert depth(url, "route.bus-ack") == 0
        assert depth(url, "dlq.bus-ack") == 0
