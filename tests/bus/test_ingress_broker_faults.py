# mypy: allow-untyped-defs, allow-incomplete-defs
"""The ingress against a broker that goes away, dies or blocks: a private RabbitMQ node per test.

The promise under test: ``202`` only for a message the broker confirmed, ``503`` (quickly, with
``Retry-After``) while it cannot, and recovery by itself when the broker is back. Each test reads the
node's queue afterwards. The shared broker at 5672 is never touched (docs/reliability.md section 2).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from busenv import example, received_events, wait_for
from ingress_harness import bind_capture, client, drain, dumps, serve, signed
from wallclock import SLACK_S  # scheduling and HTTP on a loaded machine, on top of the publish timeout

if TYPE_CHECKING:
    from chaos_broker import ChaosBroker

PUBLISH_TIMEOUT_S = 2.0
UNAVAILABLE = {"broker_unavailable", "publish_timeout", "broker_blocked"}


def fresh() -> dict[str, Any]:
    """The shipped dossier.received with a new event_id."""
    event: dict[str, Any] = example("dossier.received")
    event["event_id"] = str(uuid.uuid4())
    return event


def post(c: httpx.Client, event: dict[str, Any]) -> tuple[httpx.Response, float]:
    """Post an event signed now; the response and the seconds it took."""
    body = dumps(event)
    started = time.monotonic()
    response = c.post("/events", content=body, headers=signed(body))
    return response, time.monotonic() - started


def test_broker_stopped_503_within_the_timeout_nothing_half_stored_then_202(chaos_broker: ChaosBroker) -> None:
    """stop_app ▶ every post 503 with Retry-After within the timeout; start_app ▶ 202 again by itself.

    Only what got a 202 is in the queue afterwards: the events refused during the outage (and not
    retried) are absent, and each stored body is exactly what was sent.
    """
    url = chaos_broker.amqp_url
    bind_capture(url, "igate.events")
    before, after = fresh(), fresh()
    during = [fresh() for _ in range(5)]
    with serve(url, publish_timeout=f"{PUBLISH_TIMEOUT_S:g}s", reconnect_delay="200ms") as srv, client(srv) as c:
        assert post(c, before)[0].status_code == 202
        chaos_broker.stop_app()
        for event in during:
            response, took = post(c, event)
            assert response.status_code == 503, response.text
            assert response.json()["error"] in UNAVAILABLE
            assert int(response.headers["retry-after"]) >= 1
            assert took < PUBLISH_TIMEOUT_S + SLACK_S, f"503 took {took:.2f} s"
        chaos_broker.start_app()
        retried = during[0]
        wait_for(lambda: post(c, retried)[0].status_code == 202, timeout=30, interval=0.3, what="202 after restart")
        assert post(c, after)[0].status_code == 202
    stored = {p.message_id: body for _, p, body in drain(url)}
    assert set(stored) == {before["event_id"], retried["event_id"], after["event_id"]}
    assert stored[retried["event_id"]] == dumps(retried)


@dataclass
class Ledger:
    """What the client saw, per event, across 16 sending threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: set[str] = field(default_factory=set)  # 202
    duplicates: set[str] = field(default_factory=set)  # 200: accepted by an earlier attempt
    statuses: Counter[str] = field(default_factory=Counter)
    slowest_refusal_s: float = 0.0
    gave_up: list[str] = field(default_factory=list)

    def record(self, event_id: str, response: httpx.Response | None, took: float) -> bool:
        """Count one answer; True when the event is settled (stored)."""
        with self.lock:
            if response is None:
                self.statuses["connection error"] += 1
                return False
            key = str(response.status_code)
            if response.status_code >= 400:
                key += " " + response.json().get("error", "?")
                self.slowest_refusal_s = max(self.slowest_refusal_s, took)
            self.statuses[key] += 1
            if response.status_code == 202:
                self.accepted.add(event_id)
                return True
            if response.status_code == 200:
                self.duplicates.add(event_id)
                return True
            return False


@pytest.mark.slow
def test_2000_signed_posts_through_a_broker_kill_every_202_is_delivered(chaos_broker: ChaosBroker) -> None:
    """2,000 events from 16 clients, kill -9 of the broker after 500 accepted, restarted: 0 lost.

    Each client retries a refused event (re-signed) until it is accepted. Afterwards the queue must hold
    every event answered 202 (or 200 duplicate), and nothing the ingress refused and no client re-sent.
    """
    url = chaos_broker.amqp_url
    bind_capture(url, "igate.events", quorum=True)
    time.sleep(1.0)  # Ra saves a new quorum queue's registration after 500 ms idle (ChaosBroker.kill9)
    events = received_events(2000, prefix="K")
    ledger = Ledger()
    outage: dict[str, float] = {}

    def kill_and_restart() -> None:
        wait_for(lambda: len(ledger.accepted) >= 500, timeout=60, interval=0.01, what="500 accepted")
        outage["killed_at_accepted"] = len(ledger.accepted)
        started = time.monotonic()
        chaos_broker.kill9()
        chaos_broker.restart_after_kill()
        outage["broker_down_s"] = time.monotonic() - started

    limits = httpx.Limits(max_connections=16)
    with (
        serve(url, publish_timeout=f"{PUBLISH_TIMEOUT_S:g}s", reconnect_delay="200ms") as srv,
        httpx.Client(base_url=srv.url, timeout=10, limits=limits) as c,
    ):

        def send(event: dict[str, Any]) -> None:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    response: httpx.Response | None = post(c, event)[0]
                except httpx.TransportError:
                    response = None
                if ledger.record(event["event_id"], response, time.monotonic() - started):
                    return
                time.sleep(0.2)
            ledger.gave_up.append(event["event_id"])

        killer = threading.Thread(target=kill_and_restart, daemon=True)
        killer.start()
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, events))
        elapsed = time.monotonic() - started
        killer.join(60)
    delivered = Counter(p.message_id for _, p, _ in drain(url))
    settled = ledger.accepted | ledger.duplicates
    lost = settled - set(delivered)
    extra = set(delivered) - {e["event_id"] for e in events}
    print(  # the figures for the note (pytest -s shows them)
        f"\n2,000 posts with a broker kill -9: {elapsed:.1f} s; killed after {outage.get('killed_at_accepted')} "
        f"accepted, broker back in {outage.get('broker_down_s', 0):.1f} s; answers {dict(ledger.statuses)}; "
        f"202 = {len(ledger.accepted)}, 200 duplicate = {len(ledger.duplicates)}, gave up = {len(ledger.gave_up)}; "
        f"delivered = {len(delivered)} distinct ({sum(delivered.values())} messages, "
        f"{sum(n - 1 for n in delivered.values())} extra copies); lost = {len(lost)}; "
        f"slowest refusal {ledger.slowest_refusal_s:.2f} s"
    )
    assert "killed_at_accepted" in outage, "the broker was never killed: the test proved nothing"
    assert any(k.startswith("503") for k in ledger.statuses), "no 503 seen: the outage was not exercised"
    assert ledger.gave_up == []
    assert len(settled) == 2000
    assert lost == set(), f"{len(lost)} events answered 202/200 are not in the queue"
    assert extra == set()
    assert ledger.slowest_refusal_s < PUBLISH_TIMEOUT_S + SLACK_S


def test_memory_alarm_503_then_202_when_it_clears(chaos_broker: ChaosBroker) -> None:
    """Memory alarm ▶ 503 within the publish timeout, then at once (broker_blocked); cleared ▶ 202 again.

    Every event answered 202 is in the queue afterwards.
    """
    url = chaos_broker.amqp_url
    bind_capture(url, "igate.events")
    accepted: list[str] = []
    refusals: list[tuple[str, float]] = []
    with serve(url, publish_timeout=f"{PUBLISH_TIMEOUT_S:g}s") as srv, client(srv) as c:

        def attempt() -> int:
            event = fresh()
            response, took = post(c, event)
            if response.status_code == 202:
                accepted.append(event["event_id"])
            else:
                refusals.append((response.json()["error"], took))
            return response.status_code

        assert attempt() == 202
        chaos_broker.ctl("set_vm_memory_high_watermark", "0.0001")
        try:
            wait_for(lambda: attempt() == 503, timeout=20, interval=0.2, what="a 503 under the memory alarm")
            assert attempt() == 503
            assert attempt() == 503
        finally:
            chaos_broker.ctl("set_vm_memory_high_watermark", "0.4")
        wait_for(lambda: attempt() == 202, timeout=30, interval=0.3, what="202 once the alarm cleared")
    print(f"\nmemory alarm: refusals {refusals}")
    assert all(code in UNAVAILABLE for code, _ in refusals), refusals
    assert all(took < PUBLISH_TIMEOUT_S + SLACK_S for _, took in refusals), refusals
    assert refusals[-1][0] == "broker_blocked", "the blocked connection was not noticed"
    assert refusals[-1][1] < PUBLISH_TIMEOUT_S, "a known-blocked broker is refused at once, not at the timeout"
    stored = {p.message_id for _, p, _ in drain(url)}
    assert set(accepted) <= stored
