"""The ingress's OpenAPI document (``GET /openapi.json``): the contract iGate and the callers build against.

Where it sits: beside the doors, describing them. Each door documents its own answers where it is defined
(``bus/ingress/events.py``, each callback system's module) with the shared pieces here; :func:`openapi`
adds what FastAPI cannot derive: the event envelope with the accepted event types, and the payload model of
each type under ``x-payload-schemas`` of ``POST /events``. schemathesis tests every answer against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from bus.ingress.problems import ErrorBody
from schemas.envelope import Envelope
from schemas.events import EVENT_PAYLOADS

if TYPE_CHECKING:
    from fastapi import FastAPI

Responses = dict[int | str, dict[str, Any]]

#: the answer model of a refusal in the ``{"error", "detail"}`` shape
ERROR: Final[dict[str, Any]] = {"model": ErrorBody}
#: the ``Retry-After`` header of a 503 (and of a 409 for an event in flight)
RETRY_AFTER: Final[dict[str, Any]] = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}
}


def unavailable(model: dict[str, Any]) -> dict[str, Any]:
    """The documented 503 of a door whose refusals have the body ``model``."""
    return {**model, "description": "The broker is unreachable, blocked or did not confirm.", "headers": RETRY_AFTER}


def _envelope_schema(accepted: frozenset[str]) -> dict[str, Any]:
    schema = Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    schema["title"] = "EventEnvelope"
    schema["properties"]["event_type"]["enum"] = sorted(accepted)
    schema["properties"]["payload"] = {
        "type": "object",
        "description": "The payload model of the event type: see x-payload-schemas of POST /events.",
    }
    return schema


def openapi(app: FastAPI, accepted: frozenset[str]) -> dict[str, Any]:
    """The app's OpenAPI document, built once: FastAPI's, plus the envelope and every payload model.

    Args:
        app: the ingress app.
        accepted: the event types ``POST /events`` takes.

    Returns:
        The document.
    """
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["EventEnvelope"] = _envelope_schema(accepted)
    types = sorted(accepted)
    refs, defs = models_json_schema(
        [(EVENT_PAYLOADS[t], "validation") for t in types], ref_template="#/components/schemas/{model}"
    )
    for name, definition in defs.get("$defs", {}).items():
        components.setdefault(name, definition)
    post = schema["paths"]["/events"]["post"]
    post["x-payload-schemas"] = {t: refs[(EVENT_PAYLOADS[t], "validation")] for t in types}
    app.openapi_schema = schema
    return schema
