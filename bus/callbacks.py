"""External systems' callbacks: how each one authenticates, and how its call becomes a result event.

Where it sits: the inbound door of the *result* side of a message's path. A system the bus delivered to
(or that works on a dossier by itself) calls back over HTTP; the ingress (``bus/ingress.py``) checks the
caller with the system's own scheme, maps the call here into an envelope, validates it with the one strict
parser (:func:`schemas.envelope.parse_event`) and publishes it on ``bus.results``, from where routes carry
it back to iGate. Everything here is pure: no I/O, no clock (``now`` is passed in), no logging.

Systems (DOMAIN.md sections 5 and 6):

``vilis``
    The land system (VBDLIS/ILIS, modelled as "VILIS") calls ``POST {base}/{Action}/{securityCode}`` with a
    JSON body and expects ``{"Result": int, "Message": str}`` back, ``Result`` 1 on success and 0 otherwise
    [F] (TH ``Host/Controllers/Business/VBDLISController.cs`` and its handlers). Its only credential is the
    security code in the path, compared in constant time. Every action maps to one
    ``vilis.status_changed`` (:data:`VILIS_ACTIONS`). Its date-times carry no offset and are UTC: TH adds
    7 hours to each [F]; one with an offset is taken as given.
``esms``
    The SMS aggregator reports delivery with an HTTPS ``GET`` of ``SMSID, SendStatus, SendSuccess,
    SendFailed, RequestId, telcoid, phonenumber`` [F] (eSMS docs) and retries 5 times on a timeout. It
    cannot sign, so the callback URL registered with eSMS carries a shared token as the query parameter
    ``token`` [A], compared in constant time. Each call maps to one ``sms.delivery_report``.

Not here: **PayGov** payment notices. A notice carries ``MaThamChieu``, ``SoTien``, ``TrangThaiGD`` and the
``MaXacThuc`` checksum, but ``payment.settled`` (schemas/igate.py) needs the applicant, the dossier's
dates and each fee by kind, which the notice does not carry; publishing it would mean inventing them. It
needs its own result type first (say ``paygov.payment_notified``).

A retried callback must be the same event, so each ``event_id`` is a UUID5 of the call's own identity:
the action and a digest of the canonical JSON body for ``vilis`` (its calls carry no id), ``SMSID`` and
``SendStatus`` for ``esms`` (a later status of the same SMS is a new fact).
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import json
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from schemas.envelope import SCHEMA_VERSION, format_validation_error

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

#: Asia/Ho_Chi_Minh has no daylight saving time: a fixed +07:00 is exact
VN_TZ: Final = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")
#: the namespace of every callback's UUID5 event id (itself a UUID5 of the bus's callback URL space)
CALLBACK_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:igate-bus:callbacks")
#: the result event types the callbacks publish
VILIS_EVENT: Final = "vilis.status_changed"
SMS_EVENT: Final = "sms.delivery_report"
#: longest note carried into ``vilis.status_changed`` (its ``note`` field); a longer GhiChu is cut, not refused
MAX_NOTE: Final = 2000
_ELLIPSIS: Final = "…"


class CallbackRejected(Exception):
    """A callback that cannot be turned into an event: the caller's fault, answered with a 4xx.

    Args:
        code: a stable machine-readable reason (``invalid_callback``, ``unknown_action``, ...).
        detail: the precise reason, safe to send back.
        status: the HTTP status to answer with.
    """

    def __init__(self, code: str, detail: str, *, status: int = 422) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


# -- authentication --------------------------------------------------------------------------------------
def secret_matches(given: str | None, expected: str) -> bool:
    """Whether a presented credential equals the configured one, compared in constant time.

    Args:
        given: what the caller sent (None when it sent nothing).
        expected: the configured secret (never empty: settings refuse that).

    Returns:
        True on a match.
    """
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


# -- identity --------------------------------------------------------------------------------------------
def canonical_json(data: Any) -> bytes:
    """The JSON of ``data`` with sorted keys, no spaces and NFC text: equal for equal content.

    Args:
        data: a JSON value.

    Returns:
        The UTF-8 bytes.
    """
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def callback_event_id(*parts: str) -> str:
    """A UUID5 event id from a callback's identity, so a retried callback is the same event.

    Args:
        *parts: the system and the call's own identifying values, in a fixed order.

    Returns:
        The UUID, as text.
    """
    return str(uuid.uuid5(CALLBACK_NAMESPACE, "/".join(parts)))


def envelope(
    *,
    event_id: str,
    event_type: str,
    source: str,
    now: datetime,
    payload: dict[str, Any],
    dossier_code: str | None = None,
    status: int | None = None,
) -> dict[str, Any]:
    """A bus envelope around a result payload (validated afterwards by the ingress with ``parse_event``).

    Args:
        event_id: the deterministic id.
        event_type: a result event type.
        source: the calling system.
        now: when the bus received the call (``occurred_at``).
        payload: the result payload.
        dossier_code: the dossier it is about, when the call names one.
        status: the national 1-10 status it implies, when it implies one.

    Returns:
        The envelope as JSON-ready data.
    """
    event: dict[str, Any] = {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": now.astimezone(VN_TZ).isoformat(timespec="seconds"),
        "source": source,
        "schema_version": SCHEMA_VERSION,
        "payload": payload,
    }
    if dossier_code is not None:
        event["dossier_code"] = dossier_code
    if status is not None:
        event["status"] = status
    return event


# -- vilis: the land system ------------------------------------------------------------------------------
def _dotnet_time(value: Any) -> Any:
    """A .NET ``DateTime`` from JSON: ISO 8601, up to 7 fractional digits; no offset means UTC [F]."""
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 date-time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(VN_TZ)


#: a land-system date-time, converted to +07:00
VilisTime = Annotated[datetime, BeforeValidator(_dotnet_time)]
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


def _note(*parts: str | None) -> str | None:
    text = " ".join(p for p in parts if p)
    if not text:
        return None
    return text if len(text) <= MAX_NOTE else text[: MAX_NOTE - 1] + _ELLIPSIS


def _docs(files: list[VilisFile]) -> list[dict[str, Any]]:
    # The land system sends no document code: number them KQ1, KQ2... [A]
    return [
        {"code": f"KQ{i}", "name": f.TenGiayTo or f"Giấy tờ kết quả {i}", "url": f.LinkFile}
        for i, f in enumerate(files, start=1)
    ]


def _tiep_nhan(m: TiepNhanHoSoChoMotCua, now: datetime) -> dict[str, Any]:
    del now
    return {"at": m.NgayTiepNhan, "staff_code": m.NguoiTiepNhan, "new_appointment": m.NgayHenTra}


def _yeu_cau_bo_sung(m: YeuCauBoSungHoSo, now: datetime) -> dict[str, Any]:
    del now
    return {
        "at": m.NgayChoBoSung,
        "staff_code": m.MaCanBoXuLy,
        "note": _note("[tạm dừng]" if m.LaTamDung else None, m.GhiChu),
    }


def _nhan_bo_sung(m: NhanBoSungHoSo, now: datetime) -> dict[str, Any]:
    del now
    return {"at": m.NgayNhanBoSung, "new_appointment": m.NgayHenTraMoi, "note": _note(m.GhiChu)}


def _ket_qua_thue(m: GuiKetQuaThue, now: datetime) -> dict[str, Any]:
    notices = [
        {
            "owner_name": t.HoTenChu,
            "tax_kind": t.LoaiThue,
            "notice_no": t.SoThongBaoThue,
            "url": t.DuongDanThongBaoThue,
        }
        for t in m.DanhSachThongBaoThue
    ]
    return {
        "at": m.NgayCoKetQuaThue or now,
        "staff_code": m.NguoiXuLy,
        "note": _note(m.GhiChu),
        "tax_notices": notices,
    }


def _ket_thuc(m: KetThucHoSo, now: datetime) -> dict[str, Any]:
    del now
    returned = "[trả lại/xin rút]" if m.TrangThaiKetThuc != 0 else None
    return {
        "at": m.NgayKetThuc,
        "staff_code": m.MaCanBoXuLy,
        "note": _note(returned, m.GhiChu),
        "result_docs": _docs(m.DanhSachGiayToKetQua),
    }


def _luan_chuyen(m: ChuyenHoSo, now: datetime) -> dict[str, Any]:
    return {"at": m.NgayChuyen or now, "staff_code": m.MaCanBoNhan, "note": _note(m.NoiDungXuLy)}


def _ghi_chu(m: GhiChuHoSo, now: datetime) -> dict[str, Any]:
    return {"at": now, "staff_code": m.MaCanBoXuLy, "note": _note(m.GhiChu)}


@dataclass(frozen=True, slots=True)
class VilisAction:
    """One inbound call of the land system: its body model, the ``kind`` it reports, the status it implies.

    Attributes:
        name: the canonical action name (the path segment TH uses).
        model: the body model.
        kind: ``vilis.status_changed.kind``.
        status: the national 1-10 status it implies, if any.
        fields: maps the validated body (and ``now``, for calls that carry no date) to payload fields.
    """

    name: str
    model: type[VilisBody]
    kind: str
    status: int | None
    fields: Callable[[Any, datetime], dict[str, Any]]


#: every land-system call, by the path segment the land system posts to (TH's controller routes)
VILIS_ACTIONS: Final[dict[str, VilisAction]] = {
    a.name: a
    for a in (
        VilisAction("TiepNhanHoSoChoMotCua", TiepNhanHoSoChoMotCua, "tiep_nhan", 2, _tiep_nhan),
        VilisAction("YeuCauBoSungHoSo", YeuCauBoSungHoSo, "yeu_cau_bo_sung", 5, _yeu_cau_bo_sung),
        VilisAction("NhanBoSungHoSo", NhanBoSungHoSo, "nhan_bo_sung", 4, _nhan_bo_sung),
        VilisAction("GuiKetQuaThue", GuiKetQuaThue, "ket_qua_thue", 6, _ket_qua_thue),
        VilisAction("KetThucHoSo", KetThucHoSo, "ket_thuc", 9, _ket_thuc),
        VilisAction("ChuyenHoSo", ChuyenHoSo, "luan_chuyen", 4, _luan_chuyen),
        VilisAction("YeuCauCapNhatHoSo", GhiChuHoSo, "yeu_cau_cap_nhat", None, _ghi_chu),
        VilisAction("ThongBaoNhapSaiThuTuc", GhiChuHoSo, "nhap_sai_thu_tuc", None, _ghi_chu),
        VilisAction("ThueChuyenTraHoSoDoSai", GhiChuHoSo, "chuyen_tra_do_sai", None, _ghi_chu),
    )
}
#: other names the same calls go by (DOMAIN.md names the handler, TH's route the short form)
VILIS_ALIASES: Final[dict[str, str]] = {"DongBoTrangThaiLuanChuyenHoSo": "ChuyenHoSo"}


def vilis_action(name: str) -> VilisAction:
    """The land-system call posted to ``name``.

    Args:
        name: the path segment.

    Returns:
        The action.

    Raises:
        CallbackRejected: ``unknown_action`` (404), naming the closest known action.
    """
    action = VILIS_ACTIONS.get(VILIS_ALIASES.get(name, name))
    if action is None:
        known = [*VILIS_ACTIONS, *VILIS_ALIASES]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(sorted(VILIS_ACTIONS))}"
        raise CallbackRejected("unknown_action", f"unknown land-system action {name[:60]!r}{hint}", status=404)
    return action


def vilis_event(action: VilisAction, data: Any, *, now: datetime) -> dict[str, Any]:
    """The ``vilis.status_changed`` envelope for one land-system call.

    Args:
        action: the call (:func:`vilis_action`).
        data: the decoded JSON body.
        now: when the call arrived (``occurred_at``; ``at`` for calls that carry no date).

    Returns:
        The envelope, to be validated with ``parse_event`` before it is published.

    Raises:
        CallbackRejected: ``invalid_callback`` (422) when the body does not fit the action's model.
    """
    if not isinstance(data, dict):
        raise CallbackRejected("invalid_callback", f"the body must be a JSON object, got {type(data).__name__}")
    try:
        body = action.model.model_validate(data)
    except ValidationError as exc:
        raise CallbackRejected("invalid_callback", format_validation_error(exc)) from None
    fields = {k: v for k, v in action.fields(body, now).items() if v is not None}
    payload: dict[str, Any] = {"so_bien_nhan": body.SoBienNhan, "kind": action.kind, **fields}
    if action.status is not None:
        payload["status"] = action.status
    payload = json.loads(json.dumps(payload, default=_json_default, ensure_ascii=False))
    digest = hashlib.sha256(canonical_json(data)).hexdigest()
    return envelope(
        event_id=callback_event_id("vilis", action.name, digest),
        event_type=VILIS_EVENT,
        source="vilis",
        now=now,
        payload=payload,
        dossier_code=body.SoBienNhan,
        status=action.status,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# -- esms: the SMS aggregator ----------------------------------------------------------------------------
class EsmsCallback(BaseModel):
    """The query of eSMS's delivery-report GET [F]; parameter names are matched case-insensitively."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    SMSID: str = Field(min_length=1, max_length=100)
    SendStatus: int = Field(description="1 awaiting approval, 2 queued, 4 rejected, 5 sent, 7 sent awaiting report")
    SendSuccess: int | None = None
    SendFailed: int | None = None
    RequestId: str | None = Field(default=None, max_length=100)
    telcoid: int | None = None
    phonenumber: str | None = Field(default=None, max_length=30)


#: the query parameters eSMS sends, by their lower-case name
ESMS_PARAMS: Final[dict[str, str]] = {name.lower(): name for name in EsmsCallback.model_fields}


def esms_event(params: Mapping[str, str], *, now: datetime) -> dict[str, Any]:
    """The ``sms.delivery_report`` envelope for one eSMS delivery report.

    Args:
        params: the query parameters (the ``token`` already checked and removed).
        now: when the call arrived.

    Returns:
        The envelope, to be validated with ``parse_event`` before it is published.

    Raises:
        CallbackRejected: ``invalid_callback`` (422) when a parameter is missing or not a number.
    """
    known = {ESMS_PARAMS[k.lower()]: v for k, v in params.items() if k.lower() in ESMS_PARAMS}
    blank = {k for k, v in known.items() if not v.strip()}
    try:
        report = EsmsCallback.model_validate({k: v for k, v in known.items() if k not in blank or k == "SMSID"})
    except ValidationError as exc:
        raise CallbackRejected("invalid_callback", format_validation_error(exc)) from None
    payload: dict[str, Any] = {"sms_id": report.SMSID, "send_status": report.SendStatus}
    if report.telcoid is not None:
        payload["telco"] = report.telcoid
    if report.RequestId:
        payload["request_id"] = report.RequestId
    if report.phonenumber:
        payload["phone"] = unicodedata.normalize("NFC", report.phonenumber)
    return envelope(
        event_id=callback_event_id("esms", report.SMSID, str(report.SendStatus)),
        event_type=SMS_EVENT,
        source="esms",
        now=now,
        payload=payload,
    )


# -- the registry ----------------------------------------------------------------------------------------
#: each callback system and how it calls (for documentation and the 404 of an unknown system)
CALLBACK_SYSTEMS: Final[dict[str, str]] = {
    "vilis": "POST /callbacks/vilis/{action}/{security_code}",
    "esms": "GET /callbacks/esms?token=...&SMSID=...&SendStatus=...",
}
#: systems that have no callback yet, with the reason
NOT_ACCEPTED: Final[dict[str, str]] = {
    "paygov": "PayGov payment notices are not accepted: no result event type carries them yet",
}


def unknown_system(name: str) -> CallbackRejected:
    """The 404 for a callback to a system the bus does not know.

    Args:
        name: the path segment.

    Returns:
        The rejection, naming the closest known system.
    """
    if name in NOT_ACCEPTED:
        return CallbackRejected("unknown_system", NOT_ACCEPTED[name], status=404)
    close = difflib.get_close_matches(name, list(CALLBACK_SYSTEMS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(sorted(CALLBACK_SYSTEMS))}"
    return CallbackRejected("unknown_system", f"no callback system {name[:60]!r}{hint}", status=404)
