# mypy: allow-untyped-defs
"""How pipeline threads hand outcomes back to the I/O loop: one wake-up per group, none lost (issue 15).

A unit test of the hand-over alone (the I/O loop is a recorder, no broker): the end-to-end behaviour is
what every route test exercises.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from routes.worker import Worker


class _LoopRecorder:
    """Stands in for pika's IOLoop: keeps the callbacks ``add_callback_threadsafe`` was given."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self._lock = threading.Lock()

    def add_callback_threadsafe(self, callback: Any) -> None:
        with self._lock:
            self.callbacks.append(callback)

    def run_pending(self) -> int:
        with self._lock:
            pending, self.callbacks = self.callbacks, []
        for callback in pending:
            callback()
        return len(pending)


def _worker() -> tuple[Worker, _LoopRecorder, list[Any]]:
    spec = SimpleNamespace(name="r", concurrency=4, prefetch=50)
    runner = SimpleNamespace(name="r", route=SimpleNamespace(spec=spec), operation=SimpleNamespace(waits_on_io=True))
    worker = Worker("amqp://guest:guest@127.0.0.1:5672/%2F", [runner])  # type: ignore[list-item]
    for executor in worker._executors.values():
        executor.shutdown(wait=False)
    loop = _LoopRecorder()
    worker._ioloop = loop
    seen: list[Any] = []
    worker._on_processed = lambda _runner, recs, _future: seen.extend(recs)  # type: ignore[method-assign,assignment]
    return worker, loop, seen


def test_completions_while_the_loop_is_busy_share_one_wake_up() -> None:
    """Three batches done before the loop runs ▶ one wake-up ▶ all three handed over, in order."""
    worker, loop, seen = _worker()
    for i in range(3):
        worker._handoff(worker._runners[0], [i], Future())  # type: ignore[list-item]
    assert len(loop.callbacks) == 1
    assert loop.run_pending() == 1
    assert seen == [0, 1, 2]
    worker._handoff(worker._runners[0], [3], Future())  # type: ignore[list-item] # after the drain: its own wake-up
    assert loop.run_pending() == 1
    assert seen == [0, 1, 2, 3]


def test_no_outcome_is_left_behind_when_threads_race_the_loop() -> None:
    """8 threads hand over 2,000 outcomes while the loop drains as fast as it can ▶ every one arrives once."""
    worker, loop, seen = _worker()
    done = threading.Event()

    def pipeline(start: int) -> None:
        for i in range(start, start + 250):
            worker._handoff(worker._runners[0], [i], Future())  # type: ignore[list-item]

    threads = [threading.Thread(target=pipeline, args=(k * 250,)) for k in range(8)]
    for t in threads:
        t.start()
    wakeups = 0
    while not done.is_set():
        wakeups += loop.run_pending()
        if not any(t.is_alive() for t in threads):
            done.set()
    wakeups += loop.run_pending()
    assert sorted(seen) == list(range(2000))
    assert not worker._processed
    assert not worker._wake_due
    assert 1 <= wakeups <= 2000
