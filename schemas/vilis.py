"""The land system's (VBDLIS/ILIS, modelled as "VILIS") inbound calls: the request bodies it posts back to us.

Where it sits: before the start of a message's path. The land office calls the one-stop shop back over HTTP
(``POST {base}/{Action}/{securityCode}``, a JSON body, TH ``Host/Controllers/Business/VBDLISController.cs``
and its handlers [F]); the ingress (``bus/ingress/vilis.py``) reads the body with one of these models, and
``adapters/vilis_to_bus.py`` maps it into a ``vilis.status_changed`` event. The outbound half of the land
system's contract (what the bus sends it) is the second half of this module: the requests
``adapters/igate_to_vilis.py`` builds and ``connectors/vilis.py`` sends, and the land system's replies.

What the models keep: only the fields the bus carries onward; anything else the land system sends (the
applicant's full record, say) is ignored, not refused, so a richer body from a newer version still passes.
Every text is bounded. Date-times are .NET ``DateTime`` values: ISO 8601 with up to 7 fractional digits and
no offset, which means UTC (TH adds 7 hours to each [F]); one with an offset is taken as given. They come
out of the models as aware UTC or as given; rendering them in Vietnam time is the adapter's job.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

from schemas.pii import sensitive
from schemas.results import VilisStatusChanged
from schemas.sftp import SHA256_PATTERN


def dotnet_time(value: Any) -> datetime:
    """A .NET ``DateTime`` from JSON: ISO 8601, up to 7 fractional digits; no offset means UTC [F].

    Args:
        value: the JSON value.

    Returns:
        An aware datetime.

    Raises:
        ValueError: not a string, or not ISO 8601 (pydantic turns it into a field error).
    """
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 date-time: {value[:40]!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


#: a land-system date-time (aware: UTC when the land system gave no offset)
VilisTime = Annotated[datetime, BeforeValidator(dotnet_time)]
ShortText = Annotated[str, Field(max_length=200)]


class _VilisModel(BaseModel):
    """Base of the land system's request bodies: fields we do not carry are ignored, text is bounded."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_max_length=20_000, str_strip_whitespace=True)


class VilisBody(_VilisModel):
    """What every land-system call carries: the dossier code, which the land office calls SoBienNhan."""

    SoBienNhan: str = Field(min_length=1, max_length=60)


class VilisFile(_VilisModel):
    """An attached file (VBDLISThongTinTapTinDinhKem): only the name and link travel on the bus.

    [A] ``Sha256`` (lower-case hex) is the bus's addition: a land system that puts its result documents on the
    shared SFTP server says what their bytes hash to, so the bus can prove it fetched them whole.
    """

    TenGiayTo: str | None = Field(default=None, max_length=500)
    KieuFile: str | None = Field(default=None, max_length=50)
    LinkFile: str | None = Field(default=None, max_length=2000)
    SoBanChinh: int | None = None
    SoBanSao: int | None = None
    Sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)


class VilisTaxNotice(_VilisModel):
    """One tax notice (VBDLISThongBaoThueElement)."""

    HoTenChu: str | None = Field(default=None, max_length=200)
    LoaiThue: str | None = Field(default=None, max_length=200)
    SoThongBaoThue: str | None = Field(default=None, max_length=60)
    DuongDanThongBaoThue: str | None = Field(default=None, max_length=2000)


class TiepNhanHoSoChoMotCua(VilisBody):
    """The land office received the dossier and issued its receipt (VBDLISCungCapSoBienNhanRequest)."""

    NguoiTiepNhan: ShortText | None = None
    NgayTiepNhan: VilisTime
    NgayHenTra: VilisTime | None = None


class YeuCauBoSungHoSo(VilisBody):
    """Documents are missing (VBDLISDongBoTrangThaiChoBoSungRequest)."""

    NgayChoBoSung: VilisTime
    MaCanBoXuLy: ShortText | None = None
    LaTamDung: bool = False
    GhiChu: str | None = None


class NhanBoSungHoSo(VilisBody):
    """The missing documents came; a new appointment (VBDLISDongBoTrangThaiDaBoSungRequest)."""

    NgayNhanBoSung: VilisTime
    NgayHenTraMoi: VilisTime
    GhiChu: str | None = None


class GuiKetQuaThue(VilisBody):
    """The tax office's notices are out; the dossier awaits payment (VBDLISDongBoKetQuaThueRequest)."""

    NguoiXuLy: ShortText | None = None
    NgayCoKetQuaThue: VilisTime | None = None
    GhiChu: str | None = None
    DanhSachThongBaoThue: list[VilisTaxNotice] = Field(default_factory=list, max_length=50)


class KetThucHoSo(VilisBody):
    """Processing finished (VBDLISDongBoTrangThaiKetThucRequest); TrangThaiKetThuc 0 = a result, else returned."""

    NgayKetThuc: VilisTime
    MaCanBoXuLy: ShortText | None = None
    TrangThaiKetThuc: int = 0
    GhiChu: str | None = None
    DanhSachGiayToKetQua: list[VilisFile] = Field(default_factory=list, max_length=50)


class ChuyenHoSo(VilisBody):
    """The dossier moved between officers (VBDLISDongBoTrangThaiLuanChuyenHoSoRequest)."""

    MaCanBoChuyen: ShortText | None = None
    MaCanBoNhan: ShortText | None = None
    MaTrangThai: ShortText | None = None
    LaTrangThaiChuyenLai: bool | None = None
    NoiDungXuLy: str | None = None
    NgayChuyen: VilisTime | None = None
    HanXuLy: float | None = Field(default=None, allow_inf_nan=False)


class GhiChuHoSo(VilisBody):
    """A notice with only a note: correct the dossier, wrong procedure, sent back by the tax office."""

    MaCanBoXuLy: ShortText | None = None
    GhiChu: str | None = None


# ---- outbound: what the bus sends the land system (docs/domain.md section 6, "Out") ---------------------------

#: [A] the land system's date-time form in our requests: ISO 8601 with the +07:00 offset (the land office's
#: .NET side reads an offset; TH sends local times)
OutTime = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+07:00$")]
#: the bus's idempotency key, sent as ``MaYeuCau`` [A]: the land system keeps it with what it applied
RequestKey = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _OutModel(BaseModel):
    """Base of the requests we build: unknown fields refused, frozen, every string bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=20_000)


class NguoiNopDon(_OutModel):
    """The applicant as the land office records them (ThongTinNguoiNopDon); all of it personal."""

    HoTen: str = sensitive(min_length=1, max_length=200)
    SoChungMinh: str = sensitive(min_length=1, max_length=20)
    DiaChiChiTiet: str = sensitive(min_length=1, max_length=500)
    SoDienThoai: str | None = sensitive(default=None, max_length=20)
    Email: str | None = sensitive(default=None, max_length=200)


class QuyTrinh(_OutModel):
    """The procedure (ThongTinQuyTrinh): the national procedure code and its name."""

    MaQuyTrinh: str = Field(min_length=1, max_length=60)
    TenQuyTrinh: str = Field(min_length=1, max_length=1000)


class ThuaDat(_OutModel):
    """A land parcel (ThongTinThuaDat): map sheet, parcel number, area, address."""

    SoHieuBanDo: StrictInt = Field(ge=1)
    SoThuTuThua: StrictInt = Field(ge=1)
    DienTich: float = Field(gt=0, allow_inf_nan=False)
    DiaChiChiTiet: str = sensitive(min_length=1, max_length=500)


class TepDinhKem(_OutModel):
    """A document's file: [A] a path on the shared SFTP server and its SHA-256, instead of TH's base64 ``data``.

    ``NguonSpool`` is where the bus reads the bytes (the spool, ``adapters/igate_to_vilis.py``); it never goes
    on the wire. ``DuongDan``, ``Sha256`` and ``KichThuoc`` are filled by the connector once the file is on
    the server.
    """

    TenTep: str = Field(min_length=1, max_length=200)
    NguonSpool: str = Field(min_length=1, max_length=1000, exclude=True)
    DuongDan: str | None = Field(default=None, max_length=1000)
    Sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    KichThuoc: StrictInt | None = Field(default=None, ge=0)


class GiayTo(_OutModel):
    """A document of the dossier (DanhSachGiayToDinhKem); ``TapTin`` is absent for a paper-only document."""

    MaGiayTo: str = Field(min_length=1, max_length=100)
    TenGiayTo: str = Field(min_length=1, max_length=500)
    SoBanChinh: StrictInt = Field(default=1, ge=0)
    SoBanSao: StrictInt = Field(default=0, ge=0)
    TapTin: TepDinhKem | None = None


class TiepNhanRequest(_OutModel):
    """``tiepnhan``: hand a received land dossier to the land office (docs/domain.md section 6)."""

    LaQuyTrinhCapTinh: StrictBool = False
    TinhId: StrictInt
    HuyenId: StrictInt | None = None
    XaId: StrictInt
    SoBienNhan: str = Field(min_length=1, max_length=60)
    MaHoSoMotCua: str = Field(min_length=1, max_length=60)
    NguoiTiepNhan: str = Field(min_length=1, max_length=100)
    NgayTiepNhan: OutTime
    NgayHenTra: OutTime
    DiaChiTaiSan: str = sensitive(min_length=1, max_length=500)
    ThongTinNguoiNopDon: NguoiNopDon
    ThongTinQuyTrinh: QuyTrinh
    ThongTinThuaDat: list[ThuaDat] = Field(min_length=1, max_length=50)
    DanhSachGiayToDinhKem: list[GiayTo] = Field(default_factory=list, max_length=200)


class BoSungRequest(_OutModel):
    """``capnhattrangthaibosunghoso``: the applicant brought the missing documents; the new appointment."""

    SoBienNhan: str = Field(min_length=1, max_length=60)
    NgayHenTraMoi: OutTime
    GhiChu: str | None = Field(default=None, max_length=2000)
    DanhSachGiayToBoSung: list[GiayTo] = Field(default_factory=list, max_length=200)


class TraKetQuaRequest(_OutModel):
    """``capnhattrangthaitraketquahoso``: the result was handed back to the applicant."""

    SoBienNhan: str = Field(min_length=1, max_length=60)
    NgayTra: OutTime


class SaiKetQuaRequest(_OutModel):
    """``phanhoihososaiketqua``: the one-stop shop reports a wrong result back to the land office."""

    SoBienNhan: str = Field(min_length=1, max_length=60)
    GhiChu: str = Field(min_length=1, max_length=2000)


class VilisStatus(BaseModel):
    """The ``status`` block of every land-system answer ([F] ``{success, code, type, time, message}``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    success: StrictBool
    code: str | int | None = None
    type: str | None = Field(default=None, max_length=100)
    time: str | None = Field(default=None, max_length=60)
    message: str | None = Field(default=None, max_length=2000)


class VilisAnswer(BaseModel):
    """A land-system answer: ``{data: int, status}`` [F]; ``data`` is the land office's record id."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    data: int | None = None
    status: VilisStatus


class SentFile(BaseModel):
    """A document the bus put on the SFTP server for the land office: where, how big, its SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(min_length=1, max_length=100)
    path: str = Field(min_length=1, max_length=1000)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)


class VilisSent(BaseModel):
    """What the bus keeps of a call the land system accepted (the route's reply): the land office's answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    so_bien_nhan: str = Field(min_length=1, max_length=60)
    action: str = Field(min_length=1, max_length=60)
    record_id: int | None = None
    message: str = Field(default="", max_length=2000)
    files: list[SentFile] = Field(default_factory=list, max_length=200)


class CheckChangeRequest(BaseModel):
    """A change the land office reported, to check before iGate hears of it (``vilis.check_change``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    change: VilisStatusChanged


class PollStaleRequest(BaseModel):
    """Ask the land office about the dossiers it has not reported on for a while (``vilis.poll_stale``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: StrictInt = Field(default=200, ge=1, le=5000, description="Most dossiers asked about in one poll.")


class LandChange(_VilisModel):
    """One change in the land office's feed (``danhsachthaydoi``) [A]: its number, the call it stands for, its body."""

    Ma: StrictInt = Field(ge=1)
    ThaoTac: str = Field(min_length=1, max_length=60)
    NoiDung: dict[str, Any]


class LandChanges(_VilisModel):
    """The feed's answer: ``{data: [change], status}``."""

    data: list[LandChange] = Field(default_factory=list, max_length=500)
