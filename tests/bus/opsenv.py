# mypy: allow-untyped-defs
"""Helpers for the health, metrics and status tests: free ports, a simulator crash, status run in-process,
scraped metrics read back."""

from __future__ import annotations

import json
import socket
import sys
import threading
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import structlog
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from bus.cli_status import status

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import pytest

    from simulators.igate import IGateSimulator


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """Every sample of a text exposition by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, None when absent."""
    return samples.get((name, frozenset(labels.items())))


def families(text: str) -> set[str]:
    """The metric family names of a text exposition (counters without their ``_total``)."""
    return {family.name for family in text_string_to_metric_families(text)}


def stop_hard(sim: IGateSimulator) -> None:
    """Stop the simulator as a crash would: the listener closes and open keep-alive connections are cut.

    ``IGateSimulator.stop()`` closes only the listening socket; a handler thread keeps serving a pooled
    keep-alive connection for up to 30 s, so a stopped simulator would still answer the bus.
    """
    server = sim._server
    sim.stop()
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)
        if server is not None and getattr(target, "__self__", None) is server:
            conn = thread._args[0]  # type: ignore[attr-defined]
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def with_probe_interval(cfg: Path, interval: str) -> Path:
    """Make the igate connector of a busenv config folder probed every ``interval``."""
    path = cfg / "connectors.yaml"
    text = path.read_text()
    assert "    type: igate\n" in text
    path.write_text(text.replace("    type: igate\n", f"    type: igate\n    probe_interval: {interval}\n", 1))
    return cfg


@contextmanager
def cli_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let ``status`` run in this process: its logs go to this test's stderr, its stdout stays JSON.

    The command configures the process's logging to the stderr of the moment, which under click's runner
    is a buffer closed after the call; the other threads of the test (the worker) would then log into it.
    """
    monkeypatch.setattr("bus.logging.configure_logging", lambda *_a, **_k: None)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        yield
    finally:
        structlog.reset_defaults()


def invoke_status(env: dict[str, str], *args: str) -> Any:
    """Run ``igate-bus status`` in this process with ``env``; click's result."""
    return CliRunner().invoke(status, list(args), env=env, catch_exceptions=False)


def status_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    """``igate-bus status --json`` parsed; it must exit 0."""
    result = invoke_status(env, "--json", *args)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data
