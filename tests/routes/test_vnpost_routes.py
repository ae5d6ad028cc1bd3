# mypy: allow-untyped-defs
"""The VNPost routes end to end: real broker, real store (its connector state holds the pool), real worker,
the VNPost simulator over HTTP.

Orders are counted at the simulator by the key the connector sent (``clientOrderId``, the route's idempotency
key); the simulator does not deduplicate, so a count above 1 is a duplicate order the bus caused. The pool is
read from the store.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from busenv import declare_routes, depth, drained, get_all, publish, publish_raw, thread_worker, wait_for
from vnpost_data import (
    ORDER_ROUTES_YAML,
    bcci_event,
    codes,
    item_code,
    vnpost_connector_yaml,
    withdrawn_event,
    wrong_check_digit,
)

from connectors.kit.state import ConnectorState
from connectors.vnpost import FREE, ITEMS, POOL, TRANSIT, load_pool
from routes.pipeline import idempotency_key
from simulators.vnpost import DEFAULT_KEY, DEFAULT_SECRET, VnpostSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ORDER_ROUTES = ("vnpost-pickup", "vnpost-return", "vnpost-cancel")
ROUTES_YAML = (
    "routes:\n"
    + ORDER_ROUTES_YAML
    + """\
  - name: vnpost-cancel
    from: {exchange: igate.events, events: [dossier.withdrawn, dossier.stopped]}
    when: "payload.bcci.item_code != null"
    adapter: igate_to_vnpost.dossier_ended
    to: vnpost.cancel_order
    retry: {backoff: [300ms, 600ms], max_attempts: 12}
"""
)


@pytest.fixture
def sim() -> Iterator[VnpostSimulator]:
    with VnpostSimulator(step_s=60) as s:
        yield s


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGATE_BUS_VNPOST_KEY", DEFAULT_KEY)
    monkeypatch.setenv("IGATE_BUS_VNPOST_SECRET", DEFAULT_SECRET)


def write_config(folder: Path, endpoint: str, *, pool_low: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.yaml").write_text(ROUTES_YAML)
    (folder / "connectors.yaml").write_text("connectors:\n" + vnpost_connector_yaml(endpoint, pool_low=pool_low))
    return folder


def queues(route: str) -> list[str]:
    return [f"route.{route}", f"retry.{route}.300ms", f"retry.{route}.600ms"]


def all_drained(amqp_url: str) -> bool:
    return drained(amqp_url, [q for r in ORDER_ROUTES for q in queues(r)])


def dead_letters(amqp_url: str, route: str) -> dict[str, dict[str, Any]]:
    """The route's dead letters by event id: their ``x-error-*`` headers."""
    out = {}
    for props, body in get_all(amqp_url, f"dlq.{route}"):
        headers = props.headers or {}
        out[json.loads(body)["event_id"]] = {k: v for k, v in headers.items() if k.startswith("x-error")}
    return out


def orders_and_pool(n: int, amqp_url: str, store_url: str, tmp_path: Path, sim: VnpostSimulator) -> None:
    """``n`` returns and ``n`` pickups ▶ 2n orders, each once, each under its own code from the pool.

    A third of the orders are applied by VNPost and their answer lost (apply-then-drop): each is reconciled
    by lookup, never sent under a second code.
    """
    cfg = write_config(tmp_path / "cfg", sim.api_url)
    state = ConnectorState(store_url, connector="vnpost")
    try:
        load_pool(state, codes(2 * n + 10))
        sim.set_faults(apply_then_drop_rate=0.3, only_paths=["/order/post"], seed=12)
        events = [bcci_event(k, i, run=tmp_path.name) for i in range(n) for k in ("return", "pickup")]
        declare_routes(amqp_url, cfg)
        with thread_worker(amqp_url, store_url, cfg):
            publish(amqp_url, events)
            wait_for(lambda: len(sim.effect_counts()) >= 2 * n, timeout=60 + n, what=f"{2 * n} orders")
            wait_for(lambda: all_drained(amqp_url), timeout=60, what="the order routes to drain")
        dropped = [r for r in sim.requests("/order/post") if r["fault"] == "apply_then_drop"]
        assert dropped, "no answer was ever lost: the reconcile path was not exercised"
        route_of = {"dossier.result_ready": "vnpost-return", "bcci.pickup_requested": "vnpost-pickup"}
        expected = {idempotency_key(route_of[e["event_type"]], e["event_id"]) for e in events}
        counts = sim.effect_counts()
        assert set(counts) == expected
        assert [k for k, c in counts.items() if c > 1] == []
        item_codes = [o["itemCode"] for o in sim.orders().values()]
        assert len(set(item_codes)) == 2 * n
        assert state.count(POOL, status=FREE) == 10
        assert state.count(ITEMS, status=TRANSIT) == 2 * n
        for route in ORDER_ROUTES:
            assert depth(amqp_url, f"dlq.{route}") == 0
    finally:
        state.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_30_returns_and_30_pickups_give_60_orders_each_once(module_amqp_url, store_url, tmp_path, sim, env):
    amqp_url = module_amqp_url
    """30 + 30 with a third of the answers lost ▶ 60 orders at VNPost, one per key and code; 10 codes left."""
    orders_and_pool(30, amqp_url, store_url, tmp_path, sim)


@pytest.mark.chaos
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_300_returns_and_300_pickups_give_600_orders_each_once(module_amqp_url, store_url, tmp_path, sim, env):
    amqp_url = module_amqp_url
    """The issue's figure: 300 + 300 ▶ 600 orders, each once, on PostgreSQL."""
    orders_and_pool(300, amqp_url, store_url, tmp_path, sim)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_bad_inputs_are_dead_lettered_naming_the_field(module_amqp_url, store_url, tmp_path, sim, env):
    amqp_url = module_amqp_url
    """Bad address, wrong phone, COD -1 and 10^13, a wrong check digit, an empty pool ▶ DLQ with the field."""
    cfg = write_config(tmp_path / "cfg", sim.api_url)
    state = ConnectorState(store_url, connector="vnpost")
    load_pool(state, codes(1))
    run = tmp_path.name
    bad_province = bcci_event("return", 1, run=run)
    bad_province["payload"]["bcci"]["receiver"]["province"] = "99"
    bad_district = bcci_event("pickup", 2, run=run)
    bad_district["payload"]["pickup_address"]["district"] = "001"
    bad_phone = bcci_event("return", 3, run=run)
    bad_phone["payload"]["bcci"]["receiver"]["phone"] = "0212345678"
    cod_negative = bcci_event("return", 4, run=run)
    cod_negative["payload"]["fees"][0]["amount_vnd"] = -1
    cod_huge = bcci_event("return", 5, run=run)
    cod_huge["payload"]["fees"] = [{**cod_huge["payload"]["fees"][0], "amount_vnd": 10**13, "collect": "sau"}]
    first, exhausted = bcci_event("pickup", 6, run=run), bcci_event("pickup", 7, run=run)
    cancel = withdrawn_event(8, wrong_check_digit(item_code(1)), run=run)
    expected = {
        ("vnpost-return", bad_province["event_id"]): ("mapping", "payload.bcci.receiver.province"),
        ("vnpost-pickup", bad_district["event_id"]): ("mapping", "payload.pickup_address.district"),
        ("vnpost-return", bad_phone["event_id"]): ("invalid", "payload.bcci.receiver.phone"),
        ("vnpost-return", cod_negative["event_id"]): ("invalid", "payload.fees.0.amount_vnd"),
        ("vnpost-return", cod_huge["event_id"]): ("mapping", "payload.fees"),
        ("vnpost-pickup", exhausted["event_id"]): ("rejected", "item_code"),
        ("vnpost-cancel", cancel["event_id"]): ("mapping", "payload.bcci.item_code"),
    }
    try:
        declare_routes(amqp_url, cfg)
        with thread_worker(amqp_url, store_url, cfg):
            publish(amqp_url, [bad_province, bad_district, cod_huge, first, cancel])
            wait_for(lambda: len(sim.effect_counts()) == 1, timeout=30, what="the first pickup")
            publish(amqp_url, [exhausted])
            # the envelope refuses these two at the worker's door: published raw, as a producer could
            for event in (bad_phone, cod_negative):
                publish_raw(
                    amqp_url,
                    json.dumps(event, ensure_ascii=False).encode(),
                    routing_key=event["event_type"],
                    message_id=event["event_id"],
                )

            def all_dead() -> bool:
                return sum(depth(amqp_url, f"dlq.{r}") for r in ORDER_ROUTES) >= len(expected)

            wait_for(all_dead, timeout=60, what="seven dead letters")
        got = {}
        for route in ORDER_ROUTES:
            for event_id, headers in dead_letters(amqp_url, route).items():
                # an envelope refused at the door names the field in x-error; a refusal past it in x-error-field
                field = headers.get("x-error-field") or str(headers.get("x-error", "")).split(":", 1)[0]
                got[(route, event_id)] = (headers.get("x-error-kind"), field)
        assert got == expected
        assert sim.effect_counts() == {idempotency_key("vnpost-pickup", first["event_id"]): 1}
        assert state.count(POOL, status=FREE) == 0
    finally:
        state.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_withdrawn_dossier_cancels_its_order_and_frees_the_code(module_amqp_url, store_url, tmp_path, sim, env):
    amqp_url = module_amqp_url
    """Return order, then dossier.withdrawn with its item code ▶ one cancel at VNPost, the code free again."""
    cfg = write_config(tmp_path / "cfg", sim.api_url)
    state = ConnectorState(store_url, connector="vnpost")
    load_pool(state, codes(2))
    ret = bcci_event("return", 1, run=tmp_path.name)
    try:
        declare_routes(amqp_url, cfg)
        with thread_worker(amqp_url, store_url, cfg):
            publish(amqp_url, [ret])
            wait_for(lambda: len(sim.orders()) == 1, timeout=30, what="the order")
            (code,) = sim.orders()
            cancel = withdrawn_event(2, code, run=tmp_path.name, dossier=ret["dossier_code"])
            publish(amqp_url, [cancel])
            wait_for(lambda: len(sim.effect_counts("cancel")) == 1, timeout=30, what="the cancel")
            wait_for(lambda: all_drained(amqp_url), timeout=30, what="drain")
        assert sim.effect_counts("cancel") == {idempotency_key("vnpost-cancel", cancel["event_id"]): 1}
        assert state.count(POOL, status=FREE) == 2
    finally:
        state.close()
