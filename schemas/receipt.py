"""The Finance e-receipt service's requests and replies (VNPT Invoice over SOAP, docs/domain.md section 4).

Where it sits: between the adapter (``adapters/igate_to_receipt.py``, which builds these) and the connector
(``connectors/receipt.py``, which sends them and parses the service's answers back into these). Money is
involved, so the models are strict: amounts are integer VND (``StrictInt``, never a float, a string or a
bool), positive and bounded; a receipt's total is the sum of its lines and its amount in words is the one
:func:`amount_in_words` gives, checked when the model is built.

The ``fkey`` is the service's idempotency key: ``{kind}-{payment_ref}`` ([F] TH), one receipt per kind of fee
of one payment, derived from the payment, never from the event that carried it, so two events of one payment
name the same receipt.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Final, Literal, Self

from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from schemas.igate import MAX_AMOUNT_VND
from schemas.pii import sensitive

#: ``{phi|lephi}-{payment_ref}`` (the same pattern as ``receipt.cancel_requested`` and ``receipt.issued``)
FKEY_PATTERN: Final = r"^(phi|lephi)-[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: [F] ERR:13: the fkey was already used: the receipt exists, fetch it
ERR_DUPLICATE_FKEY: Final = 13
#: [F] the ERR codes of docs/domain.md section 4 with what they mean
ERR_MEANINGS: Final[dict[int, str]] = {
    1: "bad login or no permission",
    2: "empty pattern or serial",
    3: "bad invoice XML",
    5: "publish failed",
    6: "out of receipt numbers",
    7: "no such user",
    10: "batch too big",
    11: "bad pattern or serial",
    13: "fkey already used",
    15: "date in the future",
    20: "pattern or serial not registered",
    21: "duplicate number",
    30: "date before the last issued receipt",
}
#: ERR codes that are the bus's account at fault (an operator must act), not the receipt
CREDENTIAL_ERRORS: Final = frozenset({1, 7})
#: ERR codes worth trying again later: the service failed or ran out of numbers, the receipt is fine
TRANSIENT_ERRORS: Final = frozenset({5, 6})

FeeKind = Literal["phi", "lephi"]
#: [F] the invoice line's Extra2: 0 phí, 1 lệ phí
KIND_CODE: Final[dict[str, str]] = {"phi": "0", "lephi": "1"}
PaymentMethod = Literal["TM", "CK", "TTO"]
ReceiptStatus = Literal["valid", "replaced", "cancelled"]

#: [A] the fee codes (FEEID) registered with the e-receipt service, with their kind. The service refuses a
#: line whose FEEID it does not know; the bus refuses it first, naming the field, so no call is wasted and no
#: half-issued payment exists. A province adds its own here (and registers them with the service).
FEE_CATALOGUE: Final[dict[str, FeeKind]] = {
    "PHI-TDHS": "phi",  # phí thẩm định hồ sơ (land)
    "PHI-TDCN": "phi",  # phí thẩm định cấp quyền sử dụng đất
    "PHI-KTDD": "phi",  # phí khai thác tài liệu đất đai
    "PHI-CCHT": "phi",  # phí chứng thực
    "LP-CGCN": "lephi",  # lệ phí cấp Giấy chứng nhận
    "LP-DKBD": "lephi",  # lệ phí đăng ký biến động
    "LP-HT": "lephi",  # lệ phí hộ tịch
    "LP-DKKD": "lephi",  # lệ phí đăng ký kinh doanh
}

_DIGITS: Final = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")
#: the name of each group of three digits, from the right; past "tỷ" the names repeat with "tỷ" after them
_GROUPS: Final = ("", "nghìn", "triệu", "tỷ", "nghìn tỷ", "triệu tỷ")


def _three(n: int, *, leading: bool) -> list[str]:
    """Words of 0-999 in a group; a group after the first says its zero hundreds ("không trăm")."""
    hundreds, tens, units = n // 100, n // 10 % 10, n % 10
    words: list[str] = []
    if hundreds or not leading:
        words += [_DIGITS[hundreds], "trăm"]
    if tens == 0:
        if units and words:
            words.append("linh")
    elif tens == 1:
        words.append("mười")
    else:
        words += [_DIGITS[tens], "mươi"]
    if units == 1 and tens >= 2:
        words.append("mốt")
    elif units == 5 and tens >= 1:
        words.append("lăm")
    elif units:
        words.append(_DIGITS[units])
    return words


def amount_in_words(amount: int) -> str:
    """The amount in Vietnamese words as a receipt prints it: ``1250000`` → "Một triệu hai trăm năm mươi nghìn đồng".

    Raises:
        ValueError: not a positive whole number of VND within :data:`schemas.igate.MAX_AMOUNT_VND`.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT_VND:
        raise ValueError(f"an amount in words needs a whole number of VND in 1..{MAX_AMOUNT_VND}")
    groups: list[int] = []
    rest = amount
    while rest:
        groups.append(rest % 1000)
        rest //= 1000
    words: list[str] = []
    for index in range(len(groups) - 1, -1, -1):
        value = groups[index]
        if value == 0:
            continue
        words += _three(value, leading=index == len(groups) - 1)
        if _GROUPS[index]:
            words.append(_GROUPS[index])
    text = " ".join([*words, "đồng"])
    return text[0].upper() + text[1:]


class ReceiptModel(BaseModel):
    """Strict and frozen: the bus never coerces a value on the way to a receipt."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Vnd = StrictInt


class ReceiptLine(ReceiptModel):
    """One fee on a receipt (``<Product>``): FEEID, kind, procedure code, name, price = total, quantity 1."""

    fee_code: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: str = Field(min_length=1, max_length=300)
    amount_vnd: Vnd = Field(gt=0, le=MAX_AMOUNT_VND)


class IssueReceipt(ReceiptModel):
    """Issue the receipt of one kind of fee of one payment (``ImportAndPublishInv``).

    ``fkey`` is ``{kind}-{payment_ref}``: the service issues at most one receipt per fkey and answers ERR:13
    to a second attempt, so it is what makes issuance exactly once across duplicate events and replays.
    """

    fkey: str = Field(pattern=FKEY_PATTERN)
    kind: FeeKind
    payment_ref: str = Field(min_length=1, max_length=64)
    dossier_code: str = Field(min_length=1, max_length=60)
    procedure_code: str | None = Field(default=None, max_length=60)
    payer_name: str = sensitive(min_length=1, max_length=200)
    payer_address: str | None = sensitive(default=None, max_length=500)
    payer_email: str | None = sensitive(default=None, max_length=200)
    method: PaymentMethod
    paid_on: date
    lines: tuple[ReceiptLine, ...] = Field(min_length=1, max_length=50)
    total_vnd: Vnd = Field(gt=0, le=MAX_AMOUNT_VND)
    amount_in_words: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.fkey != f"{self.kind}-{self.payment_ref}":
            raise ValueError(f"fkey must be {self.kind}-{self.payment_ref}, not {self.fkey}")
        if self.total_vnd != sum(line.amount_vnd for line in self.lines):
            raise ValueError("total_vnd is not the sum of the lines")
        if self.amount_in_words != amount_in_words(self.total_vnd):
            raise ValueError("amount_in_words does not say total_vnd")
        return self

    def xml(self) -> str:
        """``xmlInvData`` ([F] docs/domain.md section 4), built as a tree so no value can break out of it."""
        root = etree.Element("Invoices")
        inv = etree.SubElement(root, "Inv")
        etree.SubElement(inv, "key").text = self.fkey
        invoice = etree.SubElement(inv, "Invoice")
        fields: list[tuple[str, str | None]] = [
            ("CusCode", self.dossier_code),
            ("CusName", self.payer_name),
            ("CusAddress", self.payer_address or ""),
            ("Email", self.payer_email or ""),
            ("ArisingDate", self.paid_on.strftime("%d/%m/%Y")),
            ("PaymentMethod", self.method),
            ("PaymentStatus", "1"),
            ("Extra1", self.dossier_code),
        ]
        for tag, value in fields:
            etree.SubElement(invoice, tag).text = value
        products = etree.SubElement(invoice, "Products")
        for line in self.lines:
            product = etree.SubElement(products, "Product")
            for tag, value in (
                ("FEEID", line.fee_code),
                ("Extra1", self.payment_ref),
                ("Extra2", KIND_CODE[self.kind]),
                ("Code", self.procedure_code or ""),
                ("ProdName", line.name),
                ("ProdUnit", "Lần"),
                ("ProdQuantity", "1"),
                ("ProdPrice", str(line.amount_vnd)),
                ("Total", str(line.amount_vnd)),
                ("Amount", str(line.amount_vnd)),
            ):
                etree.SubElement(product, tag).text = value
        for tag, value in (
            ("Total", str(self.total_vnd)),
            ("VATRate", "0"),
            ("VATAmount", "0"),
            ("Amount", str(self.total_vnd)),
            ("AmountInWords", self.amount_in_words),
        ):
            etree.SubElement(invoice, tag).text = value
        return str(etree.tostring(root, encoding="unicode"))


class CancelReceipt(ReceiptModel):
    """Cancel an issued receipt: ``UnConfirmPaymentFkey``, then ``cancelInv`` ([F] TH)."""

    fkey: str = Field(pattern=FKEY_PATTERN)
    reason: str = Field(min_length=1, max_length=500)


class ReceiptCancelled(ReceiptModel):
    """What a cancellation left: the receipt, now cancelled for good."""

    fkey: str = Field(pattern=FKEY_PATTERN)
    pattern: str = Field(min_length=1, max_length=20)
    serial: str = Field(min_length=1, max_length=20)
    number: str = Field(pattern=r"^[0-9]{1,10}$")
    status: Literal["cancelled"] = "cancelled"


class FoundReceipt(ReceiptModel):
    """A receipt as the service's lookup by fkey describes it ([A] ``listInvByCusFkey``'s ``<Item>``)."""

    fkey: str = Field(pattern=FKEY_PATTERN)
    pattern: str = Field(min_length=1, max_length=20)
    serial: str = Field(min_length=1, max_length=20)
    number: str = Field(pattern=r"^[0-9]{1,10}$")
    amount_vnd: Vnd = Field(gt=0, le=MAX_AMOUNT_VND)
    status: ReceiptStatus
    issued_on: date


_NUMBER: Final = re.compile(r"^[0-9]{1,10}$")
#: [A] listInvByCusFkey's ``status``: 1 signed, 2 declared to the tax office (both valid), 3 replaced, 5 cancelled
_STATUS: Final[dict[str, ReceiptStatus]] = {"1": "valid", "2": "valid", "3": "replaced", "5": "cancelled"}
_ERR: Final = re.compile(r"^ERR:(?P<code>-?[0-9]{1,4})(?::.*)?$", re.DOTALL)


class Answer(ReceiptModel):
    """One ``OK:…`` or ``ERR:n`` string the service answers with, split."""

    ok: bool
    detail: str = ""
    code: int | None = None

    @classmethod
    def parse(cls, text: str) -> Self:
        """Split an answer; anything but ``OK:`` or ``ERR:n`` is a :class:`ValueError` (garbage)."""
        if text.startswith("OK:"):
            return cls(ok=True, detail=text[3:])
        match = _ERR.match(text)
        if match is None:
            raise ValueError("an answer that is neither OK: nor ERR:n")
        return cls(ok=False, code=int(match["code"]))


def parse_issued(text: str, fkey: str) -> tuple[str, str, str]:
    """``(pattern, serial, number)`` of an ``OK:`` answer to ImportAndPublishInv for ``fkey``.

    Raises:
        ValueError: the answer is not that shape, or names another fkey.
    """
    # the serial (AA-19E) and the fkey (phi-PG…) both hold dashes: split on the fkey we sent
    pattern, semicolon, rest = text.removeprefix("OK:").partition(";")
    serial, sep, number = rest.rpartition(f"-{fkey}_")
    if not text.startswith("OK:") or not semicolon or not sep or not pattern or not serial:
        raise ValueError("OK: answer is not OK:pattern;serial-fkey_number for the fkey sent")
    if not _NUMBER.match(number) or len(pattern) > 20 or len(serial) > 20:
        raise ValueError("OK: answer has a malformed pattern, serial or number")
    return pattern, serial, number


def _day(text: str) -> date:
    """A ``dd/MM/yyyy`` date (the service's); a calendar date has no time zone."""
    day, month, year = (int(part) for part in text.split("/"))
    return date(year, month, day)


def parse_found(xml: str) -> list[FoundReceipt]:
    """The ``<Item>`` elements of a ``listInvByCusFkey`` answer ([A] the shape of docs/domain.md section 4).

    Raises:
        ValueError: not that XML (a DOCTYPE or entities included: the parser loads neither).
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(xml.encode(), parser=parser)
    except etree.XMLSyntaxError:
        raise ValueError("lookup answer is not XML") from None
    if root.getroottree().docinfo.doctype or root.tag != "Data":
        raise ValueError("lookup answer is not a <Data> document")
    found: list[FoundReceipt] = []
    for item in root.findall("Item"):
        values = {child.tag: (child.text or "").strip() for child in item if isinstance(child.tag, str)}
        try:
            found.append(
                FoundReceipt(
                    fkey=values.get("fkey", ""),
                    pattern=values.get("pattern", ""),
                    serial=values.get("serial", ""),
                    number=values.get("invNum", ""),
                    amount_vnd=int(values.get("amount", "x")),
                    status=_STATUS[values.get("status", "")],
                    issued_on=_day(values.get("publishDate", "")),
                )
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"lookup answer has a malformed <Item>: {type(exc).__name__}") from None
    return found
