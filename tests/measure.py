"""Cost of a block of test code: wall time, the Python heap's peak and the growth of the peak resident size.

tracemalloc sees every Python allocation of every thread (client, simulator, paramiko's transport thread);
the peak resident size (``VmHWM``, reset with Linux's ``clear_refs``) also sees what C libraries allocate
(libxml2, OpenSSL). Used by the hostile-reply and the big-file tests to bound memory, not to time anything.
"""

from __future__ import annotations

import contextlib
import re
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

_HWM = re.compile(r"VmHWM:\s+(\d+) kB")


@dataclass
class Measured:
    """What one block cost."""

    seconds: float = 0.0
    py_peak: int = 0
    rss_growth_kib: int | None = None


def hwm_kib() -> int | None:
    """The process's peak resident size in KiB (None where /proc is missing)."""
    with contextlib.suppress(OSError, AttributeError):
        match = _HWM.search(Path("/proc/self/status").read_text())
        return int(match.group(1)) if match else None
    return None


def reset_hwm() -> bool:
    """Reset the peak resident size to the current one (Linux clear_refs 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def measure() -> Iterator[Measured]:
    """Time, Python heap peak and peak-RSS growth of the block."""
    result = Measured()
    rss_ok = reset_hwm()
    base = hwm_kib()
    tracemalloc.start()
    started = time.monotonic()
    try:
        yield result
    finally:
        result.seconds = time.monotonic() - started
        result.py_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        after = hwm_kib()
        if rss_ok and base is not None and after is not None:
            result.rss_growth_kib = after - base
