"""The one probe of every connector: time a harmless call, then say up, degraded or down.

Where it sits: beside the connector step (event → route → adapter → **connector** → result/DLQ). The health
monitor (``bus/health.py``) calls each connector's ``probe()`` on its ``probe_interval``; a connector on the
kit only says which harmless call to make (a search, a lookup of a dossier that does not exist, bypassing
the breaker so it sees the target and not the breaker) and :func:`run_probe` decides, the same way for all:

========  ================================================================================
down      the call raised (its kind and message are the detail)
degraded  it answered, but the breaker is not closed; or it answered slower than ``degraded_ms``
up        it answered in time
========  ================================================================================
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from connectors.base import Health
from schemas.errors import BusError

if TYPE_CHECKING:
    from collections.abc import Callable

    from connectors.kit.guard import Breaker

#: probe latency above which a connector is degraded, unless its ``options.degraded_ms`` says otherwise
DEFAULT_DEGRADED_MS: Final = 2000.0


def run_probe(check: Callable[[], float | None], *, breaker: Breaker, degraded_ms: float, answered: str) -> Health:
    """Run ``check`` and judge it; never raises a bus error.

    Args:
        check: the harmless call; returns its own latency in ms (the target's part, without a login), or
            None to be timed whole.
        breaker: the connector's breaker, read once the call answered.
        degraded_ms: latency above which the answer is degraded.
        answered: the detail of an ``up`` answer, e.g. ``search answered``.
    """
    started = time.monotonic()
    try:
        measured = check()
    except BusError as exc:
        return Health("down", f"{exc.kind}: {exc}", round((time.monotonic() - started) * 1000, 1), datetime.now(UTC))
    latency_ms = round(measured if measured is not None else (time.monotonic() - started) * 1000, 1)
    state = breaker.state
    if state != "closed":
        return Health("degraded", f"answers, but the breaker is {state}", latency_ms, datetime.now(UTC))
    if latency_ms > degraded_ms:
        return Health("degraded", f"slow: over {degraded_ms:g} ms", latency_ms, datetime.now(UTC))
    return Health("up", answered, latency_ms, datetime.now(UTC))
