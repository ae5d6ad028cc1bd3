"""The land system's calls (``schemas/vilis.py``) → ``vilis.status_changed`` on ``bus.results``.

Where it sits: the adapter of the land system's callback, at the start of the result side of a message's
path (land office → ingress ``POST /callbacks/vilis/{Action}/{securityCode}`` → **this** → ``parse_event``
→ ``bus.results`` → routes back to iGate). Pure: no I/O, no clock (``now`` is passed in), no logging.

The rules, each applied in one place below:

- **One action, one kind.** Every call the land system makes (TH's controller routes, docs/domain.md section 6)
  is an entry of :data:`VILIS_ACTIONS`: its body model, the ``kind`` it reports and the national 1-10
  status it implies (none for the calls that only carry a note). :data:`VILIS_ALIASES` maps the other name a
  call goes by to its entry.
- **Only what the bus carries.** The payload takes the dossier code, the time, the officer, a note, a new
  appointment, tax notices and result documents; the applicant's data the land system also sends does not
  travel.
- **Times** are the call's own, rendered in Vietnam time; a call that carries no date (a note, a move
  between officers without ``NgayChuyen``) takes ``now``, when the bus received it.
- **Notes** longer than the payload's 2,000 characters are cut with "…", never refused: losing the call
  would be worse than losing the tail of its note.
- **Identity.** The land system's calls carry no id, so the ``event_id`` is a UUID5 of the action and a
  digest of the canonical JSON body: a retried call is the same event, any change is another.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from adapters.to_bus import CallbackRejected, callback_event_id, canonical_json, envelope
from schemas.envelope import format_validation_error
from schemas.vilis import (
    ChuyenHoSo,
    GhiChuHoSo,
    GuiKetQuaThue,
    KetThucHoSo,
    NhanBoSungHoSo,
    TiepNhanHoSoChoMotCua,
    VilisBody,
    VilisFile,
    YeuCauBoSungHoSo,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

#: the result event type the land system's calls become
VILIS_EVENT: Final = "vilis.status_changed"
#: longest note carried into ``vilis.status_changed`` (its ``note`` field); a longer GhiChu is cut, not refused
MAX_NOTE: Final = 2000
_ELLIPSIS: Final = "…"


def _note(*parts: str | None) -> str | None:
    text = " ".join(p for p in parts if p)
    if not text:
        return None
    return text if len(text) <= MAX_NOTE else text[: MAX_NOTE - 1] + _ELLIPSIS


def _docs(files: list[VilisFile]) -> list[dict[str, Any]]:
    # The land system sends no document code: number them KQ1, KQ2... [A]; a link that is not a web address
    # is a path on the shared SFTP server (see _files), not a URL
    return [
        {
            "code": f"KQ{i}",
            "name": f.TenGiayTo or f"Giấy tờ kết quả {i}",
            "url": f.LinkFile if _web(f.LinkFile) else None,
        }
        for i, f in enumerate(files, start=1)
    ]


def _web(link: str | None) -> bool:
    return link is not None and link.lower().startswith(("http://", "https://"))


def _files(files: list[VilisFile]) -> list[dict[str, Any]]:
    # [A] a result document on the shared SFTP server: its path there and the SHA-256 the land office gives
    return [
        {"name": f.TenGiayTo or f"Giấy tờ kết quả {i}", "path": f.LinkFile, "sha256": f.Sha256}
        for i, f in enumerate(files, start=1)
        if f.LinkFile and f.Sha256 and not _web(f.LinkFile)
    ]


def tiep_nhan(m: TiepNhanHoSoChoMotCua, now: datetime) -> dict[str, Any]:
    """The receipt: when, by whom, the appointment."""
    del now
    return {"at": m.NgayTiepNhan, "staff_code": m.NguoiTiepNhan, "new_appointment": m.NgayHenTra}


def yeu_cau_bo_sung(m: YeuCauBoSungHoSo, now: datetime) -> dict[str, Any]:
    """Documents missing; a pause (LaTamDung) is said in the note."""
    del now
    return {
        "at": m.NgayChoBoSung,
        "staff_code": m.MaCanBoXuLy,
        "note": _note("[tạm dừng]" if m.LaTamDung else None, m.GhiChu),
    }


def nhan_bo_sung(m: NhanBoSungHoSo, now: datetime) -> dict[str, Any]:
    """Documents received, and the new appointment."""
    del now
    return {"at": m.NgayNhanBoSung, "new_appointment": m.NgayHenTraMoi, "note": _note(m.GhiChu)}


def ket_qua_thue(m: GuiKetQuaThue, now: datetime) -> dict[str, Any]:
    """The tax notices; ``now`` when the call gives no date."""
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


def ket_thuc(m: KetThucHoSo, now: datetime) -> dict[str, Any]:
    """The end of processing: a result, or returned/withdrawn (said in the note), with the result documents."""
    del now
    returned = "[trả lại/xin rút]" if m.TrangThaiKetThuc != 0 else None
    return {
        "at": m.NgayKetThuc,
        "staff_code": m.MaCanBoXuLy,
        "note": _note(returned, m.GhiChu),
        "result_docs": _docs(m.DanhSachGiayToKetQua),
        "result_files": _files(m.DanhSachGiayToKetQua) or None,
    }


def luan_chuyen(m: ChuyenHoSo, now: datetime) -> dict[str, Any]:
    """A move to another officer: the receiving officer; ``now`` when the call gives no date."""
    return {"at": m.NgayChuyen or now, "staff_code": m.MaCanBoNhan, "note": _note(m.NoiDungXuLy)}


def ghi_chu(m: GhiChuHoSo, now: datetime) -> dict[str, Any]:
    """A note-only notice: it carries no date, so ``now``."""
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
        VilisAction("TiepNhanHoSoChoMotCua", TiepNhanHoSoChoMotCua, "tiep_nhan", 2, tiep_nhan),
        VilisAction("YeuCauBoSungHoSo", YeuCauBoSungHoSo, "yeu_cau_bo_sung", 5, yeu_cau_bo_sung),
        VilisAction("NhanBoSungHoSo", NhanBoSungHoSo, "nhan_bo_sung", 4, nhan_bo_sung),
        VilisAction("GuiKetQuaThue", GuiKetQuaThue, "ket_qua_thue", 6, ket_qua_thue),
        VilisAction("KetThucHoSo", KetThucHoSo, "ket_thuc", 9, ket_thuc),
        VilisAction("ChuyenHoSo", ChuyenHoSo, "luan_chuyen", 4, luan_chuyen),
        VilisAction("YeuCauCapNhatHoSo", GhiChuHoSo, "yeu_cau_cap_nhat", None, ghi_chu),
        VilisAction("ThongBaoNhapSaiThuTuc", GhiChuHoSo, "nhap_sai_thu_tuc", None, ghi_chu),
        VilisAction("ThueChuyenTraHoSoDoSai", GhiChuHoSo, "chuyen_tra_do_sai", None, ghi_chu),
    )
}
#: other names the same calls go by (docs/domain.md section 6 names the handler, TH's route the short form)
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
