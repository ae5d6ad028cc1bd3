# mypy: allow-untyped-defs
"""A file route end to end: real broker, real store, real worker, a real OpenSSH sshd behind a fault proxy.

``file.ready`` ▶ ``files.put_file`` ▶ ``files.put_file`` (the sftp connector) ▶ ``file.sent``. What arrived is
read from the server's disk (size, SHA-256) and from its file system's record: a file that appeared twice
under its final name, or a temporary file written again after its final name appeared (a re-upload after a
lookup found it), fails the test. Guards fail the test when the fault never happened.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from busenv import (
    ProcessWorker,
    declare_routes,
    depth,
    dossier_code,
    drained,
    env_for,
    get_all,
    publish,
    thread_worker,
    wait_for,
)
from sftpenv import KEY_ENV, arrivals, make_file

from connectors._sftp import temp_name
from routes.pipeline import idempotency_key
from simulators.faults import FaultProxy

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from simulators.sftp import FsEvent, SftpSimulator

ROUTE = "files-to-sftp"
QUEUES = (f"route.{ROUTE}", f"retry.{ROUTE}.300ms", f"retry.{ROUTE}.600ms", f"dlq.{ROUTE}")

ROUTES_YAML = """\
routes:
  - name: files-to-sftp
    from: {{exchange: igate.events, events: [file.ready]}}
    when: "payload.target == 'finance'"
    adapter: files.put_file
    to: files.put_file
    emits: file.sent
    retry: {{backoff: [300ms, 600ms], max_attempts: 40}}
    prefetch: 20
    concurrency: {concurrency}
"""

CONNECTORS_YAML = """\
connectors:
  files:
    type: sftp
    endpoint: sftp://127.0.0.1:{port}
    timeout: {{connect: 2s, read: 3s, total: {total}}}
    breaker: {{fail_max: 1000, reset_timeout: 1s}}
    credentials: {{private_key: {key_env}}}
    options:
      username: {username}
      known_hosts: {known_hosts}
      spool_dir: {spool}
"""


@pytest.fixture
def proxy(sftp_sim: SftpSimulator) -> Iterator[FaultProxy]:
    with FaultProxy(sftp_sim.host, sftp_sim.port) as p:
        yield p


def _config(tmp_path: Path, sim: SftpSimulator, proxy: FaultProxy, spool: Path, *, concurrency: int = 4) -> Path:
    """A config folder whose sftp connector reaches the simulator through the proxy (host key still checked)."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    known = tmp_path / "known_hosts"
    known.write_text(sim.known_hosts_for(f"[127.0.0.1]:{proxy.port}"))
    os.environ[KEY_ENV] = str(sim.client_key)
    (folder / "routes.yaml").write_text(ROUTES_YAML.format(concurrency=concurrency))
    (folder / "connectors.yaml").write_text(
        CONNECTORS_YAML.format(
            port=proxy.port,
            total="5s",
            key_env=KEY_ENV,
            username=sim.username,
            known_hosts=known,
            spool=spool,
        )
    )
    return folder


def _files(spool: Path, n: int, *, big_every: int = 10) -> tuple[list[dict[str, Any]], dict[str, tuple[int, str]]]:
    """``n`` files in the spool and their file.ready events; every ``big_every``-th is 3 MiB (in flight long)."""
    events, expected = [], {}
    now = datetime.now(UTC).isoformat()
    for i in range(n):
        size = (3 << 20) + i if i % big_every == 0 else (i * 7919) % 200_000
        digest = make_file(spool / "out" / f"{i}.bin", size, seed=i)
        remote_dir = f"day/{i % 3}"
        name = f"Biên lai {i:04d}.bin"
        expected[f"{remote_dir}/{name}"] = (size, digest)
        events.append(
            {
                "event_id": str(uuid.uuid4()),
                "event_type": "file.ready",
                "occurred_at": now,
                "source": "test",
                "dossier_code": dossier_code(i, "FILE"),
                "payload": {
                    "target": "finance",
                    "source": f"out/{i}.bin",
                    "remote_dir": remote_dir,
                    "remote_name": name,
                    "sha256": digest,
                    "size": size,
                },
            }
        )
    return events, expected


def _assert_each_arrived_once_never_rewritten(sim: SftpSimulator, expected: dict[str, tuple[int, str]]) -> None:
    """On disk exactly the expected files, byte-identical; each appeared once; no temp written after it did."""
    assert not sim.overflowed(), "the file system record overflowed: it cannot prove anything"
    on_disk = {p: (r.size, r.sha256) for p, r in sim.files().items()}
    missing = expected.keys() - on_disk.keys()
    assert not missing, f"{len(missing)} files never arrived: {sorted(missing)[:3]}"
    assert on_disk == expected, "a file differs from what was sent, or an unexpected file arrived"
    events = sim.events()
    for path in expected:
        arrived = [e.at for e in events if e.path == path and e.kind in {"created", "moved_to"}]
        assert len(arrived) == 1, f"{path} arrived {len(arrived)} times"
        directory, _, name = path.rpartition("/")
        temp_prefix = f"{directory}/.{name}."
        rewritten = [e for e in events if e.path.startswith(temp_prefix) and e.kind == "written" and e.at > arrived[0]]
        assert not rewritten, f"{path} was uploaded again after it had arrived"
    leftovers = [p for p in sim.files(hidden=True) if p.endswith(".part")]
    assert leftovers == [], f"temporary files left: {leftovers[:3]}"


def _cut_mid_upload(
    sim: SftpSimulator, proxy: FaultProxy, events: list[dict[str, Any]], times: int = 3
) -> tuple[list[str], threading.Event]:
    """Drop every connection whenever one of these events' temporary files is over 1 MiB (``times`` times).

    Returns the names cut so far (filled by a thread) and the event that stops the thread.
    """
    cuts: list[str] = []
    stop = threading.Event()
    temps = []
    for event in events:
        payload = event["payload"]
        key = idempotency_key(ROUTE, event["event_id"])
        temps.append(sim.root / payload["remote_dir"] / temp_name(payload["remote_name"], key))

    def watch() -> None:
        while not stop.is_set() and len(cuts) < times:
            for temp in temps:
                if temp.name not in cuts and temp.exists() and temp.stat().st_size > (1 << 20):
                    cuts.append(temp.name)
                    proxy.drop_all()
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()
    return cuts, stop


def _drained(amqp_url: str) -> bool:
    return drained(amqp_url, QUEUES[:3])


def _log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(errors="replace").splitlines() if x.startswith("{")]


def _results_cover(amqp_url: str, events: list[dict[str, Any]]) -> None:
    """Every event got its file.sent result (on bus.results; no route binds it, so it waits in `unrouted`)."""
    causes = {(p.headers or {}).get("x-cause") for p, _ in get_all(amqp_url, "unrouted")}
    assert {e["event_id"] for e in events} <= causes


def test_a_worker_sigkilled_right_after_an_upload_does_not_upload_it_again(
    amqp_url: str, sqlite_url: str, tmp_path: Path, sftp_sim: SftpSimulator, proxy: FaultProxy, spool: Path
) -> None:
    """SIGKILL after the first upload (claim still in progress, others mid-upload) ▶ restart: lookups find the
    applied ones, cut ones resume; every file on the server once, none re-uploaded, queues empty."""
    cfg = _config(tmp_path, sftp_sim, proxy, spool)
    events, expected = _files(spool, 24, big_every=6)
    declare_routes(amqp_url, cfg)
    publish(amqp_url, events)
    log = tmp_path / "worker.log"
    proxy.bandwidth_bps = 4 << 20  # keep the 3 MiB uploads in flight when the kill lands
    first = ProcessWorker(
        env_for(amqp_url, sqlite_url, cfg, IGATE_CRASH_AT="after_send", IGATE_BUS_TESTING="1"), log, routes=ROUTE
    ).start()
    try:
        assert first.proc is not None
        first.proc.wait(120)
        assert first.proc.returncode == -9, f"the worker did not SIGKILL itself after a send: {first.tail()}"
    finally:
        first.stop()
    applied_at_kill = {p for p in expected if arrivals(sftp_sim, p)}
    assert 1 <= len(applied_at_kill) < len(expected), "the kill did not land mid-run: the test proved nothing"

    proxy.bandwidth_bps = None
    second = ProcessWorker(env_for(amqp_url, sqlite_url, cfg), log, routes=ROUTE).start()
    try:
        wait_for(lambda: len(sftp_sim.files()) >= len(expected), timeout=180, what="every file on the server")
        wait_for(lambda: _drained(amqp_url), timeout=120, what="the queues to drain")  # reclaims wait out the lease
        assert second.terminate() == 0
    finally:
        second.stop()

    _assert_each_arrived_once_never_rewritten(sftp_sim, expected)
    assert depth(amqp_url, f"dlq.{ROUTE}") == 0
    lines = _log_lines(log)
    found = [x for x in lines if x.get("event") == "reconciled" and x.get("found") is True]
    assert found, "no redelivery was reconciled by lookup: the crash left nothing to reconcile"
    resumed = [x for x in lines if x.get("event") == "sftp.put" and x.get("resumed_from", 0) > 0]
    _results_cover(amqp_url, events)
    print(
        f"\nsftp route after SIGKILL: {len(expected)} files once each; {len(applied_at_kill)} on the server at "
        f"the kill, {len(found)} reconciled by lookup as applied, {len(resumed)} cut uploads resumed"
    )


def _run_until_all_arrived(
    amqp_url: str, env: dict[str, str], log: Path, sim: SftpSimulator, total: int, kills: int
) -> int:
    """Run worker processes until every file is on the server and the queues are empty, SIGKILLing the
    first ``kills`` of them once a share of the files arrived; how many were killed."""
    killed = 0
    while True:
        worker = ProcessWorker(env, log, routes=ROUTE).start()
        try:
            if killed < kills:
                goal = total * (killed + 1) // (kills + 1)

                def reached(goal: int = goal) -> bool:
                    return len(sim.files()) >= goal

                wait_for(reached, timeout=240, what=f"{goal} files before a kill")
                worker.kill9()
                killed += 1
                continue
            wait_for(lambda: len(sim.files()) >= total, timeout=600, what="every file on the server")
            wait_for(lambda: _drained(amqp_url), timeout=180, what="the queues to drain")
            assert worker.terminate() == 0
            return killed
        finally:
            worker.stop()


def _faulty_run(
    amqp_url: str,
    store_url: str,
    tmp_path: Path,
    sim: SftpSimulator,
    proxy: FaultProxy,
    spool: Path,
    *,
    files: int,
    arrival_cuts: int,
    mid_cuts: int,
    kills: int,
) -> None:
    """Cut every connection the moment a file appears under its final name (``arrival_cuts`` times), whenever
    a big temporary file is half written (``mid_cuts`` times), and SIGKILL the worker ``kills`` times ▶ every
    file on the server once, byte-identical, none uploaded again after a lookup found it."""
    cfg = _config(tmp_path, sim, proxy, spool)
    events, expected = _files(spool, files, big_every=8)
    cuts_after_arrival: list[str] = []
    lock = threading.Lock()

    def cut_on_arrival(event: FsEvent) -> None:
        if event.kind in {"created", "moved_to"} and event.path in expected:
            with lock:
                if len(cuts_after_arrival) >= arrival_cuts:
                    return
                cuts_after_arrival.append(event.path)
            proxy.drop_all()

    sim.on_event = cut_on_arrival
    proxy.latency_s = 0.03  # the answer to a rename is still on its way when the file appears on disk
    proxy.bandwidth_bps = 6 << 20
    mid_upload_cuts, stop = _cut_mid_upload(sim, proxy, events[::8], times=mid_cuts)
    log = tmp_path / "worker.log"
    env = env_for(amqp_url, store_url, cfg)
    declare_routes(amqp_url, cfg)
    publish(amqp_url, events)
    try:
        killed = _run_until_all_arrived(amqp_url, env, log, sim, len(expected), kills)
    finally:
        stop.set()
        sim.on_event = None

    assert len(cuts_after_arrival) == arrival_cuts, "the connection was never cut after a file arrived"
    assert len(mid_upload_cuts) >= 1, "no upload was cut midway: the test proved nothing"
    _assert_each_arrived_once_never_rewritten(sim, expected)
    assert depth(amqp_url, f"dlq.{ROUTE}") == 0
    lines = _log_lines(log)
    commit_cuts = [x for x in lines if x.get("event") == "sftp.call_failed" and "(commit" in x.get("error", "")]
    assert commit_cuts, "no upload saw its connection cut after the rename"
    assert all(x["maybe_applied"] is True for x in commit_cuts)
    found = [x for x in lines if x.get("event") == "reconciled" and x.get("found") is True]
    assert found, "no cut-after-rename was reconciled by lookup"
    resumed = [x for x in lines if x.get("event") == "sftp.put" and x.get("resumed_from", 0) > 0]
    assert resumed, "no cut upload resumed from its verified prefix"
    _results_cover(amqp_url, events)
    print(
        f"\nsftp route: {len(expected)} files once each; {killed} SIGKILLs; {len(cuts_after_arrival)} cuts after a "
        f"rename ({len(commit_cuts)} uploads saw one, {len(found)} reconciled by lookup as applied); "
        f"{len(mid_upload_cuts)} cuts mid-upload ({len(resumed)} uploads resumed)"
    )


def test_applied_then_cut_and_cuts_mid_upload_never_send_a_file_twice(
    amqp_url: str, sqlite_url: str, tmp_path: Path, sftp_sim: SftpSimulator, proxy: FaultProxy, spool: Path
) -> None:
    """24 files; 4 cuts right after a rename, 2 mid-upload ▶ each file once, none re-uploaded."""
    _faulty_run(amqp_url, sqlite_url, tmp_path, sftp_sim, proxy, spool, files=24, arrival_cuts=4, mid_cuts=2, kills=0)


@pytest.mark.chaos
def test_200_files_through_kills_and_cuts_arrive_once_each(
    amqp_url: str, pg_url: str, tmp_path: Path, sftp_sim: SftpSimulator, proxy: FaultProxy, spool: Path
) -> None:
    """200 files, PostgreSQL store; 2 SIGKILLs, 20 cuts right after a rename, 10 mid-upload ▶ each once."""
    _faulty_run(amqp_url, pg_url, tmp_path, sftp_sim, proxy, spool, files=200, arrival_cuts=20, mid_cuts=10, kills=2)


def test_a_route_to_sftp_with_a_bad_file_event_dead_letters_it_naming_the_field(
    amqp_url: str, sqlite_url: str, tmp_path: Path, sftp_sim: SftpSimulator, proxy: FaultProxy, spool: Path
) -> None:
    """file.ready with `../x` or a NUL in the name, or a source outside the spool ▶ DLQ at once with the field;
    nothing reaches the server; the good event beside them arrives."""
    cfg = _config(tmp_path, sftp_sim, proxy, spool)
    events, expected = _files(spool, 1)
    bad = []
    for name, source in (
        ("../x", "out/0.bin"),
        ("a\x00b", "out/0.bin"),
        ("a\nb", "out/0.bin"),
        ("x", "../../etc/passwd"),
    ):
        event = json.loads(json.dumps(events[0]))
        event["event_id"] = str(uuid.uuid4())
        event["payload"].update(remote_name=name, source=source)
        bad.append(event)
    with thread_worker(amqp_url, sqlite_url, cfg, routes=[ROUTE]):
        publish(amqp_url, [*bad, *events])
        wait_for(lambda: depth(amqp_url, f"dlq.{ROUTE}") == len(bad), timeout=30, what="the bad events dead-lettered")
        wait_for(lambda: len(sftp_sim.files()) == 1, timeout=30, what="the good file")
    letters = get_all(amqp_url, f"dlq.{ROUTE}")
    reasons = sorted(str((p.headers or {}).get("x-error")) for p, _ in letters)
    kinds = {(p.headers or {}).get("x-error-kind") for p, _ in letters}
    assert kinds == {"invalid"}
    assert sum("remote_name" in r for r in reasons) == 3 and sum("source" in r for r in reasons) == 1
    assert all("\x00" not in r and "\n" not in r for r in reasons)
    _assert_each_arrived_once_never_rewritten(sftp_sim, expected)
