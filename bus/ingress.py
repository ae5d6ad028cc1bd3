"""The HTTP ingress (``igate-bus serve``): iGate's signed events and external systems' callbacks, onto the bus.

Where it sits: the door at the start of a message's path, for senders that speak HTTP rather than AMQP.

- ``POST /events``: iGate pushes one event envelope, signed (``bus/signing.py``). The request goes through
  size cap ▶ signature and timestamp window ▶ content type ▶ the one strict parser
  (:func:`schemas.envelope.parse_event`) ▶ replay cache ▶ confirmed publish on ``igate.events``
  (``bus/ingress_publisher.py``). Answers ``202`` only once the broker confirmed the message.
- ``POST /callbacks/vilis/{action}/{security_code}`` and ``GET /callbacks/esms?token=...``: the land system
  and the SMS aggregator call back, each with its own authentication; ``bus/callbacks.py`` maps the call to
  a result event, validated the same way and published on ``bus.results``. Same rule: success only after
  the confirm.
- ``GET /health``, ``GET /health/ready``, ``GET /metrics``: the operations router of ``bus/ops_api.py``
  with this process's health monitor (``create_app(observe=True)``, what ``serve`` does); a bare liveness
  ``GET /health`` otherwise.
- ``GET /openapi.json``: the contract, with every request and response model (and the payload model of
  each event type under ``x-payload-schemas``).

Answers of ``POST /events`` (every error body is ``{"error": "<code>", "detail": "<precise reason>"}``):

=====  ==========================================================================================
202    ``{"status": "accepted"}``: the broker confirmed the message
200    ``{"status": "duplicate"}``: this event_id, with the same content, was accepted before (a retry
       re-signed with a fresh timestamp); nothing is published again. Treat it as success.
400    ``empty_body``, ``invalid_json`` (malformed, not UTF-8, BOM, duplicate keys, NaN, too deep)
401    ``missing_timestamp``, ``invalid_timestamp``, ``stale_timestamp``, ``future_timestamp``,
       ``missing_signature``, ``malformed_signature``, ``bad_signature`` (a forged signature and a body
       altered by one byte look the same to us, by design of the HMAC)
408    ``body_timeout``: the body did not arrive within ``body_timeout_s``
409    ``replayed_request``: this exact signed request was already accepted (the event *is* stored);
       ``event_id_conflict``: the event_id was accepted with different content; ``event_in_flight``:
       a request with this event_id is still waiting for its confirm (retry after ``Retry-After``)
413    ``body_too_large``: over ``max_body_bytes``, whether announced by Content-Length or streamed
415    ``unsupported_media_type``: not ``application/json``
422    ``unknown_event_type`` (no schema knows it), ``event_type_not_accepted`` (a result type, which
       enters through its callback), ``invalid_event`` (envelope or payload fails its model; the detail
       names each field)
503    ``broker_unavailable``, ``broker_blocked``, ``broker_refused``, ``publish_timeout``, ``ingress_busy``,
       ``shutting_down``, with ``Retry-After``: not stored (or, after ``publish_timeout``, maybe stored:
       a re-signed retry then gets 200 duplicate or publishes it again; workers dedupe by event_id)
=====  ==========================================================================================

Why a replay is 409 and a retry 200: a byte-identical request (same timestamp, same signature) is what an
attacker who captured it would send; a sender that means to retry signs again. Both publish nothing more.

The replay cache lives in this process (``replay_ttl_s`` ≥ the signature window, ``replay_max_entries``
bounded); several ingress processes each keep their own, and the workers' idempotency by event_id covers
what slips between them. Bodies are never logged: each request logs its endpoint, outcome, status, error
code, event_id, event_type, dossier_code and duration.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import importlib.util
import os
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Protocol, cast

from fastapi import FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic.json_schema import models_json_schema
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from bus.callbacks import (
    CALLBACK_SYSTEMS,
    VILIS_ACTIONS,
    CallbackRejected,
    canonical_json,
    esms_event,
    secret_matches,
    unknown_system,
    vilis_action,
    vilis_event,
)
from bus.ingress_publisher import Outbound, PublisherPool, PublishError
from bus.logging import get_logger
from bus.signing import (
    DEFAULT_SECRET_ENV,
    MIN_SECRET_LENGTH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    verify,
)
from routes.topology import EVENTS_EXCHANGE, RESULTS_EXCHANGE
from schemas.envelope import DEFAULT_MAX_BYTES, Envelope, loads_strict, parse_event
from schemas.errors import ConfigError, InvalidEvent
from schemas.events import EVENT_PAYLOADS
from schemas.igate import IGATE_EVENTS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from concurrent.futures import Future

    from config.settings import Settings
    from schemas.envelope import Event

log = get_logger("igate_bus.ingress")

#: the event types iGate may post by default: its own, and the bus's smoke-test ping
DEFAULT_ACCEPTED: Final = (*sorted(IGATE_EVENTS), "bus.ping")
#: shortest callback credential (security code, token) accepted in the environment
MIN_CALLBACK_SECRET: Final = 16
JSON_TYPE: Final = "application/json"
TITLE: Final = "igate-bus ingress"


# -- settings --------------------------------------------------------------------------------------------
class IngressSettings(BaseSettings):
    """Settings of ``igate-bus serve`` (environment prefix ``IGATE_BUS_INGRESS_``); secrets by env-var name."""

    model_config = SettingsConfigDict(env_prefix="IGATE_BUS_INGRESS_", extra="ignore", frozen=True)

    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(default=8600, ge=0, le=65535, description="TCP port.")
    hmac_secret_env: str = Field(
        default=DEFAULT_SECRET_ENV, description="Environment variable holding iGate's HMAC secret (≥ 32 chars)."
    )
    hmac_previous_secret_env: str | None = Field(
        default=None, description="Variable holding the previous secret, still accepted during a rotation."
    )
    window_s: int = Field(default=300, ge=30, le=3600, description="Signed timestamp tolerance, both ways.")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024, le=16 * DEFAULT_MAX_BYTES)
    body_timeout_s: float = Field(default=10.0, gt=0, le=120, description="Time allowed to receive a body.")
    replay_ttl_s: int = Field(default=900, ge=30, description="How long accepted event_ids are remembered.")
    replay_max_entries: int = Field(default=100_000, ge=100, description="Bound on the replay cache.")
    publish_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Wait for the broker's confirm.")
    retry_after_s: int = Field(default=2, ge=1, le=300, description="Retry-After of a 503.")
    publisher_threads: int = Field(default=4, ge=1, le=64, description="Publisher connections.")
    publish_queue_size: int = Field(default=1000, ge=1, description="Messages waiting for a publisher thread.")
    reconnect_delay_s: float = Field(default=0.5, ge=0, le=60, description="Pause after a failed connect.")
    declare_exchanges: bool = Field(default=True, description="Declare the exchanges (off: write-only user).")
    max_connections: int = Field(default=1000, ge=1, description="uvicorn limit_concurrency.")
    vilis_security_code_env: str = Field(
        default="IGATE_BUS_VILIS_SECURITY_CODE", description="Variable holding the land system's security code."
    )
    esms_token_env: str = Field(
        default="IGATE_BUS_ESMS_CALLBACK_TOKEN", description="Variable holding the eSMS callback token."
    )
    accepted_event_types: tuple[str, ...] = Field(
        default=DEFAULT_ACCEPTED, description="Event types POST /events accepts (each must have a schema)."
    )

    @model_validator(mode="after")
    def _coherent(self) -> IngressSettings:
        if self.replay_ttl_s < self.window_s:
            raise ValueError(
                f"replay_ttl_s ({self.replay_ttl_s}) must be at least window_s ({self.window_s}): a request "
                "replayed inside the signature window must still be remembered"
            )
        unknown = sorted(set(self.accepted_event_types) - set(EVENT_PAYLOADS))
        if unknown:
            raise ValueError(f"accepted_event_types has types no schema knows: {', '.join(unknown)}")
        return self


@dataclass(frozen=True, slots=True)
class Secrets:
    """The credentials the ingress checks, read once from the environment.

    Attributes:
        hmac: iGate's active HMAC secrets (the current one, and the previous during a rotation).
        vilis_code: the land system's security code; None disables its callbacks.
        esms_token: the eSMS callback token; None disables its callbacks.
    """

    hmac: tuple[SecretStr, ...]
    vilis_code: SecretStr | None
    esms_token: SecretStr | None


def read_secrets(cfg: IngressSettings, environ: Mapping[str, str] | None = None) -> Secrets:
    """The ingress's secrets from the variables ``cfg`` names.

    Args:
        cfg: the ingress settings.
        environ: the environment (``os.environ`` when None).

    Returns:
        The secrets.

    Raises:
        ConfigError: the HMAC secret is unset or short, or a callback secret is set but short.
    """
    env = os.environ if environ is None else environ

    def required(name: str) -> SecretStr:
        value = env.get(name, "")
        if len(value) < MIN_SECRET_LENGTH:
            state = "not set" if not value else f"shorter than {MIN_SECRET_LENGTH} characters"
            raise ConfigError(f"environment variable {name} (iGate's HMAC secret) is {state}", field=name)
        return SecretStr(value)

    def optional(name: str, what: str) -> SecretStr | None:
        value = env.get(name, "")
        if not value:
            return None
        if len(value) < MIN_CALLBACK_SECRET:
            raise ConfigError(f"environment variable {name} ({what}) is shorter than {MIN_CALLBACK_SECRET} characters")
        return SecretStr(value)

    hmac_secrets = [required(cfg.hmac_secret_env)]
    if cfg.hmac_previous_secret_env and env.get(cfg.hmac_previous_secret_env):
        hmac_secrets.append(required(cfg.hmac_previous_secret_env))
    return Secrets(
        hmac=tuple(hmac_secrets),
        vilis_code=optional(cfg.vilis_security_code_env, "the land system's security code"),
        esms_token=optional(cfg.esms_token_env, "the eSMS callback token"),
    )


# -- replay cache ----------------------------------------------------------------------------------------
class Verdict(Enum):
    """What the replay cache says about an event_id."""

    NEW = "new"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    CONFLICT = "conflict"
    IN_FLIGHT = "in_flight"


@dataclass(slots=True)
class Seen:
    """An accepted event: its content digest, when it was accepted, the signatures that carried it."""

    digest: str
    accepted_at: float
    expires: float
    signatures: set[str] = field(default_factory=set)


#: signatures remembered per event_id (each re-signed retry adds one)
MAX_SIGNATURES_PER_EVENT: Final = 16


class ReplayCache:
    """event_ids accepted (confirmed by the broker) in the last ``ttl_s`` seconds, and those being published.

    Thread-safe: requests consult it on the event loop and publisher threads record confirms in it.

    Args:
        ttl_s: how long an accepted event_id is remembered (at least the signature window).
        max_entries: bound; the oldest entries go first, and one evicted before its time is counted.
        clock: monotonic seconds (for tests).
    """

    def __init__(self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, Seen] = OrderedDict()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        #: entries evicted before their TTL because the cache was full (a replay could then get through)
        self.evicted_early = 0

    def __len__(self) -> int:
        return len(self._seen)

    def begin(self, event_id: str, *, digest: str, signature: str | None) -> tuple[Verdict, Seen | None]:
        """Classify a request for ``event_id``; a NEW one is marked in flight until :meth:`finish`.

        Args:
            event_id: the envelope's id.
            digest: a digest of the event's content.
            signature: the request's signature (None for callbacks, which have none).

        Returns:
            The verdict, and the accepted entry when there is one.
        """
        with self._lock:
            self._expire(self._clock())
            seen = self._seen.get(event_id)
            if seen is not None:
                if signature is not None and signature in seen.signatures:
                    return Verdict.REPLAY, seen
                if digest != seen.digest:
                    return Verdict.CONFLICT, seen
                if signature is not None and len(seen.signatures) < MAX_SIGNATURES_PER_EVENT:
                    seen.signatures.add(signature)
                return Verdict.DUPLICATE, seen
            if event_id in self._in_flight:
                return Verdict.IN_FLIGHT, None
            self._in_flight.add(event_id)
            return Verdict.NEW, None

    def finish(self, event_id: str, *, accepted: bool, digest: str, signature: str | None) -> None:
        """Record the outcome of a NEW request: remembered when the broker confirmed it, forgotten otherwise.

        Args:
            event_id: the envelope's id.
            accepted: whether the broker confirmed the message.
            digest: the content digest given to :meth:`begin`.
            signature: the request's signature.
        """
        with self._lock:
            self._in_flight.discard(event_id)
            if not accepted:
                return
            now = self._clock()
            self._seen[event_id] = Seen(
                digest=digest,
                accepted_at=time.time(),
                expires=now + self._ttl_s,
                signatures={signature} if signature else set(),
            )
            self._seen.move_to_end(event_id)
            while len(self._seen) > self._max:
                _, oldest = self._seen.popitem(last=False)
                if oldest.expires > now:
                    self.evicted_early += 1

    def _expire(self, now: float) -> None:
        # entries are appended in acceptance order with one TTL, so the expired ones are at the front
        while self._seen:
            first = next(iter(self._seen.values()))
            if first.expires > now:
                return
            self._seen.popitem(last=False)


# -- response models -------------------------------------------------------------------------------------
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


class VilisReply(BaseModel):
    """What the land system expects back ([F] TH ``ProvideToVBLISBaseResponse``), plus our error code."""

    Result: Literal[0, 1] = Field(description="1 received, 0 refused.")
    Message: str = Field(description="Short message for the land system's operator (Vietnamese).")
    event_id: str | None = Field(default=None, description="The result event's id, once accepted.")
    error: ErrorCode | None = Field(default=None, description="Why it was refused.")
    detail: str | None = Field(default=None, description="The precise reason, in words.")


class Liveness(BaseModel):
    """The bare liveness answer (when the operations router is not mounted)."""

    status: Literal["up"] = "up"


class CallbackAccepted(BaseModel):
    """A callback published as a result event (or recognised as one published before)."""

    status: Literal["accepted", "duplicate"]
    event_id: str
    event_type: str


# -- problems --------------------------------------------------------------------------------------------
class Problem(Exception):
    """A refusal on its way to becoming an error response.

    Args:
        status: the HTTP status.
        code: the :data:`ErrorCode`.
        detail: the precise reason.
        retry_after: seconds for a ``Retry-After`` header, if any.
    """

    def __init__(self, status: int, code: str, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """The response headers the problem carries."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def response(self) -> JSONResponse:
        """The ``{"error", "detail"}`` response."""
        return JSONResponse({"error": self.code, "detail": self.detail}, self.status, headers=self.headers())


# -- the publisher seam ----------------------------------------------------------------------------------
class EventSink(Protocol):
    """What the ingress publishes through (:class:`bus.ingress_publisher.PublisherPool` by default)."""

    @property
    def blocked(self) -> bool:
        """True while the broker blocks publishers."""

    def start(self) -> None:
        """Start publishing (called in the app's lifespan)."""

    def submit(self, message: Outbound) -> Future[None]:
        """Queue a message; its future completes on the broker's confirm (raise PublishError to refuse)."""

    def close(self) -> None:
        """Stop; fail what is still queued."""


@dataclass(slots=True)
class IngressState:
    """What the request handlers share (kept in ``app.state.igate_ingress``)."""

    cfg: IngressSettings
    secrets: Secrets
    accepted: frozenset[str]
    events: ReplayCache
    callbacks: ReplayCache
    sink: EventSink | None = None


def _state(request: Request) -> IngressState:
    state: IngressState = request.app.state.igate_ingress
    return state


# -- request helpers -------------------------------------------------------------------------------------
def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media, _, params = content_type.partition(";")
    if media.strip().lower() != JSON_TYPE:
        return False
    charset = params.strip().lower().replace(" ", "")
    return charset in {"", "charset=utf-8"}


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
        return await asyncio.wait_for(collect(), time_limit_s)
    except TimeoutError:
        raise Problem(408, "body_timeout", f"the body did not arrive within {time_limit_s:g} s") from None


def _unavailable(cfg: IngressSettings, exc: PublishError) -> Problem:
    return Problem(503, exc.code, exc.detail, retry_after=cfg.retry_after_s)


async def publish(state: IngressState, message: Outbound, *, digest: str, signature: str | None) -> None:
    """Publish ``message`` and wait for the broker's confirm; the replay cache learns the outcome.

    The caller has had :meth:`ReplayCache.begin` answer NEW for the event. If the confirm does not come in
    ``publish_timeout_s``, the message is withdrawn when no publisher thread has taken it yet; otherwise it
    may still be confirmed later, and the cache then records it as accepted (so a retry gets ``200``).

    Args:
        state: the ingress state.
        message: what to publish.
        digest: the event's content digest (for the cache).
        signature: the request's signature (for the cache), None for callbacks.

    Raises:
        Problem: 503 with the reason and ``Retry-After``.
    """
    cfg = state.cfg
    cache = state.events if message.exchange == EVENTS_EXCHANGE else state.callbacks
    sink = state.sink
    if sink is None:
        cache.finish(message.event_id, accepted=False, digest=digest, signature=signature)
        raise Problem(503, "shutting_down", "the ingress is not running", retry_after=cfg.retry_after_s)
    try:
        future = sink.submit(message)
    except PublishError as exc:
        cache.finish(message.event_id, accepted=False, digest=digest, signature=signature)
        raise _unavailable(cfg, exc) from None

    def record(done: Future[None]) -> None:
        ok = not done.cancelled() and done.exception() is None
        cache.finish(message.event_id, accepted=ok, digest=digest, signature=signature)
        if ok and getattr(done, "igate_timed_out", False):
            log.warning("ingress_late_confirm", event_id=message.event_id, event_type=message.event_type)

    future.add_done_callback(record)
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), cfg.publish_timeout_s)
    except TimeoutError:
        future.igate_timed_out = True  # type: ignore[attr-defined]
        future.cancel()
        raise Problem(
            503,
            "publish_timeout",
            f"the broker did not confirm within {cfg.publish_timeout_s:g} s; the event may or may not be "
            "stored: retry, signed again",
            retry_after=cfg.retry_after_s,
        ) from None
    except PublishError as exc:
        raise _unavailable(cfg, exc) from None


def _log_outcome(request: Request, *, started: float, status: int, error: str | None, fields: dict[str, Any]) -> None:
    route = request.scope.get("route")
    level = log.warning if status in {401, 503} else log.info
    if error is not None:
        fields["error"] = error
    level(
        "ingress_request",
        # the route's template, never the path itself: the land system's security code is part of its path
        endpoint=getattr(route, "path", "(no route)"),
        method=request.method,
        status=status,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        client=request.client.host if request.client else None,
        **fields,
    )


async def _serve(
    request: Request,
    work: Callable[[Request, IngressState, dict[str, Any]], Awaitable[JSONResponse]],
    *,
    render: Callable[[Problem], JSONResponse] = Problem.response,
    **fields: Any,
) -> JSONResponse:
    """Run one endpoint's ``work``, turn a :class:`Problem` into its response, log the outcome once."""
    started = time.monotonic()
    fields["outcome"] = "rejected"
    try:
        response = await work(request, _state(request), fields)
    except Problem as problem:
        _log_outcome(request, started=started, status=problem.status, error=problem.code, fields=fields)
        return render(problem)
    _log_outcome(request, started=started, status=response.status_code, error=None, fields=fields)
    return response


# -- POST /events ----------------------------------------------------------------------------------------
def _too_deep() -> Problem:
    return Problem(400, "invalid_json", "JSON nested too deeply")


def _classify(exc: InvalidEvent, body: bytes, accepted: frozenset[str]) -> Problem:
    """Turn the strict parser's refusal into the precise 4xx."""
    try:
        data = loads_strict(body, max_bytes=len(body) + 1)
    except InvalidEvent as json_exc:
        return Problem(400, "invalid_json", str(json_exc))
    except RecursionError:
        return _too_deep()
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


async def _accept_event(request: Request, state: IngressState, fields: dict[str, Any]) -> JSONResponse:
    cfg = state.cfg
    body = await read_body(request, limit=cfg.max_body_bytes, time_limit_s=cfg.body_timeout_s)
    try:
        verified = verify(
            [s.get_secret_value() for s in state.secrets.hmac],
            timestamp=request.headers.get(TIMESTAMP_HEADER),
            signature=request.headers.get(SIGNATURE_HEADER),
            body=body,
            now=time.time(),
            window_s=cfg.window_s,
        )
    except SignatureError as exc:
        raise Problem(401, exc.code, exc.detail) from None
    if not _is_json(request.headers.get("content-type")):
        raise Problem(415, "unsupported_media_type", f"the body must be {JSON_TYPE} (UTF-8)")
    if not body:
        raise Problem(400, "empty_body", "the body is empty")
    models = {t: EVENT_PAYLOADS[t] for t in state.accepted}
    try:
        event = parse_event(body, payload_models=models, content_type=None, max_bytes=cfg.max_body_bytes)
    except InvalidEvent as exc:
        raise _classify(exc, body, state.accepted) from None
    except RecursionError:
        # json.loads stops at its own depth limit, but the NFC pass after it recurses as deep on a smaller
        # stack: a few hundred nested arrays get through the one and break the other
        raise _too_deep() from None
    env = event.envelope
    event_id, event_type = str(env.event_id), env.event_type
    fields.update(event_id=event_id, event_type=event_type, dossier_code=env.dossier_code)
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
    raise_for_verdict(verdict, seen, event_id, retry_after=cfg.retry_after_s)
    assert seen is not None  # noqa: S101 - DUPLICATE always carries its entry
    fields["outcome"] = "duplicate"
    accepted_at = datetime.fromtimestamp(seen.accepted_at, UTC)
    dup = Duplicate(event_id=event_id, event_type=event_type, accepted_at=accepted_at)
    return JSONResponse(dup.model_dump(mode="json"), 200)


def raise_for_verdict(verdict: Verdict, seen: Seen | None, event_id: str, *, retry_after: int) -> None:
    """Raise the 409 a replay, a conflict or an event in flight gets; return for a duplicate.

    Args:
        verdict: the cache's verdict (not NEW).
        seen: the accepted entry, if any.
        event_id: the envelope's id.
        retry_after: seconds for the in-flight answer's ``Retry-After``.

    Raises:
        Problem: 409 ``replayed_request``, ``event_id_conflict`` or ``event_in_flight``.
    """
    when = datetime.fromtimestamp(seen.accepted_at, UTC).isoformat(timespec="seconds") if seen else ""
    if verdict is Verdict.REPLAY:
        raise Problem(
            409,
            "replayed_request",
            f"this exact signed request was already accepted at {when} (event {event_id} is stored); "
            "nothing was published again. To retry an event, sign it again with a fresh timestamp",
        )
    if verdict is Verdict.CONFLICT:
        raise Problem(
            409,
            "event_id_conflict",
            f"event_id {event_id} was accepted at {when} with different content; an event_id names one event",
        )
    if verdict is Verdict.IN_FLIGHT:
        raise Problem(
            409,
            "event_in_flight",
            f"a request with event_id {event_id} is still waiting for the broker's confirm; retry shortly",
            retry_after=retry_after,
        )


# -- callbacks -------------------------------------------------------------------------------------------
async def _publish_callback(state: IngressState, event_data: dict[str, Any]) -> tuple[Event, bool]:
    """Validate a callback's result event with the strict parser and publish it on ``bus.results``.

    Returns:
        The event, and whether it was a duplicate of one accepted before.
    """
    raw = canonical_json(event_data)
    try:
        event = parse_event(raw, payload_models=EVENT_PAYLOADS, content_type=None)
    except InvalidEvent as exc:
        raise Problem(422, "invalid_callback", str(exc)) from None
    event_id = str(event.envelope.event_id)
    verdict, _ = state.callbacks.begin(event_id, digest=event_id, signature=None)
    if verdict is Verdict.DUPLICATE:
        return event, True
    raise_for_verdict(verdict, None, event_id, retry_after=state.cfg.retry_after_s)
    message = Outbound(
        body=canonical_json(event.as_dict()),
        exchange=RESULTS_EXCHANGE,
        event_id=event_id,
        event_type=event.envelope.event_type,
        correlation_id=event.envelope.correlation_id,
    )
    await publish(state, message, digest=event_id, signature=None)
    return event, False


async def _read_json(request: Request, cfg: IngressSettings) -> Any:
    if not _is_json(request.headers.get("content-type")):
        raise Problem(415, "unsupported_media_type", f"the body must be {JSON_TYPE} (UTF-8)")
    body = await read_body(request, limit=cfg.max_body_bytes, time_limit_s=cfg.body_timeout_s)
    if not body:
        raise Problem(400, "empty_body", "the body is empty")
    try:
        return loads_strict(body, max_bytes=cfg.max_body_bytes)
    except InvalidEvent as exc:
        raise Problem(400, "invalid_json", str(exc)) from None
    except RecursionError:  # see _accept_event
        raise _too_deep() from None


def _rejected(exc: CallbackRejected) -> Problem:
    return Problem(exc.status, exc.code, exc.detail)


#: what the land system's operator reads in ``Message`` (Vietnamese, as TH's replies are)
_VILIS_MESSAGES: Final[dict[str, str]] = {
    "accepted": "Đã tiếp nhận",
    "duplicate": "Đã tiếp nhận trước đó",
    "bad_security_code": "Mã bảo mật không chính xác",
    "retry": "Hệ thống đang bận, vui lòng gửi lại sau",
    "refused": "Dữ liệu không hợp lệ",
}


def _vilis_error(problem: Problem) -> JSONResponse:
    key = "retry" if problem.status in {408, 409, 503} else problem.code
    message = _VILIS_MESSAGES.get(key, _VILIS_MESSAGES["refused"])
    reply = VilisReply.model_validate(
        {"Result": 0, "Message": message, "error": problem.code, "detail": problem.detail}
    )
    return JSONResponse(reply.model_dump(exclude_none=True), problem.status, headers=problem.headers())


# -- endpoints -------------------------------------------------------------------------------------------
async def post_event(request: Request) -> JSONResponse:
    """Verify, validate and publish one iGate event; 202 only after the broker's confirm."""
    return await _serve(request, _accept_event)


async def _esms(request: Request, state: IngressState, fields: dict[str, Any]) -> JSONResponse:
    token = state.secrets.esms_token
    if token is None:
        raise Problem(404, "callback_disabled", "eSMS callbacks are not enabled on this bus")
    if not _secret_ok(request.query_params.get("token"), token):
        raise Problem(401, "bad_token", "the token query parameter is missing or wrong")
    params = {k: v for k, v in request.query_params.items() if k != "token"}
    try:
        data = esms_event(params, now=datetime.now(UTC))
    except CallbackRejected as exc:
        raise _rejected(exc) from None
    event, duplicate = await _publish_callback(state, data)
    event_id, event_type = str(event.envelope.event_id), event.envelope.event_type
    fields.update(outcome="duplicate" if duplicate else "accepted", event_id=event_id, event_type=event_type)
    reply = CallbackAccepted(status="duplicate" if duplicate else "accepted", event_id=event_id, event_type=event_type)
    return JSONResponse(reply.model_dump(), 200)


async def esms_callback(request: Request) -> JSONResponse:
    """Turn an eSMS delivery report into ``sms.delivery_report`` on ``bus.results``."""
    return await _serve(request, _esms, system="esms")


async def _vilis(request: Request, state: IngressState, fields: dict[str, Any]) -> JSONResponse:
    code = state.secrets.vilis_code
    if code is None:
        raise Problem(404, "callback_disabled", "land-system callbacks are not enabled on this bus")
    if not _secret_ok(request.path_params.get("security_code"), code):
        raise Problem(401, "bad_security_code", "the security code in the path is wrong")
    try:
        action = vilis_action(str(request.path_params.get("action", "")))
    except CallbackRejected as exc:
        raise _rejected(exc) from None
    data = await _read_json(request, state.cfg)
    try:
        event_data = vilis_event(action, data, now=datetime.now(UTC))
    except CallbackRejected as exc:
        raise _rejected(exc) from None
    except RecursionError:  # the body's digest walks what loads_strict let through
        raise _too_deep() from None
    fields["dossier_code"] = event_data.get("dossier_code")
    event, duplicate = await _publish_callback(state, event_data)
    event_id = str(event.envelope.event_id)
    fields.update(outcome="duplicate" if duplicate else "accepted", event_id=event_id)
    fields["event_type"] = event.envelope.event_type
    message = _VILIS_MESSAGES["duplicate" if duplicate else "accepted"]
    return JSONResponse(VilisReply(Result=1, Message=message, event_id=event_id).model_dump(exclude_none=True))


async def vilis_callback(
    action: Annotated[
        str,
        Path(
            description="The land system's call, e.g. KetThucHoSo.", json_schema_extra={"enum": sorted(VILIS_ACTIONS)}
        ),
    ],
    security_code: Annotated[str, Path(description="The land system's shared security code.")],
    request: Request,
) -> JSONResponse:
    """Turn a land-system call into ``vilis.status_changed`` on ``bus.results``; reply ``{Result, Message}``."""
    del security_code  # checked in constant time by _vilis; never logged
    return await _serve(request, _vilis, render=_vilis_error, system="vilis", action=action[:60])


async def _unknown(request: Request, _state: IngressState, _fields: dict[str, Any]) -> JSONResponse:
    system = str(request.path_params.get("system", ""))
    if system == "esms":
        raise Problem(405, "method_not_allowed", "eSMS calls back with GET /callbacks/esms")
    if system in CALLBACK_SYSTEMS:
        raise Problem(404, "not_found", f"the {system} callback is {CALLBACK_SYSTEMS[system]}")
    raise _rejected(unknown_system(system))


def _render_unknown(problem: Problem) -> JSONResponse:
    response = problem.response()
    if problem.status == 405:
        response.headers["Allow"] = "GET"
    return response


async def unknown_callback(system: str, request: Request) -> JSONResponse:
    """A callback to a system the bus does not know, or to a known one in the wrong shape: 404 or 405."""
    return await _serve(request, _unknown, render=_render_unknown, system=system[:60])


# -- the app ---------------------------------------------------------------------------------------------
_E = {"model": ErrorBody}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}
}
_EVENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Duplicate, "description": "Accepted before with the same content; nothing published again."},
    400: {**_E, "description": "Empty body or invalid JSON."},
    401: {**_E, "description": "Missing, malformed, stale or wrong signature."},
    408: {**_E, "description": "The body did not arrive in time."},
    409: {
        **_E,
        "description": "Replayed request, event_id conflict, or the event is in flight.",
        "headers": _RETRY_AFTER,
    },
    413: {**_E, "description": "Body over the size limit."},
    415: {**_E, "description": "Not application/json."},
    422: {**_E, "description": "Unknown or not accepted event type, or the envelope/payload is invalid."},
    503: {**_E, "description": "The broker is unreachable, blocked or did not confirm.", "headers": _RETRY_AFTER},
}
_V = {"model": VilisReply}
_VILIS_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_V, "description": "Empty body or invalid JSON."},
    401: {**_V, "description": "Wrong security code."},
    404: {**_V, "description": "Unknown action, or land-system callbacks are not enabled."},
    408: {**_V, "description": "The body did not arrive in time."},
    409: {**_V, "description": "The same call is still being published.", "headers": _RETRY_AFTER},
    413: {**_V, "description": "Body over the size limit."},
    415: {**_V, "description": "Not application/json."},
    422: {**_V, "description": "The body does not fit the action, or the result event would be invalid."},
    503: {**_V, "description": "The broker is unreachable, blocked or did not confirm.", "headers": _RETRY_AFTER},
}
_ESMS_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_E, "description": "Wrong or missing token."},
    404: {**_E, "description": "eSMS callbacks are not enabled."},
    409: {**_E, "description": "The same report is still being published.", "headers": _RETRY_AFTER},
    422: {**_E, "description": "A parameter is missing or invalid."},
    503: {**_E, "description": "The broker is unreachable, blocked or did not confirm.", "headers": _RETRY_AFTER},
}
_SIGNATURE_PARAMETERS = [
    {
        "name": TIMESTAMP_HEADER,
        "in": "header",
        "required": True,
        "description": "Unix time (seconds) the request was signed at; ±window_s (300 s) of our clock.",
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
_ESMS_PARAMETERS = [
    {
        "name": "token",
        "in": "query",
        "required": True,
        "description": "The shared callback token.",
        "schema": {"type": "string"},
    },
    *(
        {"name": name, "in": "query", "required": name in {"SMSID", "SendStatus"}, "schema": {"type": "string"}}
        for name in ("SMSID", "SendStatus", "SendSuccess", "SendFailed", "RequestId", "telcoid", "phonenumber")
    ),
]


def _envelope_schema(accepted: frozenset[str]) -> dict[str, Any]:
    schema = Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    schema["title"] = "EventEnvelope"
    schema["properties"]["event_type"]["enum"] = sorted(accepted)
    schema["properties"]["payload"] = {
        "type": "object",
        "description": "The payload model of the event type: see x-payload-schemas of POST /events.",
    }
    return schema


def _openapi(app: FastAPI, accepted: frozenset[str]) -> dict[str, Any]:
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


def _include_ops(app: FastAPI, settings: Settings, observe: bool) -> Callable[[], None] | None:
    """Mount ``bus/ops_api.py``'s router with this process's :class:`Ops`; return what stops them.

    Without ``observe`` (or without that module) only a bare liveness ``GET /health`` is served.
    """
    if not observe or importlib.util.find_spec("bus.ops_api") is None:

        @app.get("/health", summary="Liveness", response_model=Liveness)
        async def health() -> Liveness:
            """Liveness only: the process answers."""
            return Liveness()

        return None
    from bus import ops_api
    from bus.wiring import load_app

    loaded = load_app(settings)
    # an ingress only accepts events: a target being down must not make it "not ready"
    ops = ops_api.make_ops(loaded, ready_needs_connectors=False)
    ops_api.attach_ops(app, ops)
    app.include_router(ops_api.router)
    app.state.igate_ops = ops

    def stop() -> None:
        ops.stop()
        loaded.close()

    return stop


def create_app(
    settings: Settings,
    *,
    ingress: IngressSettings | None = None,
    publisher_factory: Callable[[], EventSink] | None = None,
    observe: bool = True,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The ingress ASGI app; its publisher starts and stops with the app's lifespan.

    Args:
        settings: the bus settings (broker URL, heartbeat, config folder for the ops router).
        ingress: the ingress settings; read from the environment when None.
        publisher_factory: builds the publisher; a :class:`bus.ingress_publisher.PublisherPool` on
            ``settings.amqp_url`` when None.
        observe: serve ``bus/ops_api.py``'s ``/health`` and ``/metrics`` with this process's :class:`Ops`
            (loads the config folder, probes the connectors); False serves a bare liveness ``/health``.
        environ: where the secrets are read (``os.environ`` when None).

    Returns:
        The FastAPI app.

    Raises:
        ConfigError: a secret is missing or too short.
    """
    cfg = ingress if ingress is not None else IngressSettings()
    secrets = read_secrets(cfg, environ)
    accepted = frozenset(cfg.accepted_event_types)
    state = IngressState(
        cfg=cfg,
        secrets=secrets,
        accepted=accepted,
        events=ReplayCache(ttl_s=cfg.replay_ttl_s, max_entries=cfg.replay_max_entries),
        callbacks=ReplayCache(ttl_s=cfg.replay_ttl_s, max_entries=cfg.replay_max_entries),
    )

    def default_factory() -> EventSink:
        return PublisherPool(
            settings.amqp_url,
            size=cfg.publisher_threads,
            heartbeat=settings.heartbeat,
            blocked_connection_timeout=settings.blocked_connection_timeout,
            connect_timeout=min(cfg.publish_timeout_s, 5.0),
            queue_size=cfg.publish_queue_size,
            reconnect_delay_s=cfg.reconnect_delay_s,
            declare=cfg.declare_exchanges,
        )

    factory = publisher_factory or default_factory
    stop_ops: Callable[[], None] | None = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sink = factory()
        sink.start()
        state.sink = sink
        ops = getattr(_app.state, "igate_ops", None)
        if ops is not None:
            ops.start()
        log.info(
            "ingress_started",
            accepted=len(accepted),
            vilis=secrets.vilis_code is not None,
            esms=secrets.esms_token is not None,
        )
        try:
            yield
        finally:
            state.sink = None
            await asyncio.to_thread(sink.close)
            if stop_ops is not None:
                await asyncio.to_thread(stop_ops)
            log.info("ingress_stopped")

    app = FastAPI(
        title=TITLE,
        version="1",
        description=(
            "Signed events from iGate and callbacks from external systems, published on RabbitMQ with "
            "publisher confirms. Success is answered only once the broker confirmed the message."
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.igate_ingress = state
    app.openapi = lambda: _openapi(app, accepted)  # type: ignore[method-assign]
    _install_handlers(app)

    app.add_api_route(
        "/events",
        post_event,
        methods=["POST"],
        status_code=202,
        response_model=Accepted,
        responses=_EVENT_RESPONSES,
        summary="Publish one signed iGate event",
        openapi_extra={
            "parameters": _SIGNATURE_PARAMETERS,
            "requestBody": {
                "required": True,
                "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/EventEnvelope"}}},
            },
        },
    )
    app.add_api_route(
        "/callbacks/esms",
        esms_callback,
        methods=["GET"],
        response_model=CallbackAccepted,
        responses=_ESMS_RESPONSES,
        summary="eSMS delivery report (GET, token in the query)",
        openapi_extra={"parameters": _ESMS_PARAMETERS},
    )
    app.add_api_route(
        "/callbacks/vilis/{action}/{security_code}",
        vilis_callback,
        methods=["POST"],
        response_model=VilisReply,
        response_model_exclude_none=True,
        responses=_VILIS_RESPONSES,
        summary="Land system (VBDLIS/ILIS) callback, in TH's route shape {Action}/{securityCode}",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON_TYPE: {"schema": {"type": "object", "description": "The action's body."}}},
            }
        },
    )
    app.add_api_route("/callbacks/{system}", unknown_callback, methods=["POST"], include_in_schema=False)
    app.add_api_route("/callbacks/{system}", unknown_callback, methods=["GET"], include_in_schema=False)
    stop_ops = _include_ops(app, settings, observe)
    return app


def _secret_ok(given: str | None, expected: SecretStr) -> bool:
    return secret_matches(given, expected.get_secret_value())


def _install_handlers(app: FastAPI) -> None:
    """Not-found, wrong-method and unexpected errors in the ``{"error", "detail"}`` shape too.

    FastAPI's own 422 for a parameter that fails validation keeps its documented shape: no endpoint of
    ours declares a validated parameter, and the operations router documents FastAPI's.
    """

    async def http_error(_request: Request, error: Exception) -> JSONResponse:
        exc = cast("StarletteHTTPException", error)  # registered for this class only
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        if exc.status_code >= 500:
            code = "broker_unavailable" if exc.status_code == 503 else "internal_error"
        return JSONResponse(
            {"error": code, "detail": str(exc.detail)}, exc.status_code, headers=dict(exc.headers or {})
        )

    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("ingress_internal_error", error=type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal_error", "detail": "unexpected error; see the ingress log"}, 500)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
