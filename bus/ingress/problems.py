"""How the ingress refuses: the error codes, the ``{"error", "detail"}`` body, and the handlers behind them.

Where it sits: used by every step of both doors (``bus/ingress/events.py``, ``bus/ingress/callbacks.py``).
A step raises :class:`Problem`; the endpoint wrapper (``bus/ingress/handling.py``) turns it into its
response, logs it and counts it. Errors raised outside our endpoints (no such path, wrong method, an
unexpected exception) get the same body shape from :func:`install_handlers`, never a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bus.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI, Request

log = get_logger("igate_bus.ingress")

ErrorCode = Literal[
    "empty_body",
    "invalid_json",
    "invalid_request",
    "missing_timestamp",
    "invalid_timestamp",
    "stale_timestamp",
    "future_timestamp",
    "missing_signature",
    "malformed_signature",
    "bad_signature",
    "bad_security_code",
    "bad_token",
    "body_timeout",
    "replayed_request",
    "event_id_conflict",
    "event_in_flight",
    "body_too_large",
    "unsupported_media_type",
    "unknown_event_type",
    "event_type_not_accepted",
    "invalid_event",
    "invalid_callback",
    "unknown_action",
    "unknown_system",
    "callback_disabled",
    "not_found",
    "method_not_allowed",
    "broker_unavailable",
    "broker_blocked",
    "broker_refused",
    "publish_timeout",
    "ingress_busy",
    "shutting_down",
    "internal_error",
]


class ErrorBody(BaseModel):
    """Every refusal: a stable code and the precise reason."""

    error: ErrorCode = Field(description="Machine-readable reason.")
    detail: str = Field(description="The precise reason, in words.", examples=["the request was signed 301 s ago"])


# -- problems --------------------------------------------------------------------------------------------
class Problem(Exception):
    """A refusal on its way to becoming an error response.

    Args:
        status: the HTTP status.
        code: the :data:`ErrorCode`.
        detail: the precise reason.
        retry_after: seconds for a ``Retry-After`` header, if any.
        allow: the ``Allow`` header of a 405, if any.
    """

    def __init__(
        self, status: int, code: str, detail: str, *, retry_after: int | None = None, allow: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.allow = allow

    def headers(self) -> dict[str, str]:
        """The response headers the problem carries."""
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.allow is not None:
            headers["Allow"] = self.allow
        return headers

    def response(self) -> JSONResponse:
        """The ``{"error", "detail"}`` response."""
        return JSONResponse({"error": self.code, "detail": self.detail}, self.status, headers=self.headers())


def install_handlers(app: FastAPI, *, count: Callable[[Request, int, str], None] | None = None) -> None:
    """Not-found, wrong-method and unexpected errors in the ``{"error", "detail"}`` shape too.

    FastAPI's own 422 for a parameter that fails validation keeps its documented shape: no endpoint of
    ours declares a validated parameter, and the operations router documents FastAPI's.

    Args:
        app: the ingress app.
        count: told of each such answer (request, status, error code), for the metrics.
    """

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        exc = cast("StarletteHTTPException", error)  # registered for this class only
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        if exc.status_code >= 500:
            code = "broker_unavailable" if exc.status_code == 503 else "internal_error"
        if count is not None:
            count(request, exc.status_code, code)
        return JSONResponse(
            {"error": code, "detail": str(exc.detail)}, exc.status_code, headers=dict(exc.headers or {})
        )

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("ingress_internal_error", error=type(exc).__name__, exc_info=exc)
        if count is not None:
            count(request, 500, "internal_error")
        return JSONResponse({"error": "internal_error", "detail": "unexpected error; see the ingress log"}, 500)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
