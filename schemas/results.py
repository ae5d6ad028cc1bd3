"""Payload models of the events that flow back into the bus on ``bus.results`` (end of docs/domain.md section 7).

Last step of a message's path, and the first of the next: a route that delivered an effect, or polled a
target, emits one of these as its result event (postal tracking, a land-office status, the national portal's
answer, an SMS delivery report, an issued e-receipt, a note or update written back into iGate). They are
parsed like iGate's events (:func:`schemas.envelope.parse_event` with ``schemas/events.py``), so the routes
that carry them back to iGate get validated models too.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, Field, StrictInt

from schemas.igate import (
    S10_PATTERN,
    Code,
    Document,
    IgateModel,
    Name,
    NationalStatus,
    Timestamp,
    Url,
    VnMobile,
)
from schemas.pii import sensitive
from schemas.receipt_reconcile import ReceiptsReconciled
from schemas.strict import multiline

#: a dossier code as iGate writes it, e.g. ``000.00.16.H16-261126-0001`` (also VNPost's order number and the
#: land office's SoBienNhan)
DOSSIER_CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,59}$"
#: what the land office told the one-stop shop (VBDLIS/ILIS inbound calls, docs/domain.md section 6)
VilisKind = Literal[
    "tiep_nhan",  # TiepNhanHoSoChoMotCua: the land office issued the receipt
    "yeu_cau_bo_sung",  # YeuCauBoSungHoSo: documents missing
    "nhan_bo_sung",  # NhanBoSungHoSo: documents received, new appointment
    "ket_qua_thue",  # GuiKetQuaThue: tax notice issued (the dossier goes to status 6)
    "ket_thuc",  # KetThucHoSo: processing finished
    "luan_chuyen",  # DongBoTrangThaiLuanChuyenHoSo: moved between officers
    "yeu_cau_cap_nhat",  # YeuCauCapNhatHoSo: the one-stop shop must correct the dossier
    "nhap_sai_thu_tuc",  # ThongBaoNhapSaiThuTuc: entered under the wrong procedure
    "chuyen_tra_do_sai",  # ThueChuyenTraHoSoDoSai: the tax office sent it back as wrong
]


class TrackingUpdated(IgateModel):
    """``vnpost.tracking_updated``: a postal item changed state (MyVNPost/NGSP status code)."""

    item_code: str = Field(pattern=S10_PATTERN, examples=["EB123456785VN"])
    order_number: str = Field(pattern=DOSSIER_CODE_PATTERN, description="The dossier code the order carries.")
    status_code: StrictInt = Field(ge=0, le=999, description="14 delivered, 15 delivery failed, ...")
    status_message: str = Field(default="", max_length=500)
    at: Timestamp


class PoolLow(IgateModel):
    """``vnpost.pool_low``: the pool of pre-issued VNPost item codes ran low; an operator should load more."""

    free: StrictInt = Field(ge=0, description="Codes left.")
    threshold: StrictInt = Field(ge=0, description="The connector's options.pool_low.")


class TaxNotice(IgateModel):
    """One tax notice the land office passed on (GuiKetQuaThue.DanhSachThongBaoThue)."""

    owner_name: Name = sensitive()
    tax_kind: str = Field(min_length=1, max_length=200, description="LoaiThue")
    notice_no: str = Field(min_length=1, max_length=60)
    url: Url | None = None


class ResultFile(IgateModel):
    """[A] A result document the land office put on the shared SFTP server: its path there and its SHA-256."""

    name: str = Field(min_length=1, max_length=500)
    path: str = Field(min_length=1, max_length=1000, pattern=r"^[^/\x00-\x1f][^\x00-\x1f]*$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class VilisStatusChanged(IgateModel):
    """``vilis.status_changed``: the land office reported progress on a dossier it processes."""

    so_bien_nhan: str = Field(pattern=DOSSIER_CODE_PATTERN, description="The dossier code.")
    kind: VilisKind
    at: Timestamp
    status: NationalStatus | None = Field(default=None, description="The national status this implies.")
    staff_code: str | None = Field(default=None, max_length=100)
    note: str | None = multiline(default=None, max_length=2000)
    new_appointment: Timestamp | None = None
    tax_notices: tuple[TaxNotice, ...] = Field(default=(), max_length=50)
    result_docs: tuple[Document, ...] = Field(default=(), max_length=50)
    result_files: tuple[ResultFile, ...] = Field(default=(), max_length=50)


class CheckedFile(IgateModel):
    """A result document the bus fetched from the SFTP server and proved whole (its SHA-256 matched)."""

    name: str = Field(min_length=1, max_length=500)
    path: str = Field(min_length=1, max_length=1000)
    local_path: str = Field(min_length=1, max_length=1000)
    size: StrictInt = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class VilisChangeChecked(VilisStatusChanged):
    """``vilis.change_checked``: a land-office change the bus checked (the dossier was sent; result files whole).

    What iGate hears of the land office: ``vilis.status_changed`` becomes this only after the bus made sure it
    sent the dossier to the land office and fetched every result document, hash checked
    (``connectors/vilis.py``, ``check_change``).
    """

    checked_files: tuple[CheckedFile, ...] = Field(default=(), max_length=50)


#: the portal's answer codes that mean success (docs/domain.md section 2, [F]): "0" in TH's deployments, "00" in
#: OC's (OC ``DVCQGIntegrationActionImpl.java``); TH also accepts "3" and "-3" as success. The bus's one list:
#: the connector, its lookup, this result's ``ok`` and the note written back to iGate all read it.
PORTAL_OK_CODES: Final = frozenset({"0", "00", "3", "-3"})


class DvcqgSyncResult(IgateModel):
    """``dvcqg.sync_result``: the national portal's answer to a sync call (:data:`PORTAL_OK_CODES` are OK)."""

    service: str = Field(pattern=r"^[A-Za-z]{3,60}$", examples=["DongBoHoSoMC", "CapNhatTienDoHoSoMC"])
    error_code: str = Field(pattern=r"^-?[0-9A-Za-z]{1,10}$")
    message: str = multiline(default="", max_length=1000)

    @property
    def ok(self) -> bool:
        """Whether the portal accepted the call (:data:`PORTAL_OK_CODES`)."""
        return self.error_code in PORTAL_OK_CODES


class SmsDeliveryReport(IgateModel):
    """``sms.delivery_report``: a gateway's delivery report, on eSMS's status scale (docs/domain.md section 5)."""

    sms_id: str = Field(min_length=1, max_length=100)
    send_status: Annotated[Literal[1, 2, 4, 5, 7], Code] = Field(
        description="1 awaiting approval, 2 queued, 4 rejected, 5 sent, 7 sent awaiting report"
    )
    telco: Annotated[Literal[1, 2, 3, 4, 5, 6, 7], Code] | None = Field(
        default=None, description="1 Viettel, 2 Mobi, 3 Vina, 4 Vietnamobile, 5 Gtel, 6 Itel, 7 Reddi"
    )
    request_id: str | None = Field(default=None, max_length=100, description="Our idempotency key.")
    phone: VnMobile | None = sensitive(default=None)


class ReceiptIssued(IgateModel):
    """``receipt.issued``: the e-receipt provider published a receipt for ``fkey``."""

    fkey: str = Field(pattern=r"^(phi|lephi)-[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["phi-PG2611260001"])
    pattern: str = Field(min_length=1, max_length=20, examples=["01BLP0-001"])
    serial: str = Field(min_length=1, max_length=20, examples=["AA-19E"])
    number: str = Field(pattern=r"^[0-9]{1,10}$", examples=["0000123"])
    provider: Literal["vnpt", "viettel", "local"] | None = None
    issued_at: Timestamp | None = None
    amount_vnd: StrictInt | None = Field(default=None, gt=0)


class NoteAdded(IgateModel):
    """``igate.note_added``: a note was written onto the dossier in iGate (its id, for idempotency)."""

    note_id: str = Field(min_length=1, max_length=100)
    dossier_code: str = Field(pattern=DOSSIER_CODE_PATTERN)
    created_at: Timestamp


class DossierUpdated(IgateModel):
    """``igate.dossier_updated``: the dossier was updated in iGate (status moved, when ``status`` is set)."""

    dossier_code: str = Field(pattern=DOSSIER_CODE_PATTERN)
    update_id: str = Field(min_length=1, max_length=100)
    status: NationalStatus | None = None


RESULT_EVENTS: dict[str, type[BaseModel]] = {
    "vnpost.tracking_updated": TrackingUpdated,
    "vnpost.pool_low": PoolLow,
    "vilis.status_changed": VilisStatusChanged,
    "vilis.change_checked": VilisChangeChecked,
    "dvcqg.sync_result": DvcqgSyncResult,
    "sms.delivery_report": SmsDeliveryReport,
    "receipt.issued": ReceiptIssued,
    "receipt.reconciled": ReceiptsReconciled,
    "igate.note_added": NoteAdded,
    "igate.dossier_updated": DossierUpdated,
}
