"""Connector state (connectors/kit/state.py) on both stores: insert once, compare-and-set, take once, isolation."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest
from concurrently import run_concurrently

from connectors.kit.state import ConnectorState, HasState, StateNotAttached
from routes.idempotency import IdempotencyStore

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def state(store_url: str) -> Iterator[ConnectorState]:
    st = ConnectorState(store_url, connector="vnpost")
    yield st
    st.close()


def test_put_if_absent_writes_once_and_put_overwrites(state: ConnectorState) -> None:
    assert state.put("orders", "K1", {"item": "EE1"}, status="open", if_absent=True) is True
    assert state.put("orders", "K1", {"item": "EE2"}, if_absent=True) is False
    row = state.get("orders", "K1")
    assert row is not None and row.value == {"item": "EE1"} and row.status == "open" and row.version == 1
    assert state.put("orders", "K1", {"item": "EE3"}, status="done") is True
    row = state.get("orders", "K1")
    assert row is not None and row.value == {"item": "EE3"} and row.status == "done" and row.version == 2
    assert state.get("orders", "nope") is None


def test_update_is_compare_and_set(state: ConnectorState) -> None:
    state.put("c", "cursor", {"at": 1})
    row = state.get("c", "cursor")
    assert row is not None
    assert state.update("c", "cursor", value={"at": 2}, expect_version=row.version) is True
    # a writer that read the old row loses
    assert state.update("c", "cursor", value={"at": 99}, expect_version=row.version) is False
    assert state.update("c", "cursor", status="x", expect_status="not-this") is False
    assert state.update("c", "missing", value={}) is False
    final = state.get("c", "cursor")
    assert final is not None and final.value == {"at": 2} and final.version == 2


def test_take_moves_each_row_once_across_threads(state: ConnectorState, store_url: str) -> None:
    for i in range(60):
        state.put("pool", f"EE{i:09d}VN", {}, status="free")
    others = [ConnectorState(store_url, connector="vnpost") for _ in range(4)]
    taken: list[str] = []
    lock = threading.Lock()

    def taker(st: ConnectorState) -> None:
        while (row := st.take("pool", status="free", new_status="taken", value={"by": "t"})) is not None:
            with lock:
                taken.append(row.key)

    run_concurrently(taker, [(st,) for st in others], timeout=60)
    for st in others:
        st.close()
    assert sorted(taken) == [f"EE{i:09d}VN" for i in range(60)]  # every code once, none twice
    assert state.count("pool", status="free") == 0
    assert state.count("pool", status="taken") == 60
    row = state.get("pool", taken[0])
    assert row is not None and row.value == {"by": "t"}


def test_rows_page_by_key_and_connectors_are_isolated(state: ConnectorState, store_url: str) -> None:
    for i in range(5):
        state.put("items", f"k{i}", {"i": i}, status="transit" if i % 2 else "done")
    other = ConnectorState(store_url, connector="receipt")
    try:
        other.put("items", "k0", {"other": True})
        assert [r.key for r in state.rows("items", status="transit")] == ["k1", "k3"]
        assert [r.key for r in state.rows("items", after_key="k2", limit=2)] == ["k3", "k4"]
        assert state.count("items") == 5 and other.count("items") == 1
        assert state.delete("items", "k0") is True and state.delete("items", "k0") is False
        assert other.get("items", "k0") is not None
    finally:
        other.close()


def test_shares_an_open_store_without_closing_it(sqlite_url: str) -> None:
    store = IdempotencyStore(sqlite_url)
    st = ConnectorState(store, connector="x")
    st.put("n", "k", {"a": "Đắk Lắk"})
    st.close()
    row = ConnectorState(store, connector="x").get("n", "k")
    assert row is not None and row.value == {"a": "Đắk Lắk"}
    store.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda st: st.put("", "k", {}), "ns must be"),
        (lambda st: st.put("n", "a\nb", {}), "key must be"),
        (lambda st: st.put("n", "k" * 201, {}), "key must be"),
        (lambda st: st.put("n", "k", ["not", "a", "dict"]), "JSON object"),
        (lambda st: st.put("n", "k", {"x": float("nan")}), "Out of range float"),
    ],
)
def test_bad_input_is_refused_with_its_name(sqlite_url: str, call: object, message: str) -> None:
    st = ConnectorState(sqlite_url, connector="x")
    try:
        with pytest.raises((ValueError, TypeError), match=message):
            call(st)  # type: ignore[operator]
    finally:
        st.close()


def test_a_connector_without_state_says_so(sqlite_url: str) -> None:
    class C(HasState):
        pass

    c = C()
    with pytest.raises(StateNotAttached, match="no connector state attached"):
        _ = c.state
    opened: list[int] = []

    def factory() -> ConnectorState:
        opened.append(1)
        return ConnectorState(sqlite_url, connector="c")

    c.attach_state(factory)
    assert opened == []  # lazily: nothing opened until used
    c.state.put("n", "k", {})
    c.state.put("n", "k2", {})
    assert opened == [1]
    c.state.close()
