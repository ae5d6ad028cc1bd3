"""Scheduled routes with real workers, the real broker and a real store: ticks run, once each, and move on.

The route ``poll-noop`` fires every second; its adapter maps the tick to the ``noop`` connector's ``poll``,
which moves the route's cursor on by one and reports one fact per position (a ``bus.pong`` result event keyed
by the cursor). So what the route executed can be counted three ways that must agree: the store's claims
(one per tick, claimed once), the saved cursor (one step per execution) and the result events (one per
position, ids derived from the fact).

``igate-bus status`` is run as an operator runs it (the CLI in a subprocess) against rows the store's own calls
wrote, as the scheduler writes them.

The must-show (two worker processes sharing PostgreSQL, SIGKILL the lease holder) runs ~20 ticks and one
SIGKILL here, and 100 ticks with three SIGKILLs (a fresh worker joining after each) under
``@pytest.mark.chaos``. Executions are counted from the store's claims, and every scheduled time from the
first tick to the last must have exactly one executed tick; a guard fails the test unless each SIGKILL hit
the process that held the schedule's lease at that moment. A crash point between a tick's publish and the
store's record makes the next holder fire the same tick again: it runs once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import pika
import pytest
import sqlalchemy as sa
from busenv import ProcessWorker, cli, declare_routes, depth, env_for, get_all, thread_worker, wait_for
from wallclock import assert_within

from routes.idempotency import IdempotencyStore, claims_table
from routes.schedule import tick_id
from routes.schedule_store import ScheduleStore
from routes.topology import dlq, route_queue

if TYPE_CHECKING:
    from pathlib import Path

ROUTE = "poll-noop"
INTERVAL_S = 1.0
PONGS = "test.pongs"

ROUTES_YAML = """\
routes:
  - name: poll-noop
    from:
      schedule: {{every: {every}, misfire: run_once}}
    adapter: builtin.tick
    to: noop.poll
    retry: {{backoff: [300ms], max_attempts: 5}}
    concurrency: 1
"""
CONNECTORS_YAML = "connectors:\n  noop:\n    type: noop\n"


def _config(tmp_path: Path, every: str = "1s") -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "routes.yaml").write_text(ROUTES_YAML.format(every=every))
    (folder / "connectors.yaml").write_text(CONNECTORS_YAML)
    return folder


def _bind_pongs(amqp_url: str) -> None:
    """A queue that keeps every ``bus.pong`` result event, to count what the route reported."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.queue_declare(PONGS, durable=True)
        ch.queue_bind(PONGS, "bus.results", "bus.pong")
    finally:
        conn.close()


def _claims(store_url: str) -> list[Any]:
    """Every claim of the route: (event_id, state, attempts, owner)."""
    store = IdempotencyStore(store_url)
    try:
        c = claims_table.c
        with store.begin() as conn:
            return list(conn.execute(sa.select(c.event_id, c.state, c.attempts, c.owner).where(c.route == ROUTE)))
    finally:
        store.close()


def _row(store_url: str) -> Any:
    store = IdempotencyStore(store_url)
    try:
        return ScheduleStore(store).get(ROUTE)
    finally:
        store.close()


def _done(store_url: str) -> int:
    return sum(1 for claim in _claims(store_url) if claim.state == "done")


STATUS_ROUTES = """\
routes:
  - name: poll-noop
    from: {schedule: {every: 5m, misfire: skip}}
    adapter: builtin.tick
    to: noop.poll
  - name: poll-nightly
    from: {schedule: {cron: "0 2 * * *"}}
    adapter: builtin.tick
    to: noop.poll
"""


def test_status_lists_each_schedule(module_amqp_url: str, sqlite_url: str, tmp_path: Path) -> None:
    """poll-noop is held by w1 and ran; poll-nightly was never run: ``nobody``, ``never run``, its next 02:00."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "routes.yaml").write_text(STATUS_ROUTES)
    (config / "connectors.yaml").write_text("connectors:\n  noop:\n    type: noop\n")
    amqp_url = module_amqp_url
    declare_routes(amqp_url, config)
    now = datetime.now(UTC).replace(microsecond=0)
    idem = IdempotencyStore(sqlite_url)
    try:
        store = ScheduleStore(idem)
        store.ensure("poll-noop", now)
        assert store.acquire("poll-noop", "w1", lease_s=600, now=now)
        assert store.advance("poll-noop", "w1", next_run_at=now + timedelta(minutes=5), fired=now, now=now)
        store.record_outcome("poll-noop", "delivered", now=now)
    finally:
        idem.close()
    env = env_for(amqp_url, sqlite_url, config)
    proc = cli("status", "--json", "--no-probe", "--no-stale", "--url", "none", env=env)
    assert proc.returncode == 0, proc.stderr
    schedules = json.loads(proc.stdout)["schedules"]
    assert schedules["ok"], schedules
    by_route = {s["route"]: s for s in schedules["schedules"]}
    held = by_route["poll-noop"]
    assert (held["owner"], held["schedule"], held["misfire"], held["last_outcome"]) == (
        "w1",
        "every 5m",
        "skip",
        "delivered",
    )
    assert datetime.fromisoformat(held["next_run"]) == now + timedelta(minutes=5)
    assert datetime.fromisoformat(held["last_run"]) == now
    never = by_route["poll-nightly"]
    assert (never["owner"], never["last_outcome"]) == (None, "never run")
    assert datetime.fromisoformat(never["next_run"]).astimezone(UTC).hour == 19  # 02:00 in Ho Chi Minh City

    table = cli("status", "--no-probe", "--no-stale", "--url", "none", env=env, columns=200)
    assert table.returncode == 0, table.stderr
    [line] = [row for row in table.stdout.splitlines() if "poll-noop" in row and "every 5m" in row]
    assert "w1" in line
    assert "delivered" in line
    [line] = [row for row in table.stdout.splitlines() if "poll-nightly" in row and "cron" in row]
    assert "nobody" in line
    assert "never run" in line


class TestOneWorker:
    """A worker runs its route's schedule; each tick goes through the pipeline with the route's cursor."""

    def test_ticks_run_once_each_and_carry_the_cursor_on(
        self, module_amqp_url: str, sqlite_url: str, tmp_path: Path
    ) -> None:
        """4+ ticks: each claimed once, the cursor one step per tick, one result per step, status rows filled."""
        amqp_url = module_amqp_url
        config = _config(tmp_path)
        declare_routes(amqp_url, config)
        _bind_pongs(amqp_url)
        with thread_worker(amqp_url, sqlite_url, config) as tw:
            wait_for(lambda: _done(sqlite_url) >= 4, timeout=30, what="4 ticks executed")
            owner = tw.worker.scheduler.owner
        claims = _claims(sqlite_url)
        done = [c for c in claims if c.state == "done"]
        assert [c.attempts for c in claims] == [1] * len(claims), claims
        row = _row(sqlite_url)
        # every executed tick moved the cursor on by one, and nothing else did
        assert (row.cursor, row.cursor_version) == (str(len(done)), len(done))
        assert (row.owner, row.last_outcome) == (owner, "delivered")
        assert row.lease_until <= datetime.now(UTC), "a worker that stopped must hand its schedule over"
        assert row.next_run_at > row.last_scheduled_at
        pongs = [json.loads(body) for _, body in get_all(amqp_url, PONGS)]
        assert sorted(int(p["payload"]["data"]["cursor"]) for p in pongs) == list(range(1, len(done) + 1))
        assert len({p["event_id"] for p in pongs}) == len(pongs)
        assert depth(amqp_url, dlq(ROUTE)) == 0
        get_all(amqp_url, route_queue(ROUTE))  # a tick fired while the worker stopped: the module's vhost is shared


def _grid(first: datetime, last: datetime) -> list[datetime]:
    """Every scheduled time of the route from ``first`` to ``last``."""
    return [first + timedelta(seconds=i * INTERVAL_S) for i in range(round((last - first).total_seconds()) + 1)]


def _fired(log: Path) -> list[tuple[str, str]]:
    """(event_id, scheduled_at) of every ``tick_fired`` a worker logged."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"tick_fired"' in line:
            entry = json.loads(line)
            out.append((entry["event_id"], entry["scheduled_at"]))
    return out


def _done_at_least(store_url: str, n: int) -> bool:
    return _done(store_url) >= n


def _fired_times(log: Path) -> list[datetime]:
    """When a worker logged each ``tick_fired`` (its log's UTC timestamps)."""
    return [
        datetime.fromisoformat(json.loads(line)["timestamp"])
        for line in log.read_text(errors="replace").splitlines()
        if '"tick_fired"' in line
    ]


def _fired_by(store_url: str, owner: str, since: datetime) -> bool:
    """Whether ``owner`` holds the schedule and fired a tick after ``since``."""
    row = _row(store_url)
    return bool(row.owner == owner and row.last_fired_at is not None and row.last_fired_at > since)


def _two_workers_sigkill_holder(
    amqp_url: str, pg_url: str, tmp_path: Path, ticks: int, kills: int = 1
) -> dict[str, Any]:
    """Two worker processes share the schedule; the lease holder is SIGKILLed ``kills`` times, evenly spread
    over ``ticks`` executed ticks, and each time a fresh worker joins in its place."""
    config = _config(tmp_path)
    declare_routes(amqp_url, config)

    def worker(name: str) -> ProcessWorker:
        env = env_for(amqp_url, pg_url, config, IGATE_BUS_WORKER_ID=name, IGATE_BUS_OPS_PORT="0")
        return ProcessWorker(env, tmp_path / f"{name}.log").start()

    workers = {name: worker(name) for name in ("w1", "w2")}
    in_flight: set[str] = set()
    takeovers: list[float] = []
    killed: list[str] = []
    try:
        for w in workers.values():
            w.wait_consuming(1)
        for k in range(kills):
            due = ticks * (k + 1) // (kills + 1)
            wait_for(partial(_done_at_least, pg_url, due), timeout=ticks * 3 + 30, what=f"{due} ticks")
            holder = _row(pg_url).owner
            alive = [n for n, w in workers.items() if n not in killed]
            assert holder in alive, (holder, alive)
            survivor = next(n for n in alive if n != holder)
            in_flight |= {c.event_id for c in _claims(pg_url) if c.state == "in_progress"}
            workers[holder].kill9()
            killed_at = datetime.now(UTC)
            killed.append(holder)
            # guard: the SIGKILL hit the lease holder (its lease was live when it died)
            row = _row(pg_url)
            assert row.owner == holder, f"the lease moved to {row.owner} before the SIGKILL: it missed the holder"
            wait_for(partial(_fired_by, pg_url, survivor, killed_at), timeout=60, what="the survivor firing")
            # when the survivor fired its first tick, by its own log (the test's polling adds nothing to it);
            # the store row is written before the tick_fired line, so wait for the line too
            survivor_log = tmp_path / f"{survivor}.log"
            wait_for(
                lambda: any(at > killed_at for at in _fired_times(survivor_log)),  # noqa: B023 - called at once
                timeout=30,
                what="the survivor's tick_fired line",
            )
            first = min(at for at in _fired_times(survivor_log) if at > killed_at)
            takeovers.append((first - killed_at).total_seconds())
            name = f"w{len(workers) + 1}"
            workers[name] = worker(name)  # a replacement joins, as a supervisor would restart one
            workers[name].wait_consuming(1)
        wait_for(partial(_done_at_least, pg_url, ticks), timeout=ticks * 3 + 30, what=f"{ticks} ticks")
        for name, w in workers.items():
            if name not in killed:
                assert w.terminate() == 0, w.tail()
    finally:
        for w in workers.values():
            w.stop()
    claims = {c.event_id: c for c in _claims(pg_url)}
    fired = [f for name in workers for f in _fired(tmp_path / f"{name}.log")]
    times = sorted({datetime.fromisoformat(at) for _, at in fired})
    return {
        "claims": claims,
        "fired": fired,
        "grid": _grid(times[0], times[-1]),
        "in_flight": in_flight,
        "takeovers": takeovers,
        "killed": killed,
    }


def _assert_exactly_once(result: dict[str, Any], ticks: int) -> None:
    claims, grid = result["claims"], result["grid"]
    # after each SIGKILL, another worker fired the schedule within two intervals (plus the loaded machine's slack)
    for takeover_s in result["takeovers"]:
        assert_within(takeover_s, 2 * INTERVAL_S, "taking the schedule over from the SIGKILLed holder")
    # every scheduled time from the first tick to the last was executed: none lost
    missing = [at for at in grid if tick_id(ROUTE, at) not in claims]
    assert not missing, f"scheduled times never executed: {missing}"
    assert len(grid) >= ticks
    # and each once: one claim per tick id; claimed once, unless the SIGKILL caught it mid-way (then the
    # redelivery reconciled it by lookup before sending again, as every effect is)
    done = [c for c in claims.values() if c.state == "done"]
    twice = [c.event_id for c in done if c.attempts != 1 and c.event_id not in result["in_flight"]]
    assert not twice, f"ticks claimed more than once: {twice}"
    assert len(done) >= len(grid)
    # a tick that both workers fired (the takeover) is still one claim, executed once
    ids = [event_id for event_id, _ in result["fired"]]
    fired_twice = {i for i in ids if ids.count(i) > 1}
    assert all(claims[i].state == "done" and claims[i].attempts == 1 for i in fired_twice - result["in_flight"])
    print(  # the figures of the must-show (pytest -s shows them)
        f"schedule must-show: {len(grid)} scheduled times, {len(done)} ticks executed, "
        f"{len(grid) - len(missing)} with one claim each, fired twice {len(fired_twice)}, "
        f"in flight at the SIGKILLs {len(result['in_flight'])}, SIGKILLed holders {result['killed']}, "
        f"the next fired after {', '.join(f'{t:.2f}' for t in result['takeovers'])} s"
    )


@pytest.mark.timeout(240)
def test_two_workers_sigkill_the_holder(amqp_url: str, pg_url: str, tmp_path: Path) -> None:
    """Must-show, short: ~20 ticks on two workers sharing PostgreSQL, the holder SIGKILLed after 10."""
    result = _two_workers_sigkill_holder(amqp_url, pg_url, tmp_path, ticks=20)
    _assert_exactly_once(result, 20)


@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_two_workers_sigkill_the_holder_100_ticks(amqp_url: str, pg_url: str, tmp_path: Path) -> None:
    """Must-show: 100 ticks, the holder SIGKILLed three times (a fresh worker joining each time); each
    scheduled time executed exactly once."""
    result = _two_workers_sigkill_holder(amqp_url, pg_url, tmp_path, ticks=100, kills=3)
    _assert_exactly_once(result, 100)


def _processed(*logs: Path) -> list[tuple[str, str]]:
    """(event_id, outcome) of every delivery the workers logged as processed."""
    out = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if '"processed"' in line:
                entry = json.loads(line)
                out.append((entry["event_id"], entry["outcome"]))
    return out


@pytest.mark.timeout(180)
def test_a_holder_killed_between_publish_and_record_fires_twice_and_runs_once(
    amqp_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """w1 dies (SIGKILL at ``after_tick_publish``) after its first tick is confirmed, before the store knows.

    w2 takes the schedule over and fires that scheduled time again, with the same id: the tick is in the queue
    twice, executed once and every other copy acked as a duplicate, and the cursor moved one step for it. w1's
    own consumer may have taken the tick in before the crash point: that copy is then redelivered (held while
    w1's claim lease runs, then a duplicate or the one execution), or w1 even executed it, the store says so
    (the claim's owner), while its ``processed`` line may be lost with it (a SIGKILL takes the INFO lines of the
    last 50 ms: ``bus/log_buffer.py``). Every 6 s, so
    that w2, started once w1 holds the schedule, is up before more than two firings are due (more would be a
    misfire, fired once for the latest) even on a loaded 2-CPU machine (3 s flaked there).
    """
    config = _config(tmp_path, every="6s")
    declare_routes(amqp_url, config)
    crashing = env_for(
        amqp_url, sqlite_url, config, IGATE_BUS_WORKER_ID="w1", IGATE_BUS_OPS_PORT="0", IGATE_BUS_TESTING="1"
    )
    w1 = ProcessWorker({**crashing, "IGATE_CRASH_AT": "after_tick_publish"}, tmp_path / "w1.log").start()
    w2 = ProcessWorker(
        env_for(amqp_url, sqlite_url, config, IGATE_BUS_WORKER_ID="w2", IGATE_BUS_OPS_PORT="0"), tmp_path / "w2.log"
    )
    try:
        assert w1.proc is not None
        wait_for(lambda: '"schedule_acquired"' in w1.log_path.read_text(), timeout=60, what="w1 holding the schedule")
        w2.start()
        wait_for(lambda: w1.proc is not None and w1.proc.poll() is not None, timeout=60, what="w1's crash point")
        # guard: w1 died where it was made to, after the publish and before the store recorded the tick
        assert w1.proc.returncode == -9, w1.tail()
        assert '"point": "after_tick_publish"' in (tmp_path / "w1.log").read_text(), w1.tail()
        row = _row(sqlite_url)
        assert (row.owner, row.last_scheduled_at) == ("w1", None)
        first = tick_id(ROUTE, row.next_run_at)
        # w1's own consumer may have claimed that tick before the crash point killed it: the copies w2 gets are
        # then held (retried) until the dead worker's claim lease ends, and executed once after it
        wait_for(
            lambda: (
                _done(sqlite_url) >= 3 and any(c.event_id == first and c.state == "done" for c in _claims(sqlite_url))
            ),
            timeout=120,
            what="3 ticks executed, the re-fired one among them",
        )
        assert w2.terminate() == 0
    finally:
        w1.stop()
        w2.stop()
    assert first in {event_id for event_id, _ in _fired(tmp_path / "w2.log")}, "w2 did not fire the tick again"
    # executed once: one claim, done, by the worker whose outcome says delivered. w2 stopped gracefully, so its log
    # is whole: it acked its own second firing (and w1's unacked copy, redelivered) as duplicates, or executed
    # the tick itself; w1 was SIGKILLed and may have lost the line of an execution the store recorded
    [claim] = [c for c in _claims(sqlite_url) if c.event_id == first]
    assert claim.state == "done", claim
    by_w1 = [outcome for event_id, outcome in _processed(tmp_path / "w1.log") if event_id == first]
    by_w2 = [outcome for event_id, outcome in _processed(tmp_path / "w2.log") if event_id == first]
    outcomes = by_w1 + by_w2
    assert outcomes.count("delivered") <= 1, (by_w1, by_w2)
    assert by_w2.count("duplicate") >= 1, by_w2  # w2's own firing again: acked without running
    executor = claim.owner.split("/")[0]
    if executor == "w2":
        assert by_w2.count("delivered") == 1, (by_w1, by_w2)
    else:
        assert executor == "w1" and "delivered" not in by_w2, (claim.owner, by_w2)
    assert set(outcomes) <= {"delivered", "duplicate", "retry"}, outcomes  # retry: held behind w1's claim
    done = [c for c in _claims(sqlite_url) if c.state == "done"]
    row = _row(sqlite_url)
    assert (row.cursor, row.cursor_version) == (str(len(done)), len(done))
