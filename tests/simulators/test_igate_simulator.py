"""The iGate simulator over plain HTTP: iGate's answers, the record, the effects and the /_sim control API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from simulators.igate import (
    DEFAULT_CLIENT_ID,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    SEED_DOSSIER_CODES,
    IGateSimulator,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN_PATH = "/auth/realms/digo/protocol/openid-connect/token"
CODE = SEED_DOSSIER_CODES[0]


@pytest.fixture(scope="module")
def sim_server() -> Iterator[IGateSimulator]:
    """One simulator for the module; each test resets it."""
    with IGateSimulator() as sim:
        yield sim


@pytest.fixture
def sim(sim_server: IGateSimulator) -> Iterator[IGateSimulator]:
    """The shared simulator, reset before and after the test."""
    sim_server.reset()
    yield sim_server
    sim_server.reset()


@pytest.fixture
def http(sim: IGateSimulator) -> Iterator[httpx.Client]:
    """A plain HTTP client on the simulator."""
    with httpx.Client(base_url=sim.url, timeout=5.0) as client:
        yield client


def grant(http: httpx.Client, **form: str) -> httpx.Response:
    """POST the password grant, with the simulator's defaults unless overridden."""
    data = {
        "grant_type": "password",
        "client_id": DEFAULT_CLIENT_ID,
        "username": DEFAULT_USERNAME,
        "password": DEFAULT_PASSWORD,
        **form,
    }
    return http.post(TOKEN_PATH, data=data)


def bearer(http: httpx.Client) -> dict[str, str]:
    """An Authorization header with a fresh token."""
    return {"Authorization": f"Bearer {grant(http).json()['access_token']}"}


def note_body(key: str, code: str = CODE, **extra: Any) -> dict[str, Any]:
    """A note body as the connector sends it."""
    return {"dossierCode": code, "text": "Đã nhận hồ sơ", "kind": "bus_ack", "clientRequestId": key, **extra}


class TestKeycloak:
    """The token endpoint behaves like Keycloak's password grant."""

    def test_valid_grant_issues_an_expiring_bearer_token(self, http: httpx.Client) -> None:
        """The right client, user and password get a Bearer token with its lifetime."""
        reply = grant(http)

        assert reply.status_code == 200
        body = reply.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 300
        assert len(body["access_token"]) >= 32

    @pytest.mark.parametrize(
        ("form", "status", "error"),
        [
            ({"password": "nope"}, 401, "invalid_grant"),
            ({"username": "someone"}, 401, "invalid_grant"),
            ({"client_id": "other"}, 401, "invalid_client"),
            ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ],
    )
    def test_bad_grants_are_refused(self, http: httpx.Client, form: dict[str, str], status: int, error: str) -> None:
        """Wrong password, user, client or grant type: Keycloak's status and error code."""
        reply = grant(http, **form)

        assert reply.status_code == status
        assert reply.json()["error"] == error

    def test_unknown_realm_is_404(self, http: httpx.Client) -> None:
        """Only realm digo exists."""
        reply = http.post("/auth/realms/other/protocol/openid-connect/token", data={"grant_type": "password"})
        assert reply.status_code == 404

    def test_calls_without_or_with_expired_token_are_401(self, sim: IGateSimulator, http: httpx.Client) -> None:
        """No token, a made-up token and an expired token all get 401 with WWW-Authenticate: Bearer."""
        headers = bearer(http)
        assert http.get("/pa/dossier/search", headers=headers).status_code == 200

        sim.expire_tokens()
        replies = [
            http.get("/pa/dossier/search"),
            http.get("/pa/dossier/search", headers={"Authorization": "Bearer made-up"}),
            http.get("/pa/dossier/search", headers=headers),
        ]

        assert [r.status_code for r in replies] == [401, 401, 401]
        assert all(r.headers["WWW-Authenticate"].startswith("Bearer") for r in replies)


class TestIGateApi:
    """Dossier reads, the bus's note/status calls and the lookup."""

    def test_search_pages_dossiers_and_filters_by_code(self, http: httpx.Client) -> None:
        """Search answers a Spring page; ``code`` filters; ``size`` limits."""
        headers = bearer(http)

        everything = http.get("/pa/dossier/search", params={"size": 2}, headers=headers).json()
        one = http.get("/pa/dossier/search", params={"code": CODE}, headers=headers).json()

        assert everything["totalElements"] == len(SEED_DOSSIER_CODES)
        assert len(everything["content"]) == 2
        assert [d["code"] for d in one["content"]] == [CODE]

    def test_dossier_by_code_and_by_id(self, http: httpx.Client) -> None:
        """A dossier is found by its code and by its 24-hex id, in iGate's JSON shape."""
        headers = bearer(http)
        by_code = http.get(f"/pa/dossier/{CODE}", headers=headers).json()

        by_id = http.get(f"/pa/dossier/{by_code['id']}", headers=headers).json()

        assert by_id == by_code
        assert by_code["dossierStatus"] == {"id": 2, "name": "Được tiếp nhận"}
        assert by_code["appointmentDate"].endswith("+0700")

    def test_same_key_twice_is_applied_twice(self, sim: IGateSimulator, http: httpx.Client) -> None:
        """The simulator does not deduplicate: two notes with one key are two effects, and counted so."""
        headers = bearer(http)
        first = http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("dup"), headers=headers)
        second = http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("dup"), headers=headers)

        assert (first.status_code, second.status_code) == (200, 200)
        assert first.json()["noteId"] != second.json()["noteId"]
        assert sim.effect_counts() == {"dup": 2}
        assert http.get("/_sim/effects").json()["counts"] == {"dup": 2}

    def test_effects_since_gives_only_the_new_ones(self, http: httpx.Client) -> None:
        """A poller asks for what came after what it has read (a benchmark's wait must not load the target)."""
        headers = bearer(http)
        for key in ("k1", "k2", "k3"):
            assert http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body(key), headers=headers).status_code == 200
        every = http.get("/_sim/effects").json()["effects"]
        after_one = http.get("/_sim/effects?since=1").json()

        assert [e["client_request_id"] for e in every] == ["k1", "k2", "k3"]
        assert after_one == {"effects": every[1:]}
        assert http.get("/_sim/effects?since=3").json() == {"effects": []}
        assert http.get("/_sim/effects?since=-1").status_code == 400
        assert http.get("/_sim/effects?since=x").status_code == 400

    def test_status_update_moves_the_dossier(self, http: httpx.Client) -> None:
        """A status update with a national status is applied to the dossier."""
        headers = bearer(http)
        body = {
            "dossierCode": CODE,
            "sourceSystem": "vnpost",
            "status": 10,
            "note": "Đã phát",
            "data": {"item_code": "EB123456785VN"},
            "clientRequestId": "u1",
        }

        reply = http.put(f"/pa/dossier/{CODE}/--bus-status", json=body, headers=headers)

        assert reply.status_code == 200
        assert reply.json()["updateId"]
        dossier = http.get(f"/pa/dossier/{CODE}", headers=headers).json()
        assert dossier["dossierStatus"] == {"id": 10, "name": "Đã trả kết quả"}

    def test_lookup_answers_the_first_result_or_a_404_naming_the_key(self, http: httpx.Client) -> None:
        """The lookup returns the earlier result for a key, and a 404 that names an unknown key."""
        headers = bearer(http)
        applied = http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("look"), headers=headers).json()

        found = http.get("/pa/dossier/--bus-request", params={"clientRequestId": "look"}, headers=headers)
        missing = http.get("/pa/dossier/--bus-request", params={"clientRequestId": "nope"}, headers=headers)

        assert found.status_code == 200
        assert found.json() == {"clientRequestId": "look", "type": "note", "result": applied}
        assert missing.status_code == 404
        assert missing.json()["clientRequestId"] == "nope"

    @pytest.mark.parametrize(
        "body",
        [
            note_body("bad-1", text="x" * 2001),
            note_body("bad-2", kind="gossip"),
            note_body("bad-3", code="000.00.16.H16-250312-0002"),
            {"dossierCode": CODE, "text": "no key"},
        ],
        ids=["text-too-long", "unknown-kind", "code-differs-from-path", "no-client-request-id"],
    )
    def test_invalid_notes_are_400_and_not_applied(
        self, sim: IGateSimulator, http: httpx.Client, body: dict[str, Any]
    ) -> None:
        """An invalid note is refused with a Spring-style 400 body and changes nothing."""
        reply = http.post(f"/pa/dossier/{CODE}/--bus-note", json=body, headers=bearer(http))

        assert reply.status_code == 400
        assert reply.json()["status"] == 400
        assert sim.effects() == []

    def test_unknown_dossier_is_created_unless_strict(self, sim: IGateSimulator, http: httpx.Client) -> None:
        """By default a note creates the dossier (for demos); strict_dossiers answers 404 as iGate would."""
        code = "000.00.16.H16-260101-0042"
        headers = bearer(http)
        assert http.post(f"/pa/dossier/{code}/--bus-note", json=note_body("c1", code), headers=headers).is_success
        assert sim.dossier(code) is not None

        sim.strict_dossiers = True
        try:
            other = "000.00.16.H16-260101-0043"
            reply = http.post(f"/pa/dossier/{other}/--bus-note", json=note_body("c2", other), headers=headers)
        finally:
            sim.strict_dossiers = False
        assert reply.status_code == 404
        assert sim.effect_counts() == {"c1": 1}


class TestRecord:
    """What the simulator keeps of every request."""

    def test_record_omits_authorization_and_masks_the_password(self, http: httpx.Client) -> None:
        """The record names the token used but not it or the password; /_sim calls go unrecorded."""
        headers = bearer(http)
        http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("rec"), headers=headers)

        recorded = http.get("/_sim/requests").json()["requests"]

        assert [r["path"] for r in recorded] == [TOKEN_PATH, f"/pa/dossier/{CODE}/--bus-note"]
        token_call, note_call = recorded
        assert token_call["body"]["password"] == "***"
        assert DEFAULT_PASSWORD not in str(recorded)
        assert headers["Authorization"].split()[1] not in str(recorded)
        assert "authorization" not in note_call["headers"]
        assert (note_call["auth_scheme"], note_call["token_id"], note_call["token_ok"]) == ("Bearer", 1, True)
        assert note_call["client_request_id"] == "rec"
        assert note_call["status"] == 200

    def test_record_can_be_filtered_by_path(self, http: httpx.Client) -> None:
        """``?path=`` keeps only requests under that prefix."""
        http.get("/pa/dossier/search", headers=bearer(http))

        recorded = http.get("/_sim/requests", params={"path": "/pa/"}).json()["requests"]

        assert [r["path"] for r in recorded] == ["/pa/dossier/search"]

    def test_reset_forgets_requests_effects_faults_and_tokens(self, http: httpx.Client) -> None:
        """After /_sim/reset nothing of the earlier run remains, and old tokens are unknown."""
        headers = bearer(http)
        http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("gone"), headers=headers)
        http.post("/_sim/faults", json={"latency_s": 0.01})

        assert http.post("/_sim/reset").json() == {"reset": True}

        assert http.get("/_sim/requests").json()["requests"] == []
        assert http.get("/_sim/effects").json() == {"effects": [], "counts": {}}
        assert http.get("/_sim/faults").json()["latency_s"] == 0.0
        assert http.get("/pa/dossier/search", headers=headers).status_code == 401

    def test_expire_tokens_over_http(self, http: httpx.Client) -> None:
        """/_sim/tokens/expire makes live tokens fail with 401."""
        headers = bearer(http)

        assert http.post("/_sim/tokens/expire").json() == {"expired": 1}
        assert http.get("/pa/dossier/search", headers=headers).status_code == 401

    def test_add_dossier_over_http(self, http: httpx.Client) -> None:
        """/_sim/dossiers adds a dossier that the API then serves."""
        code = "000.00.17.H16-260202-0007"
        assert http.post("/_sim/dossiers", json={"code": code, "status": 4}).status_code == 200

        dossier = http.get(f"/pa/dossier/{code}", headers=bearer(http)).json()

        assert dossier["dossierStatus"]["id"] == 4


class TestFaults:
    """Fault switches, set over HTTP."""

    def test_faults_round_trip_and_bad_faults_are_400(self, http: httpx.Client) -> None:
        """POST /_sim/faults replaces the faults, GET reads them back; an invalid field is refused."""
        posted = http.post("/_sim/faults", json={"error_rate": 0.25, "error_status": 502, "only_paths": ["/pa/"]})

        assert posted.status_code == 200
        current = http.get("/_sim/faults").json()
        assert (current["error_rate"], current["error_status"], current["only_paths"]) == (
            0.25,
            502,
            ["/pa/"],
        )
        assert http.post("/_sim/faults", json={"error_rate": 2}).status_code == 400
        assert http.post("/_sim/faults", json={"typo_rate": 1}).status_code == 400

    def test_only_paths_limits_faults(self, http: httpx.Client) -> None:
        """Faults on the search leave the token endpoint and dossier reads alone."""
        http.post("/_sim/faults", json={"error_rate": 1, "error_status": 503, "only_paths": ["/pa/dossier/search"]})
        headers = bearer(http)

        assert http.get("/pa/dossier/search", headers=headers).status_code == 503
        assert http.get(f"/pa/dossier/{CODE}", headers=headers).status_code == 200

    def test_seeded_faults_repeat_exactly(self, http: httpx.Client) -> None:
        """The same seed gives the same sequence of failures, and a rate of 0.5 gives some of each."""
        headers = bearer(http)

        def run() -> list[int]:
            http.post("/_sim/faults", json={"error_rate": 0.5, "seed": 7, "only_paths": ["/pa/"]})
            return [http.get("/pa/dossier/search", headers=headers).status_code for _ in range(20)]

        first, second = run(), run()

        assert first == second
        assert set(first) == {200, 503}

    def test_latency_delays_the_answer(self, http: httpx.Client) -> None:
        """latency_s holds every faulted answer back."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"latency_s": 0.3})

        started = time.monotonic()
        assert http.get("/pa/dossier/search", headers=headers).status_code == 200
        assert time.monotonic() - started >= 0.3

    def test_drop_connection_answers_nothing_and_applies_nothing(self, sim: IGateSimulator, http: httpx.Client) -> None:
        """The connection is closed without a reply; the note is not applied; the record says dropped."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"drop_connection": True, "only_paths": ["/pa/"]})

        with pytest.raises(httpx.TransportError):
            http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("d1"), headers=headers)

        assert sim.effect_counts() == {}
        assert sim.requests("/pa/")[-1]["status"] == "dropped"

    def test_apply_then_drop_applies_and_answers_nothing(self, sim: IGateSimulator, http: httpx.Client) -> None:
        """The ambiguous outcome: the note is applied, the client gets no answer."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"apply_then_drop_rate": 1, "only_paths": ["/pa/"]})

        with pytest.raises(httpx.TransportError):
            http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("atd"), headers=headers)

        assert sim.effect_counts() == {"atd": 1}

    def test_only_methods_faults_effects_and_spares_lookups(self, sim: IGateSimulator, http: httpx.Client) -> None:
        """apply_then_drop on POST/PUT only: the note is applied and dropped; the lookup answers it."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"apply_then_drop_rate": 1, "only_paths": ["/pa/"], "only_methods": ["POST"]})

        with pytest.raises(httpx.TransportError):
            http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("m1"), headers=headers)
        found = http.get("/pa/dossier/--bus-request", params={"clientRequestId": "m1"}, headers=headers)

        assert found.status_code == 200
        assert sim.effect_counts() == {"m1": 1}

    @pytest.mark.parametrize(("how", "status"), [("error", 503), ("drop_connection", "dropped")])
    def test_lookup_fail_rate_fails_lookups_only(
        self, sim: IGateSimulator, http: httpx.Client, how: str, status: object
    ) -> None:
        """lookup_fail_rate 1: every lookup fails (503 or a reset) while notes still apply and answer."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"lookup_fail_rate": 1, "lookup_fail": how})

        note = http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("l1"), headers=headers)
        assert note.status_code == 200
        if how == "error":
            lookup = http.get("/pa/dossier/--bus-request", params={"clientRequestId": "l1"}, headers=headers)
            assert lookup.status_code == 503
        else:
            with pytest.raises(httpx.TransportError):
                http.get("/pa/dossier/--bus-request", params={"clientRequestId": "l1"}, headers=headers)

        assert sim.effect_counts() == {"l1": 1}
        assert sim.requests("/pa/dossier/--bus-request")[-1]["status"] == status

    def test_timeout_hangs_past_the_client_timeout(self, sim: IGateSimulator, http: httpx.Client) -> None:
        """The request is received and not answered within the client's read timeout."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"timeout": True, "hang_s": 5, "only_paths": ["/pa/"]})

        with pytest.raises(httpx.ReadTimeout):
            http.get("/pa/dossier/search", headers=headers, timeout=0.5)

        assert sim.requests("/pa/")[-1]["status"] == "hung"

    def test_malformed_body_is_a_200_that_is_not_json(self, sim: IGateSimulator, http: httpx.Client) -> None:
        """The note is applied and the 200 carries broken JSON."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"malformed_body": True, "only_paths": ["/pa/"]})

        reply = http.post(f"/pa/dossier/{CODE}/--bus-note", json=note_body("mal"), headers=headers)

        assert reply.status_code == 200
        with pytest.raises(ValueError, match="Expecting value"):
            reply.json()
        assert sim.effect_counts() == {"mal": 1}

    def test_error_body_is_sent_as_given(self, http: httpx.Client) -> None:
        """error_body replaces the default Spring error JSON."""
        headers = bearer(http)
        http.post(
            "/_sim/faults",
            json={"error_rate": 1, "error_status": 418, "error_body": "teapot", "only_paths": ["/pa/"]},
        )

        reply = http.get("/pa/dossier/search", headers=headers)

        assert (reply.status_code, reply.text) == (418, "teapot")

    def test_oversize_streams_the_size_asked(self, http: httpx.Client) -> None:
        """oversize_bytes answers 200 with that many bytes and no Content-Length."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"oversize_bytes": 300_000, "only_paths": ["/pa/"]})

        with http.stream("GET", "/pa/dossier/search", headers=headers) as reply:
            size = sum(len(chunk) for chunk in reply.iter_raw())
            assert "content-length" not in reply.headers

        assert size == 300_000

    def test_drip_sends_the_body_slowly(self, http: httpx.Client) -> None:
        """drip_interval_s sends a byte per interval: a small body takes visibly long."""
        headers = bearer(http)
        http.post("/_sim/faults", json={"drip_interval_s": 0.01, "only_paths": [f"/pa/dossier/{CODE}"]})

        started = time.monotonic()
        reply = http.get(f"/pa/dossier/{CODE}", headers=headers)

        assert reply.json()["code"] == CODE
        assert time.monotonic() - started >= 0.01 * len(reply.content) * 0.8


def test_python_dash_m_serves_with_the_bus_credentials_from_the_environment() -> None:
    """``python -m simulators.igate --port N`` serves until stopped, accepting the bus's env credentials."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "IGATE_BUS_IGATE_USERNAME": "demo-user", "IGATE_BUS_IGATE_PASSWORD": "demo-pass"}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.igate", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1) as http:
            deadline = time.monotonic() + 10
            while True:
                try:
                    faults = http.get("/_sim/faults")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            accepted = grant(http, username="demo-user", password="demo-pass")  # noqa: S106 - a demo value
            refused = grant(http)

        assert faults.json()["error_rate"] == 0.0
        assert accepted.status_code == 200
        assert refused.status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=10)
