# mypy: allow-untyped-defs
"""``igate-bus status``: connectors and routes in one table, from the running bus, probes now and the broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    declare_routes,
    env_for,
    publish,
    publish_raw,
    received_events,
    thread_worker,
    wait_for,
    write_config,
)
from opsenv import cli_logging, free_port, invoke_status, status_json

from bus.cli_status import human_age
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def sim() -> Iterator[IGateSimulator]:
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as s:
        yield s


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with cli_logging(monkeypatch):
        yield


invoke = invoke_status
as_json = status_json


def route(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One route's row."""
    rows: list[dict[str, Any]] = [r for r in report["routes"] if r["name"] == name]
    assert len(rows) == 1
    return rows[0]


def connector(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One connector's row."""
    rows: list[dict[str, Any]] = [c for c in report["connectors"] if c["name"] == name]
    assert len(rows) == 1
    return rows[0]


def test_without_a_bus_status_probes_now_and_reads_depths_and_the_dlq(amqp_url, sqlite_url, tmp_path, sim, monkeypatch):
    """No bus answering ▶ states from probes run now; depths, consumers, DLQ size and age from the broker."""
    monkeypatch.setenv("IGATE_BUS_OPS_PORT", "0")
    cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
    env = env_for(amqp_url, sqlite_url, cfg, IGATE_BUS_OPS_PORT="0")
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ack"]):
        publish_raw(amqp_url, b"{", routing_key="dossier.received", message_id="bad-1")
        wait_for(lambda: route(as_json(env), "bus-ack")["dlq"]["depth"] == 1, timeout=10, what="a dead letter")
        report = as_json(env)
        table = invoke(env)

    assert report["bus"] == {"url": None, "reachable": False, "ready": None, "error": None}
    assert report["broker"]["ok"] is True
    igate = connector(report, "igate")
    assert (igate["state"], igate["source"]) == ("up", "probe")
    assert igate["probe"]["state"] == "up" and igate["probe"]["latency_ms"] is not None
    assert connector(report, "noop")["state"] == "up"
    ack = route(report, "bus-ack")
    assert ack["state"] == "up" and ack["connector"] == "igate"
    assert ack["queue"] == {"queue": "route.bus-ack", "depth": 0, "consumers": 1, "oldest_age_s": 0.0}
    assert [q["depth"] for q in ack["retry"]] == [0, 0]
    assert ack["dlq"]["depth"] == 1
    assert 0 <= ack["dlq"]["oldest_age_s"] < 60
    ping = route(report, "bus-ping")
    assert ping["queue"]["consumers"] == 0  # declared, but this worker runs bus-ack only

    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert any("connector" in line and "igate" in line and "up" in line for line in lines), table.stdout
    assert any("route" in line and "bus-ack" in line for line in lines), table.stdout
    assert "bus: not asked" in table.stdout


def test_a_stopped_target_is_down_at_once_for_a_probe_and_a_dead_broker_is_reported(tmp_path, amqp_url, sim):
    """Probe now against a closed port ▶ down; broker unreachable ▶ reported, still exit 0; bad port ▶ exit 2."""
    cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
    declare_routes(amqp_url, cfg)
    dead_url = f"http://127.0.0.1:{free_port()}"
    env = env_for(amqp_url, "sqlite:///unused.sqlite3", cfg)
    sim.stop()

    report = as_json(env, "--url", dead_url)
    assert report["bus"]["reachable"] is False
    assert report["bus"]["error"]
    igate = connector(report, "igate")
    assert (igate["state"], igate["source"]) == ("down", "probe")
    assert "unavailable" in igate["detail"]
    assert route(report, "bus-ack")["state"] == "down"
    assert route(report, "bus-ack")["queue"]["depth"] == 0

    broker_down = env_for(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", "sqlite:///unused.sqlite3", cfg)
    report = as_json(broker_down, "--url", "none", "--no-probe")
    assert report["broker"]["ok"] is False
    assert report["routes"] == []
    assert {c["state"] for c in report["connectors"]} == {"unknown"}

    bad = invoke(dict(env, IGATE_BUS_OPS_PORT="http"), "--json")
    assert bad.exit_code == 2
    assert "IGATE_BUS_OPS_PORT" in bad.stderr


def test_with_a_running_bus_status_shows_its_view_and_the_age_of_a_backlog(
    amqp_url, sqlite_url, tmp_path, sim, monkeypatch
):
    """A busy route (slow target, one at a time) ▶ status shows depth and a head age that grows, from the bus."""
    port = free_port()
    monkeypatch.setenv("IGATE_BUS_OPS_PORT", str(port))
    cfg = write_config(tmp_path / "cfg", endpoint=sim.url, prefetch=1, concurrency=1)
    env = env_for(amqp_url, sqlite_url, cfg, IGATE_BUS_OPS_PORT=str(port))
    sim.set_faults(latency_s=0.3, only_paths=["/pa/dossier/000"])
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ack"]):
        published = time.time()
        publish(amqp_url, received_events(12))
        wait_for(lambda: len(sim.effect_counts()) >= 3, timeout=10, what="the first notes")
        report = as_json(env)
        waited = time.time() - published
        sim.set_faults()

    assert report["bus"]["reachable"] is True and report["bus"]["ready"] is True
    igate = connector(report, "igate")
    assert igate["source"] == "bus"
    assert igate["breaker"] == "closed"
    assert igate["p95_ms"] is not None and igate["p95_ms"] >= 300
    assert igate["probe"]["state"] == "up"
    queue = route(report, "bus-ack")["queue"]
    assert queue["consumers"] == 1
    assert queue["depth"] >= 1
    # the bus's estimate: never older than the backlog really is (publish timestamps have 1 s resolution)
    assert queue["oldest_age_s"] is not None
    assert 0 < queue["oldest_age_s"] <= waited + 1.0


def test_human_age():
    """Ages read at a glance."""
    assert [human_age(x) for x in (None, 0.4, 42, 185, 7620, 273600)] == ["-", "0s", "42s", "3m05s", "2h07m", "3d04h"]


def test_the_checks_own_log_lines_come_after_the_table_not_inside_it(amqp_url, tmp_path):
    """A target down and queues never declared ▶ probe and pika warnings, all after the table, with a count.

    stdout and stderr are one stream here, as on a terminal, where the warnings used to land mid-table.
    """
    cfg = write_config(tmp_path / "cfg", endpoint=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    env = env_for(amqp_url, "sqlite:///unused.sqlite3", cfg, IGATE_BUS_OPS_PORT="0", COLUMNS="80")
    merged = subprocess.run(
        [sys.executable, "-m", "bus.cli", "status", "--url", "none"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    lines = merged.splitlines()
    table_end = max(i for i, line in enumerate(lines) if line.startswith("└"))
    report_end = max(i for i, line in enumerate(lines) if line.startswith("broker:"))
    assert table_end < report_end
    assert not [line for line in lines[:report_end] if line.lstrip().startswith("{")], merged
    [header] = [i for i, line in enumerate(lines) if line.startswith("-- ") and "log line(s) while checking" in line]
    assert header > report_end
    logged = [json.loads(line) for line in lines[header + 1 :] if line.startswith("{")]
    assert any(x.get("connector") == "igate" for x in logged), "the probe's warning was lost"
    assert any("NOT_FOUND" in str(x.get("event")) for x in logged), "pika's warning was lost"
    assert int(lines[header].split()[1]) == len(logged)
