"""The land system's callback: ``POST /callbacks/vilis/{Action}/{securityCode}`` ▶ ``vilis.status_changed``.

Where it sits: one entry of the callback registry (``bus/ingress/systems.py``), served by
``bus/ingress/callbacks.py``. The land system (VBDLIS/ILIS, "VILIS") posts a JSON body to the route shape of
TH's VBDLIS controller [F] and expects ``{"Result": int, "Message": str}`` back, ``Result`` 1 on success
and 0 otherwise, with HTTP statuses as the other doors use them. Its only credential is the security code
in the path (``IGATE_BUS_VILIS_SECURITY_CODE``), compared in constant time and never logged: the log and
the metrics name the route template, never the path. The body's model is in ``schemas/vilis.py``, its
mapping in ``adapters/vilis_to_bus.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from adapters.vilis_to_bus import VILIS_ACTIONS, vilis_action, vilis_event
from bus.ingress.callbacks import Callback
from bus.ingress.openapi import RETRY_AFTER, Responses, unavailable
from bus.ingress.problems import ErrorCode, Problem
from bus.ingress.requests import JSON_TYPE, read_json

if TYPE_CHECKING:
    from datetime import datetime

    from fastapi import Request

    from bus.ingress.settings import IngressSettings
    from schemas.envelope import Event


class VilisReply(BaseModel):
    """What the land system expects back ([F] TH ``ProvideToVBLISBaseResponse``), plus our error code."""

    Result: Literal[0, 1] = Field(description="1 received, 0 refused.")
    Message: str = Field(description="Short message for the land system's operator (Vietnamese).")
    event_id: str | None = Field(default=None, description="The result event's id, once accepted.")
    error: ErrorCode | None = Field(default=None, description="Why it was refused.")
    detail: str | None = Field(default=None, description="The precise reason, in words.")


#: what the land system's operator reads in ``Message`` (Vietnamese, as TH's replies are)
MESSAGES: Final[dict[str, str]] = {
    "accepted": "Đã tiếp nhận",
    "duplicate": "Đã tiếp nhận trước đó",
    "bad_security_code": "Mã bảo mật không chính xác",
    "retry": "Hệ thống đang bận, vui lòng gửi lại sau",
    "refused": "Dữ liệu không hợp lệ",
}


def render(problem: Problem) -> JSONResponse:
    """A refusal as the land system reads it: ``Result`` 0, a Vietnamese ``Message``, our code and detail."""
    key = "retry" if problem.status in {408, 409, 503} else problem.code
    message = MESSAGES.get(key, MESSAGES["refused"])
    reply = VilisReply.model_validate(
        {"Result": 0, "Message": message, "error": problem.code, "detail": problem.detail}
    )
    return JSONResponse(reply.model_dump(exclude_none=True), problem.status, headers=problem.headers())


def reply(event: Event, duplicate: bool) -> JSONResponse:
    """Success as the land system reads it: ``Result`` 1 and the event's id."""
    message = MESSAGES["duplicate" if duplicate else "accepted"]
    body = VilisReply(Result=1, Message=message, event_id=str(event.envelope.event_id))
    return JSONResponse(body.model_dump(exclude_none=True))


async def receive(request: Request, cfg: IngressSettings, now: datetime) -> dict[str, Any]:
    """The action from the path, the body (JSON, bounded), and its ``vilis.status_changed`` envelope."""
    action = vilis_action(str(request.path_params.get("action", "")))
    data = await read_json(request, cfg)
    return vilis_event(action, data, now=now)


_V = {"model": VilisReply}
RESPONSES: Final[Responses] = {
    400: {**_V, "description": "Empty body or invalid JSON."},
    401: {**_V, "description": "Wrong security code."},
    404: {**_V, "description": "Unknown action, or land-system callbacks are not enabled."},
    408: {**_V, "description": "The body did not arrive in time."},
    409: {**_V, "description": "The same call is still being published.", "headers": RETRY_AFTER},
    413: {**_V, "description": "Body over the size limit."},
    415: {**_V, "description": "Not application/json."},
    422: {**_V, "description": "The body does not fit the action, or the result event would be invalid."},
    503: unavailable(_V),
}
_ACTION = "The land system's call, e.g. KetThucHoSo."
_CODE = "The land system's shared security code."

VILIS: Final = Callback(
    system="vilis",
    title="land-system",
    method="POST",
    path="/callbacks/vilis/{action}/{security_code}",
    usage="POST /callbacks/vilis/{action}/{security_code}",
    credential=lambda request: request.path_params.get("security_code"),
    bad_credential=("bad_security_code", "the security code in the path is wrong"),
    receive=receive,
    reply=reply,
    render=render,
    summary="Land system (VBDLIS/ILIS) callback, in TH's route shape {Action}/{securityCode}",
    description="Turn a land-system call into ``vilis.status_changed`` on ``bus.results``; reply "
    "``{Result, Message}``.",
    response_model=VilisReply,
    responses=RESPONSES,
    openapi_extra={
        "parameters": [
            {
                "name": "action",
                "in": "path",
                "required": True,
                "description": _ACTION,
                "schema": {"type": "string", "title": "Action", "description": _ACTION, "enum": sorted(VILIS_ACTIONS)},
            },
            {
                "name": "security_code",
                "in": "path",
                "required": True,
                "description": _CODE,
                "schema": {"type": "string", "title": "Security Code", "description": _CODE},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {JSON_TYPE: {"schema": {"type": "object", "description": "The action's body."}}},
        },
    },
    log_fields=lambda request: {"action": str(request.path_params.get("action", ""))[:60]},
)
