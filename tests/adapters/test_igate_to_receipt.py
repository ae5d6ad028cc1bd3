# mypy: allow-untyped-defs
"""The e-receipt adapters and the money rules: integer VND, amounts in words, one fkey per payment and kind."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from busenv import example

from adapters.igate_to_receipt import payment_settled_lephi, payment_settled_phi, receipt_cancel_requested
from schemas.envelope import Event, parse_event
from schemas.errors import MappingError
from schemas.events import EVENT_PAYLOADS
from schemas.receipt import IssueReceipt, amount_in_words

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def parsed(event: dict[str, Any]) -> Event:
    return parse_event(json.dumps(event).encode(), payload_models=EVENT_PAYLOADS)


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        (1, "Một đồng"),
        (10, "Mười đồng"),
        (15, "Mười lăm đồng"),
        (21, "Hai mươi mốt đồng"),
        (105, "Một trăm linh năm đồng"),
        (1_005, "Một nghìn không trăm linh năm đồng"),
        (25_000, "Hai mươi lăm nghìn đồng"),
        (100_000, "Một trăm nghìn đồng"),
        (500_000, "Năm trăm nghìn đồng"),
        (1_000_000, "Một triệu đồng"),
        (1_250_000, "Một triệu hai trăm năm mươi nghìn đồng"),
        (2_000_050, "Hai triệu không trăm năm mươi đồng"),
        (1_000_000_000, "Một tỷ đồng"),
        (10_000_000_000_000, "Mười nghìn tỷ đồng"),
    ],
)
def test_amount_in_words(amount, words):
    assert amount_in_words(amount) == words


@pytest.mark.parametrize("bad", [0, -1, 10_000_000_000_001, 1.5, "1000", True])
def test_amount_in_words_refuses_what_is_not_a_positive_whole_vnd(bad):
    with pytest.raises(ValueError, match="whole number of VND"):
        amount_in_words(bad)


def test_the_example_payment_gives_one_receipt_per_kind_keyed_by_the_payment():
    event = parsed(example("payment.settled"))
    phi, lephi = payment_settled_phi(event, now=NOW), payment_settled_lephi(event, now=NOW)
    assert (phi.fkey, phi.total_vnd, phi.amount_in_words) == ("phi-PG2611260001", 500_000, "Năm trăm nghìn đồng")
    assert (lephi.fkey, lephi.total_vnd) == ("lephi-PG2611260001", 100_000)
    assert phi.paid_on.isoformat() == "2025-12-04" and phi.method == "TTO"
    assert [line.fee_code for line in phi.lines] == ["PHI-TDHS"]
    assert "<key>phi-PG2611260001</key>" in phi.xml() and "<AmountInWords>Năm trăm nghìn đồng<" in phi.xml()


def test_the_fkey_comes_from_the_payment_not_the_event_id():
    first = example("payment.settled")
    again = {**first, "event_id": "0b8a3c1e-6f0d-4d7e-9b1a-2c3d4e5f6a7b"}
    assert payment_settled_phi(parsed(first), now=NOW) == payment_settled_phi(parsed(again), now=NOW)


def test_fees_of_one_kind_are_lines_of_one_receipt_and_exempt_fees_are_left_out():
    event = example("payment.settled")
    fee = event["payload"]["fees"][0]
    event["payload"]["fees"] = [fee, {**fee, "code": "PHI-KTDD", "amount_vnd": 250_000}, {**fee, "collect": "mien"}]
    receipt = payment_settled_phi(parsed(event), now=NOW)
    assert [line.amount_vnd for line in receipt.lines] == [500_000, 250_000]
    assert (receipt.total_vnd, receipt.amount_in_words) == (750_000, "Bảy trăm năm mươi nghìn đồng")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"code": "PHI-KHONG-CO"}, "payload.fees[0].code"),
        ({"code": "LP-CGCN"}, "payload.fees[0].kind"),
    ],
)
def test_a_fee_code_the_service_does_not_know_is_refused_naming_the_field(change, field):
    event = example("payment.settled")
    event["payload"]["fees"][0].update(change)
    with pytest.raises(MappingError) as caught:
        payment_settled_phi(parsed(event), now=NOW)
    assert caught.value.field == field


def test_a_payment_without_a_fee_of_the_kind_is_refused():
    event = example("payment.settled")
    event["payload"]["fees"] = event["payload"]["fees"][1:]
    with pytest.raises(MappingError) as caught:
        payment_settled_phi(parsed(event), now=NOW)
    assert caught.value.field == "payload.fees"


def test_a_receipt_whose_total_or_words_disagree_cannot_be_built():
    receipt = payment_settled_phi(parsed(example("payment.settled")), now=NOW)
    data = receipt.model_dump()
    with pytest.raises(ValueError, match="sum of the lines"):
        IssueReceipt.model_validate({**data, "total_vnd": 500_001, "amount_in_words": amount_in_words(500_001)})
    with pytest.raises(ValueError, match="does not say"):
        IssueReceipt.model_validate({**data, "amount_in_words": "Năm trăm đồng"})
    with pytest.raises(ValueError, match="fkey must be"):
        IssueReceipt.model_validate({**data, "fkey": "phi-OTHER"})


def test_the_receipt_xml_cannot_be_broken_out_of():
    event = example("payment.settled")
    event["payload"]["applicant"]["name"] = "Nguyễn </CusName><Total>1</Total>"
    xml = payment_settled_phi(parsed(event), now=NOW).xml()
    assert "&lt;/CusName&gt;&lt;Total&gt;1&lt;/Total&gt;" in xml and xml.count("<Total>") == 2


def test_cancel_request_maps_the_fkey_and_reason():
    request = receipt_cancel_requested(parsed(example("receipt.cancel_requested")), now=NOW)
    assert request.fkey == "phi-PG2611260001" and request.reason.startswith("Lập sai")


def test_a_tick_reconciles_the_day_before_it_in_vietnam_time():
    from datetime import date

    from adapters.igate_to_receipt import daily_reconciliation
    from schemas.bus import Tick
    from schemas.envelope import Envelope

    envelope = Envelope.model_validate(
        {
            "event_id": "0b8a3c1e-6f0d-4d7e-9b1a-2c3d4e5f6a7b",
            "event_type": "bus.tick",
            "occurred_at": "2025-12-04T19:00:00+00:00",
            "source": "igate-bus/receipt-reconcile-daily",
            "payload": {},
        }
    )
    # 02:00 on 5 December in Vietnam is 19:00 on 4 December in UTC
    tick = Tick(route="receipt-reconcile-daily", scheduled_at=datetime(2025, 12, 4, 19, 0, tzinfo=UTC))
    assert daily_reconciliation(Event(envelope, tick), now=NOW).day == date(2025, 12, 4)
