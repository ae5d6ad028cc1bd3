# mypy: allow-untyped-defs
"""The land connector against the land office simulator (HTTP) and a private sshd (SFTP): one test per row.

Effects are counted at the land simulator by ``MaYeuCau`` (our key), files on the SFTP server's disk by their
SHA-256; a fault test fails if its fault never happened.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from vilisenv import VILIS_PASSWORD, VILIS_USER, land_events, spool_files, vilis_spec

from adapters.igate_to_vilis import dossier_received
from connectors.kit.state import ConnectorState
from connectors.vilis import SENT, VilisConnector, render
from schemas.envelope import parse_event
from schemas.errors import (
    CredentialsRefused,
    MappingError,
    TargetGarbled,
    TargetRejected,
    TargetUnavailable,
)
from schemas.events import EVENT_PAYLOADS
from schemas.results import ResultFile, VilisStatusChanged
from schemas.vilis import CheckChangeRequest, PollStaleRequest, TiepNhanRequest, TraKetQuaRequest
from simulators.faults import FaultProxy
from simulators.vilis import LIFE, TEXTS, VilisSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from simulators.sftp import SftpSimulator

KEY = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def land() -> Iterator[VilisSimulator]:
    with VilisSimulator(username=VILIS_USER, password=VILIS_PASSWORD) as sim:
        yield sim


@pytest.fixture
def conn(land: VilisSimulator, sftp_sim: SftpSimulator, spool: Path, sqlite_url: str) -> Iterator[VilisConnector]:
    land.files_root = sftp_sim.root
    c = VilisConnector("vilis", vilis_spec(land, sftp_sim, spool))
    state = ConnectorState(sqlite_url, connector="vilis")
    c.attach_state(state)
    yield c
    c.close()
    state.close()


def _request(spool: Path, i: int = 0) -> tuple[str, TiepNhanRequest]:
    import json

    ev = land_events(i + 1, spool)[i]
    event = parse_event(json.dumps(ev).encode(), payload_models=EVENT_PAYLOADS)
    return ev["dossier_code"], dossier_received(event, now=datetime.now(UTC))


def test_a_dossier_goes_once_with_its_files_byte_identical_on_the_server(conn, land, sftp_sim, spool):
    """tiep_nhan ▶ both files on the server as sent, listed with their SHA-256, one call, the dossier recorded."""
    code, request = _request(spool)
    reply = conn.tiep_nhan(request, KEY)
    assert land.effect_counts() == {KEY: 1}
    on_server = sftp_sim.files()
    sent = spool_files(spool, code)
    assert len(reply.files) == 2
    for f in reply.files:
        assert on_server[f.path].sha256 == f.sha256
    assert sorted(f.sha256 for f in reply.files) == sorted(sent.values())
    row = conn.state.get(SENT, code)
    assert row is not None and row.value["key"] == KEY
    checks = land.file_checks()
    assert [c["check"] for c in checks] == ["ok", "ok"], checks
    body = land.effects()[0]["body"]
    assert body["MaYeuCau"] == KEY and "NguonSpool" not in str(body)


def test_the_lookup_finds_an_applied_call_and_says_none_for_an_unknown_key(conn, land, spool):
    """lookup(KEY) after an apply ▶ the record; lookup(other) ▶ None (the land office's 404 names the key)."""
    _, request = _request(spool)
    conn.tiep_nhan(request, KEY)
    found = conn.lookup(KEY)
    assert found is not None and found.action == "tiep_nhan"
    assert conn.lookup("never-sent-key") is None


def test_a_failing_lookup_never_reads_as_not_applied(conn, land):
    """lookup fails (503) ▶ TargetUnavailable maybe_applied, never None."""
    land.set_faults(lookup_fail_rate=1.0)
    with pytest.raises(TargetUnavailable) as info:
        conn.lookup(KEY)
    assert info.value.maybe_applied
    assert any(r["path"] == "/tracuuyeucau" and r["status"] == 503 for r in land.requests())


def test_an_answer_lost_after_the_apply_is_ambiguous_and_the_lookup_resolves_it(conn, land, spool):
    """apply_then_drop ▶ maybe_applied; the lookup finds the call (and records the dossier): nothing sent twice."""
    code, request = _request(spool)
    land.set_faults(apply_then_drop_rate=1.0, only_paths=["/tiepnhan"])
    with pytest.raises(TargetUnavailable) as info:
        conn.tiep_nhan(request, KEY)
    assert info.value.maybe_applied
    land.set_faults()
    assert conn.state.get(SENT, code) is None
    assert conn.lookup(KEY) is not None
    assert conn.state.get(SENT, code) is not None
    assert land.effect_counts() == {KEY: 1}


def test_the_land_office_refusing_the_dossier_is_rejected_with_its_vietnamese_reason(conn, land, spool):
    """success false ▶ TargetRejected(code) carrying the land office's message."""
    code, request = _request(spool)
    land.set_faults(refuse_codes=[code])
    with pytest.raises(TargetRejected) as info:
        conn.tiep_nhan(request, KEY)
    assert info.value.code == "TRUNG_HO_SO"
    assert "Hồ sơ đã tồn tại trên hệ thống đất đai" in str(info.value)
    assert land.effect_counts() == {}


def test_refused_credentials_open_the_breaker(conn, land):
    """401 ▶ CredentialsRefused (an operator's problem, never a dead letter)."""
    land.set_faults(refuse_credentials=True)
    with pytest.raises(CredentialsRefused):
        conn.tra_ket_qua(
            TraKetQuaRequest(SoBienNhan="000.00.16.H16-250101-0001", NgayTra="2025-12-10T09:00:00+07:00"), KEY
        )
    assert conn.breaker_state == "open"


def test_down_is_unavailable_and_garbage_is_garbled(conn, land):
    """503 ▶ TargetUnavailable; a broken 200 after the apply ▶ TargetGarbled maybe_applied."""
    request = TraKetQuaRequest(SoBienNhan="000.00.16.H16-250101-0001", NgayTra="2025-12-10T09:00:00+07:00")
    land.set_faults(down=True)
    with pytest.raises(TargetUnavailable):
        conn.tra_ket_qua(request, KEY)
    land.set_faults(malformed_body=1.0)
    with pytest.raises(TargetGarbled) as info:
        conn.tra_ket_qua(request, KEY + "x")
    assert info.value.maybe_applied
    assert land.effect_counts() == {KEY + "x": 1}


def test_a_document_missing_from_the_spool_is_a_mapping_error_naming_it(conn, land, spool):
    """No file in the spool ▶ MappingError naming documents[i]; nothing sent to the land office."""
    code, request = _request(spool)
    for p in (spool / code).iterdir():
        p.unlink()
    with pytest.raises(MappingError) as info:
        conn.tiep_nhan(request, KEY)
    assert (info.value.field or "").startswith("documents[0]")
    assert land.effect_counts() == {}


def test_an_upload_cut_midway_sends_nothing_to_the_land_office_and_the_retry_completes(
    land, sftp_sim, spool, tmp_path, sqlite_url
):
    """The SFTP link reset mid-upload ▶ TargetUnavailable, no call; the next attempt ▶ whole files, one call."""
    land.files_root = sftp_sim.root
    with FaultProxy(sftp_sim.host, sftp_sim.port) as proxy:
        known = tmp_path / "known_hosts_proxy"
        known.write_text(sftp_sim.known_hosts_for(f"[127.0.0.1]:{proxy.port}"))
        conn = VilisConnector(
            "vilis",
            vilis_spec(land, sftp_sim, spool, sftp_endpoint=f"sftp://127.0.0.1:{proxy.port}", known_hosts=known),
        )
        conn.attach_state(ConnectorState(sqlite_url, connector="vilis"))
        code, request = _request(spool)
        proxy.reset_after_bytes = 6000
        with pytest.raises(TargetUnavailable):
            conn.tiep_nhan(request, KEY)
        assert proxy.stats().connections_total >= 1
        assert land.effect_counts() == {}
        proxy.reset_after_bytes = None
        reply = conn.tiep_nhan(request, KEY)
        conn.close()
    assert land.effect_counts() == {KEY: 1}
    on_server = sftp_sim.files()
    assert sorted(on_server[f.path].sha256 for f in reply.files) == sorted(spool_files(spool, code).values())
    assert [c["check"] for c in land.file_checks()] == ["ok", "ok"]


def _change(code: str, files: tuple[ResultFile, ...] = ()) -> CheckChangeRequest:
    return CheckChangeRequest(
        change=VilisStatusChanged(
            so_bien_nhan=code, kind="ket_thuc", at=datetime.now(UTC).isoformat(), status=9, result_files=files
        )
    )


def test_a_change_on_a_dossier_the_bus_never_sent_is_rejected_unknown_dossier(conn):
    """No record of the dossier in the connector state ▶ TargetRejected(code=unknown_dossier)."""
    with pytest.raises(TargetRejected) as info:
        conn.check_change(_change("000.00.16.H16-250101-0999"))
    assert info.value.code == "unknown_dossier"


def test_result_files_are_fetched_and_their_hashes_checked(conn, land, sftp_sim, spool):
    """A known dossier's result file ▶ fetched whole into the spool; a wrong SHA-256 ▶ TargetUnavailable."""
    code, request = _request(spool)
    conn.tiep_nhan(request, KEY)
    doc = land.step_body(code, "KetThucHoSo")["DanhSachGiayToKetQua"][0]
    good = ResultFile(name=doc["TenGiayTo"], path=doc["LinkFile"], sha256=doc["Sha256"])
    checked = conn.check_change(_change(code, (good,)))
    row = conn.state.get(SENT, code)
    assert row is not None and row.status == "finished" and row.value["last_kind"] == "ket_thuc"
    fetched = spool / checked.checked_files[0].local_path
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == doc["Sha256"] == sftp_sim.files()[doc["LinkFile"]].sha256
    bad = good.model_copy(update={"sha256": "0" * 64, "path": doc["LinkFile"]})
    fetched.unlink()
    with pytest.raises(TargetUnavailable):
        conn.check_change(_change(code, (bad,)))
    assert not fetched.exists()


def test_render_shows_the_wire_without_spool_paths(spool):
    """map's rendering: the path, MaYeuCau, and no spool path."""
    _, request = _request(spool)
    text = render("tiep_nhan", request)
    assert text.startswith("POST {endpoint}/tiepnhan") and "MaYeuCau" in text and "NguonSpool" not in text


def test_the_poll_asks_only_stale_open_dossiers_and_names_each_change(land, sftp_sim, spool, sqlite_url):
    """A land office that cannot call back ▶ poll_stale gets each stale dossier's changes, in order, keyed."""
    land.files_root, land.life = sftp_sim.root, "poll"
    state = ConnectorState(sqlite_url, connector="vilis")
    fresh = VilisConnector("vilis", vilis_spec(land, sftp_sim, spool, poll_stale_after="1h"))
    stale = VilisConnector("vilis", vilis_spec(land, sftp_sim, spool, poll_stale_after="1ms"))
    for c in (fresh, stale):
        c.attach_state(state)
    try:
        code, request = _request(spool)
        stale.tiep_nhan(request, KEY)
        wait = time.monotonic() + 20
        while land.lives_done() < 1 and time.monotonic() < wait:
            time.sleep(0.05)
        assert fresh.poll_stale(PollStaleRequest()).asked == 0
        before = state.get(SENT, code)
        polled = stale.poll_stale(PollStaleRequest())
        asked = state.get(SENT, code)  # asking makes the dossier fresh: asked at most once per poll_stale_after
        for change in [*polled.changes, polled.changes[0]]:  # the last one again: a change polled twice
            stale.check_change(CheckChangeRequest(change=VilisStatusChanged.model_validate(change.payload)))
        row = state.get(SENT, code)
    finally:
        fresh.close()
        stale.close()
        state.close()
    assert polled.asked == 1 and not polled.refused
    assert [c.payload["kind"] for c in polled.changes] == [kind for _, kind in LIFE]
    assert len({c.key for c in polled.changes}) == len(LIFE) and all(
        c.key.startswith(f"{code}/") for c in polled.changes
    )
    emissions = polled.result_events()  # what the engine publishes: one vilis.status_changed per change
    assert [(e.key, e.event_type, e.dossier_code) for e in emissions] == [
        (c.key, "vilis.status_changed", code) for c in polled.changes
    ]
    assert before is not None and asked is not None and asked.updated_at > before.updated_at, (before, asked)
    assert row is not None and row.status == "finished", row  # a change seen again never reopens the dossier
    bo_sung = next(c for c in polled.changes if c.payload["kind"] == "yeu_cau_bo_sung")
    assert bo_sung.payload["note"] == TEXTS["bo_sung"]  # sent as NFD, carried as NFC
