# mypy: allow-untyped-defs
"""Per-dossier order end to end (issue 9 item 2): real broker, real store, the portal simulator, a real worker.

**latest**: the portal simulator's own ordering check (``NgayCapNhat``) is switched off, so the last call wins
whatever its time, as a portal without that check would behave. Each dossier's 8 status events are published
shuffled among every other dossier's, so the 13 ordered ``nps-*`` routes race on every dossier; the bus alone
must keep the portal at each dossier's latest status, and the simulator's record of arrivals must show no
older status after a newer one. Every (route, event) is accounted for: applied at the portal under its
request key, or acked as superseded with a ``bus.superseded`` result (read from the ``unrouted`` queue, where
results nobody binds are kept).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from busenv import depth, drained, get_all, publish, thread_worker, wait_for
from test_nps_routes import (  # the portal routes' harness: config, simulator fixture, timestamps
    ROUTES_OF,
    _at,
    dossier_code,
    effects_by_key,
    life,
    sim,
    write_nps_config,
)

from routes.pipeline import idempotency_key
from routes.topology import UNROUTED_QUEUE

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.nps import NpsSimulator

__all__ = ["sim"]  # the fixture, imported for pytest to find

#: a dossier's 8 status events, in the order iGate emits them (the examples' times increase along it)
STATUS_LIFE = (
    "dossier.submitted",
    "dossier.received",
    "dossier.step_changed",
    "dossier.supplement_requested",
    "dossier.supplement_received",
    "dossier.payment_requested",
    "dossier.result_ready",
    "dossier.returned",
)
#: the ordered routes each status event goes through, and the effects the simulator records per request key
ORDERED_ROUTES: dict[str, dict[str, int]] = {
    **{t: ROUTES_OF[t] for t in STATUS_LIFE if t in ROUTES_OF},
    "dossier.payment_requested": {"nps-dossier-payment-requested": 1},
}


def _queues(config: Path, *, retry: bool) -> list[str]:
    import yaml

    routes = yaml.safe_load((config / "routes.yaml").read_text(encoding="utf-8"))["routes"]
    out = []
    for r in routes:
        out.append(f"route.{r['name']}" if retry else f"dlq.{r['name']}")
        if retry:
            out += [f"retry.{r['name']}.{d}" for d in r["retry"]["backoff"]]
    return out


def _settled(tw: Any, routes: list[str]) -> int:
    """Deliveries that reached a final outcome (not a retry) on ``routes``."""
    final = ("delivered", "duplicate", "superseded", "dead_lettered", "skipped")
    return sum(tw.worker.stats[r].outcomes.get(k, 0) for r in routes for k in final)


def _shuffled_lives(amqp_url: str, store_url: str, tmp_path: Path, sim: NpsSimulator, n: int, timeout: float) -> None:
    sim.set_faults(ordering_check=False)
    cfg = write_nps_config(tmp_path / "cfg", endpoint=sim.endpoint, ordered=True)
    run = uuid.uuid4().hex[:4].upper()
    lives = {dossier_code(run, i): life(dossier_code(run, i), i, STATUS_LIFE) for i in range(n)}
    pairs = {
        (route, ev["event_id"]) for events in lives.values() for t, ev in events.items() for route in ORDERED_ROUTES[t]
    }
    routes = sorted({route for by_route in ORDERED_ROUTES.values() for route in by_route})
    batch = [ev for events in lives.values() for ev in events.values()]
    random.Random(n).shuffle(batch)
    started = time.monotonic()
    with thread_worker(amqp_url, store_url, cfg) as tw:
        publish(amqp_url, batch)
        wait_for(
            lambda: _settled(tw, routes) >= len(pairs), timeout=timeout, interval=0.5, what=f"{len(pairs)} outcomes"
        )
        wait_for(lambda: drained(amqp_url, _queues(cfg, retry=True), pause=0.5), timeout=60, what="the queues to drain")
        outcomes: Counter[str] = Counter()
        for r in routes:
            outcomes.update(tw.worker.stats[r].outcomes)
    elapsed = time.monotonic() - started
    print(f"\n  {n} dossiers, {len(batch)} events, {len(pairs)} route deliveries: {elapsed:.1f} s, {dict(outcomes)}")

    # every dossier at its latest status, and the portal's arrivals never went back in time
    went_back = []
    for code, events in lives.items():
        state = sim.dossier(code)
        assert state is not None, f"{code}: the portal has no such dossier"
        returned_at = _at(events["dossier.returned"]["occurred_at"])
        assert (state["TrangThaiHoSo"], state["NgayCapNhat"]) == ("10", returned_at), f"{code}: {state['arrivals']}"
        assert (state["record"]["TrangThaiHoSo"], state["record"]["NgayCapNhat"]) == ("10", returned_at)
        times = [a["at"] for a in state["arrivals"]]
        if times != sorted(times):
            went_back.append((code, state["arrivals"]))
    assert not went_back, f"{len(went_back)} dossiers got an older status after a newer one: {went_back[:2]}"

    # guard: the simulator's own check really was off (TH's synthetic reception step, older than the step it
    # comes with, was taken), so only the bus kept the order
    history = [h for code in lives for h in (sim.dossier(code) or {})["history"]]
    assert all(h["taken"] for h in history), "the simulator refused an older status: its ordering check is on"

    # every (route, event) applied exactly as often as it must be, or superseded with a result event; never both
    results = [json.loads(body) for _, body in get_all(amqp_url, UNROUTED_QUEUE)]
    superseded = {
        (r["payload"]["route"], r["payload"]["event_id"]) for r in results if r["event_type"] == "bus.superseded"
    }
    for r in results:
        if r["event_type"] == "bus.superseded":
            assert r["payload"]["position"] < r["payload"]["applied"], r
            assert r["payload"]["target"] == "nps"
    applied = effects_by_key(sim)
    key_of = {idempotency_key(route, eid): (route, eid) for route, eid in pairs}
    assert set(applied) <= set(key_of), "effects under keys nobody sent"
    sent = {key_of[k] for k in applied}
    counts = {route: n for by_route in ORDERED_ROUTES.values() for route, n in by_route.items()}
    wrong = {k: len(v) for k, v in applied.items() if len(v) != counts[key_of[k][0]]}
    assert not wrong, f"{len(wrong)} keys applied the wrong number of times: {list(wrong.items())[:5]}"
    assert not (sent & superseded), f"{len(sent & superseded)} events both sent and superseded"
    lost = pairs - sent - superseded
    assert not lost, f"{len(lost)} route deliveries neither sent nor superseded: {sorted(lost)[:3]}"
    assert outcomes["superseded"] == len(superseded), (outcomes, len(superseded))
    # guard: the shuffle put older events after newer ones, or the test proved nothing
    assert len(superseded) >= n, f"only {len(superseded)} superseded events for {n} dossiers: nothing raced"
    for q in _queues(cfg, retry=False):
        assert depth(amqp_url, q) == 0, f"{q} is not empty: {[p.headers for p, _ in get_all(amqp_url, q)][:3]}"


def test_100_dossiers_8_status_events_shuffled_end_at_their_latest_status_with_the_portal_check_off(
    amqp_url, sqlite_url, tmp_path, sim
):
    """100 dossiers × 8 status events shuffled, portal check off ▶ each at its latest status, arrivals in order."""
    _shuffled_lives(amqp_url, sqlite_url, tmp_path, sim, 100, timeout=180)


@pytest.mark.chaos
@pytest.mark.timeout(1200)
def test_1000_dossiers_8_status_events_shuffled_end_at_their_latest_status_with_the_portal_check_off(
    amqp_url, pg_url, tmp_path, sim
):
    """Issue 9 item 2 must-show: 1,000 × 8 shuffled, portal check off, PostgreSQL ▶ latest status, arrivals in order."""
    _shuffled_lives(amqp_url, pg_url, tmp_path, sim, 1000, timeout=1000)
