# mypy: allow-untyped-defs
"""The engine on a route with no external I/O (bus.ping ▶ noop ▶ bus.pong): results, bad input, unrouted.

Given/When/Then against the real broker: every assertion reads queue state or message headers.
"""

from __future__ import annotations

import json
import uuid

from busenv import (
    depth,
    get_all,
    ping_events,
    publish,
    publish_raw,
    thread_worker,
    wait_for,
    write_config,
)

from routes.pipeline import idempotency_key, result_event_id


def test_each_ping_emits_one_confirmed_result_with_a_stable_id(amqp_url, sqlite_url, tmp_path):
    """500 pings ▶ 500 pongs on bus.results, each with the deterministic result id, route queue empty."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    events = ping_events(500)
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ping"]):
        publish(amqp_url, events)
        wait_for(lambda: depth(amqp_url, "unrouted") >= 500, timeout=30, what="500 pongs")
    pongs = get_all(amqp_url, "unrouted")
    assert len(pongs) == 500
    assert depth(amqp_url, "route.bus-ping") == 0
    expected = {result_event_id("bus-ping", e["event_id"]) for e in events}
    got = {json.loads(body)["event_id"] for _, body in pongs}
    assert got == expected
    one = json.loads(pongs[0][1])
    assert one["event_type"] == "bus.pong"
    assert one["payload"]["idempotency_key"] in {idempotency_key("bus-ping", e["event_id"]) for e in events}


def test_a_redelivered_done_event_reemits_the_same_result_without_a_second_effect(amqp_url, sqlite_url, tmp_path):
    """The same event published twice ▶ two results with one id (downstream dedups), one claim in the store."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    [event] = ping_events(1)
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ping"]) as tw:
        publish(amqp_url, [event])
        wait_for(lambda: depth(amqp_url, "unrouted") >= 1, timeout=10, what="first pong")
        publish(amqp_url, [event])
        wait_for(lambda: depth(amqp_url, "unrouted") >= 2, timeout=10, what="second pong")
        assert tw.worker.stats["bus-ping"].outcomes == {"delivered": 1, "duplicate": 1}
        record = tw.app.store.get("bus-ping", event["event_id"])
        assert record is not None and record.state == "done" and record.attempts == 1
    ids = {json.loads(body)["event_id"] for _, body in get_all(amqp_url, "unrouted")}
    assert ids == {result_event_id("bus-ping", event["event_id"])}


def _ping(seq: int, **overrides: object) -> dict[str, object]:
    ev = ping_events(seq + 1)[seq]
    ev.update(overrides)
    return ev


def test_bad_inputs_are_dead_lettered_with_a_reason_and_the_worker_keeps_running(amqp_url, sqlite_url, tmp_path):
    """Malformed JSON, wrong content type, schema-invalid, non-UTF-8, oversize, id mismatch ▶ DLQ each, reason."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    cases: dict[str, tuple[bytes, str | None, str | None, str]] = {
        "malformed": (b'{"event_id": "x", ', "application/json", None, "malformed JSON"),
        "content_type": (json.dumps(_ping(0)).encode(), "text/xml", None, "content_type: 'text/xml'"),
        "schema": (json.dumps(_ping(1, payload={"seq": -5})).encode(), "application/json", None, "payload.seq"),
        "not_utf8": (b'{"event_type": "bus.ping", "x": "\xff\xfe"}', "application/json", None, "not UTF-8"),
        "oversize": (b'{"pad": "' + b"a" * 1_100_000 + b'"}', "application/json", None, "over the limit"),
        "id_mismatch": (json.dumps(_ping(2)).encode(), "application/json", str(uuid.uuid4()), "differs from event_id"),
        "duplicate_keys": (b'{"seq": 1, "seq": 2}', "application/json", None, "duplicate key"),
        "nan": (b'{"seq": NaN}', "application/json", None, "NaN"),
        "deep": (b"[" * 100_000 + b"]" * 100_000, "application/json", None, "nested too deeply"),
        # parses in C, then too deep for Python to walk back (the NFC pass): still a dead letter at once
        "deep_parsed": (b'{"a":' * 900 + b"1" + b"}" * 900, "application/json", None, "nested too deeply"),
        "not_object": (b"[]", "application/json", None, "must be a JSON object"),
    }
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ping"]) as tw:
        for body, ctype, mid, _ in cases.values():
            publish_raw(amqp_url, body, routing_key="bus.ping", content_type=ctype, message_id=mid)
        wait_for(lambda: depth(amqp_url, "dlq.bus-ping") >= len(cases), timeout=15, what="dead letters")
        # the worker is alive and still delivers
        publish(amqp_url, ping_events(3))
        wait_for(lambda: depth(amqp_url, "unrouted") >= 3, timeout=10, what="pongs after bad input")
        assert tw.thread.is_alive()
    dead = get_all(amqp_url, "dlq.bus-ping")
    assert len(dead) == len(cases)
    reasons = [str(props.headers["x-error"]) for props, _ in dead]
    for name, (_, _, _, expected) in cases.items():
        assert any(expected in r for r in reasons), f"{name}: no dead letter says {expected!r}: {reasons}"
    for props, _ in dead:
        h = props.headers
        assert h["x-error-kind"] == "invalid"
        assert h["x-route"] == "bus-ping"
        assert h["x-attempts"] == 1
        assert h["x-failed-at"]


def test_a_mapping_error_is_dead_lettered_at_once_not_retried(amqp_url, sqlite_url, tmp_path):
    """An event the adapter cannot map ▶ DLQ with kind mapping and the field, after one attempt."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ping"]) as tw:
        publish(amqp_url, [_ping(0, payload={"seq": 0, "note": "unmappable"})])
        wait_for(lambda: depth(amqp_url, "dlq.bus-ping") == 1, timeout=5, what="dead letter")
        assert tw.worker.stats["bus-ping"].outcomes == {"dead_lettered": 1}
    [(props, _)] = get_all(amqp_url, "dlq.bus-ping")
    assert props.headers["x-error-kind"] == "mapping"
    assert "payload.note" in props.headers["x-error"]


def test_an_event_type_no_route_binds_is_kept_in_unrouted(amqp_url, sqlite_url, tmp_path):
    """A confirmed publish of an unbound event type lands in 'unrouted', never confirmed and dropped."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    with thread_worker(amqp_url, sqlite_url, cfg, routes=["bus-ping"]):
        ev = _ping(0, event_type="dossier.nobody_binds_this")
        publish_raw(amqp_url, json.dumps(ev).encode(), routing_key="dossier.nobody_binds_this")
        wait_for(lambda: depth(amqp_url, "unrouted") == 1, timeout=5, what="unrouted event")
    [(_, body)] = get_all(amqp_url, "unrouted")
    assert json.loads(body)["event_type"] == "dossier.nobody_binds_this"
    assert depth(amqp_url, "dlq.bus-ping") == 0
