"""eSMS's delivery report (``schemas/esms.py``) → ``sms.delivery_report`` on ``bus.results``.

Where it sits: the adapter of the SMS aggregator's callback, at the start of the result side of a message's
path (eSMS → ingress ``GET /callbacks/esms`` → **this** → ``parse_event`` → ``bus.results``). Pure: no I/O,
no clock (``now`` is passed in), no logging.

The rules: parameter names are matched case-insensitively (eSMS's own spelling varies between its
documents); a blank optional parameter counts as absent; the phone number is passed on as given (NFC) and
normalised to the national form by the payload model. A later status of the same SMS is a new fact, so the
``event_id`` is a UUID5 of ``SMSID`` and ``SendStatus``: the same report retried is one event.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from adapters.to_bus import CallbackRejected, callback_event_id, envelope
from schemas.envelope import format_validation_error
from schemas.esms import ESMS_PARAMS, EsmsCallback

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

#: the result event type a delivery report becomes
SMS_EVENT: Final = "sms.delivery_report"


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
