"""The land system's (VBDLIS/ILIS, modelled as "VILIS") inbound calls: the request bodies it posts back to us.

Where it sits: before the start of a message's path. The land office calls the one-stop shop back over HTTP
(``POST {base}/{Action}/{securityCode}``, a JSON body, TH ``Host/Controllers/Business/VBDLISController.cs``
and its handlers [F]); the ingress (``bus/ingress/vilis.py``) reads the body with one of these models, and
``adapters/vilis_to_bus.py`` maps it into a ``vilis.status_changed`` event. The outbound half of the land
system's contract (what the bus sends it) belongs in this module too when its connector comes.

What the models keep: only the fields the bus carries onward; anything else the land system sends (the
applicant's full record, say) is ignored, not refused, so a richer body from a newer version still passes.
Every text is bounded. Date-times are .NET ``DateTime`` values: ISO 8601 with up to 7 fractional digits and
no offset, which means UTC (TH adds 7 hours to each [F]); one with an offset is taken as given. They come
out of the models as aware UTC or as given; rendering them in Vietnam time is the adapter's job.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


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
    """An attached file (VBDLISThongTinTapTinDinhKem): only the name and link travel on the bus."""

    TenGiayTo: str | None = Field(default=None, max_length=500)
    KieuFile: str | None = Field(default=None, max_length=50)
    LinkFile: str | None = Field(default=None, max_length=2000)
    SoBanChinh: int | None = None
    SoBanSao: int | None = None


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
