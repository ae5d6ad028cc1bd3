"""iGate payment events → the Finance e-receipt service's requests (docs/domain.md section 4).

Where it sits: the adapter step of the receipt routes (``igate.events`` → route → **adapter** →
``receipt.issue`` / ``receipt.cancel`` → ``receipt.issued`` or the DLQ). One receipt per kind of fee of a
payment ([F] TH: ``phi`` and ``lephi`` each get their own), so each kind has its own route and adapter
(``payment_settled_phi``, ``payment_settled_lephi``); the route's ``when`` skips a payment without fees of
its kind. Every fee of the kind becomes one line of that kind's receipt.

The rules, each in one place below:

- **fkey** ``{kind}-{payment_ref}``: from the payment, never from the event id, so duplicate
  ``payment.settled`` events of one payment (iGate resending, a DLQ replay days later) name one receipt.
- **Money**: the event schema already refuses a fee that is not a positive integer VND
  (``schemas/igate.py`` ``Fee.amount_vnd``: a float, a string such as "1.000.000", a bool, zero, a negative
  or an absurd amount is dead-lettered as invalid, naming the field). Here the total of a kind must fit too,
  and its words are :func:`schemas.receipt.amount_in_words`.
- **Fee codes**: a code not registered with the service (:data:`schemas.receipt.FEE_CATALOGUE`), or
  registered under the other kind, is refused naming ``payload.fees[i].code`` (``.kind``): the service would
  refuse that line, and refusing before any call leaves no half-issued payment.
- **Exempt fees** (``collect: mien``) are not collected, so they are not receipted.
- ``paid_on`` is the payment's date in Vietnam time; ``now`` is never read.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from adapters.registry import adapter
from schemas.bus import TICK_EVENT, Tick
from schemas.envelope import format_validation_error
from schemas.errors import MappingError
from schemas.igate import MAX_AMOUNT_VND, PaymentSettled, ReceiptCancelRequested
from schemas.nps import ICT
from schemas.receipt import FEE_CATALOGUE, CancelReceipt, FeeKind, IssueReceipt, ReceiptLine, amount_in_words
from schemas.receipt_reconcile import ReconcileDay

if TYPE_CHECKING:
    from datetime import datetime

    from schemas.envelope import Event


P = TypeVar("P", bound=BaseModel)


def _payload(event: Event, model: type[P]) -> P:
    """The event's payload as ``model``; another is a mapping error on ``payload`` (a route bound wrongly)."""
    payload = event.payload
    if not isinstance(payload, model):
        raise MappingError(f"expected a {model.__name__} payload, got {type(payload).__name__}", field="payload")
    return payload


def fkey(kind: FeeKind, payment_ref: str) -> str:
    """The service's key of the receipt of ``kind`` for payment ``payment_ref``."""
    return f"{kind}-{payment_ref}"


def issue_request(event: Event, kind: FeeKind) -> IssueReceipt:
    """The receipt of one kind of fee of a settled payment.

    Raises:
        MappingError: a wrong payload, no dossier code, an unknown fee code or one of the other kind, no fee
            of this kind to collect, or a total over the bound; the field is named.
    """
    payload = _payload(event, PaymentSettled)
    code = event.envelope.dossier_code
    if not code:
        raise MappingError("a receipt is filed under the dossier code; the event has none", field="dossier_code")
    lines: list[ReceiptLine] = []
    for index, fee in enumerate(payload.fees):
        registered = FEE_CATALOGUE.get(fee.code)
        if registered is None:
            raise MappingError(
                f"fee code {fee.code!r} is not registered with the e-receipt service",
                field=f"payload.fees[{index}].code",
            )
        if registered != fee.kind:
            raise MappingError(
                f"fee code {fee.code!r} is a {registered}, not a {fee.kind}", field=f"payload.fees[{index}].kind"
            )
        if fee.kind == kind and fee.collect != "mien":
            lines.append(ReceiptLine(fee_code=fee.code, name=fee.name, amount_vnd=fee.amount_vnd))
    if not lines:
        raise MappingError(f"the payment has no {kind} fee to collect", field="payload.fees")
    total = sum(line.amount_vnd for line in lines)
    if total > MAX_AMOUNT_VND:
        raise MappingError(f"the {kind} fees add up to more than {MAX_AMOUNT_VND} VND", field="payload.fees")
    applicant = payload.applicant
    paid_on = payload.paid_at.astimezone(ICT).date()
    try:
        return IssueReceipt(
            fkey=fkey(kind, payload.payment_ref),
            kind=kind,
            payment_ref=payload.payment_ref,
            dossier_code=code,
            procedure_code=event.envelope.procedure_code,
            payer_name=applicant.name,
            payer_address=applicant.address.detail,
            payer_email=applicant.email,
            method=payload.method,
            paid_on=paid_on,
            lines=tuple(lines),
            total_vnd=total,
            amount_in_words=amount_in_words(total),
        )
    except ValidationError as exc:
        raise MappingError(format_validation_error(exc), field="payload") from None


@adapter(accepts=("payment.settled",), produces=IssueReceipt)
def payment_settled_phi(event: Event, *, now: datetime) -> IssueReceipt:
    """Fees paid → the receipt of its phí (fkey ``phi-{payment_ref}``).

    Raises:
        MappingError: see :func:`issue_request`.
    """
    del now
    return issue_request(event, "phi")


@adapter(accepts=("payment.settled",), produces=IssueReceipt)
def payment_settled_lephi(event: Event, *, now: datetime) -> IssueReceipt:
    """Fees paid → the receipt of its lệ phí (fkey ``lephi-{payment_ref}``).

    Raises:
        MappingError: see :func:`issue_request`.
    """
    del now
    return issue_request(event, "lephi")


@adapter(accepts=(TICK_EVENT,), produces=ReconcileDay)
def daily_reconciliation(event: Event, *, now: datetime) -> ReconcileDay:
    """The schedule's firing → reconcile the day before it (Vietnam time): a day's file is whole once it is over.

    Raises:
        MappingError: a wrong payload.
    """
    del now
    payload = _payload(event, Tick)
    return ReconcileDay(day=payload.scheduled_at.astimezone(ICT).date() - timedelta(days=1))


@adapter(accepts=("receipt.cancel_requested",), produces=CancelReceipt)
def receipt_cancel_requested(event: Event, *, now: datetime) -> CancelReceipt:
    """A cancellation iGate asked for → cancel that fkey's receipt (UnConfirmPaymentFkey, then cancelInv).

    Raises:
        MappingError: a wrong payload.
    """
    del now
    payload = _payload(event, ReceiptCancelRequested)
    return CancelReceipt(fkey=payload.fkey, reason=payload.reason)
