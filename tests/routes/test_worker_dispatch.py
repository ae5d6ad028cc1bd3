# mypy: allow-untyped-defs
"""How the worker hands waiting deliveries to pipeline threads (a unit test: no broker, the executor stubbed).

Routes to real targets must get one delivery per thread: in a batch, a claim would wait behind the other
sends and its lease could run out before its own send, letting another worker reclaim and send it too.
Routes that wait on no I/O get batches, on at most two threads.
"""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pika
import pytest

from routes.pipeline import Delivery
from routes.worker import CPU_ONLY_THREADS, MAX_BATCH, Worker, _InFlight


class _RecordingExecutor:
    """Stands in for a ThreadPoolExecutor: records each batch handed to it, runs nothing."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def submit(self, _fn: Any, deliveries: list[Delivery]) -> Future[Any]:
        self.batches.append(len(deliveries))
        return Future()

    def shutdown(self, wait: bool = True) -> None:
        del wait


def _worker(*, waits_on_io: bool, concurrency: int) -> tuple[Worker, Any, _RecordingExecutor]:
    spec = SimpleNamespace(name="r", concurrency=concurrency, prefetch=50)
    runner = SimpleNamespace(
        name="r",
        route=SimpleNamespace(spec=spec),
        operation=SimpleNamespace(waits_on_io=waits_on_io),
        handle_batch=lambda _deliveries: [],
        admit=lambda deliveries: deliveries,  # an unordered route: RouteRunner.admit hands them on as they are
    )
    worker = Worker("amqp://guest:guest@127.0.0.1:5672/%2F", [runner])  # type: ignore[list-item]
    for executor in worker._executors.values():
        executor.shutdown(wait=False)
    recorder = _RecordingExecutor()
    worker._executors["r"] = recorder  # type: ignore[assignment]
    return worker, runner, recorder


def _arrive(worker: Worker, runner: Any, n: int) -> None:
    props = pika.BasicProperties(message_id="m")
    for tag in range(n):
        worker._waiting["r"].append(
            (_InFlight(runner, 0, None, tag), Delivery(b"{}", props, "x", "k", redelivered=False))
        )
        worker._running += 1


@pytest.mark.parametrize("concurrency", [1, 4, 8])
def test_a_route_to_a_real_target_gets_one_delivery_per_thread(concurrency: int) -> None:
    """50 waiting, every thread free: each thread gets exactly one; the rest wait for a thread."""
    worker, runner, recorder = _worker(waits_on_io=True, concurrency=concurrency)
    _arrive(worker, runner, 50)

    worker._dispatch(runner)

    assert recorder.batches == [1] * concurrency
    assert len(worker._waiting["r"]) == 50 - concurrency


def test_a_route_that_waits_on_nothing_gets_batches_on_at_most_two_threads() -> None:
    """50 waiting on a noop-like route with concurrency 8: two batches, spread evenly, within MAX_BATCH."""
    worker, runner, recorder = _worker(waits_on_io=False, concurrency=8)
    _arrive(worker, runner, 50)

    worker._dispatch(runner)

    assert len(recorder.batches) == CPU_ONLY_THREADS
    assert recorder.batches == [25, 25]
    assert all(size <= MAX_BATCH for size in recorder.batches)
    worker._busy["r"] = 0
    _arrive(worker, runner, 100)
    recorder.batches.clear()
    worker._dispatch(runner)
    assert recorder.batches == [MAX_BATCH, MAX_BATCH]


class _InlineExecutor:
    """Stands in for a ThreadPoolExecutor: runs each submitted call at once, in the caller's thread."""

    def __init__(self) -> None:
        self.submits = 0

    def submit(self, fn: Any, *args: Any) -> None:
        self.submits += 1
        fn(*args)

    def shutdown(self, wait: bool = True) -> None:
        del wait


class _Loop:
    """Stands in for pika's IOLoop: keeps what ``add_callback_threadsafe`` was given, runs it on demand."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_callback_threadsafe(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def run_pending(self) -> None:
        pending, self.callbacks = self.callbacks, []
        for callback in pending:
            callback()


def test_a_thread_takes_the_next_waiting_delivery_itself_and_gives_its_slot_back_when_none_waits() -> None:
    """5 waiting, one thread: one start, five batches of one; drained ▶ the slot is free for the next arrival."""
    worker, runner, _ = _worker(waits_on_io=True, concurrency=1)
    batches: list[int] = []

    def handle_chain(deliveries: list[Delivery] | None, take_next: Any, hand_over: Any) -> None:
        while deliveries is not None:  # as RouteRunner.handle_chain hands batches over: in order, last last
            batches.append(len(deliveries))
            following = take_next()
            hand_over([None] * len(deliveries), following is None)
            deliveries = following

    runner.handle_chain = handle_chain
    executor = _InlineExecutor()
    worker._executors["r"] = executor  # type: ignore[assignment]
    loop = _Loop()
    worker._ioloop = loop
    handed: list[Any] = []
    worker._on_processed = lambda _runner, recs, _future: handed.extend(recs)  # type: ignore[method-assign,assignment]
    _arrive(worker, runner, 5)

    worker._dispatch(runner)

    assert executor.submits == 1
    assert batches == [1, 1, 1, 1, 1]
    assert len(loop.callbacks) == 1  # every hand-over shares one wake-up of the loop
    assert worker._busy["r"] == 1  # the loop has not counted the thread idle yet
    loop.run_pending()
    assert [rec.delivery_tag for rec in handed] == [0, 1, 2, 3, 4]
    assert worker._busy["r"] == 0
    _arrive(worker, runner, 1)
    worker._dispatch(runner)
    assert executor.submits == 2
