# mypy: allow-untyped-defs
"""The breaker's state reaches health and the log when it changes, not at the next probe (issue 10 item 3).

A real worker in a thread serving ``/health`` over HTTP, the real broker and store, the iGate simulator
answering 503 on a socket; the probe runs at start only (every 60 s), so whatever says ``down`` is the breaker.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from busenv import SIM_PASSWORD, SIM_USER, publish, received_events, thread_worker, wait_for, write_config
from opsenv import free_port, with_probe_interval
from structlog.testing import capture_logs

from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator, MutableMapping

ROUTE = "bus-ack"
NOTES = "/pa/dossier/"
FAIL_MAX = 3


@pytest.fixture
def sim() -> Iterator[IGateSimulator]:
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as s:
        yield s


def test_health_says_down_when_the_breaker_opens_and_leaves_down_when_it_closes_not_at_the_next_probe(
    amqp_url, sqlite_url, tmp_path, sim, monkeypatch
):
    """Probe every 60 s; the breaker opens ▶ connector_state_changed up→down logged and /health down within
    ~1 s of breaker_opened; iGate back, the breaker closes ▶ /health leaves down within ~1 s of breaker_closed."""
    port = free_port()
    monkeypatch.setenv("IGATE_BUS_OPS_PORT", str(port))
    cfg = with_probe_interval(
        write_config(tmp_path / "cfg", endpoint=sim.url, backoff="1s", fail_max=FAIL_MAX, reset_timeout="2s"),
        "60s",
    )
    base = f"http://127.0.0.1:{port}"

    def stamp(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event["mono"] = time.monotonic()
        return event

    def health() -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{base}/health", timeout=2).json()["connectors"]["igate"]
        return body

    def first_state(leave: str | None = None, reach: str | None = None, timeout: float = 10) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = health()["state"]
            if (reach is not None and state == reach) or (leave is not None and state != leave):
                return time.monotonic()
            time.sleep(0.02)
        raise AssertionError(f"/health never {'reached ' + reach if reach else 'left ' + str(leave)}")

    with capture_logs(processors=[stamp]) as logs, thread_worker(amqp_url, sqlite_url, cfg, routes=[ROUTE]):
        wait_for(lambda: health()["state"] == "up", timeout=10, what="iGate up at start")
        probed_at = health()["probe"]["checked_at"]
        sim.set_faults(error_rate=1.0, error_status=503, only_paths=[NOTES])
        publish(amqp_url, received_events(FAIL_MAX + 2, prefix="HLT"))
        down_seen = first_state(reach="down")
        body = health()
        assert "circuit breaker is open" in body["detail"] and "503" in body["detail"]
        sim.set_faults()
        up_seen = first_state(leave="down")  # the next trial (after 2 s) closes it
        # /health may leave down as the trial starts (half-open): keep the worker until the close is logged
        wait_for(lambda: any(e["event"] == "breaker_closed" for e in logs), timeout=15, what="breaker_closed logged")
        assert health()["probe"]["checked_at"] == probed_at, "a probe ran: it, not the breaker, may have said it"

    def at(event: str, **match: str) -> float:
        found = [e["mono"] for e in logs if e["event"] == event and all(e.get(k) == v for k, v in match.items())]
        assert found, f"no {event} {match} logged"
        return float(found[0])

    opened, closed = at("breaker_opened", connector="igate"), at("breaker_closed", connector="igate")
    said_down = at("connector_state_changed", connector="igate", new="down")
    said_up = [e["mono"] for e in logs if e["event"] == "connector_state_changed" and e.get("old") == "down"]
    print(
        f"\n  breaker opened ▶ logged down {said_down - opened:+.3f} s, /health down {down_seen - opened:+.3f} s;"
        f" closed ▶ logged {said_up[0] - closed:+.3f} s, /health {up_seen - closed:+.3f} s"
    )
    assert 0 <= said_down - opened <= 1.0
    assert down_seen - opened <= 1.0
    assert said_up and 0 <= said_up[0] - closed <= 1.0
    assert up_seen - closed <= 1.0
