"""The adapter registry: names in routes.yaml → pure mapping functions, their inputs and their output model.

Adapters register with :func:`adapter` when their module is imported; :func:`adapters` imports the modules
listed in :data:`ADAPTER_MODULES` once. A name is ``<module>.<function>``, e.g. ``igate_ack.dossier_received``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from datetime import datetime

    from schemas.envelope import Event

AdapterFn = Callable[..., BaseModel]
F = TypeVar("F", bound=AdapterFn)

#: modules whose adapters are registered; a new system adds its module here
ADAPTER_MODULES: tuple[str, ...] = (
    "adapters.builtin",
    "adapters.igate_ack",
    "adapters.results_to_igate",
    "adapters.igate_to_nps",
    "adapters.files",
    "adapters.igate_to_sms",
    "adapters.igate_to_vilis",
    "adapters.vilis_to_igate",
    "adapters.igate_to_receipt",
    "adapters.igate_to_vnpost",
)


@dataclass(frozen=True, slots=True)
class Adapter:
    """A registered adapter: ``fn(event, *, now) -> produces``."""

    name: str
    fn: AdapterFn
    accepts: frozenset[str]
    produces: type[BaseModel]

    def __call__(self, event: Event, *, now: datetime) -> BaseModel:
        """Map ``event``; ``now`` is passed in because adapters read no clock."""
        return self.fn(event, now=now)


_REGISTRY: dict[str, Adapter] = {}
_loaded: list[bool] = []


def adapter(*, accepts: tuple[str, ...], produces: type[BaseModel]) -> Callable[[F], F]:
    """Register the decorated function as ``<module>.<function>``; ``accepts`` lists event types (``*``: any)."""

    def register(fn: F) -> F:
        module = fn.__module__.rsplit(".", 1)[-1]
        name = f"{module}.{fn.__name__}"
        _REGISTRY[name] = Adapter(name=name, fn=fn, accepts=frozenset(accepts), produces=produces)
        return fn

    return register


def adapters() -> dict[str, Adapter]:
    """All registered adapters by name (imports the adapter modules on first use)."""
    if not _loaded:
        for module in ADAPTER_MODULES:
            importlib.import_module(module)
        _loaded.append(True)
    return dict(_REGISTRY)
