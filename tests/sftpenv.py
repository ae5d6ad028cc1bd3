# mypy: allow-untyped-defs
"""SFTP test harness: a real OpenSSH sshd per test (``sftp_sim``), a spool, specs and files to send.

Nothing here replaces the network: the connector under test logs into the simulator's sshd over TCP and
checks its host key. If sshd is not installed the fixture fails (never skips): ``make services`` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from config.model import ConnectorSpec
from simulators.sftp import SftpSimulator
from simulators.sftp import random_file as make_file

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: the environment variable the test specs name for the login key
KEY_ENV = "IGATE_BUS_TEST_SFTP_KEY"

__all__ = ["KEY_ENV", "arrivals", "key_fingerprint", "make_file", "sftp_sim", "sftp_spec", "spool"]


@pytest.fixture
def sftp_sim() -> Iterator[SftpSimulator]:
    """A private sshd for one test, stopped (and its directory removed) afterwards."""
    sim = SftpSimulator().start()
    try:
        yield sim
    finally:
        strays = sim.strays()
        sim.stop()
        assert not strays, f"something was written beside the SFTP root: {strays}"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """An empty spool directory."""
    path = tmp_path / "spool"
    path.mkdir()
    return path


def sftp_spec(
    sim: SftpSimulator,
    spool: Path | None = None,
    *,
    endpoint: str | None = None,
    known_hosts: Path | None = None,
    timeout: dict[str, str] | None = None,
    credentials: dict[str, str] | None = None,
    **options: Any,
) -> ConnectorSpec:
    """A connector spec that logs into ``sim`` with its client key (read from :data:`KEY_ENV`)."""
    os.environ[KEY_ENV] = str(sim.client_key)
    opts: dict[str, Any] = {"username": sim.username, "known_hosts": str(known_hosts or sim.known_hosts)}
    if spool is not None:
        opts["spool_dir"] = str(spool)
    opts.update(options)
    return ConnectorSpec.model_validate(
        {
            "type": "sftp",
            "endpoint": endpoint or sim.endpoint,
            "timeout": timeout or {"connect": "5s", "read": "10s", "total": "120s"},
            "credentials": credentials if credentials is not None else {"private_key": KEY_ENV},
            "options": opts,
        }
    )


def key_fingerprint(public_key: Path) -> str:
    """``SHA256:…`` of a public key file, as OpenSSH's ssh-keygen prints it."""
    run = subprocess.run(
        [shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen", "-lf", str(public_key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return run.stdout.split()[1]


def arrivals(sim: SftpSimulator, path: str) -> int:
    """How many times a file appeared under its final name on the server (a link or a rename into it)."""
    return sum(1 for e in sim.events() if e.path == path and e.kind in {"created", "moved_to"})
