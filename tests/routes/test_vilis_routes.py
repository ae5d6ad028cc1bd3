# mypy: allow-untyped-defs
"""The land system end to end: iGate's events ▶ the land office (documents over SFTP) ▶ its changes ▶ iGate.

Everything is real: the broker (a fresh vhost), the store, the worker, the signed ingress (uvicorn on a
socket), a private sshd for the documents, the land office simulator (which reads the uploaded files from
the sshd's disk and calls the ingress back) and the iGate simulator. Effects are counted where they land:
the land office by dossier code and ``MaYeuCau``, the files by SHA-256 on the server's disk, iGate by
``clientRequestId`` and by (dossier, kind). Each fault test fails if its fault never happened.
"""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pika
import pytest
from busenv import SIM_PASSWORD, SIM_USER, depth, get_all, publish, thread_worker, wait_for
from vilisenv import VILIS_PASSWORD, VILIS_USER, land_events, land_when, other_events, spool_files, vilis_spec_dict

from simulators.faults import FaultProxy
from simulators.igate import IGateSimulator
from simulators.vilis import LIFE, TEXTS, VilisSimulator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bus"))  # the ingress harness lives beside its tests
from ingress_harness import VILIS_CODE, ServerThread, make_app

if TYPE_CHECKING:
    from collections.abc import Iterator

    from simulators.sftp import SftpSimulator

ROUTES = ["vilis-dossier-received", "vilis-check", "vilis-to-igate", "vilis-poll"]
#: the poll's schedule in these tests (shipped: 5m), and how long a dossier may go unreported before it is polled
POLL_EVERY = "1s"
STALE_AFTER = "1s"
KINDS = [kind for _, kind in LIFE]


def _config(
    folder: Path,
    igate: IGateSimulator,
    land: VilisSimulator,
    sftp: SftpSimulator,
    spool: Path,
    backoff: tuple[str, ...] = ("300ms", "1s"),
) -> Path:
    """routes.yaml with the land routes as shipped (their `when`), connectors.yaml for these simulators."""
    retry = {"backoff": list(backoff), "max_attempts": 40}
    routes = [
        {
            "name": "vilis-dossier-received",
            "from": {"exchange": "igate.events", "events": ["dossier.received"]},
            "when": land_when(),
            "adapter": "igate_to_vilis.dossier_received",
            "to": "vilis.tiep_nhan",
            "retry": retry,
            "concurrency": 4,
        },
        # as shipped: one thread each (the queue's order), and fifo toward iGate (a failed call holds the
        # dossier's later changes)
        {
            "name": "vilis-check",
            "from": {"exchange": "bus.results", "events": ["vilis.status_changed"]},
            "adapter": "vilis_to_igate.status_changed",
            "to": "vilis.check_change",
            "emits": "vilis.change_checked",
            "retry": {"backoff": ["300ms"], "max_attempts": 3},
            "prefetch": 20,
            "concurrency": 1,
        },
        {
            "name": "vilis-to-igate",
            "from": {"exchange": "bus.results", "events": ["vilis.change_checked"]},
            "adapter": "results_to_igate.status_update",
            "to": "igate.update_dossier",
            "retry": retry,
            "order": {"mode": "fifo", "target": "igate"},
            "prefetch": 20,
            "concurrency": 1,
        },
        {
            "name": "vilis-poll",
            "from": {"schedule": {"every": POLL_EVERY}},
            "adapter": "vilis_to_igate.poll",
            "to": "vilis.poll_stale",
            "retry": {"backoff": ["1s"], "max_attempts": 3},
            "concurrency": 1,
        },
    ]
    connectors = {
        "igate": {
            "type": "igate",
            "endpoint": igate.url,
            "timeout": {"connect": "1s", "read": "2s", "total": "3s"},
            "credentials": {"username": "IGATE_BUS_IGATE_USERNAME", "password": "IGATE_BUS_IGATE_PASSWORD"},
            "options": {"realm": "digo", "client_id": "igate-bus"},
        },
        "vilis": vilis_spec_dict(land, sftp, spool, poll_stale_after=STALE_AFTER),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.yaml").write_text(json.dumps({"routes": routes}, ensure_ascii=False))
    (folder / "connectors.yaml").write_text(json.dumps({"connectors": connectors}))
    return folder


class Land:
    """The whole land path of one test: simulators, ingress behind a fault proxy, config."""

    def __init__(
        self,
        amqp_url: str,
        tmp_path: Path,
        sftp: SftpSimulator,
        spool: Path,
        backoff: tuple[str, ...] = ("300ms", "1s"),
        **land: Any,
    ) -> None:
        self.amqp_url = amqp_url
        self.igate = IGateSimulator(username=SIM_USER, password=SIM_PASSWORD).start()
        self.ingress = ServerThread(make_app(amqp_url)).__enter__()
        self.proxy = FaultProxy("127.0.0.1", self.ingress.port).__enter__()
        self.land = VilisSimulator(
            username=VILIS_USER,
            password=VILIS_PASSWORD,
            files_root=sftp.root,
            bus_url=f"http://127.0.0.1:{self.proxy.port}",
            security_code=VILIS_CODE,
            **{"life": "callback", "step_s": 0.02, "retry_s": 0.3, **land},
        ).start()
        self.sftp = sftp
        self.spool = spool
        self.config = _config(tmp_path / "cfg", self.igate, self.land, sftp, spool, backoff)

    def close(self) -> None:
        self.land.stop()
        self.proxy.__exit__(None, None, None)
        self.ingress.__exit__(None, None, None)
        self.igate.stop()

    def igate_changes(self) -> dict[str, list[str]]:
        """Dossier → the land kinds iGate received, in the order it applied them."""
        out: dict[str, list[str]] = defaultdict(list)
        for e in self.igate.effects():
            data = e["request"].get("data") or {}
            if data.get("event_type") == "vilis.change_checked":
                out[e["dossier_code"]].append(str(data["kind"]))
        return out

    def lives_at_igate(self) -> int:
        return sum(1 for kinds in self.igate_changes().values() if len(kinds) >= len(KINDS))


@pytest.fixture
def land_path(amqp_url: str, tmp_path: Path, sftp_sim: SftpSimulator, spool: Path) -> Iterator[Land]:
    lp = Land(amqp_url, tmp_path, sftp_sim, spool)
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture
def alternate_path(amqp_url: str, tmp_path: Path, sftp_sim: SftpSimulator, spool: Path) -> Iterator[Land]:
    """The land office plays each dossier's life by callback for half of them and by poll for the other half."""
    lp = Land(amqp_url, tmp_path, sftp_sim, spool, life="alternate")
    try:
        yield lp
    finally:
        lp.close()


def _depth(amqp_url: str, queue: str) -> int:
    """busenv.depth, tolerating the shared broker's slow handshakes while other runs delete their vhosts."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return depth(amqp_url, queue)
        except pika.exceptions.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _assert_land_only_once_files_identical(lp: Land, land: list[dict[str, Any]], others: list[dict[str, Any]]) -> None:
    land_codes = {e["dossier_code"] for e in land}
    received = lp.land.dossier_counts("tiepnhan")
    assert set(received) == land_codes, (
        f"{len(set(received) - land_codes)} strays, {len(land_codes - set(received))} lost"
    )
    assert not set(received) & {e["dossier_code"] for e in others}
    dupes = {c: n for c, n in received.items() if n != 1}
    assert not dupes, f"dossiers sent more than once: {list(dupes.items())[:5]}"
    assert all(n == 1 for n in lp.land.effect_counts().values())
    on_server = lp.sftp.files()
    for code in land_codes:
        sent = sorted(spool_files(lp.spool, code).values())
        there = sorted(
            r.sha256
            for p, r in on_server.items()
            if p.startswith(f"{code}/") and "-" in p.rsplit("/", 1)[1] and not p.startswith(f"{code}/KetQua/")
        )
        assert there == sent, f"{code}: the files on the server differ from the spool's"
    checks = Counter(c["check"] for c in lp.land.file_checks())
    assert checks == {"ok": 2 * len(land_codes)}, checks


def _kind_of(request: dict[str, Any]) -> str:
    """The land change kind an iGate request carried."""
    body = request["body"]
    data = (json.loads(body) if isinstance(body, str | bytes) else body).get("data") or {}
    return str(data.get("kind"))


def _assert_half_by_callback_half_by_poll(lp: Land, land: list[dict[str, Any]]) -> None:
    """Both ways were taken: callback dossiers called the bus, polled ones never did and were polled."""
    modes = Counter(lp.land.mode_of(e["dossier_code"]) for e in land)
    assert modes["callback"] >= len(land) // 4 and modes["poll"] >= len(land) // 4, modes
    called = {c["dossier"] for c in lp.land.callbacks()}
    for e in land:
        code = e["dossier_code"]
        assert (code in called) == (lp.land.mode_of(code) == "callback"), code
    assert lp.land.requests("/danhsachthaydoi"), "the land office was never polled"


def _assert_each_change_once_in_order(lp: Land, land: list[dict[str, Any]]) -> None:
    changes = lp.igate_changes()
    for e in land:
        assert changes.get(e["dossier_code"]) == KINDS, (e["dossier_code"], changes.get(e["dossier_code"]))
    counts = lp.igate.effect_counts()
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1][:5]


def _failed_at_igate(lp: Land, dossier: str) -> list[dict[str, Any]]:
    """The land changes of ``dossier`` iGate answered with the injected error."""
    return [r for r in lp.igate.requests(f"/pa/dossier/{dossier}/") if r["fault"] == "error"]


def _hold_first_calls(lp: Land, land: list[dict[str, Any]]) -> list[str]:
    """Fail every iGate call of one callback and one polled dossier: their first change waits in retries."""
    codes = [e["dossier_code"] for e in land]
    held = [next(c for c in codes if lp.land.mode_of(c) == mode) for mode in ("callback", "poll")]
    lp.igate.set_faults(error_rate=1.0, only_paths=[f"/pa/dossier/{c}/" for c in held], only_methods=["PUT"])
    return held


def _release_after_whole_lives(lp: Land, held: list[str], timeout: float) -> None:
    """Let iGate take the held dossiers' changes once each whole life reached the bus behind the failed first."""

    def lives_whole_and_failing() -> bool:
        done = {e["dossier"] for e in lp.land.effects() if e["action"] == "tiepnhan" and e.get("life_done")}
        return all(c in done and len(_failed_at_igate(lp, c)) >= 2 for c in held)

    wait_for(lives_whole_and_failing, timeout=timeout, what="the held dossiers' lives at the land office")
    time.sleep(3)  # a poll (every 1s, a dossier stale after 1s) and the checks: every change now waits at iGate
    lp.igate.set_faults()


def _run(lp: Land, n_land: int, n_other: int, *, cut_ingress_s: float, timeout: float) -> None:
    land = land_events(n_land, lp.spool)
    others = other_events(n_other)
    held = _hold_first_calls(lp, land)
    with thread_worker(lp.amqp_url, "sqlite:///" + str(lp.config / "store.sqlite3"), lp.config, routes=ROUTES):
        publish(lp.amqp_url, [x for pair in zip(land, others, strict=True) for x in pair])
        wait_for(lambda: lp.land.lives_done() >= n_land // 4, timeout=timeout, what="a quarter of the lives")
        lp.proxy.refuse = True  # the bus is unreachable while the land office keeps calling
        lp.proxy.drop_all()  # its kept-alive connections too
        time.sleep(cut_ingress_s)
        lp.proxy.refuse = False
        _release_after_whole_lives(lp, held, timeout)
        wait_for(lambda: lp.lives_at_igate() >= n_land, timeout=timeout, what=f"{n_land} lives at iGate")
        time.sleep(1)  # anything late (a duplicate) would show now
    refused_calls = [c for c in lp.land.callbacks() if not isinstance(c["status"], int)]
    assert refused_calls, "the land office never met the bus unreachable: the test proved nothing"
    assert lp.proxy.stats().connections_refused > 0
    _assert_half_by_callback_half_by_poll(lp, land)
    for code in held:  # the first change failed at iGate, and the later ones waited behind it (asserted below)
        failed = _failed_at_igate(lp, code)
        assert failed, f"{code}: iGate never failed a call: fifo was not exercised"
        assert all(_kind_of(r) == "tiep_nhan" for r in failed), [_kind_of(r) for r in failed]
    _assert_land_only_once_files_identical(lp, land, others)
    _assert_each_change_once_in_order(lp, land)
    # the land office's Vietnamese reaches iGate intact: NFC, the exact words (it sent one of them as NFD)
    notes = [
        e["request"]["data"]
        for e in lp.igate.effects()
        if (e["request"].get("data") or {}).get("kind") == "yeu_cau_bo_sung"
    ]
    assert notes and all(d["note"] == TEXTS["bo_sung"] and unicodedata.is_normalized("NFC", d["note"]) for d in notes)
    taxes = [
        e["request"]["data"]
        for e in lp.igate.effects()
        if (e["request"].get("data") or {}).get("kind") == "ket_qua_thue"
    ]
    assert taxes and all(TEXTS["thue"] in d["tax_notices"] for d in taxes)
    for q in ("dlq.vilis-dossier-received", "dlq.vilis-check", "dlq.vilis-to-igate", "dlq.vilis-poll"):
        assert _depth(lp.amqp_url, q) == 0, q


def test_50_land_and_50_other_dossiers_live_to_the_end_through_an_unreachable_bus(alternate_path):
    """50 land + 50 other, half the lives by callback, half by poll ▶ only the 50 at the land office, once, files
    identical; iGate gets every change once, in order, also behind a first call it failed."""
    _run(alternate_path, 50, 50, cut_ingress_s=2.0, timeout=180)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_500_land_and_500_other_dossiers(alternate_path):
    """The issue's must-show at full size: 500 + 500, half by callback and half by poll, the ingress
    unreachable for 10 s mid-run."""
    _run(alternate_path, 500, 500, cut_ingress_s=10.0, timeout=1800)


def test_bad_code_unknown_dossier_and_a_land_office_down_each_have_a_clear_outcome(land_path):
    """Bad security code ▶ 401, nothing published; unknown dossier ▶ dead-lettered unknown_dossier;
    the land office down ▶ the dossiers wait and go once when it is back."""
    _faults(land_path, down_s=3.0)


@pytest.mark.chaos
def test_the_land_office_down_for_a_minute(amqp_url, tmp_path, sftp_sim, spool):
    """The same, the land office down for a full minute (backoff of a real route's order: 2s, 10s, 30s)."""
    lp = Land(amqp_url, tmp_path, sftp_sim, spool, backoff=("2s", "10s", "30s"))
    try:
        _faults(lp, down_s=60.0)
    finally:
        lp.close()


def _faults(lp: Land, *, down_s: float) -> None:
    stray = "000.00.16.H16-200101-9999"
    land = land_events(5, lp.spool, prefix="DOWN")
    with thread_worker(lp.amqp_url, "sqlite:///" + str(lp.config / "store.sqlite3"), lp.config, routes=ROUTES):
        with httpx.Client(base_url=lp.ingress.url, timeout=10) as http:
            body = json.dumps(lp.land.step_body(stray, "TiepNhanHoSoChoMotCua"), ensure_ascii=False).encode()
            bad = http.post(
                "/callbacks/vilis/TiepNhanHoSoChoMotCua/not-the-code",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert bad.status_code == 401 and bad.json()["Result"] == 0 and bad.json()["error"] == "bad_security_code"
            good = http.post(
                f"/callbacks/vilis/TiepNhanHoSoChoMotCua/{VILIS_CODE}",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert good.status_code == 200 and good.json()["Result"] == 1
        wait_for(lambda: _depth(lp.amqp_url, "dlq.vilis-check") == 1, timeout=30, what="the stray change dead-lettered")
        lp.land.set_faults(down=True)
        publish(lp.amqp_url, land)
        wait_for(
            lambda: sum(1 for r in lp.land.requests("/tiepnhan") if r["status"] == 503) >= 5,
            timeout=30,
            what="the land office refusing while down",
        )
        time.sleep(down_s)
        lp.land.set_faults()
        wait_for(lambda: lp.lives_at_igate() >= 5, timeout=120, what="5 lives at iGate after the land office is back")
    ((props, raw),) = get_all(lp.amqp_url, "dlq.vilis-check")
    headers = props.headers or {}
    assert headers.get("x-error-kind") == "rejected" and "unknown_dossier" in str(headers.get("x-error"))
    assert json.loads(raw)["dossier_code"] == stray
    assert stray not in lp.igate_changes()
    _assert_land_only_once_files_identical(lp, land, [])
    _assert_each_change_once_in_order(lp, land)
