"""Log lines of a reporting command, kept out of its report and shown after it.

Where it sits: outside the message path, in the commands that print a report (``status``, ``dlq``,
``topology``). What they call logs too: a connector's probe warns that its target is down, pika warns of
every queue it was told does not exist. Those lines go to standard error, and on a terminal standard error
is the same screen, so they landed in the middle of the table being printed. Here they are held back while
the command works and written to standard error once its report is out, with a line saying how many there
are: nothing is lost, and the report stays whole. After :meth:`DeferredStream.release` lines pass straight
through (a probe thread still running may log late).
"""

from __future__ import annotations

import io
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO, cast

from bus import logging as bus_logging

if TYPE_CHECKING:
    from collections.abc import Iterator


class DeferredStream(io.TextIOBase):
    """A text stream that holds what is written until :meth:`release`, then writes through to ``target``."""

    def __init__(self, target: TextIO | None = None) -> None:
        super().__init__()
        self._target = target
        self._held: list[str] = []
        self._lock = threading.Lock()
        self._released = False

    def write(self, text: str) -> int:
        """Hold ``text``, or write it through once released."""
        with self._lock:
            if self._released:
                out = self._out()
                out.write(text)
                out.flush()
            else:
                self._held.append(text)
        return len(text)

    def isatty(self) -> bool:
        """Never: the lines are JSON or plain text, not colour codes for a terminal we may not reach."""
        return False

    def lines(self) -> int:
        """Lines held so far."""
        with self._lock:
            return "".join(self._held).count("\n")

    def release(self, header: str | None = None) -> None:
        """Write what was held (after ``header``, when anything was) and pass later lines straight through."""
        with self._lock:
            held, self._held, self._released = "".join(self._held), [], True
            if held:
                out = self._out()
                if header:
                    out.write(header.format(n=held.count("\n")) + "\n")
                out.write(held)
                out.flush()

    def _out(self) -> TextIO:
        return self._target if self._target is not None else sys.stderr


@contextmanager
def logs_after_report(level: str = "warning", fmt: str = "json") -> Iterator[DeferredStream]:
    """Configure logging into a :class:`DeferredStream` for the block; release it to stderr at the end.

    Use it around a command's whole work, printing included: whatever was logged appears after the report,
    under ``-- N log line(s) while checking --``, also when the command fails.
    """
    stream = DeferredStream()
    restore = bus_logging.saved_logging()
    bus_logging.configure_logging(level, fmt, stream=cast("TextIO", stream))  # looked up late: tests stub it
    try:
        yield stream
    finally:
        sys.stdout.flush()
        restore()  # the caller's configuration again, not this block's level and stream
        stream.release("-- {n} log line(s) while checking --")
