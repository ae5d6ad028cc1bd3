"""Process settings from the environment (prefix ``IGATE_BUS_``), with defaults that run on one machine.

Precedence, highest first: arguments, environment, defaults (pydantic-settings' ``settings_customise_sources``).
Secrets never live in a file: connectors name the environment variable that holds each one. The URLs
here may carry a password (``amqp://user:password@host``, ``postgresql+psycopg://user:password@host/db``,
``http://user:password@host:15672`` for the management API), so they are held as :class:`SecretUrl`:
whatever renders them (a log line, ``status``, an error, a repr) shows the password as ``***``, and only
the code that opens the connection asks for the real value.
Durations take a unit, as everywhere (:func:`config.model.parse_duration`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, Secret, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.model import Duration, parse_duration, within
from schemas.envelope import DEFAULT_DOSSIER_CODE_PATTERN, DEFAULT_FUTURE_SKEW_S, EventRules
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

#: the configuration shipped with the package (routes.yaml, connectors.yaml)
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent
#: what a hidden password is rendered as
HIDDEN: Final = "***"
#: query parameters that may carry a credential (libpq accepts ``?password=``; TLS options name key files)
_SECRET_QUERY: Final = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)
_AMQP_SCHEMES: Final = ("amqp", "amqps")


def redact_url(url: str) -> str:
    """``url`` with the password of its user part, and any credential-like query value, shown as ``***``.

    The password is taken as a URL parser takes it (everything between the first ``:`` of the user part and
    the *last* ``@``), so an unescaped ``@`` in a password hides all of it rather than half.
    """
    try:
        parts = urlsplit(url)
        redacted = url
        if "@" in parts.netloc:
            userinfo, _, hostport = parts.netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{HIDDEN}@{hostport}" if colon else f"{user}@{hostport}"
            redacted = redacted.replace(parts.netloc, netloc, 1)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_SECRET_QUERY.search(k) for k, _ in pairs):
            query = urlencode([(k, HIDDEN if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*/")
            redacted = redacted.replace(f"?{parts.query}", f"?{query}", 1)
    except ValueError:
        return f"<a URL that does not parse, hidden ({len(url)} characters)>"
    return redacted


def redact_store_url(url: str) -> str:
    """A SQLAlchemy URL as SQLAlchemy renders it with ``hide_password``, then :func:`redact_url` over it.

    SQLAlchemy is what hands the password to the driver, so its parse says which part is the password; the
    second pass also hides a ``?password=`` query value and whatever an unescaped ``@`` left visible.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        rendered = url
    return redact_url(rendered)


class SecretUrl(Secret[str]):
    """A URL that may hold a password: ``str()``, ``repr()`` and JSON dumps show it as ``***``.

    ``get_secret_value()`` is the only way to the password; call it where the connection is opened.
    """

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


class SecretStoreUrl(SecretUrl):
    """The idempotency store's SQLAlchemy URL, hidden the way SQLAlchemy hides it."""

    def _display(self) -> str:
        return redact_store_url(self.get_secret_value())


def _url_check(what: str, schemes: tuple[str, ...], example: str) -> Callable[[SecretUrl], SecretUrl]:
    """A validator refusing what the client (pika, httpx) would refuse later, never repeating the URL.

    The message names ``what`` and the rule only: the URL may hold a password.
    """

    def check(value: SecretUrl) -> SecretUrl:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in schemes:
            starts = " or ".join(f"{scheme}://" for scheme in schemes)
            raise ValueError(f"{what} starts with {starts} (got {parts.scheme or 'no'} scheme), e.g. {example}")
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise ValueError(f"the port of {what} is not a number from 0 to 65535") from None
        if not parts.hostname:
            raise ValueError(f"{what} names no host")
        return value

    return check


def _check_store_url(value: SecretStoreUrl) -> SecretStoreUrl:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(value.get_secret_value())
    except (ArgumentError, ValueError):
        example = "sqlite:///var/igate-bus.sqlite3 or postgresql+psycopg://USER@HOST/DB"
        raise ValueError(f"not a SQLAlchemy URL, e.g. {example}") from None
    return value


def whole_seconds(value: object) -> int:
    """A duration (unit required) that must be a whole number of seconds (an AMQP heartbeat, Retry-After)."""
    seconds = parse_duration(value)
    if seconds != int(seconds):
        raise ValueError(f"{value!r} must be a whole number of seconds")
    return int(seconds)


AmqpUrl = Annotated[
    SecretUrl, AfterValidator(_url_check("the AMQP URL", _AMQP_SCHEMES, "amqp://USER:PASSWORD@HOST:5672/%2F"))
]
StoreUrl = Annotated[SecretStoreUrl, AfterValidator(_check_store_url)]
ManagementUrl = Annotated[
    SecretUrl, AfterValidator(_url_check("the management API's URL", ("http", "https"), "http://HOST:15672"))
]


class Settings(BaseSettings):
    """Everything the process needs that is not a route or a connector."""

    # defaults are ours and already in seconds: only what comes from outside is parsed
    model_config = SettingsConfigDict(env_prefix="IGATE_BUS_", extra="ignore", frozen=True, validate_default=False)

    amqp_url: AmqpUrl = Field(
        default=SecretUrl("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="Broker URL; amqps:// for TLS. heartbeat and blocked_connection_timeout are set by the bus.",
    )
    store_url: StoreUrl = Field(
        default=SecretStoreUrl("sqlite:///var/igate-bus.sqlite3"),
        description="SQLAlchemy URL of the idempotency store; postgresql+psycopg://... for several workers.",
    )
    config_dir: Path = Field(default=DEFAULT_CONFIG_DIR, description="Folder with routes.yaml, connectors.yaml.")
    heartbeat: Annotated[int, BeforeValidator(whole_seconds), within(5, 60)] = Field(
        default=15, description="AMQP heartbeat, e.g. 15s (5s to 1m; 5s to 20s advised)."
    )
    blocked_connection_timeout: Annotated[Duration, within(high=600)] = Field(
        default=10.0, description="How long a publish may wait on a broker alarm, e.g. 10s."
    )
    log_level: str = "info"
    log_format: str = Field(default="json", pattern="^(json|console)$")
    worker_id: str | None = Field(default=None, description="Names this worker's claims; host:pid by default.")
    management_url: ManagementUrl | None = Field(
        default=None,
        description="RabbitMQ management API (http://host:15672); by default the AMQP URL's host, port 15672 "
        "(https and 15671 for amqps), with the AMQP URL's user and password. May carry a user and password: "
        "held as a secret like the AMQP URL.",
    )
    audit_log: Path = Field(
        default=Path("var/audit.log"),
        description="Where `dlq show --reveal` appends who saw which dead letter unmasked, and when.",
    )
    event_future_skew: Duration = Field(
        default=DEFAULT_FUTURE_SKEW_S,
        description="How far after its receipt an event's time may be (e.g. 5m); later is refused at both doors.",
    )
    event_max_age: Duration | None = Field(
        default=None,
        description="When set (e.g. 30d), an event whose time is older than this at its first receipt is refused.",
    )
    dossier_code_pattern: str = Field(
        default=DEFAULT_DOSSIER_CODE_PATTERN,
        description="Regular expression a dossier_code must match whole (the province's format).",
    )

    @field_validator("dossier_code_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        EventRules.build(dossier_code=value)
        return value

    def event_rules(self) -> EventRules:
        """The envelope's edge rules both doors apply (dossier code format, time bounds)."""
        return EventRules.build(
            future_skew_s=self.event_future_skew,
            max_age_s=self.event_max_age,
            dossier_code=self.dossier_code_pattern,
        )


S = TypeVar("S", bound=BaseSettings)


def settings_problems(exc: ValidationError, cls: type[BaseSettings]) -> list[str]:
    """One line per invalid setting: ``environment variable IGATE_BUS_X: message``, never the value given.

    pydantic's own rendering repeats the input (``input_value='amqp://user:password@…'``), which would
    print a password; this names the variable and the rule only.
    """
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule between settings (a model validator): its message names them
            lines.append(f"settings {prefix}*: {message}")
            continue
        name = prefix + "_".join(str(part) for part in err["loc"]).upper()
        where = "environment variable " if name in os.environ else "setting "
        lines.append(f"{where}{name}: {message}")
    return lines


def load_settings(cls: type[S], **overrides: Any) -> S:
    """``cls(**overrides)`` with the environment, every problem named by its variable in one ConfigError.

    Raises:
        ConfigError: one line per invalid setting (see :func:`settings_problems`).
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError("\n".join(settings_problems(exc, cls))) from None
