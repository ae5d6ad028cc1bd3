"""iGate's BCCI events → VNPost orders: pickups, returns, and cancels; the tracking schedule's ticks → runs.

A pickup when the citizen hands the dossier in by post, a return when the result goes back by post, a
cancel when the dossier is withdrawn or stopped, and a tracking run at each firing of the schedule.

Where it sits: the adapter step of the ``vnpost-*`` routes (event → route → **adapter** → ``vnpost.*`` →
result/DLQ). Pure: the same event always gives the same order, so ``igate-bus map`` shows the truth.

What it refuses, naming the field (a dead letter at once; the event is wrong, a retry cannot help):

- an address VNPost cannot route: a province that is not one of the 63 GSO codes, or a district that is
  not the province's (known for Đắk Lắk, docs/domain.md section 0);
- a citizen without a mobile phone (the postal worker calls before coming);
- a COD above :data:`schemas.vnpost.MAX_COD_VND` (fees are whole VND and positive in the event already);
- a cancel without the item code (nothing to cancel yet).
"""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Final

from pydantic import ValidationError

from adapters.registry import adapter
from schemas.bus import TICK_EVENT, Tick
from schemas.envelope import Event, format_validation_error
from schemas.errors import MappingError
from schemas.igate import CCCD_PROVINCES, BcciPickupRequested, DossierEvent, Fee, ResultReady
from schemas.vnpost import MAX_COD_VND, CancelOrder, CreateOrder, OrderKind, PollRequest, PostalParty

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import datetime

#: GSO province codes, two digits (the CCCD table's codes without their leading 0)
PROVINCES: Final = frozenset(code[1:] for code in CCCD_PROVINCES)
#: [F] the districts of each province the bus knows (docs/domain.md section 0); another province's
#: districts are not checked ([A] take the official list)
DISTRICTS: Final = {"66": frozenset(str(n) for n in range(643, 658))}


def _check_address(province: str, district: str | None, field: str) -> None:
    if province not in PROVINCES:
        raise MappingError(f"province {province!r} is not a GSO province code", field=f"{field}.province")
    known = DISTRICTS.get(province)
    if district is not None and known is not None and district not in known:
        raise MappingError(f"district {district!r} is not a district of province {province}", field=f"{field}.district")


def _cod(fees: Iterable[Fee], *, collect: frozenset[str]) -> int:
    total = sum(fee.amount_vnd for fee in fees if fee.collect in collect)
    if total > MAX_COD_VND:
        raise MappingError(f"COD of {total} VND is over VNPost's {MAX_COD_VND} VND", field="payload.fees")
    return total


def _dossier_code(event: Event) -> str:
    code = event.envelope.dossier_code
    if not code:
        raise MappingError("a postal order needs the dossier code as its order number", field="dossier_code")
    return code


def _order(
    event: Event, kind: OrderKind, citizen: Mapping[str, str | None], cod: int, description: str, note: str = ""
) -> CreateOrder:
    try:
        party = PostalParty.model_validate(citizen)
    except ValidationError as exc:
        raise MappingError(format_validation_error(exc, prefix=f"{_CITIZEN[kind]}."), field=_CITIZEN[kind]) from None
    try:
        return CreateOrder(
            kind=kind,
            order_number=_dossier_code(event),
            agency_code=event.envelope.agency_code or "",
            citizen=party,
            cod_vnd=cod,
            description=description,
            note=note,
        )
    except ValidationError as exc:
        raise MappingError(format_validation_error(exc), field="payload") from None


#: where each kind reads the citizen from, for error messages
_CITIZEN: Final = {"return": "payload.bcci.receiver", "pickup": "payload.applicant"}


@adapter(accepts=("dossier.result_ready",), produces=CreateOrder)
def result_ready(event: Event, *, now: datetime) -> CreateOrder:
    """The result goes back by post: a ``return`` order to the receiver iGate registered (BCCI).

    Raises:
        MappingError: no BCCI registration, an address VNPost cannot route, or a COD over the limit.
    """
    del now
    payload = event.payload
    if not isinstance(payload, ResultReady) or payload.bcci is None:
        raise MappingError("the dossier has no BCCI registration to post the result to", field="payload.bcci")
    receiver = payload.bcci.receiver
    _check_address(receiver.province, receiver.district, "payload.bcci.receiver")
    citizen = {
        "name": receiver.name,
        "phone": receiver.phone,
        "email": receiver.email,
        "address": receiver.address,
        "province": receiver.province,
        "district": receiver.district,
        "ward": receiver.commune,
    }
    cod = _cod(payload.fees, collect=frozenset({"sau"}))
    return _order(event, "return", citizen, cod, f"Trả kết quả hồ sơ {_dossier_code(event)}")


@adapter(accepts=("bcci.pickup_requested",), produces=CreateOrder)
def pickup_requested(event: Event, *, now: datetime) -> CreateOrder:
    """The citizen hands the dossier in by post: a ``pickup`` order at the address given.

    Raises:
        MappingError: no mobile phone, an address VNPost cannot route, or a COD over the limit.
    """
    del now
    payload = event.payload
    if not isinstance(payload, BcciPickupRequested):
        raise MappingError("not a bcci.pickup_requested payload", field="payload")
    applicant, where = payload.applicant, payload.pickup_address
    if applicant.phone is None:
        raise MappingError("the postal worker needs the applicant's mobile phone", field="payload.applicant.phone")
    _check_address(where.province, where.district, "payload.pickup_address")
    citizen = {
        "name": applicant.name,
        "phone": applicant.phone,
        "email": applicant.email,
        "address": where.detail,
        "province": where.province,
        "district": where.district,
        "ward": where.commune,
    }
    cod = _cod(payload.fees, collect=frozenset({"truoc", "sau"}))
    description = f"Nhận hồ sơ {_dossier_code(event)} tại địa chỉ công dân"
    return _order(event, "pickup", citizen, cod, description, payload.note or "")


@adapter(accepts=("dossier.withdrawn", "dossier.stopped"), produces=CancelOrder)
def dossier_ended(event: Event, *, now: datetime) -> CancelOrder:
    """The dossier was withdrawn or stopped: cancel its postal order (the item code goes back to the pool).

    Raises:
        MappingError: the event names no item code (the route's ``when`` normally skips those).
    """
    del now
    payload = event.payload
    bcci = payload.bcci if isinstance(payload, DossierEvent) else None
    if bcci is None or bcci.item_code is None:
        raise MappingError("no postal item to cancel", field="payload.bcci.item_code")
    reason = str(getattr(payload, "reason", "") or event.envelope.event_type)
    try:
        return CancelOrder(item_code=bcci.item_code, order_number=_dossier_code(event), reason=reason[:500])
    except ValidationError as exc:
        raise MappingError(format_validation_error(exc), field="payload.bcci.item_code") from None


#: how a run is named: its scheduled time in UTC, to the microsecond, so names sort as runs happened
RUN_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


@adapter(accepts=(TICK_EVENT,), produces=PollRequest)
def tracking_tick(event: Event, *, now: datetime) -> PollRequest:
    """A firing of the tracking schedule: one tracking run, named by its scheduled time, from the saved cursor.

    Raises:
        MappingError: the payload is not a tick.
    """
    del now
    tick = event.payload
    if not isinstance(tick, Tick):
        raise MappingError(f"expected a {TICK_EVENT} payload, got {type(tick).__name__}", field="payload")
    run = tick.scheduled_at.astimezone(UTC).strftime(RUN_FORMAT)
    return PollRequest(run=run, cursor=tick.cursor)
