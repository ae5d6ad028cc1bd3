"""``igate-bus run --processes N``: real worker processes on the real broker, under one supervisor (issue 15).

A child SIGKILLed is restarted and the death logged; one ``/metrics`` adds up every child's counters (the
dead one's too); SIGTERM drains every child and the supervisor exits 0; a configuration the children would
refuse is refused once, by the supervisor.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from busenv import (
    ProcessWorker,
    cli,
    declare_routes,
    depth,
    env_for,
    ping_events,
    publish,
    wait_for,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

from bus.ops_api import HealthReport

if TYPE_CHECKING:
    from pathlib import Path

DELIVERED = re.compile(
    r'^igate_bus_messages_processed_total\{outcome="delivered",route="bus-ping"\} (\S+)$', re.MULTILINE
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - our own localhost URL
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = _get(f"http://127.0.0.1:{port}/health")
    return status, json.loads(body)


def _delivered(port: int) -> float:
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    found = DELIVERED.search(body.decode())
    return float(found.group(1)) if found else 0.0


def _log_lines(worker: ProcessWorker) -> list[dict[str, Any]]:
    out = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _thread_cpus(pid: int) -> set[int]:
    """Every CPU any thread of ``pid`` may run on (read once its threads have started)."""
    out: set[int] = set()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            out |= os.sched_getaffinity(int(task.name))
        except ProcessLookupError:
            continue
    return out


def _two_workers(amqp_url: str, tmp_path: Path, **extra_env: str) -> tuple[ProcessWorker, int]:
    """A supervisor of two workers on ``bus-ping``, both consuming and its health up; and its ops port."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    declare_routes(amqp_url, cfg)
    port = _free_port()
    env = env_for(
        amqp_url,
        f"sqlite:///{tmp_path / 'store.sqlite3'}",  # fresh: both children open it at once
        cfg,
        IGATE_BUS_PROCESSES="2",
        IGATE_BUS_OPS_PORT=str(port),
        **extra_env,
    )
    worker = ProcessWorker(env, tmp_path / "supervisor.log", routes="bus-ping").start()
    try:
        worker.wait_consuming(2, timeout=60)
        wait_for(lambda: _health(port)[0] == 200, timeout=30, what="supervisor health")
    except BaseException:
        worker.stop()
        raise
    return worker, port


def test_two_processes_restart_a_killed_one_aggregate_metrics_and_drain(amqp_url: str, tmp_path: Path) -> None:
    """2 workers ▶ 20 pings ▶ SIGKILL one ▶ restarted, logged ▶ 20 more ▶ /metrics says 40 ▶ SIGTERM ▶ exit 0."""
    worker, port = _two_workers(amqp_url, tmp_path)
    try:
        pids = [w["pid"] for w in _health(port)[1]["workers"]]
        assert len(set(pids)) == 2
        assert worker.proc is not None
        assert worker.proc.pid not in pids
        # --cpu-affinity auto: each child, every thread of it, on a CPU of its own (as /health says)
        cpus = [_thread_cpus(pid) for pid in pids]
        assert all(len(c) == 1 for c in cpus), cpus
        assert [w["cpu"] for w in _health(port)[1]["workers"]] == [min(c) for c in cpus]
        if len(os.sched_getaffinity(0)) >= 2:
            assert cpus[0] != cpus[1], cpus

        publish(amqp_url, ping_events(20))
        wait_for(lambda: _delivered(port) == 20, timeout=60, what="20 delivered in /metrics")

        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: any(e.get("event") == "worker_died" and e.get("pid") == victim for e in _log_lines(worker)),
            timeout=30,
            what="worker_died logged",
        )
        died = next(e for e in _log_lines(worker) if e.get("event") == "worker_died")
        assert died["signal"] == "SIGKILL"
        assert died["restart_in_s"] > 0

        def restarted() -> bool:
            status, body = _health(port)
            now = [w["pid"] for w in body["workers"]]
            return status == 200 and victim not in now and len(set(now)) == 2

        wait_for(restarted, timeout=60, what="the killed worker restarted")
        assert sum(w["restarts"] for w in _health(port)[1]["workers"]) == 1
        worker.wait_consuming(3, timeout=60)  # the new child consumes too
        reborn = _health(port)[1]["workers"][0]["pid"]
        assert _thread_cpus(reborn) == cpus[0]  # a restarted child keeps its slot's CPU

        ready, report = _get(f"http://127.0.0.1:{port}/health/ready")  # what `igate-bus status` reads
        assert ready in {200, 503}
        assert "worker" in HealthReport.model_validate_json(report).checks

        publish(amqp_url, ping_events(20))
        wait_for(lambda: _delivered(port) == 40, timeout=60, what="40 delivered: the dead child's 20 still count")
        assert depth(amqp_url, "route.bus-ping") == 0

        # the series each child computes when scraped: the broker's once, each child's own with its slot
        wait_for(lambda: b"igate_bus_worker_consuming" in _get(f"http://127.0.0.1:{port}/metrics")[1], timeout=30)
        text = _get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        consuming = families["igate_bus_worker_consuming"].samples
        assert sorted(s.labels["worker"] for s in consuming) == ["0", "1"], consuming
        queue = [s for s in families["igate_bus_queue_messages"].samples if s.labels.get("queue") == "route.bus-ping"]
        assert len(queue) == 1 and "worker" not in queue[0].labels, queue
        assert len(families["igate_bus_broker_up"].samples) == 1
        # and /health: each live child's connector states
        assert all(isinstance(w["connectors"], dict) for w in _health(port)[1]["workers"]), _health(port)[1]

        assert worker.terminate(timeout=120) == 0, worker.tail()
        events = [e.get("event") for e in _log_lines(worker)]
        assert events.count("worker_stopped") == 2, worker.tail()
        assert events[-1] == "supervisor_stopped"
    finally:
        worker.stop()


def test_a_config_the_children_would_refuse_is_refused_once(tmp_path: Path) -> None:
    """Crash points without the testing switch ▶ the supervisor exits 2 at once, naming why; no child starts."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    env = env_for(
        "amqp://guest:guest@127.0.0.1:9/%2F",
        f"sqlite:///{tmp_path / 's.sqlite3'}",
        cfg,
        IGATE_BUS_PROCESSES="2",
        IGATE_CRASH_AT="after_claim",
    )
    env.pop("IGATE_BUS_TESTING", None)
    result = cli("run", "--routes", "bus-ping", env=env)
    assert result.returncode == 2
    assert "IGATE_BUS_TESTING" in result.stderr
    assert "worker_started" not in result.stderr


def test_merged_scrape_series_take_the_brokers_once_and_each_childs_own_with_its_slot() -> None:
    """Queue depths are the broker's numbers (one child's reading); breaker states are each child's own."""
    from bus.supervisor import merge_scrape_series

    def child(depth: int, breaker: int) -> list[Any]:
        text = (
            "# TYPE igate_bus_queue_messages gauge\n"
            f'igate_bus_queue_messages{{queue="route.a",route="a",kind="route"}} {depth}\n'
            "# TYPE igate_bus_connector_breaker_state gauge\n"
            f'igate_bus_connector_breaker_state{{connector="igate",state="open"}} {breaker}\n'
            "# TYPE igate_bus_routes_delivered counter\n"
            "igate_bus_routes_delivered_total 5\n"
        )
        return list(text_string_to_metric_families(text))

    merged = {f.name: f for f in merge_scrape_series([(0, child(7, 1)), (1, child(9, 0))], counted=set())}
    assert [(s.labels, s.value) for s in merged["igate_bus_queue_messages"].samples] == [
        ({"queue": "route.a", "route": "a", "kind": "route"}, 7)
    ]
    breaker = merged["igate_bus_connector_breaker_state"].samples
    assert sorted((s.labels["worker"], s.value) for s in breaker) == [("0", 1), ("1", 0)]
    assert "igate_bus_routes_delivered" not in merged  # counters come from the multiprocess files
    counted = {"igate_bus_queue_messages"}
    assert "igate_bus_queue_messages" not in {f.name for f in merge_scrape_series([(0, child(7, 1))], counted=counted)}


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie nobody reaped counts as gone)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


def test_the_workers_end_with_a_supervisor_killed_outright(amqp_url: str, tmp_path: Path) -> None:
    """SIGKILL the supervisor ▶ its two workers are sent SIGTERM by the kernel and drain: no orphan consumers.

    Its metrics folder is the test's (a supervisor killed outright cannot remove the one it makes itself).
    """
    worker, port = _two_workers(amqp_url, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    try:
        pids = [w["pid"] for w in _health(port)[1]["workers"]]
        assert len(pids) == 2 and all(_running(p) for p in pids)
        worker.kill9()
        wait_for(lambda: not any(_running(p) for p in pids), timeout=60, what="the orphaned workers to end")
        stopped = [e for e in _log_lines(worker) if e.get("event") == "worker_stopped"]
        assert len(stopped) == 2, worker.tail()  # each drained and said so, not killed
    finally:
        worker.stop()
        for pid in pids if "pids" in locals() else []:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
