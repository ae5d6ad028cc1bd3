# mypy: allow-untyped-defs
"""The real worker process SIGKILLed at each crash point of the pipeline ▶ 0 lost, 0 duplicate effects.

``IGATE_CRASH_AT=<point>`` with ``IGATE_BUS_TESTING=1`` makes ``igate-bus run`` kill itself there (after
saying so in its log, which is how each test knows it died at the right place). Events go through the
``bus-ack`` route (a note per event at the iGate simulator, which does not deduplicate; the route emits
``igate.note_added`` so the result's confirm is a point too). Where a point is only reached by reconciling
(``after_lookup``), a third of the first sends are applied and their answer lost.

``make test``: one crash per point, then a worker without crash points finishes the run. ``make chaos``:
crashes at a rate over 300 events, the worker restarted after every one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pika
import pytest
import yaml
from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    ProcessWorker,
    cli,
    declare_routes,
    depth,
    drained,
    env_for,
    get_all,
    publish,
    received_events,
    wait_for,
    write_config,
)

from routes.idempotency import IdempotencyStore
from routes.pipeline import CRASH_POINTS, idempotency_key, result_event_id
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

ROUTE = "bus-ack"
QUEUES = ("route.bus-ack", "retry.bus-ack.300ms", "retry.bus-ack.600ms")
#: points reached only when a claim is reconciled: some first sends must be applied and their answer lost
NEEDS_AMBIGUITY = frozenset({"after_lookup"})


def _config(tmp_path: Path, endpoint: str, *, in_flight: int) -> Path:
    """busenv's config with a 1 s deadline (a dead worker's lease ends after 7 s), ``in_flight`` deliveries at
    once, and bus-ack emitting."""
    cfg: Path = write_config(
        tmp_path / "cfg",
        endpoint=endpoint,
        read="1s",
        total="1s",
        max_attempts=30,
        prefetch=in_flight,
        concurrency=in_flight,
    )
    routes = yaml.safe_load((cfg / "routes.yaml").read_text())
    for r in routes["routes"]:
        if r["name"] == ROUTE:
            r["emits"] = "igate.note_added"
    (cfg / "routes.yaml").write_text(yaml.safe_dump(routes))
    return cfg


def _purge(amqp_url: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, passive=True)
        ch.queue_purge(queue)
    except pika.exceptions.ChannelClosedByBroker:
        pass  # not declared yet
    finally:
        if conn.is_open:
            conn.close()


def _crashes(log: Path, point: str) -> int:
    lines = [json.loads(x) for x in log.read_text(errors="replace").splitlines() if x.startswith("{")]
    return sum(1 for x in lines if x.get("event") == "crash_point" and x.get("point") == point)


def _crash_until_done(env: dict[str, str], log: Path, finished: Callable[[], bool], restarts: int) -> int:
    """Run the crashing worker again and again until it dies no more or the run is done; returns its deaths."""
    kills = 0
    for _ in range(restarts):
        worker = ProcessWorker(env, log, routes=ROUTE).start()
        proc = worker.proc
        assert proc is not None
        try:
            wait_for(lambda: proc.poll() is not None or finished(), timeout=90, what="a crash or the end")  # noqa: B023
            died = proc.poll() is not None
        finally:
            worker.stop()
        if not died:
            break  # every note is in while it lived: a clean worker drains what is in flight
        assert proc.returncode == -9, f"the worker exited {proc.returncode}, not by its crash point"
        kills += 1
    return kills


def _run(amqp_url: str, tmp_path: Path, point: str, *, events: int, rate: float, restarts: int, in_flight: int) -> None:
    _purge(amqp_url, "unrouted")  # results of an earlier test in this vhost
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as sim:
        cfg = _config(tmp_path, sim.url, in_flight=in_flight)
        store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
        env = env_for(amqp_url, store_url, cfg, IGATE_BUS_OPS_PORT="0")
        crash_env = {**env, "IGATE_BUS_TESTING": "1", "IGATE_CRASH_AT": point, "IGATE_CRASH_RATE": str(rate)}
        if point in NEEDS_AMBIGUITY:
            sim.set_faults(apply_then_drop_rate=0.3, only_paths=["/pa/dossier/0"], only_methods=["POST"], seed=3)
        evs = received_events(events, prefix=f"CRASH-{point}")
        keys = {idempotency_key(ROUTE, str(e["event_id"])) for e in evs}
        log = tmp_path / "worker.log"
        declare_routes(amqp_url, cfg)
        publish(amqp_url, evs)

        def finished() -> bool:
            return len(sim.effect_counts()) == len(keys) and all(depth(amqp_url, q) == 0 for q in QUEUES)

        kills = _crash_until_done(crash_env, log, finished, restarts)
        assert kills >= 1, f"the worker never died at {point}: the test proved nothing"
        assert _crashes(log, point) == kills, f"a kill was not at {point}"
        sim.set_faults()
        worker = ProcessWorker(env, log, routes=ROUTE).start()  # no crash points: it finishes the run
        try:
            wait_for(finished, timeout=120, what="every note after the crashes")
            # every claim done, then nothing left to come back: a redelivery still waiting out a dead
            # worker's lease (a retry copy) is acked as a duplicate once it returns
            with IdempotencyStore(store_url) as store:
                wait_for(lambda: store.counts(ROUTE) == {"done": len(keys)}, timeout=60, what="every claim done")
            wait_for(lambda: drained(amqp_url, QUEUES, pause=0.7), timeout=60, what="the queues to stay empty")
            assert worker.terminate() == 0
        finally:
            worker.stop()
        assert all(depth(amqp_url, q) == 0 for q in QUEUES), "messages left after the drain"

        counts = sim.effect_counts()
        lost = keys - counts.keys()
        dupes = {k: n for k, n in counts.items() if n > 1}
        print(f"{point}: {events} events, {kills} SIGKILLs, {len(counts)} notes, {len(lost)} lost, {len(dupes)} dup")
        assert not lost, f"{len(lost)} events never applied"
        assert not dupes, f"{len(dupes)} duplicate notes: {list(dupes.items())[:5]}"
        assert counts.keys() == keys
        assert depth(amqp_url, "dlq.bus-ack") == 0, [p.headers for p, _ in get_all(amqp_url, "dlq.bus-ack")]
        # every event's result was emitted (a re-emit after a crash carries the same result id)
        results = {json.loads(body)["event_id"] for _, body in get_all(amqp_url, "unrouted")}
        assert results == {result_event_id(ROUTE, str(e["event_id"])) for e in evs}
        if point in NEEDS_AMBIGUITY:
            assert any(r["fault"] == "apply_then_drop" for r in sim.requests("/pa/")), "no ambiguous send"


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_a_worker_killed_at_the_crash_point_loses_and_duplicates_nothing(module_amqp_url, tmp_path, point):
    """SIGKILL at the point (once, one delivery in flight), then a clean worker ▶ each event once, its result out."""
    _run(module_amqp_url, tmp_path, point, events=30, rate=1.0, restarts=1, in_flight=1)


@pytest.mark.chaos
@pytest.mark.timeout(900)
@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_a_worker_killed_again_and_again_at_the_crash_point(module_amqp_url, tmp_path, point):
    """300 events, a crash at the point for 5 % of its passes, restarted every time ▶ 0 lost, 0 duplicates."""
    _run(module_amqp_url, tmp_path, point, events=300, rate=0.05, restarts=40, in_flight=16)


def test_crash_points_without_the_testing_switch_refuse_to_start(tmp_path):
    """IGATE_CRASH_AT without IGATE_BUS_TESTING=1 ▶ `igate-bus run` exits 2 with one line saying why."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    env = env_for("amqp://guest:guest@127.0.0.1:9/%2F", f"sqlite:///{tmp_path / 's.sqlite3'}", cfg)
    env.pop("IGATE_BUS_TESTING", None)
    env["IGATE_CRASH_AT"] = "after_send"
    run = cli("run", env=env)
    assert run.returncode == 2, run.stderr
    assert "IGATE_CRASH_AT is set (after_send) but IGATE_BUS_TESTING is not 1" in run.stderr
    assert "Traceback" not in run.stderr
