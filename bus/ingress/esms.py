"""eSMS's delivery report: ``GET /callbacks/esms?token=...&SMSID=...&SendStatus=...`` ▶ ``sms.delivery_report``.

Where it sits: one entry of the callback registry (``bus/ingress/systems.py``), served by
``bus/ingress/callbacks.py``. The SMS aggregator reports delivery with an HTTPS ``GET`` [F] and retries 5
times on a timeout. It cannot sign, so the callback URL registered with eSMS carries a shared token as the
query parameter ``token`` [A] (``IGATE_BUS_ESMS_CALLBACK_TOKEN``), compared in constant time; uvicorn's
access log is off, so the query never reaches a log. The query's model is in ``schemas/esms.py``, its
mapping in ``adapters/esms_to_bus.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from adapters.esms_to_bus import esms_event
from bus.ingress.callbacks import Callback
from bus.ingress.openapi import ERROR, RETRY_AFTER, Responses, unavailable
from schemas.esms import ESMS_REQUIRED, EsmsCallback

if TYPE_CHECKING:
    from datetime import datetime

    from fastapi import Request

    from bus.ingress.settings import IngressSettings

#: the query parameter carrying the shared token
TOKEN: Final = "token"  # noqa: S105 - the parameter's name, not a credential


async def receive(request: Request, cfg: IngressSettings, now: datetime) -> dict[str, Any]:
    """The ``sms.delivery_report`` envelope of the query (the token left out)."""
    del cfg  # a GET has no body to bound
    params = {k: v for k, v in request.query_params.items() if k != TOKEN}
    return esms_event(params, now=now)


RESPONSES: Final[Responses] = {
    401: {**ERROR, "description": "Wrong or missing token."},
    404: {**ERROR, "description": "eSMS callbacks are not enabled."},
    409: {**ERROR, "description": "The same report is still being published.", "headers": RETRY_AFTER},
    422: {**ERROR, "description": "A parameter is missing or invalid."},
    503: unavailable(ERROR),
}
PARAMETERS: Final = [
    {
        "name": TOKEN,
        "in": "query",
        "required": True,
        "description": "The shared callback token.",
        "schema": {"type": "string"},
    },
    *(
        {"name": name, "in": "query", "required": name in ESMS_REQUIRED, "schema": {"type": "string"}}
        for name in EsmsCallback.model_fields
    ),
]

ESMS: Final = Callback(
    system="esms",
    title="eSMS",
    method="GET",
    path="/callbacks/esms",
    usage="GET /callbacks/esms?token=...&SMSID=...&SendStatus=...",
    credential=lambda request: request.query_params.get(TOKEN),
    bad_credential=("bad_token", "the token query parameter is missing or wrong"),
    receive=receive,
    summary="eSMS delivery report (GET, token in the query)",
    description="Turn an eSMS delivery report into ``sms.delivery_report`` on ``bus.results``.",
    responses=RESPONSES,
    openapi_extra={"parameters": PARAMETERS},
)
