# mypy: allow-untyped-defs
"""Connector health: the state table, live error rate and p95, probes with timeouts, one log line per change."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs
from wallclock import assert_within

from bus.health import HealthMonitor, derive_state, is_failure, percentile
from bus.metrics import HeadAges
from connectors.base import Health
from schemas.errors import BreakerOpen, TargetRejected, TargetTimeout, TargetUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterator


class FakeConnector:
    """A connector whose probe answers what the test says, and whose breaker the test sets."""

    def __init__(self, name: str = "igate") -> None:
        self.name = name
        self.answer = Health("up", "answered", 3.0, None)
        self.breaker_state = "closed"
        self.hang = threading.Event()
        self.probes = 0

    def operations(self):
        return {}

    def probe(self) -> Health:
        self.probes += 1
        if self.hang.is_set():
            time.sleep(1.0)
        return self.answer

    def close(self) -> None:
        pass


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def conn() -> FakeConnector:
    return FakeConnector()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monitor(conn: FakeConnector, clock: Clock) -> Iterator[HealthMonitor]:
    m = HealthMonitor({"igate": conn}, intervals={"igate": 0.2}, probe_timeouts={"igate": 0.1}, clock=clock)
    yield m
    m.stop()


class TestDeriveState:
    """The table in bus/health.py, row by row."""

    def test_an_open_breaker_is_down_even_with_a_good_probe(self):
        """Breaker open ▶ down, whatever the probe said."""
        state, detail = derive_state(
            probe=Health("up", "ok"), probe_failures=0, breaker="open", error_rate=0.0, calls=10
        )
        assert (state, detail) == ("down", "the circuit breaker is open")

    def test_one_failed_probe_is_degraded_and_two_are_down(self):
        """Probes failing in a row: 1 ▶ degraded, down_after ▶ down, with the probe's detail."""
        failed = Health("down", "unavailable: refused")
        assert derive_state(probe=failed, probe_failures=1, breaker="closed", error_rate=None, calls=0) == (
            "degraded",
            "the last probe failed: unavailable: refused",
        )
        state, detail = derive_state(probe=failed, probe_failures=2, breaker="closed", error_rate=None, calls=0)
        assert state == "down"
        assert detail.startswith("2 probes failed in a row")
        state, _ = derive_state(
            probe=failed, probe_failures=2, breaker="closed", error_rate=None, calls=0, down_after=3
        )
        assert state == "degraded"

    def test_half_open_breaker_error_rate_and_slow_probe_are_degraded(self):
        """Half-open, error rate over 20 %, or a probe that says degraded ▶ degraded."""
        ok = Health("up", "ok")
        assert derive_state(probe=ok, probe_failures=0, breaker="half-open", error_rate=None, calls=0)[0] == (
            "degraded"
        )
        state, detail = derive_state(probe=ok, probe_failures=0, breaker="closed", error_rate=0.25, calls=8)
        assert (state, detail) == ("degraded", "25% of the last 8 calls failed")
        assert derive_state(probe=ok, probe_failures=0, breaker="closed", error_rate=0.2, calls=10)[0] == "up"
        slow = Health("degraded", "slow: over 2000 ms")
        assert derive_state(probe=slow, probe_failures=0, breaker=None, error_rate=None, calls=0) == (
            "degraded",
            "slow: over 2000 ms",
        )

    def test_nothing_known_is_unknown_and_calls_alone_make_it_up(self):
        """No probe and no call ▶ unknown; answered live calls without a probe ▶ up."""
        assert derive_state(probe=None, probe_failures=0, breaker=None, error_rate=None, calls=0)[0] == "unknown"
        assert derive_state(probe=None, probe_failures=0, breaker=None, error_rate=0.0, calls=6)[0] == "up"


def test_percentile_and_failure_classification():
    """Nearest-rank p95; transient errors fail, a 4xx is an answer, an open breaker reached nothing."""
    assert percentile([], 0.95) is None
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert percentile([0.3], 0.95) == 0.3
    assert is_failure(None) is False
    assert is_failure(TargetTimeout("slow")) is True
    assert is_failure(TargetUnavailable("503")) is True
    assert is_failure(TargetRejected("400", code="400")) is False
    assert is_failure(ValueError("a bug")) is False
    assert is_failure(BreakerOpen("open")) is None


class TestLiveCalls:
    """The error rate and p95 over the window of live calls."""

    def test_error_rate_over_20_percent_degrades_and_ages_out_of_the_window(self, monitor, clock):
        """3 failures in 10 calls ▶ degraded with rate 0.3; a window later they are forgotten ▶ up."""
        monitor.probe("igate")
        for i in range(10):
            monitor.record_call("igate", 0.01 * (i + 1), TargetUnavailable("503") if i < 3 else None)
        h = monitor.snapshot()["igate"]
        assert (h.state, h.error_rate, h.calls) == ("degraded", 0.3, 10)
        assert h.p95_ms == 100.0
        assert h.last_success is not None and h.last_failure is not None
        clock.now += monitor.window_s + 1
        h = monitor.snapshot()["igate"]
        assert (h.state, h.calls, h.error_rate, h.p95_ms) == ("up", 0, None, None)

    def test_too_few_calls_and_breaker_open_calls_do_not_count(self, monitor):
        """4 failures are below min_calls; BreakerOpen is not a call; unknown connectors are ignored."""
        monitor.probe("igate")
        for _ in range(4):
            monitor.record_call("igate", 0.5, TargetTimeout("slow"))
        for _ in range(20):
            monitor.record_call("igate", 0.0, BreakerOpen("open"))
        monitor.record_call("nobody", 0.1, None)
        h = monitor.snapshot()["igate"]
        assert (h.state, h.calls, h.error_rate) == ("up", 4, None)
        assert list(monitor.snapshot()) == ["igate"]

    def test_the_breaker_is_read_from_the_connector(self, monitor, conn):
        """breaker_state open ▶ down; half-open ▶ degraded; closed again ▶ up."""
        monitor.probe("igate")
        conn.breaker_state = "open"
        assert monitor.snapshot()["igate"].state == "down"
        conn.breaker_state = "half-open"
        assert monitor.snapshot()["igate"].breaker == "half-open"
        assert monitor.snapshot()["igate"].state == "degraded"
        conn.breaker_state = "closed"
        assert monitor.snapshot()["igate"].state == "up"

    def test_a_message_dead_lettered_for_garbage_degrades_at_once_for_a_window(self, monitor, clock):
        """record_garbled ▶ degraded now (logged once, naming garbage) even with a good probe; a window later ▶ up."""
        monitor.probe("igate")
        with capture_logs() as logs:
            monitor.record_garbled("igate", "3 replies the connector refused for this message; the last: DOCTYPE")
        h = monitor.snapshot()["igate"]
        assert h.state == "degraded"
        assert "answers garbage" in h.detail and "DOCTYPE" in h.detail
        changes = [x for x in logs if x["event"] == "connector_state_changed"]
        assert [(x["old"], x["new"]) for x in changes] == [("up", "degraded")]
        monitor.record_garbled("nobody", "ignored")
        clock.now += monitor.window_s + 1
        assert monitor.snapshot()["igate"].state == "up"

    def test_garbage_does_not_hide_a_worse_state(self):
        """An open breaker or failed probes still read down."""
        assert derive_state(probe=None, probe_failures=0, breaker="open", error_rate=None, calls=0, garbled="x")[0] == (
            "down"
        )
        assert derive_state(probe=None, probe_failures=0, breaker=None, error_rate=None, calls=0, garbled="x") == (
            "degraded",
            "answers garbage: a message was dead-lettered after x",
        )


class TestProbes:
    """Probes: failures in a row, timeouts, and the log line on each change."""

    def test_states_follow_the_probes_and_each_change_is_logged_once(self, monitor, conn):
        """up ▶ degraded ▶ down ▶ up, each logged once as connector_state_changed with old, new and reason."""
        with capture_logs() as logs:
            assert monitor.snapshot()["igate"].state == "unknown"
            monitor.probe("igate")
            conn.answer = Health("down", "unavailable: connection refused", 1.0, None)
            monitor.probe("igate")
            monitor.snapshot()
            monitor.probe("igate")
            monitor.probe("igate")
            conn.answer = Health("up", "answered", 2.0, None)
            monitor.probe("igate")
            monitor.snapshot()
        changes = [(e["old"], e["new"]) for e in logs if e["event"] == "connector_state_changed"]
        assert changes == [("unknown", "up"), ("up", "degraded"), ("degraded", "down"), ("down", "up")]
        down = next(e for e in logs if e["event"] == "connector_state_changed" and e["new"] == "down")
        assert down["connector"] == "igate"
        assert down["log_level"] == "warning"
        assert "connection refused" in down["reason"]
        h = monitor.snapshot()["igate"]
        assert h.probe_failures == 0
        assert h.probe is not None and h.probe.latency_ms == 2.0

    def test_a_probe_that_hangs_counts_as_failed_and_is_not_started_twice(self, monitor, conn):
        """A probe past its timeout ▶ failed; while it still runs the next one fails at once, no pile-up."""
        conn.hang.set()
        started = time.monotonic()
        first = monitor.probe("igate")
        assert_within(time.monotonic() - started, 0.1, "a probe hanging past its 0.1 s timeout")
        assert first.state == "down"
        assert "no answer within 0.1s" in first.detail
        second = monitor.probe("igate")
        assert second.detail == "the previous probe is still running"
        assert conn.probes == 1
        assert monitor.snapshot()["igate"].state == "down"

    def test_a_probe_that_raises_is_down(self, clock):
        """probe() must not raise; one that does is a down answer carrying the exception."""

        class Broken(FakeConnector):
            def probe(self) -> Health:
                raise RuntimeError("boom")

        m = HealthMonitor({"x": Broken("x")}, down_after=1, clock=clock)
        try:
            health = m.probe("x")
        finally:
            m.stop()
        assert health.state == "down"
        assert health.detail == "probe raised RuntimeError: boom"
        assert m.snapshot()["x"].state == "down"

    def test_the_scheduler_probes_at_start_and_on_the_interval(self, conn):
        """start() probes at once, then every interval; stop() ends it."""
        m = HealthMonitor({"igate": conn}, intervals={"igate": 0.2})
        m.start()
        try:
            deadline = time.monotonic() + 3
            while conn.probes < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert conn.probes >= 3
            assert m.snapshot()["igate"].state == "up"
            assert m.snapshot()["igate"].probe_interval_s == 0.2
        finally:
            m.stop()
        seen = conn.probes
        time.sleep(0.5)
        assert conn.probes <= seen + 1  # at most one run that had already begun

    def test_as_dict_is_json_ready(self, monitor):
        """The snapshot renders with ISO datetimes and the probe nested."""
        monitor.probe("igate")
        d = monitor.snapshot()["igate"].as_dict()
        assert d["state"] == "up"
        assert d["probe"]["state"] == "up"
        assert datetime.fromisoformat(d["since"]).tzinfo is not None


def test_down_after_must_be_positive(conn):
    """down_after 0 would make every connector down before any probe."""
    with pytest.raises(ValueError, match="down_after"):
        HealthMonitor({"igate": conn}, down_after=0)


class TestHeadAges:
    """The consumer's view of a route queue's head (never peeked: quorum queues count redeliveries)."""

    def test_the_age_is_bounded_by_the_last_taken_timestamp_and_the_last_empty_queue(self):
        """Empty ▶ 0; backlog ▶ now - last taken timestamp; capped by the last time the queue was seen empty."""
        clock = Clock()
        ages = HeadAges(clock)
        assert ages.estimate("r", None) is None
        assert ages.estimate("r", 5) is None  # nothing taken here yet: unknown, never guessed
        ages.seen("r", int(clock.now) - 30)
        clock.now += 10
        assert ages.estimate("r", 5) == 40.0
        assert ages.estimate("r", 0) == 0.0
        clock.now += 3
        assert ages.estimate("r", 1) == 3.0  # arrived after the queue was seen empty: 3 s at most

    def test_a_message_without_timestamp_counts_from_when_it_was_taken(self):
        """No AMQP timestamp ▶ the time the consumer took it."""
        clock = Clock()
        ages = HeadAges(clock)
        ages.seen("r", None)
        clock.now += 7
        assert ages.estimate("r", 2) == 7.0


def test_health_checked_at_is_recorded_as_last_success(monitor, conn):
    """A good probe's checked_at becomes last_success."""
    at = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    conn.answer = Health("up", "answered", 1.0, at)
    monitor.probe("igate")
    assert monitor.snapshot()["igate"].last_success == at
