# mypy: allow-untyped-defs
"""Per-dossier fifo order end to end: real broker, real store, the iGate simulator over HTTP, a real worker.

A route with ``order: {mode: fifo, target: igate}`` writes VNPost tracking updates onto their dossiers in
iGate. The simulator fails every call for a few dossiers until each of them has failed at least once (the
guard), so their first event goes to a retry queue while their later events are already in the route's
queue: without the order those would overtake it. The simulator's effects, read in arrival order per dossier,
must follow the order the route first saw the events (the store's numbering, which here is the publish order),
each applied exactly once, nothing lost, nothing dead-lettered.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    ProcessWorker,
    declare_routes,
    depth,
    drained,
    env_for,
    example,
    get_all,
    publish,
    thread_worker,
    wait_for,
)
from busenv import dossier_code as make_code
from structlog.testing import capture_logs

from routes.idempotency import IdempotencyStore
from routes.ordering import OrderStore
from routes.pipeline import RouteRunner, idempotency_key
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ROUTE = "tracking-to-igate"
BACKOFF = ("300ms", "600ms")
ROUTES_YAML = """\
routes:
  - name: tracking-to-igate
    from: {{exchange: bus.results, events: [vnpost.tracking_updated]}}
    adapter: results_to_igate.status_update
    to: igate.update_dossier
    order: {{mode: fifo, target: igate}}
    retry: {{backoff: [300ms, 600ms], max_attempts: {max_attempts}}}
    prefetch: 8
    concurrency: 4
"""
CONNECTORS_YAML = """\
connectors:
  igate:
    type: igate
    endpoint: {endpoint}
    timeout: {{connect: 1s, read: 3s, total: 5s}}
    breaker: {{fail_max: 1000, reset_timeout: 1s}}
    credentials: {{username: IGATE_BUS_IGATE_USERNAME, password: IGATE_BUS_IGATE_PASSWORD}}
    options: {{realm: digo, client_id: igate-bus}}
"""
MAX_ATTEMPTS = 20
QUEUES = (f"route.{ROUTE}", *(f"retry.{ROUTE}.{d}" for d in BACKOFF))


@pytest.fixture
def sim() -> Iterator[IGateSimulator]:
    """An iGate simulator on a free port."""
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as s:
        yield s


def _config(tmp_path: Path, sim: IGateSimulator, *, max_attempts: int) -> Path:
    """The fifo route and the iGate connector to ``sim``, in ``tmp_path/cfg``."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "routes.yaml").write_text(ROUTES_YAML.format(max_attempts=max_attempts))
    (cfg / "connectors.yaml").write_text(CONNECTORS_YAML.format(endpoint=sim.url))
    return cfg


def _tracking(code: str, k: int, base: datetime) -> dict[str, object]:
    """The ``k``-th tracking update of a dossier's parcel (times increase with k)."""
    ev = example("vnpost.tracking_updated")
    at = base + timedelta(minutes=10 * k)
    ev["event_id"] = str(uuid.uuid4())
    ev["dossier_code"] = code
    ev["occurred_at"] = (at + timedelta(seconds=5)).isoformat()
    payload = dict(ev["payload"])
    payload.update(order_number=code, status_code=k + 1, status_message=f"bước {k + 1}", at=at.isoformat())
    ev["payload"] = payload
    return ev


def test_fifo_keeps_each_dossiers_order_when_its_first_call_fails(amqp_url, sqlite_url, tmp_path, sim):
    """30 dossiers × 5 updates; the first call of 6 dossiers fails ▶ every update applied once, in order."""
    cfg = _config(tmp_path, sim, max_attempts=MAX_ATTEMPTS)
    run = uuid.uuid4().hex[:4].upper()
    codes = [make_code(i, run) for i in range(30)]
    failing = codes[::5]
    base = datetime.fromisoformat("2025-12-11T08:00:00+07:00")
    lives = {code: [_tracking(code, k, base) for k in range(5)] for code in codes}
    # round robin: update k of every dossier before update k+1 of any, so two updates of one dossier are never
    # in the route's prefetch window together and the order first seen is the publish order
    batch = [lives[code][k] for k in range(5) for code in codes]
    sim.set_faults(error_rate=1.0, error_status=503, only_paths=[f"/pa/dossier/{c}/" for c in failing])

    def failed_once() -> set[str]:
        return {c for c in failing if any(r["status"] == 503 for r in sim.requests(f"/pa/dossier/{c}/"))}

    with thread_worker(amqp_url, sqlite_url, cfg) as tw:
        publish(amqp_url, batch, exchange="bus.results")
        wait_for(lambda: failed_once() == set(failing), timeout=30, what="a failed call for each failing dossier")
        sim.set_faults()  # the guard held: every failing dossier's first call failed; let them through now
        want = {idempotency_key(ROUTE, str(e["event_id"])) for e in batch}
        wait_for(lambda: want <= sim.effect_counts().keys(), timeout=90, interval=0.5, what="150 updates")
        wait_for(lambda: drained(amqp_url, QUEUES, pause=0.5), timeout=30, what="the route's queues to drain")
        outcomes = dict(tw.worker.stats[ROUTE].outcomes)
    print(f"\n  outcomes {outcomes}")

    counts = sim.effect_counts()
    assert counts.keys() == want, "updates lost or applied under unknown keys"
    dupes = {k: n for k, n in counts.items() if n > 1}
    assert not dupes, f"{len(dupes)} updates applied twice"
    by_dossier: dict[str, list[str]] = defaultdict(list)
    for e in sim.effects():
        by_dossier[e["dossier_code"]].append(e["client_request_id"])
    store = IdempotencyStore(sqlite_url)
    try:
        orders = OrderStore.of(store)
        for code in codes:
            expected = [idempotency_key(ROUTE, str(e["event_id"])) for e in lives[code]]
            assert by_dossier[code] == expected, f"{code}: applied out of order"
            states = orders.fifo_states("igate", code)
            assert [eid for _, eid, _ in states] == [str(e["event_id"]) for e in lives[code]]
            assert Counter(s for _, _, s in states) == {"done": 5}
    finally:
        store.close()
    # guards: the failing dossiers' calls did fail, and their later updates waited (parked) rather than overtook
    failed = [r for c in failing for r in sim.requests(f"/pa/dossier/{c}/") if r["status"] == 503]
    assert len(failed) >= len(failing)
    parked = outcomes.get("retry", 0) - len(failed)  # retries that were not a failed call: waits for the order
    assert parked > 0, f"later updates never waited for their dossier's first one: {outcomes}, {len(failed)} failed"
    assert outcomes.get("dead_lettered", 0) == 0
    assert depth(amqp_url, f"dlq.{ROUTE}") == 0


def test_fifo_a_dead_lettered_update_releases_the_next_with_a_log_line(amqp_url, sqlite_url, tmp_path, sim):
    """iGate fails (503) every call of the first update of 2 of 6 dossiers ▶ it spends its 3 attempts and is
    dead-lettered, ``order_released`` is logged naming the next (which waited meanwhile), and the dossier's
    later updates are then applied, in order; nothing else lost.

    The simulator fails those two updates by their idempotency key, never their dossiers' later ones: the test
    used to fail each whole dossier until both first updates were dead-lettered, and on a loaded machine the
    next update of the dossier released first could spend its own 3 attempts meanwhile.
    """
    cfg = _config(tmp_path, sim, max_attempts=3)
    run = uuid.uuid4().hex[:4].upper()
    codes = [make_code(i, run) for i in range(6)]
    failing = codes[:2]
    base = datetime.fromisoformat("2025-12-11T08:00:00+07:00")
    lives = {code: [_tracking(code, k, base) for k in range(3)] for code in codes}
    batch = [lives[code][k] for k in range(3) for code in codes]
    firsts = {str(lives[c][0]["event_id"]) for c in failing}
    first_keys = {idempotency_key(ROUTE, eid) for eid in firsts}
    sim.set_faults(error_rate=1.0, error_status=503, only_keys=sorted(first_keys))
    dlq = f"dlq.{ROUTE}"
    with capture_logs() as logs, thread_worker(amqp_url, sqlite_url, cfg):
        publish(amqp_url, batch, exchange="bus.results")
        want = {idempotency_key(ROUTE, str(e["event_id"])) for e in batch if str(e["event_id"]) not in firsts}
        wait_for(lambda: want <= sim.effect_counts().keys(), timeout=60, interval=0.5, what="16 updates")
        wait_for(lambda: depth(amqp_url, dlq) >= 2, timeout=30, interval=0.2, what="2 dead-lettered updates")
        wait_for(lambda: drained(amqp_url, QUEUES, pause=0.5), timeout=30, what="the route's queues to drain")

    dead = [json.loads(body)["event_id"] for _, body in get_all(amqp_url, dlq)]
    assert sorted(dead) == sorted(firsts), "only the failing dossiers' first updates are dead-lettered"
    # guard: each first update was really tried 3 times and refused each time, nothing else was refused
    refused = Counter(r["client_request_id"] for r in sim.requests() if r["status"] == 503)
    assert refused == dict.fromkeys(first_keys, 3), refused
    assert sim.effect_counts().keys() == want
    assert all(n == 1 for n in sim.effect_counts().values())
    by_dossier: dict[str, list[str]] = defaultdict(list)
    for e in sim.effects():
        by_dossier[e["dossier_code"]].append(e["client_request_id"])
    for code in codes:
        updates = lives[code][1:] if code in failing else lives[code]
        assert by_dossier[code] == [idempotency_key(ROUTE, str(e["event_id"])) for e in updates], code
    released = [e for e in logs if e["event"] == "order_released"]
    assert sorted(e["event_id"] for e in released) == sorted(firsts), released
    for e in released:  # the next update had been seen and was waiting: the release names it
        assert e["next_event_id"] == str(lives[e["dossier_code"]][1]["event_id"]), e
        assert e["target"] == "igate"


def test_fifo_numbers_updates_in_the_order_received_when_a_thread_stalls(
    amqp_url, sqlite_url, tmp_path, sim, monkeypatch
):
    """The thread that took a dossier's first update stalls 1 s before its order step (a loaded machine) while
    another thread takes the dossier's second update from the same prefetch window ▶ that one waits for the
    first to take its number: iGate gets each dossier's updates in the order published, each once.

    This is what made the dead-letter test above fail under load: the second update was numbered first, so it
    was the one dead-lettered, and the first was sent after the third.
    """
    cfg = _config(tmp_path, sim, max_attempts=3)
    run = uuid.uuid4().hex[:4].upper()
    codes = [make_code(i, run) for i in range(3)]
    base = datetime.fromisoformat("2025-12-11T08:00:00+07:00")
    lives = {code: [_tracking(code, k, base) for k in range(3)] for code in codes}
    # 9 messages, prefetch 8, 4 threads: the second update of codes[0] (4th message) goes to a thread while
    # the first one's thread stalls
    batch = [lives[code][k] for k in range(3) for code in codes]
    stalled = {str(lives[codes[0]][0]["event_id"])}
    validate = RouteRunner._validate

    def slow_validate(self: RouteRunner, job: Any) -> None:
        validate(self, job)
        if job.event_id in stalled:
            stalled.discard(job.event_id)
            time.sleep(1.0)

    monkeypatch.setattr(RouteRunner, "_validate", slow_validate)
    with thread_worker(amqp_url, sqlite_url, cfg):
        publish(amqp_url, batch, exchange="bus.results")
        want = {idempotency_key(ROUTE, str(e["event_id"])) for e in batch}
        wait_for(lambda: want <= sim.effect_counts().keys(), timeout=30, interval=0.2, what="9 updates")
        wait_for(lambda: drained(amqp_url, QUEUES, pause=0.5), timeout=30, what="the route's queues to drain")

    assert not stalled, "the stall never happened"
    assert all(n == 1 for n in sim.effect_counts().values())
    by_dossier: dict[str, list[str]] = defaultdict(list)
    for e in sim.effects():
        by_dossier[e["dossier_code"]].append(e["client_request_id"])
    store = IdempotencyStore(sqlite_url)
    try:
        orders = OrderStore.of(store)
        for code in codes:
            ids = [str(e["event_id"]) for e in lives[code]]
            assert by_dossier[code] == [idempotency_key(ROUTE, eid) for eid in ids], f"{code}: out of order"
            assert [eid for _, eid, _ in orders.fifo_states("igate", code)] == ids, f"{code}: numbered out of order"
    finally:
        store.close()
    assert depth(amqp_url, f"dlq.{ROUTE}") == 0


def test_fifo_a_worker_killed_after_sending_a_dossiers_first_update_holds_the_rest_only_until_it_is_back(
    amqp_url, sqlite_url, tmp_path, sim
):
    """The worker process is SIGKILLed right after its first send (the head of a dossier, applied, never
    recorded) ▶ a clean worker reconciles that update by lookup (no second effect) and the dossiers' later
    updates then go, in order, each once, within the dead worker's claim lease and a few parks."""
    cfg = _config(tmp_path, sim, max_attempts=MAX_ATTEMPTS)
    run = uuid.uuid4().hex[:4].upper()
    codes = [make_code(i, run) for i in range(2)]
    base = datetime.fromisoformat("2025-12-11T08:00:00+07:00")
    lives = {code: [_tracking(code, k, base) for k in range(3)] for code in codes}
    batch = [lives[code][k] for k in range(3) for code in codes]
    want = {idempotency_key(ROUTE, str(e["event_id"])) for e in batch}
    env = env_for(amqp_url, sqlite_url, cfg, IGATE_BUS_OPS_PORT="0")
    log = tmp_path / "worker.log"
    declare_routes(amqp_url, cfg)
    publish(amqp_url, batch, exchange="bus.results")
    crashing = ProcessWorker({**env, "IGATE_BUS_TESTING": "1", "IGATE_CRASH_AT": "after_send"}, log, routes=ROUTE)
    crashing.start()
    proc = crashing.proc
    assert proc is not None
    try:
        wait_for(lambda: proc.poll() is not None, timeout=60, what="the worker to die after its first send")
    finally:
        crashing.stop()
    assert proc.returncode == -9, f"the worker exited {proc.returncode}, not by its crash point"
    applied = sim.effects()  # the crash is right after a send (two threads may each have sent a dossier's head)
    assert applied, "the worker died before anything was applied: the test proved nothing"
    assert {e["client_request_id"] for e in applied} <= {
        idempotency_key(ROUTE, str(lives[c][0]["event_id"])) for c in codes
    }, "a later update was sent before its dossier's first"
    started = time.monotonic()
    worker = ProcessWorker(env, log, routes=ROUTE).start()
    try:
        wait_for(lambda: want <= sim.effect_counts().keys(), timeout=90, interval=0.5, what="6 updates")
        took = time.monotonic() - started
        wait_for(lambda: drained(amqp_url, QUEUES, pause=0.5), timeout=30, what="the route's queues to drain")
        assert worker.terminate() == 0
    finally:
        worker.stop()
    print(f"\n  the rest applied {took:.1f} s after the clean worker started")
    assert all(n == 1 for n in sim.effect_counts().values()), sim.effect_counts()
    by_dossier: dict[str, list[str]] = defaultdict(list)
    for e in sim.effects():
        by_dossier[e["dossier_code"]].append(e["client_request_id"])
    for code in codes:
        assert by_dossier[code] == [idempotency_key(ROUTE, str(e["event_id"])) for e in lives[code]], code
    assert depth(amqp_url, f"dlq.{ROUTE}") == 0
