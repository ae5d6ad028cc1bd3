"""The shapes of ``routes.yaml`` and ``connectors.yaml``: one spec drives validation, ``check`` and the docs.

Every model forbids unknown keys so a typo is an error with its file and line, never a silent default.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
ROUTE_NAME = r"^[a-z][a-z0-9-]{0,62}$"
BINDING_KEY = r"^([a-z0-9_]+|\*|#)(\.([a-z0-9_]+|\*|#))*$"
EXCHANGES = ("igate.events", "bus.results")


def parse_duration(value: object) -> float:
    """Seconds from ``"500ms"``, ``"5s"``, ``"2m"``, ``"1h"``, ``"1d"`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number with a unit, e.g. 5s, 2m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration: use a number with a unit, e.g. 5s, 2m, 1h")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


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


class FromSpec(_Strict):
    """Where a route's messages come from: bindings on an exchange, or a schedule for polling routes."""

    exchange: Literal["igate.events", "bus.results"] = "igate.events"
    events: list[Annotated[str, Field(pattern=BINDING_KEY)]] = Field(
        default_factory=list, description="Binding keys (event types, * and # allowed).", examples=[["dossier.*"]]
    )
    schedule: str | None = Field(
        default=None, description="Interval ('every 12h') or cron ('cron 0 */2 * * *') for polling routes."
    )

    @model_validator(mode="after")
    def _one_source(self) -> FromSpec:
        if not self.events and self.schedule is None:
            raise ValueError("give events to bind, or a schedule")
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
    delivery_limit: int = Field(default=20, ge=2, le=1000, description="Broker redeliveries before DLQ.")
    max_bytes: int = Field(default=1_048_576, ge=256, le=16_777_216)
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
