"""Reading a request at the ingress: its endpoint, its content type, its body (bounded in size and time).

Where it sits: the first steps of both doors (``bus/ingress/events.py``, ``bus/ingress/callbacks.py``),
before any parsing. A body is refused past ``max_body_bytes`` whether announced by ``Content-Length`` or
streamed, and past ``body_timeout`` however slowly it trickles in, so a slow or huge sender costs one
bounded buffer. Each body read in full is counted in ``igate_bus_ingress_request_body_bytes``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from bus.ingress.metrics import UNMATCHED
from bus.ingress.problems import Problem
from bus.ingress.state import state_of
from schemas.envelope import is_json_content_type, loads_strict
from schemas.errors import InvalidEvent

if TYPE_CHECKING:
    from fastapi import Request

    from bus.ingress.settings import IngressSettings

JSON_TYPE: Final = "application/json"


def endpoint_of(request: Request) -> str:
    """The route template that matched ``request`` (never its path: a security code may be part of it)."""
    route = request.scope.get("route")
    return str(getattr(route, "path", UNMATCHED))


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is JSON in UTF-8: the one rule the worker applies to AMQP's too."""
    return is_json_content_type(content_type)


def too_deep() -> Problem:
    """The 400 for JSON nested deeper than the parser (or a walk over its result) can follow."""
    return Problem(400, "invalid_json", "JSON nested too deeply")


async def read_body(request: Request, *, limit: int, time_limit_s: float) -> bytes:
    """The request body, refused past ``limit`` bytes (announced or streamed) or ``time_limit_s`` seconds.

    Args:
        request: the request.
        limit: maximum bytes.
        time_limit_s: maximum seconds to receive the whole body.

    Returns:
        The body.

    Raises:
        Problem: 413 ``body_too_large`` or 408 ``body_timeout``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise Problem(413, "body_too_large", f"the body is {int(declared)} bytes; the limit is {limit} bytes")

    async def collect() -> bytes:
        buffer = bytearray()
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) > limit:
                raise Problem(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
        return bytes(buffer)

    try:
        body = await asyncio.wait_for(collect(), time_limit_s)
    except TimeoutError:
        raise Problem(408, "body_timeout", f"the body did not arrive within {time_limit_s:g} s") from None
    state_of(request).metrics.record_body(endpoint_of(request), len(body))
    return body


async def read_json(request: Request, cfg: IngressSettings) -> Any:
    """A callback's JSON body: content type, then size and time, then the strict parser.

    Args:
        request: the request.
        cfg: the settings (body limit and timeout).

    Returns:
        The decoded JSON value.

    Raises:
        Problem: 415 ``unsupported_media_type``, 413, 408, 400 ``empty_body`` or ``invalid_json``.
    """
    if not is_json(request.headers.get("content-type")):
        raise Problem(415, "unsupported_media_type", f"the body must be {JSON_TYPE} (UTF-8)")
    body = await read_body(request, limit=cfg.max_body_bytes, time_limit_s=cfg.body_timeout)
    if not body:
        raise Problem(400, "empty_body", "the body is empty")
    try:
        return loads_strict(body, max_bytes=cfg.max_body_bytes)
    except InvalidEvent as exc:
        raise Problem(400, "invalid_json", str(exc)) from None
    except RecursionError:  # see bus/ingress/events.py
        raise too_deep() from None
