"""The wrapper around each endpoint of the ingress: one answer, one log line, one count per request.

Where it sits: between FastAPI and each door's work (``bus/ingress/events.py``, ``bus/ingress/callbacks.py``).
The work raises :class:`bus.ingress.problems.Problem` to refuse; the wrapper renders it (in the endpoint's
own shape: the land system expects ``{Result, Message}``), logs the request once and counts it in
``bus/ingress/metrics.py``. Bodies are never logged: each request logs its endpoint (the route template,
never the path, which may carry a credential), outcome, status, error code, event_id, event_type,
dossier_code and duration.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bus.ingress.problems import Problem
from bus.ingress.requests import endpoint_of
from bus.ingress.state import state_of
from bus.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fastapi import Request
    from fastapi.responses import JSONResponse

    from bus.ingress.state import IngressState

    #: what an endpoint does: read, check, publish, answer; it sets log fields as it learns them
    Work = Callable[[Request, IngressState, dict[str, Any]], Awaitable[JSONResponse]]

log = get_logger("igate_bus.ingress")


def _finish(request: Request, *, started: float, status: int, error: str | None, fields: dict[str, Any]) -> None:
    duration_s = time.monotonic() - started
    endpoint = endpoint_of(request)
    state_of(request).metrics.record_request(
        endpoint, status=status, outcome=str(fields["outcome"]), error=error, duration_s=duration_s
    )
    level = log.warning if status in {401, 503} else log.info
    if error is not None:
        fields["error"] = error
    level(
        "ingress_request",
        endpoint=endpoint,
        method=request.method,
        status=status,
        duration_ms=round(duration_s * 1000, 1),
        client=request.client.host if request.client else None,
        **fields,
    )


async def handle(
    request: Request,
    work: Work,
    *,
    render: Callable[[Problem], JSONResponse] = Problem.response,
    **fields: Any,
) -> JSONResponse:
    """Run one endpoint's ``work``, turn a :class:`Problem` into its response, log and count the outcome once.

    Args:
        request: the request.
        work: the endpoint's work: read, check, publish; it sets log fields (event_id, outcome, ...) as it
            learns them.
        render: how this endpoint answers a refusal (the ``{"error", "detail"}`` body by default).
        **fields: log fields known before the work starts (the callback's system, say).

    Returns:
        The response.
    """
    started = time.monotonic()
    fields["outcome"] = "rejected"
    try:
        response = await work(request, state_of(request), fields)
    except Problem as problem:
        _finish(request, started=started, status=problem.status, error=problem.code, fields=fields)
        return render(problem)
    _finish(request, started=started, status=response.status_code, error=None, fields=fields)
    return response


def count_unhandled(request: Request, status: int, code: str) -> None:
    """Count an answer given outside the endpoints (no such path, wrong method, unexpected error)."""
    state = getattr(request.app.state, "igate_ingress", None)
    if state is not None:
        state.metrics.record_request(
            endpoint_of(request), status=status, outcome="rejected", error=code, duration_s=None
        )
