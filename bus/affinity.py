"""Which CPU each worker process runs on (``igate-bus run --cpu-affinity``).

Why pin at all: a worker is one Python process whose threads (the pika I/O loop, a route's pipeline
threads, the log flusher) take turns holding the GIL, so it runs Python on one CPU at a time however many
the host has. Left to the kernel, those threads hop between CPUs at every hand-over of the GIL, and each
resumes on a CPU whose caches hold another process's data (RabbitMQ, a database, another worker). Measured
on the REST route at 0 ms target latency (README, "Performance"), pinning the worker to one CPU cut its
CPU per message by a fifth and raised its throughput by a third; the other processes on the host get the
other CPUs.

The rule (``auto``, the default): worker *i* of a supervisor runs on the *i*-th CPU of those the process may
use (its affinity mask: a container's cpuset, ``taskset``), counted from the CPU the kernel was running the
process on when it started, so N workers get N different CPUs, and two single-process instances started on
one host usually get different ones (the kernel spreads busy processes before they pin). ``none`` leaves
placement to the kernel; a CPU list (``0,2-3``) gives the workers those CPUs in turn. A list names only CPUs
the process may use, or it is refused at start; an ``auto`` pin the kernel refuses is logged and skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = ["AffinityRule", "allowed_cpus", "current_cpu", "libc", "parse_affinity", "pin_process"]

AUTO: Final = "auto"
NONE: Final = "none"
LIST: Final = "list"
#: Linux's own ceiling on CPU numbers (CONFIG_NR_CPUS is at most 8192): a larger number is a typo
MAX_CPU: Final = 8191
_ITEM = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")  # ASCII digits: int() would take any script's


@dataclass(frozen=True, slots=True)
class AffinityRule:
    """``auto``, ``none`` or an explicit CPU list, as parsed from ``--cpu-affinity``."""

    mode: Literal["auto", "none", "list"]
    cpus: tuple[int, ...] = ()

    def placements(self, processes: int) -> list[int | None]:
        """The CPU of each of ``processes`` workers (slot order), read against this process's mask and CPU."""
        allowed, start = allowed_cpus(), current_cpu()
        return [self.cpu_for(slot, allowed=allowed, start=start) for slot in range(processes)]

    def cpu_for(self, slot: int, *, allowed: tuple[int, ...], start: int | None) -> int | None:
        """The CPU worker ``slot`` runs on; None leaves it to the kernel.

        ``allowed`` is the process's affinity mask (sorted), ``start`` the CPU it was running on (None when
        unknown: counted from the first allowed CPU).
        """
        if self.mode == NONE or not allowed:
            return None
        if self.mode == AUTO:
            first = allowed.index(start) if start in allowed else 0
            return allowed[(first + slot) % len(allowed)]
        return self.cpus[slot % len(self.cpus)]

    def __str__(self) -> str:
        return self.mode if self.mode != LIST else ",".join(map(str, self.cpus))


def parse_affinity(text: str, *, allowed: tuple[int, ...] | None = None) -> AffinityRule:
    """``auto``, ``none`` or a CPU list (``0``, ``0,2``, ``0-3,6``); ValueError says what is wrong.

    A list is checked against ``allowed`` (default: this process's mask): a CPU the process may not use
    would fail every worker at start, so it is refused here, with the CPUs it may use.
    """
    spec = text.strip().lower()
    if spec == AUTO:
        return AffinityRule(AUTO)
    if spec == NONE:
        return AffinityRule(NONE)
    if not spec:
        raise ValueError("empty: give auto, none or a CPU list such as 0,2-3")
    cpus: list[int] = []
    for raw in spec.split(","):
        for cpu in _cpu_item(raw.strip()):
            if cpu in cpus:
                raise ValueError(f"CPU {cpu} is named twice")
            cpus.append(cpu)
    usable = allowed_cpus() if allowed is None else allowed
    if usable:
        outside = [c for c in cpus if c not in usable]
        if outside:
            raise ValueError(f"CPU {','.join(map(str, outside))} is not one this process may use ({_ranges(usable)})")
    return AffinityRule(LIST, tuple(cpus))


def _cpu_item(item: str) -> range:
    """One item of a CPU list: ``3`` or ``2-5``."""
    match = _ITEM.fullmatch(item)
    if match is None:
        if not item:
            raise ValueError("an empty item between commas: give auto, none or a CPU list such as 0,2-3")
        raise ValueError(f"{item[:20]!r} is not a CPU number or range: give auto, none or a CPU list such as 0,2-3")
    low, high = int(match[1]), int(match[2] if match[2] is not None else match[1])
    if high > MAX_CPU:
        raise ValueError(f"CPU {high} is above {MAX_CPU}, the most Linux numbers")
    if low > high:
        raise ValueError(f"range {item!r} runs backwards: write {high}-{low}")
    return range(low, high + 1)


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on, sorted; () where the platform cannot say (no pinning there)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return ()


def libc() -> ctypes.CDLL:
    """The C library, for the calls Python's ``os`` has no binding for (``sched_getcpu``, ``prctl``).

    Raises OSError where there is none to load.
    """
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def current_cpu() -> int | None:
    """The CPU the calling thread is running on (glibc's ``sched_getcpu``), None where unknown."""
    try:
        cpu = int(libc().sched_getcpu())
    except (OSError, AttributeError):
        return None
    return cpu if cpu >= 0 else None


def pin_process(cpu: int) -> None:
    """Run every thread of this process, and each it starts later, on ``cpu``; OSError when refused.

    ``sched_setaffinity`` binds one thread; threads inherit their creator's mask, so the threads already
    running (a log flusher started with logging) are bound one by one, then the calling one.
    """
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, {cpu})
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    os.sched_setaffinity(0, {cpu})


def _threads() -> list[int]:
    try:
        return [int(t.name) for t in Path("/proc/self/task").iterdir()]
    except OSError:
        return []


def _ranges(cpus: tuple[int, ...]) -> str:
    """``0-3,6``: a CPU set as the kernel writes it."""
    out: list[str] = []
    start = prev = cpus[0]
    for cpu in (*cpus[1:], None):
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(out)
