"""Connector health: up, degraded or down, from scheduled probes and from the live traffic of the routes.

Where it sits: beside the connector step (event → route → adapter → **connector** → result/DLQ). The
pipeline tells :meth:`HealthMonitor.record_call` of every call to a target (through the observer in
``bus/metrics.py``); a background scheduler runs each connector's side-effect-free ``probe()`` every
``probe_interval`` of its ``connectors.yaml`` entry. ``GET /health`` (``bus/ops_api.py``), the Prometheus
gauges and ``igate-bus status`` read :meth:`HealthMonitor.snapshot`.

How a state is decided (:func:`derive_state`, first rule that holds):

========  =====================================================================================
down      the breaker is open, or the last ``down_after`` probes in a row failed (default 2)
degraded  the last probe failed; the breaker is half-open; a message was dead-lettered in the last
          ``window_s`` because the target kept answering replies the connector refuses (garbage);
          more than ``degraded_error_rate`` (20 %) of the live calls of the last ``window_s`` (60 s)
          failed, once there are ``min_calls`` (5); or the probe answered but said degraded itself (slow,
          breaker not closed)
unknown   not probed yet and no live call seen
up        otherwise
========  =====================================================================================

So a target that stops answering reads ``degraded`` after one probe interval and ``down`` after
``down_after``; one good probe brings it back to ``up`` (unless live calls still fail). A breaker that
opens or closes is a change of its own: a connector that offers ``watch(listener)`` (every connector on the
kit, ``connectors/kit/connector.py``) tells the monitor at that moment, and the state is derived and
logged then, not at the next probe. A failed live
call is one that raised a :class:`schemas.errors.TransientError` (timeout, refused, 5xx): a 4xx or a SOAP
client fault is the target answering, and :class:`schemas.errors.BreakerOpen` sent nothing at all.

Each change of state is logged once, as a ``connector_state_changed`` event with the old and new state and
the reason. The per-call cost is one short lock and a deque append; percentiles are computed when someone
asks, outside the lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog

from connectors.base import Health
from schemas.errors import BreakerOpen, TransientError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from concurrent.futures import Future

    from connectors.base import Connector

log = structlog.get_logger("igate_bus.health")

State = Literal["up", "degraded", "down", "unknown"]
#: every state, worst first (the order an operator reads them in)
STATES: Final[tuple[State, ...]] = ("down", "degraded", "unknown", "up")
#: breaker states as :class:`connectors._http.HttpClient` names them
BREAKER_STATES: Final = ("closed", "half-open", "open")

#: failed probes in a row that make a connector ``down``
DEFAULT_DOWN_AFTER: Final = 2
#: share of failed live calls above which a connector is ``degraded``
DEFAULT_DEGRADED_ERROR_RATE: Final = 0.2
#: seconds of live calls the error rate and the p95 are computed over
DEFAULT_WINDOW_S: Final = 60.0
#: live calls in the window before the error rate counts (one failure out of one is not a trend)
DEFAULT_MIN_CALLS: Final = 5
#: live calls kept per connector, at most
MAX_SAMPLES: Final = 2000
#: a probe longer than this margin over the connector's own deadline is abandoned
PROBE_MARGIN_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class ConnectorHealth:
    """One connector's health as of :attr:`evaluated_at`: what ``/health`` and ``status`` show."""

    name: str
    state: State
    detail: str
    since: datetime | None
    breaker: str | None
    last_success: datetime | None
    last_failure: datetime | None
    error_rate: float | None
    calls: int
    p95_ms: float | None
    probe: Health | None
    probe_failures: int
    probe_interval_s: float
    evaluated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (datetimes as ISO 8601)."""
        probe = self.probe
        return {
            "name": self.name,
            "state": self.state,
            "detail": self.detail,
            "since": _iso(self.since),
            "breaker": self.breaker,
            "last_success": _iso(self.last_success),
            "last_failure": _iso(self.last_failure),
            "error_rate": self.error_rate,
            "calls": self.calls,
            "p95_ms": self.p95_ms,
            "probe": None
            if probe is None
            else {
                "state": probe.state,
                "detail": probe.detail,
                "latency_ms": probe.latency_ms,
                "checked_at": _iso(probe.checked_at),
            },
            "probe_failures": self.probe_failures,
            "probe_interval_s": self.probe_interval_s,
            "evaluated_at": _iso(self.evaluated_at),
        }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def derive_state(  # noqa: PLR0911 - one return per row of the table in the module docstring
    *,
    probe: Health | None,
    probe_failures: int,
    breaker: str | None,
    error_rate: float | None,
    calls: int,
    down_after: int = DEFAULT_DOWN_AFTER,
    degraded_error_rate: float = DEFAULT_DEGRADED_ERROR_RATE,
    breaker_reason: str = "",
    garbled: str | None = None,
) -> tuple[State, str]:
    """The state and its reason from what is known of a connector (pure; the table in the module docstring).

    Args:
        probe: the last probe's answer, None before the first.
        probe_failures: failed probes in a row, up to now.
        breaker: the breaker's state, None for a connector without one.
        error_rate: failed share of the live calls in the window, None when there are too few.
        calls: live calls in the window.
        down_after: failed probes in a row that make it down.
        degraded_error_rate: failed share above which it is degraded.
        breaker_reason: why the breaker opened (the failure that tripped it), shown with an open breaker.
        garbled: why a message was dead-lettered for garbage replies within the window, None if none was.
    """
    last = probe.detail if probe is not None else ""
    if breaker == "open":
        return "down", "the circuit breaker is open" + (f" ({breaker_reason})" if breaker_reason else "")
    if probe_failures >= down_after:
        return "down", f"{probe_failures} probes failed in a row: {last}"
    if probe_failures > 0:
        return "degraded", f"the last probe failed: {last}"
    if breaker == "half-open":
        return "degraded", "the circuit breaker is half-open (a trial call decides)"
    if garbled is not None:
        return "degraded", f"answers garbage: a message was dead-lettered after {garbled}"
    if error_rate is not None and error_rate > degraded_error_rate:
        return "degraded", f"{error_rate:.0%} of the last {calls} calls failed"
    if probe is not None and probe.state == "degraded":
        return "degraded", probe.detail
    if probe is None and calls == 0:
        return "unknown", "not probed yet"
    return "up", last or f"{calls} calls answered"


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of ``values`` by the nearest-rank method; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def is_failure(error: BaseException | None) -> bool | None:
    """Whether a live call counts against the target: True, False, or None when it reached nothing.

    A transient error (timeout, refused, 5xx) is a failure; :class:`BreakerOpen` sent nothing and is not a
    call at all; anything else (a 4xx, a mapping error) means the target answered.
    """
    if error is None:
        return False
    if isinstance(error, BreakerOpen):
        return None
    return isinstance(error, TransientError)


@dataclass(slots=True)
class _Entry:
    """What the monitor keeps of one connector (guarded by the monitor's lock)."""

    connector: Connector
    interval_s: float
    probe_timeout_s: float
    samples: deque[tuple[float, bool, float]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    probe: Health | None = None
    probe_failures: int = 0
    in_flight: Future[Health] | None = None
    last_success: datetime | None = None
    last_failure: datetime | None = None
    state: State = "unknown"
    since: datetime | None = None
    #: when (monotonic) and why a message was last dead-lettered for replies the connector refused
    garbled_at: float | None = None
    garbled: str | None = None


class HealthMonitor:
    """Tracks every connector's health from probes and live calls; thread-safe.

    Args:
        connectors: the connectors to watch, by name.
        intervals: seconds between probes per connector (``probe_interval`` of connectors.yaml);
            ``default_interval_s`` for the others.
        probe_timeouts: seconds a probe may take per connector before it counts as failed (its
            ``timeout.total`` plus a margin), capped below the interval so probes never pile up.
        default_interval_s: the interval for a connector ``intervals`` does not name. Defaults to 30 s.
        down_after: failed probes in a row that make a connector down. Defaults to 2.
        degraded_error_rate: share of failed live calls that makes a connector degraded. Defaults to 0.2.
        window_s: seconds of live calls the error rate and p95 cover. Defaults to 60 s.
        min_calls: live calls in the window before the error rate counts. Defaults to 5.
        clock: monotonic seconds (tests pass a fake one).
        wall: the current UTC time (tests pass a fake one).
    """

    def __init__(
        self,
        connectors: Mapping[str, Connector],
        *,
        intervals: Mapping[str, float] | None = None,
        probe_timeouts: Mapping[str, float] | None = None,
        default_interval_s: float = 30.0,
        down_after: int = DEFAULT_DOWN_AFTER,
        degraded_error_rate: float = DEFAULT_DEGRADED_ERROR_RATE,
        window_s: float = DEFAULT_WINDOW_S,
        min_calls: int = DEFAULT_MIN_CALLS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if down_after < 1:
            raise ValueError("down_after must be at least 1")
        intervals = intervals or {}
        timeouts = probe_timeouts or {}
        self._entries: dict[str, _Entry] = {}
        for name, conn in connectors.items():
            interval = float(intervals.get(name, default_interval_s))
            # below the interval, so a hung target never makes the scheduler skip (and warn about) a run
            timeout = min(float(timeouts.get(name, interval)), interval * 0.9)
            self._entries[name] = _Entry(conn, interval, timeout)
        self.down_after = down_after
        self.degraded_error_rate = degraded_error_rate
        self.window_s = window_s
        self.min_calls = min_calls
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()  # guards the entries; held only for appends and copies
        self._evaluating = threading.Lock()  # one evaluation at a time, so each change is logged once
        self._probes = ThreadPoolExecutor(max(1, len(self._entries)), thread_name_prefix="igate-bus-probe")
        self._scheduler: Any = None
        self._unwatch: list[Callable[[], None]] = []
        for conn in connectors.values():
            watch = getattr(conn, "watch", None)
            if callable(watch):
                unwatch = watch(self._changed)
                if callable(unwatch):
                    self._unwatch.append(unwatch)

    def _changed(self) -> None:
        """A connector's breaker opened or closed: derive and log every state now, not at the next probe."""
        self.evaluate()

    @property
    def names(self) -> list[str]:
        """The connectors watched, sorted."""
        return sorted(self._entries)

    # -- live traffic (pipeline threads) ---------------------------------------------------------------
    def record_call(self, connector: str, duration_s: float, error: BaseException | None) -> None:
        """Note one live call to a target; cheap, for the pipeline's hot path (unknown names are ignored)."""
        failed = is_failure(error)
        entry = self._entries.get(connector)
        if failed is None or entry is None:
            return
        now, wall = self._clock(), self._wall()
        with self._lock:
            entry.samples.append((now, failed, duration_s))
            if failed:
                entry.last_failure = wall
            else:
                entry.last_success = wall

    def record_garbled(self, connector: str, detail: str) -> None:
        """A message was dead-lettered because ``connector``'s target kept answering garbage: degraded now.

        The state is re-evaluated at once, so the change is logged when it happens, not at the next probe.
        """
        entry = self._entries.get(connector)
        if entry is None:
            return
        with self._lock:
            entry.garbled_at, entry.garbled = self._clock(), detail
            entry.last_failure = self._wall()
        self.evaluate()

    # -- probes ----------------------------------------------------------------------------------------
    def probe(self, name: str) -> Health:
        """Run ``name``'s probe now (bounded by its timeout), record it and re-evaluate; returns the answer."""
        entry = self._entries[name]
        with self._lock:
            running = entry.in_flight is not None and not entry.in_flight.done()
            try:
                future = None if running else self._probes.submit(entry.connector.probe)
            except RuntimeError:  # stopped meanwhile: a last scheduled run finds the pool shut
                return Health("down", "the health monitor is stopped", None, self._wall())
            if future is not None:
                entry.in_flight = future
        if future is None:
            health = Health("down", "the previous probe is still running", None, self._wall())
        else:
            started = self._clock()
            try:
                health = future.result(timeout=entry.probe_timeout_s)
            except FutureTimeout:
                health = Health(
                    "down",
                    f"no answer within {entry.probe_timeout_s:g}s",
                    round((self._clock() - started) * 1000, 1),
                    self._wall(),
                )
            except Exception as exc:  # probe() must not raise; one that does tells us the target is unusable
                health = Health("down", f"probe raised {type(exc).__name__}: {exc}", None, self._wall())
        self._record_probe(entry, health)
        self.evaluate()
        return health

    def probe_all(self) -> None:
        """Probe every connector once, in parallel (at start, and for tests)."""
        threads = [threading.Thread(target=self.probe, args=(n,), daemon=True) for n in self._entries]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _record_probe(self, entry: _Entry, health: Health) -> None:
        at = health.checked_at or self._wall()
        with self._lock:
            entry.probe = health
            if health.state == "down":
                entry.probe_failures += 1
                entry.last_failure = at
            else:
                entry.probe_failures = 0
                entry.last_success = at

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, ConnectorHealth]:
        """Derive every connector's state now, log each change, and return the snapshot."""
        with self._evaluating:
            now, wall = self._clock(), self._wall()
            out: dict[str, ConnectorHealth] = {}
            changes: list[tuple[str, State, State, str]] = []
            for name, entry in self._entries.items():
                with self._lock:
                    samples = [s for s in entry.samples if now - s[0] <= self.window_s]
                    probe, failures = entry.probe, entry.probe_failures
                    last_success, last_failure = entry.last_success, entry.last_failure
                    recent = entry.garbled_at is not None and now - entry.garbled_at <= self.window_s
                    garbled = entry.garbled if recent else None
                breaker = _breaker_of(entry.connector)
                reason = getattr(entry.connector, "breaker_reason", "") if breaker == "open" else ""
                calls = len(samples)
                failed = sum(1 for s in samples if s[1])
                error_rate = round(failed / calls, 4) if calls >= self.min_calls else None
                p95 = percentile([s[2] for s in samples], 0.95)
                state, detail = derive_state(
                    probe=probe,
                    probe_failures=failures,
                    breaker=breaker,
                    error_rate=error_rate,
                    calls=calls,
                    down_after=self.down_after,
                    degraded_error_rate=self.degraded_error_rate,
                    breaker_reason=reason if isinstance(reason, str) else "",
                    garbled=garbled,
                )
                with self._lock:
                    old = entry.state
                    if state != old or entry.since is None:
                        entry.since = wall
                    entry.state = state
                    since = entry.since
                if state != old:
                    changes.append((name, old, state, detail))
                out[name] = ConnectorHealth(
                    name=name,
                    state=state,
                    detail=detail,
                    since=since,
                    breaker=breaker,
                    last_success=last_success,
                    last_failure=last_failure,
                    error_rate=error_rate,
                    calls=calls,
                    p95_ms=None if p95 is None else round(p95 * 1000, 1),
                    probe=probe,
                    probe_failures=failures,
                    probe_interval_s=entry.interval_s,
                    evaluated_at=wall,
                )
            for name, old, new, detail in changes:
                level = "warning" if new in {"down", "degraded"} else "info"
                getattr(log, level)("connector_state_changed", connector=name, old=old, new=new, reason=detail)
        return out

    def snapshot(self) -> dict[str, ConnectorHealth]:
        """Every connector's health now (same as :meth:`evaluate`); for ``/health``, metrics and ``status``."""
        return self.evaluate()

    # -- schedule --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Probe every connector now, then on its interval, in a background scheduler (APScheduler 3)."""
        if self._scheduler is not None or not self._entries:
            return
        from apscheduler.schedulers.background import BackgroundScheduler

        # APScheduler narrates every run at INFO; its warnings and errors are what an operator needs
        for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        scheduler = BackgroundScheduler(timezone=UTC, daemon=True)
        first = datetime.now(UTC)
        for name, entry in self._entries.items():
            scheduler.add_job(
                self.probe,
                "interval",
                args=[name],
                seconds=entry.interval_s,
                id=f"probe:{name}",
                next_run_time=first,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(entry.interval_s)),
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info("health_monitor_started", connectors={n: e.interval_s for n, e in self._entries.items()})

    def stop(self) -> None:
        """Stop probing and watching; a probe still running is abandoned (it ends with the connector's deadline)."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch.clear()
        self._probes.shutdown(wait=False, cancel_futures=True)


def _breaker_of(connector: Connector) -> str | None:
    """The breaker's state of a connector that has one (``breaker_state``), else None."""
    state = getattr(connector, "breaker_state", None)
    return state if isinstance(state, str) else None
