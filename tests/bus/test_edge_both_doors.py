# mypy: allow-untyped-defs, allow-incomplete-defs
"""Issue 8, section 3: what the envelope must refuse, refused the same at both doors, naming the field.

The same table of hostile events goes through the HTTP ingress (a real uvicorn; each must be a 4xx whose
detail names the field, and nothing may reach the broker) and through AMQP straight onto ``igate.events``
to a real worker (each must be dead-lettered with the field named in ``x-error``, the worker alive, and
nothing sent to the iGate simulator). Positive controls must pass both doors: free text over several lines
where the field is multi-line, an upper-case UUID, a time a few minutes ahead. AMQP has inputs of its own:
no content type, a producer's ``x-attempts``/``x-received-at``/``x-error``, a routing key or AMQP type naming
another event type, a message id that is no UUID.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    depth,
    dossier_code,
    example,
    get_all,
    publish_raw,
    thread_worker,
    wait_for,
    write_config,
)
from ingress_harness import bind_capture, client, drain, serve, signed

from routes.pipeline import idempotency_key
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Callable

ROUTE = "bus-ack"
EVENT_TYPE = "dossier.received"


@dataclass(frozen=True)
class Case:
    """A change to a valid event, and the field the refusal must name (None: it must be accepted)."""

    name: str
    change: Callable[[dict[str, Any]], None]
    field: str | None


def _at(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        target = event
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _append(*path: str, text: str) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        target = event
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] += text

    return change


def _from_now(*path: str, delta: timedelta) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        _at(*path, value=(datetime.now(UTC) + delta).astimezone().isoformat())(event)

    return change


def _event_id(form: Callable[[uuid.UUID], str]) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        event["event_id"] = form(uuid.UUID(event["event_id"]))

    return change


NAME = ("payload", "applicant", "name")
HOSTILE = [
    Case("occurred_at-year-9999", _at("occurred_at", value="9999-12-31T23:59:59+07:00"), "occurred_at"),
    Case("occurred_at-2099", _at("occurred_at", value="2099-01-01T00:00:00+07:00"), "occurred_at"),
    Case("occurred_at-in-10-minutes", _from_now("occurred_at", delta=timedelta(minutes=10)), "occurred_at"),
    Case("occurred_at-1999", _at("occurred_at", value="1999-12-31T23:00:00+07:00"), "occurred_at"),
    Case("occurred_at-unix-number", _at("occurred_at", value=1764000000), "occurred_at"),
    Case("occurred_at-space-for-T", _at("occurred_at", value="2025-11-26 08:00:00+07:00"), "occurred_at"),
    Case("occurred_at-no-offset", _at("occurred_at", value="2025-11-26T08:00:00"), "occurred_at"),
    Case("dossier_code-path", _at("dossier_code", value="../../admin?x=1#"), "dossier_code"),
    Case("dossier_code-nul", _append("dossier_code", text="\x00"), "dossier_code"),
    Case("dossier_code-space", _at("dossier_code", value="000.00.16.H16 251126-0001"), "dossier_code"),
    Case("dossier_code-month-13", _at("dossier_code", value="000.00.16.H16-251326-0001"), "dossier_code"),
    Case("dossier_code-dot-dot", _at("dossier_code", value="000..16.H16-251126-0001"), "dossier_code"),
    Case("dossier_code-number", _at("dossier_code", value=1234), "dossier_code"),
    Case("name-nul", _append(*NAME, text="\x00"), "payload.applicant.name"),
    Case("name-right-to-left-override", _append(*NAME, text="\u202e"), "payload.applicant.name"),
    Case("name-left-to-right-isolate", _append(*NAME, text="\u2066"), "payload.applicant.name"),
    Case("name-right-to-left-mark", _append(*NAME, text="\u200f"), "payload.applicant.name"),
    Case("name-newline", _append(*NAME, text="\nx"), "payload.applicant.name"),
    Case("name-lone-surrogate", _append(*NAME, text="\ud800"), "payload.applicant.name"),
    Case("name-byte-order-mark", _append(*NAME, text="\ufeff"), "payload.applicant.name"),
    Case("name-c1-next-line", _append(*NAME, text="\x85"), "payload.applicant.name"),
    Case("receipt_no-tab", _append("payload", "receipt_no", text="\t"), "payload.receipt_no"),
    Case("summary-vertical-tab", _append("payload", "summary", text="\x0b"), "payload.summary"),
    Case("summary-line-separator", _append("payload", "summary", text="\u2028"), "payload.summary"),
    Case("key-with-bidi-override", _at("payload", "\u202eapplicant", value={}), "payload['\\u202eapplicant']"),
    Case("source-escape", _at("source", value="igate\x1b[31m"), "source"),
    Case("status-true", _at("status", value=True), "status"),
    Case("status-2.0", _at("status", value=2.0), "status"),
    Case("channel-2.0", _at("channel", value=2.0), "channel"),
    Case("channel-string", _at("channel", value="2"), "channel"),
    Case("schema_version-string", _at("schema_version", value="1"), "schema_version"),
    Case("event_id-braces", _event_id(lambda u: "{" + str(u) + "}"), "event_id"),
    Case("event_id-urn", _event_id(lambda u: f"urn:uuid:{u}"), "event_id"),
    Case("event_id-32-hex", _event_id(lambda u: u.hex), "event_id"),
    Case("applicant-type-1.0", _at("payload", "applicant", "type", value=1.0), "payload.applicant.type"),
    Case("birth_date-number", _at("payload", "applicant", "birth_date", value=0), "payload.applicant.birth_date"),
    Case(
        "birth_date-with-time",
        _at("payload", "applicant", "birth_date", value="1990-05-14T00:00:00"),
        "payload.applicant.birth_date",
    ),
    Case(
        "dates-received-tomorrow",
        _from_now("payload", "dates", "received", delta=timedelta(days=1)),
        "payload.dates.received",
    ),
    Case("correlation_id-space", _at("correlation_id", value="a b"), "correlation_id"),
]
ACCEPTED = [
    Case("summary-over-lines", _at("payload", "summary", value="Dòng một\r\nDòng hai\tcột"), None),
    Case("event_id-upper-case", _event_id(lambda u: str(u).upper()), None),
    Case("occurred_at-4-minutes-ahead", _from_now("occurred_at", delta=timedelta(minutes=4)), None),
]


def build(case: Case, i: int) -> tuple[dict[str, Any], bytes]:
    """A valid dossier.received (fresh id and code, happened now), changed by ``case``; and its JSON bytes."""
    event = example(EVENT_TYPE)
    event["event_id"] = str(uuid.uuid4())
    event["dossier_code"] = dossier_code(i, "EDGE")
    event["occurred_at"] = datetime.now(UTC).astimezone().isoformat()
    case.change(event)
    return event, json.dumps(event).encode()  # ASCII escapes: a lone surrogate is valid JSON text


@pytest.fixture(scope="module")
def broker_url(module_amqp_url: str) -> str:
    """The module's vhost, with a capture queue bound to igate.events."""
    bind_capture(module_amqp_url, "igate.events")
    return module_amqp_url


@pytest.fixture(scope="module")
def http(broker_url):
    """The ingress on the module's vhost, and a client."""
    with serve(broker_url) as server, client(server) as c:
        yield c


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_http_refuses_it_naming_the_field(http, broker_url, case):
    """POST /events ▶ 422 with the field in the detail; nothing reaches the broker."""
    drain(broker_url)
    _, body = build(case, 1)
    response = http.post("/events", content=body, headers=signed(body))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_event"
    assert case.field in response.json()["detail"]
    assert drain(broker_url) == [], "a refused event reached the broker"


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.name for c in ACCEPTED])
def test_http_accepts_what_is_fine(http, broker_url, case):
    """Multi-line text where the field is multi-line, an upper-case UUID, 4 minutes ahead ▶ 202, stored."""
    drain(broker_url)
    event, body = build(case, 2)
    response = http.post("/events", content=body, headers=signed(body))
    assert response.status_code == 202, response.text
    [(_, props, _)] = drain(broker_url)
    assert props.message_id == str(uuid.UUID(event["event_id"]))


def test_amqp_refuses_the_same_inputs_naming_the_field_and_the_worker_lives(broker_url, sqlite_url, tmp_path):
    """Every HTTP case, and AMQP's own, published to igate.events ▶ each in the DLQ with its field; controls pass."""
    drain(broker_url)
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as sim:
        cfg = write_config(tmp_path / "cfg", endpoint=sim.url, backoff="300ms", max_attempts=3)
        expected: dict[str, str] = {}
        accepted: list[str] = []
        with thread_worker(broker_url, sqlite_url, cfg, routes=[ROUTE]) as tw:
            for i, case in enumerate([*HOSTILE, *ACCEPTED], start=10):
                event, body = build(case, i)
                mid = str(event["event_id"])
                publish_raw(broker_url, body, routing_key=EVENT_TYPE, message_id=None if case.field else mid)
                if case.field:
                    expected[case.name] = case.field
                else:
                    accepted.append(str(uuid.UUID(mid)))
            _amqp_only(broker_url, sim, expected, accepted)
            wait_for(lambda: depth(broker_url, "dlq.bus-ack") >= len(expected), timeout=30, what="every dead letter")
            wait_for(lambda: len(sim.effect_counts()) >= len(accepted), timeout=30, what="the accepted notes")
            assert tw.thread.is_alive()
        dead = get_all(broker_url, "dlq.bus-ack")
        errors = [str(props.headers["x-error"]) for props, _ in dead]
        assert len(dead) == len(expected), errors
        for name, field in expected.items():
            assert any(e.startswith(f"{field}:") or f"; {field}:" in e for e in errors), f"{name}: {field} not named"
        assert all(props.headers["x-error-kind"] == "invalid" for props, _ in dead)
        assert all(props.headers["x-attempts"] == 1 for props, _ in dead), "a producer's x-attempts was believed"
        want = {idempotency_key(ROUTE, k) for k in accepted}
        assert sim.effect_counts() == dict.fromkeys(want, 1), "an accepted event was not applied exactly once"
        assert depth(broker_url, "route.bus-ack") == 0
    drain(broker_url)


def _amqp_only(url: str, sim: IGateSimulator, expected: dict[str, str], accepted: list[str]) -> None:
    """Publish AMQP's own cases; fill in what each must come to."""
    base = [build(Case("base", lambda _e: None, None), 900 + i) for i in range(6)]
    # no content type, like HTTP's 415
    event, body = base[0]
    publish_raw(url, body, routing_key=EVENT_TYPE, content_type=None, message_id=event["event_id"])
    expected["amqp-no-content-type"] = "content_type"
    # a dossier.returned published as dossier.received would reach the routes bound to the other type
    returned = example("dossier.returned")
    returned.update(event_id=str(uuid.uuid4()), dossier_code=dossier_code(950, "EDGE"))
    returned["occurred_at"] = datetime.now(UTC).astimezone().isoformat()
    publish_raw(url, json.dumps(returned).encode(), routing_key=EVENT_TYPE, amqp_type=None)
    expected["amqp-other-routing-key"] = "routing_key"
    event, body = base[1]
    publish_raw(url, body, routing_key=EVENT_TYPE, message_id=event["event_id"], amqp_type="dossier.returned")
    expected["amqp-other-type"] = "type"
    # a message id that is no UUID
    event, body = base[2]
    publish_raw(url, body, routing_key=EVENT_TYPE, message_id="not-a-uuid")
    expected["amqp-message-id-not-uuid"] = "message_id"
    # an upper-case message id is the same UUID: accepted, as HTTP accepts it
    event, body = base[3]
    publish_raw(url, body, routing_key=EVENT_TYPE, message_id=event["event_id"].upper())
    accepted.append(event["event_id"])
    # headers only the bus sets, forged by a producer: ignored. With x-attempts 99 believed, its first failure
    # would dead-letter it (max_attempts 3); with x-received-at 2000 believed, its time would be "future".
    event, body = base[4]
    path = f"/pa/dossier/{event['dossier_code']}/"
    sim.set_faults(error_rate=1.0, error_status=503, only_paths=[path])
    forged = {
        "x-attempts": 99,
        "X-Attempts": 99,
        "x-received-at": "2000-01-01T00:00:00+00:00",
        "x-garbled": 99,
        "x-error-kind": "forged",
    }
    publish_raw(url, body, routing_key=EVENT_TYPE, message_id=event["event_id"], headers=forged)
    accepted.append(event["event_id"])
    wait_for(lambda: bool(sim.requests(path)), timeout=15, what="the forged event's first (failing) attempt")
    sim.set_faults()
