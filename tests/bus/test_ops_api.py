# mypy: allow-untyped-defs
"""GET /health and GET /metrics on a real worker: a connector outage seen end to end, and real traffic counted.

Everything is real: the broker (a fresh vhost), the store, the iGate simulator on a socket, the worker in a
thread serving its ops endpoints over HTTP on a free port. The outage is the simulator stopped (and its open
connections cut, as a crashed server's would be), then a new simulator on the same port.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    env_for,
    ping_events,
    publish,
    publish_raw,
    received_events,
    thread_worker,
    wait_for,
    write_config,
)
from fastapi import FastAPI
from opsenv import (
    cli_logging,
    families,
    free_port,
    metric_samples,
    sample,
    status_json,
    stop_hard,
    with_probe_interval,
)
from structlog.testing import capture_logs
from wallclock import SLACK_S  # scheduling and HTTP round trips on a loaded machine, on top of the interval

from bus.ops_api import OpsServer, attach_ops, make_ops, ops_address, router
from bus.wiring import load_app
from config.settings import Settings
from schemas.errors import ConfigError
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

PROBE_INTERVAL_S = 0.5


def config_with_probe_interval(folder: Path, endpoint: str, interval: str = "500ms") -> Path:
    """The test config (busenv) with the igate connector probed every ``interval``."""
    return with_probe_interval(write_config(folder, endpoint=endpoint), interval)


@pytest.fixture
def sim() -> Iterator[IGateSimulator]:
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as s:
        yield s


@pytest.fixture
def ops_port(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_port()
    monkeypatch.setenv("IGATE_BUS_OPS_PORT", str(port))
    return port


class Timeline:
    """The states a poller saw, with when it first saw each, for checking order and timing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def add(self, state: str) -> None:
        if not self.seen or self.seen[-1][0] != state:
            self.seen.append((state, time.monotonic()))

    def first(self, state: str, after: float) -> float | None:
        return next((t for s, t in self.seen if s == state and t >= after), None)

    def states(self) -> list[str]:
        return [s for s, _ in self.seen]


def poll_until(target: str, polls: list[tuple[Timeline, Callable[[], str]]], timeout: float) -> None:
    """Poll every source (recording what each says) until each has said ``target``."""
    deadline = time.monotonic() + timeout
    done: set[int] = set()
    while time.monotonic() < deadline and len(done) < len(polls):
        for i, (timeline, read) in enumerate(polls):
            if i in done:
                continue
            timeline.add(read())
            if timeline.seen[-1][0] == target:
                done.add(i)
        time.sleep(0.02)
    assert len(done) == len(polls), f"not every source said {target} within {timeout}s: " + "; ".join(
        str(t.states()) for t, _ in polls
    )


def test_a_connector_whose_simulator_goes_down_is_degraded_then_down_then_up_again(
    amqp_url, sqlite_url, tmp_path, sim, ops_port, monkeypatch
):
    """Simulator stopped ▶ /health and status say degraded then down within the probe interval; back ▶ up."""
    cfg = config_with_probe_interval(tmp_path / "cfg", sim.url)
    env = env_for(amqp_url, sqlite_url, cfg, IGATE_BUS_OPS_PORT=str(ops_port))
    base = f"http://127.0.0.1:{ops_port}"
    health = Timeline()
    cli = Timeline()

    def health_state() -> str:
        return str(httpx.get(f"{base}/health", timeout=2).json()["connectors"]["igate"]["state"])

    def status_state() -> str:
        report = status_json(env)
        [row] = [c for c in report["connectors"] if c["name"] == "igate"]
        assert row["source"] == "bus", report["bus"]
        return str(row["state"])

    polls = [(health, health_state), (cli, status_state)]
    with cli_logging(monkeypatch), capture_logs() as logs, thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ack"]):
        # Given a bus whose iGate answers
        poll_until("up", polls, timeout=5)
        assert httpx.get(f"{base}/health/ready", timeout=5).status_code == 200

        # When the simulator goes away
        port = sim.port
        stopped = time.monotonic()
        stop_hard(sim)
        poll_until("down", polls, timeout=2 * PROBE_INTERVAL_S + 3 * SLACK_S)

        # Then both said degraded first, within one interval, and down within two
        for timeline in (health, cli):
            degraded, down = timeline.first("degraded", stopped), timeline.first("down", stopped)
            assert degraded is not None, f"degraded never seen: {timeline.states()}"
            assert down is not None and degraded < down
            assert degraded - stopped <= PROBE_INTERVAL_S + SLACK_S
            assert down - stopped <= 2 * PROBE_INTERVAL_S + SLACK_S
        ready = httpx.get(f"{base}/health/ready", timeout=5)
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False
        assert body["checks"]["broker"]["ok"] is True
        assert body["checks"]["store"]["ok"] is True
        assert body["checks"]["connectors"] == {"ok": False, "detail": "down: igate", "latency_ms": None}
        assert body["connectors"]["igate"]["probe_failures"] >= 2

        # When a simulator is back on the same port
        back = IGateSimulator(port=port, username=SIM_USER, password=SIM_PASSWORD).start()
        try:
            returned = time.monotonic()
            poll_until("up", polls, timeout=PROBE_INTERVAL_S + 3 * SLACK_S)
            for timeline in (health, cli):
                up = timeline.first("up", returned)
                assert up is not None and up - returned <= PROBE_INTERVAL_S + SLACK_S
            assert httpx.get(f"{base}/health/ready", timeout=5).status_code == 200
        finally:
            back.stop()

    # And each change was logged once, as a structured event
    changes = [(e["old"], e["new"]) for e in logs if e["event"] == "connector_state_changed"]
    assert changes == [("unknown", "up"), ("up", "degraded"), ("degraded", "down"), ("down", "up")]
    assert all(e["connector"] == "igate" for e in logs if e["event"] == "connector_state_changed")


def test_metrics_count_real_traffic_per_route_and_readiness_reports_queues(
    amqp_url, sqlite_url, tmp_path, sim, ops_port
):
    """Notes, pings and a bad event through a worker ▶ per-route counters, histograms, queue gauges, health."""
    cfg = config_with_probe_interval(tmp_path / "cfg", sim.url, interval="5s")
    base = f"http://127.0.0.1:{ops_port}"
    notes, pings = received_events(20), ping_events(5)
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ack", "bus-ping"]) as tw:
        before = metric_samples(httpx.get(f"{base}/metrics", timeout=5).text)
        assert sample(before, "igate_bus_messages_processed_total", route="bus-ack", outcome="delivered") == 0.0

        publish(amqp_url, notes + pings)
        publish_raw(amqp_url, b"{not json", routing_key="dossier.received", message_id="bad-1")
        wait_for(
            lambda: tw.worker.stats["bus-ack"].acked >= 21 and tw.worker.stats["bus-ping"].acked >= 5,
            timeout=30,
            what="every delivery acked",
        )
        reply = httpx.get(f"{base}/metrics", timeout=5)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain; version=")

        def scraped_dlq_depth() -> float | None:
            # queue figures may come from a scrape up to INSPECT_CACHE_S old
            text = httpx.get(f"{base}/metrics", timeout=5).text
            return sample(
                metric_samples(text), "igate_bus_queue_messages", queue="dlq.bus-ack", route="bus-ack", kind="dlq"
            )

        wait_for(lambda: scraped_dlq_depth() == 1.0, timeout=5, what="the dead letter in the queue gauges")
        text = httpx.get(f"{base}/metrics", timeout=5).text
        after = metric_samples(text)

    def value(name: str, **labels: str) -> float | None:
        return sample(after, name, **labels)

    assert value("igate_bus_messages_processed_total", route="bus-ack", outcome="delivered") == 20.0
    assert value("igate_bus_messages_processed_total", route="bus-ack", outcome="dead_lettered") == 1.0
    assert value("igate_bus_messages_processed_total", route="bus-ping", outcome="delivered") == 5.0
    assert value("igate_bus_messages_dead_lettered_total", route="bus-ack") == 1.0
    assert value("igate_bus_messages_retried_total", route="bus-ack") == 0.0
    assert value("igate_bus_messages_failed_total", route="bus-ack", error_kind="invalid") == 1.0
    assert value("igate_bus_processing_seconds_count", route="bus-ack", outcome="delivered") == 20.0
    assert value("igate_bus_connector_call_seconds_count", connector="igate", operation="add_note", result="ok") == (
        20.0
    )
    assert value("igate_bus_connector_call_seconds_count", connector="noop", operation="send", result="ok") == 5.0
    assert value("igate_bus_deliveries_received_total", route="bus-ack") == 21.0
    assert value("igate_bus_deliveries_acked_total", route="bus-ping") == 5.0
    assert value("igate_bus_worker_consuming") == 1.0
    assert value("igate_bus_broker_up") == 1.0
    assert value("igate_bus_queue_messages", queue="route.bus-ack", route="bus-ack", kind="route") == 0.0
    assert value("igate_bus_queue_consumers", queue="route.bus-ack", route="bus-ack", kind="route") == 1.0
    assert value(
        "igate_bus_queue_oldest_message_age_seconds", queue="route.bus-ack", route="bus-ack", kind="route"
    ) == (0.0)
    assert value("igate_bus_queue_messages", queue="dlq.bus-ack", route="bus-ack", kind="dlq") == 1.0
    dlq_age = value("igate_bus_queue_oldest_message_age_seconds", queue="dlq.bus-ack", route="bus-ack", kind="dlq")
    assert dlq_age is not None and 0.0 <= dlq_age < 60
    assert value("igate_bus_queue_messages", queue="retry.bus-ack.300ms", route="bus-ack", kind="retry") == 0.0
    assert value("igate_bus_connector_state", connector="igate", state="up") == 1.0
    assert value("igate_bus_connector_state", connector="igate", state="down") == 0.0
    assert value("igate_bus_connector_breaker_state", connector="igate", state="closed") == 1.0
    assert value("igate_bus_connector_error_rate", connector="igate") == 0.0
    # a worker exports what it does: none of the ingress's series
    assert [f for f in families(text) if f.startswith("igate_bus_ingress_")] == []
    p95 = value("igate_bus_connector_latency_p95_seconds", connector="igate")
    assert p95 is not None and 0 < p95 < 30  # seconds, not milliseconds; how fast is bench/'s question
    # the peek that measured the DLQ's age put the dead letter back
    from busenv import depth

    assert depth(amqp_url, "dlq.bus-ack") == 1


def test_readiness_reports_route_queues_and_the_worker(amqp_url, sqlite_url, tmp_path, sim, ops_port):
    """/health?ready=1 and /health/ready: 200 with broker, store, worker checks and each route's queues."""
    cfg = config_with_probe_interval(tmp_path / "cfg", sim.url, interval="5s")
    base = f"http://127.0.0.1:{ops_port}"
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ack"]):
        publish_raw(amqp_url, b"[]", routing_key="dossier.received", message_id="bad-2")
        wait_for(
            lambda: httpx.get(f"{base}/health/ready", timeout=5).json()["routes"][0]["dlq"]["depth"] == 1,
            timeout=10,
            what="the dead letter in readiness",
        )
        live = httpx.get(f"{base}/health", timeout=5)
        ready = httpx.get(f"{base}/health", params={"ready": "1"}, timeout=5)
    assert live.status_code == 200
    assert live.json()["ready"] is None and live.json()["routes"] == []
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["status"] == "up"
    assert set(body["checks"]) == {"broker", "store", "worker"}
    assert body["checks"]["worker"] == {"ok": True, "detail": "consuming every route", "latency_ms": None}
    [route] = body["routes"]
    assert route["name"] == "bus-ack" and route["connector"] == "igate" and route["state"] == "up"
    assert route["queue"] == {"queue": "route.bus-ack", "depth": 0, "consumers": 1, "oldest_age_s": 0.0}
    assert [q["queue"] for q in route["retry"]] == ["retry.bus-ack.300ms", "retry.bus-ack.600ms"]
    assert route["dlq"]["depth"] == 1 and route["dlq"]["oldest_age_s"] is not None


def test_the_router_in_another_app_documents_its_models_and_fails_readiness_without_a_broker(tmp_path):
    """An ingress-style app including the router: OpenAPI has the models; no broker ▶ live 200, ready 503."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    settings = Settings(
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        store_url=f"sqlite:///{tmp_path / 'store.sqlite3'}",
        config_dir=cfg,
    )
    app = load_app(settings)
    ops = make_ops(app, connectors=["noop"], ready_needs_connectors=False)
    api = FastAPI()
    api.include_router(router)
    server = OpsServer(api, "127.0.0.1", 0)
    assert server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/health").status_code == 503  # nothing attached yet: says so, no crash
            attach_ops(api, ops)
            schema = client.get("/openapi.json").json()
            live = client.get("/health")
            ready = client.get("/health/ready")
            metrics = client.get("/metrics")
    finally:
        server.stop()
        ops.stop()
        app.close()
    assert {"HealthReport", "ConnectorStatus", "RouteStatus", "Check"} <= set(schema["components"]["schemas"])
    assert "503" in schema["paths"]["/health/ready"]["get"]["responses"]
    assert live.status_code == 200 and live.json()["connectors"]["noop"]["state"] == "unknown"
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["store"]["ok"] is True  # reachable: the check made the missing table, as a worker would
    assert metrics.status_code == 200
    assert "igate_bus_broker_up 0.0" in metrics.text
    assert 'igate_bus_messages_processed_total{outcome="delivered",route="bus-ack"} 0.0' in metrics.text


def test_ops_address_reads_the_environment():
    """Default 127.0.0.1:8610; 0 disables; a bad port is a ConfigError naming the variable."""
    assert ops_address({}) == ("127.0.0.1", 8610)
    assert ops_address({"IGATE_BUS_OPS_PORT": "0", "IGATE_BUS_OPS_HOST": "0.0.0.0"}) == ("0.0.0.0", 0)
    with pytest.raises(ConfigError, match="IGATE_BUS_OPS_PORT"):
        ops_address({"IGATE_BUS_OPS_PORT": "eighty"})
    with pytest.raises(ConfigError, match="IGATE_BUS_OPS_PORT"):
        ops_address({"IGATE_BUS_OPS_PORT": "70000"})


def test_a_taken_port_leaves_the_worker_running_without_its_server(amqp_url, sqlite_url, tmp_path, sim, monkeypatch):
    """IGATE_BUS_OPS_PORT already in use ▶ a warning, and the worker still consumes and delivers."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        monkeypatch.setenv("IGATE_BUS_OPS_PORT", str(taken.getsockname()[1]))
        cfg = config_with_probe_interval(tmp_path / "cfg", sim.url, interval="5s")
        with capture_logs() as logs, thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ack"]) as tw:
            publish(amqp_url, received_events(2))
            wait_for(lambda: len(sim.effect_counts()) == 2, timeout=10, what="2 notes")
            assert tw.app.ops is not None and tw.app.ops.server is None
    assert any(e["event"] == "ops_server_unavailable" for e in logs)
