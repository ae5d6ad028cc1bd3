"""iGate's land-sector dossier events → the land system's requests (``tiepnhan`` and the updates after it).

Where it sits: the adapter step of the ``vilis-*`` routes (event → route → **adapter** → ``connectors/vilis.py``
→ result/DLQ). Only land-sector procedures reach here: each route's ``when`` lists the land procedure codes
(``config/routes.yaml``), and an event without the land parcel the land office needs is a mapping error
naming ``payload.land``, not a request with holes.

**Where a document's bytes come from** [A]. iGate gives each document as a URL on its file service, which is
not public and needs a user's session. The bus does not fetch it: the province's iGate export writes each
file of a dossier into the land connector's spool before it publishes the event, as
``<dossier code>/<the last segment of the document's URL>`` (the file id iGate uses), renamed in when
complete, the same contract as ``file.ready`` (``docs/sftp.md``). So the event carries only the URL, the
adapter turns it into the spool path (:func:`spool_path`), and the connector uploads those bytes over SFTP,
hashes them and lists the path and SHA-256 in the request. A document without a URL is on paper only: it
is listed without a file.

Pure: no I/O, no clock; times are the event's own, rendered in Vietnam time as the land system reads them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ValidationError

from adapters.registry import adapter
from schemas.envelope import Event, format_validation_error
from schemas.errors import MappingError
from schemas.igate import DossierReceived, DossierReturned, SupplementReceived
from schemas.vilis import (
    BoSungRequest,
    GiayTo,
    NguoiNopDon,
    QuyTrinh,
    TepDinhKem,
    ThuaDat,
    TiepNhanRequest,
    TraKetQuaRequest,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from schemas.igate import Document

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

#: Vietnam has kept UTC+7 since 1975
VIETNAM_TIME: Final = timezone(timedelta(hours=7), "ICT")


def vn_time(at: datetime) -> str:
    """A time as the land system reads it: ``YYYY-MM-DDTHH:MM:SS+07:00``."""
    return at.astimezone(VIETNAM_TIME).strftime("%Y-%m-%dT%H:%M:%S+07:00")


def spool_path(dossier_code: str, url: str, field: str) -> tuple[str, str]:
    """Where the export put a document's file in the spool, and its name: the URL's last path segment.

    Raises:
        MappingError: the URL has no path segment to name the file by (naming ``field``).
    """
    segment = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
    if not segment or segment in {".", ".."}:
        raise MappingError(f"the document URL names no file: {url[:120]!r}", field=field)
    return f"{dossier_code}/{segment}", segment


def documents(dossier_code: str, docs: Sequence[Document], field: str = "payload.documents") -> list[GiayTo]:
    """The dossier's documents as the land system lists them; each with a URL gets its file from the spool."""
    out = []
    for i, doc in enumerate(docs):
        file = None
        if doc.url is not None:
            source, name = spool_path(dossier_code, str(doc.url), f"{field}[{i}].url")
            file = TepDinhKem(TenTep=f"{doc.code}-{name}", NguonSpool=source)
        out.append(GiayTo(MaGiayTo=doc.code, TenGiayTo=doc.name, TapTin=file))
    return out


def _dossier(event: Event, kind: type[P]) -> tuple[str, P]:
    """The dossier code (SoBienNhan) and the payload, of the type the adapter maps."""
    code = event.envelope.dossier_code
    if not code:
        raise MappingError("a land dossier event needs the dossier code (SoBienNhan)", field="dossier_code")
    if not isinstance(event.payload, kind):
        raise MappingError(f"expected {kind.__name__}, got {type(event.payload).__name__}", field="event_type")
    return code, event.payload


def _build(model: type[R], fields: dict[str, Any]) -> R:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise MappingError(format_validation_error(exc), field="payload") from None


@adapter(accepts=("dossier.received",), produces=TiepNhanRequest)
def dossier_received(event: Event, *, now: datetime) -> TiepNhanRequest:
    """A land dossier received at the desk, online or at a post office → ``tiepnhan``.

    Raises:
        MappingError: no dossier code, no land parcel (``payload.land``), a document URL naming no file, or
            a field the land system would refuse (naming it).
    """
    del now
    code, payload = _dossier(event, DossierReceived)
    land = payload.land
    if land is None:
        raise MappingError("a land procedure's dossier must carry its parcel for the land office", field="payload.land")
    applicant = payload.applicant
    address = applicant.address
    fields: dict[str, Any] = {
        "TinhId": int(address.province),
        "HuyenId": int(address.district) if address.district else None,
        "XaId": int(address.commune),
        "SoBienNhan": code,
        "MaHoSoMotCua": payload.receipt_no,
        "NguoiTiepNhan": payload.receiver_staff,
        "NgayTiepNhan": vn_time(payload.dates.received),
        "NgayHenTra": vn_time(payload.dates.appointment),
        "DiaChiTaiSan": land.dia_chi,
        "ThongTinNguoiNopDon": NguoiNopDon(
            HoTen=applicant.name,
            SoChungMinh=applicant.id_no,
            DiaChiChiTiet=address.detail,
            SoDienThoai=applicant.phone,
            Email=applicant.email,
        ),
        "ThongTinQuyTrinh": QuyTrinh(
            MaQuyTrinh=event.envelope.procedure_code or "",
            TenQuyTrinh=payload.procedure_name or event.envelope.procedure_code or "",
        ),
        "ThongTinThuaDat": [
            ThuaDat(
                SoHieuBanDo=land.so_to, SoThuTuThua=land.so_thua, DienTich=land.dien_tich, DiaChiChiTiet=land.dia_chi
            )
        ],
        "DanhSachGiayToDinhKem": documents(code, payload.documents),
    }
    return _build(TiepNhanRequest, fields)


@adapter(accepts=("dossier.supplement_received",), produces=BoSungRequest)
def supplement_received(event: Event, *, now: datetime) -> BoSungRequest:
    """The applicant brought the missing documents → ``capnhattrangthaibosunghoso`` with the new appointment."""
    del now
    code, supplement = _dossier(event, SupplementReceived)
    new_docs = documents(code, supplement.documents)
    return _build(
        BoSungRequest,
        {"SoBienNhan": code, "NgayHenTraMoi": vn_time(supplement.new_appointment), "DanhSachGiayToBoSung": new_docs},
    )


@adapter(accepts=("dossier.returned",), produces=TraKetQuaRequest)
def dossier_returned(event: Event, *, now: datetime) -> TraKetQuaRequest:
    """The result was handed back to the applicant → ``capnhattrangthaitraketquahoso``."""
    del now
    code, returned = _dossier(event, DossierReturned)
    return _build(TraKetQuaRequest, {"SoBienNhan": code, "NgayTra": vn_time(returned.dates.returned)})
