"""Idempotency store throughput: claim + complete pairs per second, one thread and eight, per back end.

Moved here from the test suite (``tests/routes/test_idempotency.py``), where it printed a figure on a loaded
machine and asserted nothing about it: a figure belongs in a benchmark. What it times is the store API the
pipeline calls one message at a time (``claim`` then ``complete``, each its own transaction); the batch path
the worker takes on a route without I/O (``claim_many``/``complete_many``) is timed by ``bench.py``.

    .venv/bin/python bench/bench_store.py                      # SQLite and PostgreSQL (a temporary database)
    .venv/bin/python bench/bench_store.py --store sqlite --pairs 5000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import temp_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from routes.idempotency import ClaimOutcome, IdempotencyStore

THREADS = 8


def one_thread(store: IdempotencyStore, pairs: int, tag: str) -> float:
    """Pairs per second, claimed and completed one after the other by this thread."""
    started = time.perf_counter()
    for i in range(pairs):
        if store.claim("bench", f"{tag}-{i}", owner="w", lease_s=30).outcome is not ClaimOutcome.NEW:
            raise RuntimeError(f"{tag}-{i} was not new: the store is not empty")
        store.complete("bench", f"{tag}-{i}", owner="w", result={"receipt_no": f"BL-{i}", "fee_vnd": 50_000})
    return pairs / (time.perf_counter() - started)


def eight_threads(store: IdempotencyStore, pairs: int, tag: str) -> float:
    """Pairs per second with :data:`THREADS` threads sharing the store, ``pairs`` in all."""
    per_thread = pairs // THREADS
    barrier = threading.Barrier(THREADS + 1)

    def run(t: int) -> None:
        barrier.wait(timeout=30)
        for i in range(per_thread):
            store.claim("bench", f"{tag}-t{t}-{i}", owner=f"w{t}", lease_s=30)
            store.complete("bench", f"{tag}-t{t}-{i}", owner=f"w{t}", result={"receipt_no": f"BL-{t}-{i}"})

    workers = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for w in workers:
        w.start()
    barrier.wait(timeout=30)
    started = time.perf_counter()
    for w in workers:
        w.join()
    return THREADS * per_thread / (time.perf_counter() - started)


def measure(kind: str, pairs: int, repeat: int) -> tuple[float, float]:
    """Median pairs/s over ``repeat`` runs on a fresh store of ``kind``: (one thread, eight threads)."""
    singles, threaded = [], []
    with tempfile.TemporaryDirectory(prefix="igb-bench-store-") as work, temp_store(kind, Path(work)) as url:
        store = IdempotencyStore(url)
        try:
            for r in range(repeat):
                singles.append(one_thread(store, pairs, f"s{r}"))
                threaded.append(eight_threads(store, pairs, f"t{r}"))
            done = store.counts("bench").get("done", 0)
            expected = repeat * (pairs + THREADS * (pairs // THREADS))
            if done != expected:
                raise RuntimeError(f"{done} claims done, expected {expected}")
        finally:
            store.close()
    return statistics.median(singles), statistics.median(threaded)


def main(argv: list[str] | None = None) -> None:
    """Print one line per back end: claim+complete pairs per second, one thread and eight."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--store", choices=("sqlite", "pg"), action="append", help="back end (repeatable)")
    parser.add_argument("--pairs", type=int, default=3000, help="claim+complete pairs per run and per pass")
    parser.add_argument("--repeat", type=int, default=1, help="runs per back end; the median is printed")
    args = parser.parse_args(argv)
    for kind in args.store or ["sqlite", "pg"]:
        single, threaded = measure(kind, args.pairs, args.repeat)
        print(f"[idempotency] {kind}: {single:,.0f} claim+complete/s (1 thread), {threaded:,.0f}/s ({THREADS} threads)")


if __name__ == "__main__":
    main()
