"""Requests and replies of the National Public Service Portal (Cổng DVCQG) as the bus sends and reads them.

Where it sits: the target side of the portal routes (event → route → ``adapters/igate_to_nps.py`` builds one
of the request models here → ``connectors/nps.py`` sends it as SOAP → the portal's reply comes back as
:class:`NpsReply` → the route emits a :class:`SyncResult` as the ``dvcqg.sync_result`` payload).

The records are docs/domain.md section 2, field for field and spelt as the portal spells them ([F], from TH and
OC): every value is a string on the wire, dates are ``yyyyMMddHHmmss`` in Asia/Ho_Chi_Minh, codes are the
digits of the code lists of docs/domain.md section 1.2. They are transport-neutral: the same models dump to the JSON the
portal's public adapter takes and feed zeep for the SOAP proxy of ``schemas/wsdl/nps.wsdl`` ([A]: no public
SOAP contract exists; the WSDL wraps these records in SOAP 1.1 document/literal, as an LGSP proxy would).

Conveniences for the adapters, none of which changes the wire: a code field also takes an ``int``
(``TrangThaiHoSo=4`` becomes ``"4"``), a flag also takes a ``bool``, a fee amount an ``int``, and a date
field an aware ``datetime`` (converted to Vietnam time and formatted). Naive datetimes are refused.

Two [A] additions to the [F] records, both needed by the reliability rules:

- ``HoSoMC.NgayCapNhat``: the time of the event that produced this state of the record (the envelope's
  ``occurred_at``). The portal keeps the newest state by this time, so an older status delivered after a
  newer one never overwrites it (docs/reliability.md R12). Progress steps carry ``ThoiDiemXuLy`` for the same
  purpose, ratings ``ThoiGian``.
- The SOAP header's ``maYeuCau`` (our idempotency key, see :class:`PhienLamViec`) and
  ``TraCuuHoSoRequest.MaYeuCau``: the proxy logs the request ids it handled, so a redelivery whose first
  attempt's outcome was lost can ask whether it was applied (docs/design.md, reconcile by lookup).

Personal fields are marked with :func:`schemas.pii.sensitive` so the logs mask them.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from schemas.pii import sensitive
from schemas.results import PORTAL_OK_CODES, DvcqgSyncResult

#: the portal's date form ([F] OC ``DVCQGIntegrationActionTerm``, TH)
PORTAL_TIME_FORMAT: Final = "%Y%m%d%H%M%S"
PORTAL_TIME_PATTERN: Final = r"^[0-9]{14}$"
#: Vietnam has kept UTC+7 since 1975; a fixed offset needs no tz database
ICT: Final = timezone(timedelta(hours=7), "ICT")
#: error codes that mean success (docs/domain.md section 2, [F]): "0" in TH's deployments, "00" in OC's, and "3" and
#: "-3", which TH also accepts as success; one list for the bus, kept in :mod:`schemas.results`
OK_CODES: Final = PORTAL_OK_CODES
#: characters of the portal's ``message`` kept from a reply: a chatty portal is not a broken one
MAX_MESSAGE_CHARS: Final = 2000
#: [F] the words in ``message`` with which the portal refuses to create a record it already has (TH resends
#: the body as an update when it sees them)
ALREADY_EXISTS: Final = "đã tồn tại"
#: [A] the portal's "no such dossier" answer to TraCuuHoSo (its real code is not public)
NOT_FOUND_CODE: Final = "4"
#: the services of the portal the bus calls, as they appear in ``dvcqg.sync_result.service``
SERVICES: Final = ("DongBoHoSoMC", "CapNhatTienDoHoSoMC", "DongBoDanhGia", "TraCuuHoSo")
#: a dossier code, e.g. ``000.00.16.H16-250312-0001`` (docs/domain.md section 0)
MA_HO_SO_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,59}$"
#: a procedure code, long, short or new form (docs/domain.md section 0)
MA_TTHC_PATTERN: Final = r"^[12]\.[0-9]{6}(\.000\.00\.00)?(\.H[0-9]{2})?$"
#: our idempotency key as the proxy logs it
MA_YEU_CAU_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}$"
#: the longest string any record field carries (TrichYeuHoSo is "~1000" characters)
MAX_TEXT: Final = 4000
#: records per call the models accept (the connector sends progress in chunks of 10, as TH does)
MAX_RECORDS: Final = 200
MAX_LIST: Final = 200

_DIGITS = re.compile(r"^[0-9]+$")


def portal_time(at: datetime) -> str:
    """Format an aware datetime as the portal's ``yyyyMMddHHmmss`` in Vietnam time.

    Raises:
        ValueError: ``at`` is naive (its zone would be a guess).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("a portal time needs an aware datetime (with an offset)")
    return at.astimezone(ICT).strftime(PORTAL_TIME_FORMAT)


def parse_portal_time(value: str) -> datetime:
    """The aware datetime (Vietnam time) of a ``yyyyMMddHHmmss`` string; ``ValueError`` when it is not one."""
    if not re.fullmatch(PORTAL_TIME_PATTERN, value):
        raise ValueError("expected yyyyMMddHHmmss (14 digits)")
    try:
        parsed = datetime.strptime(value, PORTAL_TIME_FORMAT).replace(tzinfo=ICT)
    except ValueError:
        raise ValueError("yyyyMMddHHmmss names no real date and time") from None
    return parsed


def _to_portal_time(value: Any) -> Any:
    if isinstance(value, datetime):
        return portal_time(value)
    if isinstance(value, str):
        parse_portal_time(value)
    return value


def _to_code(value: Any) -> Any:
    # Literal["1"] refuses the int 1, which is what an adapter holds; a bool is a broken producer, not a code.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a valid code")
    if isinstance(value, int):
        return str(value)
    return value


def _to_flag(value: Any) -> Any:
    if isinstance(value, bool):
        return "1" if value else "0"
    return _to_code(value)


def _to_amount(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an amount")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("an amount cannot be negative")
        return str(value)
    return value


#: ``yyyyMMddHHmmss`` (Vietnam time); also takes an aware datetime
PortalTime = Annotated[str, BeforeValidator(_to_portal_time), Field(pattern=PORTAL_TIME_PATTERN)]
#: the national 1-10 status (docs/domain.md section 1.1) as the portal writes it
StatusCode = Annotated[
    Literal["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"],
    BeforeValidator(_to_code),
]
#: "0"/"1"; also takes a bool
Flag = Annotated[Literal["0", "1"], BeforeValidator(_to_flag)]
#: a fee in whole VND, as digits
Amount = Annotated[str, BeforeValidator(_to_amount), Field(pattern=r"^[0-9]{1,15}$")]
DossierCode = Annotated[str, Field(pattern=MA_HO_SO_PATTERN, examples=["000.00.16.H16-250312-0001"])]
Code = Annotated[str, BeforeValidator(_to_code), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")]
Text = Annotated[str, Field(min_length=1, max_length=2000)]
Url = Annotated[str, Field(max_length=2000, pattern=r"^https?://\S+$")]


class NpsModel(BaseModel):
    """Base of every portal model: unknown fields refused, instances frozen, every string bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=MAX_TEXT)

    def wire(self) -> dict[str, Any]:
        """The model as the portal takes it: a dict of strings and lists, unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


# -- the DongBoHoSoMC record and its lists -------------------------------------------------------------------


class DinhDanh(NpsModel):
    """One identity document of the dossier's owner ([F] TH: LoaiDinhDanh "1" CCCD, "2" CMND)."""

    LoaiDinhDanh: Annotated[Literal["1", "2"], BeforeValidator(_to_code)]
    SoDinhDanh: str = sensitive(pattern=r"^[0-9]{9}$|^[0-9]{12}$", description="12 digits (CCCD) or 9 (CMND).")

    @model_validator(mode="after")
    def _length_matches_type(self) -> DinhDanh:
        expected = 12 if self.LoaiDinhDanh == "1" else 9
        if len(self.SoDinhDanh) != expected:
            raise ValueError(f"LoaiDinhDanh {self.LoaiDinhDanh} takes {expected} digits")
        return self


class TaiLieu(NpsModel):
    """A document the citizen submitted."""

    TepDinhKemId: str | None = Field(default=None, max_length=100)
    TenTepDinhKem: Text
    IsDeleted: Flag = "0"
    MaThanhPhanHoSo: str | None = Field(default=None, max_length=100)
    DuongDanTaiTepTin: Url | None = None
    DuocSoHoa: Flag | None = None
    DuocTaiSuDung: Flag | None = None
    DuocLayTuKhoDMQG: Flag | None = None
    MaKetQuaThayThe: str | None = Field(default=None, max_length=100)


class LePhi(NpsModel):
    """A fee or charge of the dossier (``DanhSachLePhi``)."""

    TenPhiLePhi: Text
    MaPhiLePhi: str | None = Field(default=None, max_length=100)
    HinhThucThu: str | None = Field(default=None, max_length=100)
    Gia: Amount
    LoaiPhiLePhi: str | None = Field(default=None, max_length=10, description="[A] 1 phí, 2 lệ phí.")


class TepDinhKemKhac(NpsModel):
    """Another paper handed in (``DanhSachTepDinhKemKhac``)."""

    TenGiayTo: Text
    SoLuong: Annotated[str, BeforeValidator(_to_amount), Field(pattern=r"^[0-9]{1,4}$")] = "1"
    LoaiGiayTo: str | None = Field(default=None, max_length=100)


class HoSoBoSung(NpsModel):
    """One supplement round (``DanhSachHoSoBoSung``); [A] its two lists reuse the paper and fee records."""

    HoSoBoSungId: str = Field(min_length=1, max_length=100)
    NguoiYeuCauBoSung: str | None = sensitive(default=None, max_length=200)
    NoiDungBoSung: Text
    NgayBoSung: PortalTime
    NguoiTiepNhanBoSung: str | None = sensitive(default=None, max_length=200)
    ThongTinTiepNhan: str | None = Field(default=None, max_length=2000)
    NgayTiepNhanBoSung: PortalTime | None = None
    TrangThaiBoSung: Code | None = None
    DanhSachGiayToBoSung: tuple[TepDinhKemKhac, ...] = Field(default=(), max_length=MAX_LIST)
    DanhSachLePhiBoSung: tuple[LePhi, ...] = Field(default=(), max_length=MAX_LIST)
    NgayHenTraTruoc: PortalTime | None = None
    NgayHenTraMoi: PortalTime | None = None


class GiayToKetQua(NpsModel):
    """A result paper (``DanhSachGiayToKetQua``), sent when the dossier is finished or returned."""

    TenGiayTo: Text
    MaThanhPhanHoSo: str | None = Field(default=None, max_length=100)
    GiayToId: str | None = Field(default=None, max_length=100)
    DuongDanTepTinKetQua: Url | None = None
    MaGiayToKetQua: str | None = Field(default=None, max_length=100)


class KetNoiCSDL(NpsModel):
    """A national database the dossier was checked against ([F] TH sends ``MaCSDL "7"``)."""

    MaCSDL: Code


class HoSoMC(NpsModel):
    """One dossier record of ``DongBoHoSoMC`` ([F] TH ``ISyncLocalDataToDVCQGService``, OC); all strings.

    ``NgayCapNhat`` is [A] (see the module docstring): the time of the event this state comes from.
    """

    MaHoSo: DossierCode
    MaTTHC: str = Field(pattern=MA_TTHC_PATTERN, examples=["1.003560.000.00.00.H16", "2.000477"])
    TenTTHC: str = Field(min_length=1, max_length=1000)
    MaLinhVuc: str | None = Field(default=None, max_length=100)
    TenLinhVuc: str | None = Field(default=None, max_length=500)
    KenhThucHien: Annotated[Literal["1", "2", "3"], BeforeValidator(_to_code)] = Field(
        description="1 in person, 2 online, 3 postal (BCCI)."
    )
    NoiNopHoSo: Annotated[str, BeforeValidator(_to_code), Field(pattern=r"^[0-9]{1,2}$")] = "2"
    DonViXuLy: str | None = Field(default=None, max_length=100, description="Agency id (QĐ 20), e.g. 000.00.16.H16.")
    GhiChu: str | None = Field(default=None, max_length=2000)
    ChuHoSo: str = sensitive(min_length=1, max_length=200)
    LoaiDoiTuong: Annotated[Literal["1", "2", "3", "4"], BeforeValidator(_to_code)] = Field(
        description="1 citizen, 2 business, 3 state agency, 4 organisation/other."
    )
    MaDoiTuong: str | None = sensitive(default=None, max_length=100, description="Citizen TechID (online only).")
    SoGiayToChuHoSo: str | None = sensitive(default=None, max_length=30)
    DinhDanhCHS: tuple[DinhDanh, ...] = Field(default=(), max_length=10)
    ThongTinKhac: str | None = sensitive(default=None, max_length=2000)
    Email: str | None = sensitive(default=None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    Fax: str | None = sensitive(default=None, max_length=30)
    SoDienThoai: str | None = sensitive(default=None, max_length=30)
    TrichYeuHoSo: str | None = sensitive(default=None, max_length=1000)
    TrangThaiHoSo: StatusCode
    HinhThuc: Flag | None = Field(default=None, description="Return: 0 at the desk, 1 by post.")
    ThongTinTra: str | None = sensitive(default=None, max_length=2000, description="Where results go.")
    NgayNopHoSo: PortalTime
    NgayTiepNhan: PortalTime | None = None
    NgayHenTra: PortalTime | None = None
    NgayKetThucXuLy: PortalTime | None = None
    NgayTra: PortalTime | None = None
    NgayTuChoi: PortalTime | None = None
    HoSoCoThanhPhanSoHoa: Flag | None = None
    TaiKhoanDuocXacThucVoiVNeID: Flag | None = None
    DuocThanhToanTrucTuyen: Annotated[Literal["1", "3"], BeforeValidator(_to_code)] | None = Field(
        default=None, description="1 paid online, otherwise 3."
    )
    TaiLieuNop: tuple[TaiLieu, ...] = Field(default=(), max_length=MAX_LIST)
    DanhSachLePhi: tuple[LePhi, ...] = Field(default=(), max_length=MAX_LIST)
    DanhSachTepDinhKemKhac: tuple[TepDinhKemKhac, ...] = Field(default=(), max_length=MAX_LIST)
    DanhSachHoSoBoSung: tuple[HoSoBoSung, ...] = Field(default=(), max_length=MAX_LIST)
    DanhSachGiayToKetQua: tuple[GiayToKetQua, ...] = Field(default=(), max_length=MAX_LIST)
    DSKetNoiCSDL: tuple[KetNoiCSDL, ...] = Field(default=(), max_length=20)
    NgayCapNhat: PortalTime = Field(
        description="[A] Time of the event this state comes from; the portal keeps the newest by it."
    )


class TienDoHoSo(NpsModel):
    """One processing step of ``CapNhatTienDoHoSoMC`` ([F] TH, OC); ``ThoiDiemXuLy`` orders the steps."""

    MaHoSo: DossierCode
    NguoiXuLy: str = sensitive(min_length=1, max_length=50)
    ChucDanh: str | None = Field(default=None, max_length=200)
    ThoiDiemXuLy: PortalTime
    PhongBanXuLy: str | None = Field(default=None, max_length=500)
    NoiDungXuLy: Text
    TrangThai: StatusCode
    NgayBatDau: PortalTime | None = None
    NgayKetThucTheoQuyDinh: PortalTime | None = None


# -- requests ------------------------------------------------------------------------------------------------


class DongBoHoSoMCRequest(NpsModel):
    """``DongBoHoSoMC``: create (``isUpdating=False``) or update dossier records at the portal.

    The connector sends a create as an update when the portal answers that the record already exists.
    """

    isUpdating: bool = False  # noqa: N815 - the portal's own spelling
    data: tuple[HoSoMC, ...] = Field(min_length=1, max_length=MAX_RECORDS)


class CapNhatTienDoHoSoMCRequest(NpsModel):
    """``CapNhatTienDoHoSoMC``: processing steps; the connector sends them in chunks of 10, as TH does."""

    data: tuple[TienDoHoSo, ...] = Field(min_length=1, max_length=MAX_RECORDS)


class DongBoDanhGiaRequest(NpsModel):
    """[A] ``DongBoDanhGia``: the citizen's rating of a dossier (1 very satisfied, 2 satisfied, 3 not)."""

    MaHoSo: DossierCode
    MucDo: Annotated[Literal["1", "2", "3"], BeforeValidator(_to_code)]
    NoiDung: str | None = sensitive(default=None, max_length=2000)
    ThoiGian: PortalTime


class TraCuuHoSoRequest(NpsModel):
    """``TraCuuHoSo``: a dossier's state at the portal, by code; [A] or by the request id that touched it."""

    MaHoSo: DossierCode | None = None
    MaYeuCau: str | None = Field(default=None, pattern=MA_YEU_CAU_PATTERN)

    @model_validator(mode="after")
    def _one_key(self) -> TraCuuHoSoRequest:
        if self.MaHoSo is None and self.MaYeuCau is None:
            raise ValueError("give MaHoSo or MaYeuCau")
        return self


class XacThucRequest(NpsModel):
    """[F] The portal adapter's login (``{username, password}`` → a session); sent only by the connector."""

    username: str = Field(min_length=1, max_length=200)
    password: str = sensitive(min_length=1, max_length=500)


class PhienLamViec(NpsModel):
    """[A] The SOAP header of every service call: the session, the agency code and our request id.

    [F] The JSON adapter takes ``session`` and ``madonvi`` in each body; the SOAP proxy moves them to the
    header. ``maYeuCau`` is the idempotency key the proxy logs for :class:`TraCuuHoSoRequest`.
    """

    session: str = Field(min_length=1, max_length=500)
    madonvi: str = Field(min_length=1, max_length=100, examples=["000.00.16.H16"])
    maYeuCau: str | None = Field(default=None, pattern=MA_YEU_CAU_PATTERN)  # noqa: N815 - wire spelling


# -- replies -------------------------------------------------------------------------------------------------


def _clip_message(value: Any) -> Any:
    return value[:MAX_MESSAGE_CHARS] if isinstance(value, str) else value


class NpsReply(NpsModel):
    """The portal's answer to any service: an ``error_code`` in :data:`OK_CODES` is success ([F])."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_max_length=MAX_TEXT)

    error_code: str = Field(pattern=r"^-?[0-9A-Za-z]{1,10}$")
    message: Annotated[str, BeforeValidator(_clip_message)] = Field(default="", max_length=MAX_TEXT)

    @property
    def ok(self) -> bool:
        """Whether the portal accepted the call."""
        return self.error_code in OK_CODES

    @property
    def already_exists(self) -> bool:
        """Whether the portal refused to create a record it already has ([F] "đã tồn tại" in ``message``)."""
        return not self.ok and ALREADY_EXISTS in self.message.casefold()

    def to_sync_result(self, service: str, *, message: str | None = None) -> SyncResult:
        """The ``dvcqg.sync_result`` payload for this answer to ``service``.

        Args:
            service: the portal service that answered (one of :data:`SERVICES`).
            message: the text to carry instead of the portal's (already scrubbed by the connector).
        """
        text = self.message if message is None else message
        return SyncResult(service=service, error_code=self.error_code, message=text[:1000])


class XacThucReply(NpsReply):
    """The login's answer: a session on success."""

    session: str | None = Field(default=None, max_length=500)
    expires_in: int | None = Field(default=None, ge=1, description="[A] Seconds the session stays valid.")


class YeuCauDaNhan(NpsModel):
    """[A] What the proxy's log says of one request id: which service, which dossier, what it answered."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_max_length=MAX_TEXT)

    MaYeuCau: str = Field(pattern=MA_YEU_CAU_PATTERN)
    DichVu: str = Field(min_length=1, max_length=60)
    MaHoSo: DossierCode
    error_code: str = Field(pattern=r"^-?[0-9A-Za-z]{1,10}$")
    ThoiDiemNhan: PortalTime


class HoSoTraCuu(NpsModel):
    """TraCuuHoSo's ``result``: the dossier's state at the portal ([A] fields beyond MaHoSo/TrangThaiHoSo).

    ``TrangThaiHoSo`` and ``NgayCapNhat`` are the newest status the portal holds, from records and progress
    steps alike; ``YeuCau`` answers a lookup by request id.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, str_max_length=MAX_TEXT)

    MaHoSo: DossierCode
    MaTTHC: str | None = Field(default=None, max_length=100)
    TrangThaiHoSo: StatusCode | None = None
    NgayCapNhat: PortalTime | None = None
    SoBuocTienDo: Annotated[str, Field(pattern=r"^[0-9]{1,6}$")] = "0"
    MucDoDanhGia: Annotated[Literal["1", "2", "3"], BeforeValidator(_to_code)] | None = None
    ThoiGianDanhGia: PortalTime | None = None
    YeuCau: YeuCauDaNhan | None = None


class TraCuuHoSoReply(NpsReply):
    """TraCuuHoSo's answer: ``result`` when the portal knows the dossier (or the request id)."""

    result: HoSoTraCuu | None = None

    @property
    def found(self) -> bool:
        """Whether the portal knows what was asked for."""
        return self.ok and self.result is not None


class SyncResult(DvcqgSyncResult):
    """What each portal effect operation returns: the ``dvcqg.sync_result`` payload, field for field."""


#: request model of each service the connector calls
REQUESTS: Final[dict[str, type[NpsModel]]] = {
    "DongBoHoSoMC": DongBoHoSoMCRequest,
    "CapNhatTienDoHoSoMC": CapNhatTienDoHoSoMCRequest,
    "DongBoDanhGia": DongBoDanhGiaRequest,
    "TraCuuHoSo": TraCuuHoSoRequest,
}
