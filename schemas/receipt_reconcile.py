"""The daily e-receipt reconciliation: the service's receipts file against the payments the bus saw, compared.

Where it sits: the reconciliation reads two things, the Finance service's receipts file of a day (fetched over
SFTP by ``connectors/receipt.py``) and the payments the receipt connector recorded that day (its state), and
this module compares them, purely: :func:`parse_receipts_file` reads the file (every problem named by file,
line and column), :func:`compare` finds every payment with no valid receipt or more than one, every receipt
for another amount than the payment, every receipt still valid for a payment the bus cancelled, and every
receipt the bus never asked for. The result is the payload of ``receipt.reconciled`` and the report file.

[A] The file: CSV, UTF-8, a header line ``fkey,pattern,serial,number,amount_vnd,status,issued_on``, one line
per receipt issued that day (``status`` ``valid`` or ``cancelled``; ``issued_on`` ``YYYY-MM-DD``), named
``receipts-YYYYMMDD.csv``. Nothing public describes VNPT's export; this is the bus's contract with the
simulator and the first thing to check against the real file.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from datetime import date
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from schemas.receipt import FKEY_PATTERN

#: the file's columns, in order ([A], see the module docstring)
FILE_COLUMNS: Final = ("fkey", "pattern", "serial", "number", "amount_vnd", "status", "issued_on")
#: the largest receipts file read (a day of a province is a few thousand lines)
MAX_FILE_BYTES: Final = 50 * 1024 * 1024
_FKEY: Final = re.compile(FKEY_PATTERN)
_AMOUNT: Final = re.compile(r"^[1-9][0-9]{0,13}$")
_NUMBER: Final = re.compile(r"^[0-9]{1,10}$")

FindingKind = Literal["missing", "duplicate", "amount_mismatch", "cancelled_but_valid", "unknown_receipt"]


def file_name(day: date) -> str:
    """The receipts file of ``day`` on the service's SFTP server."""
    return f"receipts-{day:%Y%m%d}.csv"


class _Frozen(BaseModel):
    """Frozen, no unknown fields; numbers are ``StrictInt`` (a JSON report reads its dates and lists back)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FileReceipt(_Frozen):
    """One line of the receipts file."""

    fkey: str = Field(pattern=FKEY_PATTERN)
    number: str = Field(pattern=r"^[0-9]{1,10}$")
    amount_vnd: StrictInt = Field(gt=0)
    status: Literal["valid", "cancelled"]
    line: int = Field(ge=2, description="Its line in the file.")


class SeenPayment(_Frozen):
    """A receipt the bus asked for: its fkey, the payment's amount, and whether the bus cancelled it."""

    fkey: str = Field(pattern=FKEY_PATTERN)
    amount_vnd: StrictInt = Field(gt=0)
    cancelled: bool = False


class Finding(_Frozen):
    """One discrepancy: what kind, which fkey, what the bus expected and what the file holds."""

    kind: FindingKind
    fkey: str
    detail: str = Field(max_length=500)
    numbers: tuple[str, ...] = ()
    expected_vnd: StrictInt | None = None
    found_vnd: tuple[StrictInt, ...] = ()


class ReconcileDay(_Frozen):
    """Reconcile the receipts of one day (Vietnam time)."""

    day: date


class ReceiptsReconciled(_Frozen):
    """``receipt.reconciled``: a day's payments and receipts compared; ``findings`` empty when they agree."""

    day: date
    file: str = Field(max_length=200)
    file_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    payments: int = Field(ge=0, description="Receipts the bus asked for that day.")
    receipts: int = Field(ge=0, description="Lines in the service's file.")
    findings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the day reconciles: no finding."""
        return not self.findings


class FileProblem(ValueError):
    """The receipts file is not what the contract says; the message names the file, line and column."""


def parse_receipts_file(data: bytes, *, name: str) -> list[FileReceipt]:
    """The lines of a receipts file.

    Raises:
        FileProblem: not UTF-8, another header, a line with the wrong number of fields, or a field of the wrong
            form (``name:LINE: column: reason``); a whole file is refused rather than half-read.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"{name}: not UTF-8 (byte {exc.start})") from None
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != FILE_COLUMNS:
            raise FileProblem(f"{name}:1: the header must be {','.join(FILE_COLUMNS)}")
        return [_line(row, name, number) for number, row in enumerate(rows, start=2) if row]
    except csv.Error as exc:
        raise FileProblem(f"{name}:{rows.line_num}: not CSV ({exc})") from None


def _line(row: list[str], name: str, line: int) -> FileReceipt:
    if len(row) != len(FILE_COLUMNS):
        raise FileProblem(f"{name}:{line}: {len(row)} fields, {len(FILE_COLUMNS)} expected")
    values = dict(zip(FILE_COLUMNS, (v.strip() for v in row), strict=True))
    checks = (
        ("fkey", _FKEY.fullmatch(values["fkey"]) is not None, "not {phi|lephi}-{payment}"),
        ("number", _NUMBER.fullmatch(values["number"]) is not None, "not 1-10 digits"),
        ("amount_vnd", _AMOUNT.fullmatch(values["amount_vnd"]) is not None, "not a positive whole number of VND"),
        ("status", values["status"] in {"valid", "cancelled"}, "not valid or cancelled"),
    )
    for column, good, reason in checks:
        if not good:
            raise FileProblem(f"{name}:{line}: {column}: {values[column][:40]!r} is {reason}")
    return FileReceipt(
        fkey=values["fkey"],
        number=values["number"],
        amount_vnd=int(values["amount_vnd"]),
        status=values["status"],
        line=line,
    )


def compare(
    day: date,
    seen: list[SeenPayment],
    receipts: list[FileReceipt],
    *,
    seen_elsewhere: dict[str, SeenPayment] | None = None,
    file: str,
    file_sha256: str,
) -> ReceiptsReconciled:
    """Every discrepancy between the payments the bus saw on ``day`` and the service's receipts of that day.

    Args:
        day: the day reconciled.
        seen: the receipts the bus asked for that day.
        receipts: the file's lines.
        seen_elsewhere: receipts the bus asked for on other days whose fkeys the file names (a payment asked
            for just before midnight and issued just after): compared, never "unknown".
        file: the file's name, for the report.
        file_sha256: its digest, for the report.
    """
    by_fkey: dict[str, list[FileReceipt]] = defaultdict(list)
    for receipt in receipts:
        by_fkey[receipt.fkey].append(receipt)
    findings: list[Finding] = []
    expected = {p.fkey: p for p in seen}
    for payment in seen:
        findings += _judge(payment, by_fkey.get(payment.fkey, []))
    others = seen_elsewhere or {}
    for fkey, lines in sorted(by_fkey.items()):
        if fkey in expected:
            continue
        if fkey in others:
            findings += [f for f in _judge(others[fkey], lines) if f.kind != "missing"]
            continue
        valid = [r for r in lines if r.status == "valid"]
        if valid:
            findings.append(
                Finding(
                    kind="unknown_receipt",
                    fkey=fkey,
                    detail=f"{len(valid)} valid receipt(s) for a payment the bus never saw",
                    numbers=tuple(r.number for r in valid),
                    found_vnd=tuple(r.amount_vnd for r in valid),
                )
            )
    return ReceiptsReconciled(
        day=day,
        file=file,
        file_sha256=file_sha256,
        payments=len(seen),
        receipts=len(receipts),
        findings=tuple(sorted(findings, key=lambda f: (f.fkey, f.kind))),
    )


def _judge(payment: SeenPayment, lines: list[FileReceipt]) -> list[Finding]:
    """The findings of one payment against its receipts (of any status) in the file."""
    valid = [r for r in lines if r.status == "valid"]

    def finding(kind: FindingKind, detail: str) -> Finding:
        return Finding(
            kind=kind,
            fkey=payment.fkey,
            detail=detail[:500],
            numbers=tuple(r.number for r in valid),
            expected_vnd=payment.amount_vnd,
            found_vnd=tuple(r.amount_vnd for r in valid),
        )

    if payment.cancelled:
        return [finding("cancelled_but_valid", "the bus cancelled it; the file has it valid")] if valid else []
    out: list[Finding] = []
    if not valid:
        out.append(finding("missing", "no valid receipt for a payment the bus saw"))
    elif len(valid) > 1:
        out.append(finding("duplicate", f"{len(valid)} valid receipts for one payment"))
    wrong = [r for r in valid if r.amount_vnd != payment.amount_vnd]
    if wrong:
        lines_text = ", ".join(f"line {r.line}: {r.amount_vnd}" for r in wrong)
        out.append(finding("amount_mismatch", f"payment {payment.amount_vnd} VND; {lines_text}"))
    return out


def render_text(result: ReceiptsReconciled) -> str:
    """The report as an operator reads it: a summary line, then one line per finding."""
    head = f"receipts {result.day}: {result.payments} payments, {result.receipts} receipts in {result.file}: " + (
        "ok" if result.ok else f"{len(result.findings)} finding(s)"
    )
    lines = [head]
    for f in result.findings:
        numbers = ",".join(f.numbers) or "-"
        lines.append(f"{f.kind:<20} {f.fkey:<40} numbers={numbers} {f.detail}")
    return "\n".join(lines) + "\n"
