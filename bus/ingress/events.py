"""``POST /events``: iGate pushes one signed event envelope; it is answered ``202`` once the broker has it.

Where it sits: the door at the start of a message's path for iGate, which speaks HTTP rather than AMQP.
The request goes through size cap ▶ signature and timestamp window (``bus/signing.py``) ▶ content type ▶
the one strict parser (:func:`schemas.envelope.parse_event`, the same rules the worker applies to what
arrives over AMQP) ▶ replay cache (``bus/ingress/replay.py``) ▶ confirmed publish on ``igate.events``
(``bus/ingress/publish.py``). The answers are listed in ``bus/ingress/__init__.py`` and in
:data:`RESPONSES`, which ``/openapi.json`` carries.
"""

from __future__ import annotations

import difflib
import hashlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from fastapi import Request  # noqa: TC002 - FastAPI reads the endpoints' annotations at run time
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from adapters.to_bus import canonical_json
from bus.ingress.handling import handle
from bus.ingress.openapi import ERROR, RETRY_AFTER, Responses, unavailable
from bus.ingress.problems import Problem
from bus.ingress.publish import publish, raise_for_verdict
from bus.ingress.publisher import Outbound
from bus.ingress.replay import Verdict
from bus.ingress.requests import JSON_TYPE, is_json, read_body, too_deep
from bus.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, verify
from routes.topology import EVENTS_EXCHANGE
from schemas.envelope import loads_strict, parse_event
from schemas.errors import InvalidEvent
from schemas.events import EVENT_PAYLOADS

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bus.ingress.state import IngressState

PATH: Final = "/events"


class Accepted(BaseModel):
    """The broker confirmed the event: it is stored."""

    status: Literal["accepted"] = "accepted"
    event_id: str = Field(description="The envelope's event_id.")
    event_type: str = Field(description="The envelope's event_type.")


class Duplicate(BaseModel):
    """This event_id with the same content was accepted before; nothing was published again."""

    status: Literal["duplicate"] = "duplicate"
    event_id: str
    event_type: str
    accepted_at: datetime = Field(description="When it was first accepted.")


def classify(exc: InvalidEvent, body: bytes, accepted: frozenset[str]) -> Problem:
    """Turn the strict parser's refusal into the precise 4xx.

    Args:
        exc: what :func:`schemas.envelope.parse_event` raised.
        body: the request body.
        accepted: the event types this door takes.

    Returns:
        400 ``invalid_json``, or 422 ``event_type_not_accepted``, ``unknown_event_type`` or ``invalid_event``.
    """
    try:
        data = loads_strict(body, max_bytes=len(body) + 1)
    except InvalidEvent as json_exc:
        return Problem(400, "invalid_json", str(json_exc))
    except RecursionError:
        return too_deep()
    if exc.field == "event_type" and isinstance(data, dict):
        event_type = str(data.get("event_type"))[:100]
        if event_type in EVENT_PAYLOADS:
            return Problem(
                422,
                "event_type_not_accepted",
                f"event type {event_type!r} is not accepted here: result events enter through their "
                "system's callback, and POST /events takes iGate's events",
            )
        close = difflib.get_close_matches(event_type, sorted(accepted), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return Problem(422, "unknown_event_type", f"unknown event type {event_type!r}{hint}; no schema knows it")
    return Problem(422, "invalid_event", str(exc))


async def accept_event(request: Request, state: IngressState, fields: dict[str, Any]) -> JSONResponse:
    """Verify, validate and publish one event (the work of ``POST /events``).

    Raises:
        Problem: every refusal of the table in ``bus/ingress/__init__.py``.
    """
    cfg = state.cfg
    body = await read_body(request, limit=cfg.max_body_bytes, time_limit_s=cfg.body_timeout)
    try:
        verified = verify(
            [s.get_secret_value() for s in state.secrets.hmac],
            timestamp=request.headers.get(TIMESTAMP_HEADER),
            signature=request.headers.get(SIGNATURE_HEADER),
            body=body,
            now=time.time(),
            window_s=cfg.window,
        )
    except SignatureError as exc:
        raise Problem(401, exc.code, exc.detail) from None
    if not is_json(request.headers.get("content-type")):
        raise Problem(415, "unsupported_media_type", f"the body must be {JSON_TYPE} (UTF-8)")
    if not body:
        raise Problem(400, "empty_body", "the body is empty")
    models = {t: EVENT_PAYLOADS[t] for t in state.accepted}
    try:
        event = parse_event(
            body,
            payload_models=models,
            max_bytes=cfg.max_body_bytes,
            rules=state.rules,
            received_at=datetime.now(UTC),
        )
    except InvalidEvent as exc:
        raise classify(exc, body, state.accepted) from None
    except RecursionError:
        # json.loads stops at its own depth limit, but the NFC pass after it recurses as deep on a smaller
        # stack: a few hundred nested arrays get through the one and break the other
        raise too_deep() from None
    env = event.envelope
    event_id, event_type = str(env.event_id), env.event_type
    fields.update(
        event_id=event_id,
        event_type=event_type,
        dossier_code=env.dossier_code,
        correlation_id=env.correlation_id or event_id,  # the worker binds the same on each route's lines
    )
    digest = hashlib.sha256(canonical_json(event.as_dict())).hexdigest()
    verdict, seen = state.events.begin(event_id, digest=digest, signature=verified.signature)
    if verdict is Verdict.NEW:
        message = Outbound(
            body=body,
            exchange=EVENTS_EXCHANGE,
            event_id=event_id,
            event_type=event_type,
            correlation_id=env.correlation_id,
        )
        await publish(state, message, digest=digest, signature=verified.signature)
        fields["outcome"] = "accepted"
        return JSONResponse(Accepted(event_id=event_id, event_type=event_type).model_dump(), 202)
    raise_for_verdict(verdict, seen, event_id, retry_after=cfg.retry_after)
    assert seen is not None  # noqa: S101 - DUPLICATE always carries its entry
    fields["outcome"] = "duplicate"
    accepted_at = datetime.fromtimestamp(seen.accepted_at, UTC)
    dup = Duplicate(event_id=event_id, event_type=event_type, accepted_at=accepted_at)
    return JSONResponse(dup.model_dump(mode="json"), 200)


async def post_event(request: Request) -> JSONResponse:
    """Verify, validate and publish one iGate event; 202 only after the broker's confirm."""
    return await handle(request, accept_event)


RESPONSES: Final[Responses] = {
    200: {"model": Duplicate, "description": "Accepted before with the same content; nothing published again."},
    400: {**ERROR, "description": "Empty body or invalid JSON."},
    401: {**ERROR, "description": "Missing, malformed, stale or wrong signature."},
    408: {**ERROR, "description": "The body did not arrive in time."},
    409: {
        **ERROR,
        "description": "Replayed request, event_id conflict, or the event is in flight.",
        "headers": RETRY_AFTER,
    },
    413: {**ERROR, "description": "Body over the size limit."},
    415: {**ERROR, "description": "Not application/json."},
    422: {**ERROR, "description": "Unknown or not accepted event type, or the envelope/payload is invalid."},
    503: unavailable(ERROR),
}
SIGNATURE_PARAMETERS: Final = [
    {
        "name": TIMESTAMP_HEADER,
        "in": "header",
        "required": True,
        "description": "Unix time (seconds) the request was signed at; ±window (300 s) of our clock.",
        "schema": {"type": "string", "pattern": r"^[0-9]{1,12}$"},
    },
    {
        "name": SIGNATURE_HEADER,
        "in": "header",
        "required": True,
        "description": "sha256= + hex HMAC-SHA256(secret, timestamp + '.' + raw body).",
        "schema": {"type": "string", "pattern": r"^sha256=[0-9a-f]{64}$"},
    },
]


def mount(app: FastAPI) -> None:
    """Add ``POST /events`` to the app, with its documented answers and signature headers."""
    app.add_api_route(
        PATH,
        post_event,
        methods=["POST"],
        status_code=202,
        response_model=Accepted,
        responses=RESPONSES,
        summary="Publish one signed iGate event",
        openapi_extra={
            "parameters": SIGNATURE_PARAMETERS,
            "requestBody": {
                "required": True,
                "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/EventEnvelope"}}},
            },
        },
    )
