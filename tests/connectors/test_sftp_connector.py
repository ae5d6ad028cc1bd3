# mypy: allow-untyped-defs
"""The sftp connector against a real OpenSSH sshd: files arrive whole, once, byte-identical; refusals are clear.

Everything is asserted on the server's disk (``sftp_sim.files()``: size and SHA-256) and on what its file
system saw (``sftp_sim.events()``), never on what the client says it sent. Fault tests put the fault proxy
in front and fail if the fault never happened.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
from sftpenv import arrivals, key_fingerprint, make_file, sftp_spec

from connectors._sftp import SftpClient, temp_name
from connectors.sftp import SftpConnector
from schemas.errors import (
    BreakerOpen,
    ConfigError,
    CredentialsRefused,
    HostKeyRefused,
    MappingError,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
)
from schemas.sftp import GetFileRequest, ListFilesRequest, PutFileRequest
from simulators.faults import FaultProxy
from simulators.sftp import FsEvent, SftpSimulator, keygen

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = "0b7e2f9a-1c4d-4e8b-a5f6-7d8c9e0a1b2c"


@pytest.fixture
def connector(sftp_sim: SftpSimulator, spool: Path) -> Iterator[SftpConnector]:
    conn = SftpConnector("files", sftp_spec(sftp_sim, spool))
    yield conn
    conn.close()


@pytest.fixture
def proxy(sftp_sim: SftpSimulator) -> Iterator[FaultProxy]:
    with FaultProxy(sftp_sim.host, sftp_sim.port) as p:
        yield p


def _via_proxy(sim: SftpSimulator, spool: Path, proxy: FaultProxy, tmp_path: Path, **timeout: str) -> SftpConnector:
    """A connector that reaches the simulator through the proxy, still checking the simulator's host key."""
    known = tmp_path / "known_hosts_proxy"
    known.write_text(sim.known_hosts_for(f"[127.0.0.1]:{proxy.port}"))
    spec = sftp_spec(
        sim,
        spool,
        endpoint=f"sftp://127.0.0.1:{proxy.port}",
        known_hosts=known,
        timeout={"connect": "3s", "read": "3s", "total": "60s", **timeout},
    )
    return SftpConnector("files", spec)


def _no_connection_made(sim: SftpSimulator, before: str) -> bool:
    return sim.log_text().count("Connection from") == before.count("Connection from")


# -- the must-show: 200 files, a 0-byte one and a 20 MB one among them -------------------------------------


def test_200_files_arrive_once_each_byte_identical_and_a_second_send_uploads_nothing(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector
) -> None:
    """200 files (0 B, chunk edges, 1 MiB+7, 20 MB, Vietnamese names) ▶ each on disk once, same SHA-256."""
    sizes = [0, 1, 32_767, 32_768, 32_769, (1 << 20) + 7, 20 * (1 << 20)]
    sizes += [1 + (i * 7919) % 300_000 for i in range(200 - len(sizes))]
    expected: dict[str, tuple[int, str]] = {}
    requests: list[tuple[PutFileRequest, str]] = []
    for i, size in enumerate(sizes):
        name = f"Biên lai {i:03d}.bin" if i % 3 else f"file-{i:03d}.dat"
        remote_dir = f"2026/11/{i % 5}" if i % 2 else ""
        digest = make_file(spool / "out" / f"{i}.bin", size, seed=i)
        remote = f"{remote_dir}/{name}" if remote_dir else name
        expected[remote] = (size, digest)
        requests.append((PutFileRequest(source=f"out/{i}.bin", remote_dir=remote_dir, remote_name=name), f"k-{i}"))

    put = connector.operations()["put_file"].call
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda rk: put(rk[0], rk[1]), requests))
    assert all(r.outcome == "uploaded" for r in replies)  # type: ignore[attr-defined]

    on_disk = sftp_sim.files()
    assert {p: (r.size, r.sha256) for p, r in on_disk.items()} == expected
    odd = {p: arrivals(sftp_sim, p) for p in expected if arrivals(sftp_sim, p) != 1}
    assert not odd, f"files that did not arrive exactly once under their final name: {odd}"
    leftovers = [p for p in sftp_sim.files(hidden=True) if p.endswith(".part")]
    assert leftovers == []
    assert sum(1 for s, _ in expected.values() if s == 0) == 1 and max(s for s, _ in expected.values()) == 20 << 20

    # the same effects again (a redelivery whose claim was lost): nothing is written, nothing arrives again
    events_before = len(sftp_sim.events())
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda rk: put(rk[0], rk[1]), requests))
    assert all(r.outcome == "already_present" for r in again)  # type: ignore[attr-defined]
    new = [e for e in sftp_sim.events()[events_before:] if not e.path.startswith(".igate-bus/")]
    assert new == [], f"a second send touched the files: {new[:5]}"
    assert not sftp_sim.overflowed()


def test_lookup_answers_from_the_ledger_what_was_renamed_into_place(connector: SftpConnector, spool: Path) -> None:
    """After a put, lookup(key) finds the file with its hash; a key never used ▶ None."""
    digest = make_file(spool / "a.csv", 5000, seed=1)
    reply = connector.put_file(PutFileRequest(source="a.csv", remote_dir="in", remote_name="a.csv"), KEY)
    found = connector.lookup_put(KEY)
    assert found is not None and found.sha256 == digest == reply.sha256 and found.remote_path == "in/a.csv"
    assert connector.lookup_put("never-used-key") is None


# -- faults: cut mid-upload, apply then cut, deadlines ------------------------------------------------------


def _cut_when_temp_reaches(sim: SftpSimulator, proxy: FaultProxy, temp: Path, at_least: int) -> dict[str, int]:
    """Watch the temporary file on the server's disk; drop every connection once it holds ``at_least`` bytes."""
    seen: dict[str, int] = {}

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            size = temp.stat().st_size if temp.exists() else 0
            if size >= at_least:
                seen["size_at_cut"] = size  # before the drop: the client may fail before drop_all returns
                proxy.drop_all()
                return
            time.sleep(0.001)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def test_a_connection_cut_mid_upload_resumes_from_the_verified_prefix_and_arrives_once(
    sftp_sim: SftpSimulator, spool: Path, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Cut after ≥3 MiB of 12 MiB ▶ not applied; the retry keeps the prefix, sends the rest: byte-identical."""
    size = 12 << 20
    digest = make_file(spool / "big.bin", size, seed=7)
    conn = _via_proxy(sftp_sim, spool, proxy, tmp_path)
    proxy.bandwidth_bps = 8 << 20  # slow enough that the watcher sees the file grow
    temp = sftp_sim.root / "in" / temp_name("big.bin", KEY)
    cut = _cut_when_temp_reaches(sftp_sim, proxy, temp, 3 << 20)
    request = PutFileRequest(source="big.bin", remote_dir="in", remote_name="big.bin")

    with pytest.raises(TargetUnavailable) as first:
        conn.put_file(request, KEY)
    assert cut.get("size_at_cut"), "the connection was never cut: the test proved nothing"
    assert proxy.stats().connections_total >= 1
    assert first.value.maybe_applied is False, "only the temporary file existed: nothing can have been applied"
    assert not (sftp_sim.root / "in" / "big.bin").exists()
    kept = temp.stat().st_size
    assert 0 < kept < size
    assert conn.lookup_put(KEY) is None

    proxy.bandwidth_bps = None
    reply = conn.put_file(request, KEY)
    assert reply.outcome == "uploaded"
    assert reply.resumed_from == kept, "the verified prefix was not kept"
    on_disk = sftp_sim.files()["in/big.bin"]
    assert (on_disk.size, on_disk.sha256) == (size, digest)
    assert arrivals(sftp_sim, "in/big.bin") == 1
    assert not temp.exists()


def test_a_tampered_prefix_is_not_resumed(sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector) -> None:
    """A temporary file whose bytes differ from the local prefix ▶ started over, still byte-identical."""
    digest = make_file(spool / "f.bin", 200_000, seed=3)
    temp = sftp_sim.root / temp_name("f.bin", KEY)
    temp.write_bytes(b"\xff" * 50_000)  # same length as a prefix, other bytes
    reply = connector.put_file(PutFileRequest(source="f.bin", remote_name="f.bin"), KEY)
    assert reply.resumed_from == 0
    assert sftp_sim.files()["f.bin"].sha256 == digest


def test_applied_then_cut_is_maybe_applied_and_the_lookup_finds_it_so_nothing_is_sent_again(
    sftp_sim: SftpSimulator, spool: Path, tmp_path: Path
) -> None:
    """The cut lands right after the rename ▶ maybe_applied; lookup finds the file; a resend uploads nothing."""
    digest = make_file(spool / "r.bin", 300_000, seed=5)
    with FaultProxy(sftp_sim.host, sftp_sim.port) as proxy:
        final = "out/r.bin"
        drops: list[int] = []

        def on_event(event: FsEvent) -> None:
            if event.path == final and event.kind in {"created", "moved_to"} and not drops:
                drops.append(1)  # before the drop: the client may fail before drop_all returns
                proxy.drop_all()

        sftp_sim.on_event = on_event
        conn = _via_proxy(sftp_sim, spool, proxy, tmp_path)
        proxy.latency_s = 0.3  # the rename's answer is still in the proxy when the file appears on disk
        request = PutFileRequest(source="r.bin", remote_dir="out", remote_name="r.bin")
        with pytest.raises((TargetUnavailable, TargetTimeout)) as cut:
            conn.put_file(request, KEY)
        assert drops, "the connection was never cut after the rename: the test proved nothing"
        assert cut.value.maybe_applied is True
        sftp_sim.on_event = None
        proxy.latency_s = 0.0
        writes_before = [e for e in sftp_sim.events() if e.kind == "written" and not e.path.startswith(".igate-bus")]

        found = conn.lookup_put(KEY)
        assert found is not None and found.sha256 == digest and found.remote_path == final
        again = conn.put_file(request, KEY)
        assert again.outcome == "already_present"
    writes_after = [e for e in sftp_sim.events() if e.kind == "written" and not e.path.startswith(".igate-bus")]
    assert writes_after == writes_before, "the file was written again after it had arrived"
    assert arrivals(sftp_sim, final) == 1
    assert sftp_sim.files()[final].sha256 == digest


def test_a_black_holed_server_ends_within_the_connect_timeout(
    sftp_sim: SftpSimulator, spool: Path, proxy: FaultProxy, tmp_path: Path
) -> None:
    """TCP accepted, no SSH banner ever ▶ TargetUnavailable(not applied) within connect + margin, not hung."""
    make_file(spool / "x.bin", 10, seed=1)
    conn = _via_proxy(sftp_sim, spool, proxy, tmp_path, connect="1s")
    proxy.blackhole = True
    started = time.monotonic()
    with pytest.raises(TargetUnavailable) as info:
        conn.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    assert time.monotonic() - started < 6
    assert info.value.maybe_applied is False
    assert proxy.stats().bytes_discarded > 0 or proxy.stats().connections_total > 0


def test_a_link_that_freezes_mid_upload_ends_by_the_deadline(
    sftp_sim: SftpSimulator, spool: Path, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Half-open link mid-upload (reads block) ▶ ends by read timeout/total deadline, not applied."""
    make_file(spool / "x.bin", 6 << 20, seed=2)
    conn = _via_proxy(sftp_sim, spool, proxy, tmp_path, read="2s", total="4s")
    proxy.bandwidth_bps = 2 << 20
    temp = sftp_sim.root / temp_name("x.bin", KEY)

    def freeze() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (temp.exists() and temp.stat().st_size > 0):
            time.sleep(0.005)
        proxy.half_open = True

    threading.Thread(target=freeze, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(TargetUnavailable) as info:
        conn.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    elapsed = time.monotonic() - started
    assert proxy.half_open, "the link never froze: the test proved nothing"
    proxy.half_open = False
    assert elapsed < 4 + 2, f"took {elapsed:.1f}s, over the 4s deadline"
    assert info.value.maybe_applied is False
    assert not (sftp_sim.root / "x.bin").exists()


# -- host keys: unknown and changed -------------------------------------------------------------------------


def test_an_unknown_host_key_is_refused_before_login_naming_the_host_and_fingerprint(
    sftp_sim: SftpSimulator, spool: Path, tmp_path: Path
) -> None:
    """known_hosts lacks this server ▶ refused with its SHA256 fingerprint; no login tried, nothing written."""
    known = tmp_path / "known_hosts"
    other = keygen(tmp_path / "elsewhere", "elsewhere").split()[:2]
    known.write_text(f"sftp.elsewhere.example {other[0]} {other[1]}\n")
    make_file(spool / "x.bin", 100, seed=1)
    conn = SftpConnector("files", sftp_spec(sftp_sim, spool, known_hosts=known))
    with pytest.raises(HostKeyRefused) as info:
        conn.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    text = str(info.value)
    assert info.value.field == "known_hosts" and info.value.maybe_applied is False
    assert info.value.waits_on_connector, "the message must wait for an operator, not spend its attempts"
    assert f"[127.0.0.1]:{sftp_sim.port}" in text and "not in known_hosts" in text
    assert sftp_sim.host_fingerprint in text
    assert "publickey" not in sftp_sim.log_text(), "the client tried to log in to an unknown host"
    assert sftp_sim.files(hidden=True) == {}

    # the breaker is open at once: the next file does not even connect
    assert conn.breaker_state == "open"
    before = sftp_sim.log_text()
    with pytest.raises(BreakerOpen):
        conn.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    assert _no_connection_made(sftp_sim, before)
    health = conn.probe()  # the probe looks past the breaker, at the server itself
    assert health.state == "down" and "host_key_refused" in health.detail


def test_a_changed_host_key_is_refused_naming_both_fingerprints(
    sftp_sim: SftpSimulator, spool: Path, tmp_path: Path
) -> None:
    """known_hosts lists another key for this very host ▶ refused as CHANGED, both fingerprints; nothing sent."""
    known = tmp_path / "known_hosts"
    kind, blob = keygen(tmp_path / "impostor", "impostor").split()[:2]
    known.write_text(f"[127.0.0.1]:{sftp_sim.port} {kind} {blob}\n")
    make_file(spool / "x.bin", 100, seed=1)
    conn = SftpConnector("files", sftp_spec(sftp_sim, spool, known_hosts=known))
    with pytest.raises(HostKeyRefused) as info:
        conn.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    text = str(info.value)
    assert "CHANGED" in text and sftp_sim.host_fingerprint in text
    assert key_fingerprint(tmp_path / "impostor.pub") in text
    assert "publickey" not in sftp_sim.log_text()
    assert sftp_sim.files(hidden=True) == {}


def test_a_refused_login_says_so(
    sftp_sim: SftpSimulator, spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key the server does not know, or a wrong password ▶ TargetUnavailable on field credentials."""
    keygen(tmp_path / "stranger", "stranger")
    make_file(spool / "x.bin", 100, seed=1)
    spec = sftp_spec(sftp_sim, spool)
    monkeypatch.setenv("IGATE_BUS_TEST_SFTP_KEY", str(tmp_path / "stranger"))
    conn = SftpConnector("files", spec)
    with pytest.raises(CredentialsRefused) as by_key:
        conn.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    assert by_key.value.field == "credentials" and "refused the login" in str(by_key.value)
    # no second login is tried while the breaker is open (a partner's fail2ban would ban the bus)
    logins = sftp_sim.log_text().count("Connection from")
    with pytest.raises(BreakerOpen):
        conn.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    assert sftp_sim.log_text().count("Connection from") == logins

    monkeypatch.setenv("IGATE_BUS_TEST_SFTP_PASSWORD", "not-the-password")
    spec = sftp_spec(sftp_sim, spool, credentials={"password": "IGATE_BUS_TEST_SFTP_PASSWORD"})
    with pytest.raises(CredentialsRefused) as by_password:
        SftpConnector("files", spec).put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    assert by_password.value.field == "credentials"
    assert "not-the-password" not in str(by_password.value)
    assert sftp_sim.files(hidden=True) == {}


# -- names and paths: refused before any connection ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "remote_dir", "remote_name"),
    [
        ("remote_name", "", "../x"),
        ("remote_name", "", "x\x00y"),
        ("remote_name", "", "x\ny"),
        ("remote_name", "", ""),
        ("remote_name", "", ".hidden"),
        ("remote_dir", "../..", "x"),
        ("remote_dir", "/etc", "x"),
        ("remote_dir", "a/\u202eb", "x"),
    ],
)
def test_a_hostile_remote_name_is_refused_before_connecting(
    sftp_sim: SftpSimulator, spool: Path, field: str, remote_dir: str, remote_name: str
) -> None:
    """`../x`, NUL, newline, empty, dot names, climbing or absolute dirs ▶ MappingError on that field; no connection."""
    make_file(spool / "x.bin", 10, seed=1)
    client = SftpClient("files", sftp_spec(sftp_sim, spool))
    before = sftp_sim.log_text()
    with (spool / "x.bin").open("rb") as source, pytest.raises(MappingError) as info:
        client.put(source, 10, remote_dir=remote_dir, remote_name=remote_name, idempotency_key=KEY)
    assert info.value.field == field
    assert "\x00" not in str(info.value) and "\n" not in str(info.value)
    assert _no_connection_made(sftp_sim, before)
    assert sftp_sim.files(hidden=True) == {}
    assert not (sftp_sim.base / "x").exists() and not (sftp_sim.base.parent / "x").exists()


@pytest.mark.parametrize("source", ["../outside.bin", "/etc/passwd", "link-out", "missing.bin", "a//b"])
def test_a_source_outside_the_spool_or_missing_is_refused(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector, tmp_path: Path, source: str
) -> None:
    """Climbing, absolute, a symlink out of the spool, missing ▶ MappingError on field source; nothing sent."""
    (tmp_path / "outside.bin").write_bytes(b"secret")
    (spool / "link-out").symlink_to(tmp_path / "outside.bin")
    request = PutFileRequest.model_construct(source=source, remote_dir="", remote_name="x.bin", sha256=None)
    with pytest.raises(MappingError) as info:
        connector.put_file(request, KEY)
    assert info.value.field == "source"
    assert sftp_sim.files(hidden=True) == {}


def test_a_directory_in_the_spool_is_not_a_source(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector
) -> None:
    """A directory named as the source ▶ MappingError: not a regular file."""
    (spool / "dir").mkdir()
    with pytest.raises(MappingError, match="not a regular file"):
        connector.put_file(PutFileRequest(source="dir", remote_name="x"), KEY)


# -- the final name is taken --------------------------------------------------------------------------------


def test_a_final_name_holding_other_bytes_is_never_overwritten(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector
) -> None:
    """Another file already at the final name ▶ TargetRejected(code=exists); its bytes untouched."""
    make_file(spool / "x.bin", 1000, seed=1)
    (sftp_sim.root / "x.bin").write_bytes(b"theirs")
    with pytest.raises(TargetRejected) as info:
        connector.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    assert info.value.code == "exists"
    assert (sftp_sim.root / "x.bin").read_bytes() == b"theirs"


def test_a_final_name_holding_the_same_bytes_is_already_applied(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector
) -> None:
    """The same bytes already there (sent under another key, or by hand) ▶ already_present, nothing written."""
    make_file(spool / "x.bin", 1000, seed=1)
    (sftp_sim.root / "x.bin").write_bytes((spool / "x.bin").read_bytes())
    mark = len(sftp_sim.events())
    reply = connector.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    assert reply.outcome == "already_present"
    assert [e for e in sftp_sim.events()[mark:] if not e.path.startswith(".igate-bus/")] == []
    assert connector.lookup_put(KEY) is not None


def test_a_source_that_does_not_match_its_sha256_is_refused_and_nothing_stays(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector
) -> None:
    """The event's sha256 differs from the spool file's bytes ▶ MappingError on sha256; no file, no temporary."""
    make_file(spool / "x.bin", 70_000, seed=1)
    with pytest.raises(MappingError) as info:
        connector.put_file(PutFileRequest(source="x.bin", remote_name="x.bin", sha256="0" * 64), KEY)
    assert info.value.field == "sha256"
    assert [p for p in sftp_sim.files(hidden=True) if not p.startswith(".igate-bus/")] == []


def test_a_file_over_the_cap_is_refused_before_connecting(sftp_sim: SftpSimulator, spool: Path) -> None:
    """max_file_bytes 1000, a 1001-byte file ▶ MappingError on source; no connection."""
    make_file(spool / "x.bin", 1001, seed=1)
    conn = SftpConnector("files", sftp_spec(sftp_sim, spool, max_file_bytes=1000))
    before = sftp_sim.log_text()
    with pytest.raises(MappingError, match="over max_file_bytes"):
        conn.put_file(PutFileRequest(source="x.bin", remote_name="x.bin"), KEY)
    assert _no_connection_made(sftp_sim, before)


# -- downloads -----------------------------------------------------------------------------------------------


def test_a_download_is_checked_then_renamed_into_the_spool(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector
) -> None:
    """A file on the server ▶ in the spool with its SHA-256 checked; a second get finds it already there."""
    (sftp_sim.root / "out").mkdir()
    digest = make_file(sftp_sim.root / "out" / "DOICHIEU_20261128.csv", 3 << 20, seed=9)
    request = GetFileRequest(
        remote_dir="out", remote_name="DOICHIEU_20261128.csv", dest="in/doichieu.csv", sha256=digest
    )
    reply = connector.get_file(request)
    assert (reply.outcome, reply.sha256, reply.size) == ("downloaded", digest, 3 << 20)
    assert hashlib.sha256((spool / "in" / "doichieu.csv").read_bytes()).hexdigest() == digest
    assert connector.get_file(request).outcome == "already_present"
    assert not list((spool / "in").glob(".*.part"))


def test_a_download_that_does_not_match_or_is_too_big_or_missing_is_not_kept(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector
) -> None:
    """Wrong SHA-256 ▶ transient, nothing kept; over max_bytes ▶ too_large unread; missing ▶ not_found."""
    make_file(sftp_sim.root / "f.csv", 50_000, seed=1)
    with pytest.raises(TargetUnavailable, match="not the expected"):
        connector.get_file(GetFileRequest(remote_name="f.csv", dest="f.csv", sha256="1" * 64))
    assert list(spool.iterdir()) == []
    with pytest.raises(TargetRejected) as big:
        connector.get_file(GetFileRequest(remote_name="f.csv", dest="f.csv", max_bytes=49_999))
    assert big.value.code == "too_large"
    with pytest.raises(TargetRejected) as missing:
        connector.get_file(GetFileRequest(remote_name="nope.csv", dest="f.csv"))
    assert missing.value.code == "not_found"
    assert list(spool.iterdir()) == []


def test_a_download_never_overwrites_another_file_in_the_spool(
    sftp_sim: SftpSimulator, spool: Path, connector: SftpConnector
) -> None:
    """The destination holds other bytes ▶ MappingError on dest; the local file is untouched."""
    make_file(sftp_sim.root / "f.csv", 1000, seed=1)
    (spool / "f.csv").write_bytes(b"mine")
    with pytest.raises(MappingError) as info:
        connector.get_file(GetFileRequest(remote_name="f.csv", dest="f.csv"))
    assert info.value.field == "dest"
    assert (spool / "f.csv").read_bytes() == b"mine"


def test_a_cut_download_resumes_when_the_hash_is_known(
    sftp_sim: SftpSimulator, spool: Path, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Cut after ≥2 MiB ▶ transient; the retry continues the local .part and the whole is byte-identical."""
    size = 8 << 20
    digest = make_file(sftp_sim.root / "big.bin", size, seed=11)
    conn = _via_proxy(sftp_sim, spool, proxy, tmp_path)
    proxy.reset_after_bytes = 3 << 20  # the server's bytes to us: the download itself
    request = GetFileRequest(remote_name="big.bin", dest="big.bin", sha256=digest)
    with pytest.raises(TargetUnavailable):
        conn.get_file(request)
    partial = spool / ".big.bin.part"
    assert partial.exists() and 0 < partial.stat().st_size < size, "the download was not cut mid-file"
    proxy.reset_after_bytes = None
    reply = conn.get_file(request)
    assert reply.resumed_from > 0 and reply.sha256 == digest
    assert hashlib.sha256((spool / "big.bin").read_bytes()).hexdigest() == digest


def test_a_listing_shows_regular_files_with_safe_names_only(sftp_sim: SftpSimulator, connector: SftpConnector) -> None:
    """Files, a directory and a name with a newline ▶ the two safe files, sorted; one unsafe name counted."""
    (sftp_sim.root / "b.csv").write_bytes(b"b")
    (sftp_sim.root / "a.csv").write_bytes(b"aa")
    (sftp_sim.root / "sub").mkdir()
    (sftp_sim.root / "bad\nname.csv").write_bytes(b"x")
    reply = connector.list_files(ListFilesRequest())
    assert [(f.name, f.size) for f in reply.files] == [("a.csv", 2), ("b.csv", 1)]
    assert reply.skipped_unsafe == 1 and not reply.truncated


# -- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint": "http://127.0.0.1:22"}, "sftp://"),
        ({"endpoint": "sftp://user:pw@127.0.0.1:22"}, "no user, password"),
        ({"endpoint": "sftp://127.0.0.1:22/../etc"}, "climbs"),
        ({"known_hosts": "relative/known_hosts"}, "absolute path"),
        ({"known_hosts": "/nonexistent/known_hosts"}, "absolute path to a file"),
        ({"ledger_dir": "../up"}, "ledger_dir"),
        ({"requests_in_flight": 0}, "requests_in_flight"),
        ({"spool_dir": "/nonexistent/spool"}, "not a directory"),
        ({"credentials": {}}, "credentials.private_key or credentials.password"),
    ],
)
def test_a_bad_configuration_is_a_config_error_naming_what_to_fix(
    sftp_sim: SftpSimulator, spool: Path, change: dict[str, object], message: str
) -> None:
    """Each bad endpoint, path, option or missing credential ▶ ConfigError saying which."""
    base = sftp_spec(sftp_sim, spool)
    top = {k: v for k, v in change.items() if k in type(base).model_fields}
    options = {**base.options, **{k: v for k, v in change.items() if k not in top}}
    # model_copy, not a dump and re-validation: durations are dumped as bare seconds, which the strict parser refuses
    spec = base.model_copy(update={**top, "options": options})
    with pytest.raises(ConfigError, match=message):
        SftpConnector("files", spec)


def test_a_key_given_as_text_and_the_probe_work(
    sftp_sim: SftpSimulator, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credentials.private_key holding the key itself (not a path) ▶ logs in; probe says up."""
    monkeypatch.setenv("IGATE_BUS_TEST_SFTP_KEY_TEXT", sftp_sim.client_key.read_text())
    spec = sftp_spec(sftp_sim, spool, credentials={"private_key": "IGATE_BUS_TEST_SFTP_KEY_TEXT"})
    health = SftpConnector("files", spec).probe()
    assert health.state == "up", health.detail
    os.environ.pop("IGATE_BUS_TEST_SFTP_KEY_TEXT", None)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (b'{"key":"%s","remote_path":"../../etc/passwd","size":1,"sha256":"%s","state":"done"}', "climbs"),
        (b'{"key":"other","remote_path":"a.csv","size":1,"sha256":"%s","state":"done"}', "unexpected fields"),
        (b"not json at all", "not one of ours"),
        (b"x" * 100_000, "too large"),
    ],
)
def test_a_tampered_ledger_entry_keeps_the_claim_maybe_applied(
    sftp_sim: SftpSimulator, connector: SftpConnector, entry: bytes, reason: str
) -> None:
    """A ledger entry that climbs, names another key, is not JSON or is huge ▶ TargetUnavailable(maybe_applied),
    read no further than 4 KiB, nothing outside the root looked at."""
    ledger = sftp_sim.root / ".igate-bus"
    ledger.mkdir()
    body = entry.replace(b"%s", KEY.encode(), 1).replace(b"%s", b"0" * 64, 1)
    (ledger / f"{KEY}.json").write_bytes(body)
    with pytest.raises(TargetUnavailable, match=reason) as info:
        connector.lookup_put(KEY)
    assert info.value.maybe_applied is True
