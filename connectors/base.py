"""The connector contract: a name, typed operations, ``probe()``, ``close()``, and a registry of types.

A connector does I/O and nothing else. Each operation takes a pydantic request and the idempotency key (which
the connector sends to the target: a client request id, an fkey, an order reference) and returns a pydantic
reply, raising only errors from :mod:`schemas.errors`. Operations with effects offer ``lookup(key)`` so a
redelivery whose claim is still in progress can ask the target before anything is sent again.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from pydantic import BaseModel, SecretStr

from schemas.errors import ConfigError, MappingError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime

    from config.model import ConnectorSpec

HealthState = Literal["up", "degraded", "down"]
Q = TypeVar("Q", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Health:
    """The answer of a probe."""

    state: HealthState
    detail: str = ""
    latency_ms: float | None = None
    checked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a connector, as the engine sees it."""

    name: str
    request: type[BaseModel]
    reply: type[BaseModel]
    call: Callable[[BaseModel, str], BaseModel]
    #: returns the reply of an earlier request with this idempotency key, or None if the target has none
    lookup: Callable[[str], BaseModel | None] | None = None
    #: False for reads, which need no claim
    effect: bool = True
    #: False when a call waits on no network or disk (the noop connector): the worker then hands such a
    #: route's messages out in batches to at most two threads (more would only contend for the GIL); True
    #: (every real target): one message per thread, the route's ``concurrency`` overlapping the waits
    waits_on_io: bool = True


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """What ``check`` needs to know of an operation without building the connector."""

    request: type[BaseModel]
    reply: type[BaseModel]
    effect: bool = True
    has_lookup: bool = True
    doc: str = ""


class Connector(Protocol):
    """What the engine needs from a connector instance."""

    name: str

    def operations(self) -> Mapping[str, Operation]:
        """The operations by name."""
        ...

    def probe(self) -> Health:
        """A cheap, side-effect-free call that tells whether the target answers."""
        ...

    def close(self) -> None:
        """Release sockets and threads."""
        ...


class ConnectorType(Protocol):
    """A connector class: built from its spec; its operations described for ``check``."""

    OPERATIONS: Mapping[str, OperationSpec]

    def __call__(self, name: str, spec: ConnectorSpec) -> Connector:
        """Build a connector named ``name`` from its spec."""
        ...


#: connector type → "module:Class", imported lazily (kombu's TRANSPORT_ALIASES).
CONNECTOR_TYPES: dict[str, str] = {
    "igate": "connectors.igate:IGateConnector",
    "noop": "connectors.noop:NoopConnector",
    "nps": "connectors.nps:NpsConnector",
    "receipt": "connectors.receipt:ReceiptConnector",
    "sftp": "connectors.sftp:SftpConnector",
    "sms": "connectors.sms:SmsConnector",
    "vilis": "connectors.vilis:VilisConnector",
    "vnpost": "connectors.vnpost:VnpostConnector",
}


@dataclass(slots=True)
class _Cache:
    loaded: dict[str, ConnectorType] = field(default_factory=dict)


_cache = _Cache()


def connector_type(type_name: str) -> ConnectorType:
    """The class registered for ``type_name``; ``KeyError`` when there is none."""
    if type_name not in _cache.loaded:
        module_name, _, attr = CONNECTOR_TYPES[type_name].partition(":")
        _cache.loaded[type_name] = getattr(importlib.import_module(module_name), attr)
    return _cache.loaded[type_name]


def endpoint(connector: str, spec: ConnectorSpec) -> str:
    """The connector's endpoint, which every network connector needs.

    Raises:
        ConfigError: the spec has none.
    """
    if not spec.endpoint:
        raise ConfigError(f"connector {connector!r} needs an endpoint", field="endpoint")
    return spec.endpoint


def required_option(connector: str, spec: ConnectorSpec, key: str, what: str) -> str:
    """The option ``key`` of a connector, which it cannot work without.

    Args:
        connector: the connector's name, for the message.
        spec: its entry in connectors.yaml.
        key: the option's name.
        what: what the option is, shown in parentheses (e.g. ``iGate's Keycloak client``).

    Raises:
        ConfigError: the option is missing or empty.
    """
    value = spec.options.get(key)
    if not value:
        raise ConfigError(f"connector {connector!r} needs options.{key} ({what})", field=f"options.{key}")
    return str(value)


def credential(connector: str, spec: ConnectorSpec, key: str) -> SecretStr:
    """The secret ``key`` of a connector, read from the environment variable its spec names.

    Raises:
        ConfigError: the spec names no variable for ``key``, or the variable is unset or empty.
    """
    env = spec.credentials.get(key)
    if env is None:
        raise ConfigError(
            f"connector {connector!r} needs credentials.{key}: the environment variable that holds it",
            field=f"credentials.{key}",
        )
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"environment variable {env} (credentials.{key} of connector {connector!r}) is unset")
    return SecretStr(value)


def typed(connector: str, kind: type[Q], call: Callable[[Q, str], BaseModel]) -> Callable[[BaseModel, str], BaseModel]:
    """Wrap a typed operation for :class:`Operation`: a request of the wrong model is a mapping error."""

    def operation(request: BaseModel, idempotency_key: str) -> BaseModel:
        if not isinstance(request, kind):
            raise MappingError(f"{connector} takes {kind.__name__}, got {type(request).__name__}")
        return call(request, idempotency_key)

    return operation
