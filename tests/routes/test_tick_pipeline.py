"""A tick in the pipeline, on runners built by wiring and fed deliveries by hand (no broker needed).

- only the bus fires ticks: a ``bus.tick`` through an event exchange, one fired for another route, or one
  reaching a route without a schedule is dead-lettered as invalid, naming the field;
- the tick gets the route's saved cursor when it is processed, and the reply's cursor is saved after the
  effect is recorded (compare-and-set: a tick that read an older cursor does not overwrite a newer one);
- a reply's ``result_events()`` become result events on ``bus.results`` whose ids name the fact, so the same
  fact re-emitted (a duplicate delivery) keeps its id.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pika
import pytest
from pydantic import BaseModel

from bus.wiring import build_runners, load_app, schedule_store
from config.settings import Settings
from routes.emissions import Emissions, emission_id
from routes.pipeline import Delivery, RouteRunner
from routes.scheduler import tick_message
from schemas.bus import Emission
from schemas.envelope import parse_event
from schemas.errors import MappingError
from schemas.events import EVENT_PAYLOADS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from routes.schedule_store import ScheduleStore

ROUTES = """\
routes:
  - name: poll-noop
    from: {schedule: {every: 1m}}
    adapter: builtin.tick
    to: noop.poll
  - name: bus-ping
    from: {events: [bus.ping]}
    adapter: builtin.ping
    to: noop.send
"""


@pytest.fixture
def wired(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[dict[str, RouteRunner], ScheduleStore]]:
    """The two routes' runners, sharing one SQLite store, and the schedules' rows."""
    (tmp_path / "routes.yaml").write_text(ROUTES)
    (tmp_path / "connectors.yaml").write_text("connectors:\n  noop:\n    type: noop\n")
    app = load_app(Settings(config_dir=tmp_path, store_url=sqlite_url))
    runners = {r.name: r for r in build_runners(app, app.routes, worker_id="t")}
    store = schedule_store(app)
    store.ensure("poll-noop", datetime.now(UTC))
    yield runners, store
    app.close()


def _tick(route: str = "poll-noop", *, exchange: str = "", at: datetime | None = None) -> Delivery:
    body, props = tick_message(route, at or datetime.now(UTC).replace(microsecond=0), fired_at=datetime.now(UTC))
    if exchange:  # as a producer would publish it: no bus headers
        props = pika.BasicProperties(content_type=props.content_type, message_id=props.message_id, type=props.type)
    return Delivery(body, props, exchange, "bus.tick" if exchange else "route.poll-noop", redelivered=False)


def _bodies(outcome: Any) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in outcome.messages]


class TestAdmission:
    """Only the route's own schedule fires its ticks."""

    def test_a_tick_through_an_exchange_is_invalid(self, wired: Any) -> None:
        """A producer cannot make a route poll by publishing ``bus.tick`` on igate.events."""
        runners, _ = wired
        outcome = runners["poll-noop"].handle(_tick(exchange="igate.events"))
        assert outcome.outcome == "dead_lettered"
        headers = outcome.messages[0].properties.headers
        assert (headers["x-error-kind"], headers["x-error-field"]) == ("invalid", "event_type")
        assert "only the route's own schedule fires ticks" in headers["x-error"]

    def test_a_tick_for_another_route_is_invalid(self, wired: Any) -> None:
        """A tick carries its route; another route's queue refuses it."""
        runners, _ = wired
        outcome = runners["poll-noop"].handle(_tick("poll-other"))
        assert outcome.outcome == "dead_lettered"
        assert outcome.messages[0].properties.headers["x-error-field"] == "payload.route"

    def test_a_route_without_a_schedule_refuses_ticks(self, wired: Any) -> None:
        """bus-ping has no schedule: a tick in its queue is dead-lettered, never mapped."""
        runners, _ = wired
        outcome = runners["bus-ping"].handle(_tick())
        assert outcome.outcome == "dead_lettered"
        assert "has no schedule" in outcome.messages[0].properties.headers["x-error"]


class TestCursorAndResults:
    """The cursor moves with each tick executed; each fact becomes a result event with a stable id."""

    def test_each_tick_moves_the_cursor_and_reports_its_fact(self, wired: Any) -> None:
        """Three ticks: cursor 1, 2, 3; one bus.pong per position, id uuid5(route/key)."""
        runners, store = wired
        runner = runners["poll-noop"]
        for minute in range(3):
            outcome = runner.handle(_tick(at=datetime(2026, 11, 28, 19, minute, tzinfo=UTC)))
            assert outcome.outcome == "delivered"
            [pong] = _bodies(outcome)
            assert pong["event_id"] == emission_id("poll-noop", f"poll/{minute + 1}")
            assert (pong["event_type"], pong["payload"]["data"]) == ("bus.pong", {"cursor": str(minute + 1)})
        assert store.cursor("poll-noop") == ("3", 3)
        row = store.get("poll-noop")
        assert row is not None
        assert row.last_outcome == "delivered"

    def test_a_duplicate_tick_re_emits_the_same_fact_and_leaves_the_cursor(self, wired: Any) -> None:
        """The same tick delivered again: claim done, nothing sent, the same result id; the cursor stays."""
        runners, store = wired
        at = datetime(2026, 11, 28, 19, 0, tzinfo=UTC)
        first = runners["poll-noop"].handle(_tick(at=at))
        again = runners["poll-noop"].handle(_tick(at=at))
        assert (first.outcome, again.outcome) == ("delivered", "duplicate")
        assert _bodies(first)[0]["event_id"] == _bodies(again)[0]["event_id"]
        assert store.cursor("poll-noop") == ("1", 1)

    def test_a_tick_that_read_an_older_cursor_does_not_overwrite_a_newer_one(self, wired: Any) -> None:
        """Another tick saved meanwhile: this one's save is refused (logged), its own effect still recorded."""
        runners, store = wired
        runner = runners["poll-noop"]
        original = runner._ticks
        assert original is not None

        class Racing(type(original)):  # type: ignore[misc]
            """A cursor read, then another tick's save before this one's."""

            def admit(self, event: Any, *, first: bool) -> Any:
                admitted = super().admit(event, first=first)
                store.save_cursor("poll-noop", "41")
                return admitted

        runner._ticks = Racing(original.route, original.store)
        outcome = runner.handle(_tick(at=datetime(2026, 11, 28, 19, 0, tzinfo=UTC)))
        assert outcome.outcome == "delivered"
        assert store.cursor("poll-noop") == ("41", 1)

    def test_unique_ids_per_route(self) -> None:
        """The same fact found by two routes is two results (each route reports its own)."""
        assert emission_id("a", "EE123456785VN/0005") != emission_id("b", "EE123456785VN/0005")
        assert uuid.UUID(emission_id("a", "k")).version == 5


class _Found(BaseModel):
    """A reply that reports what a poll found, some of it broken on purpose."""

    facts: list[tuple[str, str, dict[str, Any]]]

    def result_events(self) -> list[Emission]:
        return [
            Emission(key=key, event_type=kind, payload=payload, occurred_at=datetime(2026, 11, 28, 19, tzinfo=UTC))
            for key, kind, payload in self.facts
        ]


class TestEmissionChecks:
    """A result event the reply names is checked before anything goes out; a broken one names its key."""

    def _messages(self, *facts: tuple[str, str, dict[str, Any]]) -> list[Any]:
        body, props = tick_message("r", datetime(2026, 11, 28, 19, tzinfo=UTC), fired_at=datetime.now(UTC))
        cause = parse_event(
            body,
            payload_models=EVENT_PAYLOADS,
            content_type="application/json",
            message_id=props.message_id,
            amqp_type="bus.tick",
        ).envelope
        return Emissions("r", _Found, EVENT_PAYLOADS).messages({"facts": list(facts)}, cause)

    def test_each_fact_becomes_a_result_in_order(self) -> None:
        """Two facts ▶ two bus.pong results, ids from their keys, the cause in x-cause."""
        pong = {"data": {"n": 1}, "idempotency_key": "k"}
        out = self._messages(("EE1/0001", "bus.pong", pong), ("EE1/0002", "bus.pong", pong))
        assert [json.loads(body)["event_id"] for _, body, _ in out] == [
            emission_id("r", "EE1/0001"),
            emission_id("r", "EE1/0002"),
        ]
        assert out[0][2].headers["x-key"] == "EE1/0001"

    @pytest.mark.parametrize(
        ("fact", "words"),
        [
            (("EE1/0003", "bus.nothing", {}), "result event 'EE1/0003' has the unknown type 'bus.nothing'"),
            (("EE1/0004", "bus.pong", {"data": {}}), "result event 'EE1/0004' (bus.pong): payload.idempotency_key"),
        ],
    )
    def test_a_broken_fact_is_a_mapping_error_naming_its_key(self, fact: Any, words: str) -> None:
        """Unknown type or invalid payload: MappingError (dead-lettered as ``mapping``), nothing published."""
        with pytest.raises(MappingError, match=re.escape(words)):
            self._messages(("EE1/0001", "bus.pong", {"data": {}, "idempotency_key": "k"}), fact)
