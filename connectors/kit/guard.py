"""The guard every request of every connector goes through: breaker, rate limit, total deadline, watchdog.

Where it sits: inside the connector step (event → route → adapter → **connector** → result/DLQ), around each
request a connector sends, whatever its protocol. ``connectors/_http.py`` (REST) and ``connectors/_soap.py``
(SOAP) each build one :class:`Guard` from the connector's ``connectors.yaml`` entry and send every request
inside :meth:`Guard.call`, so both paths admit, limit, time and judge their calls the same way:

1. **the breaker first**: open, the call fails at once with :class:`~schemas.errors.BreakerOpen` (nothing
   sent; its ``retry_after`` says when a trial may go), never after queueing for a rate slot;
2. **the rate limit** (``rate_limit`` requests a second, a token bucket shared by every thread); a slot that
   would come after the deadline is refused (``TargetUnavailable``, nothing sent);
3. the request, under the operation's **total deadline** (``timeout.total``, from :meth:`Guard.deadline`);
   the transports arm the :data:`WATCHDOG` to cut a reply still dripping when the deadline passes;
4. **the verdict**: a transient error counts against the target, an answer (even a refusal, a 4xx, a SOAP
   client fault) counts for it. A call that proves nothing either way gives no verdict: a login, whose
   success says nothing of the service (``judge=False``), and a credential the target refused
   (:class:`connectors.kit.credential.Refused`): that is the bus's problem, not the target's.

The breaker is a state change the operator must see at once: each change is logged when it happens, once,
with how many calls it turned away since the last change (each parked one message in its route's delay
queue), and told to its subscribers (:meth:`Breaker.subscribe`: the health monitor), outside every lock.

Thread-safe: the engine calls one connector from several worker threads. pybreaker's own ``call`` holds its
lock for the whole guarded call, which would queue every worker behind one slow request, so the breaker is
consulted before sending and told the outcome afterwards instead.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from typing import TYPE_CHECKING, Any

import pybreaker
import structlog

from schemas.errors import BreakerOpen, BusError, TargetUnavailable, TransientError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from config.model import BreakerSpec, ConnectorSpec

log = structlog.get_logger("igate_bus.connector")


class Watchdog:
    """One daemon thread that runs an action (shutting a socket) when a deadline passes, unless disarmed.

    Every request arms it and almost every one disarms it long before its deadline, so arming wakes the
    thread only when the new deadline comes before the one it sleeps towards (deadlines are "now + the
    operation's total", so that is rare): a wake-up per request cost a thread switch and a GIL hand-over
    (issue 15: 13% of a REST route's CPU). Disarmed entries stay in the heap until the thread next wakes,
    which drops every one at the head at once; the heap holds at most the requests of one deadline's span.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._actions: dict[int, Callable[[], None]] = {}
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None
        #: the monotonic time the thread sleeps until (inf: until notified)
        self._sleeps_until = float("inf")

    def arm(self, at: float, action: Callable[[], None]) -> int:
        """Run ``action`` at monotonic time ``at``; returns the ticket to disarm it."""
        with self._cond:
            ticket = next(self._tickets)
            self._actions[ticket] = action
            heapq.heappush(self._heap, (at, ticket))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="igate-bus-watchdog", daemon=True)
                self._thread.start()
            if at < self._sleeps_until:
                self._sleeps_until = at  # the thread wakes for this one; later arms need not wake it again
                self._cond.notify()
            return ticket

    def disarm(self, ticket: int) -> None:
        """Cancel the action (its heap entry is dropped when the thread next wakes)."""
        with self._cond:
            self._actions.pop(ticket, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                heap = self._heap
                while heap and heap[0][1] not in self._actions:  # disarmed: nothing to wait for
                    heapq.heappop(heap)
                if not heap:
                    self._sleeps_until = float("inf")
                    self._cond.wait()
                    continue
                at, ticket = heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._sleeps_until = at
                    self._cond.wait(wait)
                    continue
                heapq.heappop(heap)
                action = self._actions.pop(ticket)
            action()


#: the process's one watchdog, shared by every transport
WATCHDOG = Watchdog()


class TokenBucket:
    """At most ``rate`` requests a second on average, in bursts of up to ``burst``; shared by every thread.

    A caller reserves a token under the lock (the count may go negative) and sleeps off its debt outside
    it, so waiting callers are served in order and never hold the lock while they wait.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, deadline: float) -> None:
        """Take one token, waiting for it if need be.

        Raises:
            TargetUnavailable: the token would come after ``deadline`` (nothing was sent).
        """
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            wait = 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate
            if now + wait > deadline:
                raise TargetUnavailable(f"rate limit of {self.rate:g}/s leaves no slot before the deadline")
            self._tokens -= 1.0
        if wait > 0:
            time.sleep(wait)


class Breaker(pybreaker.CircuitBreakerListener):
    """pybreaker's state machine, consulted before a call and told its outcome after, outside its lock.

    Each state change is logged once (``breaker_opened``, ``breaker_reopened`` when a trial call failed,
    ``breaker_closed``) with ``parked``, the calls it turned away since the change before, and then told to
    the subscribers. pybreaker announces changes while holding its lock; they are queued and announced by
    the thread that caused them once it let go, so a subscriber may read any breaker without a deadlock.
    """

    def __init__(self, name: str, spec: BreakerSpec) -> None:
        self.name = name
        self.reset_timeout = spec.reset_timeout
        self._cb = pybreaker.CircuitBreaker(
            fail_max=spec.fail_max,
            reset_timeout=spec.reset_timeout,
            name=name,
            listeners=[self],
            throw_new_error_on_trip=False,
        )
        self._lock = threading.Lock()  # admission: the trial slot, the parked count
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self._parked = 0
        self._changed_at = time.monotonic()
        self._reason = ""
        self._pending: list[tuple[str, str]] = []  # changes pybreaker announced, not yet told
        self._pending_lock = threading.Lock()  # a leaf lock: nothing is called while holding it
        self._listeners: list[Callable[[str, str], None]] = []

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._cb.current_state)

    @property
    def reason(self) -> str:
        """Why the breaker last opened (the failure that tripped it), ``""`` before it ever did."""
        return self._reason

    @property
    def retry_after(self) -> float | None:
        """Seconds until the open breaker lets a trial call through (0 when it would now); None when closed."""
        opened_at = self._opened_at
        if self.state == pybreaker.STATE_CLOSED or opened_at is None:
            return None
        return max(0.0, opened_at + self.reset_timeout - time.monotonic())

    def subscribe(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call ``listener(old, new)`` after every state change, in the thread that caused it, outside any lock.

        A listener must be quick and must not raise (one that does is logged and ignored).

        Returns:
            a function that ends the subscription.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    # -- pybreaker's listener interface (called under pybreaker's lock) ------------------------------------
    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        """Note the change (and our clock when it opens); it is announced after pybreaker's lock is let go."""
        del cb
        if new_state.name == pybreaker.STATE_OPEN:
            self._opened_at = time.monotonic()
        with self._pending_lock:
            self._pending.append((old_state.name if old_state is not None else pybreaker.STATE_CLOSED, new_state.name))

    # -- the guard's interface -----------------------------------------------------------------------------
    def admit(self) -> bool:
        """Let a call through, or raise :class:`BreakerOpen`; True when the call is the half-open trial."""
        with self._lock:
            state = self._cb.current_state
            if state == pybreaker.STATE_CLOSED:
                return False
            left = (self._opened_at or 0.0) + self.reset_timeout - time.monotonic()
            if state == pybreaker.STATE_OPEN and left > 0:
                self._parked += 1
                raise BreakerOpen(f"circuit breaker {self.name!r} is open for another {left:.1f}s", retry_after=left)
            if self._trial_in_flight:
                self._parked += 1
                raise BreakerOpen(
                    f"circuit breaker {self.name!r} is half-open and its trial call is out", retry_after=0.0
                )
            self._trial_in_flight = True
            return True

    def release(self, *, trial: bool) -> None:
        """A call that was admitted but gives no verdict (never sent, or proves nothing): free the trial slot."""
        if trial:
            with self._lock:
                self._trial_in_flight = False

    def record(self, failure: TransientError | None, *, trial: bool) -> None:
        """Feed the outcome through pybreaker's state machine (a no-op call that succeeds or re-raises)."""

        def replay() -> None:
            if failure is not None:
                raise failure

        if failure is not None:
            self._note_reason(f"{failure.kind}: {failure}")
        try:
            self._cb.call(replay)
        except (pybreaker.CircuitBreakerError, TransientError):
            pass  # the breaker counted it (or was opened meanwhile by another thread); the caller raises
        finally:
            self.release(trial=trial)
            self._announce()

    def trip(self, reason: str) -> None:
        """Open now, whatever the count (the bus's credentials were refused: no call can succeed)."""
        self._note_reason(reason)
        self._cb.open()
        self._announce()

    # -- internals -----------------------------------------------------------------------------------------
    def _note_reason(self, reason: str) -> None:
        self._reason = reason[:300]

    def _announce(self) -> None:
        """Log and tell the changes pybreaker queued, as one net change (open → half-open → open: reopened)."""
        with self._pending_lock:
            changes, self._pending = self._pending, []
        if not changes:
            return
        old, new = changes[0][0], changes[-1][1]
        with self._lock:
            parked, self._parked = self._parked, 0
            now = time.monotonic()
            lasted, self._changed_at = now - self._changed_at, now
        fields = {"connector": self.name, "parked": parked, "after_s": round(lasted, 1)}
        if new == pybreaker.STATE_OPEN and old == pybreaker.STATE_CLOSED:
            log.warning("breaker_opened", **fields, reason=self._reason, reset_timeout_s=self.reset_timeout)
        elif new == pybreaker.STATE_OPEN and any(n == pybreaker.STATE_HALF_OPEN for _, n in changes):
            log.warning("breaker_reopened", **fields, reason=self._reason, reset_timeout_s=self.reset_timeout)
        elif new == pybreaker.STATE_OPEN:
            log.debug("breaker_rearmed", **fields, reason=self._reason)  # tripped again while open
        elif new == pybreaker.STATE_CLOSED:
            log.info("breaker_closed", **fields)
        else:
            log.info("breaker_state_changed", **fields, old=old, new=new)
        for listener in list(self._listeners):
            try:
                listener(old, new)
            except Exception as exc:  # a broken subscriber never changes what a call does
                log.warning("breaker_listener_failed", connector=self.name, error=repr(exc))


class Guard:
    """One connector's breaker, rate limit and total deadline, applied the same way around every request.

    Args:
        name: the connector's name (logs, breaker).
        spec: its ``connectors.yaml`` entry (``timeout.total``, ``breaker``, ``rate_limit``).
        log_as: the prefix of the call events, e.g. ``http`` gives ``http.call`` and ``http.call_failed``.
    """

    def __init__(self, name: str, spec: ConnectorSpec, *, log_as: str) -> None:
        self.name = name
        self.total_s = spec.timeout.total
        self.breaker = Breaker(name, spec.breaker)
        self.limiter = TokenBucket(spec.rate_limit) if spec.rate_limit else None
        self._failed_event = f"{log_as}.call_failed"
        self._call_event = f"{log_as}.call"

    def deadline(self) -> float:
        """The monotonic time by which an operation starting now must be over (``timeout.total``)."""
        return time.monotonic() + self.total_s

    @contextlib.contextmanager
    def call(
        self, deadline: float, *, guard: bool = True, judge: bool = True, **fields: Any
    ) -> Iterator[dict[str, Any]]:
        """Admit one request, run the block (which sends it), and judge what the block raised or returned.

        The block raises only errors of :mod:`schemas.errors` (translated by the transport), or
        :class:`connectors.kit.credential.Refused`. It may add fields to the yielded dict for the success log.

        Args:
            deadline: the operation's deadline (:meth:`deadline`); the rate limit never waits past it.
            guard: False to bypass the breaker (probes must see the target, not the breaker).
            judge: False when success proves nothing of the target (a login): only failures count.
            fields: what the request is, for the logs (``operation=``, ``method=``, ``path=``).

        Raises:
            BreakerOpen: the breaker is open; nothing was sent.
            TargetUnavailable: the rate limit has no slot before the deadline; nothing was sent.
        """
        # The breaker first: with it open, a call must fail at once, not after queueing for a rate slot.
        trial = self.breaker.admit() if guard else False
        if self.limiter is not None:
            try:
                self.limiter.acquire(deadline)
            except TargetUnavailable:
                self.breaker.release(trial=trial)  # nothing was sent: no verdict on the target
                raise
        started = time.monotonic()
        note: dict[str, Any] = {}
        try:
            yield note
        except BusError as exc:
            log.warning(
                self._failed_event,
                connector=self.name,
                **fields,
                error_kind=exc.kind,
                error=str(exc),
                maybe_applied=getattr(exc, "maybe_applied", None),
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            if guard:
                self.breaker.record(exc if isinstance(exc, TransientError) else None, trial=trial)
            raise
        except BaseException:
            self.breaker.release(trial=trial)  # a refused credential, or a bug: no verdict on the target
            raise
        if guard and judge:
            self.breaker.record(None, trial=trial)
        else:
            self.breaker.release(trial=trial)
        log.debug(
            self._call_event,
            connector=self.name,
            **fields,
            **note,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
