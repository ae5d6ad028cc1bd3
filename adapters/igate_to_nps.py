"""iGate dossier events → the national portal's records (Cổng DVCQG: DongBoHoSoMC, CapNhatTienDoHoSoMC, rating).

Where it sits: the adapter step of the ``nps-*`` routes (``igate.events`` → route → **adapter** →
``nps.dong_bo_ho_so`` / ``nps.cap_nhat_tien_do`` / ``nps.dong_bo_danh_gia`` → ``dvcqg.sync_result`` or the
DLQ). One function per event type, named after it, so a route names its adapter. Every dossier event carries the whole
common payload (applicant, dates, documents, fees), so each one maps to a *full* :class:`HoSoMC` record whose
``TrangThaiHoSo`` is the event's status; ``NgayCapNhat`` is the event's ``occurred_at``, by which the portal
keeps the newest state when events arrive out of order (``schemas/nps.py``).

The rules, each applied in one place below:

- **Status.** :data:`PORTAL_STATUS` maps the event type to the national 1-10 scale (docs/domain.md section 1.1): iGate's
  :data:`schemas.igate.EVENT_STATUS` plus ``dossier.supplement_received`` → 4 (processing resumes). The
  event type decides, not the envelope's ``status``. ``payment.settled`` changes no status: it sends the
  envelope's ``status`` when iGate gives one, else the status its dates imply (:func:`settled_status`).
- **Create, never update.** Every record goes out with ``isUpdating`` False. The connector resends a create
  the portal refuses as existing ("đã tồn tại", [F] TH) as an update, so a create is right whether or not
  the portal has the dossier; an update of a dossier it does not have is a permanent rejection. Each event
  type has its own route and queue, so nothing orders a dossier's events: a ``dossier.received`` waiting
  in a retry queue must not make the ``dossier.stopped`` behind it fail for good. The price is a second
  call for every event after the first (:data:`IS_UPDATING`).
- **Dates** are ``yyyyMMddHHmmss`` in Vietnam time (:func:`schemas.nps.portal_time`), from the event's own
  dates; ``now`` is never read. A date the event does not carry is left out (``None``), never invented,
  except the end dates the event itself is: ``NgayTuChoi`` of a refusal and ``NgayKetThucXuLy`` of a
  withdrawal, stop or finished result are the event's ``occurred_at`` when ``dates.finished`` is absent
  (of a returned dossier, ``dates.returned``).
- **Text** is NFC everywhere (the whole record passes through :func:`schemas.envelope.nfc`), and free text
  is cut to the portal's limits by :func:`clip`: length in UTF-16 code units (what .NET and SQL Server
  ``nvarchar`` count; equal to characters for Vietnamese), cut only at a grapheme-cluster boundary, ending
  in "…". A letter and its combining marks, an emoji ZWJ sequence, a flag or CR LF is never split.
- **Personal data** (name, id number, phone, e-mail, summary) is passed through: the portal records it.
  The target fields are marked sensitive in ``schemas/nps.py``; nothing here logs.

Failures raise :class:`MappingError` naming the event's field: no dossier code, procedure code, channel or
procedure name (the portal requires each), a payload of the wrong type, or a value the portal's model
refuses (its field is traced back to the event's by :data:`_SOURCE_FIELDS`).
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from adapters.registry import adapter
from schemas.envelope import Event, format_validation_error, nfc
from schemas.errors import MappingError
from schemas.igate import (
    EVENT_STATUS,
    Document,
    DossierEvent,
    DossierReceived,
    DossierRefused,
    DossierReturned,
    DossierStepChanged,
    DossierStopped,
    DossierSubmitted,
    DossierWithdrawn,
    Fee,
    PaymentRequested,
    PaymentSettled,
    RatingSubmitted,
    ResultReady,
    SupplementReceived,
    SupplementRequested,
)
from schemas.nps import (
    CapNhatTienDoHoSoMCRequest,
    DongBoDanhGiaRequest,
    DongBoHoSoMCRequest,
    portal_time,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

P = TypeVar("P", bound=BaseModel)

#: event type → national 1-10 status (docs/domain.md section 1.1); ``payment.settled`` is absent: it changes no status
PORTAL_STATUS: Final[Mapping[str, int]] = {**EVENT_STATUS, "dossier.supplement_received": 4}
#: every record is sent as a create; the connector turns "đã tồn tại" into an update (module docstring)
IS_UPDATING: Final = False
#: statuses whose event ends processing: ``NgayKetThucXuLy`` falls back to the event's time
_ENDING_STATUSES: Final = frozenset({7, 8, 9})

#: [F] TH sends these as constants (docs/domain.md section 1.2): submitted at the portal, checked against database "7"
NOI_NOP_HO_SO: Final = "2"
MA_CSDL: Final = "7"
#: [F] the name TH gives its synthetic steps and the steps themselves (docs/domain.md section 2)
ONE_STOP_STAFF: Final = "Cán bộ một cửa"
RECEPTION_STEP: Final = "Tiếp nhận hồ sơ"
END_STEP: Final = "Kết thúc xử lý hồ sơ"
#: [A] fee kind → LoaiPhiLePhi, and when it is collected → HinhThucThu ("mien", exempt, is not listed)
LOAI_PHI_LE_PHI: Final[Mapping[str, str]] = {"phi": "1", "lephi": "2"}
HINH_THUC_THU: Final[Mapping[str, str]] = {"truoc": "1", "sau": "2"}
#: [A] TrangThaiBoSung of a supplement round: requested from the citizen, then received from them
SUPPLEMENT_REQUESTED: Final = "1"
SUPPLEMENT_RECEIVED: Final = "2"
SUPPLEMENT_RECEIVED_TEXT: Final = "Công dân đã nộp bổ sung hồ sơ"

#: the portal's limits, in UTF-16 code units ([F] TrichYeuHoSo ~1000, NguoiXuLy 50; the rest from schemas/nps.py)
MAX_SUMMARY: Final = 1000
MAX_PROCEDURE_NAME: Final = 1000
MAX_STAFF: Final = 50
MAX_NOTE: Final = 2000
MAX_DOCUMENT_NAME: Final = 2000
ELLIPSIS: Final = "…"

#: a portal field (the last name in a validation error's path) → the event field it was built from
_SOURCE_FIELDS: Final[Mapping[str, str]] = {
    "MaHoSo": "dossier_code",
    "MaTTHC": "procedure_code",
    "TenTTHC": "payload.procedure_name",
    "KenhThucHien": "channel",
    "DonViXuLy": "agency_code",
    "GhiChu": "payload.reason",
    "ChuHoSo": "payload.applicant.name",
    "LoaiDoiTuong": "payload.applicant.type",
    "SoGiayToChuHoSo": "payload.applicant.id_no",
    "LoaiDinhDanh": "payload.applicant.id_type",
    "SoDinhDanh": "payload.applicant.id_no",
    "Email": "payload.applicant.email",
    "SoDienThoai": "payload.applicant.phone",
    "TrichYeuHoSo": "payload.summary",
    "TenTepDinhKem": "payload.documents",
    "MaThanhPhanHoSo": "payload.documents",
    "DuongDanTaiTepTin": "payload.documents",
    "TenGiayTo": "payload.documents",
    "TenPhiLePhi": "payload.fees",
    "MaPhiLePhi": "payload.fees",
    "Gia": "payload.fees",
    "NoiDungBoSung": "payload.reason",
    "DuongDanTepTinKetQua": "payload.result_docs",
    "MaGiayToKetQua": "payload.result_docs",
    "NguoiXuLy": "payload.step.from_user",
    "NoiDungXuLy": "payload.step.name",
    "NgayKetThucTheoQuyDinh": "payload.step.deadline",
    "MucDo": "payload.level",
    "NoiDung": "payload.comment",
}

_ZWJ: Final = "\u200d"
_COMBINING: Final = frozenset({"Mn", "Mc", "Me"})


# -- text ----------------------------------------------------------------------------------------------------


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units: characters, plus one for each outside the BMP (emoji)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _joins_previous(ch: str) -> bool:
    # Characters that never start a grapheme cluster (UAX #29 GB9, GB9a and the emoji extenders): combining
    # marks, ZWJ, variation selectors, skin-tone modifiers, tag characters.
    cp = ord(ch)
    return (
        unicodedata.category(ch) in _COMBINING
        or ch == _ZWJ
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0100 <= cp <= 0xE01EF
        or 0x1F3FB <= cp <= 0x1F3FF
        or 0xE0020 <= cp <= 0xE007F
    )


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def is_grapheme_boundary(text: str, index: int) -> bool:
    """Whether ``text`` may be cut before ``text[index]`` without splitting a grapheme cluster.

    The UAX #29 rules that occur in dossier text: no cut inside CR LF, before a combining mark or emoji
    extender, after a zero-width joiner, or inside a pair of regional indicators (a flag). Hangul jamo
    sequences and Indic conjuncts are not recognised: decomposed Hangul and Indic scripts do not occur here.
    """
    if index <= 0 or index >= len(text):
        return True
    before, at = text[index - 1], text[index]
    if (before == "\r" and at == "\n") or before == _ZWJ or _joins_previous(at):
        return False
    if _regional(before) and _regional(at):
        run = 0
        while index - 1 - run >= 0 and _regional(text[index - 1 - run]):
            run += 1
        return run % 2 == 0
    return True


def clip(text: str, limit: int) -> str:
    """``text`` in NFC, cut to at most ``limit`` UTF-16 code units at a grapheme boundary, ending in "…".

    Text within the limit is returned whole (only normalised). Longer text keeps the longest prefix that
    ends at a grapheme-cluster boundary and leaves room for the ellipsis, with trailing spaces dropped.

    Args:
        text: any text.
        limit: the portal's limit, in UTF-16 code units (at least 1).
    """
    text = unicodedata.normalize("NFC", text)
    if utf16_len(text) <= limit:
        return text
    budget = limit - utf16_len(ELLIPSIS)
    best = units = 0
    for index, ch in enumerate(text):
        if is_grapheme_boundary(text, index):
            best = index  # text[:index] fits: units <= budget here
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > budget:
            break
    return text[:best].rstrip() + ELLIPSIS


def _clip_or_none(text: str | None, limit: int) -> str | None:
    return None if text is None else clip(text, limit)


def _time(at: datetime | None) -> str | None:
    return None if at is None else portal_time(at)


# -- checks --------------------------------------------------------------------------------------------------


def _payload(event: Event, model: type[P]) -> P:
    payload = event.payload
    if not isinstance(payload, model):
        raise MappingError(
            f"expected a {model.__name__} payload for {event.envelope.event_type}, got {type(payload).__name__}",
            field="payload",
        )
    return payload


def _dossier_code(event: Event) -> str:
    code = event.envelope.dossier_code
    if not code:
        raise MappingError(
            "the portal files every record under a dossier code; the event has none", field="dossier_code"
        )
    return code


def _status(event_type: str) -> int:
    status = PORTAL_STATUS.get(event_type)
    if status is None:
        raise MappingError(f"no national status is defined for {event_type!r}", field="event_type")
    return status


def settled_status(event: Event, payload: PaymentSettled) -> int:
    """The status a ``payment.settled`` record carries: payment changes none, so the dossier's current one.

    That is the envelope's ``status`` when iGate sends it; otherwise the latest its dates show: 10 returned,
    9 finished, 4 in processing once received (a paid fee lets processing go on), 1 submitted online and
    paid before acceptance ("thu trước").
    """
    if event.envelope.status is not None:
        return event.envelope.status
    dates = payload.dates
    if dates.returned is not None:
        return 10
    if dates.finished is not None:
        return 9
    if dates.received is not None:
        return 4
    return 1


def _validated(model: type[P], data: dict[str, Any]) -> P:
    """``model`` built from ``data`` in NFC; a refusal becomes a :class:`MappingError` naming the event's field."""
    try:
        return model.model_validate(nfc(data))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        names = [part for part in first["loc"] if isinstance(part, str)]
        field = next((_SOURCE_FIELDS[name] for name in reversed(names) if name in _SOURCE_FIELDS), "payload")
        raise MappingError(
            f"the portal's {model.__name__} refuses the mapped value: {format_validation_error(exc)}", field=field
        ) from None


# -- the record ----------------------------------------------------------------------------------------------


def _file_id(url: str) -> str | None:
    # iGate serves files as .../fi/file/<24-hex id>; the portal's id fields hold at most 100 characters
    last = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return last[:100] or None


def _documents(documents: tuple[Document, ...]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(TaiLieuNop, DanhSachTepDinhKemKhac): files go to the first list, paper-only documents to the second."""
    files: list[dict[str, Any]] = []
    papers: list[dict[str, Any]] = []
    for doc in documents:
        if doc.url is None:
            papers.append({"TenGiayTo": clip(doc.name, MAX_DOCUMENT_NAME), "SoLuong": "1"})
        else:
            files.append(
                {
                    "TepDinhKemId": _file_id(doc.url),
                    "TenTepDinhKem": clip(doc.name, MAX_DOCUMENT_NAME),
                    "IsDeleted": "0",
                    "MaThanhPhanHoSo": doc.code,
                    "DuongDanTaiTepTin": doc.url,
                    "DuocSoHoa": "1",
                }
            )
    return files, papers


def _fees(fees: tuple[Fee, ...]) -> list[dict[str, Any]]:
    """DanhSachLePhi: every fee to collect, in the event's order; exempt fees ("mien") are not collected."""
    return [
        {
            "TenPhiLePhi": clip(fee.name, MAX_DOCUMENT_NAME),
            "MaPhiLePhi": fee.code,
            "HinhThucThu": HINH_THUC_THU[fee.collect],
            "Gia": fee.amount_vnd,
            "LoaiPhiLePhi": LOAI_PHI_LE_PHI[fee.kind],
        }
        for fee in fees
        if fee.collect != "mien"
    ]


def _result_docs(documents: tuple[Document, ...]) -> list[dict[str, Any]]:
    """DanhSachGiayToKetQua: the result papers, with their link when they were issued electronically."""
    return [
        {
            "TenGiayTo": clip(doc.name, MAX_DOCUMENT_NAME),
            "GiayToId": None if doc.url is None else _file_id(doc.url),
            "DuongDanTepTinKetQua": doc.url,
            "MaGiayToKetQua": doc.code,
        }
        for doc in documents
    ]


def supplement_round_id(dossier_code: str, appointment: datetime) -> str:
    """[A] The id of a supplement round, the same in its request and in its receipt.

    iGate's events carry no round id, so it is built from what both events hold: the dossier code and the
    appointment in force when the supplement was asked for (``dates.appointment``; the receipt carries the
    new one separately). A second round starts from a later appointment and gets another id.
    """
    return f"{dossier_code}-BS-{portal_time(appointment)}"


def _return_by_post(event: Event, payload: DossierEvent) -> bool:
    # HinhThuc: the actual return method once returned; before that, postal channel or BCCI registered
    if isinstance(payload, DossierReturned):
        return payload.return_method == "post"
    return event.envelope.channel == 3 or payload.bcci is not None


def _record(event: Event, payload: DossierEvent, *, status: int, **extra: Any) -> dict[str, Any]:
    """The full HoSoMC record of a dossier event; ``extra`` sets the fields only some events know."""
    envelope = event.envelope
    code = _dossier_code(event)
    if envelope.procedure_code is None:
        raise MappingError("the portal files every record under a procedure (MaTTHC)", field="procedure_code")
    if envelope.channel is None:
        raise MappingError("the portal requires the channel (KenhThucHien 1, 2 or 3)", field="channel")
    if not payload.procedure_name:
        raise MappingError("the portal requires the procedure's name (TenTTHC)", field="payload.procedure_name")
    applicant, dates = payload.applicant, payload.dates
    files, papers = _documents(payload.documents)
    # The portal counts processing as ended at a withdrawal, a stop or a finished result: when iGate sends no
    # finish date, the event announcing that end is it. A payment changes no status and implies no end.
    finished = dates.finished
    if finished is None and envelope.event_type in PORTAL_STATUS:
        if status in _ENDING_STATUSES:
            finished = envelope.occurred_at
        elif status == 10:
            finished = dates.returned
    record: dict[str, Any] = {
        "MaHoSo": code,
        "MaTTHC": envelope.procedure_code,
        "TenTTHC": clip(payload.procedure_name, MAX_PROCEDURE_NAME),
        "KenhThucHien": envelope.channel,
        "NoiNopHoSo": NOI_NOP_HO_SO,
        "DonViXuLy": envelope.agency_code,
        "ChuHoSo": applicant.name,
        "LoaiDoiTuong": applicant.type,
        "SoGiayToChuHoSo": applicant.id_no,
        # [F] TH: LoaiDinhDanh by length, 12 digits a CCCD ("1"), 9 an old CMND ("2")
        "DinhDanhCHS": [{"LoaiDinhDanh": "1" if len(applicant.id_no) == 12 else "2", "SoDinhDanh": applicant.id_no}],
        "Email": applicant.email,
        "SoDienThoai": applicant.phone,
        "TrichYeuHoSo": clip(payload.summary or payload.procedure_name, MAX_SUMMARY),
        "TrangThaiHoSo": status,
        "HinhThuc": "1" if _return_by_post(event, payload) else "0",
        "NgayNopHoSo": portal_time(dates.submitted),
        "NgayTiepNhan": _time(dates.received),
        "NgayHenTra": _time(dates.appointment),
        "NgayKetThucXuLy": _time(finished),
        "NgayTra": _time(dates.returned),
        "HoSoCoThanhPhanSoHoa": "1" if files else "0",
        "TaiLieuNop": files,
        "DanhSachLePhi": _fees(payload.fees),
        "DanhSachTepDinhKemKhac": papers,
        "DSKetNoiCSDL": [{"MaCSDL": MA_CSDL}],
        "NgayCapNhat": portal_time(envelope.occurred_at),
    }
    record.update(extra)
    return record


def _sync(record: dict[str, Any]) -> DongBoHoSoMCRequest:
    return _validated(DongBoHoSoMCRequest, {"isUpdating": IS_UPDATING, "data": [record]})


def _dossier(event: Event, model: type[DossierEvent], **extra: Any) -> DongBoHoSoMCRequest:
    """The sync request of an event whose record needs nothing beyond the common part and ``extra``."""
    payload = _payload(event, model)
    return _sync(_record(event, payload, status=_status(event.envelope.event_type), **extra))


# -- DongBoHoSoMC: one function per event -------------------------------------------------------------------


@adapter(accepts=("dossier.submitted",), produces=DongBoHoSoMCRequest)
def dossier_submitted(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """A dossier submitted online → its first record at the portal (status 1).

    Only this event says whether the applicant's account was verified with VNeID
    (``TaiKhoanDuocXacThucVoiVNeID``); later records leave the flag out rather than guess it.

    Args:
        event: a ``dossier.submitted`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, DossierSubmitted)
    record = _record(event, payload, status=_status("dossier.submitted"))
    record["TaiKhoanDuocXacThucVoiVNeID"] = "1" if payload.vneid_verified else "0"
    return _sync(record)


@adapter(accepts=("dossier.received",), produces=DongBoHoSoMCRequest)
def dossier_received(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """A dossier accepted by the agency → its record with the receipt date and appointment (status 2).

    A desk or postal dossier starts here; an online one the portal already has from ``dossier.submitted``
    is updated through the connector's "đã tồn tại" fallback.

    Args:
        event: a ``dossier.received`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    return _dossier(event, DossierReceived)


@adapter(accepts=("dossier.refused",), produces=DongBoHoSoMCRequest)
def dossier_refused(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """A dossier refused at intake → status 3, ``NgayTuChoi`` the event's time, the reason in ``GhiChu``.

    Args:
        event: a ``dossier.refused`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, DossierRefused)
    return _dossier(
        event,
        DossierRefused,
        GhiChu=clip(payload.reason, MAX_NOTE),
        NgayTuChoi=portal_time(event.envelope.occurred_at),
    )


@adapter(accepts=("dossier.supplement_requested",), produces=DongBoHoSoMCRequest)
def dossier_supplement_requested(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """A supplement asked of the applicant → status 5 and the round in ``DanhSachHoSoBoSung``.

    The round (:func:`supplement_round_id`) carries the reason and the deadline in days
    (``NoiDungBoSung``), the time of the request (``NgayBoSung``), the missing papers
    (``DanhSachGiayToBoSung``) and the appointment before the request (``NgayHenTraTruoc``).

    Args:
        event: a ``dossier.supplement_requested`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, SupplementRequested)
    code = _dossier_code(event)
    deadline = f"Thời hạn bổ sung: {payload.deadline_days} ngày."
    supplement = {
        "HoSoBoSungId": supplement_round_id(code, payload.dates.appointment),
        "NoiDungBoSung": clip(f"{payload.reason.rstrip()} {deadline}", MAX_NOTE),
        "NgayBoSung": portal_time(event.envelope.occurred_at),
        "TrangThaiBoSung": SUPPLEMENT_REQUESTED,
        "DanhSachGiayToBoSung": [
            {"TenGiayTo": clip(doc.name, MAX_DOCUMENT_NAME), "SoLuong": "1"} for doc in payload.missing_docs
        ],
        "NgayHenTraTruoc": portal_time(payload.dates.appointment),
    }
    return _dossier(event, SupplementRequested, DanhSachHoSoBoSung=[supplement])


@adapter(accepts=("dossier.supplement_received",), produces=DongBoHoSoMCRequest)
def dossier_supplement_received(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """The applicant's supplement came in → status 4 again, the new appointment, the round marked received.

    ``NgayHenTra`` becomes ``new_appointment``; the round has the same id as its request and carries
    ``NgayTiepNhanBoSung`` (the event's time), ``NgayHenTraTruoc``/``NgayHenTraMoi``. [A] The event does not
    say when the supplement was asked for, so the round's ``NgayBoSung``, which the portal requires, is the
    event's time too.

    Args:
        event: a ``dossier.supplement_received`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, SupplementReceived)
    code = _dossier_code(event)
    at = portal_time(event.envelope.occurred_at)
    supplement = {
        "HoSoBoSungId": supplement_round_id(code, payload.dates.appointment),
        "NoiDungBoSung": SUPPLEMENT_RECEIVED_TEXT,
        "NgayBoSung": at,
        "NgayTiepNhanBoSung": at,
        "TrangThaiBoSung": SUPPLEMENT_RECEIVED,
        "NgayHenTraTruoc": portal_time(payload.dates.appointment),
        "NgayHenTraMoi": portal_time(payload.new_appointment),
    }
    return _dossier(
        event,
        SupplementReceived,
        NgayHenTra=portal_time(payload.new_appointment),
        DanhSachHoSoBoSung=[supplement],
    )


@adapter(accepts=("dossier.payment_requested",), produces=DongBoHoSoMCRequest)
def dossier_payment_requested(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """Fees asked of the applicant → status 6 with the fees in ``DanhSachLePhi``.

    Args:
        event: a ``dossier.payment_requested`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    return _dossier(event, PaymentRequested)


@adapter(accepts=("payment.settled",), produces=DongBoHoSoMCRequest)
def payment_settled(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """Fees paid → the record with its fees (``DanhSachLePhi``) and ``DuocThanhToanTrucTuyen``.

    ``DuocThanhToanTrucTuyen`` is "1" when paid online (method ``TTO``), else "3" (docs/domain.md section 1.2); only
    this event knows it, so other records leave it out. The status is the dossier's current one
    (:func:`settled_status`).

    Args:
        event: a ``payment.settled`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, PaymentSettled)
    record = _record(event, payload, status=settled_status(event, payload))
    record["DuocThanhToanTrucTuyen"] = "1" if payload.method == "TTO" else "3"
    return _sync(record)


@adapter(accepts=("dossier.withdrawn",), produces=DongBoHoSoMCRequest)
def dossier_withdrawn(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """The applicant withdrew the dossier → status 7, the reason in ``GhiChu``, processing ended then.

    Args:
        event: a ``dossier.withdrawn`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, DossierWithdrawn)
    return _dossier(event, DossierWithdrawn, GhiChu=clip(payload.reason, MAX_NOTE))


@adapter(accepts=("dossier.stopped",), produces=DongBoHoSoMCRequest)
def dossier_stopped(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """The agency stopped processing → status 8, the reason in ``GhiChu``, processing ended then.

    Args:
        event: a ``dossier.stopped`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, DossierStopped)
    return _dossier(event, DossierStopped, GhiChu=clip(payload.reason, MAX_NOTE))


@adapter(accepts=("dossier.result_ready",), produces=DongBoHoSoMCRequest)
def dossier_result_ready(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """The result is ready → status 9, ``NgayKetThucXuLy``, the result papers in ``DanhSachGiayToKetQua``.

    Args:
        event: a ``dossier.result_ready`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, ResultReady)
    return _dossier(event, ResultReady, DanhSachGiayToKetQua=_result_docs(payload.result_docs))


@adapter(accepts=("dossier.returned",), produces=DongBoHoSoMCRequest)
def dossier_returned(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """The result was handed back → status 10, ``NgayTra``, ``HinhThuc`` from the actual return method.

    Args:
        event: a ``dossier.returned`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: a required envelope field or the procedure name is missing, or a value the portal refuses.
    """
    del now
    payload = _payload(event, DossierReturned)
    return _dossier(event, DossierReturned, DanhSachGiayToKetQua=_result_docs(payload.result_docs))


# -- CapNhatTienDoHoSoMC -------------------------------------------------------------------------------------


def _synthetic_step(code: str, text: str, status: int, at: datetime) -> dict[str, Any]:
    return {
        "MaHoSo": code,
        "NguoiXuLy": ONE_STOP_STAFF,
        "ThoiDiemXuLy": portal_time(at),
        "NoiDungXuLy": text,
        "TrangThai": status,
    }


@adapter(accepts=("dossier.step_changed",), produces=CapNhatTienDoHoSoMCRequest)
def dossier_step_changed(event: Event, *, now: datetime) -> CapNhatTienDoHoSoMCRequest:
    """A processing step → the synthetic "Tiếp nhận hồ sơ" step (2) and the step itself (4).

    [F] TH starts every progress upload with a "Tiếp nhận hồ sơ" step by "Cán bộ một cửa" at the receipt
    date, so the portal's timeline always opens with the reception even when it gets one step at a time;
    the portal evidently accepts it again. The step: ``NguoiXuLy`` is who handled it and passed the dossier
    on (``from_user``, as TH's ``TenNguoiGui``, cut to 50), ``ThoiDiemXuLy`` the event's time,
    ``NoiDungXuLy`` the step's name and note, ``NgayKetThucTheoQuyDinh`` its deadline.

    Args:
        event: a ``dossier.step_changed`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: no dossier code, or a value the portal refuses.
    """
    del now
    payload = _payload(event, DossierStepChanged)
    code = _dossier_code(event)
    step = payload.step
    text = step.name if not step.note else f"{step.name.rstrip()}: {step.note}"
    steps = [
        _synthetic_step(code, RECEPTION_STEP, PORTAL_STATUS["dossier.received"], payload.dates.received),
        {
            "MaHoSo": code,
            "NguoiXuLy": clip(step.from_user, MAX_STAFF),
            "ThoiDiemXuLy": portal_time(event.envelope.occurred_at),
            "NoiDungXuLy": clip(text, MAX_NOTE),
            "TrangThai": _status("dossier.step_changed"),
            "NgayKetThucTheoQuyDinh": _time(step.deadline),
        },
    ]
    return _validated(CapNhatTienDoHoSoMCRequest, {"data": steps})


@adapter(accepts=("dossier.result_ready",), produces=CapNhatTienDoHoSoMCRequest)
def dossier_result_ready_progress(event: Event, *, now: datetime) -> CapNhatTienDoHoSoMCRequest:
    """A finished dossier's progress: "Tiếp nhận hồ sơ" (2) and the synthetic "Kết thúc xử lý hồ sơ" (9).

    [F] TH appends the end step when the dossier is 9 or 10, at ``NgayKetThucXuLy``; the portal measures
    on-time processing from it. Here it is at ``dates.finished``, else the event's time (the event is the
    finish; TH falls back to the receipt date, which would count every dossier as done on time). It is sent
    once, from ``dossier.result_ready`` (a dossier is finished before it is returned), on its own route
    beside :func:`dossier_result_ready`.

    Args:
        event: a ``dossier.result_ready`` event.
        now: unused; adapters read no clock.

    Raises:
        MappingError: no dossier code, or a value the portal refuses.
    """
    del now
    payload = _payload(event, ResultReady)
    code = _dossier_code(event)
    dates = payload.dates
    steps = [
        _synthetic_step(code, RECEPTION_STEP, PORTAL_STATUS["dossier.received"], dates.received),
        _synthetic_step(
            code, END_STEP, PORTAL_STATUS["dossier.result_ready"], dates.finished or event.envelope.occurred_at
        ),
    ]
    return _validated(CapNhatTienDoHoSoMCRequest, {"data": steps})


# -- DongBoDanhGia -------------------------------------------------------------------------------------------


@adapter(accepts=("rating.submitted",), produces=DongBoDanhGiaRequest)
def rating_submitted(event: Event, *, now: datetime) -> DongBoDanhGiaRequest:
    """The applicant's rating → ``DongBoDanhGia{MaHoSo, MucDo 1-3, NoiDung, ThoiGian}`` ([A] docs/domain.md section 2).

    Args:
        event: a ``rating.submitted`` event.
        now: unused; the rating's time is the event's.

    Raises:
        MappingError: no dossier code, or a value the portal refuses.
    """
    del now
    payload = _payload(event, RatingSubmitted)
    return _validated(
        DongBoDanhGiaRequest,
        {
            "MaHoSo": _dossier_code(event),
            "MucDo": payload.level,
            "NoiDung": _clip_or_none(payload.comment, MAX_NOTE),
            "ThoiGian": portal_time(event.envelope.occurred_at),
        },
    )
