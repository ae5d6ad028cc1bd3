"""The iGate connector and the hardened HTTP client, against the real iGate simulator on a real socket.

Every assertion about what was sent reads the simulator's record (what it RECEIVED) or its effects.
"""

from __future__ import annotations

import socket
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

import pytest
from concurrently import run_concurrently
from wallclock import SLACK_S, assert_within

from config.model import ConnectorSpec
from connectors._http import scrub_snippet
from connectors.base import connector_type
from connectors.igate import IGateConnector
from connectors.kit import TokenBucket
from schemas.errors import (
    AmbiguousOutcome,
    BreakerOpen,
    ConfigError,
    MappingError,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
)
from schemas.igate_api import (
    AddNoteReply,
    AddNoteRequest,
    DossierReply,
    GetDossierRequest,
    UpdateDossierReply,
    UpdateDossierRequest,
)
from simulators.igate import (
    DEFAULT_CLIENT_ID,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    SEED_DOSSIER_CODES,
    IGateSimulator,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

USER_ENV = "IGATE_BUS_TEST_IGATE_USERNAME"
PASSWORD_ENV = "IGATE_BUS_TEST_IGATE_PASSWORD"
CODE = SEED_DOSSIER_CODES[0]
NOTES = "/pa/dossier/"


@pytest.fixture(scope="module")
def sim_server() -> Iterator[IGateSimulator]:
    """One simulator for the module (httpx's serve_in_thread); each test resets it."""
    with IGateSimulator() as sim:
        yield sim


@pytest.fixture
def sim(sim_server: IGateSimulator) -> Iterator[IGateSimulator]:
    """The shared simulator with no faults, records, effects or tokens."""
    sim_server.reset()
    yield sim_server
    sim_server.reset()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator's user and password in the environment variables the spec names."""
    monkeypatch.setenv(USER_ENV, DEFAULT_USERNAME)
    monkeypatch.setenv(PASSWORD_ENV, DEFAULT_PASSWORD)


def make_spec(endpoint: str, **overrides: Any) -> ConnectorSpec:
    """A connector spec for the simulator with short timeouts; ``overrides`` replace top-level fields."""
    data: dict[str, Any] = {
        "type": "igate",
        "endpoint": endpoint,
        "timeout": {"connect": "1s", "read": "1s", "total": "2s"},
        "credentials": {"username": USER_ENV, "password": PASSWORD_ENV},
        "options": {"client_id": DEFAULT_CLIENT_ID},
        **overrides,
    }
    return ConnectorSpec.model_validate(data)


@pytest.fixture
def make_connector(sim: IGateSimulator, credentials: None) -> Iterator[Any]:
    """Build connectors against the simulator; all are closed afterwards."""
    built: list[IGateConnector] = []

    def build(**overrides: Any) -> IGateConnector:
        connector = IGateConnector("igate", make_spec(overrides.pop("endpoint", sim.url), **overrides))
        built.append(connector)
        return connector

    yield build
    for connector in built:
        connector.close()


@pytest.fixture
def igate(make_connector: Any) -> IGateConnector:
    """A connector with the default test spec."""
    connector: IGateConnector = make_connector()
    return connector


def note(text: str = "Hệ thống tích hợp đã nhận hồ sơ") -> AddNoteRequest:
    """A valid note on the first seed dossier."""
    return AddNoteRequest(dossier_code=CODE, text=text, kind="bus_ack")


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestOperations:
    """The happy paths: what iGate receives and what the bus gets back."""

    def test_add_note_arrives_with_key_bearer_token_and_camel_case_body(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """The note reaches iGate once, under a live Bearer token, carrying our key as clientRequestId."""
        reply = igate.add_note(note("Đã nhận"), "bus-ack:1f0c")

        received = [r for r in sim.requests(NOTES) if r["method"] == "POST"]
        assert len(received) == 1
        assert received[0]["path"] == f"/pa/dossier/{CODE}/--bus-note"
        assert received[0]["auth_scheme"] == "Bearer"
        assert received[0]["token_ok"] is True
        assert received[0]["body"] == {
            "dossierCode": CODE,
            "text": "Đã nhận",
            "kind": "bus_ack",
            "clientRequestId": "bus-ack:1f0c",
        }
        assert sim.effect_counts() == {"bus-ack:1f0c": 1}
        assert reply == AddNoteReply.model_validate(sim.effects()[0]["result"])

    def test_token_grant_is_keycloak_password_grant_with_the_configured_client(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """The token request is a form POST to realm digo with the client id and user from the environment."""
        igate.add_note(note(), "k-grant")

        grants = sim.requests("/auth/")
        assert [g["path"] for g in grants] == ["/auth/realms/digo/protocol/openid-connect/token"]
        assert grants[0]["body"] == {
            "grant_type": "password",
            "client_id": DEFAULT_CLIENT_ID,
            "username": DEFAULT_USERNAME,
            "password": "***",  # the simulator masks it in its record; it checked the real one
        }

    def test_update_dossier_writes_status_and_data(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """The status update arrives as a PUT and moves the dossier to the national status given."""
        request = UpdateDossierRequest(
            dossier_code=CODE,
            source_system="vilis",
            status=4,
            note="Văn phòng đăng ký đất đai: đang luân chuyển",
            data={"kind": "luan_chuyen", "attempt": 1, "staff_code": None},
        )
        reply = igate.update_dossier(request, "results:9a")

        [put] = [r for r in sim.requests(NOTES) if r["method"] == "PUT"]
        assert put["path"] == f"/pa/dossier/{CODE}/--bus-status"
        assert put["body"]["sourceSystem"] == "vilis"
        assert put["body"]["data"] == {"kind": "luan_chuyen", "attempt": 1, "staff_code": None}
        assert put["body"]["clientRequestId"] == "results:9a"
        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert dossier["dossierStatus"]["id"] == 4
        assert isinstance(reply, UpdateDossierReply)
        assert reply.dossier_code == CODE

    def test_get_dossier_reads_the_subset_without_personal_data(self, igate: IGateConnector) -> None:
        """The dossier comes back with id, code and status; the applicant iGate sends is not kept."""
        dossier = igate.get_dossier(GetDossierRequest(dossier_code=CODE))

        assert dossier.code == CODE
        assert dossier.dossier_status is not None
        assert dossier.dossier_status.id == 2
        assert dossier.appointment_date is not None
        assert "applicant" not in dossier.model_dump()

    def test_unknown_dossier_is_rejected_with_404(self, igate: IGateConnector) -> None:
        """A read of a dossier iGate does not have is a permanent error carrying the status."""
        with pytest.raises(TargetRejected) as caught:
            igate.get_dossier(GetDossierRequest(dossier_code="000.00.16.H16-991231-9999"))
        assert caught.value.code == "404"

    def test_operations_describe_effects_and_lookups(self, igate: IGateConnector) -> None:
        """The engine sees two effects with lookups and one read, matching the class's OPERATIONS."""
        operations = igate.operations()

        assert set(operations) == set(IGateConnector.OPERATIONS) == {"add_note", "update_dossier", "get_dossier"}
        assert {name: op.effect for name, op in operations.items()} == {
            "add_note": True,
            "update_dossier": True,
            "get_dossier": False,
        }
        assert operations["add_note"].lookup is not None
        assert operations["get_dossier"].lookup is None
        assert connector_type("igate") is IGateConnector

    def test_operation_call_runs_through_the_generic_interface(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """Operation.call (the worker's way in) sends the request; a wrong request type is a mapping error."""
        reply = igate.operations()["add_note"].call(note(), "generic-1")

        assert isinstance(reply, AddNoteReply)
        assert sim.effect_counts() == {"generic-1": 1}
        with pytest.raises(MappingError):
            igate.operations()["add_note"].call(GetDossierRequest(dossier_code=CODE), "generic-2")
        assert sim.effect_counts() == {"generic-1": 1}

    def test_effect_without_key_is_refused_before_sending(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """An empty idempotency key would make the lookup useless: nothing is sent."""
        with pytest.raises(MappingError):
            igate.add_note(note(), "")
        assert sim.requests(NOTES) == []


class TestToken:
    """Keycloak token: cached, renewed before expiry, renewed once on 401, refused credentials."""

    def test_token_is_fetched_once_and_reused(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """Three calls, one token grant; every call carries the same token."""
        for n in range(3):
            igate.add_note(note(), f"reuse-{n}")

        assert len(sim.requests("/auth/")) == 1
        assert {r["token_id"] for r in sim.requests(NOTES)} == {1}

    def test_token_is_renewed_after_it_expires(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """A token past its lifetime is replaced before use: no call reaches iGate with it."""
        sim.token_ttl_s = 1.0
        igate.add_note(note(), "ttl-1")
        time.sleep(1.1)
        igate.add_note(note(), "ttl-2")

        assert len(sim.requests("/auth/")) == 2
        received = sim.requests(NOTES)
        assert [r["token_ok"] for r in received] == [True, True]
        assert [r["token_id"] for r in received] == [1, 2]

    def test_token_refused_by_igate_is_renewed_once_and_the_note_applied_once(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """iGate answers 401 (token revoked): the connector renews and sends again; one effect results."""
        igate.add_note(note(), "before")
        sim.expire_tokens()

        igate.add_note(note(), "after-401")

        after = [r for r in sim.requests(NOTES) if r["client_request_id"] == "after-401"]
        assert [(r["status"], r["token_ok"]) for r in after] == [(401, False), (200, True)]
        assert len(sim.requests("/auth/")) == 2
        assert sim.effect_counts() == {"before": 1, "after-401": 1}

    def test_wrong_password_waits_as_transient_without_revealing_it(
        self, sim: IGateSimulator, make_connector: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Keycloak refuses the grant: transient (events wait for the fix), status shown, password never."""
        monkeypatch.setenv(PASSWORD_ENV, "wrong-password-zz9")
        connector: IGateConnector = make_connector()

        with pytest.raises(TargetUnavailable) as caught:
            connector.add_note(note(), "bad-creds")
        assert not caught.value.maybe_applied
        assert "HTTP 401" in str(caught.value)
        assert "wrong-password-zz9" not in str(caught.value)
        assert "invalid_grant" in str(caught.value)
        assert sim.requests(NOTES) == []

    def test_unset_credential_variable_is_a_config_error_naming_it(
        self, sim: IGateSimulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Building the connector without the password in the environment fails, naming the variable."""
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
        monkeypatch.setenv(USER_ENV, DEFAULT_USERNAME)

        with pytest.raises(ConfigError, match=PASSWORD_ENV):
            IGateConnector("igate", make_spec(sim.url))

    @pytest.mark.usefixtures("credentials")
    def test_missing_client_id_is_a_config_error(self, sim: IGateSimulator) -> None:
        """Keycloak needs the client id; without it the connector refuses to build."""
        with pytest.raises(ConfigError, match="client_id"):
            IGateConnector("igate", make_spec(sim.url, options={}))


class TestFaults:
    """Each failure of the target maps to the right class of the error tree, with maybe_applied right."""

    def test_503_is_unavailable_and_not_applied(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """503 says iGate did nothing: transient, maybe_applied False, no effect."""
        sim.set_faults(error_rate=1.0, error_status=503, only_paths=[NOTES])

        with pytest.raises(TargetUnavailable) as caught:
            igate.add_note(note(), "k503")
        assert caught.value.maybe_applied is False
        assert [r["status"] for r in sim.requests(NOTES)] == [503]
        assert sim.effect_counts() == {}

    def test_500_on_an_effect_may_have_applied(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """500 may come after the write: maybe_applied True, so the next attempt looks up first."""
        sim.set_faults(error_rate=1.0, error_status=500, only_paths=[NOTES])

        with pytest.raises(TargetUnavailable) as caught:
            igate.add_note(note(), "k500")
        assert caught.value.maybe_applied is True

    def test_hang_is_a_timeout_within_the_read_timeout_plus_one_second(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """iGate receives the request and never answers: TargetTimeout after the 1 s read timeout."""
        sim.set_faults(timeout=True, hang_s=10.0, only_paths=[NOTES])

        started = time.monotonic()
        with pytest.raises(TargetTimeout) as caught:
            igate.add_note(note(), "k-hang")
        assert_within(time.monotonic() - started, 1.0, "a hung iGate (1 s read timeout, 10 s hang)")
        assert caught.value.maybe_applied is True
        assert [r["status"] for r in sim.requests(NOTES)] == ["hung"]

    def test_drip_feed_is_cut_at_the_total_deadline(self, sim: IGateSimulator, make_connector: Any) -> None:
        """A byte every 0.3 s never trips the 1 s read timeout; the 1.5 s total deadline stops it."""
        connector: IGateConnector = make_connector(timeout={"connect": "1s", "read": "1s", "total": "1.5s"})
        sim.set_faults(drip_interval_s=0.3, only_paths=[NOTES])

        started = time.monotonic()
        with pytest.raises(TargetTimeout):
            connector.get_dossier(GetDossierRequest(dossier_code=CODE))
        assert_within(time.monotonic() - started, 1.5, "a drip feed (1.5 s total deadline)")

    def test_dropped_connection_may_have_applied(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """A reset after sending leaves the outcome unknown: transient with maybe_applied True."""
        sim.set_faults(drop_connection=True, only_paths=[NOTES])

        with pytest.raises(TargetUnavailable) as caught:
            igate.add_note(note(), "k-drop")
        assert caught.value.maybe_applied is True
        assert [r["status"] for r in sim.requests(NOTES)] == ["dropped"]

    def test_malformed_reply_is_unavailable_and_may_have_applied(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """A 200 with broken JSON is garbage, not success; the note was in fact applied."""
        sim.set_faults(malformed_body=True, only_paths=[NOTES])

        with pytest.raises(TargetUnavailable) as caught:
            igate.add_note(note(), "k-malformed")
        assert caught.value.maybe_applied is True
        assert sim.effect_counts() == {"k-malformed": 1}

    def test_400_is_rejected_with_a_scrubbed_snippet(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """A 4xx is permanent; its message quotes the body briefly, with ids, phones and e-mails masked."""
        body = '{"message": "applicant 066190012345 phone 0912345678 mail an@example.vn invalid", "pad": "'
        sim.set_faults(error_rate=1.0, error_status=400, error_body=body + "x" * 50_000 + '"}', only_paths=[NOTES])

        with pytest.raises(TargetRejected) as caught:
            igate.add_note(note(), "k400")
        message = str(caught.value)
        assert caught.value.code == "400"
        assert "applicant" in message
        for personal in ("066190012345", "0912345678", "an@example.vn"):
            assert personal not in message
        assert len(message) < 300

    def test_oversized_reply_is_refused_quickly_with_bounded_memory(
        self, sim: IGateSimulator, make_connector: Any
    ) -> None:
        """A 50 MB reply to a 64 KiB cap is cut off at the cap: fast, and without holding the reply."""
        connector: IGateConnector = make_connector(max_reply_bytes=65_536, timeout={"read": "5s", "total": "10s"})
        connector.probe()  # token fetched before the measurement
        sim.set_faults(oversize_bytes=50_000_000, only_paths=["/pa/dossier/search", f"/pa/dossier/{CODE}"])

        tracemalloc.start()
        try:
            started = time.monotonic()
            with pytest.raises(TargetUnavailable, match="cap"):
                connector.get_dossier(GetDossierRequest(dossier_code=CODE))
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert_within(elapsed, 1.0, "refusing a 50 MB reply at the cap")
        assert peak < 4_000_000

    def test_connection_refused_is_unavailable_and_not_applied(self, make_connector: Any) -> None:
        """Nothing listens: the request never left, so maybe_applied is False."""
        connector: IGateConnector = make_connector(endpoint=f"http://127.0.0.1:{free_port()}")

        with pytest.raises(TargetUnavailable) as caught:
            connector.add_note(note(), "k-refused")
        assert caught.value.maybe_applied is False


class TestBreaker:
    """The circuit breaker opens after fail_max transient failures and then sends nothing."""

    def test_breaker_opens_and_then_nothing_reaches_igate(self, sim: IGateSimulator, make_connector: Any) -> None:
        """Three 503s open the breaker; the fourth call raises BreakerOpen and iGate receives nothing."""
        connector: IGateConnector = make_connector(breaker={"fail_max": 3, "reset_timeout": "60s"})
        sim.set_faults(error_rate=1.0, error_status=503, only_paths=[NOTES])
        for n in range(3):
            with pytest.raises(TargetUnavailable):
                connector.add_note(note(), f"trip-{n}")
        received_before = len(sim.requests())

        with pytest.raises(BreakerOpen):
            connector.add_note(note(), "trip-3")

        assert len(sim.requests()) == received_before
        assert connector.breaker_state == "open"
        assert sim.effect_counts() == {}

    def test_open_breaker_fails_fast_even_under_a_rate_limit(self, sim: IGateSimulator, make_connector: Any) -> None:
        """With the breaker open, a call does not queue for a rate-limit slot: BreakerOpen at once."""
        connector: IGateConnector = make_connector(rate_limit=2, breaker={"fail_max": 1, "reset_timeout": "60s"})
        sim.set_faults(error_rate=1.0, only_paths=[NOTES])
        with pytest.raises(TargetUnavailable):
            connector.add_note(note(), "fast-0")  # the token grant and this call spend the burst of 2

        started = time.monotonic()
        for n in range(10):  # queued behind the limit they would take 10 x 0.5 s; refused at once, about 0
            with pytest.raises(BreakerOpen):
                connector.add_note(note(), f"fast-{n + 1}")
        assert_within(time.monotonic() - started, 0.2, "ten calls on an open breaker under a 2/s rate limit")
        assert 0.2 + SLACK_S < 10 * 0.5, "the contrast must survive the machine's slack"

    def test_garbage_replies_count_as_failures(self, sim: IGateSimulator, make_connector: Any) -> None:
        """200s with broken JSON are failures too: two of them open a breaker with fail_max 2."""
        connector: IGateConnector = make_connector(breaker={"fail_max": 2, "reset_timeout": "60s"})
        sim.set_faults(malformed_body=True, only_paths=[NOTES])
        for n in range(2):
            with pytest.raises(TargetUnavailable):
                connector.add_note(note(), f"garbage-{n}")

        with pytest.raises(BreakerOpen):
            connector.add_note(note(), "garbage-2")
        assert sim.effect_counts() == {"garbage-0": 1, "garbage-1": 1}

    def test_rejections_do_not_open_the_breaker(self, sim: IGateSimulator, make_connector: Any) -> None:
        """A 4xx is the request's fault, not the target's: the breaker stays closed."""
        connector: IGateConnector = make_connector(breaker={"fail_max": 2, "reset_timeout": "60s"})
        sim.set_faults(error_rate=1.0, error_status=422, only_paths=[NOTES])
        for n in range(4):
            with pytest.raises(TargetRejected):
                connector.add_note(note(), f"reject-{n}")

        assert connector.breaker_state == "closed"
        assert len([r for r in sim.requests(NOTES) if r["status"] == 422]) == 4

    def test_breaker_half_opens_and_closes_on_a_successful_trial(
        self, sim: IGateSimulator, make_connector: Any
    ) -> None:
        """After reset_timeout one trial call goes through; its success closes the breaker."""
        connector: IGateConnector = make_connector(breaker={"fail_max": 1, "reset_timeout": "0.3s"})
        sim.set_faults(error_rate=1.0, only_paths=[NOTES])
        with pytest.raises(TargetUnavailable):
            connector.add_note(note(), "half-0")
        with pytest.raises(BreakerOpen):
            connector.add_note(note(), "half-1")
        sim.set_faults()
        time.sleep(0.35)

        connector.add_note(note(), "half-2")

        assert connector.breaker_state == "closed"
        assert sim.effect_counts() == {"half-2": 1}


class TestLookup:
    """Reconciling an ambiguous outcome by asking iGate for the key."""

    def test_lookup_finds_the_note_applied_before_the_connection_dropped(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """Apply-then-drop: the call fails as maybe-applied, and the lookup returns iGate's recorded reply."""
        sim.set_faults(apply_then_drop_rate=1.0, only_paths=[f"/pa/dossier/{CODE}/"])
        with pytest.raises(TargetUnavailable) as caught:
            igate.add_note(note(), "ambiguous-1")
        assert caught.value.maybe_applied is True
        sim.set_faults()

        found = igate.lookup_note("ambiguous-1")

        assert sim.effect_counts() == {"ambiguous-1": 1}
        assert found == AddNoteReply.model_validate(sim.effects()[0]["result"])
        lookups = sim.requests("/pa/dossier/--bus-request")
        assert lookups[-1]["query"] == {"clientRequestId": "ambiguous-1"}

    def test_lookup_of_an_unknown_key_is_none(self, igate: IGateConnector) -> None:
        """iGate never applied anything under this key: None, so the engine may send."""
        assert igate.lookup_note("never-sent") is None
        assert igate.lookup_update("never-sent") is None

    def test_lookup_of_a_key_used_by_the_other_operation_is_ambiguous(self, igate: IGateConnector) -> None:
        """A note's key looked up as an update cannot be reconciled automatically."""
        igate.add_note(note(), "note-key")

        with pytest.raises(AmbiguousOutcome):
            igate.lookup_update("note-key")

    def test_a_404_that_does_not_name_the_key_is_not_taken_as_never_applied(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """A generic 404 (lookup route missing) must not read as "not applied": that would duplicate."""
        sim.set_faults(
            error_rate=1.0,
            error_status=404,
            error_body='{"status":404,"error":"Not Found"}',
            only_paths=["/pa/"],
        )

        with pytest.raises(TargetUnavailable) as caught:
            igate.lookup_note("k-generic-404")
        assert caught.value.maybe_applied is True


class TestProbe:
    """Health from a side-effect-free search."""

    def test_probe_is_up_and_sends_only_a_search(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """A healthy iGate is up; the probe made no effect."""
        health = igate.probe()

        assert health.state == "up"
        assert health.latency_ms is not None
        assert [r["path"] for r in sim.requests(NOTES)] == ["/pa/dossier/search"]
        assert sim.effect_counts() == {}

    def test_probe_is_down_when_nothing_listens(self, make_connector: Any) -> None:
        """Connection refused: down, with the reason."""
        connector: IGateConnector = make_connector(endpoint=f"http://127.0.0.1:{free_port()}")

        health = connector.probe()

        assert health.state == "down"
        assert "unavailable" in health.detail

    def test_probe_is_down_when_igate_fails(self, sim: IGateSimulator, igate: IGateConnector) -> None:
        """503 on the search: down."""
        sim.set_faults(error_rate=1.0, only_paths=["/pa/dossier/search"])

        assert igate.probe().state == "down"

    def test_probe_is_degraded_when_slow(self, sim: IGateSimulator, make_connector: Any) -> None:
        """An answer slower than degraded_ms: degraded."""
        connector: IGateConnector = make_connector(options={"client_id": DEFAULT_CLIENT_ID, "degraded_ms": 50})
        sim.set_faults(latency_s=0.1, only_paths=["/pa/dossier/search"])

        assert connector.probe().state == "degraded"

    def test_probe_sees_the_target_through_an_open_breaker(self, sim: IGateSimulator, make_connector: Any) -> None:
        """With the breaker open, the probe still asks iGate and reports it answers (degraded)."""
        connector: IGateConnector = make_connector(breaker={"fail_max": 1, "reset_timeout": "60s"})
        sim.set_faults(error_rate=1.0, only_paths=[f"/pa/dossier/{CODE}/"])
        with pytest.raises(TargetUnavailable):
            connector.add_note(note(), "open-it")
        assert connector.breaker_state == "open"

        health = connector.probe()

        assert health.state == "degraded"
        assert "breaker" in health.detail


class TestConcurrencyAndRate:
    """Several worker threads share one connector."""

    def test_threads_share_one_token_and_each_effect_lands_once(
        self, sim: IGateSimulator, igate: IGateConnector
    ) -> None:
        """8 threads x 5 notes: 40 effects, each key once, and a single token grant."""
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for n in range(5):
                    igate.add_note(note(), f"t{worker}-{n}")
            except BaseException as exc:
                errors.append(exc)

        run_concurrently(work, [(w,) for w in range(8)], timeout=30)

        assert errors == []
        counts = sim.effect_counts()
        assert len(counts) == 40
        assert set(counts.values()) == {1}
        assert len(sim.requests("/auth/")) == 1

    def test_rate_limit_spaces_requests(self, sim: IGateSimulator, make_connector: Any) -> None:
        """At 20 requests/s (bursts of 20), 31 requests take at least half a second to reach iGate."""
        connector: IGateConnector = make_connector(rate_limit=20)

        started = time.monotonic()
        for _ in range(30):
            connector.get_dossier(GetDossierRequest(dossier_code=CODE))
        elapsed = time.monotonic() - started

        assert len(sim.requests()) == 31  # one token grant and thirty reads
        assert elapsed >= 0.45

    def test_token_bucket_refuses_a_wait_past_the_deadline(self) -> None:
        """The bucket never sleeps past the caller's deadline: it refuses, and nothing is sent."""
        bucket = TokenBucket(rate=1.0)
        bucket.acquire(time.monotonic() + 5)

        with pytest.raises(TargetUnavailable) as caught:
            bucket.acquire(time.monotonic() + 0.1)
        assert caught.value.maybe_applied is False


class TestScrub:
    """Error snippets are short, single-line and free of personal data and tokens."""

    def test_snippet_masks_ids_phones_emails_and_tokens(self) -> None:
        """CCCD, phone, e-mail and bearer token are masked; the rest of the text stays readable."""
        body = b'{"error":\n"bad CCCD 066190012345, phone +84912345678, mail a.b@c.vn, Bearer eyJhbGciOi.x.y"}'

        snippet = scrub_snippet(body)

        assert "\n" not in snippet
        assert "bad CCCD" in snippet
        for secret in ("066190012345", "84912345678", "a.b@c.vn", "eyJhbGciOi"):
            assert secret not in snippet

    def test_snippet_is_cut(self) -> None:
        """A long body gives at most the snippet length plus the ellipsis."""
        assert len(scrub_snippet(b"x" * 10_000)) <= 161


def test_dossier_reply_model_ignores_unknown_fields() -> None:
    """iGate may add fields; the reply model ignores them instead of failing."""
    reply = DossierReply.model_validate(
        {"id": "65f0a1b2c3d4e5f6a7b8c901", "code": CODE, "eForm": {"data": {}}, "appointmentDate": None}
    )
    assert reply.code == CODE
