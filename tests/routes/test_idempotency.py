"""The idempotency store on SQLite and PostgreSQL: each claim transition, and races of threads and processes.

The store is what turns at-least-once delivery into exactly-once effects (docs/reliability.md R2, R8, R17), so
these tests check each transition the worker relies on, and that exactly one of many concurrent claimers
of a key is told to go ahead.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import traceback
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from concurrently import run_concurrently

from routes.idempotency import Claim, ClaimOutcome, ClaimRecord, IdempotencyStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

T0 = datetime(2026, 11, 26, 3, 0, 0, 123456, tzinfo=UTC)
ROUTE = "receipt"
VN = timezone(timedelta(hours=7))


@pytest.fixture
def store(store_url: str) -> Iterator[IdempotencyStore]:
    """A store on each back end, closed afterwards."""
    s = IdempotencyStore(store_url)
    yield s
    s.close()


def _record(store: IdempotencyStore, event_id: str, route: str = ROUTE) -> ClaimRecord:
    record = store.get(route, event_id)
    assert record is not None
    return record


# -- transitions ---------------------------------------------------------------------------------------
def test_first_claim_is_new_and_holds_a_lease(store: IdempotencyStore) -> None:
    """No row: the claim inserts one in progress for its owner, with the lease ending now + lease_s."""
    claim = store.claim(ROUTE, "e1", owner="w1/a", lease_s=30, now=T0)
    assert claim == Claim(ClaimOutcome.NEW, None, 1)
    record = _record(store, "e1")
    assert record == ClaimRecord(
        route=ROUTE,
        event_id="e1",
        state="in_progress",
        maybe_applied=False,
        owner="w1/a",
        attempts=1,
        claimed_at=T0,
        lease_until=T0 + timedelta(seconds=30),
        done_at=None,
        result=None,
        error=None,
    )
    assert store.counts() == {"in_progress": 1}


def test_done_returns_the_exact_stored_result(store: IdempotencyStore) -> None:
    """A done claim answers DONE with the reply exactly as stored, without counting an attempt."""
    result: dict[str, Any] = {
        "receipt_no": "BL-2026-000123",
        "fee_vnd": 9_007_199_254_740_993,  # beyond a float's exact range
        "ratio": 0.1,
        "ok": True,
        "none": None,
        "items": [1, "hai", {"ba": [None, False]}],
        "empty": {},
        "province": unicodedata.normalize("NFC", "Đắk Lắk"),
        "nfd": unicodedata.normalize("NFD", "Đắk Lắk"),
        "emoji": "✅",
        "quote": "\"'\\\n",
    }
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=30)
    store.complete(ROUTE, "e1", owner="w1/a", result=result)
    again = store.claim(ROUTE, "e1", owner="w2/b", lease_s=30)
    assert again.outcome is ClaimOutcome.DONE
    assert again.result == result
    assert again.attempts == 1
    assert type(again.result["fee_vnd"]) is int
    assert again.result["nfd"] == result["nfd"]  # stored as given, not normalised behind the caller's back
    record = _record(store, "e1")
    assert record.state == "done"
    assert record.lease_until is None
    assert record.done_at is not None
    assert record.result == result


def test_held_for_another_owner_then_reclaimed_when_the_lease_expires(store: IdempotencyStore) -> None:
    """Another owner's live lease answers HELD; once it has expired the claim is taken over as RECLAIMED."""
    assert store.claim(ROUTE, "e1", owner="w1/a", lease_s=30, now=T0).outcome is ClaimOutcome.NEW
    held = store.claim(ROUTE, "e1", owner="w2/b", lease_s=30, now=T0 + timedelta(seconds=29))
    assert held == Claim(ClaimOutcome.HELD, None, 1)
    assert _record(store, "e1").owner == "w1/a"  # a held claim changes nothing
    later = T0 + timedelta(seconds=31)
    taken = store.claim(ROUTE, "e1", owner="w2/b", lease_s=60, now=later)
    assert taken == Claim(ClaimOutcome.RECLAIMED, None, 2)
    record = _record(store, "e1")
    assert (record.state, record.maybe_applied, record.owner, record.attempts) == ("in_progress", True, "w2/b", 2)
    assert (record.claimed_at, record.lease_until) == (later, later + timedelta(seconds=60))
    # the first owner is back from its stall: its lease is gone, so it is held off in turn
    assert store.claim(ROUTE, "e1", owner="w1/a", lease_s=30, now=later).outcome is ClaimOutcome.HELD


def test_a_lease_ends_at_lease_until(store: IdempotencyStore) -> None:
    """At exactly lease_until the lease is over: another owner reclaims it."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=10, now=T0)
    outcome = store.claim(ROUTE, "e1", owner="w2/b", lease_s=10, now=T0 + timedelta(seconds=10)).outcome
    assert outcome is ClaimOutcome.RECLAIMED


def test_the_same_owner_reclaims_its_own_live_lease(store: IdempotencyStore) -> None:
    """An owner claiming again within its own lease gets RECLAIMED (it may have sent already)."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=30, now=T0)
    again = store.claim(ROUTE, "e1", owner="w1/a", lease_s=30, now=T0 + timedelta(seconds=1))
    assert again == Claim(ClaimOutcome.RECLAIMED, None, 2)


def test_release_maybe_applied_makes_the_next_claim_reclaimed(store: IdempotencyStore) -> None:
    """A transient failure after sending keeps the claim in progress with its lease ended: RECLAIMED next."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=300)
    store.release(ROUTE, "e1", owner="w1/a", maybe_applied=True)
    record = _record(store, "e1")
    assert (record.state, record.maybe_applied) == ("in_progress", True)
    assert record.lease_until is not None
    assert record.lease_until <= datetime.now(UTC)
    assert store.claim(ROUTE, "e1", owner="w2/b", lease_s=300) == Claim(ClaimOutcome.RECLAIMED, None, 2)


def test_release_not_applied_makes_the_next_claim_new(store: IdempotencyStore) -> None:
    """A transient failure before anything was sent sets the claim to retry: the next claim is NEW."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=300)
    store.release(ROUTE, "e1", owner="w1/a", maybe_applied=False)
    record = _record(store, "e1")
    assert (record.state, record.lease_until) == ("retry", None)
    assert store.counts() == {"retry": 1}
    assert store.claim(ROUTE, "e1", owner="w2/b", lease_s=300) == Claim(ClaimOutcome.NEW, None, 2)
    assert _record(store, "e1").owner == "w2/b"


def test_fail_records_the_error_and_a_replay_is_new(store: IdempotencyStore) -> None:
    """A permanent rejection sets the claim to failed; replaying the event after the fix claims it NEW."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=30, now=T0)
    store.fail(ROUTE, "e1", owner="w1/a", error="SOAP client fault: mã hồ sơ không hợp lệ")
    record = _record(store, "e1")
    assert (record.state, record.lease_until) == ("failed", None)
    assert record.error == "SOAP client fault: mã hồ sơ không hợp lệ"
    replay = store.claim(ROUTE, "e1", owner="w2/b", lease_s=30, now=T0 + timedelta(seconds=1))
    assert replay == Claim(ClaimOutcome.NEW, None, 2)
    store.complete(ROUTE, "e1", owner="w2/b", result={"receipt_no": "BL-1"})
    record = _record(store, "e1")
    assert (record.state, record.error, record.attempts) == ("done", None, 2)


def test_release_and_fail_by_a_former_owner_change_nothing(store: IdempotencyStore) -> None:
    """Only the current owner of an in-progress claim can release or fail it; a stale owner is ignored."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=10, now=T0)
    store.claim(ROUTE, "e1", owner="w2/b", lease_s=3600, now=T0 + timedelta(seconds=11))
    before = _record(store, "e1")
    store.release(ROUTE, "e1", owner="w1/a", maybe_applied=False)
    store.release(ROUTE, "e1", owner="w1/a", maybe_applied=True)
    store.fail(ROUTE, "e1", owner="w1/a", error="late")
    assert store.confirm_absent(ROUTE, "e1", owner="w1/a") is False
    assert _record(store, "e1") == before
    store.release(ROUTE, "missing", owner="w1/a", maybe_applied=True)  # no row: nothing to do
    assert store.get(ROUTE, "missing") is None


def test_done_is_final(store: IdempotencyStore) -> None:
    """Fail, release and a second complete leave a done claim and its first result untouched."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=30)
    store.complete(ROUTE, "e1", owner="w1/a", result={"n": 1})
    done = _record(store, "e1")
    store.fail(ROUTE, "e1", owner="w1/a", error="x")
    store.release(ROUTE, "e1", owner="w1/a", maybe_applied=False)
    store.release(ROUTE, "e1", owner="w1/a", maybe_applied=True)
    store.confirm_absent(ROUTE, "e1", owner="w1/a")
    store.complete(ROUTE, "e1", owner="w2/b", result={"n": 2})
    assert _record(store, "e1") == done
    assert store.claim(ROUTE, "e1", owner="w3/c", lease_s=30).result == {"n": 1}


# -- "maybe applied" survives everything but a lookup's "not there" (issue 8) ---------------------------------
def _maybe_applied(store: IdempotencyStore, event_id: str = "e1", *, owner: str = "w2/b") -> None:
    """Bring a claim to "held by ``owner``, maybe applied": sent by w1, reclaimed by ``owner``."""
    store.claim(ROUTE, event_id, owner="w1/a", lease_s=300)
    store.release(ROUTE, event_id, owner="w1/a", maybe_applied=True)  # e.g. reset after sending
    assert store.claim(ROUTE, event_id, owner=owner, lease_s=300).outcome is ClaimOutcome.RECLAIMED
    record = _record(store, event_id)
    assert (record.state, record.maybe_applied, record.owner) == ("in_progress", True, owner)


@pytest.mark.parametrize("says_applied", [False, True])
def test_a_release_never_clears_maybe_applied(store: IdempotencyStore, says_applied: bool) -> None:
    """Held and maybe applied ▶ release(any) ▶ in_progress, still maybe applied, lease ended: RECLAIMED next.

    The bug of issue 8: the reconciling lookup failed (a read, "not applied"), the claim went to retry and
    the next attempt sent the effect again.
    """
    _maybe_applied(store)
    store.release(ROUTE, "e1", owner="w2/b", maybe_applied=says_applied)
    record = _record(store, "e1")
    assert (record.state, record.maybe_applied) == ("in_progress", True)
    assert record.lease_until is not None
    assert record.lease_until <= datetime.now(UTC)
    assert store.claim(ROUTE, "e1", owner="w3/c", lease_s=300) == Claim(ClaimOutcome.RECLAIMED, None, 3)


def test_release_applied_of_a_clean_claim_makes_it_maybe_applied(store: IdempotencyStore) -> None:
    """Held, not maybe applied ▶ release(maybe_applied=True) ▶ in_progress, maybe applied, lease ended."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=300)
    assert _record(store, "e1").maybe_applied is False
    store.release(ROUTE, "e1", owner="w1/a", maybe_applied=True)
    record = _record(store, "e1")
    assert (record.state, record.maybe_applied) == ("in_progress", True)


def test_a_lookup_saying_not_there_clears_it_and_keeps_the_lease(store: IdempotencyStore) -> None:
    """Held, maybe applied ▶ confirm_absent ▶ still held (same lease), no longer maybe applied.

    The holder may now send; if that send fails before leaving, a release "not applied" gives ``retry``
    and the next claim is NEW again.
    """
    _maybe_applied(store)
    before = _record(store, "e1")
    assert store.confirm_absent(ROUTE, "e1", owner="w2/b") is True
    after = _record(store, "e1")
    assert (after.state, after.maybe_applied, after.owner) == ("in_progress", False, "w2/b")
    assert (after.claimed_at, after.lease_until, after.attempts) == (
        before.claimed_at,
        before.lease_until,
        before.attempts,
    )
    store.release(ROUTE, "e1", owner="w2/b", maybe_applied=False)
    assert (_record(store, "e1").state, _record(store, "e1").maybe_applied) == ("retry", False)
    assert store.claim(ROUTE, "e1", owner="w3/c", lease_s=300).outcome is ClaimOutcome.NEW


def test_a_permanent_failure_keeps_maybe_applied_and_the_error(store: IdempotencyStore) -> None:
    """Held, maybe applied ▶ fail (e.g. the lookup was refused) ▶ in_progress, maybe applied, error kept.

    The message is dead-lettered; its replay must reconcile first, so the next claim is RECLAIMED.
    """
    _maybe_applied(store)
    store.fail(ROUTE, "e1", owner="w2/b", error="lookup refused: HTTP 400")
    record = _record(store, "e1")
    assert (record.state, record.maybe_applied, record.error) == ("in_progress", True, "lookup refused: HTTP 400")
    assert record.lease_until is not None
    assert record.lease_until <= datetime.now(UTC)
    assert store.claim(ROUTE, "e1", owner="w3/c", lease_s=300).outcome is ClaimOutcome.RECLAIMED


def test_complete_clears_maybe_applied(store: IdempotencyStore) -> None:
    """Held, maybe applied ▶ complete (the lookup found it, or the target answered "duplicate") ▶ done."""
    _maybe_applied(store)
    store.complete(ROUTE, "e1", owner="w2/b", result={"noteId": "n-1"})
    record = _record(store, "e1")
    assert (record.state, record.maybe_applied, record.result) == ("done", False, {"noteId": "n-1"})


@pytest.mark.parametrize("state", ["retry", "failed"])
def test_a_row_that_says_maybe_applied_is_believed_whatever_its_state(
    store: IdempotencyStore, store_url: str, state: str
) -> None:
    """retry/failed with the flag set (the store never writes that; a hand edit might) ▶ RECLAIMED, not NEW."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=300)
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE claims SET state = :s, maybe_applied = :m, lease_until = NULL"),
                {"s": state, "m": True},
            )
    finally:
        engine.dispose()
    assert store.claim(ROUTE, "e1", owner="w2/b", lease_s=300).outcome is ClaimOutcome.RECLAIMED
    assert store.claim_many(ROUTE, {"e1": "w3/c"}, lease_s=300)["e1"].outcome is ClaimOutcome.HELD


def test_a_failed_lookup_then_a_crash_then_a_store_error_never_lead_to_a_second_send(
    store: IdempotencyStore,
) -> None:
    """Every way an attempt can end without an answer from the target keeps the claim RECLAIMED."""
    _maybe_applied(store)  # w1 sent and lost the answer; w2 reclaimed it
    store.release(ROUTE, "e1", owner="w2/b", maybe_applied=False)  # w2's lookup failed
    assert store.claim(ROUTE, "e1", owner="w3/c", lease_s=1, now=datetime.now(UTC)).outcome is (ClaimOutcome.RECLAIMED)
    # w3 crashed holding it (no release at all): its lease ends
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert store.claim(ROUTE, "e1", owner="w4/d", lease_s=300, now=later).outcome is ClaimOutcome.RECLAIMED
    store.fail(ROUTE, "e1", owner="w4/d", error="a reply the connector refused, dead-lettered")
    # a replay of the dead letter in a batch
    claims = store.claim_many(ROUTE, {"e1": "w5/e", "fresh": "w5/e"}, lease_s=300)
    assert (claims["e1"].outcome, claims["fresh"].outcome) == (ClaimOutcome.RECLAIMED, ClaimOutcome.NEW)
    assert _record(store, "e1").maybe_applied is True
    assert _record(store, "fresh").maybe_applied is False
    store.complete_many(ROUTE, {"e1": ("w5/e", {"found": True}), "fresh": ("w5/e", {})})
    assert [(_record(store, k).state, _record(store, k).maybe_applied) for k in ("e1", "fresh")] == [
        ("done", False),
        ("done", False),
    ]


def test_complete_is_unconditional(store: IdempotencyStore) -> None:
    """The effect happened: complete records it even if another owner took the lease, or there is no row."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=10, now=T0)
    store.claim(ROUTE, "e1", owner="w2/b", lease_s=3600, now=T0 + timedelta(seconds=11))
    store.complete(ROUTE, "e1", owner="w1/a", result={"receipt_no": "BL-1"})
    record = _record(store, "e1")
    assert (record.state, record.owner, record.attempts, record.result) == (
        "done",
        "w1/a",
        2,
        {"receipt_no": "BL-1"},
    )
    store.complete(ROUTE, "never-claimed", owner="w1/a", result={})
    record = _record(store, "never-claimed")
    assert (record.state, record.attempts, record.result) == ("done", 1, {})
    assert record.claimed_at == record.done_at


def test_claim_many_says_per_key_what_claim_would_say(store: IdempotencyStore) -> None:
    """One batch meets every state: fresh, done, held, expired, failed; each gets claim()'s answer and row."""
    store.claim(ROUTE, "done", owner="w0/a", lease_s=30, now=T0)
    store.complete(ROUTE, "done", owner="w0/a", result={"n": 1})
    store.claim(ROUTE, "held", owner="w0/a", lease_s=3600, now=T0)
    store.claim(ROUTE, "expired", owner="w0/a", lease_s=1, now=T0)
    store.claim(ROUTE, "failed", owner="w0/a", lease_s=30, now=T0)
    store.fail(ROUTE, "failed", owner="w0/a", error="x")
    now = T0 + timedelta(seconds=5)
    keys = ["fresh", "done", "held", "expired", "failed", "fresh2"]

    claims = store.claim_many(ROUTE, dict.fromkeys(keys, "w1/b"), lease_s=30, now=now)

    assert list(claims) == keys
    assert claims == {
        "fresh": Claim(ClaimOutcome.NEW, None, 1),
        "done": Claim(ClaimOutcome.DONE, {"n": 1}, 1),
        "held": Claim(ClaimOutcome.HELD, None, 1),
        "expired": Claim(ClaimOutcome.RECLAIMED, None, 2),
        "failed": Claim(ClaimOutcome.NEW, None, 2),
        "fresh2": Claim(ClaimOutcome.NEW, None, 1),
    }
    fresh = _record(store, "fresh")
    assert (fresh.state, fresh.owner, fresh.claimed_at, fresh.lease_until) == (
        "in_progress",
        "w1/b",
        now,
        now + timedelta(seconds=30),
    )
    assert _record(store, "held").owner == "w0/a"
    assert _record(store, "expired").owner == "w1/b"
    assert store.claim_many(ROUTE, {}, lease_s=30) == {}


def test_complete_many_records_each_and_keeps_a_first_result(store: IdempotencyStore) -> None:
    """complete_many is complete() per key in one transaction: done rows keep their first result."""
    store.claim_many(ROUTE, {"a": "w1/x", "b": "w1/x"}, lease_s=30, now=T0)
    store.complete(ROUTE, "b", owner="w1/x", result={"n": "first"})

    store.complete_many(ROUTE, {"a": ("w1/x", {"n": "a"}), "b": ("w2/y", {"n": "second"}), "c": ("w1/x", {})})

    assert [(_record(store, k).state, _record(store, k).result) for k in "abc"] == [
        ("done", {"n": "a"}),
        ("done", {"n": "first"}),
        ("done", {}),
    ]
    assert _record(store, "b").owner == "w1/x"
    assert store.claim(ROUTE, "a", owner="w3/z", lease_s=30) == Claim(ClaimOutcome.DONE, {"n": "a"}, 1)
    with pytest.raises(ValueError, match=r"NaN|JSON"):
        store.complete_many(ROUTE, {"d": ("w1/x", {"ok": True}), "e": ("w1/x", {"bad": math.nan})})
    assert store.get(ROUTE, "d") is None  # a bad result anywhere records nothing


def test_write_many_completes_and_claims_other_keys_in_one_transaction(store: IdempotencyStore) -> None:
    """write_many is complete_many plus claim_many of other keys: each key ends as its own call would leave it."""
    store.claim_many(ROUTE, {"sent": "w1/x", "held": "w9/z"}, lease_s=30, now=T0)

    claims = store.write_many(
        ROUTE, claims={"fresh": "w2/y", "held": "w2/y"}, completions={"sent": ("w1/x", {"n": 1})}, lease_s=30, now=T0
    )

    assert claims == {"fresh": Claim(ClaimOutcome.NEW, None, 1), "held": Claim(ClaimOutcome.HELD, None, 1)}
    assert (_record(store, "sent").state, _record(store, "sent").result) == ("done", {"n": 1})
    assert _record(store, "fresh").owner == "w2/y"
    assert _record(store, "held").owner == "w9/z"
    with pytest.raises(ValueError, match="both claimed and completed"):
        store.write_many(ROUTE, claims={"k": "w1/x"}, completions={"k": ("w1/x", {})}, lease_s=30)
    with pytest.raises(ValueError, match=r"NaN|JSON"):
        store.write_many(ROUTE, claims={"k2": "w1/x"}, completions={"k3": ("w1/x", {"bad": math.nan})}, lease_s=30)
    assert store.get(ROUTE, "k2") is None  # a bad completion anywhere writes nothing, not even the claims


def test_forget_lets_a_done_event_run_again(store: IdempotencyStore) -> None:
    """forget (dlq replay --force) deletes the claim: the next claim starts afresh."""
    store.claim(ROUTE, "e1", owner="w1/a", lease_s=30)
    store.complete(ROUTE, "e1", owner="w1/a", result={"n": 1})
    store.forget(ROUTE, "e1")
    assert store.get(ROUTE, "e1") is None
    store.forget(ROUTE, "e1")  # forgetting nothing is fine
    assert store.claim(ROUTE, "e1", owner="w2/b", lease_s=30) == Claim(ClaimOutcome.NEW, None, 1)


def test_routes_are_separate_and_counted(store: IdempotencyStore) -> None:
    """The same event_id on two routes is two claims; counts groups by state, per route or overall."""
    assert store.claim("receipt", "e1", owner="w", lease_s=30).outcome is ClaimOutcome.NEW
    assert store.claim("sms", "e1", owner="w", lease_s=30).outcome is ClaimOutcome.NEW
    store.complete("receipt", "e1", owner="w", result={})
    store.claim("sms", "e2", owner="w", lease_s=30)
    store.fail("sms", "e2", owner="w", error="bad phone")
    store.claim("sms", "e3", owner="w", lease_s=30)
    store.release("sms", "e3", owner="w", maybe_applied=False)
    assert store.counts() == {"done": 1, "in_progress": 1, "failed": 1, "retry": 1}
    assert store.counts("sms") == {"in_progress": 1, "failed": 1, "retry": 1}
    assert store.counts("postal") == {}


def test_datetimes_are_utc_aware_whatever_zone_now_is_in(store: IdempotencyStore) -> None:
    """A ``now`` in Asia/Ho_Chi_Minh time is stored as the same instant and read back in UTC."""
    local = datetime(2026, 11, 26, 10, 0, 0, 654321, tzinfo=VN)
    store.claim(ROUTE, "e1", owner="w", lease_s=1.5, now=local)
    record = _record(store, "e1")
    assert record.claimed_at == local
    assert record.claimed_at.tzinfo is UTC
    assert record.claimed_at.hour == 3
    assert record.lease_until == local + timedelta(seconds=1.5)
    assert record.lease_until is not None
    assert record.lease_until.tzinfo is UTC
    store.complete(ROUTE, "e1", owner="w", result={})
    done_at = _record(store, "e1").done_at
    assert done_at is not None
    assert done_at.tzinfo is UTC
    assert abs(datetime.now(UTC) - done_at) < timedelta(minutes=1)


# -- validation and life cycle -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.claim("", "e1", owner="w", lease_s=30),
        lambda s: s.claim(ROUTE, "", owner="w", lease_s=30),
        lambda s: s.claim(ROUTE, "e1", owner="", lease_s=30),
        lambda s: s.claim(ROUTE, "e" * 201, owner="w", lease_s=30),
        lambda s: s.claim(ROUTE, "e1", owner="w", lease_s=0),
        lambda s: s.claim(ROUTE, "e1", owner="w", lease_s=-1),
        lambda s: s.claim(ROUTE, "e1", owner="w", lease_s=math.nan),
        lambda s: s.claim(ROUTE, "e1", owner="w", lease_s=math.inf),
        lambda s: s.claim(ROUTE, "e1", owner="w", lease_s=30, now=datetime(2026, 1, 1)),
        lambda s: s.complete("", "e1", owner="w", result={}),
        lambda s: s.complete(ROUTE, "", owner="w", result={}),
        lambda s: s.complete(ROUTE, "e1", owner="w", result={"fee": math.nan}),
        lambda s: s.fail("", "e1", owner="w", error="x"),
        lambda s: s.fail(ROUTE, "", owner="w", error="x"),
        lambda s: s.release("", "e1", owner="w", maybe_applied=True),
        lambda s: s.release(ROUTE, "", owner="w", maybe_applied=False),
        lambda s: s.get("", "e1"),
        lambda s: s.get(ROUTE, ""),
        lambda s: s.forget("", "e1"),
        lambda s: s.forget(ROUTE, ""),
        lambda s: s.counts(""),
    ],
)
def test_bad_arguments_are_value_errors(sqlite_url: str, call: Any) -> None:
    """Empty keys, bad leases, naive datetimes and NaN in a result are refused before touching the store."""
    with IdempotencyStore(sqlite_url) as s:
        with pytest.raises(ValueError, match=r"\w"):
            call(s)
        assert s.counts() == {}


def test_a_result_must_be_a_json_object(sqlite_url: str) -> None:
    """complete refuses a result that is not a dict or holds what JSON cannot carry."""
    with IdempotencyStore(sqlite_url) as s:
        with pytest.raises(TypeError):
            s.complete(ROUTE, "e1", owner="w", result=["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            s.complete(ROUTE, "e1", owner="w", result={"when": T0})
        assert s.get(ROUTE, "e1") is None


def test_unsupported_back_end_is_refused() -> None:
    """Only SQLite and PostgreSQL are supported."""
    with pytest.raises(ValueError, match="mysql"):
        IdempotencyStore("mysql://u@localhost/db")


def test_sqlite_file_directory_is_created_and_tuned(tmp_path: Path) -> None:
    """The SQLite file's directory is created; connections run WAL, synchronous=NORMAL, busy_timeout 30 s."""
    url = f"sqlite:///{tmp_path / 'var' / 'deep' / 'store.sqlite3'}"
    with IdempotencyStore(url) as s:
        with s._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        s.claim(ROUTE, "e1", owner="w", lease_s=30)
    assert (tmp_path / "var" / "deep" / "store.sqlite3").exists()


def test_reopening_keeps_claims_and_create_is_idempotent(store_url: str) -> None:
    """A second store on the same database (create=True or False) sees the first one's claims."""
    with IdempotencyStore(store_url) as first:
        first.claim(ROUTE, "e1", owner="w1/a", lease_s=300)
    with IdempotencyStore(store_url, create=True) as second:
        assert second.claim(ROUTE, "e1", owner="w2/b", lease_s=300).outcome is ClaimOutcome.HELD
    with IdempotencyStore(store_url, create=False) as third:
        assert third.counts() == {"in_progress": 1}


#: the claims table as the first release created it (before ``maybe_applied``)
_OLD_TABLE_DDL = """
CREATE TABLE claims (
    route VARCHAR(200) NOT NULL,
    event_id VARCHAR(200) NOT NULL,
    state VARCHAR(16) NOT NULL,
    owner VARCHAR(200),
    attempts INTEGER NOT NULL,
    claimed_at {ts} NOT NULL,
    lease_until {ts},
    done_at {ts},
    result TEXT,
    error TEXT,
    PRIMARY KEY (route, event_id),
    CONSTRAINT claims_state_valid CHECK (state IN ('in_progress', 'done', 'failed', 'retry'))
)
"""


def test_a_store_made_by_the_previous_release_is_upgraded_in_place(store_url: str) -> None:
    """An old table with rows in every state ▶ opened by two stores at once ▶ the column is added, rows work."""
    engine = sa.create_engine(store_url)
    ts = "TIMESTAMP WITH TIME ZONE" if engine.dialect.name == "postgresql" else "DATETIME"
    past = "2020-01-01 00:00:00" + ("+00" if engine.dialect.name == "postgresql" else "")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(_OLD_TABLE_DDL.format(ts=ts)))
            for event_id, state, lease in (
                ("crashed", "in_progress", past),
                ("retry", "retry", None),
                ("done", "done", None),
            ):
                conn.execute(
                    sa.text(
                        "INSERT INTO claims (route, event_id, state, owner, attempts, claimed_at, lease_until,"
                        " result) VALUES (:r, :e, :s, 'old', 1, :t, :l, :res)"
                    ),
                    {"r": ROUTE, "e": event_id, "s": state, "t": past, "l": lease, "res": "{}"},
                )
    finally:
        engine.dispose()

    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            IdempotencyStore(store_url).close()
        except BaseException as exc:
            errors.append(exc)

    run_concurrently(open_store, [()] * 3, timeout=60)
    assert not errors, errors

    with IdempotencyStore(store_url) as store:
        assert _record(store, "crashed").maybe_applied is False
        assert store.claim(ROUTE, "crashed", owner="new", lease_s=30).outcome is ClaimOutcome.RECLAIMED
        assert _record(store, "crashed").maybe_applied is True
        assert store.claim(ROUTE, "retry", owner="new", lease_s=30).outcome is ClaimOutcome.NEW
        assert store.claim(ROUTE, "done", owner="new", lease_s=30) == Claim(ClaimOutcome.DONE, {}, 1)
        assert store.claim_many(ROUTE, {"fresh": "new"}, lease_s=30)["fresh"].outcome is ClaimOutcome.NEW
        store.release(ROUTE, "crashed", owner="new", maybe_applied=False)
        assert store.claim(ROUTE, "crashed", owner="newer", lease_s=30).outcome is ClaimOutcome.RECLAIMED


def test_create_false_does_not_create(sqlite_url: str) -> None:
    """With create=False on an empty database there is no table, and the error says so."""
    with (
        IdempotencyStore(sqlite_url, create=False) as s,
        pytest.raises(sa.exc.OperationalError, match="claims"),
    ):
        s.claim(ROUTE, "e1", owner="w", lease_s=30)


def test_a_closed_store_refuses_calls(sqlite_url: str) -> None:
    """After close() every call raises; closing twice is harmless."""
    s = IdempotencyStore(sqlite_url)
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.claim(ROUTE, "e1", owner="w", lease_s=30)


def test_in_memory_sqlite_works_across_threads() -> None:
    """``sqlite://`` keeps one shared connection, serialised, so every thread sees the same claims."""
    with IdempotencyStore("sqlite://") as s:
        outcomes = _race_threads(s, [f"k{i}" for i in range(20)], threads=4)
        assert _winners(outcomes) == dict.fromkeys((f"k{i}" for i in range(20)), 1)
        assert s.counts() == {"done": 20}


# -- concurrency -----------------------------------------------------------------------------------------
Outcome = tuple[str, str, ClaimOutcome, dict[str, Any] | None]  # key, owner, outcome, result


def _claim_all(store: IdempotencyStore, keys: list[str], owner: str) -> list[Outcome]:
    """Claim every key once as ``owner``; complete the ones won, as a worker would after sending."""
    seen: list[Outcome] = []
    for key in keys:
        claim = store.claim(ROUTE, key, owner=owner, lease_s=300)
        if claim.outcome in {ClaimOutcome.NEW, ClaimOutcome.RECLAIMED}:
            store.complete(ROUTE, key, owner=owner, result={"winner": owner, "key": key})
        seen.append((key, owner, claim.outcome, claim.result))
    return seen


def _race_threads(store: IdempotencyStore, keys: list[str], *, threads: int) -> list[Outcome]:
    barrier = threading.Barrier(threads)
    results: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            got = _claim_all(store, keys, f"thread-{n}/{uuid.uuid4().hex[:6]}")
        except BaseException as exc:
            errors.append(exc)
            raise
        with lock:
            results.extend(got)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == threads * len(keys)
    return results


def _winners(outcomes: list[Outcome]) -> dict[str, int]:
    wins: dict[str, int] = {}
    for key, _owner, outcome, _result in outcomes:
        wins.setdefault(key, 0)
        if outcome in {ClaimOutcome.NEW, ClaimOutcome.RECLAIMED}:
            wins[key] += 1
    return wins


def _check_race(outcomes: list[Outcome], keys: list[str], taken: ClaimOutcome) -> None:
    """One claimer won each key, with the expected outcome; the others were held off or saw it done."""
    assert _winners(outcomes) == dict.fromkeys(keys, 1)
    winner = {
        key: owner for key, owner, outcome, _ in outcomes if outcome in {ClaimOutcome.NEW, ClaimOutcome.RECLAIMED}
    }
    for key, _owner, outcome, result in outcomes:
        assert outcome in {taken, ClaimOutcome.HELD, ClaimOutcome.DONE}
        if outcome is ClaimOutcome.DONE:
            assert result == {"winner": winner[key], "key": key}


@pytest.mark.parametrize(
    ("start", "taken", "attempts"),
    [
        ("fresh", ClaimOutcome.NEW, 1),
        ("retry", ClaimOutcome.NEW, 2),
        ("failed", ClaimOutcome.NEW, 2),
        ("expired", ClaimOutcome.RECLAIMED, 2),
    ],
)
def test_threads_racing_for_the_same_keys_get_one_winner_each(
    store: IdempotencyStore, start: str, taken: ClaimOutcome, attempts: int
) -> None:
    """8 threads sharing one store claim the same 200 keys: exactly one wins each key, whatever its state."""
    keys = [f"k{i:03d}" for i in range(200)]
    for key in keys:  # the race is on the insert (fresh) or on the compare-and-set update (the others)
        if start == "fresh":
            continue
        store.claim(ROUTE, key, owner="setup", lease_s=1, now=datetime.now(UTC) - timedelta(hours=1))
        if start == "retry":
            store.release(ROUTE, key, owner="setup", maybe_applied=False)
        elif start == "failed":
            store.fail(ROUTE, key, owner="setup", error="rejected before the fix")
    outcomes = _race_threads(store, keys, threads=8)
    _check_race(outcomes, keys, taken)
    assert store.counts() == {"done": 200}
    assert {_record(store, key).attempts for key in keys} == {attempts}


def _process_main(url: str, keys: list[str], name: str, barrier: Any, queue: Any) -> None:
    """One racing process: open its own store (creating the table, as every worker does), claim, report."""
    try:
        store = IdempotencyStore(url, create=True)
        try:
            barrier.wait(timeout=120)
            queue.put((name, _claim_all(store, keys, f"{name}/{uuid.uuid4().hex[:6]}"), None))
        finally:
            store.close()
    except BaseException:
        queue.put((name, [], traceback.format_exc()))


def test_processes_racing_for_the_same_keys_get_one_winner_each(store_url: str) -> None:
    """4 spawned processes, each with its own store on the same database, claim 200 keys: one NEW per key."""
    keys = [f"k{i:03d}" for i in range(200)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(store_url, keys, f"proc-{n}", barrier, queue)) for n in range(4)]
    try:
        for p in procs:
            p.start()
        reports = [queue.get(timeout=240) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
            p.close()
        queue.close()
        queue.join_thread()
    errors = [err for _name, _got, err in reports if err]
    assert not errors, "\n".join(errors)
    outcomes = [o for _name, got, _err in reports for o in got]
    assert len(outcomes) == 4 * len(keys)
    _check_race(outcomes, keys, ClaimOutcome.NEW)
    with IdempotencyStore(store_url, create=False) as s:
        assert s.counts() == {"done": 200}


def test_the_driver_path_stores_times_in_the_form_the_core_path_does(sqlite_url: str) -> None:
    """On SQLite times are text compared as text: claims written by the batch path (the driver's SQL) at a
    whole second keep the microseconds, as SQLAlchemy's own statements write them (the driver's default
    adapter left ``.000000`` out, so an equal time compared as earlier)."""
    store = IdempotencyStore(sqlite_url)
    try:
        whole = datetime(2026, 11, 26, 3, 0, 0, tzinfo=UTC)
        store.write_many(ROUTE, claims={"batch": "w1/x"}, completions={}, lease_s=30, now=whole)
        store.claim(ROUTE, "core", owner="w1/x", lease_s=30, now=whole)
        with store.begin() as conn:
            found = conn.exec_driver_sql("SELECT event_id, claimed_at || '|' || lease_until FROM claims").all()
        rows: dict[str, str] = dict(found)
        assert rows["batch"] == rows["core"] == "2026-11-26 03:00:00.000000|2026-11-26 03:00:30.000000"
    finally:
        store.close()
