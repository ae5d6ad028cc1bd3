"""Process settings from the environment (prefix ``IGATE_BUS_``), with defaults that run on one machine.

Precedence, highest first: arguments, environment, defaults (pydantic-settings' ``settings_customise_sources``).
Secrets never live here: connectors name the environment variable that holds each one.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the configuration shipped with the package (routes.yaml, connectors.yaml)
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent


class Settings(BaseSettings):
    """Everything the process needs that is not a route or a connector."""

    model_config = SettingsConfigDict(env_prefix="IGATE_BUS_", extra="ignore", frozen=True)

    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/%2F",
        description="Broker URL; amqps:// for TLS. heartbeat and blocked_connection_timeout are set by the bus.",
    )
    store_url: str = Field(
        default="sqlite:///var/igate-bus.sqlite3",
        description="SQLAlchemy URL of the idempotency store; postgresql+psycopg://... for several workers.",
    )
    config_dir: Path = Field(default=DEFAULT_CONFIG_DIR, description="Folder with routes.yaml, connectors.yaml.")
    heartbeat: int = Field(default=15, ge=5, le=60, description="AMQP heartbeat in seconds (5-20 advised).")
    blocked_connection_timeout: float = Field(default=10.0, gt=0)
    log_level: str = "info"
    log_format: str = Field(default="json", pattern="^(json|console)$")
    worker_id: str | None = Field(default=None, description="Names this worker's claims; host:pid by default.")
