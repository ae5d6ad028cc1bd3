"""The base of a connector on the kit: its name, spec and guard, its probe, its operations, its watchers.

Where it sits: the connector step (event → route → adapter → **connector** → result/DLQ). A connector class
subclasses :class:`KitConnector`, builds its client (``HttpClient`` or ``SoapClient``, which own the
:class:`~connectors.kit.guard.Guard`), declares its operations with :func:`~connectors.kit.declare.operation`
and says in :meth:`KitConnector.check` which harmless call its probe makes. What the engine and the health
monitor read of it (``probe()``, ``breaker_state``, ``breaker_reason``, ``watch()``) is the same for all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from connectors.kit.declare import Declared
from connectors.kit.probe import DEFAULT_DEGRADED_MS, run_probe

if TYPE_CHECKING:
    from collections.abc import Callable

    from config.model import ConnectorSpec
    from connectors.base import Health
    from connectors.kit.guard import Guard


class KitConnector(Declared, ABC):
    """A connector whose requests go through one :class:`~connectors.kit.guard.Guard`.

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; ``options.degraded_ms`` is the probe latency above which it is degraded (default
            2000).
        guard: the guard its client sends every request through.
    """

    #: the detail of an ``up`` probe, e.g. ``search answered``
    PROBE_ANSWERED: ClassVar[str] = "answered"

    def __init__(self, name: str, spec: ConnectorSpec, *, guard: Guard) -> None:
        self.name = name
        self.spec = spec
        self.guard = guard
        self.degraded_ms = float(spec.options.get("degraded_ms", DEFAULT_DEGRADED_MS))

    @abstractmethod
    def check(self) -> float | None:
        """One harmless call for the probe, bypassing the breaker (``guard=False``); never an effect.

        Returns:
            the target's latency in ms when the client measured it (without a login), or None.

        Raises:
            BusError: the target did not answer properly.
        """

    @abstractmethod
    def close(self) -> None:
        """Release sockets and threads."""

    def probe(self) -> Health:
        """Run :meth:`check` and judge it (:func:`~connectors.kit.probe.run_probe`); never raises."""
        return run_probe(
            self.check, breaker=self.guard.breaker, degraded_ms=self.degraded_ms, answered=self.PROBE_ANSWERED
        )

    @property
    def breaker_state(self) -> str:
        """The breaker's state (for health, metrics and ``igate-bus status``)."""
        return self.guard.breaker.state

    @property
    def breaker_reason(self) -> str:
        """Why the breaker last opened (the health detail of an open breaker)."""
        return self.guard.breaker.reason

    def watch(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` when the connector's state changes (its breaker opened or closed), at once.

        Returns:
            a function that stops the watch.
        """
        return self.guard.breaker.subscribe(lambda _old, _new: listener())
