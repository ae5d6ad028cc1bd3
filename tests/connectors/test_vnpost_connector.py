"""The VNPost connector against the VNPost simulator on a real socket, with the connector state in a real store.

Every assertion about what was sent reads the simulator's record or its effects (counted by the key the
connector sent); every assertion about the pool reads the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from vnpost_data import codes, item_code, wrong_check_digit

from config.model import ConnectorSpec
from connectors.kit.state import ConnectorState
from connectors.vnpost import FREE, ITEMS, POOL, TRANSIT, VnpostConnector, load_pool
from schemas.errors import (
    ConfigError,
    CredentialsRefused,
    TargetGarbled,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
)
from schemas.vnpost import CancelOrder, CreateOrder, PollRequest, TrackingEntry, check_item_code, s10_check_digit
from simulators.vnpost import DEFAULT_KEY, DEFAULT_SECRET, VnpostSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY_ENV, SECRET_ENV = "IGATE_BUS_TEST_VNPOST_KEY", "IGATE_BUS_TEST_VNPOST_SECRET"
CITIZEN: dict[str, Any] = {
    "name": "Nguyễn Thị Hương",
    "phone": "0912000111",
    "address": "Số 12 đường Lê Duẩn",
    "province": "66",
    "district": "643",
    "ward": "24121",
}


@pytest.fixture(scope="module")
def sim_server() -> Iterator[VnpostSimulator]:
    with VnpostSimulator(step_s=60, fail_every=3) as sim:
        yield sim


@pytest.fixture
def sim(sim_server: VnpostSimulator) -> Iterator[VnpostSimulator]:
    sim_server.reset()
    yield sim_server
    sim_server.reset()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ConnectorState]:
    st = ConnectorState(f"sqlite:///{tmp_path / 'store.sqlite3'}", connector="vnpost")
    yield st
    st.close()


def spec(endpoint: str, **options: Any) -> ConnectorSpec:
    return ConnectorSpec.model_validate(
        {
            "type": "vnpost",
            "endpoint": endpoint,
            "timeout": {"connect": "1s", "read": "1s", "total": "2s"},
            "breaker": {"fail_max": 100, "reset_timeout": "1s"},
            "credentials": {"customer_key": KEY_ENV, "secret_key": SECRET_ENV},
            "options": {
                "customer_code": "DLK0001",
                "pool_low": 3,
                "poll_budget": 100,
                "agency_name": "Bộ phận một cửa",
                "agency_phone": "02623812345",
                "agency_address": "09 Lê Duẩn",
                "agency_province": "66",
                "agency_district": "643",
                "agency_ward": "24121",
                **options,
            },
        }
    )


@pytest.fixture
def conn(sim: VnpostSimulator, state: ConnectorState, monkeypatch: pytest.MonkeyPatch) -> Iterator[VnpostConnector]:
    monkeypatch.setenv(KEY_ENV, DEFAULT_KEY)
    monkeypatch.setenv(SECRET_ENV, DEFAULT_SECRET)
    c = VnpostConnector("vnpost", spec(sim.api_url))
    c.attach_state(state)
    load_pool(state, codes(5))
    yield c
    c.close()


def order(kind: str = "return", n: int = 1, **fields: Any) -> CreateOrder:
    data: dict[str, Any] = {
        "kind": kind,
        "order_number": f"000.00.16.H16-261126-{n:04d}",
        "agency_code": "000.00.16.H16",
        "citizen": CITIZEN,
        "cod_vnd": 0,
        "description": "Trả kết quả",
        **fields,
    }
    return CreateOrder.model_validate(data)


def poll_runs(conn: VnpostConnector, runs: int, cursor: str | None = None) -> tuple[list[TrackingEntry], str | None]:
    """``runs`` tracking runs one after the other, each starting from the cursor the last one saved."""
    found: list[TrackingEntry] = []
    for i in range(runs):
        reply = conn.poll(PollRequest(run=f"2026-01-05T{i:06d}", cursor=cursor))
        found.extend(reply.entries)
        cursor = reply.cursor
    return found, cursor


# -- item codes -------------------------------------------------------------------------------------------


def test_s10_check_digit_matches_the_published_example_and_refuses_a_wrong_one() -> None:
    """EB123456785VN passes (docs/domain.md section 3); one digit off is refused, naming the expected digit."""
    assert s10_check_digit("12345678") == 5
    assert check_item_code("EB123456785VN") == "EB123456785VN"
    with pytest.raises(ValueError, match="expected 5"):
        check_item_code("EB123456784VN")
    with pytest.raises(ValueError, match="not an S10"):
        check_item_code("EB12345678VN")


def test_load_pool_refuses_a_wrong_check_digit_and_adds_nothing(state: ConnectorState) -> None:
    """A batch with one bad code adds none of its codes; a good batch is added once (loading twice adds 0)."""
    good = codes(3, start=100)
    with pytest.raises(ValueError, match="check digit"):
        load_pool(state, [*good, wrong_check_digit(item_code(200))])
    assert state.count(POOL) == 0
    assert load_pool(state, good) == 3
    assert load_pool(state, good) == 0


# -- orders ---------------------------------------------------------------------------------------------


def test_an_order_takes_one_code_and_a_retry_of_it_the_same(
    conn: VnpostConnector, sim: VnpostSimulator, state: ConnectorState
) -> None:
    """The same key sent twice (a retry) gets the same item code: the pool loses one code, not two."""
    first = conn.create_order(order(), "key-1")
    again = conn.create_order(order(), "key-1")
    assert first.item_code == again.item_code == item_code(1)
    assert (first.answer_code, again.answer_code) == ("100", "101")
    assert state.count(POOL, status=FREE) == 4 == again.pool_free
    assert sim.effect_counts() == {"key-1": 2}  # the simulator does not deduplicate: both sends reached it
    row = state.get(ITEMS, first.item_code)
    assert row is not None and row.status == TRANSIT


def test_two_orders_take_two_codes_and_the_wire_carries_the_parties(
    conn: VnpostConnector, sim: VnpostSimulator
) -> None:
    """A pickup puts the citizen as sender, a return as receiver; COD is an integer on the wire."""
    pickup = conn.create_order(order("pickup", 1, cod_vnd=600_000), "key-p")
    ret = conn.create_order(order("return", 2), "key-r")
    assert pickup.item_code != ret.item_code
    posts = {r["key"]: r for r in sim.requests("/order/post")}
    assert set(posts) == {"key-p", "key-r"}
    orders = sim.orders()
    assert orders[pickup.item_code]["codAmount"] == 600_000
    assert orders[pickup.item_code]["serviceKind"] == "pickup"


def test_an_empty_pool_is_a_rejection_naming_the_item_code(conn: VnpostConnector, sim: VnpostSimulator) -> None:
    """Five codes, six orders: the sixth is refused before anything is sent (field item_code)."""
    for n in range(5):
        conn.create_order(order(n=n + 1), f"key-{n}")
    with pytest.raises(TargetRejected) as err:
        conn.create_order(order(n=9), "key-9")
    assert err.value.field == "item_code" and err.value.code == "pool_empty"
    assert "key-9" not in {r["key"] for r in sim.requests("/order/post")}


def test_pool_low_is_logged_when_free_codes_drop_under_the_threshold(
    conn: VnpostConnector, capsys: pytest.CaptureFixture[str]
) -> None:
    """pool_low 3: the third order leaves 2 free and says so (warning ``vnpost_pool_low``)."""
    replies = [conn.create_order(order(n=n + 1), f"key-{n}") for n in range(3)]
    assert [r.pool_free for r in replies] == [4, 3, 2]
    out = capsys.readouterr()
    assert "vnpost_pool_low" in out.out + out.err


def test_a_refused_order_gives_its_code_back(
    conn: VnpostConnector, sim: VnpostSimulator, state: ConnectorState
) -> None:
    """VNPost answering 102 is TargetRejected with that code, and the code returns to the pool."""
    sim.set_faults(order_answer="102")
    with pytest.raises(TargetRejected) as err:
        conn.create_order(order(), "key-x")
    assert err.value.code == "102"
    assert state.count(POOL, status=FREE) == 5
    assert sim.requests("/order/post"), "the refusal never came from the simulator"


def test_an_answer_lost_after_the_order_is_reconciled_by_lookup_without_a_second_code(
    conn: VnpostConnector, sim: VnpostSimulator, state: ConnectorState
) -> None:
    """apply-then-drop: maybe applied; the lookup finds the order under the same code; the pool lost one."""
    sim.set_faults(apply_then_drop_rate=1.0, only_paths=["/order/post"])
    with pytest.raises(TargetUnavailable) as err:
        conn.create_order(order(), "key-lost")
    assert getattr(err.value, "maybe_applied", False)
    sim.set_faults()
    found = conn.find_order("key-lost")
    assert found is not None and found.item_code == item_code(1)
    assert sim.effect_counts() == {"key-lost": 1}
    assert state.count(POOL, status=FREE) == 4


def test_lookup_of_an_order_that_never_took_a_code_asks_nobody(conn: VnpostConnector, sim: VnpostSimulator) -> None:
    """No code taken with the key: nothing could have been sent, so None without a request."""
    assert conn.find_order("never") is None
    assert sim.requests() == []


def test_lookup_of_a_code_taken_but_never_sent_is_none(conn: VnpostConnector, sim: VnpostSimulator) -> None:
    """503 before VNPost handled it: the code stays with the key; the lookup answers None; the resend uses it."""
    sim.set_faults(error_rate=1.0, error_status=503, only_paths=["/order/post"])
    with pytest.raises(TargetUnavailable):
        conn.create_order(order(), "key-503")
    sim.set_faults()
    assert conn.find_order("key-503") is None
    assert conn.create_order(order(), "key-503").item_code == item_code(1)


def test_cancel_gives_the_code_back_and_stops_tracking(
    conn: VnpostConnector, sim: VnpostSimulator, state: ConnectorState
) -> None:
    """A cancel frees the code and ends the item; its lookup finds it; the life ends with 9."""
    made = conn.create_order(order(), "key-c")
    cancel = CancelOrder(item_code=made.item_code, order_number=made.order_number, reason="rút hồ sơ")
    done = conn.cancel_order(cancel, "cancel-1")
    assert done.pool_free == 5 and sim.effect_counts("cancel") == {"cancel-1": 1}
    found = conn.find_cancel("cancel-1")
    assert found is not None and found.item_code == made.item_code
    assert conn.find_cancel("cancel-none") is None
    row = state.get(ITEMS, made.item_code)
    assert row is not None and row.status != TRANSIT
    assert [e["statusCode"] for e in sim.history(made.item_code)][-1] == 9


def test_cancel_of_an_unknown_item_is_rejected(conn: VnpostConnector) -> None:
    """VNPost's 104 for an item it never had: TargetRejected naming the code."""
    with pytest.raises(TargetRejected) as err:
        conn.cancel_order(CancelOrder(item_code=item_code(77), order_number="X-1", reason="r"), "c-2")
    assert err.value.code == "104"


# -- tracking --------------------------------------------------------------------------------------------


def test_tracking_reports_each_event_once_in_order_and_stops_polling_finished_items(
    conn: VnpostConnector, sim: VnpostSimulator, state: ConnectorState
) -> None:
    """Lives played to their end: every event once, in order per item; no call for an item once finished."""
    made = [conn.create_order(order(n=n + 1), f"key-{n}") for n in range(3)]
    found: list[TrackingEntry] = []
    cursor = None
    for _ in range(8):
        sim.advance(60)
        entries, cursor = poll_runs(conn, 1, cursor)
        found.extend(entries)
    entries, cursor = poll_runs(conn, 2, cursor)  # acknowledge the last run, then retire the finished
    found.extend(entries)
    for m in made:
        mine = [e for e in found if e.item_code == m.item_code]
        truth = sim.history(m.item_code)
        assert [e.event_no for e in mine] == list(range(1, len(truth) + 1))
        assert [e.status_code for e in mine] == [t["statusCode"] for t in truth]
        assert mine[-1].status_code in {14, 18}
    assert state.count(ITEMS, status=TRANSIT) == 0
    calls = sim.tracking_calls()
    more, _ = poll_runs(conn, 3, cursor)
    assert more == [] and sim.tracking_calls() == calls


def test_tracking_survives_repeated_reordered_and_dropped_events(conn: VnpostConnector, sim: VnpostSimulator) -> None:
    """Repeats are ignored, reordering undone, a dropped event waits for the next run: still once and in order."""
    made = [conn.create_order(order(n=n + 1), f"key-{n}") for n in range(4)]
    sim.set_faults(repeat_rate=0.5, reorder=0.5, drop_event_rate=0.5, seed=7)
    sim.finish_lives()
    found, _ = poll_runs(conn, 12)
    assert set(sim.tracking_faults()) == {"repeat", "reorder", "drop"}, "a tracking fault never happened"
    for m in made:
        mine = [e.event_no for e in found if e.item_code == m.item_code]
        assert mine == list(range(1, len(sim.history(m.item_code)) + 1))


def test_a_run_whose_results_were_never_published_is_repeated_with_the_same_keys(conn: VnpostConnector) -> None:
    """Two runs from the same cursor (the first died before its cursor was saved) report the same facts."""
    conn.create_order(order(), "key-1")
    first = conn.poll(PollRequest(run="2026-01-05T000001", cursor=None))
    second = conn.poll(PollRequest(run="2026-01-05T000002", cursor=None))
    assert [e.key for e in first.entries] == [e.key for e in second.entries] != []


def test_the_budget_bounds_a_run_and_the_cursor_goes_round(
    sim: VnpostSimulator, state: ConnectorState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget 2 over 5 items: each run polls 2, and three runs reach every item."""
    monkeypatch.setenv(KEY_ENV, DEFAULT_KEY)
    monkeypatch.setenv(SECRET_ENV, DEFAULT_SECRET)
    c = VnpostConnector("vnpost", spec(sim.api_url, poll_budget=2))
    c.attach_state(state)
    load_pool(state, codes(5))
    try:
        for n in range(5):
            c.create_order(order(n=n + 1), f"k{n}")
        cursor = None
        for i in range(3):
            reply = c.poll(PollRequest(run=f"r{i}", cursor=cursor))
            assert reply.polled <= 2
            cursor = reply.cursor
        assert set(sim.tracking_calls()) == set(codes(5))
    finally:
        c.close()


# -- the client's error table -----------------------------------------------------------------------------


def test_credentials_refused_wait_for_an_operator(conn: VnpostConnector, sim: VnpostSimulator) -> None:
    """VNPost refusing the key at /token is CredentialsRefused (parked, never dead-lettered)."""
    sim.set_faults(refuse_credentials=True)
    with pytest.raises(CredentialsRefused):
        conn.create_order(order(), "key-1")


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        ({"error_rate": 1.0, "error_status": 503}, TargetUnavailable),
        ({"error_rate": 1.0, "error_status": 500}, TargetUnavailable),
        ({"malformed_body": 1.0}, TargetGarbled),
        ({"hostile_body": 1.0}, TargetGarbled),
        ({"drop_connection": 1.0}, TargetUnavailable),
        ({"timeout": 1.0, "hang_s": 3.0}, TargetTimeout),
    ],
)
def test_the_client_error_table(
    conn: VnpostConnector, sim: VnpostSimulator, faults: dict[str, Any], error: type[Exception]
) -> None:
    """Each fault of the order call becomes its row of the error table; the fault really happened."""
    sim.set_faults(only_paths=["/order/post"], **faults)
    with pytest.raises(error):
        conn.create_order(order(), "key-f")
    assert next(r["fault"] for r in sim.requests("/order/post")) is not None


def test_a_connector_without_the_agency_or_state_is_a_config_error(
    sim: VnpostSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agency phone that is not a phone names the option; a connector without state says so."""
    monkeypatch.setenv(KEY_ENV, DEFAULT_KEY)
    monkeypatch.setenv(SECRET_ENV, DEFAULT_SECRET)
    with pytest.raises(ConfigError, match=r"options\.agency_phone"):
        VnpostConnector("vnpost", spec(sim.api_url, agency_phone="call us"))
    bare = VnpostConnector("vnpost", spec(sim.api_url))
    try:
        with pytest.raises(ConfigError, match="connector state"):
            bare.create_order(order(), "k")
    finally:
        bare.close()


def test_probe_answers(conn: VnpostConnector) -> None:
    """The probe tracks a code that does not exist: up, no effect."""
    assert conn.probe().state == "up"


def test_an_unset_key_waits_for_an_operator_instead_of_stopping_the_bus(
    sim: VnpostSimulator, state: ConnectorState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connector builds without its key's variable (the bus starts); a call is CredentialsRefused."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(SECRET_ENV, DEFAULT_SECRET)
    c = VnpostConnector("vnpost", spec(sim.api_url))
    c.attach_state(state)
    load_pool(state, codes(1))
    try:
        with pytest.raises(CredentialsRefused, match=KEY_ENV):
            c.create_order(order(), "k")
        assert sim.requests() == []
    finally:
        c.close()


def test_replies_carry_their_result_events(conn: VnpostConnector, sim: VnpostSimulator) -> None:
    """A run's entries become tracking_updated events keyed by the fact; a low pool becomes one pool_low."""
    replies = [conn.create_order(order(n=n + 1), f"key-{n}") for n in range(3)]
    assert [len(r.result_events()) for r in replies] == [0, 0, 1]
    (alert,) = replies[-1].result_events()
    assert (alert.event_type, alert.key, alert.payload) == (
        "vnpost.pool_low",
        "pool_low/2",
        {"free": 2, "threshold": 3},
    )
    sim.advance(120)
    reply = conn.poll(PollRequest(run="2026-01-05T000001", cursor=None))
    events = reply.result_events()
    assert [e.key for e in events] == [e.key for e in reply.entries] != []
    first = events[0]
    assert first.event_type == "vnpost.tracking_updated"
    assert first.dossier_code == first.payload["order_number"]
    assert set(first.payload) == {"item_code", "order_number", "status_code", "status_message", "at"}


def test_a_run_that_fails_part_way_changes_no_item(
    conn: VnpostConnector, sim: VnpostSimulator, state: ConnectorState
) -> None:
    """One tracking call answered, the next refused 503: the run raises and no item's row was written."""
    for n in range(3):
        conn.create_order(order(n=n + 1), f"key-{n}")
    sim.advance(120)
    for seed in range(100):
        sim.set_faults(error_rate=0.5, error_status=503, only_paths=["/order/tracking"], seed=seed)
        before = len(sim.requests("/order/tracking"))
        try:
            conn.poll(PollRequest(run=f"2026-01-05T{seed:06d}", cursor=None))
        except TargetUnavailable:
            faults = [r["fault"] for r in sim.requests("/order/tracking")[before:]]
            if faults[0] is None:  # guard: a call was answered before one failed
                break
        else:  # every call answered: that run wrote its rows; start the items again
            for row in state.rows(ITEMS):
                state.update(ITEMS, row.key, value={**row.value, "run": "", "upto": 0})
    else:
        pytest.fail("no seed gave an answered call before a failed one")
    assert {row.value["run"] for row in state.rows(ITEMS)} == {""}
