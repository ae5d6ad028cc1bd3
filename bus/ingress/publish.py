"""The confirmed publish behind both doors: hand the message over, wait for the broker, tell the replay cache.

Where it sits: the last step of ``POST /events`` (``bus/ingress/events.py``) and of the callbacks
(``bus/ingress/callbacks.py``), just before the answer: success is answered only once the broker confirmed
the message. The publisher threads are in ``bus/ingress/publisher.py``; this module turns their outcome
into the answer (``503`` with ``Retry-After`` when the broker is unreachable, blocked, refusing or slow),
keeps the replay cache in step (an event is remembered only once confirmed, even when the confirm comes
after the request was answered ``publish_timeout``), and times each confirm
(``igate_bus_ingress_publish_confirm_seconds``).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bus.ingress.problems import Problem
from bus.ingress.publisher import PublishError
from bus.ingress.replay import Verdict
from bus.logging import get_logger
from routes.topology import EVENTS_EXCHANGE

if TYPE_CHECKING:
    from concurrent.futures import Future

    from bus.ingress.publisher import Outbound
    from bus.ingress.replay import Seen
    from bus.ingress.settings import IngressSettings
    from bus.ingress.state import IngressState

log = get_logger("igate_bus.ingress")


def _unavailable(cfg: IngressSettings, exc: PublishError) -> Problem:
    return Problem(503, exc.code, exc.detail, retry_after=cfg.retry_after)


def _confirm_result(done: Future[None]) -> str:
    if done.cancelled():
        return "withdrawn"
    if done.exception() is not None:
        return "failed"
    return "late" if getattr(done, "igate_timed_out", False) else "confirmed"


async def publish(state: IngressState, message: Outbound, *, digest: str, signature: str | None) -> None:
    """Publish ``message`` and wait for the broker's confirm; the replay cache learns the outcome.

    The caller has had :meth:`ReplayCache.begin` answer NEW for the event. If the confirm does not come in
    ``publish_timeout``, the message is withdrawn when no publisher thread has taken it yet; otherwise it
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
        raise Problem(503, "shutting_down", "the ingress is not running", retry_after=cfg.retry_after)
    submitted = time.monotonic()
    try:
        future = sink.submit(message)
    except PublishError as exc:
        cache.finish(message.event_id, accepted=False, digest=digest, signature=signature)
        raise _unavailable(cfg, exc) from None

    def record(done: Future[None]) -> None:
        result = _confirm_result(done)
        ok = result in {"confirmed", "late"}
        cache.finish(message.event_id, accepted=ok, digest=digest, signature=signature)
        state.metrics.record_confirm(message.exchange, result, time.monotonic() - submitted)
        if result == "late":
            log.warning(
                "ingress_late_confirm",
                event_id=message.event_id,
                event_type=message.event_type,
                correlation_id=message.correlation_id or message.event_id,
            )

    future.add_done_callback(record)
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), cfg.publish_timeout)
    except TimeoutError:
        future.igate_timed_out = True  # type: ignore[attr-defined]
        future.cancel()
        raise Problem(
            503,
            "publish_timeout",
            f"the broker did not confirm within {cfg.publish_timeout:g} s; the event may or may not be "
            "stored: retry, signed again",
            retry_after=cfg.retry_after,
        ) from None
    except PublishError as exc:
        raise _unavailable(cfg, exc) from None


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
