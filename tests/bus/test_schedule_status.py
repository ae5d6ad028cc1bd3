"""``igate-bus status`` shows each schedule: owner, last and next run, last outcome (from the shared store).

Run as an operator runs it (the CLI in a subprocess) against a real broker vhost and a SQLite store that a
"worker" (the store's own calls, as the scheduler makes them) has written.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from busenv import cli, declare_routes, env_for

from routes.idempotency import IdempotencyStore
from routes.schedule_store import ScheduleStore

if TYPE_CHECKING:
    from pathlib import Path

ROUTES = """\
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


def test_status_lists_each_schedule(amqp_url: str, sqlite_url: str, tmp_path: Path) -> None:
    """poll-noop is held by w1 and ran; poll-nightly was never run: ``nobody``, ``never run``, its next 02:00."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "routes.yaml").write_text(ROUTES)
    (config / "connectors.yaml").write_text("connectors:\n  noop:\n    type: noop\n")
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
