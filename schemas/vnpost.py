"""VNPost's public-postal (BCCI) orders, tracking and item codes, as the bus sends and reads them.

Where it sits: between the adapter and the connector of the ``vnpost-*`` routes (event → route → adapter →
**these requests** → ``connectors/vnpost.py`` → these replies → result/DLQ). The requests are the bus's
own, transport-neutral; the connector writes them in the wire form of VNPost's NGSP API (docs/domain.md
section 3, API B, the fields of API A in camelCase), so everything VNPost would refuse (an item code whose
check digit is wrong, a COD that is not whole VND or is out of range, a phone that is not ``0xxxxxxxxx``)
is refused here first, naming the field, and dead-lettered instead of being sent.

Facts and assumptions (docs/domain.md section 3): [F] the S10 item code and its check digit; [F] the status
codes of MyVNPost; [A] that the order takes GSO province/district/ward codes as integers, that an order
carries our idempotency key as ``clientOrderId`` and can be looked up by it, that each tracking entry has a
per-item number ``eventNo`` counting from 1, and the status 18 "returned to sender".
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from schemas.bus import Emission
from schemas.igate import S10_PATTERN, CommuneCode, DistrictCode, Email, Name, ProvinceCode, Timestamp
from schemas.pii import sensitive
from schemas.results import DOSSIER_CODE_PATTERN

#: [F] UPU S10 weights of the eight serial digits (docs/domain.md section 3)
S10_WEIGHTS: Final = (8, 6, 4, 2, 3, 5, 9, 7)
#: [A] the largest COD VNPost takes on one BCCI order: 10 billion VND (far above any fee of a dossier, far
#: below 10^13, the bus's ceiling for a single fee); a sum above it is a mapping error naming the fees
MAX_COD_VND: Final = 10_000_000_000
#: [A] the largest postage a reply may state; a larger one is a garbled reply
MAX_POSTAGE_VND: Final = 100_000_000
#: a phone as VNPost takes it: the national form, ten digits
POSTAL_PHONE_PATTERN: Final = r"^0[0-9]{9}$"
_S10: Final = re.compile(S10_PATTERN)

#: [F] MyVNPost status codes (docs/domain.md section 3) the simulator plays and the bus names
STATUS_NAMES: Final = {
    1: "Đã tạo đơn",
    2: "Đã giao bưu tá",
    4: "Đang nhận hàng",
    5: "Nhận hàng không thành công",
    6: "Đã nhận hàng",
    7: "Bưu cục đã nhận",
    9: "Hủy nhận hàng",
    10: "Đang vận chuyển",
    11: "Đến bưu cục phát",
    12: "Đang phát",
    14: "Phát thành công",
    15: "Phát không thành công",
    18: "Đã chuyển hoàn",  # [A] returned to sender
    22: "Hủy phát",
}
#: statuses after which an item changes no more: delivered, returned to sender, collection or delivery cancelled
FINAL_STATUSES: Final = frozenset({14, 18, 9, 22})
#: [F] order answers: "100" accepted; "101" accepted too ([A] the order already exists)
ACCEPTED_CODES: Final = frozenset({"100", "101"})


def s10_check_digit(serial: str) -> int:
    """The S10 check digit of eight serial digits: 11 − (Σ digit × weight mod 11), 10 → 0, 11 → 5."""
    total = sum(int(d) * w for d, w in zip(serial, S10_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: 0, 11: 5}.get(check, check)


def check_item_code(code: str) -> str:
    """Check an item code's form and check digit; ``ValueError`` says which is wrong (never silently fixed)."""
    if not _S10.fullmatch(code):
        raise ValueError("not an S10 item code: two capital letters, nine digits, VN (e.g. EB123456785VN)")
    expected = s10_check_digit(code[2:10])
    if int(code[10]) != expected:
        raise ValueError(f"check digit of {code} is {code[10]}, expected {expected}")
    return code


#: an item code in S10 form whose check digit is right (VNPost's pre-issued codes all pass it)
ItemCode = Annotated[str, Field(max_length=13, examples=["EB123456785VN"]), AfterValidator(check_item_code)]
PostalPhone = Annotated[str, Field(pattern=POSTAL_PHONE_PATTERN, examples=["0912345678"])]
DossierCode = Annotated[str, Field(pattern=DOSSIER_CODE_PATTERN)]
OrderKind = Literal["pickup", "return"]


class VnpostModel(BaseModel):
    """Base of the VNPost models: unknown fields refused, frozen, strings bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=2000)


class PostalParty(VnpostModel):
    """The citizen's end of an order: who the postal worker meets, where (GSO codes plus the street part)."""

    name: Name = sensitive()
    phone: PostalPhone = sensitive()
    email: Email | None = sensitive(default=None)
    address: str = sensitive(min_length=1, max_length=500, description="House number, street, hamlet.")
    province: ProvinceCode
    district: DistrictCode | None = None
    ward: CommuneCode


class CreateOrder(VnpostModel):
    """A BCCI order: ``pickup`` (the citizen ▶ the agency) or ``return`` (the result ▶ the citizen).

    The agency's end (its name, address, phone, codes) is the connector's ``options.agency_*``: the adapter
    has only the event, and the agency's desk does not change per dossier.
    """

    kind: OrderKind
    order_number: DossierCode = Field(description="The dossier code (OrderNumber = MaHoSo).")
    agency_code: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    citizen: PostalParty
    cod_vnd: StrictInt = Field(ge=0, le=MAX_COD_VND, description="Collected on delivery, whole VND.")
    description: str = Field(min_length=1, max_length=500)
    note: str = Field(default="", max_length=500)


class OrderReply(VnpostModel):
    """VNPost accepted the order under ``item_code``; what the pool had left when it was taken."""

    item_code: ItemCode
    order_number: DossierCode
    kind: OrderKind
    answer_code: Literal["100", "101"]
    postage_vnd: StrictInt = Field(ge=0, le=MAX_POSTAGE_VND)
    pool_free: StrictInt = Field(ge=0, description="Item codes left in the pool after this order.")
    pool_low: StrictInt = Field(default=0, ge=0, description="The threshold under which the pool is low.")
    taken_at: Timestamp = Field(description="When the order was accepted (the alert's time).")

    def result_events(self) -> list[Emission]:
        """``vnpost.pool_low`` when this order left fewer free codes than the threshold; one per level."""
        if self.pool_free >= self.pool_low:
            return []
        alert = {"free": self.pool_free, "threshold": self.pool_low}
        return [
            Emission(
                key=f"pool_low/{self.pool_free}",
                event_type="vnpost.pool_low",
                payload=alert,
                dossier_code=None,
                occurred_at=self.taken_at,
            )
        ]


class CancelOrder(VnpostModel):
    """Cancel the order of ``order_number`` that travels (or was to travel) as ``item_code``."""

    item_code: ItemCode
    order_number: DossierCode
    reason: str = Field(min_length=1, max_length=500)


class CancelReply(VnpostModel):
    """VNPost cancelled the order; its item code went back to the pool."""

    item_code: ItemCode
    order_number: DossierCode
    answer_code: Literal["100", "101"]
    pool_free: StrictInt = Field(ge=0)


class PollRequest(VnpostModel):
    """One tracking run: ``run`` names it (the tick's scheduled time), ``cursor`` is the last run saved."""

    run: str = Field(min_length=1, max_length=64)
    cursor: str | None = Field(default=None, max_length=200)


class TrackingEntry(VnpostModel):
    """One tracking event of an item as the bus reports it (``vnpost.tracking_updated``'s payload)."""

    item_code: ItemCode
    order_number: DossierCode
    event_no: StrictInt = Field(ge=1, le=10_000)
    status_code: StrictInt = Field(ge=0, le=999)
    status_message: str = Field(default="", max_length=500)
    at: Timestamp

    @property
    def key(self) -> str:
        """The fact's name, e.g. ``EB123456785VN/0003``: the same event polled twice has the same key."""
        return f"{self.item_code}/{self.event_no:04d}"


class PollReply(VnpostModel):
    """What a tracking run found: new events in order per item, and the cursor to save."""

    run: str
    cursor: str
    polled: StrictInt = Field(ge=0, description="Tracking calls made.")
    finished: StrictInt = Field(ge=0, description="Items seen to their end and no longer polled.")
    entries: tuple[TrackingEntry, ...] = ()

    def result_events(self) -> list[Emission]:
        """One ``vnpost.tracking_updated`` per new tracking event, in order per item, keyed by the fact."""
        return [
            Emission(
                key=e.key,
                event_type="vnpost.tracking_updated",
                payload=e.model_dump(mode="json", exclude={"event_no"}),
                dossier_code=e.order_number,
                occurred_at=e.at,
            )
            for e in self.entries
        ]
