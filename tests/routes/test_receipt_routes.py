# mypy: allow-untyped-defs
"""Issue 13: one e-receipt per fee kind of a payment, never two, under timeouts after issue, SIGKILLs, duplicates.

Everything real: the broker (a vhost), the store, the e-receipt SOAP simulator and the iGate REST simulator on
real sockets, the worker as a real process that is SIGKILLed. The e-receipt simulator de-duplicates only as
the real service does (an fkey already used answers ERR:13), so a second receipt for a payment would show up
as a second fkey issue or as an issue under a key nobody sent. Guards fail a test whose faults never fired.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from busenv import (
    ROOT,
    SIM_PASSWORD,
    SIM_USER,
    declare_routes,
    depth,
    dossier_code,
    env_for,
    example,
    get_all,
    publish,
    wait_for,
    write_config,
)
from receiptenv import receipt_credentials, receipt_spec_data
from test_exactly_once import _finish, _queues, _replay, _run_killing

from simulators.igate import IGateSimulator
from simulators.receipt import ReceiptSimulator

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["receipt_credentials"]

ROUTES = ("receipt-issue-phi", "receipt-issue-lephi", "receipt-cancel", "results-to-igate")
FEES = {
    "phi": {"kind": "phi", "code": "PHI-TDHS", "name": "Phí thẩm định hồ sơ", "collect": "truoc"},
    "lephi": {"kind": "lephi", "code": "LP-CGCN", "name": "Lệ phí cấp Giấy chứng nhận", "collect": "truoc"},
}


def write_receipt_config(folder: Path, *, igate: str, receipt: str, backoff: tuple[str, ...] = ("300ms", "1s")) -> Path:
    """The shipped receipt routes and results-to-igate, fast retries; the receipt and iGate connectors."""
    write_config(folder, endpoint=igate)
    shipped = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text(encoding="utf-8"))
    routes = [r for r in shipped["routes"] if r["name"] in ROUTES]
    for route in routes:
        route["retry"] = {"backoff": list(backoff), "max_attempts": 60}
    connectors = yaml.safe_load((folder / "connectors.yaml").read_text(encoding="utf-8"))
    connectors["connectors"]["receipt"] = receipt_spec_data(receipt, breaker={"fail_max": 1000, "reset_timeout": "1s"})
    (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}, allow_unicode=True, sort_keys=False))
    (folder / "connectors.yaml").write_text(yaml.safe_dump(connectors, allow_unicode=True, sort_keys=False))
    return folder


def settled(i: int, run: str, *, kind: str, amount: int) -> dict[str, Any]:
    """The ``i``-th payment of a run: one fee of ``kind``, its own payment_ref and dossier."""
    event = example("payment.settled")
    event["event_id"] = str(uuid.uuid4())
    event["dossier_code"] = dossier_code(i, run)
    event.pop("correlation_id", None)
    paid = datetime.now(UTC) - timedelta(minutes=5)
    event["occurred_at"] = paid.isoformat()
    payload = event["payload"]
    payload["payment_ref"] = f"PG{run}{i:05d}"
    payload["paid_at"] = paid.isoformat()
    payload["fees"] = [{**FEES[kind], "amount_vnd": amount}]
    return event


def duplicate(event: dict[str, Any]) -> dict[str, Any]:
    """The same payment settled again under a new event id (iGate resending it, another channel)."""
    return {**json.loads(json.dumps(event)), "event_id": str(uuid.uuid4())}


class Run:
    """A run's payments, its duplicates shuffled in, and the fkey → amount the service must end with."""

    def __init__(self, payments: int, duplicates: int) -> None:
        run = uuid.uuid4().hex[:6].upper()
        rng = random.Random(payments)
        self.events = [
            settled(i, run, kind="phi" if i % 2 else "lephi", amount=rng.randrange(1, 500) * 1000)
            for i in range(payments)
        ]
        self.expected = {
            f"{e['payload']['fees'][0]['kind']}-{e['payload']['payment_ref']}": e["payload"]["fees"][0]["amount_vnd"]
            for e in self.events
        }
        self.dupes = [duplicate(e) for e in rng.sample(self.events, duplicates)]
        self.batch = self.events + self.dupes
        rng.shuffle(self.batch)


def _igate_receipts(igate: IGateSimulator) -> Counter[str]:
    """How many times iGate was told of each fkey's receipt."""
    told: Counter[str] = Counter()
    for effect in igate.effects():
        data = (effect.get("request") or {}).get("data") or {}
        if data.get("event_type") == "receipt.issued":
            told[str(data.get("fkey"))] += 1
    return told


def _chaos(
    amqp_url: str,
    store_url: str,
    tmp_path: Path,
    creds: dict[str, str],
    *,
    payments: int,
    dupes: int,
    kills: int,
    timeout: float,
) -> None:
    run = Run(payments, dupes)
    with (
        IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as igate,
        ReceiptSimulator() as receipt,
    ):
        cfg = write_receipt_config(tmp_path / "cfg", igate=igate.url, receipt=receipt.endpoint)
        # 30 % of issues are applied, then the answer never comes: the connector's 2 s deadline passes
        receipt.set_faults(
            mode="apply_then_hang", rate=0.3, hang_s=2.5, only_operations=["ImportAndPublishInv"], seed=13
        )
        env = env_for(amqp_url, store_url, cfg, IGATE_BUS_OPS_PORT="0", **creds)
        log = tmp_path / "worker.log"
        declare_routes(amqp_url, cfg)
        started = time.monotonic()
        publish(amqp_url, run.batch)

        def done() -> bool:
            return (
                receipt.issued().keys() >= run.expected.keys() and _igate_receipts(igate).keys() >= run.expected.keys()
            )

        marks = _run_killing(env, log, kills=kills, applied=lambda: len(receipt.issued()), total=payments)
        _finish(amqp_url, cfg, env, log, done, timeout=timeout, what="every receipt issued and sent to iGate")
        elapsed = time.monotonic() - started
        _assert_once(amqp_url, cfg, run, receipt, igate, log, marks=marks, elapsed=elapsed)


def _assert_once(
    amqp_url: str,
    cfg: Path,
    run: Run,
    receipt: ReceiptSimulator,
    igate: IGateSimulator,
    log: Path,
    *,
    marks: list[int],
    elapsed: float,
) -> None:
    issued = receipt.issued()
    receipts = {r["fkey"]: r for r in receipt.receipts()}
    told = _igate_receipts(igate)
    lines = [json.loads(x) for x in log.read_text(errors="replace").splitlines() if x.startswith("{")]
    reconciled = Counter(x.get("found") for x in lines if x.get("event") == "reconciled")
    timed_out = [r for r in receipt.requests("ImportAndPublishInv") if r["fault"] == "apply_then_hang"]
    err13 = [r for r in receipt.requests("ImportAndPublishInv") if r["answer"] == "ERR:13"]
    lookups = len(receipt.requests("listInvByCusFkey"))
    print(
        f"{payments_of(run)} payments + {len(run.dupes)} duplicate events, {len(marks)} SIGKILLs at {marks} "
        f"receipts, {elapsed:.0f} s: {sum(issued.values())} receipts issued for {len(issued)} fkeys, "
        f"{sum(told.values())} sent to iGate for {len(told)} fkeys; {len(timed_out)} issues timed out after "
        f"issuing, {len(err13)} ERR:13 fetched, {lookups} lookups, reconciled found={reconciled.get(True, 0)} "
        f"not-found={reconciled.get(False, 0)}"
    )
    missing, unexpected = run.expected.keys() - issued.keys(), issued.keys() - run.expected.keys()
    assert not missing, f"{len(missing)} payments without a receipt, e.g. {sorted(missing)[:3]}"
    assert not unexpected, f"receipts nobody asked for: {sorted(unexpected)[:3]}"
    assert all(n == 1 for n in issued.values()), f"second receipts: {[k for k, n in issued.items() if n > 1][:5]}"
    assert sum(issued.values()) == len(run.expected)
    wrong = {k: r["amount_vnd"] for k, r in receipts.items() if r["amount_vnd"] != run.expected[k]}
    assert not wrong, f"receipts for the wrong amount: {list(wrong.items())[:3]}"
    assert told.keys() == run.expected.keys(), "a receipt never reached iGate"
    for q in _queues(cfg, dlq=True):
        assert depth(amqp_url, q) == 0, f"{q}: {[p.headers for p, _ in get_all(amqp_url, q)][:2]}"
    # guards: the faults fired, duplicates met an issued receipt, the kills landed mid-run
    assert timed_out, "no issue timed out after the service issued: the fault never fired"
    assert reconciled.get(True, 0) > 0, "no lookup found a receipt: the ambiguous outcomes were never reconciled"
    assert lookups >= len(run.dupes), "the duplicate events did not look their payment's receipt up"
    assert marks and all(b > a for a, b in zip([0, *marks], marks, strict=False)), f"no progress between kills: {marks}"
    assert marks[-1] < len(run.expected), "the run finished before the last kill: the kills proved nothing"
    # each receipt sent to iGate once: the reply's result event is named by the fkey (result_events), so the
    # duplicates of a payment give the same receipt.issued, which results-to-igate applies once
    again = {k: n for k, n in told.items() if n > 1}
    assert not again, f"{len(again)} receipts told to iGate more than once, e.g. {list(again.items())[:3]}"


def payments_of(run: Run) -> int:
    return len(run.events)


def test_200_payments_with_timeouts_after_issue_duplicates_and_a_sigkill_give_200_receipts(
    amqp_url, sqlite_url, tmp_path, receipt_credentials
):
    """200 payments + 50 duplicate settled events, 30 % of issues timing out after the service issued, one
    SIGKILL ▶ exactly 200 receipts at the simulator, for the right amounts, each sent to iGate once."""
    _chaos(amqp_url, sqlite_url, tmp_path, receipt_credentials, payments=200, dupes=50, kills=1, timeout=300)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_2000_payments_with_timeouts_after_issue_duplicates_and_3_sigkills_give_2000_receipts(
    amqp_url, pg_url, tmp_path, receipt_credentials
):
    """Issue 13's must-show: 2,000 payments + 500 duplicate events, 30 % timeouts after issue, 3 SIGKILLs,
    PostgreSQL ▶ exactly 2,000 receipts, each sent to iGate once."""
    _chaos(amqp_url, pg_url, tmp_path, receipt_credentials, payments=2000, dupes=500, kills=3, timeout=1500)


BAD_AMOUNTS = [
    (-500_000, "payload.fees.0.amount_vnd"),
    (0, "payload.fees.0.amount_vnd"),
    (1.5, "payload.fees.0.amount_vnd"),
    (500_000.0, "payload.fees.0.amount_vnd"),
    ("500000", "payload.fees.0.amount_vnd"),
    ("1.000.000", "payload.fees.0.amount_vnd"),
    (10**16, "payload.fees.0.amount_vnd"),
    (True, "payload.fees.0.amount_vnd"),
    (None, "payload.fees.0.amount_vnd"),
]


def test_bad_amounts_and_unknown_fee_codes_are_dead_lettered_naming_the_field_and_issue_nothing(
    amqp_url, sqlite_url, tmp_path, receipt_credentials
):
    """Negative, zero, fractional, string, absurd amounts, "1.000.000", an unknown fee code ▶ each in the DLQ
    with the field named, not one call to issue a receipt."""
    from busenv import thread_worker

    run = uuid.uuid4().hex[:6].upper()
    events = []
    expected: dict[str, tuple[str, str]] = {}
    for i, (amount, field) in enumerate(BAD_AMOUNTS):
        event = settled(i, run, kind="phi", amount=1000)
        event["payload"]["fees"][0]["amount_vnd"] = amount
        events.append(event)
        expected[event["event_id"]] = ("invalid", field)
    unknown = settled(len(events), run, kind="phi", amount=1000)
    unknown["payload"]["fees"][0]["code"] = "PHI-KHONG-DANG-KY"
    events.append(unknown)
    expected[unknown["event_id"]] = ("mapping", "payload.fees[0].code")
    good = settled(len(events), run, kind="phi", amount=125_000)
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as igate, ReceiptSimulator() as receipt:
        cfg = write_receipt_config(tmp_path / "cfg", igate=igate.url, receipt=receipt.endpoint)
        declare_routes(amqp_url, cfg)
        publish_unchecked(amqp_url, [*events, good])
        with thread_worker(amqp_url, sqlite_url, cfg, routes=["receipt-issue-phi", "receipt-issue-lephi"]):
            wait_for(lambda: depth(amqp_url, "dlq.receipt-issue-phi") == len(events), timeout=60, what="dead letters")
            wait_for(lambda: len(receipt.issued()) == 1, timeout=60, what="the good payment's receipt")
        by_event = {json.loads(body)["event_id"]: p.headers for p, body in get_all(amqp_url, "dlq.receipt-issue-phi")}
        for event_id, (kind, field) in expected.items():
            headers = by_event[event_id]
            assert headers["x-error-kind"] == kind, headers
            assert headers["x-error"].startswith(f"{field}: "), headers  # the reason opens with the field
            assert headers.get("x-error-field", field) == field, headers
        issues = receipt.requests("ImportAndPublishInv")
        assert [r["body"]["xmlInvData"].count("<Total>125000</Total>") for r in issues] == [2]
        assert receipt.issued() == {f"phi-{good['payload']['payment_ref']}": 1}


def publish_unchecked(amqp_url: str, events: list[dict[str, Any]]) -> None:
    """Publish events as a careless producer would (no validation first), each as its own AMQP message."""
    from busenv import publish_raw

    for event in events:
        publish_raw(
            amqp_url,
            json.dumps(event, ensure_ascii=False).encode(),
            routing_key=event["event_type"],
            message_id=event["event_id"],
        )


def test_a_cancelled_receipt_is_cancelled_once_and_a_later_duplicate_never_revives_it(
    amqp_url, sqlite_url, tmp_path, receipt_credentials
):
    """Settled ▶ issued; cancel requested (twice) ▶ unconfirmed and cancelled once; the payment settled again
    ▶ dead-lettered as cancelled, no second receipt, and iGate never told of a receipt after the cancellation."""
    from busenv import thread_worker

    run = uuid.uuid4().hex[:6].upper()
    paid = settled(0, run, kind="phi", amount=500_000)
    fkey = f"phi-{paid['payload']['payment_ref']}"
    cancel = example("receipt.cancel_requested")
    cancel.update(event_id=str(uuid.uuid4()), dossier_code=paid["dossier_code"], occurred_at=paid["occurred_at"])
    cancel.pop("correlation_id", None)
    cancel["payload"]["fkey"] = fkey
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as igate, ReceiptSimulator() as receipt:
        cfg = write_receipt_config(tmp_path / "cfg", igate=igate.url, receipt=receipt.endpoint)
        declare_routes(amqp_url, cfg)
        with thread_worker(amqp_url, sqlite_url, cfg):
            publish(amqp_url, [paid])
            wait_for(lambda: _igate_receipts(igate)[fkey] == 1, timeout=60, what="the receipt told to iGate")
            publish(amqp_url, [cancel, {**cancel, "event_id": str(uuid.uuid4())}])
            wait_for(lambda: (receipt.receipt(fkey) or {}).get("status") == "cancelled", timeout=60, what="cancel")
            wait_for(lambda: depth(amqp_url, "route.receipt-cancel") == 0, timeout=60, what="both cancels")
            publish(amqp_url, [duplicate(paid)])
            wait_for(lambda: depth(amqp_url, "dlq.receipt-issue-phi") == 1, timeout=60, what="the revived payment")
        [(headers, _)] = [(p.headers, b) for p, b in get_all(amqp_url, "dlq.receipt-issue-phi")]
        assert headers["x-error-kind"] == "rejected" and "cancelled" in headers["x-error"], headers
        effects = [e["effect"] for e in receipt.effects()]
        assert effects == ["issued", "unconfirmed", "cancelled"], effects
        assert receipt.issued() == {fkey: 1}
        assert _igate_receipts(igate) == {fkey: 1}
        assert depth(amqp_url, "dlq.receipt-cancel") == 0


def test_a_dlq_replay_days_later_of_a_payment_whose_issue_timed_out_issues_nothing_again(
    amqp_url, sqlite_url, tmp_path, receipt_credentials
):
    """The service issued, the answer never came and the attempts ran out (dead-lettered); meanwhile the same
    payment came again and got its receipt. Replayed from the DLQ later ▶ looked up, found: still one receipt."""
    from busenv import thread_worker

    run = uuid.uuid4().hex[:6].upper()
    paid = settled(0, run, kind="lephi", amount=100_000)
    fkey = f"lephi-{paid['payload']['payment_ref']}"
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as igate, ReceiptSimulator() as receipt:
        cfg = write_receipt_config(tmp_path / "cfg", igate=igate.url, receipt=receipt.endpoint)
        routes = yaml.safe_load((cfg / "routes.yaml").read_text(encoding="utf-8"))
        for route in routes["routes"]:
            route["retry"] = {"backoff": ["300ms"], "max_attempts": 1}
        (cfg / "routes.yaml").write_text(yaml.safe_dump(routes, allow_unicode=True, sort_keys=False))
        declare_routes(amqp_url, cfg)
        receipt.set_faults(mode="apply_then_hang", hang_s=2.5, only_operations=["ImportAndPublishInv"])
        with thread_worker(amqp_url, sqlite_url, cfg, routes=["receipt-issue-lephi"]):
            publish(amqp_url, [paid])
            wait_for(lambda: depth(amqp_url, "dlq.receipt-issue-lephi") == 1, timeout=60, what="the dead letter")
        assert receipt.issued() == {fkey: 1}  # guard: the service did issue it before the answer was lost
        receipt.set_faults()
        with thread_worker(amqp_url, sqlite_url, cfg, routes=["receipt-issue-lephi", "results-to-igate"]):
            publish(amqp_url, [duplicate(paid)])
            wait_for(lambda: _igate_receipts(igate)[fkey] >= 1, timeout=60, what="the duplicate's receipt in iGate")
            assert _replay(amqp_url, "receipt-issue-lephi") == 1
            wait_for(lambda: depth(amqp_url, "route.receipt-issue-lephi") == 0, timeout=60, what="the replay")
            wait_for(lambda: depth(amqp_url, "route.results-to-igate") == 0, timeout=60, what="its result")
        assert receipt.issued() == {fkey: 1}
        assert len(receipt.requests("ImportAndPublishInv")) == 1  # the replay looked up, never issued
        assert depth(amqp_url, "dlq.receipt-issue-lephi") == 0
