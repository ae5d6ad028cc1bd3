"""The README's metric tables name every series the worker and the ingress export, so they cannot drift."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bus.health import HealthMonitor
from bus.ingress.metrics import IngressCollector, IngressMetrics
from bus.ingress.replay import ReplayCache
from bus.metrics import BusMetrics, HealthCollector, WorkerCollector

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "igate_bus_"


class _Sink:
    """A publisher as the ingress's collector reads it."""

    blocked = False
    waiting = 0
    connected = 1


class _Worker:
    """A worker as the worker's collector reads it."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}

    def wait_ready(self, timeout: float) -> bool:
        del timeout
        return True


def _documented(names: set[str]) -> list[str]:
    """The names (as the README writes them: without the prefix) missing from the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return sorted(n for n in names if f"`{n}`" not in readme and f"`{n}`," not in readme)


def _exported(registry: CollectorRegistry, *collectors: Collector) -> set[str]:
    for collector in collectors:
        registry.register(collector)
    out = set()
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        out.add(family.name.removeprefix(PREFIX) + suffix)
    return out


def test_every_ingress_series_is_in_the_readme() -> None:
    """IngressMetrics and its scrape-time gauges: each family is named in the README's ingress table."""
    metrics = IngressMetrics(["/events"])
    cache = ReplayCache(ttl_s=300, max_entries=100)
    names = _exported(metrics.registry, IngressCollector({"events": cache}, _Sink))

    assert len(names) == 11
    assert all(n.startswith("ingress_") for n in names)
    assert _documented(names) == []


def test_every_worker_series_read_without_a_broker_is_in_the_readme() -> None:
    """BusMetrics, connector health and the worker's counters: each family is named in the worker table."""
    metrics = BusMetrics(["bus-ack"])
    worker: Any = _Worker()
    names = _exported(metrics.registry, HealthCollector(HealthMonitor({})), WorkerCollector(lambda: worker))
    names |= {"broker_up", "queue_messages", "queue_consumers", "queue_oldest_message_age_seconds"}

    assert not any(n.startswith("ingress_") for n in names)
    assert _documented(names) == []
