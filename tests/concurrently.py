"""Threads started together and waited for: the boilerplate of the concurrency tests, in one place.

What it adds to start-then-join: a join that times out fails the test, naming how many threads still run.
A plain ``thread.join(timeout)`` returns either way, and a test reading what the threads did would then
judge a half-done race.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def run_concurrently(target: Callable[..., object], args: Iterable[tuple[Any, ...]], *, timeout: float = 30.0) -> None:
    """Start a thread running ``target(*a)`` for each ``a`` of ``args``, then wait for all of them.

    Raises:
        AssertionError: some thread was still running ``timeout`` seconds after the start.
    """
    threads = [threading.Thread(target=target, args=a, daemon=True) for a in args]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sum(thread.is_alive() for thread in threads)
    assert alive == 0, f"{alive} of {len(threads)} threads still running after {timeout:g}s"
