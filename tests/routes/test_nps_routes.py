# mypy: allow-untyped-defs
"""The national portal routes end to end: real broker, real store, the SOAP portal simulator, a real worker.

Every dossier goes through a whole life (submitted ▶ received ▶ step ▶ supplement asked ▶ supplement in ▶
result ▶ returned ▶ rated). All its events are published at once, so the 10 ``nps-*`` routes they bind work
on them in any order: the portal must still end at the dossier's final state by time (the newest record wins,
docs/reliability.md R12), hold every step once, and have seen every request key applied once. Assertions read what
the SIMULATOR holds: its dossiers, its effects (one per record or step applied, with the ``maYeuCau`` header
the connector sent) and its request-id log.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import busenv
import pytest
import yaml
from busenv import ROOT, depth, drained, example, get_all, publish, thread_worker, wait_for
from structlog.testing import capture_logs
from wallclock import assert_within

from adapters.igate_to_nps import END_STEP, RECEPTION_STEP
from routes.pipeline import idempotency_key
from schemas.nps import portal_time
from simulators.nps import DEFAULT_MADONVI, NpsSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

NPS_USER = "igate-bus-nps"
NPS_PASSWORD = "nps-s3cret-for-tests"
USER_ENV = "IGATE_BUS_NPS_USERNAME"
PASSWORD_ENV = "IGATE_BUS_NPS_PASSWORD"

#: a dossier's life, in the order iGate emits it (each example shifted per dossier, see :func:`life`)
LIFE = (
    "dossier.submitted",
    "dossier.received",
    "dossier.step_changed",
    "dossier.supplement_requested",
    "dossier.supplement_received",
    "dossier.result_ready",
    "dossier.returned",
    "rating.submitted",
)
#: the nps routes each event type goes through, and how many effects the simulator records per request key
#: (a record or a rating is one effect; a progress upload is one per step: reception + the step or the end)
ROUTES_OF: dict[str, dict[str, int]] = {
    "dossier.submitted": {"nps-dossier-submitted": 1},
    "dossier.received": {"nps-dossier-received": 1},
    "dossier.step_changed": {"nps-dossier-step-changed": 2},
    "dossier.supplement_requested": {"nps-dossier-supplement-requested": 1},
    "dossier.supplement_received": {"nps-dossier-supplement-received": 1},
    "dossier.result_ready": {"nps-dossier-result-ready": 1, "nps-dossier-result-ready-progress": 2},
    "dossier.returned": {"nps-dossier-returned": 1},
    "rating.submitted": {"nps-rating-submitted": 1},
}
#: statuses offered to a dossier over a life: 6 records (submitted, received, supplement asked and in, result,
#: returned) and 4 steps (reception twice, the step, the end)
OFFERS_PER_LIFE = 10

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)$")


# -- config ------------------------------------------------------------------------------------------------


def write_nps_config(
    folder: Path,
    *,
    endpoint: str,
    backoff: tuple[str, ...] = ("300ms", "600ms"),
    max_attempts: int = 10,
    ordered: bool = False,
) -> Path:
    """The shipped ``nps-*`` routes (and only those) with a short backoff, and the nps connector at ``endpoint``.

    Without ``ordered`` the routes' ``order`` blocks are left out: these tests exercise the portal's own
    ordering check (R12) and count every event's effect; tests/routes/test_ordering_routes.py keeps them.
    """
    shipped = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text(encoding="utf-8"))
    routes = [r for r in shipped["routes"] if r["name"].startswith("nps-")]
    assert len(routes) == 14, f"expected the 14 shipped nps routes, found {len(routes)}"
    for r in routes:
        r["retry"] = {"backoff": list(backoff), "max_attempts": max_attempts}
        if not ordered:
            r.pop("order", None)
    connectors = {
        "connectors": {
            "nps": {
                "type": "nps",
                "endpoint": endpoint,
                "timeout": {"connect": "1s", "read": "3s", "total": "5s"},
                "breaker": {"fail_max": 50, "reset_timeout": "1s"},
                "max_reply_bytes": 1048576,
                "credentials": {"username": USER_ENV, "password": PASSWORD_ENV},
                "options": {"madonvi": DEFAULT_MADONVI},
            },
            "noop": {"type": "noop"},
        }
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}, allow_unicode=True, sort_keys=False))
    (folder / "connectors.yaml").write_text(yaml.safe_dump(connectors, sort_keys=False))
    return folder


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[NpsSimulator]:
    """A portal simulator on a free port, and the bus's portal credentials in the environment."""
    monkeypatch.setenv(USER_ENV, NPS_USER)
    monkeypatch.setenv(PASSWORD_ENV, NPS_PASSWORD)
    with NpsSimulator(username=NPS_USER, password=NPS_PASSWORD) as s:
        yield s


# -- events ------------------------------------------------------------------------------------------------


def _shift(value: Any, delta: timedelta) -> Any:
    """Every RFC 3339 timestamp in ``value`` moved by ``delta`` (dates without a time, e.g. births, are kept)."""
    if isinstance(value, dict):
        return {k: _shift(v, delta) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, delta) for v in value]
    if isinstance(value, str) and _TIMESTAMP.match(value):
        return (datetime.fromisoformat(value) + delta).isoformat()
    return value


def _at(value: str) -> str:
    """An event's RFC 3339 timestamp as the portal writes it."""
    return portal_time(datetime.fromisoformat(value))


def dossier_code(run: str, i: int) -> str:
    """A dossier code of this run, in iGate's form (agency-yyMMdd-number)."""
    return busenv.dossier_code(i, run)


def life(code: str, i: int, types: tuple[str, ...] = LIFE) -> dict[str, dict[str, Any]]:
    """The events of dossier ``i``'s life by type: the examples with ``code``, fresh ids, times moved by i×7 min.

    The examples' own times already increase along the life (26 Nov submitted … 11 Dec returned, rated an hour
    later); each dossier starts 7 minutes after the one before it.
    """
    delta = timedelta(minutes=7 * i)
    correlation = str(uuid.uuid4())
    out = {}
    for event_type in types:
        ev = _shift(example(event_type), delta)
        ev["event_id"] = str(uuid.uuid4())
        ev["dossier_code"] = code
        ev["correlation_id"] = correlation
        out[event_type] = ev
    return out


def expected_keys(events: dict[str, dict[str, Any]], types: tuple[str, ...] = LIFE) -> dict[str, int]:
    """Request key (``maYeuCau``) ▶ effects the simulator must record for it, for the given events of a life."""
    return {idempotency_key(route, events[t]["event_id"]): n for t in types for route, n in ROUTES_OF[t].items()}


# -- reading the simulator ---------------------------------------------------------------------------------


def effects_by_key(sim: NpsSimulator) -> dict[str, list[dict[str, Any]]]:
    """The simulator's effects grouped by the request key they carried."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in sim.effects():
        out.setdefault(str(e["maYeuCau"]), []).append(e)
    return out


def covered(sim: NpsSimulator, expected: dict[str, int]) -> bool:
    """Whether every expected key has all its effects at the simulator."""
    counts = Counter(str(e["maYeuCau"]) for e in sim.effects())
    return all(counts[k] >= n for k, n in expected.items())


def assert_effects_exactly(sim: NpsSimulator, expected: dict[str, int], codes: dict[str, str]) -> None:
    """Every expected key applied exactly as often as it must be, on its own dossier; nothing else applied.

    ``codes`` maps each key to the dossier it belongs to.
    """
    got = effects_by_key(sim)
    lost = expected.keys() - got.keys()
    unexpected = got.keys() - expected.keys()
    dupes = {k: len(got[k]) for k in expected.keys() & got.keys() if len(got[k]) != expected[k]}
    wrong = {k: {e["MaHoSo"] for e in got[k]} for k in expected.keys() & got.keys()}
    wrong = {k: v for k, v in wrong.items() if v != {codes[k]}}
    assert not lost, f"{len(lost)} request keys never applied, e.g. {sorted(lost)[:3]}"
    assert not unexpected, f"{len(unexpected)} effects under keys nobody sent, e.g. {sorted(unexpected)[:3]}"
    assert not dupes, f"{len(dupes)} keys applied the wrong number of times: {list(dupes.items())[:5]}"
    assert not wrong, f"{len(wrong)} keys applied to another dossier: {list(wrong.items())[:3]}"


def assert_final_state(sim: NpsSimulator, code: str, events: dict[str, dict[str, Any]]) -> None:
    """The portal holds exactly the final state of a whole life: returned (10), every step once, the rating."""
    state = sim.dossier(code)
    assert state is not None, f"{code}: the portal has no such dossier"
    returned = events["dossier.returned"]
    returned_at = _at(returned["occurred_at"])
    assert state["TrangThaiHoSo"] == "10", f"{code}: status {state['TrangThaiHoSo']}, history {state['history']}"
    assert state["NgayCapNhat"] == returned_at, f"{code}: status time {state['NgayCapNhat']} != {returned_at}"
    record = state["record"]
    assert record["TrangThaiHoSo"] == "10", f"{code}: the kept record is status {record['TrangThaiHoSo']}"
    assert record["NgayCapNhat"] == returned_at, f"{code}: the kept record is of {record['NgayCapNhat']}"
    assert record["NgayTra"] == _at(returned["payload"]["dates"]["returned"])
    assert record["MaHoSo"] == code

    dates = events["dossier.result_ready"]["payload"]["dates"]
    step = events["dossier.step_changed"]
    want_steps = {
        (_at(dates["received"]), "2", RECEPTION_STEP),
        (_at(step["occurred_at"]), "4", f"{step['payload']['step']['name']}: {step['payload']['step']['note']}"),
        (_at(dates["finished"]), "9", END_STEP),
    }
    got_steps = [(s["ThoiDiemXuLy"], str(s["TrangThai"]), s["NoiDungXuLy"]) for s in state["steps"]]
    assert Counter(got_steps) == Counter(want_steps), f"{code}: steps {got_steps}"
    assert state["SoBuocTienDo"] == "3"

    rating = events["rating.submitted"]
    assert state["rating"] is not None, f"{code}: no rating"
    assert state["rating"]["MucDo"] == str(rating["payload"]["level"])
    assert state["rating"]["ThoiGian"] == _at(rating["occurred_at"])

    history = state["history"]
    assert len(history) == OFFERS_PER_LIFE, f"{code}: {len(history)} status offers, not {OFFERS_PER_LIFE}: {history}"
    # never regressed: once the returned record was taken, nothing older was
    first_ten = next(i for i, h in enumerate(history) if h["status"] == "10" and h["taken"])
    late_taken = [h for h in history[first_ten + 1 :] if h["taken"]]
    assert not late_taken, f"{code}: an older status overwrote the newer one: {late_taken}"


def _drained(amqp_url: str, queues: list[str]) -> bool:
    return drained(amqp_url, queues, pause=0.5)


def _route_queues(config: Path) -> list[str]:
    routes = yaml.safe_load((config / "routes.yaml").read_text(encoding="utf-8"))["routes"]
    out = []
    for r in routes:
        out.append(f"route.{r['name']}")
        out += [f"retry.{r['name']}.{d}" for d in r["retry"]["backoff"]]
    return out


def _dlqs(config: Path) -> list[str]:
    routes = yaml.safe_load((config / "routes.yaml").read_text(encoding="utf-8"))["routes"]
    return [f"dlq.{r['name']}" for r in routes]


# -- tests -------------------------------------------------------------------------------------------------


def _whole_lives(amqp_url: str, store_url: str, tmp_path: Path, sim: NpsSimulator, n: int, timeout: float) -> None:
    cfg = write_nps_config(tmp_path / "cfg", endpoint=sim.endpoint)
    run = uuid.uuid4().hex[:4].upper()
    lives = {dossier_code(run, i): life(dossier_code(run, i), i) for i in range(n)}
    expected: dict[str, int] = {}
    owner: dict[str, str] = {}
    for code, events in lives.items():
        keys = expected_keys(events)
        expected.update(keys)
        owner.update(dict.fromkeys(keys, code))
    # every event of every life at once, in a shuffled order, so the routes race each other on every dossier
    batch = [lives[code][t] for t in LIFE for code in lives]
    random.Random(n).shuffle(batch)
    started = time.monotonic()
    with thread_worker(amqp_url, store_url, cfg):
        publish(amqp_url, batch)
        wait_for(lambda: covered(sim, expected), timeout=timeout, interval=0.5, what=f"{len(expected)} request keys")
        wait_for(lambda: _drained(amqp_url, _route_queues(cfg)), timeout=60, what="the nps queues to drain")
    print(f"{n} lives, {len(batch)} events, {len(expected)} keys: {time.monotonic() - started:.1f} s")

    assert_effects_exactly(sim, expected, owner)
    for code, events in lives.items():
        assert_final_state(sim, code, events)
    assert sorted(sim.dossier_codes()) == sorted(lives)
    # a record (not only TH's synthetic reception step, which every progress upload repeats) came in late
    late = [
        code
        for code in lives
        if any(not h["taken"] and h["source"] == "DongBoHoSoMC" for h in (sim.dossier(code) or {})["history"])
    ]
    print(f"{len(late)}/{n} dossiers had an older record arrive after a newer status")
    assert len(late) >= n // 10, f"only {len(late)}/{n} dossiers saw an event out of order: the test proved little"
    for q in _dlqs(cfg):
        assert depth(amqp_url, q) == 0, f"{q} is not empty: {[p.headers for p, _ in get_all(amqp_url, q)][:3]}"


def test_200_whole_lives_end_at_their_final_state_with_every_step_once(amqp_url, store_url, tmp_path, sim):
    """200 lives, all events at once on 10 routes ▶ each returned (10) at its time, 3 steps, rated; each key once."""
    _whole_lives(amqp_url, store_url, tmp_path, sim, 200, timeout=120)


@pytest.mark.chaos  # about 130 s on a 2-CPU machine: the 200-life version runs in `make test`
@pytest.mark.timeout(900)
def test_1000_whole_lives_end_at_their_final_state_with_every_step_once(amqp_url, pg_url, tmp_path, sim):
    """Issue 4: 1,000 lives (8,000 events) at once ▶ each at its final state, every step once, never regressed."""
    _whole_lives(amqp_url, pg_url, tmp_path, sim, 1000, timeout=720)


def test_returned_then_an_older_step_never_moves_200_dossiers_back(amqp_url, sqlite_url, tmp_path, sim):
    """R12: dossier.returned (10) applied, then dossier.step_changed (4, older) ▶ the portal shows 10 for 200/200."""
    cfg = write_nps_config(tmp_path / "cfg", endpoint=sim.endpoint)
    run = uuid.uuid4().hex[:4].upper()
    lives = {dossier_code(run, i): life(dossier_code(run, i), i) for i in range(200)}
    returned_keys: dict[str, int] = {}
    step_keys: dict[str, int] = {}
    owner: dict[str, str] = {}
    for code, events in lives.items():
        r, s = expected_keys(events, ("dossier.returned",)), expected_keys(events, ("dossier.step_changed",))
        returned_keys.update(r)
        step_keys.update(s)
        owner.update(dict.fromkeys([*r, *s], code))
    with thread_worker(amqp_url, sqlite_url, cfg):
        publish(amqp_url, [e["dossier.returned"] for e in lives.values()])
        wait_for(lambda: covered(sim, returned_keys), timeout=60, what="200 returned records")
        for code in lives:
            state = sim.dossier(code)
            assert state is not None and state["TrangThaiHoSo"] == "10", f"{code}: not returned before the step"
        publish(amqp_url, [e["dossier.step_changed"] for e in lives.values()])
        wait_for(lambda: covered(sim, step_keys), timeout=60, what="200 older steps")

    assert_effects_exactly(sim, {**returned_keys, **step_keys}, owner)
    regressed = []
    for code, events in lives.items():
        state = sim.dossier(code)
        assert state is not None
        returned_at = _at(events["dossier.returned"]["occurred_at"])
        step_at = _at(events["dossier.step_changed"]["occurred_at"])
        assert step_at < returned_at, "the step must be older than the return: the test would prove nothing"
        if (state["TrangThaiHoSo"], state["NgayCapNhat"], state["record"]["TrangThaiHoSo"]) != (
            "10",
            returned_at,
            "10",
        ):
            regressed.append((code, state["TrangThaiHoSo"], state["NgayCapNhat"]))
        # the older step reached the portal and is kept, it just did not move the status
        assert (step_at, "4") in {(s["ThoiDiemXuLy"], str(s["TrangThai"])) for s in state["steps"]}
        late = [h for h in state["history"] if h["source"] == "CapNhatTienDoHoSoMC"]
        assert late and not any(h["taken"] for h in late), f"{code}: an older step was taken: {late}"
    assert not regressed, f"{len(regressed)}/200 dossiers moved back: {regressed[:5]}"


def test_a_record_the_portal_refuses_is_dead_lettered_at_once_and_sent_once(amqp_url, sqlite_url, tmp_path, sim):
    """Received before submitted (a portal rule) ▶ error_code 1 ▶ DLQ at once, kind rejected; the portal got it once."""
    cfg = write_nps_config(tmp_path / "cfg", endpoint=sim.endpoint)
    run = uuid.uuid4().hex[:4].upper()
    good = [life(dossier_code(run, i), i)["dossier.received"] for i in range(3)]
    bad = life(dossier_code(run, 99), 99)["dossier.received"]
    dates = bad["payload"]["dates"]
    dates["received"] = (datetime.fromisoformat(dates["submitted"]) - timedelta(days=1)).isoformat()
    bad_code = str(bad["dossier_code"])
    route = "nps-dossier-received"
    key = idempotency_key(route, bad["event_id"])
    with thread_worker(amqp_url, sqlite_url, cfg, routes=[route]) as tw:
        publish(amqp_url, good)
        wait_for(lambda: len(sim.effects()) == 3, timeout=30, what="3 good records")
        t0 = time.monotonic()
        publish(amqp_url, [bad])
        wait_for(lambda: depth(amqp_url, f"dlq.{route}") == 1, timeout=10, interval=0.05, what="the dead letter")
        elapsed = time.monotonic() - t0
        time.sleep(1.5)  # longer than the whole backoff: a retry, had there been one, would have come back
        assert tw.worker.stats[route].outcomes.get("retry", 0) == 0, "a refusal by the portal was retried"
    assert_within(elapsed, 1.0, "dead-lettering a record the portal refused (no retry: stats above)")

    [(props, body)] = get_all(amqp_url, f"dlq.{route}")
    assert json.loads(body)["event_id"] == bad["event_id"]
    assert props.headers["x-error-kind"] == "rejected"
    assert props.headers["x-attempts"] == 1
    assert "error_code 1" in props.headers["x-error"]
    assert "NgayTiepNhan" in props.headers["x-error"]

    sent = [r for r in sim.requests("DongBoHoSoMC") if r["body"]["data"][0]["MaHoSo"] == bad_code]
    assert len(sent) == 1, f"the portal received the refused record {len(sent)} times"
    assert sent[0]["answer"] == "1"
    assert sent[0]["header"]["maYeuCau"] == key
    [logged] = sim.request_log(key)
    assert logged["error_code"] == "1"
    assert sim.dossier(bad_code) is None, "a refused record was applied"
    assert all(e["MaHoSo"] != bad_code for e in sim.effects())
    assert len(sim.effects()) == 3


def test_a_password_rotated_at_the_portal_parks_every_event_until_the_bus_has_the_new_one(
    amqp_url, sqlite_url, tmp_path, sim, monkeypatch
):
    """Issue 10 item 16: the portal refuses the bus's login ▶ no record sent, nothing dead-lettered even with
    max_attempts 3, the login tried about once per breaker reset (not once per message), one ERROR line; the
    worker restarted with the new password ▶ every event applied exactly once."""
    cfg = write_nps_config(tmp_path / "cfg", endpoint=sim.endpoint, max_attempts=3)
    route = "nps-dossier-received"
    run = uuid.uuid4().hex[:4].upper()
    events = [life(dossier_code(run, i), i)["dossier.received"] for i in range(20)]
    keys = {idempotency_key(route, e["event_id"]): 1 for e in events}
    monkeypatch.setenv(PASSWORD_ENV, "the-password-before-the-rotation")
    with capture_logs() as logs, thread_worker(amqp_url, sqlite_url, cfg, routes=[route]) as tw:
        publish(amqp_url, events)
        time.sleep(6)  # ten times the longest backoff step, two of max_attempts' worth of retries each
        outcomes = dict(tw.worker.stats[route].outcomes)
    logins = sim.requests("XacThuc")
    print(f"\n  6 s with the old password: {len(logins)} logins, outcomes {outcomes}")
    assert logins and {r["answer"] for r in logins} == {"-1"}, "the portal never refused the login"
    assert sim.requests("DongBoHoSoMC") == [], "a record was sent without a session"
    assert outcomes.get("dead_lettered", 0) == 0 and depth(amqp_url, f"dlq.{route}") == 0
    assert outcomes.get("retry", 0) >= len(events), outcomes
    assert len(logins) <= 12, f"{len(logins)} logins in 6 s: the bus hammers the portal's login"
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["credentials_refused"], errors

    monkeypatch.setenv(PASSWORD_ENV, NPS_PASSWORD)
    with thread_worker(amqp_url, sqlite_url, cfg, routes=[route]):
        wait_for(lambda: covered(sim, keys), timeout=60, interval=0.5, what="20 records after the fix")
    assert_effects_exactly(sim, keys, {k: str(e["dossier_code"]) for k, e in zip(keys, events, strict=True)})
    assert depth(amqp_url, f"dlq.{route}") == 0
