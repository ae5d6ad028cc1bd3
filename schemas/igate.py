"""Payload models of the events iGate publishes: one model per event type of docs/domain.md section 7.

First step of a message's path: :func:`schemas.envelope.parse_event` validates an envelope's ``payload``
against the model registered here for its ``event_type`` (:data:`IGATE_EVENTS`, merged with the result events
in ``schemas/events.py``). Routes' ``when`` conditions and the adapters then read the validated model, so
everything an adapter may rely on (a CCCD of 12 digits, a phone as ``0xxxxxxxxx``, fees as whole VND) is
enforced here, once. A payload that fails is a permanent error: dead-lettered with the field's path.

The contract is docs/domain.md's proposal ([A]: iGate's real event feed is not public). Every dossier event
carries the common part (applicant, dates, documents, fees, optional BCCI and land parcel) so each route has
what its target needs without a call back to iGate; an event for which a date must exist (received, returned)
says so with a stricter ``dates`` model. Fields that hold personal data are marked with
:func:`schemas.pii.sensitive`, which is how the logs know to mask them.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.pii import secret, sensitive
from schemas.strict import MAX_YEAR, MULTILINE_KEY, ExactInt, Instant, IsoDate, PastInstant, multiline

if TYPE_CHECKING:
    from datetime import date

#: bound on every string in a payload whatever its own: nothing from iGate is longer (a summary is ~1000)
MAX_TEXT = 4000
#: the largest fee accepted: 10 trillion VND, above any land-use levy, far below float trouble
MAX_AMOUNT_VND = 10_000_000_000_000
#: a CCCD's century digit starts at 1900
MIN_BIRTH_YEAR = 1900

#: mobile prefixes per network (docs/domain.md section 0): Viettel, VinaPhone, MobiFone, Vietnamobile, Gmobile,
#: Itel, Reddi. Landlines (02x) and the old 11-digit numbers are not here: SMS cannot reach them.
MOBILE_PREFIXES = frozenset(
    {f"03{d}" for d in "23456789"}
    | {"086", "096", "097", "098"}
    | {"081", "082", "083", "084", "085", "088", "091", "094"}
    | {"070", "076", "077", "078", "079", "089", "090", "093"}
    | {"052", "056", "058", "092"}
    | {"059", "099"}
    | {"087"}
    | {"055"}
)
#: first three digits of a CCCD: the province of birth registration, GSO province code with a leading 0
#: (the 63 provinces before the 2025 merger; merged provinces kept one of these codes)
CCCD_PROVINCES = frozenset(
    f"{code:03d}"
    for code in (
        *(1, 2, 4, 6, 8, 10, 11, 12, 14, 15, 17, 19, 20, 22, 24, 25, 26, 27, 30, 31, 33, 34, 35, 36, 37, 38),
        *(40, 42, 44, 45, 46, 48, 49, 51, 52, 54, 56, 58, 60, 62, 64, 66, 67, 68, 70, 72, 74, 75, 77, 79),
        *(80, 82, 83, 84, 86, 87, 89, 91, 92, 93, 94, 95, 96),
    )
)
#: fourth digit of a CCCD: century and sex, 0/1 born 1900-1999, 2/3 born 2000-2099
CCCD_CENTURY_DIGITS = frozenset("0123")
CCCD_LENGTH, CMND_LENGTH = 12, 9
_DIGITS = re.compile(r"[0-9]+")
_MOBILE = re.compile(r"0[0-9]{9}")
_PHONE_NOISE = re.compile(r"[\s.\-()]")
_CODE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_REF = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: UPU S10 postal item code: two letters, eight digits and a check digit, ``VN`` (check not enforced: the
#: public samples fail it, docs/domain.md section 3)
S10_PATTERN = r"^[A-Z]{2}[0-9]{9}VN$"


def _plausible_birth(value: date) -> date:
    if not MIN_BIRTH_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"birth year {value.year} is not plausible")
    return value


def normalize_mobile(value: str) -> str:
    """A Vietnamese mobile number in national form ``0xxxxxxxxx``, or ``ValueError``.

    Accepts ``0912345678``, ``+84912345678``, ``84912345678``, full-width digits and spaces, dots, dashes or
    brackets between digits. Refuses landlines (``02x``), the old 11-digit numbers (``0168…``), numbers of
    the wrong length and unknown prefixes. The message never repeats the number.
    """
    compact = _PHONE_NOISE.sub("", unicodedata.normalize("NFKC", value))
    if compact.startswith("+84"):
        national = "0" + compact[3:]
    elif compact.startswith("84") and len(compact) == len("84") + 9:
        national = "0" + compact[2:]
    else:
        national = compact
    if not _MOBILE.fullmatch(national):
        raise ValueError("not a Vietnamese mobile number: expected 0xxxxxxxxx, +84xxxxxxxxx or 84xxxxxxxxx")
    if national[:3] not in MOBILE_PREFIXES:
        raise ValueError(f"prefix {national[:3]} is not a mobile network's (landline or retired number)")
    return national


def to_msisdn(phone: str) -> str:
    """The form ``84xxxxxxxxx`` SMS gateways want, from any form :func:`normalize_mobile` accepts."""
    return "84" + normalize_mobile(phone)[1:]


def check_id_no(id_type: int, id_no: str) -> str:
    """Check an applicant's id number against its type and return it; ``ValueError`` names the rule broken.

    Type 1 is the 12-digit CCCD: province of birth registration (``066`` Đắk Lắk), century/sex digit,
    two-digit birth year, six digits; there is no check digit. Type 2 is the old 9-digit CMND (TH sends
    ``000000001`` as a placeholder, which passes).
    """
    if not _DIGITS.fullmatch(id_no):
        raise ValueError("must contain only the digits 0-9")
    if id_type == 1:
        if len(id_no) != CCCD_LENGTH:
            raise ValueError(f"a CCCD (id_type 1) has 12 digits, got {len(id_no)}")
        if id_no[:3] not in CCCD_PROVINCES:
            raise ValueError(f"a CCCD starts with a province code; {id_no[:3]} is none")
        if id_no[3] not in CCCD_CENTURY_DIGITS:
            raise ValueError("the 4th digit of a CCCD (century and sex) must be 0-3")
    elif len(id_no) != CMND_LENGTH:
        raise ValueError(f"a CMND (id_type 2) has 9 digits, got {len(id_no)}")
    return id_no


#: an aware date-time given as RFC 3339 text with an offset, year 2000-2100 (a time to come, or any time)
Timestamp = Instant
#: a :data:`Timestamp` of something that has happened: not after the event's receipt (plus the skew)
PastTimestamp = PastInstant
#: a date of birth as ``YYYY-MM-DD``, 1900 or later
BirthDate = Annotated[IsoDate, AfterValidator(_plausible_birth)]
#: a code given as a JSON integer: ``Literal[1, 2]`` alone takes ``true`` and ``2.0`` (even in strict mode)
Code = ExactInt
#: a Vietnamese mobile number, normalised to ``0xxxxxxxxx``
VnMobile = Annotated[str, Field(max_length=30), AfterValidator(normalize_mobile)]
#: the national 1-10 dossier status (docs/domain.md section 1.1)
NationalStatus = Annotated[StrictInt, Field(ge=1, le=10)]
#: free text a person typed, possibly over several lines (a reason, a note)
Text = Annotated[str, multiline(min_length=1, max_length=2000)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Url = Annotated[str, Field(max_length=2000, pattern=r"^https?://\S+$")]
ProvinceCode = Annotated[str, Field(pattern=r"^[0-9]{2}$", examples=["66"])]
DistrictCode = Annotated[str, Field(pattern=r"^[0-9]{3}$", examples=["643"])]
CommuneCode = Annotated[str, Field(pattern=r"^[0-9]{5}$", examples=["24121"])]
PaymentRef = Annotated[str, Field(pattern=_REF, examples=["PG2611260001"])]


class IgateModel(BaseModel):
    """Base of every payload model: unknown fields refused, instances frozen, every string bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=MAX_TEXT)


class Address(IgateModel):
    """A postal address by GSO admin codes plus the free-text street part (the only personal part).

    ``district`` is optional: districts were abolished on 1/7/2025 and later addresses have none.
    """

    province: ProvinceCode
    district: DistrictCode | None = None
    commune: CommuneCode
    detail: str = sensitive(min_length=1, max_length=500, description="House number, street, hamlet.")


class Applicant(IgateModel):
    """The dossier's owner (ChuHoSo): who the SMS goes to and whose id the national portal records."""

    type: Annotated[Literal[1, 2, 3, 4], Code] = Field(
        description="1 citizen, 2 business, 3 state agency, 4 organisation/other (LoaiDoiTuong)"
    )
    name: Name = sensitive()
    id_type: Annotated[Literal[1, 2], Code] = Field(description="1 CCCD (12 digits), 2 CMND (9 digits)")
    id_no: str = sensitive(max_length=20)
    phone: VnMobile | None = sensitive(default=None)
    email: Email | None = sensitive(default=None)
    birth_date: BirthDate | None = sensitive(default=None)
    address: Address = sensitive()

    @field_validator("id_no", mode="before")
    @classmethod
    def _fold_id_no(cls, value: Any) -> Any:
        # full-width digits typed on a phone keyboard are the same number
        return unicodedata.normalize("NFKC", value).strip() if isinstance(value, str) else value

    @field_validator("id_no")
    @classmethod
    def _check_id_no(cls, value: str, info: ValidationInfo) -> str:
        id_type = info.data.get("id_type")
        if id_type is None:  # id_type failed on its own; its error says so
            return value
        return check_id_no(id_type, value)


class Dates(IgateModel):
    """A dossier's dates (NgayNopHoSo, NgayTiepNhan, NgayHenTra, NgayKetThucXuLy, NgayTra).

    Only ``submitted`` exists from the start; an online dossier is received, and given an appointment, later.
    Their order is not checked: a desk clerk's clock or a back-dated entry must not dead-letter an event.
    """

    submitted: PastTimestamp
    received: PastTimestamp | None = None
    appointment: Timestamp | None = None
    finished: PastTimestamp | None = None
    returned: PastTimestamp | None = None


class ReceivedDates(Dates):
    """Dates of a dossier the agency has received: it has a receipt date and an appointment."""

    received: PastTimestamp
    appointment: Timestamp


class ReturnedDates(ReceivedDates):
    """Dates of a dossier whose result was handed back."""

    returned: PastTimestamp


class Document(IgateModel):
    """A document of the dossier (ThanhPhanHoSo) or of its result; ``url`` is absent for paper only."""

    code: str = Field(min_length=1, max_length=100, pattern=_CODE)
    name: str = Field(min_length=1, max_length=500)
    url: Url | None = None


class MissingDocument(IgateModel):
    """A document the agency asks the applicant to add (supplement request)."""

    code: str | None = Field(default=None, max_length=100, pattern=_CODE)
    name: str = Field(min_length=1, max_length=500)


class Fee(IgateModel):
    """A fee (phí) or charge (lệ phí) of the procedure, in whole VND: never a float, never zero."""

    kind: Literal["phi", "lephi"]
    code: str = Field(min_length=1, max_length=50, pattern=_CODE)
    name: str = Field(min_length=1, max_length=300)
    amount_vnd: StrictInt = Field(gt=0, le=MAX_AMOUNT_VND)
    collect: Literal["truoc", "sau", "mien"] = Field(description="before, after, exempt (HinhThucThu)")


class Receiver(IgateModel):
    """Who receives the result by post (DangKyNhanHoSoQuaBCCIData)."""

    name: Name = sensitive()
    phone: VnMobile = sensitive()
    email: Email | None = sensitive(default=None)
    address: str = sensitive(min_length=1, max_length=500)
    province: ProvinceCode
    district: DistrictCode | None = None
    commune: CommuneCode


class Bcci(IgateModel):
    """Return of the result by public postal service (BCCI); ``item_code`` once VNPost issued one."""

    receiver: Receiver
    item_code: str | None = Field(default=None, pattern=S10_PATTERN, examples=["EB123456785VN"])


class Land(IgateModel):
    """The land parcel a land procedure is about: map sheet, parcel number, area, address."""

    so_to: StrictInt = Field(ge=1, le=100_000, description="Map sheet number (số tờ bản đồ).")
    so_thua: StrictInt = Field(ge=1, le=1_000_000, description="Parcel number on the sheet (số thửa).")
    dien_tich: StrictFloat = Field(gt=0, lt=1e9, allow_inf_nan=False, description="Area in m².")
    dia_chi: str = sensitive(min_length=1, max_length=500)


class Step(IgateModel):
    """One processing step (a CapNhatTienDoHoSoMC record): who passed the dossier to whom, by when."""

    name: str = Field(min_length=1, max_length=300)
    from_user: str = Field(min_length=1, max_length=100)
    to_user: str = Field(min_length=1, max_length=100)
    note: str | None = multiline(default=None, max_length=2000)
    deadline: Timestamp | None = None


class DossierEvent(IgateModel):
    """The part every dossier event carries, so each route can reach its target without calling iGate."""

    applicant: Applicant
    dates: Dates
    documents: tuple[Document, ...] = Field(default=(), max_length=200)
    fees: tuple[Fee, ...] = Field(default=(), max_length=50)
    bcci: Bcci | None = None
    land: Land | None = None
    procedure_name: str | None = Field(default=None, max_length=1000)
    summary: str | None = sensitive(
        default=None, max_length=1000, description="TrichYeuHoSo", json_schema_extra={MULTILINE_KEY: True}
    )


# ---- one model per event type --------------------------------------------------------------------------


class OtpRequested(IgateModel):
    """``dossier.otp_requested``: send a one-time code to confirm an online submission.

    iGate makes the code (it checks what the citizen types back) and the bus delivers it: ``otp_code`` is a
    secret, masked in every log and dead-letter view, ``--reveal`` included. The code is valid for ``ttl_s``
    from ``occurred_at`` ([A] docs/domain.md section 7); the SMS route never sends it after that.
    """

    phone: VnMobile = sensitive()
    otp_code: str = secret(pattern=r"^[0-9]{4,8}$", description="The one-time code, 4-8 digits.")
    ttl_s: StrictInt = Field(ge=120, le=600, description="Code lifetime in seconds, from occurred_at.")
    purpose: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", examples=["nop_ho_so"])


class DossierSubmitted(DossierEvent):
    """``dossier.submitted`` (status 1): an online dossier was submitted, not yet accepted."""

    otp_verified_at: PastTimestamp | None = None
    vneid_verified: StrictBool = False


class DossierReceived(DossierEvent):
    """``dossier.received`` (status 2): the agency accepted the dossier and set an appointment."""

    dates: ReceivedDates
    receipt_no: str = Field(min_length=1, max_length=60, description="Số biên nhận.")
    receiver_staff: str = Field(min_length=1, max_length=100)


class DossierRefused(DossierEvent):
    """``dossier.refused`` (status 3): refused at intake."""

    reason: Text


class DossierStepChanged(DossierEvent):
    """``dossier.step_changed`` (status 4): the dossier moved to the next processing step."""

    dates: ReceivedDates
    step: Step


class SupplementRequested(DossierEvent):
    """``dossier.supplement_requested`` (status 5): the applicant must add documents."""

    dates: ReceivedDates
    reason: Text
    missing_docs: tuple[MissingDocument, ...] = Field(default=(), max_length=100)
    deadline_days: StrictInt = Field(ge=1, le=365, description="ThoiHanBoSung, in days.")


class SupplementReceived(DossierEvent):
    """``dossier.supplement_received``: the documents came; processing resumes with a new appointment."""

    dates: ReceivedDates
    new_appointment: Timestamp


class PaymentRequested(DossierEvent):
    """``dossier.payment_requested`` (status 6): the applicant must pay the listed fees."""

    dates: ReceivedDates
    fees: tuple[Fee, ...] = Field(min_length=1, max_length=50)
    payment_ref: PaymentRef


class PaymentSettled(DossierEvent):
    """``payment.settled``: the fees are paid; one e-receipt per fee kind, fkey ``{kind}-{payment_ref}``.

    Fees collected before acceptance ("thu trước") are settled on a dossier not yet received, so ``dates``
    is the lenient model.
    """

    fees: tuple[Fee, ...] = Field(min_length=1, max_length=50)
    payment_ref: PaymentRef
    method: Literal["TM", "CK", "TTO"] = Field(description="cash, bank transfer, online")
    paid_at: PastTimestamp
    bank_txn: str | None = Field(default=None, max_length=100)


class ReceiptCancelRequested(IgateModel):
    """``receipt.cancel_requested``: cancel an issued e-receipt (UnConfirmPaymentFkey, then cancelInv)."""

    fkey: str = Field(pattern=r"^(phi|lephi)-[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["phi-PG2611260001"])
    reason: str = multiline(min_length=1, max_length=500)


class DossierWithdrawn(DossierEvent):
    """``dossier.withdrawn`` (status 7): the applicant withdrew the dossier (possibly before acceptance)."""

    reason: Text


class DossierStopped(DossierEvent):
    """``dossier.stopped`` (status 8): the agency stopped processing."""

    dates: ReceivedDates
    reason: Text


class OverdueApology(DossierEvent):
    """``dossier.overdue_apology``: the apology slip and new appointment Decree 61 requires when overdue."""

    dates: ReceivedDates
    old_appointment: Timestamp
    new_appointment: Timestamp
    reason: str | None = multiline(default=None, max_length=2000)

    @model_validator(mode="after")
    def _later(self) -> OverdueApology:
        if self.new_appointment <= self.old_appointment:
            raise ValueError("new_appointment must be after old_appointment")
        return self


class ResultReady(DossierEvent):
    """``dossier.result_ready`` (status 9): the result is ready to hand back (or to post, with BCCI)."""

    dates: ReceivedDates
    result_docs: tuple[Document, ...] = Field(default=(), max_length=50)


class DossierReturned(DossierEvent):
    """``dossier.returned`` (status 10): the result was handed back at the desk or by post."""

    dates: ReturnedDates
    return_method: Literal["desk", "post"]
    result_docs: tuple[Document, ...] = Field(default=(), max_length=50)


class BcciPickupRequested(IgateModel):
    """``bcci.pickup_requested``: a postal worker is to collect the dossier at the applicant's address."""

    applicant: Applicant
    pickup_address: Address = sensitive()
    documents: tuple[Document, ...] = Field(default=(), max_length=200)
    fees: tuple[Fee, ...] = Field(default=(), max_length=50, description="What the postal worker collects.")
    note: str | None = multiline(default=None, max_length=500)


class RatingSubmitted(IgateModel):
    """``rating.submitted``: the applicant rated the service (synced to the national portal)."""

    level: Annotated[Literal[1, 2, 3], Code] = Field(description="1 very satisfied, 2 satisfied, 3 not satisfied")
    comment: str | None = sensitive(default=None, max_length=2000, json_schema_extra={MULTILINE_KEY: True})


IGATE_EVENTS: dict[str, type[BaseModel]] = {
    "dossier.otp_requested": OtpRequested,
    "dossier.submitted": DossierSubmitted,
    "dossier.received": DossierReceived,
    "dossier.refused": DossierRefused,
    "dossier.step_changed": DossierStepChanged,
    "dossier.supplement_requested": SupplementRequested,
    "dossier.supplement_received": SupplementReceived,
    "dossier.payment_requested": PaymentRequested,
    "payment.settled": PaymentSettled,
    "receipt.cancel_requested": ReceiptCancelRequested,
    "dossier.withdrawn": DossierWithdrawn,
    "dossier.stopped": DossierStopped,
    "dossier.overdue_apology": OverdueApology,
    "dossier.result_ready": ResultReady,
    "dossier.returned": DossierReturned,
    "bcci.pickup_requested": BcciPickupRequested,
    "rating.submitted": RatingSubmitted,
}

#: the national status (envelope ``status``) each status-changing event type stands for (docs/domain.md section 1.1)
EVENT_STATUS: dict[str, int] = {
    "dossier.submitted": 1,
    "dossier.received": 2,
    "dossier.refused": 3,
    "dossier.step_changed": 4,
    "dossier.supplement_requested": 5,
    "dossier.payment_requested": 6,
    "dossier.withdrawn": 7,
    "dossier.stopped": 8,
    "dossier.result_ready": 9,
    "dossier.returned": 10,
}
