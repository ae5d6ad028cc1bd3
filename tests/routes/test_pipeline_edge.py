# mypy: allow-untyped-defs, allow-incomplete-defs
"""The pipeline's own edge rules, on a runner built by wiring and fed deliveries by hand (no broker needed).

- headers only the bus sets (``x-*``) are dropped from a first delivery (through an event exchange) and never
  copied into its retry copies or dead letters; on the bus's own copies (the default exchange) they hold;
- an event is judged against when the route first received it (``x-received-at`` on the bus's copies), so it
  does not become invalid by waiting in the retry queues, and a time refused at first receipt stays refused;
- crash points exist only with the testing switch.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pytest
from busenv import SIM_PASSWORD, SIM_USER, ping_events, write_config

from bus.wiring import build_runners, load_app
from config.settings import Settings
from routes.pipeline import (
    ATTEMPTS_HEADER,
    GARBLED_HEADER,
    RECEIVED_HEADER,
    CrashPlan,
    Delivery,
    RouteRunner,
    crash_plan_from_env,
)
from schemas.errors import ConfigError


@pytest.fixture
def runners(tmp_path, sqlite_url, monkeypatch):
    """bus-ping (noop) and bus-ack (iGate at a closed port: every call is refused, nothing is sent)."""
    monkeypatch.setenv("IGATE_BUS_IGATE_USERNAME", SIM_USER)
    monkeypatch.setenv("IGATE_BUS_IGATE_PASSWORD", SIM_PASSWORD)
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9", max_attempts=5)
    settings = Settings(config_dir=cfg, store_url=sqlite_url, event_max_age="1d")
    app = load_app(settings)
    built = build_runners(app, [r for r in app.routes if r.spec.name in {"bus-ping", "bus-ack"}], worker_id="t")
    yield {r.name: r for r in built}
    app.close()


def _delivery(
    event: dict[str, Any], *, first: bool, headers: dict[str, Any] | None = None, message_id: str | None = None
) -> Delivery:
    props = pika.BasicProperties(
        content_type="application/json",
        message_id=message_id or event["event_id"],
        type=event["event_type"],
        headers=headers,
    )
    exchange = "igate.events" if first else ""
    key = event["event_type"] if first else "route.x"
    return Delivery(json.dumps(event).encode(), props, exchange, key, redelivered=False)


def _ping(**changes: Any) -> dict[str, Any]:
    [event] = ping_events(1)
    event.update(changes)
    return event


def _received(**changes: Any) -> dict[str, Any]:
    from busenv import received_events

    [event] = received_events(1, prefix="EDGE-UNIT")
    event["occurred_at"] = datetime.now(UTC).isoformat()
    event.update(changes)
    return event


FORGED = {
    "x-attempts": 99,
    "X-Attempts": 98,
    "x-garbled": 5,
    "x-received-at": "2000-01-01T00:00:00+00:00",
    "x-error": "forged",
    "x-route": "elsewhere",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


def test_a_producers_bus_headers_are_dropped_and_never_copied(runners: dict[str, RouteRunner]):
    """First delivery with x-attempts 99, x-received-at 2000...: attempt 1, judged now, copy carries none of them."""
    before = datetime.now(UTC)
    outcome = runners["bus-ack"].handle(_delivery(_received(), first=True, headers=FORGED))
    assert outcome.outcome == "retry", outcome.fields
    [copy] = outcome.messages
    headers = copy.properties.headers
    assert headers[ATTEMPTS_HEADER] == 1
    assert GARBLED_HEADER not in headers
    assert "X-Attempts" not in headers and "x-error" not in headers and "x-route" not in headers
    assert headers["traceparent"] == FORGED["traceparent"], "a producer's own header is kept"
    assert datetime.fromisoformat(headers[RECEIVED_HEADER]) >= before


def test_the_bus_copies_own_headers_hold(runners: dict[str, RouteRunner]):
    """A retry copy (default exchange) with x-attempts 2 and its first receipt: attempt 3, the receipt kept."""
    first = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    event = _received(occurred_at=(datetime.now(UTC) - timedelta(minutes=31)).isoformat())
    outcome = runners["bus-ack"].handle(
        _delivery(event, first=False, headers={ATTEMPTS_HEADER: 2, RECEIVED_HEADER: first, GARBLED_HEADER: 1})
    )
    [copy] = outcome.messages
    assert copy.properties.headers[ATTEMPTS_HEADER] == 3
    assert copy.properties.headers[RECEIVED_HEADER] == first
    assert copy.properties.headers[GARBLED_HEADER] == 1


def test_waiting_in_the_retry_queues_does_not_make_an_event_too_old(runners: dict[str, RouteRunner]):
    """Max age 1 day: 3 days old at first receipt ▶ refused; received 3 days ago when 1 minute old ▶ accepted."""
    ping = runners["bus-ping"]
    old = datetime.now(UTC) - timedelta(days=3)
    event = _ping(occurred_at=old.isoformat())
    refused = ping.handle(_delivery(event, first=True))
    assert refused.outcome == "dead_lettered"
    assert refused.fields["error"].startswith("occurred_at:")
    retried = ping.handle(
        _delivery(event, first=False, headers={RECEIVED_HEADER: (old + timedelta(minutes=1)).isoformat()})
    )
    assert retried.outcome == "delivered", retried.fields


def test_future_is_judged_against_the_first_receipt(runners: dict[str, RouteRunner]):
    """Received an hour ago: 4 minutes after that is fine, 10 minutes after that stays refused."""
    ping = runners["bus-ping"]
    received = datetime.now(UTC) - timedelta(hours=1)
    headers = {RECEIVED_HEADER: received.isoformat()}
    fine = _ping(occurred_at=(received + timedelta(minutes=4)).isoformat())
    late = _ping(occurred_at=(received + timedelta(minutes=10)).isoformat())
    assert ping.handle(_delivery(fine, first=False, headers=headers)).outcome == "delivered"
    refused = ping.handle(_delivery(late, first=False, headers=headers))
    assert refused.outcome == "dead_lettered"
    assert "in the future" in refused.fields["error"]


def test_an_upper_case_message_id_is_the_same_event_and_copies_carry_it_canonical(runners: dict[str, RouteRunner]):
    """AMQP message_id in upper case ▶ the same UUID as event_id; the dead letter's message_id is lower case."""
    event = _ping(payload={"seq": 0, "note": "unmappable"})
    outcome = runners["bus-ping"].handle(_delivery(event, first=True, message_id=event["event_id"].upper()))
    assert outcome.outcome == "dead_lettered"
    assert outcome.fields["error_kind"] == "mapping"
    [letter] = outcome.messages
    assert letter.properties.message_id == str(uuid.UUID(event["event_id"]))


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"IGATE_CRASH_AT": "after_send"}, "IGATE_BUS_TESTING is not 1"),
        ({"IGATE_CRASH_AT": "after_send", "IGATE_BUS_TESTING": "yes"}, "IGATE_BUS_TESTING is not 1"),
        ({"IGATE_CRASH_AT": "after_sned", "IGATE_BUS_TESTING": "1"}, "unknown crash point"),
        ({"IGATE_CRASH_AT": "after_send", "IGATE_BUS_TESTING": "1", "IGATE_CRASH_RATE": "2"}, "(0, 1]"),
        ({"IGATE_CRASH_AT": "after_send", "IGATE_BUS_TESTING": "1", "IGATE_CRASH_RATE": "x"}, "(0, 1]"),
    ],
)
def test_crash_points_are_refused_without_the_testing_switch_or_when_wrong(env, error):
    """A crash point needs IGATE_BUS_TESTING=1, a known name and a rate in (0, 1]; otherwise a ConfigError."""
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace("]", r"\]")):
        crash_plan_from_env(env)


def test_no_crash_points_is_no_plan_and_a_testing_plan_is_taken():
    """Unset (even with the switch) ▶ no crash anywhere; set with the switch ▶ the points and the rate."""
    assert crash_plan_from_env({}) == CrashPlan()
    assert crash_plan_from_env({"IGATE_BUS_TESTING": "1"}) == CrashPlan()
    plan = crash_plan_from_env(
        {"IGATE_CRASH_AT": "after_claim, after_ack", "IGATE_BUS_TESTING": "1", "IGATE_CRASH_RATE": "0.5"}
    )
    assert plan == CrashPlan(frozenset({"after_claim", "after_ack"}), 0.5)
    assert not CrashPlan().hits("after_claim")


@pytest.mark.parametrize("name", ["", "bus-ack/5f0e8d2a-8d7e-4b1e-9d63-3b7f0f6f1c11", "hồ-sơ/Đ/ü/𝔘", "x" * 5000])
def test_uuid5_text_is_the_standard_uuid5(name: str) -> None:
    import uuid

    from routes.pipeline import KEY_NS, RESULT_NS, uuid5_text

    for namespace in (KEY_NS, RESULT_NS, uuid.NAMESPACE_URL):
        assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))
