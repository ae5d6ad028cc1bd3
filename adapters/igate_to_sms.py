"""iGate's events → the SMS a citizen gets: the OTP of an online submission, and the status notices.

Where it sits: the adapter step of the SMS routes (event → route ``sms-otp`` / ``sms-notices`` → **adapter**
→ ``sms.send_otp`` / ``sms.send_notice`` → the gateways). Pure: no I/O, no clock (``now`` is unused: dates
come from the event), no logging. Texts come from the catalogue (``schemas/sms_catalogue.py``); the phone is
turned into the gateways' ``84…`` form (docs/domain.md section 0), and an OTP's expiry is its event's
``occurred_at`` plus ``ttl_s``, so a redelivered event expires when the first one would have.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from adapters.registry import adapter
from schemas.envelope import format_validation_error
from schemas.errors import MappingError
from schemas.igate import to_msisdn
from schemas.sms import OtpSms, SmsNotice
from schemas.sms_catalogue import CATALOGUE, CatalogueError, Template

if TYPE_CHECKING:
    from schemas.envelope import Event

#: Vietnam has kept UTC+7 since 1975; a fixed offset needs no tz database
VIETNAM_TIME: Final = timezone(timedelta(hours=7), "ICT")
#: the events that give a citizen a notice, with the template each takes (returned: by return method)
NOTICE_EVENTS: Final = (
    "dossier.submitted",
    "dossier.received",
    "dossier.refused",
    "dossier.supplement_requested",
    "dossier.result_ready",
    "dossier.overdue_apology",
    "dossier.returned",
)


def _day(at: datetime) -> str:
    return f"{at.astimezone(VIETNAM_TIME):%d/%m/%Y}"


def _render(template: Template, **values: str) -> tuple[str, str]:
    try:
        return template.render(**values)
    except CatalogueError as exc:
        raise MappingError(str(exc), field="payload") from None


@adapter(accepts=("dossier.otp_requested",), produces=OtpSms)
def otp(event: Event, *, now: datetime) -> OtpSms:
    """The OTP SMS: the code, its lifetime in minutes, and when it expires (``occurred_at`` + ``ttl_s``).

    Raises:
        MappingError: the payload cannot make a valid request (never quoting the code).
    """
    del now
    payload: Any = event.payload
    expires_at = event.envelope.occurred_at + timedelta(seconds=payload.ttl_s)
    text, plain = _render(CATALOGUE["otp"], otp=payload.otp_code, minutes=str(max(1, payload.ttl_s // 60)))
    try:
        return OtpSms(
            phone=to_msisdn(payload.phone),
            template="otp",
            text=text,
            plain_text=plain,
            otp_code=payload.otp_code,
            expires_at=expires_at,
        )
    except (ValidationError, ValueError) as exc:
        detail = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise MappingError(detail.replace(payload.otp_code, "***"), field="payload.phone") from None


def _notice_values(event: Event) -> tuple[str, dict[str, str]]:
    """The template key and the placeholder values of a notice event."""
    payload: Any = event.payload
    kind = event.envelope.event_type
    code = event.envelope.dossier_code
    if not code:
        raise MappingError(f"a {kind} notice needs the dossier code", field="dossier_code")
    values = {"code": code}
    if kind == "dossier.received":
        values["appointment"] = _day(payload.dates.appointment)
    elif kind == "dossier.supplement_requested":
        values["days"] = str(payload.deadline_days)
    elif kind == "dossier.overdue_apology":
        values["old"] = _day(payload.old_appointment)
        values["new"] = _day(payload.new_appointment)
    elif kind == "dossier.returned":
        kind = f"dossier.returned.{payload.return_method}"
    return kind, values


@adapter(accepts=NOTICE_EVENTS, produces=SmsNotice)
def notice(event: Event, *, now: datetime) -> SmsNotice:
    """The status notice for a dossier event, from the catalogue, to the applicant's mobile.

    Raises:
        MappingError: the applicant has no mobile phone (``payload.applicant.phone``), or the dossier no code.
    """
    del now
    phone = getattr(getattr(event.payload, "applicant", None), "phone", None)
    if not phone:
        raise MappingError("the applicant has no mobile phone to send the notice to", field="payload.applicant.phone")
    key, values = _notice_values(event)
    text, plain = _render(CATALOGUE[key], **values)
    try:
        return SmsNotice(phone=to_msisdn(phone), template=key, text=text, plain_text=plain)
    except (ValidationError, ValueError) as exc:
        detail = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise MappingError(detail, field="payload.applicant.phone") from None
