# mypy: allow-untyped-defs, allow-incomplete-defs
"""The order step inside the pipeline, on runners built by wiring and fed deliveries by hand (no broker needed).

Two ordered routes over the noop connector (an effect, so claims are taken): ``ping-latest`` (latest toward
target ``t``) and ``ping-fifo`` (fifo toward target ``f``). What is checked is each delivery's outcome and the
messages the worker would publish before its ack: the ``bus.superseded`` result, a retry copy that spends no
attempt while the dossier waits, a dead letter naming the field an ordered route needs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pytest
import structlog
from busenv import ping_events
from structlog.testing import capture_logs

from bus.wiring import build_runners, load_app
from config.settings import Settings
from routes.ordering import OrderStore
from routes.pipeline import ATTEMPTS_HEADER, Delivery, RouteRunner, result_event_id
from schemas.envelope import Envelope, parse_event
from schemas.ordering import Superseded

ROUTES = """\
routes:
  - name: ping-latest
    from: {exchange: igate.events, events: [bus.ping]}
    adapter: builtin.ping
    to: noop.send
    emits: bus.pong
    order: {by: occurred_at, mode: latest, target: t}
  - name: ping-fifo
    from: {exchange: igate.events, events: [bus.ping]}
    adapter: builtin.ping
    to: noop.send
    emits: bus.pong
    order: {mode: fifo, target: f}
"""
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def runners(tmp_path, sqlite_url):
    """The two ordered ping routes, by name."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "routes.yaml").write_text(ROUTES)
    (cfg / "connectors.yaml").write_text("connectors:\n  noop:\n    type: noop\n")
    app = load_app(Settings(config_dir=cfg, store_url=sqlite_url, event_max_age="1d"))
    built = build_runners(app, app.routes, worker_id="t")
    for r in built:
        assert r._order is not None
        r._order.wait_s = 0.1
    yield {r.name: r for r in built}
    app.close()


def _ping(dossier: str, minutes_ago: float, **changes: Any) -> dict[str, Any]:
    [event] = ping_events(1)
    event.update(dossier_code=dossier, occurred_at=(NOW - timedelta(minutes=minutes_ago)).isoformat())
    event.update(changes)
    return event


def _delivery(event: dict[str, Any], headers: dict[str, Any] | None = None) -> Delivery:
    props = pika.BasicProperties(
        content_type="application/json", message_id=event["event_id"], type=event["event_type"], headers=headers
    )
    first = headers is None
    exchange, key = ("igate.events", "bus.ping") if first else ("", "route.x")
    return Delivery(json.dumps(event).encode(), props, exchange, key, redelivered=False)


def _dossier() -> str:
    return f"000.00.16.H16-261126-{uuid.uuid4().int % 10_000:04d}"


def test_latest_an_older_event_is_acked_superseded_with_a_result_event(runners: dict[str, RouteRunner]) -> None:
    """Newer applied ▶ the older one is superseded: one bus.superseded result (stable id), nothing sent."""
    runner = runners["ping-latest"]
    code = _dossier()
    newer, older = _ping(code, 10), _ping(code, 20)
    assert runner.handle(_delivery(newer)).outcome == "delivered"
    out = runner.handle(_delivery(older))
    assert out.outcome == "superseded"
    [msg] = out.messages
    assert (msg.exchange, msg.routing_key) == ("bus.results", "bus.superseded")
    body = json.loads(msg.body)
    assert body["event_id"] == msg.properties.message_id == result_event_id("ping-latest", older["event_id"])
    assert body["dossier_code"] == code
    result = Superseded.model_validate(body["payload"])
    assert (result.route, result.target, result.event_id) == ("ping-latest", "t", older["event_id"])
    assert result.applied.endswith(newer["event_id"])
    assert result.position < result.applied
    assert out.fields["applied"] == result.applied
    assert runner.store.get("ping-latest", older["event_id"]) is None, "a superseded event was claimed"


def test_latest_the_same_event_again_is_a_duplicate_and_a_newer_one_goes(runners: dict[str, RouteRunner]) -> None:
    """The applied event redelivered is not older (equal position): its claim says duplicate; newer is sent."""
    runner = runners["ping-latest"]
    code = _dossier()
    first = _ping(code, 10)
    assert runner.handle(_delivery(first)).outcome == "delivered"
    assert runner.handle(_delivery(first)).outcome == "duplicate"
    assert runner.handle(_delivery(_ping(code, 5))).outcome == "delivered"


def test_latest_a_busy_dossier_parks_the_message_without_spending_an_attempt(runners: dict[str, RouteRunner]) -> None:
    """Another attempt holds the dossier's lease ▶ retry copy with x-attempts unchanged, kind claim_held."""
    runner = runners["ping-latest"]
    code = _dossier()
    orders = OrderStore.of(runner.store)
    held = orders.enter_latest("t", code, "2000-01-01T00:00:00.000000Z/00/" + str(uuid.uuid4()), owner="x", lease_s=60)
    assert held.verdict.value == "pass"
    out = runner.handle(_delivery(_ping(code, 1)))
    assert out.outcome == "retry"
    assert out.fields["error_kind"] == "claim_held"
    [msg] = out.messages
    assert msg.properties.headers[ATTEMPTS_HEADER] == 0


def test_an_ordered_route_dead_letters_an_event_without_a_dossier_code(runners: dict[str, RouteRunner]) -> None:
    """Nothing to order by ▶ dead letter naming the field, never a silent pass."""
    out = runners["ping-latest"].handle(_delivery(_ping("x", 1, dossier_code=None)))
    assert out.outcome == "dead_lettered"
    [msg] = out.messages
    assert msg.properties.headers["x-error-field"] == "dossier_code"
    assert "keeps per-dossier order toward t" in msg.properties.headers["x-error"]


def test_fifo_a_later_event_waits_for_an_earlier_pending_one_without_spending_an_attempt(
    runners: dict[str, RouteRunner],
) -> None:
    """A seen first and still pending ▶ B parks (attempts unchanged); A delivered ▶ B delivered; both done."""
    runner = runners["ping-fifo"]
    code = _dossier()
    a, b = _ping(code, 1), _ping(code, 2)  # fifo ignores times: first seen, first delivered
    orders = OrderStore.of(runner.store)
    orders.enter_fifo("f", code, a["event_id"])  # A seen (its attempt in flight elsewhere)
    waiting = runner.handle(_delivery(b))
    assert waiting.outcome == "retry"
    assert waiting.fields["error_kind"] == "claim_held"
    assert waiting.messages[0].properties.headers[ATTEMPTS_HEADER] == 0
    assert runner.handle(_delivery(a)).outcome == "delivered"
    assert runner.handle(_delivery(b, headers=dict(waiting.messages[0].properties.headers))).outcome == "delivered"
    assert [(eid, s) for _, eid, s in orders.fifo_states("f", code)] == [
        (a["event_id"], "done"),
        (b["event_id"], "done"),
    ]


def test_fifo_an_unsettled_delivery_is_retried_and_settles_then(
    runners: dict[str, RouteRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails when a delivered event settles ▶ a retry (no attempt spent) instead of an ack that would
    leave the dossier's later events waiting forever; the retry is a duplicate (nothing sent) and settles."""
    runner = runners["ping-fifo"]
    code = _dossier()
    event = _ping(code, 1)

    def down(*args: Any, **kwargs: Any) -> str | None:
        raise ConnectionError("store down")

    monkeypatch.setattr(OrderStore, "settle_fifo_seq", down)
    out = runner.handle(_delivery(event))
    assert out.outcome == "retry"
    assert out.messages[0].properties.headers[ATTEMPTS_HEADER] == 0
    monkeypatch.undo()
    again = runner.handle(_delivery(event, headers=dict(out.messages[0].properties.headers)))
    assert again.outcome == "duplicate"
    assert OrderStore.of(runner.store).fifo_states("f", code)[0][2] == "done"


def test_fifo_a_later_event_releases_an_earlier_one_unseen_for_too_long_with_a_log_line(
    runners: dict[str, RouteRunner],
) -> None:
    """A seen 3 h ago and never since (its message lost, purged, or its route no longer consumed) ▶ B is not
    held forever: its first look doubts A (one more window, 0.5 s here), its next one after that window
    releases A, logs ``order_released_unseen`` naming A, and is delivered."""
    runner = runners["ping-fifo"]
    assert runner._order is not None
    runner._order.release_after_s = 0.5
    code = _dossier()
    a, b = _ping(code, 2), _ping(code, 1)
    orders = OrderStore.of(runner.store)
    orders.enter_fifo("f", code, a["event_id"], now=datetime.now(UTC) - timedelta(hours=3))
    waited = runner.handle(_delivery(b))
    assert waited.outcome == "retry"
    time.sleep(0.6)
    with capture_logs() as logs:
        out = runner.handle(_delivery(b, headers=dict(waited.messages[0].properties.headers)))
    assert out.outcome == "delivered"
    [line] = [e for e in logs if e["event"] == "order_released_unseen"]
    assert (line["released_event_id"], line["target"], line["log_level"]) == (a["event_id"], "f", "warning")
    assert [(eid, s) for _, eid, s in orders.fifo_states("f", code)] == [
        (a["event_id"], "released"),
        (b["event_id"], "done"),
    ]


def test_fifo_a_dead_letter_whose_order_step_failed_releases_the_place_it_took(
    runners: dict[str, RouteRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A took its place at an earlier attempt; its last attempt fails in the order step itself (the store errs)
    and is dead-lettered without a ticket ▶ its place is released anyway (``order_released``), so B goes."""
    runner = runners["ping-fifo"]
    code = _dossier()
    a, b = _ping(code, 2), _ping(code, 1)
    orders = OrderStore.of(runner.store)
    orders.enter_fifo("f", code, a["event_id"])  # A's earlier attempt took seq 1
    assert runner.handle(_delivery(b)).outcome == "retry"  # B waits for A
    enter = OrderStore.enter_fifo

    def flaky(self: OrderStore, target: str, dossier: str, event_id: str, **kw: Any) -> Any:
        if event_id == a["event_id"]:
            raise ConnectionError("store down")
        return enter(self, target, dossier, event_id, **kw)

    monkeypatch.setattr(OrderStore, "enter_fifo", flaky)
    last = {ATTEMPTS_HEADER: runner.route.spec.retry.max_attempts - 1}
    with capture_logs() as logs:
        dead = runner.handle(_delivery(a, headers=last))
    assert dead.outcome == "dead_lettered"
    assert dead.messages[0].properties.headers["x-error-kind"] == "exhausted:internal"
    [line] = [e for e in logs if e["event"] == "order_released"]
    assert (line["seq"], line["next_event_id"]) == (1, b["event_id"])
    assert runner.handle(_delivery(b)).outcome == "delivered"


def test_fifo_parks_at_once_when_the_earlier_event_is_not_in_a_call_here(runners: dict[str, RouteRunner]) -> None:
    """A pending but in no thread of this process (in a delay queue) ▶ B is parked at once, not after wait_s:
    on a one-thread route the wait in place held every other dossier too."""
    runner = runners["ping-fifo"]
    assert runner._order is not None
    runner._order.wait_s = 2.0
    code = _dossier()
    a, b = _ping(code, 2), _ping(code, 1)
    OrderStore.of(runner.store).enter_fifo("f", code, a["event_id"])
    started = time.monotonic()
    out = runner.handle(_delivery(b))
    assert out.outcome == "retry"
    assert time.monotonic() - started < 1.0, "B held its thread waiting for an event nobody was sending"


def test_fifo_waits_in_place_while_the_earlier_event_is_in_a_call_here(runners: dict[str, RouteRunner]) -> None:
    """A passed the order in another thread and is being sent ▶ B waits in place and goes once A settles."""
    runner = runners["ping-fifo"]
    order = runner._order
    assert order is not None
    order.wait_s = 5.0
    code = _dossier()
    a, b = _ping(code, 2), _ping(code, 1)
    ticket = order.enter(_envelope(runner, a))  # A in its call
    settle = threading.Timer(0.3, lambda: order.leave(ticket, applied=True, dead=False, log=structlog.get_logger()))
    settle.start()
    try:
        assert runner.handle(_delivery(b)).outcome == "delivered"
    finally:
        settle.join()


def test_fifo_threads_number_a_dossiers_deliveries_in_the_order_received(runners: dict[str, RouteRunner]) -> None:
    """A and B received in that order; B's thread runs first, A's 0.3 s later ▶ A is numbered 1, B 2 (B waited)."""
    runner = runners["ping-fifo"]
    code = _dossier()
    a, b = _ping(code, 2), _ping(code, 1)
    da, db = runner.admit([_delivery(a), _delivery(b)])
    outcomes: dict[str, str] = {}
    tb = threading.Thread(target=lambda: outcomes.update(b=runner.handle(db).outcome))
    ta = threading.Timer(0.3, lambda: outcomes.update(a=runner.handle(da).outcome))
    tb.start()
    ta.start()
    tb.join()
    ta.join()
    states = OrderStore.of(runner.store).fifo_states("f", code)
    assert [(seq, eid) for seq, eid, _ in states] == [(1, a["event_id"]), (2, b["event_id"])]
    assert outcomes["a"] == "delivered"


def test_fifo_a_delivery_refused_before_the_order_holds_no_later_one(runners: dict[str, RouteRunner]) -> None:
    """A (unparseable) and B received in that order, in one batch ▶ A is dead-lettered before its order step and
    gives its arrival up at once: B, behind it in the same thread, does not wait for it."""
    runner = runners["ping-fifo"]
    good = _delivery(_ping(_dossier(), 1))
    bad = Delivery(b"{not json", good.properties, good.exchange, good.routing_key, redelivered=False)
    started = time.monotonic()
    outcomes = runner.handle_batch(runner.admit([bad, good]))
    assert [o.outcome for o in outcomes] == ["dead_lettered", "delivered"]
    assert time.monotonic() - started < 2.0, "B waited for a delivery that would never take a number"


def _envelope(runner: RouteRunner, event: dict[str, Any]) -> Envelope:
    return parse_event(json.dumps(event).encode(), payload_models=runner.payload_models).envelope


def test_fifo_a_delivery_refused_in_the_order_step_holds_no_later_one(runners: dict[str, RouteRunner]) -> None:
    """A without a dossier code (refused by the order step itself) and B, in one batch ▶ B does not wait for A."""
    runner = runners["ping-fifo"]
    started = time.monotonic()
    no_code = _delivery(_ping("x", 2, dossier_code=None))
    outcomes = runner.handle_batch(runner.admit([no_code, _delivery(_ping(_dossier(), 1))]))
    assert [o.outcome for o in outcomes] == ["dead_lettered", "delivered"]
    assert time.monotonic() - started < 2.0, "B waited for a delivery that would never take a number"
