# mypy: allow-untyped-defs, allow-incomplete-defs
"""A pipeline thread's chain of batches (RouteRunner.handle_chain), on a runner built by wiring, against the
iGate simulator, fed deliveries by hand (no broker needed).

Each batch's effects are recorded in the transaction that claims the next batch's events (issue 15): every
effect still happens once, each batch's outcomes are handed over in order and only once its effects are in
the store, and the same event twice in a row is claimed after its first attempt's completion (so the second
re-emits, sends nothing).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pika
import pytest
from busenv import SIM_PASSWORD, SIM_USER, received_events, write_config

from bus.wiring import build_runners, load_app
from config.settings import Settings
from routes.idempotency import DONE
from routes.pipeline import Delivery, Outcome, RouteRunner, idempotency_key
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator

ROUTE = "bus-ack"


@pytest.fixture
def sim() -> Iterator[IGateSimulator]:
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as s:
        yield s


@pytest.fixture
def runner(tmp_path, sqlite_url, monkeypatch, sim) -> Iterator[RouteRunner]:
    monkeypatch.setenv("IGATE_BUS_IGATE_USERNAME", SIM_USER)
    monkeypatch.setenv("IGATE_BUS_IGATE_PASSWORD", SIM_PASSWORD)
    cfg = write_config(tmp_path / "cfg", endpoint=sim.url)
    app = load_app(Settings(config_dir=cfg, store_url=sqlite_url))
    [built] = build_runners(app, [r for r in app.routes if r.spec.name == ROUTE], worker_id="t")
    yield built
    app.close()


def _delivery(event: dict[str, Any]) -> Delivery:
    props = pika.BasicProperties(
        content_type="application/json", message_id=event["event_id"], type=event["event_type"]
    )
    return Delivery(json.dumps(event).encode(), props, "igate.events", event["event_type"], redelivered=False)


def test_a_chain_applies_each_effect_once_and_hands_batches_over_in_order_once_recorded(
    runner: RouteRunner, sim: IGateSimulator
) -> None:
    """6 batches of one, the 4th the same event as the 3rd ▶ 5 effects, 6 outcomes in order (the repeat a
    duplicate), each handed over with its claim already done in the store, the last one marked last."""
    events = received_events(5, prefix="CHAIN")
    batches = [[_delivery(e)] for e in events[:3]] + [[_delivery(events[2])]] + [[_delivery(e)] for e in events[3:]]
    queue = list(batches[1:])
    handed: list[tuple[list[str], bool, list[str]]] = []

    def take_next() -> list[Delivery] | None:
        return queue.pop(0) if queue else None

    def hand_over(outcomes: list[Outcome], last: bool) -> None:
        ids = [str(e["event_id"]) for e in events]
        states = [r.state if (r := runner.store.get(ROUTE, i)) else "-" for i in ids]
        handed.append(([o.outcome for o in outcomes], last, states))

    runner.handle_chain(batches[0], take_next, hand_over)

    assert [h[0] for h in handed] == [["delivered"]] * 3 + [["duplicate"]] + [["delivered"]] * 2
    assert [h[1] for h in handed] == [False] * 5 + [True]
    done_before_handover = [0, 1, 2, 2, 3, 4]  # the event each batch carried
    for (_, _, states), index in zip(handed, done_before_handover, strict=True):
        assert states[index] == DONE
    counts = sim.effect_counts()
    assert counts == {idempotency_key(ROUTE, str(e["event_id"])): 1 for e in events}
