"""External systems' callbacks: one :class:`Callback` entry per system, served the same way for all.

Where it sits: the inbound door of the *result* side of a message's path. A system the bus delivered to (or
that works on a dossier by itself) calls back over HTTP; the ingress checks the caller with the system's
own credential (compared in constant time), its adapter (``adapters/<system>_to_bus.py``) maps the call
into an envelope, the one strict parser (:func:`schemas.envelope.parse_event`) validates it, and it is
published on ``bus.results``, from where routes carry it back to iGate. Same rule as ``POST /events``:
success only after the broker's confirm.

Every system follows the same steps, in this order, so each answers alike: disabled (its credential is
not configured) ▶ 404 ``callback_disabled``; wrong or missing credential ▶ 401; the call does not fit
(unknown action, not JSON, invalid body) ▶ its 4xx; the result event is invalid ▶ 422
``invalid_callback``; the same call again ▶ success, ``duplicate`` (each event_id is derived from the call,
so a retry is the same event); the broker cannot take it ▶ 503 with ``Retry-After``.

Add a callback for a system: its request schema in ``schemas/<system>.py``, its pure mapping in
``adapters/<system>_to_bus.py`` (golden cases in ``tests/adapters/cases/``), a module here like
``bus/ingress/esms.py`` that declares its :class:`Callback` (where the credential is, how to read the call,
how to answer), one line in :data:`bus.ingress.systems.CALLBACKS`, and its credential's variable in
``bus/ingress/settings.py`` (a field and a line of ``CALLBACK_SECRETS``).
"""

from __future__ import annotations

import difflib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Request  # noqa: TC002 - FastAPI reads the endpoints' annotations at run time
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from adapters.to_bus import CallbackRejected, canonical_json
from bus.ingress.handling import handle
from bus.ingress.problems import Problem
from bus.ingress.publish import publish, raise_for_verdict
from bus.ingress.publisher import Outbound
from bus.ingress.replay import Verdict
from bus.ingress.requests import too_deep
from routes.topology import RESULTS_EXCHANGE
from schemas.envelope import parse_event
from schemas.errors import InvalidEvent
from schemas.events import EVENT_PAYLOADS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from fastapi import FastAPI

    from bus.ingress.handling import Work
    from bus.ingress.openapi import Responses
    from bus.ingress.settings import IngressSettings
    from bus.ingress.state import IngressState
    from schemas.envelope import Event

#: where every system's callbacks live; ``/callbacks/{system}`` answers a misdirected call
PREFIX = "/callbacks"


class CallbackAccepted(BaseModel):
    """A callback published as a result event (or recognised as one published before)."""

    status: Literal["accepted", "duplicate"]
    event_id: str
    event_type: str


def accepted_reply(event: Event, duplicate: bool) -> JSONResponse:
    """The default answer of a callback: 200 :class:`CallbackAccepted`."""
    reply = CallbackAccepted(
        status="duplicate" if duplicate else "accepted",
        event_id=str(event.envelope.event_id),
        event_type=event.envelope.event_type,
    )
    return JSONResponse(reply.model_dump(), 200)


@dataclass(frozen=True, slots=True)
class Callback:
    """One external system's callback: where it calls, how it proves who it is, how its call becomes an event.

    Attributes:
        system: the system's name: the key of its credential (``bus/ingress/settings.py``), the ``system``
            field of the log, and the segment after ``/callbacks/``.
        title: the system as an operator names it, in messages ("land-system", "eSMS").
        method: the HTTP method it calls with.
        path: the route template (parameters in braces are read by ``credential`` and ``receive``).
        usage: how it calls, shown to a caller that got the path or method wrong.
        credential: where the caller puts its credential (a path segment, a query parameter...).
        bad_credential: the error code and detail of a wrong or missing credential.
        receive: reads the call and maps it with the system's adapter into an envelope; raises
            :class:`bus.ingress.problems.Problem` or :class:`adapters.to_bus.CallbackRejected` to refuse.
            Called with the request, the settings (body limits) and ``now``.
        reply: the success answer, given the published event and whether it was a duplicate.
        render: the refusal answer (the ``{"error", "detail"}`` body by default).
        summary: the OpenAPI summary.
        description: the OpenAPI description.
        response_model: the documented success body.
        responses: the documented refusals.
        openapi_extra: parameters and request body FastAPI cannot derive (the endpoint reads the request
            itself).
        log_fields: extra log fields from the request (never a credential).
    """

    system: str
    title: str
    method: Literal["GET", "POST"]
    path: str
    usage: str
    credential: Callable[[Request], str | None]
    bad_credential: tuple[str, str]
    receive: Callable[[Request, IngressSettings, datetime], Awaitable[dict[str, Any]]]
    reply: Callable[[Event, bool], JSONResponse] = accepted_reply
    render: Callable[[Problem], JSONResponse] = Problem.response
    summary: str = ""
    description: str = ""
    response_model: type[BaseModel] = CallbackAccepted
    responses: Responses = field(default_factory=dict)
    openapi_extra: dict[str, Any] | None = None
    log_fields: Callable[[Request], dict[str, Any]] | None = None


def secret_matches(given: str | None, expected: str) -> bool:
    """Whether a presented credential equals the configured one, compared in constant time.

    Args:
        given: what the caller sent (None when it sent nothing).
        expected: the configured secret (never empty: settings refuse that).

    Returns:
        True on a match.
    """
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


async def publish_callback(state: IngressState, event_data: dict[str, Any]) -> tuple[Event, bool]:
    """Validate a callback's result event with the strict parser and publish it on ``bus.results``.

    Args:
        state: the ingress state.
        event_data: the envelope the system's adapter made.

    Returns:
        The event, and whether it was a duplicate of one accepted before.

    Raises:
        Problem: 422 ``invalid_callback``, 409 while the same event is in flight, 503.
    """
    raw = canonical_json(event_data)
    try:
        event = parse_event(raw, payload_models=EVENT_PAYLOADS, rules=state.rules, received_at=datetime.now(UTC))
    except InvalidEvent as exc:
        raise Problem(422, "invalid_callback", str(exc)) from None
    event_id = str(event.envelope.event_id)
    verdict, _ = state.callbacks.begin(event_id, digest=event_id, signature=None)
    if verdict is Verdict.DUPLICATE:
        return event, True
    raise_for_verdict(verdict, None, event_id, retry_after=state.cfg.retry_after)
    message = Outbound(
        body=canonical_json(event.as_dict()),
        exchange=RESULTS_EXCHANGE,
        event_id=event_id,
        event_type=event.envelope.event_type,
        correlation_id=event.envelope.correlation_id,
    )
    await publish(state, message, digest=event_id, signature=None)
    return event, False


def _work(cb: Callback) -> Work:
    """The steps every callback goes through, in the order the module docstring gives."""

    async def work(request: Request, state: IngressState, fields: dict[str, Any]) -> JSONResponse:
        secret = state.secrets.callbacks.get(cb.system)
        if secret is None:
            raise Problem(404, "callback_disabled", f"{cb.title} callbacks are not enabled on this bus")
        if not secret_matches(cb.credential(request), secret.get_secret_value()):
            raise Problem(401, *cb.bad_credential)
        try:
            event_data = await cb.receive(request, state.cfg, datetime.now(UTC))
        except CallbackRejected as exc:
            raise Problem(exc.status, exc.code, exc.detail) from None
        except RecursionError:  # the body's digest walks what loads_strict let through
            raise too_deep() from None
        if "dossier_code" in event_data:
            fields["dossier_code"] = event_data["dossier_code"]
        event, duplicate = await publish_callback(state, event_data)
        fields.update(
            outcome="duplicate" if duplicate else "accepted",
            event_id=str(event.envelope.event_id),
            event_type=event.envelope.event_type,
            correlation_id=event.envelope.correlation_id or str(event.envelope.event_id),  # as the worker binds
        )
        return cb.reply(event, duplicate)

    return work


def _endpoint(cb: Callback) -> Callable[[Request], Awaitable[JSONResponse]]:
    work = _work(cb)

    async def endpoint(request: Request) -> JSONResponse:
        extra = cb.log_fields(request) if cb.log_fields is not None else {}
        return await handle(request, work, render=cb.render, system=cb.system, **extra)

    return endpoint


def _misdirected(callbacks: Sequence[Callback], not_accepted: Mapping[str, str]) -> Work:
    """A call to ``/callbacks/{system}`` that no callback's route matched: 404 or 405, saying what would."""
    by_system = {cb.system: cb for cb in callbacks}

    async def work(request: Request, _state: IngressState, _fields: dict[str, Any]) -> JSONResponse:
        system = str(request.path_params.get("system", ""))
        cb = by_system.get(system)
        if cb is not None and cb.path == f"{PREFIX}/{system}":
            raise Problem(405, "method_not_allowed", f"{cb.title} calls back with {cb.usage}", allow=cb.method)
        if cb is not None:
            raise Problem(404, "not_found", f"the {system} callback is {cb.usage}")
        if system in not_accepted:
            raise Problem(404, "unknown_system", not_accepted[system])
        close = difflib.get_close_matches(system, list(by_system), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(sorted(by_system))}"
        raise Problem(404, "unknown_system", f"no callback system {system[:60]!r}{hint}")

    return work


def mount(app: FastAPI, callbacks: Sequence[Callback], *, not_accepted: Mapping[str, str]) -> None:
    """Add each callback's route to the app, then ``/callbacks/{system}`` for misdirected calls.

    Args:
        app: the ingress app.
        callbacks: the registry (:data:`bus.ingress.systems.CALLBACKS`).
        not_accepted: systems that have no callback yet, with the reason (their 404 says it).
    """
    for cb in callbacks:
        app.add_api_route(
            cb.path,
            _endpoint(cb),
            methods=[cb.method],
            name=f"{cb.system}_callback",
            response_model=cb.response_model,
            response_model_exclude_none=True,
            responses=cb.responses,
            summary=cb.summary,
            description=cb.description,
            openapi_extra=cb.openapi_extra,
        )
    misdirected = _misdirected(callbacks, not_accepted)

    async def unknown_callback(system: str, request: Request) -> JSONResponse:
        """A callback to a system the bus does not know, or to a known one in the wrong shape: 404 or 405."""
        return await handle(request, misdirected, system=system[:60])

    for method in ("POST", "GET"):
        app.add_api_route(f"{PREFIX}/{{system}}", unknown_callback, methods=[method], include_in_schema=False)
