"""Result events from the other systems → a status update on the dossier in iGate.

Where it sits: the adapter step of the ``results-to-igate`` route (``bus.results`` → route → **adapter** →
``igate.update_dossier`` → result/DLQ). The national portal's sync answer, the land registry's status, postal
tracking, e-receipts and SMS delivery reports each become one :class:`UpdateDossierRequest`:

- ``source_system`` is the event type's prefix (``vnpost.tracking_updated`` → ``vnpost``);
- ``status`` is set only when the result itself states a national 1-10 status (``vilis.status_changed``'s
  ``status``); the envelope's ``status`` may be a copy of the originating event's, and writing that back
  could move the dossier backwards;
- ``note`` is one Vietnamese line for the dossier's history, built from the payload;
- ``data`` carries the payload's fields (plus ``event_type`` and ``occurred_at``), scalars as they are and
  nested values as compact JSON, each cut to 500 characters. Fields marked personal
  (:func:`schemas.pii.sensitive`) are left out at any depth: iGate already holds the applicant's data.

Pure: reads only the event; the payload is read through ``model_dump`` so the mapping does not depend on
the payload models' classes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, cast, get_args

from pydantic import ValidationError

from adapters.registry import adapter
from schemas.envelope import Event, format_validation_error
from schemas.errors import MappingError
from schemas.igate_api import MAX_DATA_VALUE_CHARS, MAX_NOTE_CHARS, SourceSystem, UpdateDossierRequest
from schemas.pii import sensitive_field_names
from schemas.results import PORTAL_OK_CODES

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

RESULT_EVENTS: Final = (
    "dvcqg.sync_result",
    "vilis.status_changed",
    "vilis.change_checked",
    "vnpost.tracking_updated",
    "receipt.issued",
    "sms.delivery_report",
)
#: payload fields that carry the dossier code when the envelope lacks it
_CODE_FIELDS: Final = {
    "vilis.status_changed": "so_bien_nhan",
    "vilis.change_checked": "so_bien_nhan",
    "vnpost.tracking_updated": "order_number",
}
_LAND_KINDS: Final = {
    "tiep_nhan": "đã tiếp nhận",
    "yeu_cau_bo_sung": "yêu cầu bổ sung hồ sơ",
    "nhan_bo_sung": "đã nhận bổ sung",
    "ket_qua_thue": "đã có thông báo thuế",
    "ket_thuc": "đã xử lý xong",
    "luan_chuyen": "đang luân chuyển",
    "yeu_cau_cap_nhat": "yêu cầu cập nhật hồ sơ",
    "nhap_sai_thu_tuc": "báo nhập sai thủ tục",
    "chuyen_tra_do_sai": "cơ quan thuế chuyển trả do sai",
}
#: eSMS send statuses and telco ids (docs/domain.md section 5)
_SMS_STATUSES: Final = {1: "chờ duyệt", 2: "chờ gửi", 4: "bị từ chối", 5: "đã gửi", 7: "đã gửi, chờ báo cáo"}
_TELCOS: Final = {
    1: "Viettel",
    2: "MobiFone",
    3: "VinaPhone",
    4: "Vietnamobile",
    5: "Gtel",
    6: "Itel",
    7: "Reddi",
}
_MISSING: Final = "—"


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    return _MISSING if value is None or value == "" else str(value)


def _portal_note(f: dict[str, Any]) -> str:
    service = _text(f, "service")
    if str(f.get("error_code", "")) in PORTAL_OK_CODES:
        return f"Cổng DVCQG ({service}): đồng bộ thành công"
    return f"Cổng DVCQG ({service}): lỗi {_text(f, 'error_code')}: {_text(f, 'message')}"


def _land_note(f: dict[str, Any]) -> str:
    kind = _LAND_KINDS.get(str(f.get("kind")), _text(f, "kind"))
    return f"Văn phòng đăng ký đất đai: hồ sơ {_text(f, 'so_bien_nhan')} {kind}"


def _postal_note(f: dict[str, Any]) -> str:
    item, message, code = _text(f, "item_code"), _text(f, "status_message"), _text(f, "status_code")
    return f"VNPost: bưu gửi {item}: {message} (mã {code})"


def _receipt_note(f: dict[str, Any]) -> str:
    return (
        f"Đã phát hành biên lai điện tử số {_text(f, 'number')}, "
        f"ký hiệu {_text(f, 'serial')}, mẫu số {_text(f, 'pattern')}"
    )


def _sms_note(f: dict[str, Any]) -> str:
    status = _SMS_STATUSES.get(f.get("send_status", 0), _text(f, "send_status"))
    telco = _TELCOS.get(f.get("telco", 0), _text(f, "telco"))
    return f"Tin nhắn SMS {_text(f, 'sms_id')}: {status} (nhà mạng {telco})"


_NOTES: Final[dict[str, Callable[[dict[str, Any]], str]]] = {
    "dvcqg.sync_result": _portal_note,
    "vilis.status_changed": _land_note,
    "vilis.change_checked": _land_note,
    "vnpost.tracking_updated": _postal_note,
    "receipt.issued": _receipt_note,
    "sms.delivery_report": _sms_note,
}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _without(value: Any, names: frozenset[str]) -> Any:
    """``value`` with every dict key in ``names`` removed, at any depth."""
    if isinstance(value, dict):
        return {k: _without(v, names) for k, v in value.items() if k not in names}
    if isinstance(value, list):
        return [_without(v, names) for v in value]
    return value


def _data_value(value: Any) -> str | int | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        return _cut(value, MAX_DATA_VALUE_CHARS)
    if isinstance(value, float):
        return repr(value)
    return _cut(json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True), MAX_DATA_VALUE_CHARS)


@adapter(accepts=RESULT_EVENTS, produces=UpdateDossierRequest)
def status_update(event: Event, *, now: datetime) -> UpdateDossierRequest:
    """One result event → the update that writes it onto its dossier in iGate.

    Args:
        event: a result event from ``bus.results`` (one of :data:`RESULT_EVENTS`).
        now: unused; the update carries the event's own time.

    Raises:
        MappingError: no ``dossier_code``, an event type this adapter does not map, or an update that would
            not be valid.
    """
    del now
    envelope = event.envelope
    note = _NOTES.get(envelope.event_type)
    source = envelope.event_type.split(".", 1)[0]
    if note is None or source not in get_args(SourceSystem):
        raise MappingError(f"no status update is defined for {envelope.event_type!r}", field="event_type")
    personal = sensitive_field_names([type(event.payload)])
    fields = _without(event.payload.model_dump(mode="json"), personal)
    dossier_code = envelope.dossier_code or fields.get(_CODE_FIELDS.get(envelope.event_type, ""))
    if not isinstance(dossier_code, str) or not dossier_code:
        raise MappingError(f"a {envelope.event_type} event without a dossier code has no dossier", field="dossier_code")
    status = fields.get("status")
    data: dict[str, str | int | None] = {
        "event_type": envelope.event_type,
        "occurred_at": envelope.occurred_at.isoformat(),
    }
    data.update((key, _data_value(value)) for key, value in sorted(fields.items()) if key not in data)
    try:
        return UpdateDossierRequest(
            dossier_code=dossier_code,
            igate_id=envelope.igate_id,
            source_system=cast("SourceSystem", source),
            status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            note=_cut(note(fields), MAX_NOTE_CHARS),
            data=data,
        )
    except ValidationError as exc:
        raise MappingError(format_validation_error(exc), field="payload") from None
