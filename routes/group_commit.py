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

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["GroupCommit"]

V = TypeVar("V")
R = TypeVar("R")


@dataclass(slots=True)
class _Write(Generic[V, R]):
    """One thread's writes, and what came of them."""

    items: Mapping[str, V]
    finished: bool = False
    result: Mapping[str, R] | None = None
    error: BaseException | None = None


class GroupCommit(Generic[V, R]):
    """Runs ``write(items)`` for many threads at once; each gets back its own keys' part of the answer.

    Args:
        write: one transaction over ``key ▶ value``; returns ``key ▶ answer`` (or None when it answers
            nothing, like a completion).
    """

    def __init__(self, write: Callable[[dict[str, V]], Mapping[str, R] | None]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._queue: list[_Write[V, R]] = []
        self._leading = False

    def submit(self, items: Mapping[str, V]) -> Mapping[str, R] | None:
        """Write ``items`` (in a transaction shared with other threads' writes); their part of the answer.

        Raises:
            Exception: what the write raised for these items (run alone after a shared failure).
        """
        mine: _Write[V, R] = _Write(items)
        with self._cond:
            self._queue.append(mine)
        while True:
            with self._cond:
                while not mine.finished and self._leading:
                    self._cond.wait()
                if mine.finished:
                    break
                self._leading = True
                group = self._take()
            try:
                self._run(group)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
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

    def _run(self, group: list[_Write[V, R]]) -> None:
        merged: dict[str, V] = {}
        for write in group:
            merged.update(write.items)
        try:
            answer = self._write(merged)
        except Exception as exc:
            if len(group) == 1:
                self._finish(group[0], None, exc)
                return
            for write in group:  # alone, so one message's failure touches only its own outcome
                try:
                    self._finish(write, self._write(dict(write.items)), None)
                except Exception as own:
                    self._finish(write, None, own)
            return
        for write in group:
            part = None if answer is None else {k: answer[k] for k in write.items}
            self._finish(write, part, None)

    def _finish(self, write: _Write[V, R], result: Mapping[str, R] | None, error: BaseException | None) -> None:
        with self._cond:
            write.result, write.error, write.finished = result, error, True
