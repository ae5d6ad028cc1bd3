"""Group commit of the store writes of pipeline threads (routes/group_commit.py), on the real store too."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest
from concurrently import run_concurrently

from routes.group_commit import GroupCommit
from routes.idempotency import ClaimOutcome, IdempotencyStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def _run_threads(n: int, work: Callable[[int], object]) -> None:
    run_concurrently(work, [(i,) for i in range(n)], timeout=30)


def test_writes_that_arrive_together_share_transactions_and_each_gets_its_own_answer() -> None:
    """8 threads × 50 writes ▶ fewer transactions than writes ▶ each thread gets exactly its keys' answers."""
    transactions: list[int] = []

    def write(items: dict[str, int]) -> Mapping[str, int]:
        transactions.append(len(items))
        time.sleep(0.002)  # a transaction takes a while: others queue behind it
        return {k: v * 2 for k, v in items.items()}

    group: GroupCommit[int, int] = GroupCommit(write)
    wrong: list[str] = []

    def thread(i: int) -> None:
        for j in range(50):
            key = f"{i}-{j}"
            answer = group.submit({key: j})
            if answer != {key: j * 2}:
                wrong.append(key)

    _run_threads(8, thread)
    assert wrong == []
    assert sum(transactions) == 400
    assert len(transactions) < 400  # some were shared


def test_the_same_key_never_shares_a_transaction() -> None:
    """Two attempts of one event waiting together ▶ two transactions, one each."""
    seen: list[list[str]] = []
    gate = threading.Event()

    def write(items: dict[str, str]) -> Mapping[str, str]:
        seen.append(sorted(items))
        gate.wait(5)
        return dict(items)

    group: GroupCommit[str, str] = GroupCommit(write)
    first = threading.Thread(target=group.submit, args=({"busy": "x"},))
    first.start()
    time.sleep(0.05)  # "busy" holds the store; the next three queue behind it
    others = [threading.Thread(target=group.submit, args=({k: o},)) for k, o in (("e1", "a"), ("e1", "b"), ("e2", "c"))]
    for t in others:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in [first, *others]:
        t.join(10)
    assert seen[0] == ["busy"]
    assert sorted(seen[1:]) == [["e1"], ["e1", "e2"]]


def test_a_failed_shared_transaction_is_run_again_alone_per_write() -> None:
    """A shared transaction fails because of one bad write ▶ the good ones succeed alone, the bad one raises."""
    gate = threading.Event()

    def write(items: dict[str, int]) -> Mapping[str, int]:
        if "hold" in items:
            gate.wait(5)
        if "bad" in items:
            raise ValueError("bad row")
        return dict(items)

    group: GroupCommit[int, int] = GroupCommit(write)
    results: dict[str, object] = {}

    def submit(key: str) -> None:
        try:
            results[key] = group.submit({key: 1})
        except ValueError as exc:
            results[key] = exc

    holder = threading.Thread(target=submit, args=("hold",))
    holder.start()
    time.sleep(0.05)
    rest = [threading.Thread(target=submit, args=(k,)) for k in ("good1", "bad", "good2")]
    for t in rest:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in [holder, *rest]:
        t.join(10)
    assert results["good1"] == {"good1": 1}
    assert results["good2"] == {"good2": 1}
    assert isinstance(results["bad"], ValueError)


@pytest.mark.parametrize("threads", [8])
def test_claims_through_group_commit_on_the_real_store(store_url: str, threads: int) -> None:
    """8 threads claim and complete 40 events each through group commits ▶ all NEW, then all done."""
    store = IdempotencyStore(store_url)
    claims: GroupCommit[str, object] = GroupCommit(lambda owners: store.claim_many("r", owners, lease_s=60))
    done: GroupCommit[tuple[str, dict[str, object]], None] = GroupCommit(lambda res: store.complete_many("r", res))
    outcomes: list[object] = []
    try:

        def thread(i: int) -> None:
            for j in range(40):
                key = f"e{i}-{j}"
                answer = claims.submit({key: f"w{i}"}) or {}
                outcomes.append(answer[key].outcome)  # type: ignore[attr-defined]
                done.submit({key: (f"w{i}", {"n": j})})

        _run_threads(threads, thread)
        assert outcomes.count(ClaimOutcome.NEW) == threads * 40
        assert store.counts("r") == {"done": threads * 40}
    finally:
        store.close()
