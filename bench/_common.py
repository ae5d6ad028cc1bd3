"""What the benchmarks need: rabbitmqctl for their temporary vhost, a temporary PostgreSQL database (or a
store URL on either back end), CPU time from ``/proc``, and one percentile, so ``bench.py``,
``bench_soap.py`` and ``bench_store.py`` measure and clean up alike.

Imported as ``_common``: the scripts run as ``python bench/NAME.py``, which puts this folder on the path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

#: the PostgreSQL server the benchmarks make their temporary databases on (the tests' variable)
PG_ADMIN_URL = os.environ.get("IGATE_BUS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl -q ARGS`` (vhost setup and teardown only)."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=120)  # noqa: S603 - fixed argv


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def proc_cpu_s(pid: int | str, *, main_thread: bool = False) -> float:
    """User + system CPU seconds of a process (``"self"`` for this one), all its threads or its main thread
    only; 0 when it is gone."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_pg_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """A fresh database on the server of ``admin_url``: (its name, its URL)."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return name, admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(admin_url: str, name: str) -> None:
    """Drop a database made by :func:`create_pg_database`, closing its sessions."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@contextlib.contextmanager
def temp_store(kind: str, work: Path, *, prefix: str = "igb_bench") -> Iterator[str]:
    """The idempotency store's URL: a SQLite file in ``work``, or a temporary PostgreSQL database (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{work / 'store.sqlite3'}"
        return
    name, url = create_pg_database(PG_ADMIN_URL, prefix)
    try:
        yield url
    finally:
        drop_pg_database(PG_ADMIN_URL, name)


def free_port() -> int:
    """A TCP port nobody listens on now (for a simulator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimulatorProcess:
    """A simulator (``python -m MODULE --port P``) as a child process, driven over its control endpoints.

    Its own process, so its protocol work does not share the measured process's GIL.
    """

    def __init__(self, module: str, workdir: Path, env: dict[str, str], *, log_name: str, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / log_name).open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module, "--port", str(self.port)],
            cwd=root,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/_sim/faults")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the simulator {module} did not start") from None
                time.sleep(0.1)

    def get(self, path: str) -> Any:
        """GET a control endpoint, as JSON."""
        with urllib.request.urlopen(self.url + path, timeout=60) as r:  # noqa: S310 - our own localhost URL
            return json.loads(r.read())

    def post(self, path: str, data: Any) -> Any:
        """POST JSON to a control endpoint, as JSON."""
        req = urllib.request.Request(  # noqa: S310 - our own localhost URL
            self.url + path, data=json.dumps(data).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310
            return json.loads(r.read())

    def stop(self) -> None:
        """Stop it (terminate, then kill) and close its log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
