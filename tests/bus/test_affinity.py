"""``igate-bus run --cpu-affinity``: which CPU a worker runs on (bus/affinity.py, issue 15).

(A worker's start-up heap kept out of the collector's scans is checked here too: the same start-up.)

The rule's arithmetic and every malformed CPU list refused with what is wrong; a real process pinned with
the threads it already runs and those it starts later; a real worker pinned by default, and left to the
kernel with ``none``. The supervisor's children (a CPU each, kept across a restart) are checked in
``test_supervisor.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from busenv import ROOT, ProcessWorker, cli, declare_routes, env_for, wait_for, write_config

from bus.affinity import AffinityRule, parse_affinity

if TYPE_CHECKING:
    from pathlib import Path

FOUR = (0, 1, 2, 3)


@pytest.mark.parametrize(
    ("text", "mode", "cpus"),
    [
        ("auto", "auto", ()),
        (" AUTO ", "auto", ()),
        ("none", "none", ()),
        ("2", "list", (2,)),
        ("0,2-3", "list", (0, 2, 3)),
        ("3, 1", "list", (3, 1)),  # the order given is the order the workers take them
        ("1-1", "list", (1,)),
    ],
)
def test_a_rule_is_auto_none_or_a_cpu_list(text: str, mode: str, cpus: tuple[int, ...]) -> None:
    rule = parse_affinity(text, allowed=FOUR)
    assert (rule.mode, rule.cpus) == (mode, cpus)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0,,1", "empty item"),
        ("0,", "empty item"),
        ("-1", "'-1' is not a CPU number"),
        ("1-", "'1-' is not a CPU number"),
        ("a", "'a' is not a CPU number"),
        ("0x1", "'0x1' is not a CPU number"),
        ("1.0", "'1.0' is not a CPU number"),
        ("\u0661", "is not a CPU number"),  # an Arabic-Indic one: int() would read it as 1
        ("0;1", "is not a CPU number"),
        ("123456", "is not a CPU number"),
        ("3-1", "runs backwards: write 1-3"),
        ("0-99999", "above 8191"),
        ("1,0-2", "CPU 1 is named twice"),
        ("2,2", "CPU 2 is named twice"),
        ("7", "CPU 7 is not one this process may use (0-3)"),
        ("0,5-6", "CPU 5,6 is not one this process may use (0-3)"),
    ],
)
def test_a_malformed_or_foreign_cpu_list_is_refused_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_affinity(text, allowed=FOUR)


def test_auto_counts_from_the_cpu_the_process_started_on_and_wraps() -> None:
    rule = AffinityRule("auto")
    assert [rule.cpu_for(s, allowed=FOUR, start=2) for s in range(5)] == [2, 3, 0, 1, 2]
    assert [rule.cpu_for(s, allowed=(1, 5), start=None) for s in range(3)] == [1, 5, 1]
    assert rule.cpu_for(0, allowed=(1, 5), start=3) == 1  # a start outside the mask counts from the first
    assert rule.cpu_for(0, allowed=(), start=0) is None  # a platform that cannot say: no pinning
    assert AffinityRule("none").cpu_for(0, allowed=FOUR, start=1) is None
    listed = parse_affinity("3,1", allowed=FOUR)
    assert [listed.cpu_for(s, allowed=FOUR, start=0) for s in range(3)] == [3, 1, 3]
    assert str(listed) == "3,1"


def _all_threads_cpus(pid: int) -> list[set[int]]:
    from pathlib import Path

    return [os.sched_getaffinity(int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()]


def test_pin_process_binds_the_threads_already_running_and_those_started_later() -> None:
    """A thread started before the pin and one started after: both on the pinned CPU (read by the kernel)."""
    cpu = max(os.sched_getaffinity(0))
    code = f"""
import json, os, threading
from pathlib import Path
from bus.affinity import pin_process
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
pin_process({cpu})
after = threading.Thread(target=stop.wait); after.start()
masks = [sorted(os.sched_getaffinity(int(t.name))) for t in Path("/proc/self/task").iterdir()]
stop.set(); before.join(); after.join()
print(json.dumps(masks))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    masks = json.loads(out.stdout)
    assert len(masks) == 3, masks  # the main thread and both others
    assert all(m == [cpu] for m in masks), masks


def test_a_bad_cpu_affinity_stops_run_at_once_naming_the_option(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    env = env_for("amqp://guest:guest@127.0.0.1:9/%2F", f"sqlite:///{tmp_path / 's.sqlite3'}", cfg)
    result = cli("run", "--routes", "bus-ping", "--cpu-affinity", "0-x", env=env)
    assert result.returncode == 2
    assert "--cpu-affinity" in result.stderr and "'0-x' is not a CPU number" in result.stderr, result.stderr
    result = cli("run", "--routes", "bus-ping", env={**env, "IGATE_BUS_CPU_AFFINITY": "4096"})
    assert result.returncode == 2
    assert "IGATE_BUS_CPU_AFFINITY" in result.stderr and "CPU 4096" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("rule", ["auto", "none"])
def test_a_single_worker_is_pinned_by_default_and_left_to_the_kernel_with_none(
    rule: str, amqp_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    declare_routes(amqp_url, cfg)
    env = env_for(amqp_url, f"sqlite:///{tmp_path / 's.sqlite3'}", cfg, IGATE_BUS_CPU_AFFINITY=rule)
    worker = ProcessWorker(env, tmp_path / "worker.log", routes="bus-ping").start()
    try:
        worker.wait_consuming(1, timeout=60)
        assert worker.proc is not None
        masks = _all_threads_cpus(worker.proc.pid)
        assert len(masks) > 3, masks  # the I/O loop, the pipeline, the log flusher... all started
        said = [json.loads(x) for x in worker.log_path.read_text().splitlines() if '"cpu_affinity"' in x]
        assert len(said) == 1 and said[0]["rule"] == rule, said
        if rule == "auto":
            assert all(len(m) == 1 for m in masks) and len({min(m) for m in masks}) == 1, masks
            assert said[0]["cpu"] == min(masks[0])
        else:
            assert all(m == os.sched_getaffinity(0) for m in masks), masks
            assert said[0]["cpu"] is None
        frozen = [json.loads(x) for x in worker.log_path.read_text().splitlines() if '"startup_heap_frozen"' in x]
        assert len(frozen) == 1 and frozen[0]["objects"] > 10_000, frozen  # kept out of the collector's scans
        assert worker.terminate() == 0
        wait_for(lambda: worker.proc is not None and worker.proc.poll() is not None, timeout=10, what="exit")
    finally:
        worker.stop()
