"""Group commit: the store writes of pipeline threads that arrive together share one transaction.

Where it sits: between the pipeline's claim and completion steps (``routes/pipeline.py``) and the store
(``routes/idempotency.py``). A route to a real target runs one delivery per thread, so that a claim never
waits behind other messages' *sends* (its lease would run out: the lease problem of the first batching
attempt). Each thread still claimed and completed in a transaction of its own, two per message. Here the
threads that reach the store while another thread's transaction runs wait for it, then one of them runs
all their writes in the next transaction: a claim waits at most behind one transaction of other claims,
never behind a send, and under load a transaction carries several messages.

A key (event id) met twice among the waiting writes goes into the next transaction, so one transaction
never carries two attempts of the same event. When a shared transaction fails, each write is run again
alone, so one message's bad row never fails the others (the store validates every row before it writes).
"""

from __future__ import annotations

import _thread
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["GroupCommit"]

V = TypeVar("V")
R = TypeVar("R")


@dataclass(slots=True)
class _Write(Generic[V, R]):
    """One thread's writes, what came of them, and the lock its thread sleeps on while they wait."""

    items: Mapping[str, V]
    wake: _thread.LockType = field(default_factory=_thread.allocate_lock)
    finished: bool = False
    result: Mapping[str, R] | None = None
    error: BaseException | None = None


class GroupCommit(Generic[V, R]):
    """Runs ``write(items)`` for many threads at once; each gets back its own keys' part of the answer.

    One thread at a time leads: it runs the writes waiting at that moment in one transaction, wakes the
    threads whose writes it ran (each once, on a lock of its own: waking every waiter to let each see whether
    it was served cost a thread switch per waiter per transaction, issue 15), then hands the lead to the
    oldest write still waiting, or gives it up when none is. A thread that finds nobody leading leads at once.

    Args:
        write: one transaction over ``key ▶ value``; returns ``key ▶ answer`` (or None when it answers
            nothing, like a completion).
    """

    def __init__(self, write: Callable[[dict[str, V]], Mapping[str, R] | None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._queue: list[_Write[V, R]] = []
        self._leading = False

    def submit(self, items: Mapping[str, V]) -> Mapping[str, R] | None:
        """Write ``items`` (in a transaction shared with other threads' writes); their part of the answer.

        Raises:
            Exception: what the write raised for these items (run alone after a shared failure).
        """
        mine: _Write[V, R] = _Write(items)
        mine.wake.acquire()  # released once: when another leader ran it, or handed this thread the lead
        with self._lock:
            self._queue.append(mine)
            lead = not self._leading
            self._leading = True
        if not lead:
            mine.wake.acquire()  # another leader ran this write, or handed this thread the lead
        if not mine.finished:
            try:
                while not mine.finished:  # leading: run what waits (this write too, once its key is free)
                    with self._lock:
                        group = self._take()
                    self._run(group, mine)
            finally:
                with self._lock:  # the lead passes to the oldest write still waiting
                    if self._queue:
                        self._queue[0].wake.release()
                    else:
                        self._leading = False
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _take(self) -> list[_Write[V, R]]:
        """The waiting writes whose keys do not meet, oldest first (called holding the lock)."""
        group: list[_Write[V, R]] = []
        keys: set[str] = set()
        rest: list[_Write[V, R]] = []
        for write in self._queue:
            if keys.isdisjoint(write.items):
                group.append(write)
                keys.update(write.items)
            else:
                rest.append(write)
        self._queue = rest
        return group

    def _run(self, group: list[_Write[V, R]], leader: _Write[V, R]) -> None:
        merged: dict[str, V] = {}
        for write in group:
            merged.update(write.items)
        try:
            answer = self._write(merged)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted: no write of the group is known to be done
                for write in group:
                    self._finish(write, None, exc, leader)
                raise
            if len(group) == 1:
                self._finish(group[0], None, exc, leader)
                return
            for write in group:  # alone, so one message's failure touches only its own outcome
                try:
                    self._finish(write, self._write(dict(write.items)), None, leader)
                except Exception as own:
                    self._finish(write, None, own, leader)
            return
        for write in group:
            part = None if answer is None else {k: answer[k] for k in write.items}
            self._finish(write, part, None, leader)

    @staticmethod
    def _finish(
        write: _Write[V, R], result: Mapping[str, R] | None, error: BaseException | None, leader: _Write[V, R]
    ) -> None:
        write.result, write.error, write.finished = result, error, True
        if write is not leader:
            write.wake.release()
