"""Hostile and broken SOAP replies from the portal (docs/reliability.md section 4, R19): one test per reply.

Each reply must be refused within a second, with bounded memory, mapped to the right error class, with no
personal data in the logs, and the connector must work again at once ("the worker alive"). Time, the
Python heap's peak (tracemalloc, every thread: client and simulator) and the growth of the process's peak
resident memory (VmHWM, which also sees libxml2's C allocations) are measured around the call.

The last class drives the real route pipeline (``routes.pipeline.RouteRunner`` with a SQLite store) to show
what becomes of the message: retried with its reason and then reconciled by lookup, or dead-lettered at once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
import pytest
from measure import measure
from structlog.testing import capture_logs
from wallclock import assert_within

from adapters.registry import Adapter
from config.model import ConnectorSpec, RouteSpec
from connectors.nps import NpsConnector
from routes.idempotency import IdempotencyStore
from routes.model import Route
from routes.pipeline import Delivery, RouteRunner, idempotency_key
from schemas.errors import BusError, TargetGarbled, TargetRejected, TargetTimeout, TargetUnavailable
from schemas.events import EVENT_PAYLOADS
from schemas.nps import DongBoHoSoMCRequest, HoSoMC, portal_time
from schemas.results import DvcqgSyncResult
from simulators.nps import (
    DEFAULT_MADONVI,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    SEEDED_CCCD,
    SEEDED_PHONE,
    NpsSimulator,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from schemas.envelope import Event

USER_ENV = "IGATE_BUS_TEST_NPS_USERNAME"
PASSWORD_ENV = "IGATE_BUS_TEST_NPS_PASSWORD"
CODE = "000.00.16.H16-250312-0001"
#: the bounds of R19 for one hostile reply
MAX_SECONDS = 1.0
MAX_PY_PEAK_BYTES = 20 * 1024 * 1024
MAX_RSS_GROWTH_KIB = 64 * 1024
CAP_BYTES = 1_048_576
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "events" / "dossier.received.json"


@dataclass(frozen=True)
class Case:
    """One hostile reply and what the connector must make of it."""

    mode: str
    error: type[BusError]
    reason: str
    maybe_applied: bool | None
    extra: tuple[tuple[str, Any], ...] = ()


CASES = [
    Case("billion_laughs", TargetGarbled, "not well-formed XML", maybe_applied=True),
    Case("quadratic_blowup", TargetGarbled, "not well-formed XML", maybe_applied=True),
    Case("xxe", TargetGarbled, "DOCTYPE", maybe_applied=True),
    Case("doctype_system", TargetGarbled, "DOCTYPE", maybe_applied=True),
    Case("deep_nesting", TargetGarbled, "not well-formed XML", maybe_applied=True),
    Case("huge", TargetGarbled, f"passed the {CAP_BYTES}-byte cap", maybe_applied=True),
    Case("huge", TargetGarbled, "over the", maybe_applied=True, extra=(("huge_declare_length", True),)),
    Case("drip", TargetTimeout, "deadline passed mid-reply", maybe_applied=True, extra=(("drip_interval_s", 0.05),)),
    Case("html", TargetGarbled, "text/html, not a SOAP envelope", maybe_applied=True),
    Case("pii_fault", TargetRejected, "SOAP fault Client", maybe_applied=None),
    Case("wrong_namespace", TargetGarbled, "does not match the WSDL", maybe_applied=True),
    Case("soap12_envelope", TargetGarbled, "not a SOAP 1.1 envelope", maybe_applied=True),
    Case("truncated", TargetUnavailable, "connection lost mid-reply", maybe_applied=True),
]
IDS = [c.mode + ("_declared" if c.extra and c.extra[0][0] == "huge_declare_length" else "") for c in CASES]


@pytest.fixture(scope="module")
def sim_server() -> Iterator[NpsSimulator]:
    """One simulator for the module; each test resets it."""
    with NpsSimulator() as sim:
        yield sim


@pytest.fixture
def sim(sim_server: NpsSimulator) -> Iterator[NpsSimulator]:
    """The shared simulator with no faults, records, sessions or dossiers."""
    sim_server.reset()
    yield sim_server
    sim_server.reset()


@pytest.fixture
def nps(sim: NpsSimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[NpsConnector]:
    """A connector with a 0.5 s read timeout, a 0.8 s deadline and a 1 MiB reply cap, already logged in."""
    monkeypatch.setenv(USER_ENV, DEFAULT_USERNAME)
    monkeypatch.setenv(PASSWORD_ENV, DEFAULT_PASSWORD)
    spec = ConnectorSpec.model_validate(
        {
            "type": "nps",
            "endpoint": sim.endpoint,
            "timeout": {"connect": "0.5s", "read": "0.5s", "total": "0.8s"},
            "max_reply_bytes": CAP_BYTES,
            "breaker": {"fail_max": 1000},
            "credentials": {"username": USER_ENV, "password": PASSWORD_ENV},
            "options": {"madonvi": DEFAULT_MADONVI},
        }
    )
    connector = NpsConnector("nps", spec)
    assert connector.probe().state == "up"  # the login is done before anything is measured
    yield connector
    connector.close()


@pytest.fixture
def stdlib_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every stdlib logger (zeep, urllib3, requests) captured at DEBUG, where bodies would show."""
    caplog.set_level(logging.DEBUG)
    return caplog


def record(**changes: Any) -> HoSoMC:
    """A valid record whose owner carries the seeded CCCD and phone."""
    data: dict[str, Any] = {
        "MaHoSo": CODE,
        "MaTTHC": "1.003560.000.00.00.H16",
        "TenTTHC": "Đăng ký biến động quyền sử dụng đất",
        "KenhThucHien": 2,
        "ChuHoSo": "Nguyễn Văn A",
        "LoaiDoiTuong": 1,
        "SoGiayToChuHoSo": SEEDED_CCCD,
        "SoDienThoai": SEEDED_PHONE,
        "TrangThaiHoSo": 2,
        "NgayNopHoSo": "20250312080512",
        "NgayTiepNhan": "20250312093000",
        "NgayCapNhat": "20250312093000",
    }
    data.update(changes)
    return HoSoMC.model_validate(data)


def assert_no_personal_data(*texts: str) -> None:
    """None of the texts holds the seeded CCCD or phone, nor a line of /etc/passwd."""
    for text in texts:
        assert SEEDED_CCCD not in text
        assert SEEDED_PHONE not in text
        assert "root:x:0:0" not in text


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hostile_reply_is_refused_fast_with_bounded_memory(
    case: Case,
    sim: NpsSimulator,
    nps: NpsConnector,
    stdlib_logs: pytest.LogCaptureFixture,
) -> None:
    """Refused within 1 s, Python peak < 20 MiB, RSS peak growth < 64 MiB, right class, no PII logged."""
    sim.set_faults(mode=case.mode, only_operations=["DongBoHoSoMC"], **dict(case.extra))
    request = DongBoHoSoMCRequest(isUpdating=True, data=[record()])

    with capture_logs() as logs, measure() as cost, pytest.raises(BusError) as caught:
        nps.dong_bo_ho_so(request, "k-hostile")

    error = caught.value
    assert type(error) is case.error
    assert case.reason in str(error)
    assert getattr(error, "maybe_applied", None) is case.maybe_applied
    assert_within(cost.seconds, MAX_SECONDS, f"refusing the {case.mode} reply")
    assert cost.py_peak < MAX_PY_PEAK_BYTES
    if cost.rss_growth_kib is not None:
        assert cost.rss_growth_kib < MAX_RSS_GROWTH_KIB
    # the simulator may log its side of a connection the client cut; the connector logs exactly one failure
    mine = [e for e in logs if not e["event"].startswith("nps_sim.")]
    assert [e["event"] for e in mine] == ["nps.call_failed"]
    assert mine[0]["error_kind"] == error.kind
    assert_no_personal_data(str(error), repr(logs), stdlib_logs.text)
    # The simulator did receive the personal data: it was sent, only never logged.
    assert sim.requests("DongBoHoSoMC")[0]["body"]["data"][0]["SoGiayToChuHoSo"] == SEEDED_CCCD

    # the worker alive: the next call on the same connector goes through
    sim.set_faults()
    assert nps.dong_bo_ho_so(request, "k-after").ok
    rss = "n/a" if cost.rss_growth_kib is None else f"{max(0, cost.rss_growth_kib) / 1024:.1f} MiB"
    print(  # shown with -s: the figures for the note
        f"\n  {case.mode:<16} {type(error).__name__:<17} {cost.seconds * 1000:7.1f} ms  "
        f"py peak {cost.py_peak / 1024 / 1024:5.2f} MiB  rss +{rss}"
    )


def test_fault_text_with_personal_data_is_scrubbed_but_keeps_its_reason(sim: NpsSimulator, nps: NpsConnector) -> None:
    """The fault's reason survives for the operator; the CCCD and phone it echoes are masked."""
    sim.set_faults(mode="pii_fault", only_operations=["DongBoHoSoMC"])

    with pytest.raises(TargetRejected) as caught:
        nps.dong_bo_ho_so(DongBoHoSoMCRequest(data=[record()]), "k-pii")

    text = str(caught.value)
    assert "Hồ sơ không hợp lệ" in text
    assert "***34" in text  # masked with a two-digit hint
    assert_no_personal_data(text)


def test_xxe_never_reads_the_file(sim: NpsSimulator, nps: NpsConnector) -> None:
    """The external entity is not resolved: no error, log or reply field carries the file's content."""
    sim.set_faults(mode="xxe", only_operations=["DongBoHoSoMC"])

    with capture_logs() as logs, pytest.raises(TargetUnavailable) as caught:
        nps.dong_bo_ho_so(DongBoHoSoMCRequest(data=[record()]), "k-xxe")

    assert "root:" not in str(caught.value)
    assert "root:" not in repr(logs)


# -- what the route does with it ----------------------------------------------------------------------------


def _record_from_event(event: Event, *, now: datetime) -> DongBoHoSoMCRequest:
    """A test-only adapter: enough of a dossier.received event to make a portal record."""
    del now
    env = event.envelope
    payload: Any = event.payload
    dates = payload.dates
    return DongBoHoSoMCRequest(
        data=[
            HoSoMC(
                MaHoSo=env.dossier_code or "",
                MaTTHC=env.procedure_code or "",
                TenTTHC="Đăng ký biến động quyền sử dụng đất",
                KenhThucHien=env.channel or 1,
                ChuHoSo=payload.applicant.name,
                LoaiDoiTuong=payload.applicant.type,
                SoGiayToChuHoSo=payload.applicant.id_no,
                SoDienThoai=payload.applicant.phone,
                TrangThaiHoSo=env.status or 2,
                NgayNopHoSo=portal_time(dates.submitted),
                NgayTiepNhan=portal_time(dates.received),
                NgayCapNhat=portal_time(env.occurred_at),
            )
        ]
    )


@pytest.fixture
def runner(nps: NpsConnector, tmp_path: Path) -> RouteRunner:
    """The real pipeline for a dossier.received → nps.dong_bo_ho_so route, with a SQLite store."""
    spec = RouteSpec.model_validate(
        {
            "name": "nps-hostile",
            "from": {"events": ["dossier.received"]},
            "adapter": "test.nps_record",
            "to": "nps.dong_bo_ho_so",
            "emits": "dvcqg.sync_result",
            "retry": {"backoff": ["5s"], "max_attempts": 5},
        }
    )
    adapter = Adapter(
        name="test.nps_record",
        fn=_record_from_event,
        accepts=frozenset({"dossier.received"}),
        produces=DongBoHoSoMCRequest,
    )
    route = Route(
        spec=spec,
        adapter=adapter,
        connector="nps",
        operation="dong_bo_ho_so",
        op_spec=NpsConnector.OPERATIONS["dong_bo_ho_so"],
    )
    store = IdempotencyStore(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    return RouteRunner(
        route,
        nps.operations()["dong_bo_ho_so"],
        store=store,
        payload_models=EVENT_PAYLOADS,
        worker_id="test-worker",
        lease_s=0.01,  # an attempt that failed after sending is reclaimed at once by the next one
        clock=lambda: datetime(2026, 11, 26, 3, 0, tzinfo=UTC),
    )


def _example() -> tuple[bytes, dict[str, Any]]:
    body = EXAMPLE.read_bytes()
    return body, json.loads(body)


def _delivery(body: bytes, event_id: str, headers: dict[str, Any] | None = None) -> Delivery:
    props = pika.BasicProperties(content_type="application/json", message_id=event_id, headers=headers or {})
    return Delivery(body, props, "igate.events", "dossier.received", redelivered=False)


def _personal(event: dict[str, Any]) -> list[str]:
    applicant = event["payload"]["applicant"]
    return [applicant["id_no"], applicant["phone"]]


def test_hostile_reply_is_retried_with_its_reason_then_reconciled_without_a_resend(
    sim: NpsSimulator, runner: RouteRunner
) -> None:
    """Billion laughs after the portal applied: retry (reason in x-last-error), then lookup finds it: done."""
    body, event = _example()
    sim.set_faults(mode="billion_laughs", only_operations=["DongBoHoSoMC"])

    with capture_logs() as logs:
        first = runner.handle(_delivery(body, event["event_id"]))
    assert first.outcome == "retry"
    [retry] = first.messages
    assert retry.routing_key.startswith("retry.nps-hostile")
    assert "reply refused" in retry.properties.headers["x-last-error"]
    assert retry.properties.headers["x-attempts"] == 1

    sim.set_faults()
    with capture_logs() as more:
        second = runner.handle(_delivery(body, event["event_id"], retry.properties.headers))
    assert second.outcome == "delivered"
    assert len(sim.requests("DongBoHoSoMC")) == 1  # reconciled by lookup, never sent twice
    key = idempotency_key("nps-hostile", event["event_id"])
    lookups = [r["body"] for r in sim.requests("TraCuuHoSo") if r["body"] != {"MaHoSo": "PROBE-0"}]
    assert lookups == [{"MaYeuCau": key}]
    [result] = second.messages
    assert result.routing_key == "dvcqg.sync_result"
    payload = DvcqgSyncResult.model_validate(json.loads(result.body)["payload"])
    assert (payload.service, payload.ok) == ("DongBoHoSoMC", True)
    for needle in _personal(event):
        assert needle not in repr(logs) + repr(more)
        assert needle not in retry.properties.headers["x-last-error"]


def test_fault_with_personal_data_is_dead_lettered_at_once_with_a_scrubbed_reason(
    sim: NpsSimulator, runner: RouteRunner
) -> None:
    """A client fault echoing a CCCD and phone: DLQ on the first attempt, kind rejected, reason scrubbed."""
    body, event = _example()
    sim.set_faults(mode="pii_fault", only_operations=["DongBoHoSoMC"])

    with capture_logs() as logs:
        outcome = runner.handle(_delivery(body, event["event_id"]))

    assert outcome.outcome == "dead_lettered"
    [dead] = outcome.messages
    assert dead.routing_key == "dlq.nps-hostile"
    headers = dead.properties.headers
    assert (headers["x-error-kind"], headers["x-attempts"]) == ("rejected", 1)
    assert "SOAP fault Client" in headers["x-error"]
    assert_no_personal_data(headers["x-error"], repr(logs))
    assert len(sim.requests("DongBoHoSoMC")) == 1


def test_record_the_portal_rejects_is_dead_lettered_at_once_not_retried(sim: NpsSimulator, runner: RouteRunner) -> None:
    """The portal's business rule refuses the record: DLQ at attempt 1 with code and reason, sent once."""
    _, event = _example()
    event["payload"]["dates"]["received"] = "2025-11-26T07:00:00+07:00"  # before it was submitted
    bad = json.dumps(event, ensure_ascii=False).encode()

    outcome = runner.handle(_delivery(bad, event["event_id"]))

    assert outcome.outcome == "dead_lettered"
    headers = outcome.messages[0].properties.headers
    assert (headers["x-error-kind"], headers["x-attempts"]) == ("rejected", 1)
    assert "error_code 1" in headers["x-error"]
    assert "NgayTiepNhan" in headers["x-error"]
    assert len(sim.requests("DongBoHoSoMC")) == 1
    assert sim.effects() == []


def test_a_batch_keeps_each_message_to_itself(sim: NpsSimulator, runner: RouteRunner) -> None:
    """One batch: two dossiers, a copy of the first, a body that is not JSON, and one the portal rejects.

    Each gets its own outcome, in order; only the two dossiers reach the portal, once each; the copy waits
    for the claim its twin holds (a retry that spends no attempt) and is a duplicate once that is done.
    """
    body, event = _example()
    second = {**event, "event_id": "9a7b5c3d-1e2f-4a6b-8c9d-0e1f2a3b4c5d", "dossier_code": "000.00.16.H16-261126-0002"}
    rejected = json.loads(body)
    rejected["event_id"] = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    rejected["dossier_code"] = "000.00.16.H16-261126-0003"
    rejected["payload"]["dates"]["received"] = "2025-11-26T07:00:00+07:00"  # before it was submitted
    deliveries = [
        _delivery(body, event["event_id"]),
        _delivery(json.dumps(second, ensure_ascii=False).encode(), second["event_id"]),
        _delivery(body, event["event_id"]),
        _delivery(b"{not json", "c4a3b2d1-0000-4000-8000-000000000000"),
        _delivery(json.dumps(rejected, ensure_ascii=False).encode(), rejected["event_id"]),
    ]

    outcomes = runner.handle_batch(deliveries)

    assert [o.outcome for o in outcomes] == ["delivered", "delivered", "retry", "dead_lettered", "dead_lettered"]
    assert outcomes[2].messages[0].properties.headers["x-attempts"] == 0  # waiting for a claim costs nothing
    assert outcomes[3].messages[0].properties.headers["x-error-kind"] == "invalid"
    assert outcomes[4].messages[0].properties.headers["x-error-kind"] == "rejected"
    sent = [json.dumps(r["body"], ensure_ascii=False) for r in sim.requests("DongBoHoSoMC")]
    codes = [event["dossier_code"], second["dossier_code"], rejected["dossier_code"]]
    assert [sum(code in s for s in sent) for code in codes] == [1, 1, 1]
    assert len(sent) == 3
    assert sorted(e["MaHoSo"] for e in sim.effects()) == [event["dossier_code"], second["dossier_code"]]

    [again] = runner.handle_batch([_delivery(body, event["event_id"])])
    assert again.outcome == "duplicate"
    assert again.messages[0].body == outcomes[0].messages[0].body  # the same result event, re-emitted
    assert len(sim.requests("DongBoHoSoMC")) == 3
