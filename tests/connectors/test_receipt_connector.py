# mypy: allow-untyped-defs
"""The e-receipt connector against its SOAP simulator on a real socket: one test per row of its error table."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from receiptenv import ENVS, issue_request, receipt_credentials, receipt_sim, receipt_spec

from connectors.kit.state import ConnectorState
from connectors.receipt import KEYS_NS, PAYMENTS_NS, ReceiptConnector, day_ns, render
from schemas.errors import CredentialsRefused, TargetGarbled, TargetRejected, TargetTimeout, TargetUnavailable
from schemas.receipt import CancelReceipt
from simulators.receipt import ReceiptSimulator

if TYPE_CHECKING:
    from schemas.results import ReceiptIssued

__all__ = ["receipt_credentials", "receipt_sim"]


@pytest.fixture
def make(receipt_sim, receipt_credentials, sqlite_url):
    built: list[ReceiptConnector] = []
    state = ConnectorState(sqlite_url, connector="receipt")

    def build(**overrides: Any) -> ReceiptConnector:
        endpoint = overrides.pop("endpoint", receipt_sim.endpoint)
        connector = ReceiptConnector("receipt", receipt_spec(endpoint, **overrides))
        connector.attach_state(state)
        built.append(connector)
        return connector

    yield build
    for connector in built:
        connector.close()
    state.close()


def assert_same_receipt(again: Any, first: Any) -> None:
    """The same receipt in every field; ``issued_at`` is when the bus learnt it, to the second, so a later
    answer may carry a later second (CI met the boundary)."""
    assert again.model_copy(update={"issued_at": first.issued_at}) == first
    assert first.issued_at is not None and again.issued_at is not None
    assert timedelta(0) <= again.issued_at - first.issued_at <= timedelta(seconds=5)


@pytest.fixture
def receipt(make):
    return make()


def test_issue_answers_the_receipt_the_service_issued(receipt, receipt_sim):
    issued = receipt.issue(issue_request("PG1"), "k1")
    assert (issued.fkey, issued.pattern, issued.serial, issued.number) == ("phi-PG1", "01BLP0-001", "AA-19E", "0000001")
    assert issued.amount_vnd == 500_000
    assert receipt_sim.issued() == {"phi-PG1": 1}
    sent = receipt_sim.requests("ImportAndPublishInv")[0]
    assert sent["soap_action"] == '"http://tempuri.org/ImportAndPublishInv"' and sent["body"]["password"] == "***"


def test_a_second_event_of_a_payment_looks_the_receipt_up_and_issues_nothing(receipt, receipt_sim):
    first = receipt.issue(issue_request("PG2"), "k1")
    again = receipt.issue(issue_request("PG2"), "k2")  # another event of the same payment
    assert_same_receipt(again, first)
    assert receipt_sim.issued() == {"phi-PG2": 1}
    assert [r["answer"] for r in receipt_sim.requests("ImportAndPublishInv")] == [first_ok(first)]
    assert len(receipt_sim.requests("listInvByCusFkey")) == 1


def test_err13_fetches_a_receipt_the_bus_never_recorded_and_issues_nothing(receipt, receipt_sim):
    first = receipt.issue(issue_request("PG2B"), "k1")
    receipt.state.delete(PAYMENTS_NS, "phi-PG2B")  # as if issued by another channel: the bus has no row
    again = receipt.issue(issue_request("PG2B"), "k2")
    assert_same_receipt(again, first)
    assert receipt_sim.issued() == {"phi-PG2B": 1}
    assert [r["answer"] for r in receipt_sim.requests("ImportAndPublishInv")] == [first_ok(first), "ERR:13"]


def first_ok(issued: ReceiptIssued) -> str:
    return f"OK:{issued.pattern};{issued.serial}-{issued.fkey}_{issued.number}"


def test_err13_for_another_amount_is_refused_never_reported_as_issued(receipt, receipt_sim):
    receipt.issue(issue_request("PG3", amounts=(500_000,)), "k1")
    with pytest.raises(TargetRejected) as caught:
        receipt.issue(issue_request("PG3", amounts=(600_000,)), "k2")
    assert caught.value.code == "amount_mismatch" and "500000" in str(caught.value)
    assert receipt_sim.issued() == {"phi-PG3": 1}


def test_a_cancelled_receipt_never_comes_back_as_valid(receipt, receipt_sim):
    receipt.issue(issue_request("PG4"), "k1")
    cancelled = receipt.cancel(CancelReceipt(fkey="phi-PG4", reason="sai số tiền"), "c1")
    assert cancelled.status == "cancelled" and cancelled.number == "0000001"
    assert [e["effect"] for e in receipt_sim.effects()] == ["issued", "unconfirmed", "cancelled"]
    with pytest.raises(TargetRejected) as caught:
        receipt.issue(issue_request("PG4"), "k2")  # a duplicate settled event after the cancellation
    assert caught.value.code == "cancelled"
    assert receipt.cancel(CancelReceipt(fkey="phi-PG4", reason="again"), "c2") == cancelled  # nothing more sent
    assert [e["effect"] for e in receipt_sim.effects()] == ["issued", "unconfirmed", "cancelled"]


def test_cancelling_an_fkey_without_a_receipt_is_refused(receipt):
    with pytest.raises(TargetRejected) as caught:
        receipt.cancel(CancelReceipt(fkey="phi-NOPE", reason="x"), "c1")
    assert caught.value.code == "not_found"


def test_the_account_refused_is_credentials_refused_after_one_resend(make, receipt_sim, monkeypatch):
    monkeypatch.setenv(ENVS["password"], "wrong")
    connector = make()
    with pytest.raises(CredentialsRefused):
        connector.issue(issue_request("PG5"), "k1")
    assert [r["answer"] for r in receipt_sim.requests("ImportAndPublishInv")] == ["ERR:1", "ERR:1"]
    assert receipt_sim.issued() == {}


@pytest.mark.parametrize(
    ("err", "error", "maybe"),
    [(5, TargetUnavailable, True), (6, TargetUnavailable, False), (21, TargetRejected, None)],
)
def test_err_codes(receipt, receipt_sim, err, error, maybe):
    receipt_sim.set_faults(mode="err", err_code=err, only_operations=["ImportAndPublishInv"])
    with pytest.raises(error) as caught:
        receipt.issue(issue_request("PG6"), "k1")
    if maybe is None:
        assert caught.value.code == f"ERR:{err}"
    else:
        assert caught.value.maybe_applied is maybe
    assert f"ERR:{err}" in str(caught.value)


def test_a_pattern_the_service_does_not_know_is_refused(make):
    connector = make(options={"pattern": "01BLP0-999", "serial": "AA-19E"})
    with pytest.raises(TargetRejected) as caught:
        connector.issue(issue_request("PG7"), "k1")
    assert caught.value.code == "ERR:20"


@pytest.mark.parametrize("mode", ["garbage", "html", "xxe", "billion_laughs"])
def test_garbage_and_hostile_replies_are_garbled_maybe_applied_and_never_quoted(receipt, receipt_sim, mode):
    receipt_sim.set_faults(mode=mode, only_operations=["ImportAndPublishInv"])
    with pytest.raises(TargetGarbled) as caught:
        receipt.issue(issue_request("PG8"), "k1")
    assert caught.value.maybe_applied
    assert "passwd" not in str(caught.value) and "066090001234" not in str(caught.value)


def test_503_is_unavailable_not_applied(receipt, receipt_sim):
    receipt_sim.set_faults(mode="http_503")
    with pytest.raises(TargetUnavailable) as caught:
        receipt.issue(issue_request("PG9"), "k1")
    assert not caught.value.maybe_applied


def test_a_timeout_after_the_service_issued_is_maybe_applied_and_the_resend_fetches_it(receipt, receipt_sim):
    receipt_sim.set_faults(mode="apply_then_hang", hang_s=5, only_operations=["ImportAndPublishInv"])
    with pytest.raises(TargetTimeout) as caught:
        receipt.issue(issue_request("PG10"), "k1")
    assert caught.value.maybe_applied
    assert receipt_sim.issued() == {"phi-PG10": 1}  # guard: the service did issue it
    receipt_sim.set_faults()
    found = receipt.lookup_issue("k1")  # the engine's reconcile after the ambiguous outcome
    assert found is not None and found.number == "0000001"
    assert receipt.issue(issue_request("PG10"), "k1").number == "0000001"  # a resend fetches, never issues
    assert receipt_sim.issued() == {"phi-PG10": 1}


def test_a_dropped_answer_after_issue_is_maybe_applied(receipt, receipt_sim):
    receipt_sim.set_faults(mode="apply_then_drop", only_operations=["ImportAndPublishInv"])
    with pytest.raises(TargetUnavailable) as caught:
        receipt.issue(issue_request("PG11"), "k1")
    assert caught.value.maybe_applied and receipt_sim.issued() == {"phi-PG11": 1}


def test_a_failed_lookup_after_err13_is_transient_and_issues_nothing(receipt, receipt_sim):
    receipt.issue(issue_request("PG12"), "k1")
    receipt_sim.set_faults(lookup_fail_rate=1.0)
    with pytest.raises(TargetUnavailable):
        receipt.issue(issue_request("PG12"), "k2")
    assert [r["fault"] for r in receipt_sim.requests("listInvByCusFkey")] == ["lookup_fail"]  # guard
    assert receipt_sim.issued() == {"phi-PG12": 1}


def test_probe_up_and_down(receipt, make, receipt_sim):
    assert receipt.probe().state == "up"
    assert receipt_sim.issued() == {}  # the probe's lookup issues nothing
    with ReceiptSimulator() as gone:
        endpoint = gone.endpoint
    assert make(endpoint=endpoint).probe().state == "down"


def test_the_payment_is_recorded_and_the_lookup_by_key_finds_the_receipt(receipt, receipt_sim):
    state = receipt.state
    receipt_sim.set_faults(mode="apply_then_drop", only_operations=["ImportAndPublishInv"])
    with pytest.raises(TargetUnavailable):
        receipt.issue(issue_request("PG13", amounts=(70_000,)), "k1")
    receipt_sim.set_faults()
    found = receipt.lookup_issue("k1")
    assert found is not None and found.fkey == "phi-PG13" and found.amount_vnd == 70_000
    assert state.get(KEYS_NS, "k1").value["fkey"] == "phi-PG13"
    assert state.get(PAYMENTS_NS, "phi-PG13").value["amount_vnd"] == 70_000
    # a second event of the payment looks it up before issuing: no ImportAndPublishInv at all
    before = len(receipt_sim.requests("ImportAndPublishInv"))
    assert receipt.issue(issue_request("PG13", amounts=(70_000,)), "k2").number == found.number
    assert len(receipt_sim.requests("ImportAndPublishInv")) == before
    assert state.get(PAYMENTS_NS, "phi-PG13").status == "issued"
    payment = state.get(PAYMENTS_NS, "phi-PG13").value
    assert state.get(day_ns(payment["asked_on"]), "phi-PG13").value == {"amount_vnd": 70_000}
    assert receipt.lookup_issue("never-sent") is None


def test_render_hides_the_secrets():
    text = render("issue", issue_request("PG14"))
    assert "ImportAndPublishInv" in text and "&lt;key&gt;phi-PG14&lt;/key&gt;" in text
    assert "simulator-only" not in text


def test_an_unset_credential_is_the_account_refused_and_sends_nothing(make, receipt_sim, monkeypatch):
    """A worker whose receipt variables are unset starts; its receipts wait as for a refused account."""
    monkeypatch.delenv(ENVS["account"])
    connector = make()  # building needs no secret
    with pytest.raises(CredentialsRefused) as caught:
        connector.issue(issue_request("PG15"), "k1")
    assert ENVS["account"] in str(caught.value)
    assert receipt_sim.requests() == []
