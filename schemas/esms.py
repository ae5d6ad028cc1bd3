"""The eSMS aggregator's delivery report: the query of the GET it calls back with.

Where it sits: before the start of a message's path. eSMS reports each SMS's delivery with an HTTPS
``GET`` of ``SMSID, SendStatus, SendSuccess, SendFailed, RequestId, telcoid, phonenumber`` [F] (eSMS docs)
and retries 5 times on a timeout. The ingress (``bus/ingress/esms.py``) checks the caller's token, and
``adapters/esms_to_bus.py`` reads the query with :class:`EsmsCallback` and maps it into
``sms.delivery_report``. The outbound half (sending an SMS through eSMS) belongs here too when its
connector comes.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field


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
#: the parameters eSMS always sends (the rest may be absent or blank)
ESMS_REQUIRED: Final = frozenset(name for name, f in EsmsCallback.model_fields.items() if f.is_required())
