"""How fast a big file moves through ``connectors/_sftp.py`` to a real OpenSSH sshd, and at what memory.

Usage: ``.venv/bin/python bench/bench_sftp.py [--mb 200] [--repeat 1]``. Starts the SFTP simulator (a private
sshd on a loopback port), writes a file of ``--mb`` MB of pseudo-random bytes into a temporary spool (in
1 MiB blocks), uploads it (temporary name, SHA-256 while streaming, read back, rename), then downloads it
back (size cap, SHA-256, rename). Prints per pass: send MB/s, read-back MB/s, upload MB/s end to end
(connect, send, verify, rename), download MB/s, and the growth of the process's peak resident size
(``VmHWM``, reset before each pass; no tracemalloc, which would slow paramiko down).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config.model import ConnectorSpec  # noqa: E402
from connectors._sftp import SftpClient  # noqa: E402
from simulators.sftp import SftpSimulator, random_file  # noqa: E402

KEY_ENV = "IGATE_BUS_BENCH_SFTP_KEY"


def _hwm_kib() -> int:
    found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(found.group(1)) if found else 0


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main() -> int:
    """Run the passes and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="file size in MB (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    size = args.mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench-sftp-") as tmp, SftpSimulator() as sim:
        spool = Path(tmp)
        digest = random_file(spool / "big.bin", size, seed=size)
        os.environ[KEY_ENV] = str(sim.client_key)
        spec = ConnectorSpec.model_validate(
            {
                "type": "sftp",
                "endpoint": sim.endpoint,
                "timeout": {"connect": "5s", "read": "30s", "total": "30m"},
                "credentials": {"private_key": KEY_ENV},
                "options": {"username": sim.username, "known_hosts": str(sim.known_hosts)},
            }
        )
        client = SftpClient("bench", spec)
        for n in range(args.repeat):
            sim.reset()
            _reset_hwm()
            base = _hwm_kib()
            started = time.monotonic()
            with (spool / "big.bin").open("rb") as source:
                put = client.put(source, size, remote_dir="", remote_name="big.bin", idempotency_key=f"bench-{n}")
            upload_s = time.monotonic() - started
            up_kib = _hwm_kib() - base
            assert sim.files()["big.bin"].sha256 == digest, "the server's copy differs"  # noqa: S101
            _reset_hwm()
            base = _hwm_kib()
            started = time.monotonic()
            got = client.get("", "big.bin", spool / f"back-{n}.bin", expected_sha256=digest)
            download_s = time.monotonic() - started
            down_kib = _hwm_kib() - base
            (spool / f"back-{n}.bin").unlink()
            mb = size / 1e6
            print(
                f"{mb:.0f} MB: send {mb / put.send_seconds:.1f} MB/s, read-back {mb / put.verify_seconds:.1f} MB/s, "
                f"upload end to end {mb / upload_s:.1f} MB/s ({upload_s:.1f}s), download {mb / download_s:.1f} MB/s "
                f"({got.outcome}), peak RSS growth upload {up_kib / 1024:.1f} MiB, download {down_kib / 1024:.1f} MiB"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
