"""The SFTP simulator is a real, private OpenSSH sshd: checked with OpenSSH's own ``sftp`` client.

Why: every SFTP test trusts that the server checks keys, writes what it receives and records it on disk;
a simulator that accepted anyone, or listened where the system's sshd does, would make them pass wrongly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

import simulators.sftp as sim_module
from simulators.sftp import SftpSimulator, SshdNotFoundError, keygen


def _openssh_sftp(sim: SftpSimulator, batch: str, *, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH's sftp client in batch mode against the simulator, checking its host key strictly."""
    sftp = shutil.which("sftp")
    assert sftp, "OpenSSH's sftp client (openssh-client) is needed to check the simulator"
    return subprocess.run(
        [
            sftp,
            "-b",
            "-",
            "-i",
            str(key or sim.client_key),
            "-o",
            f"UserKnownHostsFile={sim.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-P",
            str(sim.port),
            f"{sim.username}@{sim.host}",
        ],
        input=batch,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_is_a_private_sshd_on_a_loopback_port_and_records_what_arrives(
    sftp_sim: SftpSimulator, tmp_path: Path
) -> None:
    """OpenSSH's sftp puts a file ▶ it is on disk under the root, byte-identical, with a 'written' event."""
    assert sftp_sim.port not in (0, 22)
    assert sftp_sim.host == "127.0.0.1"
    assert sftp_sim.running
    with socket.create_connection((sftp_sim.host, sftp_sim.port), timeout=5) as conn:
        assert conn.recv(64).startswith(b"SSH-2.0-OpenSSH")
    cmdline = (Path("/proc") / str(sftp_sim.pid) / "cmdline").read_bytes().replace(b"\0", b" ")
    assert f"-f {sftp_sim.base / 'sshd_config'}".encode() in cmdline, "sshd must run with the simulator's own config"
    config = (sftp_sim.base / "sshd_config").read_text()
    assert "Include" not in config and f"Port {sftp_sim.port}" in config and "ListenAddress 127.0.0.1" in config

    local = tmp_path / "hello.txt"
    local.write_bytes(b"xin chao\n" * 1000)
    run = _openssh_sftp(sftp_sim, f"mkdir in\nput {local} in/hello.txt\n")
    assert run.returncode == 0, run.stderr

    [(path, record)] = sftp_sim.files().items()
    assert path == "in/hello.txt"
    assert record.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    assert any(e.kind == "written" and e.path == "in/hello.txt" for e in sftp_sim.events())
    assert sftp_sim.host_fingerprint.startswith("SHA256:")


def test_another_key_is_refused_by_the_server(sftp_sim: SftpSimulator, tmp_path: Path) -> None:
    """A key not in authorized_keys ▶ OpenSSH's client cannot log in, nothing is written."""
    keygen(tmp_path / "intruder", "intruder")
    run = _openssh_sftp(sftp_sim, "put /etc/hostname x\n", key=tmp_path / "intruder")
    assert run.returncode != 0
    assert "Permission denied" in run.stderr
    assert sftp_sim.files(hidden=True) == {}


def test_stop_ends_sshd_closes_the_port_and_removes_everything(tmp_path: Path) -> None:
    """After stop: sshd's process group is gone, the port is closed, the temporary directory removed."""
    sim = SftpSimulator().start()
    pid, port, base = sim.pid, sim.port, sim.base
    assert pid is not None and base.exists()
    sim.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert not base.exists()


def test_two_simulators_run_side_by_side_with_their_own_keys() -> None:
    """Two at once ▶ two ports, two host keys; each one's known_hosts names only itself."""
    with SftpSimulator() as one, SftpSimulator() as two:
        assert one.port != two.port
        assert one.host_fingerprint != two.host_fingerprint
        assert one.known_hosts.read_text().startswith(f"[127.0.0.1]:{one.port} ssh-ed25519 ")


def test_without_sshd_starting_fails_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sshd on the machine ▶ SshdNotFoundError naming `make services` and openssh-server (tests fail, not skip)."""
    monkeypatch.setattr("simulators.sftp.shutil.which", lambda _name: None)
    monkeypatch.setattr(sim_module, "SSHD_CANDIDATES", ("/nonexistent/sshd",))
    with pytest.raises(SshdNotFoundError, match=r"make services.*openssh-server"):
        SftpSimulator().start()


def test_files_made_in_a_new_directory_before_it_is_watched_are_recorded_once(sftp_sim: SftpSimulator) -> None:
    """100 fresh directories, each with a file at once ▶ every file appears once in the record, never 0 or 2
    (the watcher scans a directory it starts watching, and an inode seen twice counts once)."""
    for i in range(100):
        folder = sftp_sim.root / "burst" / str(i) / "deep"
        folder.mkdir(parents=True)
        (folder / "f.bin").write_bytes(b"x")
    wanted = {f"burst/{i}/deep/f.bin" for i in range(100)}

    def counted() -> dict[str, int]:
        counts = dict.fromkeys(wanted, 0)
        for e in sftp_sim.events():
            if e.path in counts and e.kind in {"created", "moved_to"}:
                counts[e.path] += 1
        return counts

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and 0 in counted().values():
        time.sleep(0.05)
    assert set(counted().values()) == {1}


def test_a_file_closed_before_its_new_directory_is_watched_is_recorded_as_written(sftp_sim: SftpSimulator) -> None:
    """A directory made and a file written and closed in it while the watcher is busy ▶ the record still holds
    the file's "written" (from the directory's scan); a file still open then gets it when it closes, once."""
    watcher = sftp_sim._watcher
    assert watcher is not None
    with watcher._reading:  # the watcher thread waits here: the directory is not watched yet
        (sftp_sim.root / "late").mkdir()
        (sftp_sim.root / "late" / "done.bin").write_bytes(b"x" * 100)
        still_open = (sftp_sim.root / "late" / "open.bin").open("wb")
    try:
        still_open.write(b"y")
        still_open.flush()
        kinds = [(e.kind, e.path) for e in sftp_sim.events() if e.path.startswith("late/")]
        assert ("written", "late/done.bin") in kinds
        assert ("created", "late/open.bin") in kinds and ("written", "late/open.bin") not in kinds
    finally:
        still_open.close()
    written = [e for e in sftp_sim.events() if e.kind == "written" and e.path.startswith("late/")]
    assert sorted(e.path for e in written) == ["late/done.bin", "late/open.bin"]


def test_a_reader_waits_for_events_the_watcher_thread_is_still_parsing(sftp_sim: SftpSimulator) -> None:
    """events() right after a write always holds it, even when the watcher thread read the queue first
    (one drain at a time: a reader that found the queue empty must not return before the parse is done)."""
    for i in range(200):
        path = sftp_sim.root / f"r{i}.bin"
        path.write_bytes(b"z")
        assert any(e.kind == "written" and e.path == f"r{i}.bin" for e in sftp_sim.events()), i
