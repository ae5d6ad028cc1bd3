"""What the SMS routes hand the SMS connector: one notice or one OTP, ready to send, and what comes back.

Where it sits: between the adapter and the connector (event → route → ``adapters/igate_to_sms.py`` →
**these requests** → ``connectors/sms.py`` → the gateways of docs/domain.md section 5). The adapter renders
the Vietnamese text from the catalogue (``schemas/sms_catalogue.py``) and its no-diacritics form, so the
connector can send whichever form a gateway takes without knowing the catalogue.

Also here, pure and shared by adapter, connector and simulators: the GSM-7 alphabet, the segment count of a
text (GSM-7 160/153 septets a segment, UCS-2 70/67 characters), the no-diacritics fold (``Đ`` → ``D``), and the
phone forms (``0…`` at the one-stop shop, ``84…`` at the gateways, docs/domain.md section 0).

The OTP code is a secret: its field is marked :func:`~schemas.pii.secret`, so it is masked in the logs, in
``dlq list``/``show`` and even in ``dlq show --reveal``, and the connector registers it as a live secret
(:func:`schemas.pii.live_secret`) while it sends, so no text that echoes it (a gateway's fault) reaches a log.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from schemas.igate import to_msisdn
from schemas.pii import secret, sensitive

#: GSM 03.38 basic alphabet (one septet each)
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: GSM 03.38 extension table (an escape and a septet: two each)
GSM7_EXTENDED: Final = frozenset("^{}\\[~]|€\f")
#: characters of one segment, alone and as a part of a concatenated message (6 octets of UDH)
GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

Encoding = Literal["gsm7", "ucs2"]


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` is in the GSM-7 alphabet (basic or extension)."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def encoding_of(text: str) -> Encoding:
    """``gsm7`` when the text fits the GSM-7 alphabet, else ``ucs2`` (any Vietnamese diacritic forces it)."""
    return "gsm7" if is_gsm7(text) else "ucs2"


def segments(text: str) -> int:
    """How many SMS segments ``text`` takes: GSM-7 160 septets (153 a part), UCS-2 70 UTF-16 units (67 a part)."""
    if is_gsm7(text):
        units = sum(2 if ch in GSM7_EXTENDED else 1 for ch in text)
        single, part = GSM7_SINGLE, GSM7_PART
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, part = UCS2_SINGLE, UCS2_PART
    if units <= single:
        return 1
    return math.ceil(units / part)


_FOLD: Final = str.maketrans({"Đ": "D", "đ": "d"})


def fold_diacritics(text: str) -> str:
    """The no-diacritics form brandname gateways without Unicode take: ``Đắk Lắk`` → ``Dak Lak``.

    ``Đ``/``đ`` are letters of their own (no combining mark to strip), so they are mapped first; then every
    combining mark is dropped. What is still outside GSM-7 afterwards becomes ``?``, so the result always
    counts as GSM-7.
    """
    decomposed = unicodedata.normalize("NFD", text.translate(_FOLD))
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    plain = unicodedata.normalize("NFC", plain)
    return "".join(ch if ch in GSM7_BASIC or ch in GSM7_EXTENDED else "?" for ch in plain)


def _msisdn(value: str) -> str:
    msisdn = to_msisdn(value)
    if msisdn != value:
        raise ValueError("expected the gateways' form 84xxxxxxxxx")
    return msisdn


#: a mobile number in the gateways' form ``84xxxxxxxxx``, on a Vietnamese mobile network's prefix
Msisdn = Annotated[str, Field(min_length=11, max_length=11), AfterValidator(_msisdn)]
#: one SMS text as rendered from the catalogue; a concatenated SMS longer than 6 parts is never sent
SmsText = Annotated[str, Field(min_length=1, max_length=6 * GSM7_PART)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    phone: Msisdn = sensitive()
    template: str = Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$", description="The catalogue entry rendered.")
    text: SmsText = sensitive(description="The Vietnamese text, with diacritics (UCS-2).")
    plain_text: SmsText = sensitive(description="The same text without diacritics (GSM-7).")


class SmsNotice(_Request):
    """A status notice to a citizen (received, refused, supplement, result, apology, by post).

    Notices wait out the quiet hours (``connectors/sms.py``): held, never dropped.
    """

    kind: Literal["notice"] = "notice"


class OtpSms(_Request):
    """A one-time code: sent at once, through whichever gateway works, and never after ``expires_at``."""

    kind: Literal["otp"] = "otp"
    otp_code: str = secret(
        pattern=r"^[0-9]{4,8}$", description="The code itself, only to mask it wherever it may echo."
    )
    expires_at: AwareDatetime = Field(description="When the code stops being valid: never sent after it.")


class SmsReceipt(BaseModel):
    """What a gateway answered for one SMS: which gateway took it, its message id, how it was encoded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    message_id: str = Field(min_length=1, max_length=100)
    request_id: str = Field(min_length=1, max_length=100, description="Our idempotency key, as the gateway saw it.")
    encoding: Encoding
    segments: int = Field(ge=1, le=6)
    duplicate: bool = Field(default=False, description="The gateway said it had this request id already.")
