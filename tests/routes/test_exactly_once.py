# mypy: allow-untyped-defs
"""Issue 8: exactly once when the targets are flaky, their lookups fail, they answer garbage, the worker dies.

Everything real: the broker (a vhost), the store, the iGate REST simulator and the portal SOAP simulator on
real sockets, the worker as a real process where it is killed. The simulators do not deduplicate: an effect
counted twice under one idempotency key is a duplicate the bus caused. Each test has guards that fail it when
the fault it is about never happened.

``make test`` runs a small version of each; ``make chaos`` the long ones (2,000 events, a full minute down).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pika
import pytest
import yaml
from busenv import (
    ROOT,
    SIM_PASSWORD,
    SIM_USER,
    ProcessWorker,
    declare_routes,
    depth,
    env_for,
    get_all,
    publish,
    received_events,
    thread_worker,
    wait_for,
    write_config,
)
from test_nps_routes import (
    LIFE,
    NPS_PASSWORD,
    NPS_USER,
    PASSWORD_ENV,
    ROUTES_OF,
    USER_ENV,
    dossier_code,
    life,
    write_nps_config,
)

from routes.dlq import DeadLetter, DeadLetters
from routes.pipeline import idempotency_key, result_event_id
from simulators.igate import LOOKUP_PATH, IGateSimulator
from simulators.nps import NpsSimulator

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

ROUTE = "bus-ack"
NOTE_PATH = "/pa/dossier/"
EFFECT_SERVICES = ["DongBoHoSoMC", "CapNhatTienDoHoSoMC", "DongBoDanhGia"]


# -- reading the iGate simulator ------------------------------------------------------------------------------
def _by_key(sim: IGateSimulator) -> dict[str, list[dict[str, Any]]]:
    """Every note POST and lookup GET the simulator received, per idempotency key, in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sim.requests(NOTE_PATH):
        key = r.get("client_request_id")
        if key and (r["method"] == "POST" or r["path"] == LOOKUP_PATH):
            out.setdefault(str(key), []).append(r)
    return out


def _assert_sent_again_only_after_not_there(requests: list[dict[str, Any]], key: str) -> int:
    """After a send that may have applied, the next send only follows a lookup that answered 404; returns sends."""
    sends = 0
    cleared = True
    for r in requests:
        if r["method"] == "POST":
            assert cleared, f"{key}: sent again with no lookup answering 'not there' since the last send"
            sends += 1
            cleared = False
        elif r["status"] == 404:
            cleared = True
        elif r["status"] == 200:
            cleared = False  # found: nothing may be sent
    return sends


# -- the claim stuck in "maybe applied" while the target is down -------------------------------------------------
def _stuck_while_down(amqp_url: str, store_url: str, tmp_path: Path, *, events: int, down_s: float) -> None:
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as sim:
        cfg = write_config(tmp_path / "cfg", endpoint=sim.url, backoff="1s", max_attempts=100, fail_max=1000)
        evs = received_events(events, prefix="STUCK")
        keys = {idempotency_key(ROUTE, str(e["event_id"])) for e in evs}
        # every first send is lost after it left: about half applied (the ambiguous outcome), half not; and
        # every lookup fails, so no claim can be cleared
        sim.set_faults(
            drop_connection=0.5,
            apply_then_drop_rate=1.0,
            only_paths=[NOTE_PATH],
            only_methods=["POST"],
            lookup_fail_rate=1.0,
            seed=8,
        )
        with thread_worker(amqp_url, store_url, cfg, routes=[ROUTE]):
            publish(amqp_url, evs)

            def all_sent_and_asked() -> bool:
                seen = _by_key(sim)
                return all(
                    any(r["method"] == "POST" for r in seen.get(k, []))
                    and any(r["path"] == LOOKUP_PATH for r in seen.get(k, []))
                    for k in keys
                )

            wait_for(all_sent_and_asked, timeout=60, what="a first send and a failed lookup for every event")
            # the target goes down whole: every call answers 503 for down_s
            sim.set_faults(error_rate=1.0, error_status=503, only_paths=["/pa/"])
            down_from = time.time()
            time.sleep(down_s)
            down_until = time.time()
            sim.set_faults()
            wait_for(lambda: len(sim.effect_counts()) == len(keys), timeout=60, what="every note")
            wait_for(
                lambda: all(depth(amqp_url, q) == 0 for q in ("route.bus-ack", "retry.bus-ack.1s")),
                timeout=30,
                what="the queues to drain",
            )

        seen = _by_key(sim)
        in_window = [r for rs in seen.values() for r in rs if down_from <= r["at"] < down_until]
        posts_down = [r for r in in_window if r["method"] == "POST"]
        lookups_down = [r for r in in_window if r["path"] == LOOKUP_PATH]
        print(f"{events} events, down {down_s:g} s: {len(lookups_down)} lookups and {len(posts_down)} sends meanwhile")
        assert not posts_down, f"{len(posts_down)} sends while the claims were maybe applied and the target down"
        assert lookups_down, "no lookup was tried while the target was down: the test proved nothing"
        sends = {k: _assert_sent_again_only_after_not_there(seen[k], k) for k in keys}
        applied_first = {k for k, n in sends.items() if n == 1}
        dropped_first = {k for k, n in sends.items() if n == 2}
        assert applied_first | dropped_first == keys, f"unexpected send counts: {Counter(sends.values())}"
        assert applied_first, "no first send was applied and lost: the ambiguous outcome never happened"
        assert dropped_first, "no first send was lost unapplied: 'not there' never cleared a claim"
        assert sim.effect_counts() == dict.fromkeys(keys, 1), "lost or duplicate notes"
        assert depth(amqp_url, "dlq.bus-ack") == 0


def test_a_claim_stuck_maybe_applied_sends_nothing_while_the_target_is_down(amqp_url, sqlite_url, tmp_path):
    """First sends lost, lookups failing, then the target down 8 s ▶ 0 sends until a lookup answers; each once."""
    _stuck_while_down(amqp_url, sqlite_url, tmp_path, events=20, down_s=8)


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_a_claim_stuck_maybe_applied_sends_nothing_while_the_target_is_down_a_minute(amqp_url, pg_url, tmp_path):
    """The same with 60 events and the target down a full minute, on PostgreSQL."""
    _stuck_while_down(amqp_url, pg_url, tmp_path, events=60, down_s=60)


# -- replies the connector refuses ---------------------------------------------------------------------------------
def test_a_target_answering_garbage_is_dead_lettered_after_3_replies_and_shows_degraded(amqp_url, sqlite_url, tmp_path):
    """REST: a 200 that is not JSON ×3 ▶ DLQ kind garbled at once, claim maybe applied, degraded; replay ▶ once."""
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as sim:
        cfg = write_config(tmp_path / "cfg", endpoint=sim.url, backoff="300ms", max_attempts=50)
        [event] = received_events(1, prefix="GARBLED")
        key = idempotency_key(ROUTE, str(event["event_id"]))
        # the note applies and its answer is broken, and so is every lookup's (the health probe's search is not)
        sim.set_faults(malformed_body=1.0, only_paths=[f"{NOTE_PATH}{event['dossier_code']}/", LOOKUP_PATH])
        with thread_worker(amqp_url, sqlite_url, cfg, routes=[ROUTE]) as tw:
            publish(amqp_url, [event])
            wait_for(lambda: depth(amqp_url, "dlq.bus-ack") == 1, timeout=20, what="the dead letter")
            assert tw.worker.stats[ROUTE].outcomes == {"retry": 2, "dead_lettered": 1}
            record = tw.app.store.get(ROUTE, event["event_id"])
            assert record is not None
            assert (record.state, record.maybe_applied) == ("in_progress", True)
            health = tw.app.ops.monitor.snapshot()["igate"]
            assert health.state == "degraded", health
            assert "garbage" in health.detail
        [letter] = _dead_letters(amqp_url, ROUTE)
        assert letter.error_kind == "garbled"
        assert letter.headers["x-garbled"] == 3
        assert "3 replies the connector refused" in letter.error
        assert sim.effect_counts() == {key: 1}, "the note was sent again after an answer that may hide it"
        sent = [r for r in sim.requests(NOTE_PATH) if r["method"] == "POST"]
        assert len(sent) == 1
        lookups = sim.requests(LOOKUP_PATH)
        assert [r["fault"] for r in lookups] == ["malformed_body"] * 2, "the lookups did not answer garbage"

        # the target is fixed; the operator replays: the claim reconciles first and nothing is sent again
        sim.set_faults()
        with thread_worker(amqp_url, sqlite_url, cfg, routes=[ROUTE]) as tw:
            assert _replay(amqp_url, ROUTE) == 1
            wait_for(lambda: tw.worker.stats[ROUTE].outcomes.get("delivered") == 1, timeout=20, what="the replay")
            record = tw.app.store.get(ROUTE, event["event_id"])
            assert record is not None and record.state == "done"
        assert sim.effect_counts() == {key: 1}
        assert len([r for r in sim.requests(NOTE_PATH) if r["method"] == "POST"]) == 1
        assert sim.requests(LOOKUP_PATH)[-1]["status"] == 200


def _dead_letters(amqp_url: str, route: str) -> list[DeadLetter]:
    """The route's dead letters, left in place (``igate-bus dlq list``)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return DeadLetters(conn).browse(route)
    finally:
        conn.close()


def _replay(amqp_url: str, route: str) -> int:
    """``igate-bus dlq replay --route ROUTE --all``: the same body back to the route's queue."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return DeadLetters(conn).replay(route)
    finally:
        conn.close()


def test_a_portal_answering_a_doctype_is_dead_lettered_after_3_replies(amqp_url, sqlite_url, tmp_path, monkeypatch):
    """SOAP: a reply with a DOCTYPE ×3 (applied first) ▶ DLQ kind garbled, the portal applied it once."""
    monkeypatch.setenv(USER_ENV, NPS_USER)
    monkeypatch.setenv(PASSWORD_ENV, NPS_PASSWORD)
    with NpsSimulator(username=NPS_USER, password=NPS_PASSWORD) as sim:
        cfg = _mixed_config(tmp_path / "cfg", igate="http://127.0.0.1:9", nps=sim.endpoint, backoff=("300ms",))
        route = "nps-dossier-received"
        event = life(dossier_code("GARBLED", 1), 1)["dossier.received"]
        key = idempotency_key(route, event["event_id"])
        sim.set_faults(mode="doctype_system", only_operations=["DongBoHoSoMC", "TraCuuHoSo"])
        with thread_worker(amqp_url, sqlite_url, cfg, routes=[route]) as tw:
            publish(amqp_url, [event])
            wait_for(lambda: depth(amqp_url, f"dlq.{route}") == 1, timeout=30, what="the dead letter")
            assert tw.app.ops.monitor.snapshot()["nps"].state == "degraded"
            record = tw.app.store.get(route, event["event_id"])
            assert record is not None and record.maybe_applied
        [letter] = _dead_letters(amqp_url, route)
        assert letter.error_kind == "garbled"
        assert "DOCTYPE" in letter.error
        assert [e["maYeuCau"] for e in sim.effects()] == [key], "the record was sent again"
        assert [r["fault"] for r in sim.requests("DongBoHoSoMC")] == ["doctype_system"]


# -- 2,000 mixed events, both targets dropping answers and failing lookups, the worker SIGKILLed 3 times -------------
def _mixed_config(
    folder: Path,
    *,
    igate: str,
    nps: str,
    backoff: tuple[str, ...] = ("300ms", "1s"),
    max_attempts: int = 60,
) -> Path:
    """The shipped portal routes (test_nps_routes' config) plus the shipped iGate note and results routes."""
    write_nps_config(folder, endpoint=nps, backoff=backoff, max_attempts=max_attempts)
    shipped = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text(encoding="utf-8"))
    routes = yaml.safe_load((folder / "routes.yaml").read_text(encoding="utf-8"))
    for r in shipped["routes"]:
        if r["name"] in {"bus-ack", "results-to-igate"}:
            r["retry"] = {"backoff": list(backoff), "max_attempts": max_attempts}
            routes["routes"].append(r)
    connectors = yaml.safe_load((folder / "connectors.yaml").read_text(encoding="utf-8"))
    nps_spec = connectors["connectors"]["nps"]
    nps_spec["timeout"] = {"connect": "1s", "read": "2s", "total": "3s"}
    nps_spec["breaker"] = {"fail_max": 1000, "reset_timeout": "1s"}
    connectors["connectors"]["igate"] = {
        "type": "igate",
        "endpoint": igate,
        "timeout": nps_spec["timeout"],
        "breaker": nps_spec["breaker"],
        "credentials": {"username": "IGATE_BUS_IGATE_USERNAME", "password": "IGATE_BUS_IGATE_PASSWORD"},
        "options": {"realm": "digo", "client_id": "igate-bus"},
    }
    (folder / "routes.yaml").write_text(yaml.safe_dump(routes, allow_unicode=True, sort_keys=False))
    (folder / "connectors.yaml").write_text(yaml.safe_dump(connectors, sort_keys=False))
    return folder


def _queues(config: Path, *, dlq: bool) -> list[str]:
    routes = yaml.safe_load((config / "routes.yaml").read_text(encoding="utf-8"))["routes"]
    if dlq:
        return [f"dlq.{r['name']}" for r in routes]
    out = []
    for r in routes:
        out += [f"route.{r['name']}", *(f"retry.{r['name']}.{d}" for d in r["retry"]["backoff"])]
    return out


@dataclass
class _Mixed:
    """A run's events and what each simulator must end with: iGate keys once each, portal keys n times each."""

    batch: list[dict[str, Any]]
    igate_keys: set[str]
    nps_keys: dict[str, int]

    @classmethod
    def of(cls, lives: int) -> _Mixed:
        run = uuid.uuid4().hex[:6].upper()
        events = [life(dossier_code(run, i), i) for i in range(lives)]
        igate_keys: set[str] = set()
        nps_keys: dict[str, int] = {}
        for evs in events:
            igate_keys.add(idempotency_key(ROUTE, evs["dossier.received"]["event_id"]))
            for event_type, routes in ROUTES_OF.items():
                eid = evs[event_type]["event_id"]
                for route, n in routes.items():
                    nps_keys[idempotency_key(route, eid)] = n
                    # each portal answer flows back to iGate as a status update
                    igate_keys.add(idempotency_key("results-to-igate", result_event_id(route, eid)))
        batch = [evs[t] for t in LIFE for evs in events]
        random.Random(lives).shuffle(batch)
        return cls(batch, igate_keys, nps_keys)

    @property
    def total(self) -> int:
        return len(self.igate_keys) + sum(self.nps_keys.values())

    def done(self, igate: IGateSimulator, nps: NpsSimulator) -> bool:
        portal = Counter(str(e["maYeuCau"]) for e in nps.effects())
        return self.igate_keys <= igate.effect_counts().keys() and all(portal[k] >= n for k, n in self.nps_keys.items())


def _run_killing(env: dict[str, str], log: Path, *, kills: int, applied: Callable[[], int], total: int) -> list[int]:
    """Start the worker, SIGKILL it when 1/5, 2/5... of the effects are in, restart; returns effects at each kill."""
    marks: list[int] = []
    for k in range(kills):
        worker = ProcessWorker(env, log).start()
        try:
            target = total * (k + 1) // (kills + 2)
            wait_for(lambda: applied() >= target, timeout=600, interval=0.1, what=f"{target} effects")  # noqa: B023
            worker.kill9()
        finally:
            worker.stop()
        marks.append(applied())
    return marks


def _finish(
    amqp_url: str, cfg: Path, env: dict[str, str], log: Path, done: Callable[[], bool], *, timeout: float, what: str
) -> None:
    """A last worker runs until ``done`` and every queue of ``cfg`` is empty, then stops cleanly on SIGTERM."""
    worker = ProcessWorker(env, log).start()
    try:
        wait_for(done, timeout=timeout, interval=0.5, what=what)
        queues = _queues(cfg, dlq=False)
        wait_for(lambda: all(depth(amqp_url, q) == 0 for q in queues), timeout=120, what="the queues to drain")
        assert worker.terminate() == 0
    finally:
        worker.stop()


def _mixed_chaos(amqp_url: str, store_url: str, tmp_path: Path, *, lives: int, kills: int, timeout: float) -> None:
    mixed = _Mixed.of(lives)
    with (
        IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as igate,
        NpsSimulator(username=NPS_USER, password=NPS_PASSWORD) as nps,
    ):
        cfg = _mixed_config(tmp_path / "cfg", igate=igate.url, nps=nps.endpoint)
        igate.set_faults(
            apply_then_drop_rate=0.3, only_paths=[NOTE_PATH], only_methods=["POST", "PUT"], lookup_fail_rate=0.3
        )
        nps.set_faults(mode="apply_then_drop", rate=0.3, only_operations=EFFECT_SERVICES, lookup_fail_rate=0.3)
        env = env_for(
            amqp_url, store_url, cfg, **{USER_ENV: NPS_USER, PASSWORD_ENV: NPS_PASSWORD, "IGATE_BUS_OPS_PORT": "0"}
        )
        log = tmp_path / "worker.log"
        declare_routes(amqp_url, cfg)
        started = time.monotonic()
        publish(amqp_url, mixed.batch)
        marks = _run_killing(
            env, log, kills=kills, applied=lambda: len(igate.effects()) + len(nps.effects()), total=mixed.total
        )
        _finish(amqp_url, cfg, env, log, lambda: mixed.done(igate, nps), timeout=timeout, what="every effect")
        elapsed = time.monotonic() - started
        _assert_mixed(amqp_url, cfg, mixed, igate, nps, log, marks=marks, elapsed=elapsed)


def _assert_mixed(
    amqp_url: str,
    cfg: Path,
    mixed: _Mixed,
    igate: IGateSimulator,
    nps: NpsSimulator,
    log: Path,
    *,
    marks: list[int],
    elapsed: float,
) -> None:
    notes = igate.effect_counts()
    portal = Counter(str(e["maYeuCau"]) for e in nps.effects())
    lost = (mixed.igate_keys - notes.keys()) | {k for k in mixed.nps_keys if k not in portal}
    dupes = {k: n for k, n in notes.items() if n > 1} | {
        k: n for k, n in portal.items() if n > mixed.nps_keys.get(k, 0)
    }
    unexpected = (notes.keys() - mixed.igate_keys) | (portal.keys() - mixed.nps_keys.keys())
    lines = [json.loads(x) for x in log.read_text(errors="replace").splitlines() if x.startswith("{")]
    reconciled = Counter(x.get("found") for x in lines if x.get("event") == "reconciled")
    igate_dropped = [r for r in igate.requests(NOTE_PATH) if r["fault"] == "apply_then_drop"]
    igate_lookup_failed = [r for r in igate.requests(LOOKUP_PATH) if r["status"] == 503]
    nps_dropped = [r for r in nps.requests() if r["fault"] == "apply_then_drop"]
    nps_lookup_failed = [r for r in nps.requests("TraCuuHoSo") if r["fault"] == "http_503"]
    print(
        f"{len(mixed.batch)} events, {len(mixed.igate_keys)} iGate keys, {len(mixed.nps_keys)} portal keys, "
        f"{len(marks)} SIGKILLs at {marks} of {mixed.total} effects, {elapsed:.0f} s: {len(igate.effects())} "
        f"iGate and {len(nps.effects())} portal effects, {len(lost)} lost, {len(dupes)} duplicated; faults: "
        f"iGate {len(igate_dropped)} applied-then-dropped, {len(igate_lookup_failed)} lookups failed; portal "
        f"{len(nps_dropped)} applied-then-dropped, {len(nps_lookup_failed)} lookups failed; reconciled "
        f"found={reconciled.get(True, 0)} not-found={reconciled.get(False, 0)}"
    )
    assert not lost, f"{len(lost)} effects never applied, e.g. {sorted(lost)[:3]}"
    assert not dupes, f"{len(dupes)} duplicate effects: {list(dupes.items())[:5]}"
    assert not unexpected, f"effects under keys nobody sent: {sorted(unexpected)[:3]}"
    for q in _queues(cfg, dlq=True):
        assert depth(amqp_url, q) == 0, f"{q}: {[p.headers for p, _ in get_all(amqp_url, q)][:2]}"
    # guards: every fault happened, at both targets, and the reconcile path ran
    assert igate_dropped and igate_lookup_failed, "the iGate simulator's faults never fired"
    assert nps_dropped and nps_lookup_failed, "the portal simulator's faults never fired"
    assert reconciled.get(True, 0) > 0, "no lookup found an effect: the ambiguous outcome was never reconciled"
    assert all(b > a for a, b in zip([0, *marks], marks, strict=False)), f"no progress between kills: {marks}"
    assert marks[-1] < mixed.total, "the run finished before the last kill: the kills proved nothing"


def test_mixed_events_with_both_targets_dropping_answers_and_failing_lookups_sigkill_3_times(
    amqp_url, sqlite_url, tmp_path
):
    """25 lives (200 events) on the iGate and portal routes, 30 % apply-then-drop and failed lookups at both
    simulators, the worker SIGKILLed 3 times ▶ 0 lost, 0 duplicate effects at either simulator."""
    _mixed_chaos(amqp_url, sqlite_url, tmp_path, lives=25, kills=3, timeout=180)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_2000_mixed_events_with_both_targets_dropping_answers_and_failing_lookups_sigkill_3_times(
    amqp_url, pg_url, tmp_path
):
    """Issue 8: 250 lives (2,000 events), the same faults, 3 SIGKILLs, PostgreSQL ▶ 0 lost, 0 duplicates."""
    _mixed_chaos(amqp_url, pg_url, tmp_path, lives=250, kills=3, timeout=1200)
