# mypy: allow-untyped-defs
"""The bus-ack route end to end: real broker, real store, real iGate simulator over HTTP, real worker.

Effects are counted at the simulator by the idempotency key the connector sent (clientRequestId). The
simulator does not deduplicate, so a count above 1 is a duplicate effect the bus caused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    ProcessWorker,
    declare_routes,
    depth,
    drained,
    env_for,
    publish,
    received_events,
    thread_worker,
    wait_for,
    write_config,
)
from wallclock import assert_within

from routes.idempotency import IN_PROGRESS
from routes.pipeline import idempotency_key
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator

ROUTE = "bus-ack"
QUEUES = ("route.bus-ack", "retry.bus-ack.300ms", "retry.bus-ack.600ms", "dlq.bus-ack")


@pytest.fixture
def sim() -> Iterator[IGateSimulator]:
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as s:
        yield s


def _keys(events: list[dict[str, object]]) -> set[str]:
    return {idempotency_key(ROUTE, str(e["event_id"])) for e in events}


def _assert_exactly_once(sim: IGateSimulator, events: list[dict[str, object]]) -> None:
    counts = sim.effect_counts()
    expected = _keys(events)
    lost = expected - counts.keys()
    dupes = {k: n for k, n in counts.items() if n > 1}
    assert not lost, f"{len(lost)} events never applied"
    assert not dupes, f"{len(dupes)} duplicate effects: {list(dupes.items())[:5]}"
    assert counts.keys() == expected


def _all_applied(sim: IGateSimulator, n: int) -> bool:
    return len(sim.effect_counts()) >= n


def _in_progress(engine: sa.Engine) -> int:
    """Claims in progress in the store now (read beside the worker: SQLite in WAL mode lets a reader in)."""
    with engine.connect() as conn:
        return int(
            conn.execute(sa.text("SELECT count(*) FROM claims WHERE state = :s"), {"s": IN_PROGRESS}).scalar_one()
        )


def _drained(amqp_url: str) -> bool:
    """No message waits in the route or its retry queues (twice, a second apart: one may be in flight)."""
    return drained(amqp_url, QUEUES[:3])


def _queues_empty(amqp_url: str) -> None:
    for q in QUEUES:
        assert depth(amqp_url, q) == 0, f"{q} is not empty"


def test_2000_events_are_each_applied_exactly_once(amqp_url, store_url, tmp_path, sim):
    """2,000 dossier.received ▶ 2,000 notes at iGate, one per key, on SQLite and PostgreSQL; queues empty."""
    cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
    events = received_events(2000)
    with thread_worker(amqp_url, store_url, cfg, routes=[ROUTE]):
        publish(amqp_url, events)
        wait_for(lambda: _all_applied(sim, 2000), timeout=120, what="2,000 notes")
    _assert_exactly_once(sim, events)
    _queues_empty(amqp_url)


def test_half_the_calls_failing_503_for_a_while_still_delivers_everything_once(amqp_url, sqlite_url, tmp_path, sim):
    """503 on half the calls for 4 s ▶ all delivered through the retry queues, attempts logged, no duplicates."""
    cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
    events = received_events(300)
    log = tmp_path / "worker.log"
    worker = ProcessWorker(env_for(amqp_url, sqlite_url, cfg), log, routes=ROUTE).start()
    try:
        worker.wait_consuming(1)
        sim.set_faults(error_rate=0.5, error_status=503, seed=7, only_paths=["/pa/dossier/"])
        publish(amqp_url, events)
        time.sleep(4)
        sim.set_faults()
        wait_for(lambda: _all_applied(sim, 300), timeout=60, what="300 notes after the 503 storm")
        wait_for(lambda: _drained(amqp_url), timeout=60, what="the queues to drain")
        assert worker.terminate() == 0
    finally:
        worker.stop()
    _assert_exactly_once(sim, events)
    _queues_empty(amqp_url)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    retries = [x for x in lines if x.get("outcome") == "retry"]
    assert retries, "no retry was logged"
    assert all(x["error_kind"] == "unavailable" and x["attempt"] >= 1 for x in retries)
    assert any(x.get("outcome") == "delivered" and x["attempt"] > 1 for x in lines), "no later attempt logged"
    answered_503 = [r for r in sim.requests("/pa/dossier/") if r.get("status") == 503]
    assert answered_503, "the simulator never answered 503: the test proved nothing"


def test_a_rejected_event_is_dead_lettered_at_once_and_a_replay_after_the_fix_applies_it_once(
    amqp_url, sqlite_url, tmp_path
):
    """404 for an unknown dossier ▶ DLQ within a second with the reason; fixed + `dlq replay` ▶ once, same id."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD, strict_dossiers=True) as sim:
        cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
        good, bad = received_events(3), received_events(1, prefix="X")[0]
        for e in good:
            sim.add_dossier(str(e["dossier_code"]))
        with thread_worker(amqp_url, sqlite_url, cfg, routes=[ROUTE]) as tw:
            publish(amqp_url, good)
            wait_for(lambda: _all_applied(sim, 3), timeout=10, what="good notes")
            t0 = time.monotonic()
            publish(amqp_url, [bad])
            wait_for(lambda: depth(amqp_url, "dlq.bus-ack") == 1, timeout=30, interval=0.05, what="dead letter")
            assert_within(time.monotonic() - t0, 1.0, "dead-lettering a 404 (no retry: stats below)")
            assert tw.worker.stats[ROUTE].outcomes.get("retry", 0) == 0, "a permanent rejection was retried"

            listed = subprocess.run(
                [sys.executable, "-m", "bus.cli", "dlq", "list", "--route", ROUTE, "--json"],
                env=env_for(amqp_url, sqlite_url, cfg),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            [row] = json.loads(listed.stdout)
            assert row["event_id"] == bad["event_id"]
            assert row["error_kind"] == "rejected"
            assert "404" in row["error"] and "not found" in row["error"]

            sim.add_dossier(str(bad["dossier_code"]))  # the fix
            replay = subprocess.run(
                [sys.executable, "-m", "bus.cli", "dlq", "replay", "--route", ROUTE, "--event-id", bad["event_id"]],
                env=env_for(amqp_url, sqlite_url, cfg),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert replay.returncode == 0, replay.stderr
            assert "replayed 1" in replay.stdout
            wait_for(lambda: _all_applied(sim, 4), timeout=10, what="replayed note")
        _assert_exactly_once(sim, [*good, bad])
        applied = [e for e in sim.effects() if e["client_request_id"] == idempotency_key(ROUTE, bad["event_id"])]
        assert len(applied) == 1
        assert depth(amqp_url, "dlq.bus-ack") == 0


def test_a_worker_sigkilled_mid_run_loses_nothing_and_duplicates_nothing(amqp_url, sqlite_url, tmp_path, sim):
    """SIGKILL during a 2,000-event run, then a restart ▶ 0 lost, 0 duplicate effects, queues empty."""
    cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
    events = received_events(2000)
    env = env_for(amqp_url, sqlite_url, cfg)
    log = tmp_path / "worker.log"
    sim.set_faults(latency_s=0.01)  # keep requests in flight when the kill lands
    declare_routes(amqp_url, cfg)
    publish(amqp_url, events)
    first = ProcessWorker(env, log, routes=ROUTE).start()
    try:
        # killed while the store holds claims in progress (sent or about to be), so the restart must reconcile
        # them: a kill in an instant with none (CI met one) would leave the reconcile path untested
        engine = sa.create_engine(sqlite_url)
        try:
            wait_for(
                lambda: len(sim.effect_counts()) >= 400 and _in_progress(engine) > 0,
                timeout=60,
                what="400 notes and a claim in progress before the kill",
            )
            first.kill9()
        finally:
            engine.dispose()
    finally:
        first.stop()
    applied_at_kill = len(sim.effect_counts())
    assert applied_at_kill < 2000, "the run finished before the kill: the test proved nothing"
    second = ProcessWorker(env, log, routes=ROUTE).start()
    try:
        second.wait_consuming(2)
        wait_for(lambda: _all_applied(sim, 2000), timeout=180, what="all 2,000 notes after restart")
        # redeliveries whose effect the killed worker applied wait out its lease, then reconcile by lookup
        wait_for(lambda: _drained(amqp_url), timeout=60, what="the queues to drain")
        assert second.terminate() == 0
    finally:
        second.stop()
    _assert_exactly_once(sim, events)
    _queues_empty(amqp_url)
    # the claims the killed worker held were reconciled by lookup, not sent blindly (issue 10, item 21)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    reconciled = [x for x in lines if x.get("event") == "reconciled"]
    lookups = sim.requests("/pa/dossier/--bus-request")
    print(f"killed at {applied_at_kill} notes; {len(reconciled)} reconciled by lookup ({len(lookups)} lookups)")
    assert reconciled, "no claim was reconciled after the kill: the reconcile-by-lookup path never ran"
    assert len(lookups) == len(reconciled), "each reconcile is one lookup at the simulator"
    found = {r["client_request_id"] for r in lookups if r["status"] == 200}
    posts = [r for r in sim.requests("/pa/dossier/") if r["method"] == "POST"]
    sent = Counter(r["client_request_id"] for r in posts)
    assert all(sent[k] == 1 for k in found), "an effect the lookup found was sent again"


def test_sigterm_drains_in_flight_work_and_exits_cleanly(amqp_url, sqlite_url, tmp_path, sim):
    """SIGTERM mid-run ▶ exit 0 after finishing in-flight work; the rest waits in the queue, nothing lost."""
    cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
    events = received_events(600)
    env = env_for(amqp_url, sqlite_url, cfg)
    log = tmp_path / "worker.log"
    sim.set_faults(latency_s=0.02)
    declare_routes(amqp_url, cfg)
    publish(amqp_url, events)
    worker = ProcessWorker(env, log, routes=ROUTE).start()
    try:
        wait_for(lambda: len(sim.effect_counts()) >= 100, timeout=60, what="100 notes")
        assert worker.terminate() == 0
    finally:
        worker.stop()
    done = len(sim.effect_counts())
    assert done < 600, "finished before SIGTERM: the test proved nothing"
    assert depth(amqp_url, "route.bus-ack") == 600 - done, "a delivery was acked without its effect, or lost"
    assert '"stopping"' in log.read_text() and '"worker_stopped"' in log.read_text()
    sim.set_faults()
    with thread_worker(amqp_url, sqlite_url, cfg, routes=[ROUTE]):
        wait_for(lambda: _all_applied(sim, 600), timeout=60, what="the rest after restart")
    _assert_exactly_once(sim, events)
