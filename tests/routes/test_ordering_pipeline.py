# mypy: allow-untyped-defs, allow-incomplete-defs
"""The order step inside the pipeline, on runners built by wiring and fed deliveries by hand (no broker needed).

Two ordered routes over the noop connector (an effect, so claims are taken): ``ping-latest`` (latest toward
target ``t``) and ``ping-fifo`` (fifo toward target ``f``). What is checked is each delivery's outcome and the
messages the worker would publish before its ack: the ``bus.superseded`` result, a retry copy that spends no
attempt while the dossier waits, a dead letter naming the field an ordered route needs.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pytest
from busenv import ping_events

from bus.wiring import build_runners, load_app
from config.settings import Settings
from routes.ordering import OrderStore
from routes.pipeline import ATTEMPTS_HEADER, Delivery, RouteRunner, result_event_id
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

    monkeypatch.setattr(OrderStore, "settle_fifo", down)
    out = runner.handle(_delivery(event))
    assert out.outcome == "retry"
    assert out.messages[0].properties.headers[ATTEMPTS_HEADER] == 0
    monkeypatch.undo()
    again = runner.handle(_delivery(event, headers=dict(out.messages[0].properties.headers)))
    assert again.outcome == "duplicate"
    assert OrderStore.of(runner.store).fifo_states("f", code)[0][2] == "done"
