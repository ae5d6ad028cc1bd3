# mypy: allow-untyped-defs, allow-incomplete-defs
"""POST /events against a real uvicorn and the real broker: what is accepted is stored, nothing else is.

One server for the module, on a private vhost, with a capture queue bound to ``igate.events``; each test
starts from an empty capture queue and reads it afterwards, so every assertion is on what reached the broker.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from busenv import example, received_events
from ingress_harness import (
    SECRET,
    bind_capture,
    client,
    drain,
    dumps,
    private_vhost,
    serve,
    signed,
)

from bus.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

LIMIT = 1_048_576


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A vhost for the module, with the capture queue bound to igate.events."""
    with private_vhost() as url:
        bind_capture(url, "igate.events")
        yield url


@pytest.fixture(scope="module")
def server(broker_url):
    """The ingress for the module (body timeout 1 s, so the slow-body test is quick)."""
    with serve(broker_url, body_timeout="1s") as srv:
        yield srv


@pytest.fixture
def http(server, broker_url):
    """An httpx client; the capture queue is emptied first."""
    drain(broker_url)
    with client(server) as c:
        yield c


def fresh(event_type: str = "dossier.received") -> dict[str, Any]:
    """A shipped example with a new event_id."""
    event: dict[str, Any] = example(event_type)
    event["event_id"] = str(uuid.uuid4())
    return event


def test_valid_event_is_confirmed_and_stored_as_sent(http, broker_url):
    """A signed, valid event ▶ 202 with its id; the broker holds exactly those bytes with the bus's properties."""
    event = fresh()
    body = dumps(event)
    response = http.post("/events", content=body, headers=signed(body))
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "event_id": event["event_id"], "event_type": "dossier.received"}
    [(method, props, stored)] = drain(broker_url)
    assert stored == body
    assert method.routing_key == "dossier.received"
    assert props.message_id == event["event_id"]
    assert props.type == "dossier.received"
    assert props.delivery_mode == 2
    assert props.correlation_id == event["correlation_id"]


ATTACKER_GUESS = "an-attackers-guess-of-the-secret-0123456789"


def _forged(body: bytes) -> tuple[bytes, dict[str, Any]]:
    headers = signed(body, secret=ATTACKER_GUESS)
    return body, headers


def _one_byte_changed(body: bytes) -> tuple[bytes, dict[str, Any]]:
    headers = signed(body)
    altered = body.replace(b"261126-0001", b"261126-0002", 1)
    assert len(altered) == len(body)
    assert sum(a != b for a, b in zip(altered, body, strict=True)) == 1
    return altered, headers


def _signed_at(delta: int) -> Callable[[bytes], tuple[bytes, dict[str, Any]]]:
    return lambda body: (body, signed(body, ts=int(time.time()) + delta))


def _without(header: str) -> Callable[[bytes], tuple[bytes, dict[str, Any]]]:
    def build(body: bytes) -> tuple[bytes, dict[str, Any]]:
        headers = signed(body)
        del headers[header]
        return body, headers

    return build


def _replace_body(new: bytes) -> Callable[[bytes], tuple[bytes, dict[str, Any]]]:
    return lambda _body: (new, signed(new))


def _retype(event_type: str) -> Callable[[bytes], tuple[bytes, dict[str, Any]]]:
    def build(body: bytes) -> tuple[bytes, dict[str, Any]]:
        data = json.loads(body)
        data["event_type"] = event_type
        new = dumps(data)
        return new, signed(new)

    return build


def _bad_payload(body: bytes) -> tuple[bytes, dict[str, Any]]:
    data = json.loads(body)
    data["payload"]["applicant"]["id_no"] = "123"
    new = dumps(data)
    return new, signed(new)


def _content_type(value: str) -> Callable[[bytes], tuple[bytes, dict[str, Any]]]:
    def build(body: bytes) -> tuple[bytes, dict[str, Any]]:
        headers = signed(body)
        headers["Content-Type"] = value
        return body, headers

    return build


def _oversized(_body: bytes) -> tuple[bytes, dict[str, Any]]:
    big = b'{"pad": "' + b"x" * LIMIT + b'"}'
    return big, signed(big)


BAD_REQUESTS = [
    ("forged-signature", _forged, 401, "bad_signature", "does not match"),
    ("body-changed-by-one-byte", _one_byte_changed, 401, "bad_signature", "altered body"),
    ("stale-timestamp-301s", _signed_at(-301), 401, "stale_timestamp", "signed 301 s ago"),
    ("future-timestamp-301s", _signed_at(+301), 401, "future_timestamp", "in the future"),
    ("no-signature-header", _without(SIGNATURE_HEADER), 401, "missing_signature", SIGNATURE_HEADER),
    ("no-timestamp-header", _without(TIMESTAMP_HEADER), 401, "missing_timestamp", TIMESTAMP_HEADER),
    ("oversized-body", _oversized, 413, "body_too_large", "limit is 1048576 bytes"),
    ("invalid-json", _replace_body(b'{"event_id": '), 400, "invalid_json", "malformed JSON at line 1"),
    ("duplicate-keys", _replace_body(b'{"a": 1, "a": 2}'), 400, "invalid_json", "duplicate key 'a'"),
    ("nan", _replace_body(b'{"a": NaN}'), 400, "invalid_json", "NaN is not allowed"),
    ("not-utf8", _replace_body(b'{"a": "\xff"}'), 400, "invalid_json", "not UTF-8"),
    ("empty-body", _replace_body(b""), 400, "empty_body", "empty"),
    ("nested-600-deep", _replace_body(b"[" * 600 + b"]" * 600), 400, "invalid_json", "nested too deeply"),
    ("nested-100k-deep", _replace_body(b"[" * 100_000), 400, "invalid_json", "nested too deeply"),
    ("json-array", _replace_body(b"[]"), 422, "invalid_event", "must be a JSON object"),
    ("unknown-event-type", _retype("dossier.recieved"), 422, "unknown_event_type", "did you mean 'dossier.received'"),
    ("result-event-type", _retype("vilis.status_changed"), 422, "event_type_not_accepted", "callback"),
    ("invalid-payload", _bad_payload, 422, "invalid_event", "payload.applicant.id_no"),
    ("text-plain", _content_type("text/plain"), 415, "unsupported_media_type", "application/json"),
    ("latin1-charset", _content_type("application/json; charset=latin-1"), 415, "unsupported_media_type", "UTF-8"),
]


@pytest.mark.parametrize(
    ("build", "status", "code", "reason"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_each_bad_request_has_its_own_4xx_and_nothing_is_published(http, broker_url, build, status, code, reason):
    """Forged, altered, stale, oversized, malformed, unknown, invalid ▶ its own status, code and reason; 0 stored."""
    body, headers = build(dumps(fresh()))
    response = http.post("/events", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert reason in response.json()["detail"]
    assert drain(broker_url) == [], "a refused request reached the broker"


def test_oversized_chunked_body_is_refused_while_streaming(http, broker_url):
    """A chunked body (no Content-Length) past the limit ▶ 413 once the cap is crossed; nothing stored."""
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):  # 4 MiB in 64 KiB chunks
            sent.append(1)
            yield b"x" * 65536

    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(int(time.time()))}
    headers[SIGNATURE_HEADER] = "sha256=" + "0" * 64
    response = http.post("/events", content=chunks(), headers=headers)
    assert response.status_code == 413, response.text
    assert response.json() == {"error": "body_too_large", "detail": f"the body exceeds the limit of {LIMIT} bytes"}
    assert drain(broker_url) == []


def test_slow_body_times_out(http, broker_url):
    """A body that stalls past body_timeout (1 s here) ▶ 408 body_timeout; nothing stored."""

    def stalling() -> Iterator[bytes]:
        yield b'{"event_id": '
        time.sleep(1.5)
        yield b"1}"

    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(int(time.time()))}
    headers[SIGNATURE_HEADER] = "sha256=" + "0" * 64
    response = http.post("/events", content=stalling(), headers=headers)
    assert response.status_code == 408, response.text
    assert response.json()["error"] == "body_timeout"
    assert drain(broker_url) == []


def test_replayed_request_is_409_and_stored_once(http, broker_url):
    """The same signed request sent twice ▶ 202, then 409 replayed_request; the broker holds one copy."""
    event = fresh()
    body = dumps(event)
    headers = signed(body)
    first = http.post("/events", content=body, headers=headers)
    replay = http.post("/events", content=body, headers=headers)
    assert first.status_code == 202
    assert replay.status_code == 409
    assert replay.json()["error"] == "replayed_request"
    assert event["event_id"] in replay.json()["detail"]
    assert [p.message_id for _, p, _ in drain(broker_url)] == [event["event_id"]]


def test_resigned_retry_is_200_duplicate_and_stored_once(http, broker_url):
    """A retry signed again (lost 202) ▶ 200 {"status": "duplicate"}: success for iGate, nothing stored again."""
    event = fresh()
    body = dumps(event)
    first = http.post("/events", content=body, headers=signed(body, ts=int(time.time()) - 5))
    # re-serialised with other key order: the same event, so still a duplicate
    again = json.dumps(dict(reversed(list(event.items()))), ensure_ascii=False).encode()
    retry = http.post("/events", content=again, headers=signed(again))
    assert first.status_code == 202
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "duplicate"
    assert retry.json()["event_id"] == event["event_id"]
    assert [p.message_id for _, p, _ in drain(broker_url)] == [event["event_id"]]


def test_same_event_id_other_content_is_409_conflict(http, broker_url):
    """An event_id reused for different content ▶ 409 event_id_conflict; only the first is stored."""
    event = fresh()
    body = dumps(event)
    assert http.post("/events", content=body, headers=signed(body)).status_code == 202
    event["dossier_code"] = "000.00.16.H16-261126-0009"
    other = dumps(event)
    response = http.post("/events", content=other, headers=signed(other))
    assert response.status_code == 409
    assert response.json()["error"] == "event_id_conflict"
    [(_, _, stored)] = drain(broker_url)
    assert stored == body


def test_concurrent_posts_are_each_stored_once(http, broker_url):
    """300 events from 16 threads at once ▶ 300 × 202 and 300 distinct messages (publisher threads never shared)."""
    events = received_events(300, prefix="C")

    def post(event):
        body = dumps(event)
        return http.post("/events", content=body, headers=signed(body)).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(post, events))
    assert statuses == [202] * 300
    stored = [p.message_id for _, p, _ in drain(broker_url)]
    assert sorted(stored) == sorted(e["event_id"] for e in events)


def test_openapi_documents_the_contract(http):
    """/openapi.json names every answer of POST /events, the signature headers, the envelope and payload models."""
    doc = http.get("/openapi.json").json()
    post = doc["paths"]["/events"]["post"]
    assert set(post["responses"]) == {"200", "202", "400", "401", "408", "409", "413", "415", "422", "503"}
    assert {p["name"] for p in post["parameters"]} == {TIMESTAMP_HEADER, SIGNATURE_HEADER}
    envelope = doc["components"]["schemas"]["EventEnvelope"]
    assert "dossier.received" in envelope["properties"]["event_type"]["enum"]
    assert "vilis.status_changed" not in envelope["properties"]["event_type"]["enum"]
    ref = post["x-payload-schemas"]["dossier.received"]["$ref"]
    assert doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["receipt_no"]
    assert "/callbacks/vilis/{action}/{security_code}" in doc["paths"]
    assert "get" in doc["paths"]["/callbacks/esms"]


def test_unknown_path_and_method_use_the_error_shape(http):
    """Framework 404/405 answers have the same {"error", "detail"} shape as ours."""
    missing = http.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong = http.get("/events")
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"


def test_signature_is_checked_before_the_body_is_parsed(http, broker_url):
    """An unsigned request with an unknown event type gets 401, not 422: nothing is revealed before auth."""
    body = dumps({**fresh(), "event_type": "no.such"})
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(int(time.time()))}
    headers[SIGNATURE_HEADER] = sign("wrong-secret-wrong-secret-wrong-secret", int(time.time()), body)
    response = http.post("/events", content=body, headers=headers)
    assert response.status_code == 401
    assert drain(broker_url) == []
    assert SECRET not in response.text
