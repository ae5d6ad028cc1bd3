"""Log lines of a busy worker written a group at a time: one ``write`` per group, not one per line.

Why (issue 15): the worker logs a line per message. Written and flushed one at a time, each line is a
system call that also hands the GIL to another pipeline thread and back, measured at about 150 µs of
CPU per message on the REST route with the target at 0 ms (the worker at log level ``warning`` against
``info``). Here a line that comes after a quiet :data:`FLUSH_AFTER` goes out at once (a quiet worker's
lines are as prompt as before); one that comes while others are being written waits at most
:data:`FLUSH_AFTER` (or until :data:`MAX_LINES` are waiting) and goes out with the others; a WARNING or
worse goes out at once, after every line before it, so the file keeps its order and what an operator must
see is never held back.

What it costs: a process killed outright (SIGKILL, the OOM killer) loses the INFO lines of its last
:data:`FLUSH_AFTER`; a normal exit flushes (``atexit``), and the crash points of the reliability tests log
at WARNING, which flushes. Only the worker (``igate-bus run``) and the simulators write through a buffer;
commands, the ingress and tests write each line at once.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from typing import Final, TextIO

#: how long an INFO line may wait for others (seconds)
FLUSH_AFTER: Final = 0.05
#: lines that are written at once, whatever their level, when this many wait
MAX_LINES: Final = 512

_ALL: weakref.WeakSet[LineBuffer] = weakref.WeakSet()


class LineBuffer:
    """Lines for one stream, written by whichever thread comes first.

    That is the writer of an urgent line or of the line past :data:`MAX_LINES`, or the flusher thread once
    the oldest line has waited :data:`FLUSH_AFTER`.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()  # the list, and the stream: lines never interleave
        self._due = threading.Event()
        self._closed = False
        self._last_write = 0.0  # monotonic time of the last write to the stream
        self._thread = threading.Thread(target=self._run, name="igate-bus-log-flush", daemon=True)
        self._thread.start()
        _ALL.add(self)

    def write(self, line: str, *, urgent: bool = False) -> None:
        """Queue ``line`` (a newline is added); ``urgent`` or a quiet stream writes it, after every line before it."""
        with self._lock:
            quiet = not self._lines and time.monotonic() - self._last_write >= FLUSH_AFTER
            self._lines.append(line + "\n")
            if urgent or quiet or self._closed or len(self._lines) >= MAX_LINES:
                self._write_locked()
                return
            first = len(self._lines) == 1
        if first:
            self._due.set()

    def flush(self) -> None:
        """Write every waiting line now."""
        with self._lock:
            self._write_locked()

    def close(self) -> None:
        """Flush, stop the flusher, and write later lines at once (a reconfiguration replaced this buffer)."""
        with self._lock:
            self._closed = True
            self._write_locked()
        self._due.set()

    def _write_locked(self) -> None:
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._last_write = time.monotonic()
        with contextlib.suppress(ValueError, OSError):  # a closed or broken stream: nothing to do at this point
            self.stream.write(text)
            self.stream.flush()

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._closed:
                return
            time.sleep(FLUSH_AFTER)  # the others of this group arrive meanwhile
            self.flush()


@atexit.register
def flush_all() -> None:
    """Write what every buffer holds, at the process's exit."""
    for buffer in list(_ALL):
        buffer.flush()
