# mypy: allow-untyped-defs
"""A big file streams through with bounded memory: 20 MB in every run, 200 MB under ``make chaos``.

The bound is the point: the Python heap's peak (tracemalloc, every thread) and the growth of the peak
resident size stay a few MiB whatever the file's size, because bytes move in 32 KiB requests with a fixed
number outstanding, both ways (the upload and the read-back that verifies it). The figures are printed
(``pytest -s``) for the note; throughput belongs to ``bench/bench_sftp.py``, not to an assertion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from measure import measure
from sftpenv import arrivals, make_file, sftp_spec

from connectors._sftp import SftpClient

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.sftp import SftpSimulator

#: the same bounds for 20 MB and 200 MB: memory must not grow with the file
MAX_PY_PEAK_BYTES = 8 << 20
MAX_RSS_GROWTH_KIB = 32 << 10


def _send_and_measure(sim: SftpSimulator, spool: Path, size: int) -> None:
    digest = make_file(spool / "big.bin", size, seed=size)
    client = SftpClient("big", sftp_spec(sim, spool))
    with (spool / "big.bin").open("rb") as source, measure() as cost:
        result = client.put(source, size, remote_dir="in", remote_name="big.bin", idempotency_key="big-1")
    on_disk = sim.files()["in/big.bin"]
    assert (on_disk.size, on_disk.sha256) == (size, digest), "the server's copy differs"
    assert arrivals(sim, "in/big.bin") == 1
    mb = size / 1e6
    print(
        f"\nsftp {mb:.0f} MB: {cost.seconds:.1f}s in all (send {result.send_seconds:.1f}s = "
        f"{mb / max(result.send_seconds, 1e-9):.1f} MB/s, read-back {result.verify_seconds:.1f}s), "
        f"Python heap peak {cost.py_peak / 2**20:.2f} MiB, peak RSS growth "
        f"{(cost.rss_growth_kib or 0) / 1024:.1f} MiB"
    )
    assert cost.py_peak < MAX_PY_PEAK_BYTES, f"Python heap peaked at {cost.py_peak} bytes"
    if cost.rss_growth_kib is not None:
        assert cost.rss_growth_kib < MAX_RSS_GROWTH_KIB, f"peak RSS grew by {cost.rss_growth_kib} KiB"


def test_a_20_mb_file_streams_with_bounded_memory(sftp_sim: SftpSimulator, spool: Path) -> None:
    """20 MB ▶ byte-identical on the server, heap peak < 8 MiB, peak RSS growth < 32 MiB."""
    _send_and_measure(sftp_sim, spool, 20 * 1_000_000)


@pytest.mark.chaos
def test_a_200_mb_file_streams_with_the_same_memory_bound(sftp_sim: SftpSimulator, spool: Path) -> None:
    """200 MB ▶ byte-identical, and the same bounds as 20 MB: memory does not grow with the file."""
    _send_and_measure(sftp_sim, spool, 200 * 1_000_000)
