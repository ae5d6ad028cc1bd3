"""The shapes of ``routes.yaml`` and ``connectors.yaml``: one spec drives validation, ``check`` and the docs.

Every model forbids unknown keys so a typo is an error with its file and line, never a silent default.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

#: a duration as integrators write it: digits, an optional fraction, then the unit, with nothing between
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
#: the same number and unit with a space between them (``3 s``): refused, with a hint how to write it
_SPACED: Final = re.compile(r"(\d+(?:\.\d+)?)\s+(ms|s|m|h|d)")
_NUMBER: Final = re.compile(r"[+-]?\d+(?:\.\d*)?|[+-]?\.\d+")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: the longest duration anything of ours takes; more is a typo (and a broker refuses a TTL over 2^32 ms)
MAX_DURATION_S: Final = 30 * 86400.0
DURATION_HINT: Final = "use a number with a unit, e.g. 500ms, 5s, 2m, 1h"
ROUTE_NAME = r"^[a-z][a-z0-9-]{0,62}$"
BINDING_KEY = r"^([a-z0-9_]+|\*|#)(\.([a-z0-9_]+|\*|#))*$"
EXCHANGES = ("igate.events", "bus.results")


def parse_duration(value: object) -> float:
    """Seconds from a duration written with its unit: ``500ms``, ``5s``, ``2m``, ``1h``, ``1d``.

    The one parser for every duration the bus reads: routes.yaml, connectors.yaml, the ``IGATE_BUS_*``
    environment and command-line options. A number without a unit (``5``, ``probe_interval: 5``) is refused:
    it reads as seconds to one person and milliseconds to the next, and the README promises a unit. So is a
    space between the number and its unit (``3 s``), which YAML and shells split or keep unpredictably.
    Code may pass a :class:`datetime.timedelta`, which carries its unit.

    Raises:
        ValueError: the value is not a duration, or not in (0, :data:`MAX_DURATION_S`]; the message names
            the value and how to write it, never a pydantic location.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    elif isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{_short(value)} is not a duration: {DURATION_HINT}")
    elif not isinstance(value, str) or _NUMBER.fullmatch(value.strip()):
        raise ValueError(f"{_short(value)} has no unit: {DURATION_HINT}")
    elif match := _SPACED.fullmatch(value.strip()):
        written = "".join(match.groups())
        raise ValueError(f"{value!r} is not a duration: write the unit right after the number, e.g. {written}")
    else:
        raise ValueError(f"{_short(value)} is not a duration: {DURATION_HINT}")
    if seconds <= 0:
        raise ValueError(f"{_short(value)}: a duration must be more than 0")
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValueError(f"{_short(value)}: a duration must be at most {format_duration(MAX_DURATION_S)}")
    return seconds


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_duration(seconds: float) -> str:
    """The shortest exact way to write ``seconds`` for :func:`parse_duration`: ``5s``, ``2m``, ``1500ms``.

    Days are written in hours (``24h``): retry queues are named with this (``retry.ROUTE.24h``), and a name
    must not change under a running deployment.
    """
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def within(low: float | None = None, high: float | None = None) -> AfterValidator:
    """Bounds in seconds for a duration field, refused in durations' words (``at least 5s``).

    Use as ``Annotated[Duration, within(5, 60)]``.
    """

    def check(seconds: float) -> float:
        if low is not None and seconds < low:
            raise ValueError(f"{format_duration(seconds)} is too short: at least {format_duration(low)}")
        if high is not None and seconds > high:
            raise ValueError(f"{format_duration(seconds)} is too long: at most {format_duration(high)}")
        return seconds

    return AfterValidator(check)


#: seconds, parsed by :func:`parse_duration` (a unit is required)
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetrySpec(_Strict):
    """Tiered backoff: each delay is its own delay queue; the attempt count rides in ``x-attempts``."""

    backoff: list[Duration] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 3600.0],
        min_length=1,
        max_length=10,
        description="Delays between attempts; the last one repeats until max_attempts.",
        examples=[["5s", "30s", "2m", "10m", "1h"]],
    )
    max_attempts: int = Field(default=8, ge=1, le=100, description="Attempts before dead-lettering.")
    max_garbled: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Replies the connector refuses (hostile, malformed) before the message is dead-lettered.",
    )


#: the time zone of a schedule unless it names one: the province's
DEFAULT_TIMEZONE: Final = "Asia/Ho_Chi_Minh"
#: how late a firing may start and still count as on time (``grace``), unless the schedule says otherwise
DEFAULT_GRACE_S: Final = 600.0


class ScheduleSpec(_Strict):
    """When a polling route fires: every fixed interval or at cron times, in a time zone, with a misfire policy.

    Each firing becomes a ``bus.tick`` event through the route's own pipeline (``routes/scheduler.py``).
    The cron expression is checked by ``igate-bus check`` (``routes/schedule.py``), which needs APScheduler;
    the shape and the time zone are checked here.
    """

    every: Annotated[Duration, within(1.0)] | None = Field(
        default=None,
        description="Fire every this long (on a grid from 2000-01-01 00:00 in the time zone).",
        examples=["5m", "12h"],
    )
    cron: str | None = Field(
        default=None,
        description="Five cron fields: minute hour day-of-month month day-of-week.",
        examples=["0 2 * * *", "*/15 7-17 * * mon-fri"],
    )
    timezone: str = Field(default=DEFAULT_TIMEZONE, description="IANA time zone the cron fields are read in.")
    misfire: Literal["run_once", "skip"] = Field(
        default="run_once",
        description="A firing later than `grace` (the bus was down): run it once (run_once) or drop it (skip).",
    )
    grace: Duration = Field(default=DEFAULT_GRACE_S, description="How late a firing may start and be on time.")

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleSpec:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every (an interval, e.g. 5m) or cron (e.g. '0 2 * * *')")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: use an IANA name, e.g. Asia/Ho_Chi_Minh") from None
        return value

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a cron expression: give 5 fields (minute hour day month weekday)")
        return value

    def describe(self) -> str:
        """``every 5m`` or ``cron 0 2 * * * (Asia/Ho_Chi_Minh)``: how ``status`` and ``list`` show it."""
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"cron {self.cron} ({self.timezone})"


def _schedule_mapping(value: object) -> object:
    if isinstance(value, str):
        raise ValueError(
            f"{value!r}: write the schedule as a mapping, e.g. {{every: 12h}} or {{cron: '0 2 * * *'}}, "
            "with optional timezone, misfire and grace"
        )
    return value


class FromSpec(_Strict):
    """Where a route's messages come from: bindings on an exchange, or a schedule for polling routes."""

    exchange: Literal["igate.events", "bus.results"] = "igate.events"
    events: list[Annotated[str, Field(pattern=BINDING_KEY)]] = Field(
        default_factory=list, description="Binding keys (event types, * and # allowed).", examples=[["dossier.*"]]
    )
    schedule: Annotated[ScheduleSpec | None, BeforeValidator(_schedule_mapping)] = Field(
        default=None, description="When a polling route fires ({every: 12h} or {cron: '0 2 * * *'})."
    )

    @model_validator(mode="after")
    def _one_source(self) -> FromSpec:
        if not self.events and self.schedule is None:
            raise ValueError("give events to bind, or a schedule")
        return self


class OrderSpec(_Strict):
    """Per-dossier order toward one target (routes/ordering.py): ``latest`` or ``fifo``.

    ``latest``: an event older than what was already applied for (target, dossier) is not sent, it is acked
    as superseded (status routes, where only the newest state matters: the portal). ``fifo``: every event is
    delivered, in the order the route first saw them per dossier; a later one waits while an earlier one is
    pending. Routes that name the same ``target`` share one position per dossier.
    """

    mode: Literal["latest", "fifo"] = Field(description="latest: skip what is older; fifo: deliver all, in order.")
    target: str = Field(
        pattern=r"^[a-z][a-z0-9_-]{0,62}$",
        description="Names the state the order is kept against; routes to the same system share it.",
        examples=["nps"],
    )
    by: Literal["occurred_at"] | None = Field(
        default=None,
        description="What orders events in mode latest: the envelope's occurred_at (then status, then event_id).",
    )
    release_after: Annotated[Duration, within(1.0)] | None = Field(
        default=None,
        description=(
            "fifo: how long a pending event may go unseen (no attempt of it) before its dossier's later events "
            "doubt it; unseen for another such window, it is released (logged order_released_unseen). Default "
            "twice one call's lease plus the route's longest backoff, at least 10m."
        ),
        examples=["2h"],
    )

    @model_validator(mode="after")
    def _by_fits_mode(self) -> OrderSpec:
        if self.mode == "latest" and self.by is None:
            raise ValueError("mode latest needs by: occurred_at (what makes one event newer than another)")
        if self.mode == "fifo" and self.by is not None:
            raise ValueError("mode fifo orders by when the route first saw each event: leave out by")
        if self.mode == "latest" and self.release_after is not None:
            raise ValueError("release_after is for mode fifo (latest's lease ends on its own): leave it out")
        return self


class RouteSpec(_Strict):
    """One route: from ▶ when ▶ adapter ▶ to ▶ emits, with its retry policy."""

    name: str = Field(pattern=ROUTE_NAME, description="Lower-case, digits and dashes; names the queues.")
    from_: FromSpec = Field(alias="from")
    when: str | None = Field(default=None, description="JMESPath over the event; falsy = skip (acked).")
    adapter: str = Field(description="Registered adapter, e.g. igate_ack.dossier_received.")
    to: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$", description="connector.operation")
    retry: RetrySpec = Field(default_factory=RetrySpec)
    emits: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    prefetch: int = Field(default=50, ge=1, le=1000)
    concurrency: int = Field(default=8, ge=1, le=256, description="Deliveries worked on at once.")
    single_consumer: bool = Field(
        default=False,
        description="One consumer of the route's queue at a time across every worker process and host "
        "(RabbitMQ's single active consumer; another takes over when it goes): with concurrency 1, the "
        "route keeps its queue's order however many workers run.",
    )
    delivery_limit: int = Field(default=20, ge=2, le=1000, description="Broker redeliveries before DLQ.")
    max_bytes: int = Field(default=1_048_576, ge=256, le=16_777_216)
    order: OrderSpec | None = Field(default=None, description="Per-dossier order toward a target; none: any order.")
    enabled: bool = True

    @field_validator("when")
    @classmethod
    def _when_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            import jmespath
            from jmespath.exceptions import ParseError

            try:
                jmespath.compile(value)
            except ParseError as exc:
                raise ValueError(f"JMESPath does not parse: {exc}") from None
        return value

    @property
    def connector(self) -> str:
        """The connector part of ``to``."""
        return self.to.split(".", 1)[0]

    @property
    def operation(self) -> str:
        """The operation part of ``to``."""
        return self.to.split(".", 1)[1]


class RoutesFile(_Strict):
    """``routes.yaml``."""

    routes: list[RouteSpec] = Field(default_factory=list)


class TimeoutSpec(_Strict):
    """Connect and read timeouts per request, and a total deadline per operation."""

    connect: Duration = 3.0
    read: Duration = 10.0
    total: Duration = 15.0


class BreakerSpec(_Strict):
    """Circuit breaker: opens after ``fail_max`` consecutive failures, half-opens after ``reset_timeout``."""

    fail_max: int = Field(default=10, ge=1, le=1000)
    reset_timeout: Duration = 15.0


class ConnectorSpec(_Strict):
    """One external system's endpoint and limits; secrets are named by env var, never written here."""

    type: str = Field(description="Connector implementation, e.g. igate, noop.")
    endpoint: str | None = Field(default=None, examples=["http://127.0.0.1:8601"])
    timeout: TimeoutSpec = Field(default_factory=TimeoutSpec)
    breaker: BreakerSpec = Field(default_factory=BreakerSpec)
    rate_limit: float | None = Field(default=None, gt=0, description="Requests per second, at most.")
    max_reply_bytes: int = Field(default=2_097_152, ge=1024)
    credentials: dict[str, str] = Field(
        default_factory=dict,
        description="Secret name → environment variable holding it (e.g. password: IGATE_BUS_IGATE_PASSWORD).",
    )
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    probe_interval: Duration = 30.0

    @field_validator("credentials")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key, env in value.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", env):
                raise ValueError(f"credentials.{key} must name an environment variable (A-Z, 0-9, _)")
        return value


class ConnectorsFile(_Strict):
    """``connectors.yaml``."""

    connectors: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], ConnectorSpec] = Field(default_factory=dict)
