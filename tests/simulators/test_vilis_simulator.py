# mypy: allow-untyped-defs
"""The land office simulator on its socket: its contract, its record (no deduplication), its switches, its feed."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from simulators.vilis import LIFE, VilisSimulator

AUTH = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
BODY = {"SoBienNhan": "000.00.16.H16-250101-0001", "MaYeuCau": "k-1"}


@pytest.fixture
def sim():
    with VilisSimulator(username="u", password="p") as s:  # noqa: S106 - the test simulator's account
        yield s


def test_calls_need_the_account_and_a_key(sim):
    """No Basic ▶ 401; no MaYeuCau ▶ 400; a good call ▶ 200 success with a record id."""
    assert httpx.post(f"{sim.url}/tiepnhan", json=BODY).status_code == 401
    assert httpx.post(f"{sim.url}/tiepnhan", json={"SoBienNhan": "x"}, headers=AUTH).status_code == 400
    ok = httpx.post(f"{sim.url}/tiepnhan", json=BODY, headers=AUTH).json()
    assert ok["status"]["success"] is True and ok["data"] == 1


def test_a_repeated_key_is_applied_again_and_the_lookup_names_the_key(sim):
    """The simulator does not deduplicate (the bus must); lookup ▶ the first apply, or a 404 naming the key."""
    for _ in range(2):
        httpx.post(f"{sim.url}/capnhattrangthaitraketquahoso", json=BODY, headers=AUTH)
    assert sim.effect_counts() == {"k-1": 2}
    found = httpx.get(f"{sim.url}/tracuuyeucau", params={"maYeuCau": "k-1"}, headers=AUTH).json()
    assert found["ThaoTac"] == "capnhattrangthaitraketquahoso" and found["data"] == 1
    missing = httpx.get(f"{sim.url}/tracuuyeucau", params={"maYeuCau": "nope"}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["MaYeuCau"] == "nope"


def test_switches_over_http_and_a_refused_dossier(sim):
    """POST /_sim/faults sets them (400 on a bad field); refuse_codes ▶ success false, TRUNG_HO_SO, Vietnamese."""
    assert httpx.post(f"{sim.url}/_sim/faults", json={"nope": 1}).status_code == 400
    httpx.post(f"{sim.url}/_sim/faults", json={"refuse_codes": [BODY["SoBienNhan"]]})
    answer = httpx.post(f"{sim.url}/tiepnhan", json=BODY, headers=AUTH).json()
    assert answer["status"]["success"] is False and answer["status"]["code"] == "TRUNG_HO_SO"
    assert "không tiếp nhận" in answer["status"]["message"]
    httpx.post(f"{sim.url}/_sim/faults", json={"down": True})
    assert httpx.get(f"{sim.url}/danhmuc/trangthai", headers=AUTH).status_code == 503
    assert sim.effect_counts() == {}


def test_a_polled_dossier_life_is_in_the_feed_in_order(sim):
    """life=poll ▶ the dossier's six changes in the feed, numbered, oldest first, filtered by dossier."""
    sim.life = "poll"
    httpx.post(f"{sim.url}/tiepnhan", json=BODY, headers=AUTH)
    deadline = time.monotonic() + 10
    while sim.lives_done() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    feed = httpx.post(f"{sim.url}/danhsachthaydoi", json={"SoBienNhan": BODY["SoBienNhan"]}, headers=AUTH).json()
    assert [c["ThaoTac"] for c in feed["data"]] == [a for a, _ in LIFE]
    later = httpx.post(f"{sim.url}/danhsachthaydoi", json={"TuMa": 3}, headers=AUTH).json()
    assert [c["Ma"] for c in later["data"]] == [4, 5, 6]
    other = httpx.post(f"{sim.url}/danhsachthaydoi", json={"SoBienNhan": "other"}, headers=AUTH).json()
    assert other["data"] == []
