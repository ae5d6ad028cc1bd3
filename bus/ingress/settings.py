"""The ingress's settings (``IGATE_BUS_INGRESS_*``) and the secrets it checks, read once at start.

Where it sits: under every other module of ``bus/ingress/``; ``igate-bus serve`` (``bus/cli_serve.py``)
builds :class:`IngressSettings` and the app factory reads :class:`Secrets` from the environment with it, so a
missing or short secret stops the process at start with one line naming the variable, never at the first
request. Secrets are named by environment variable, never held in settings, and kept as ``SecretStr``.

A callback system's credential: a field of :class:`IngressSettings` naming its variable, and one line of
:data:`CALLBACK_SECRETS`; its callback (``bus/ingress/systems.py``) is enabled when the variable is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.signing import DEFAULT_SECRET_ENV, MIN_SECRET_LENGTH
from config.model import Duration, format_duration, within
from config.settings import whole_seconds
from schemas.envelope import DEFAULT_MAX_BYTES
from schemas.errors import ConfigError
from schemas.events import EVENT_PAYLOADS
from schemas.igate import IGATE_EVENTS

if TYPE_CHECKING:
    from collections.abc import Mapping

#: the event types iGate may post by default: its own, and the bus's smoke-test ping
DEFAULT_ACCEPTED: Final = (*sorted(IGATE_EVENTS), "bus.ping")
#: shortest callback credential (security code, token) accepted in the environment
MIN_CALLBACK_SECRET: Final = 16


class IngressSettings(BaseSettings):
    """Settings of ``igate-bus serve`` (environment prefix ``IGATE_BUS_INGRESS_``); secrets by env-var name."""

    # defaults are ours and already in seconds: only what comes from outside is parsed
    model_config = SettingsConfigDict(
        env_prefix="IGATE_BUS_INGRESS_", extra="ignore", frozen=True, validate_default=False
    )

    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(default=8600, ge=0, le=65535, description="TCP port.")
    hmac_secret_env: str = Field(
        default=DEFAULT_SECRET_ENV, description="Environment variable holding iGate's HMAC secret (≥ 32 chars)."
    )
    hmac_previous_secret_env: str | None = Field(
        default=None, description="Variable holding the previous secret, still accepted during a rotation."
    )
    # durations take a unit (IGATE_BUS_INGRESS_WINDOW=5m) and are held in seconds
    window: Annotated[int, BeforeValidator(whole_seconds), within(30, 3600)] = Field(
        default=300, description="Signed timestamp tolerance, both ways, e.g. 5m."
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024, le=16 * DEFAULT_MAX_BYTES)
    body_timeout: Annotated[Duration, within(high=120)] = Field(
        default=10.0, description="Time allowed to receive a body, e.g. 10s."
    )
    replay_ttl: Annotated[Duration, within(low=30)] = Field(
        default=900.0, description="How long accepted event_ids are remembered, e.g. 15m."
    )
    replay_max_entries: int = Field(default=100_000, ge=100, description="Bound on the replay cache.")
    publish_timeout: Annotated[Duration, within(high=60)] = Field(
        default=5.0, description="Wait for the broker's confirm, e.g. 5s."
    )
    retry_after: Annotated[int, BeforeValidator(whole_seconds), within(1, 300)] = Field(
        default=2, description="Retry-After of a 503, e.g. 2s."
    )
    publisher_threads: int = Field(default=4, ge=1, le=64, description="Publisher connections.")
    publish_queue_size: int = Field(default=1000, ge=1, description="Messages waiting for a publisher thread.")
    reconnect_delay: Annotated[Duration, within(high=60)] = Field(
        default=0.5, description="Pause after a failed connect, e.g. 500ms."
    )
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
        if self.replay_ttl < self.window:
            raise ValueError(
                f"replay_ttl ({format_duration(self.replay_ttl)}) must be at least window "
                f"({format_duration(self.window)}): a request "
                "replayed inside the signature window must still be remembered"
            )
        unknown = sorted(set(self.accepted_event_types) - set(EVENT_PAYLOADS))
        if unknown:
            raise ValueError(f"accepted_event_types has types no schema knows: {', '.join(unknown)}")
        return self


#: each callback system's credential: the :class:`IngressSettings` field naming its variable, and what it is
CALLBACK_SECRETS: Final[dict[str, tuple[str, str]]] = {
    "vilis": ("vilis_security_code_env", "the land system's security code"),
    "esms": ("esms_token_env", "the eSMS callback token"),
}


@dataclass(frozen=True, slots=True)
class Secrets:
    """The credentials the ingress checks, read once from the environment.

    Attributes:
        hmac: iGate's active HMAC secrets (the current one, and the previous during a rotation).
        callbacks: each callback system's credential, by system (:data:`CALLBACK_SECRETS`); a system whose
            variable is unset is absent, and its callback answers 404 ``callback_disabled``.
    """

    hmac: tuple[SecretStr, ...]
    callbacks: Mapping[str, SecretStr]

    @property
    def vilis_code(self) -> SecretStr | None:
        """The land system's security code; None disables its callbacks."""
        return self.callbacks.get("vilis")

    @property
    def esms_token(self) -> SecretStr | None:
        """The eSMS callback token; None disables its callbacks."""
        return self.callbacks.get("esms")


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
    callbacks: dict[str, SecretStr] = {}
    for system, (setting, what) in CALLBACK_SECRETS.items():
        secret = optional(str(getattr(cfg, setting)), what)
        if secret is not None:
            callbacks[system] = secret
    return Secrets(hmac=tuple(hmac_secrets), callbacks=callbacks)
