# mypy: allow-untyped-defs, allow-incomplete-defs
"""The ingress's ``/metrics``: what its doors accepted, refused (by reason) and could not store, counted.

Everything is real: the ingress under uvicorn (in this process, then as its own ``serve`` process), the
broker on a fresh vhost. A 503 comes from the broker itself: ``dossier.submitted`` is routed to a queue that
holds nothing and refuses every publish (``x-max-length`` 0, ``reject-publish``), so the broker nacks it
(or, in the second test, there is no broker at all). Each count is checked against what the client saw
and what reached the broker; and the ingress exports none of a worker's series.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pika
from busenv import SIM_PASSWORD, SIM_USER, env_for, example, write_config
from ingress_harness import (
    CAPTURE,
    ESMS_TOKEN,
    SECRET,
    VILIS_CODE,
    bind_capture,
    client,
    drain,
    dumps,
    serve,
    serve_process,
    signed,
)
from opsenv import families, metric_samples, sample

if TYPE_CHECKING:
    from collections.abc import Callable

EVENTS = "/events"
VILIS = "/callbacks/vilis/{action}/{security_code}"
ESMS = "/callbacks/esms"
RESULTS = "capture.results"
LAND_CALL = {"SoBienNhan": "000.00.16.H16-261126-0001", "NgayKetThuc": "2026-12-05T03:00:00"}


def refuse(amqp_url: str, event_type: str) -> None:
    """Make the broker nack every ``event_type`` published on ``igate.events`` (a full queue that rejects)."""
    params = pika.URLParameters(amqp_url)
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        args = {"x-queue-type": "classic", "x-max-length": 0, "x-overflow": "reject-publish"}
        ch.queue_declare("test.refuses", durable=True, arguments=args)
        ch.queue_bind("test.refuses", "igate.events", routing_key=event_type)
    finally:
        conn.close()


def fresh(event_type: str = "dossier.received") -> dict[str, Any]:
    """The shipped example of a type with a new event_id."""
    event = example(event_type)
    event["event_id"] = str(uuid.uuid4())
    return event


def ingress_values(text: str) -> Callable[..., float | None]:
    """Reads one ``igate_bus_ingress_<name>`` sample of a scrape by its labels (None when absent)."""
    samples = metric_samples(text)

    def value(name: str, **labels: str) -> float | None:
        return sample(samples, f"igate_bus_ingress_{name}", **labels)

    return value


def worker_families(text: str) -> list[str]:
    """The bus's families in a scrape that are not the ingress's."""
    return sorted(f for f in families(text) if f.startswith("igate_bus_") and not f.startswith("igate_bus_ingress_"))


def traffic(accepted: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, path, request options, the status it must get): every kind of answer of both doors, in order."""
    bodies = [dumps(e) for e in accepted]
    first = signed(bodies[0])
    forged, plain, huge = dumps(fresh()), dumps(fresh()), b"x" * (1_048_576 + 1)
    invalid = dumps(fresh()).replace(b'"source": "igate"', b'"source": 5')
    unroutable = dumps(fresh("dossier.submitted"))
    wrong_secret = signed(forged, secret="x" * 40)
    land = {"json": LAND_CALL}
    return [
        ("POST", EVENTS, {"content": bodies[0], "headers": first}, 202),
        *(("POST", EVENTS, {"content": b, "headers": signed(b)}, 202) for b in bodies[1:]),
        # the same event signed again (another timestamp) is a duplicate; the same signed request a replay
        ("POST", EVENTS, {"content": bodies[0], "headers": signed(bodies[0], ts=int(time.time()) - 5)}, 200),
        ("POST", EVENTS, {"content": bodies[0], "headers": first}, 409),
        ("POST", EVENTS, {"content": forged, "headers": wrong_secret}, 401),
        ("POST", EVENTS, {"content": forged, "headers": wrong_secret}, 401),
        ("POST", EVENTS, {"content": b"{", "headers": signed(b"{")}, 400),
        ("POST", EVENTS, {"content": plain, "headers": {**signed(plain), "Content-Type": "text/plain"}}, 415),
        ("POST", EVENTS, {"content": huge, "headers": signed(huge)}, 413),
        ("POST", EVENTS, {"content": invalid, "headers": signed(invalid)}, 422),
        ("POST", EVENTS, {"content": unroutable, "headers": signed(unroutable)}, 503),
        ("POST", f"/callbacks/vilis/KetThucHoSo/{VILIS_CODE}", land, 200),
        ("POST", "/callbacks/vilis/KetThucHoSo/wrong-code-wrong-code", land, 401),
        ("GET", ESMS, {"params": {"token": "wrong-token-wrong", "SMSID": "s", "SendStatus": "5"}}, 401),
        ("GET", "/nothing-here", {}, 404),
    ]


def test_every_answer_is_counted_by_endpoint_outcome_and_reason(amqp_url):
    """Accepted, duplicate, replayed, refused for six reasons, one 503, callbacks ▶ each count exactly."""
    bind_capture(amqp_url, "igate.events", routing_key="dossier.received")
    bind_capture(amqp_url, "bus.results", queue=RESULTS)
    refuse(amqp_url, "dossier.submitted")
    accepted = [fresh() for _ in range(3)]
    requests = traffic(accepted)
    with serve(amqp_url) as srv, client(srv) as c:
        answers = [c.request(method, path, **options) for method, path, options, _ in requests]
        text = c.get("/metrics").text
    # what the client saw (guards: each refusal really happened)
    assert [a.status_code for a in answers] == [status for *_, status in requests]
    assert answers[11].json()["error"] == "broker_refused"
    # what reached the broker
    assert sorted(p.message_id for _, p, _ in drain(amqp_url, CAPTURE)) == sorted(e["event_id"] for e in accepted)
    assert len(drain(amqp_url, RESULTS)) == 1

    value = ingress_values(text)
    assert value("requests_total", endpoint=EVENTS, outcome="accepted") == 3
    assert value("requests_total", endpoint=EVENTS, outcome="duplicate") == 1
    assert value("requests_total", endpoint=EVENTS, outcome="refused") == 7
    assert value("requests_total", endpoint=EVENTS, outcome="unavailable") == 1
    assert value("requests_total", endpoint=EVENTS, outcome="error") == 0
    for reason, count in {
        "replayed_request": 1,
        "bad_signature": 2,
        "invalid_json": 1,
        "unsupported_media_type": 1,
        "body_too_large": 1,
        "invalid_event": 1,
    }.items():
        assert value("refusals_total", endpoint=EVENTS, reason=reason) == count, reason
    assert value("unavailable_total", endpoint=EVENTS, reason="broker_refused") == 1
    assert value("request_seconds_count", endpoint=EVENTS, outcome="accepted") == 3
    assert (value("request_seconds_sum", endpoint=EVENTS, outcome="accepted") or 0) > 0
    # every body read in full: all but the one refused by its Content-Length
    assert value("request_body_bytes_count", endpoint=EVENTS) == 11
    assert value("publish_confirm_seconds_count", exchange="igate.events", result="confirmed") == 3
    assert value("publish_confirm_seconds_count", exchange="igate.events", result="failed") == 1
    assert value("publish_confirm_seconds_count", exchange="bus.results", result="confirmed") == 1
    # the callbacks, by route template (never the path with its security code)
    assert value("requests_total", endpoint=VILIS, outcome="accepted") == 1
    assert value("refusals_total", endpoint=VILIS, reason="bad_security_code") == 1
    assert value("request_body_bytes_count", endpoint=VILIS) == 1, "the refused call's body is never read"
    assert value("refusals_total", endpoint=ESMS, reason="bad_token") == 1
    assert value("requests_total", endpoint=ESMS, outcome="accepted") == 0, "every door's series exist from the start"
    assert value("refusals_total", endpoint="(unmatched)", reason="not_found") == 1
    assert VILIS_CODE not in text
    # read at scrape time
    assert value("replay_cache_entries", cache="events") == 3
    assert value("replay_cache_entries", cache="callbacks") == 1
    assert value("replay_cache_evicted_early_total", cache="events") == 0
    assert value("broker_blocked") == 0
    assert value("publish_queue_messages") == 0
    assert (value("publishers_connected") or 0) >= 1
    assert worker_families(text) == []


def test_no_broker_is_counted_as_unavailable_with_its_reason():
    """No broker at all ▶ 503 broker_unavailable, counted; no publisher connected."""
    event = dumps(fresh())
    with serve("amqp://guest:guest@127.0.0.1:1/%2F", reconnect_delay="200ms") as srv, client(srv) as c:
        response = c.post(EVENTS, content=event, headers=signed(event))
        text = c.get("/metrics").text
    assert response.status_code == 503
    assert response.json()["error"] == "broker_unavailable"
    samples = metric_samples(text)
    assert sample(samples, "igate_bus_ingress_requests_total", endpoint=EVENTS, outcome="unavailable") == 1
    assert sample(samples, "igate_bus_ingress_unavailable_total", endpoint=EVENTS, reason="broker_unavailable") == 1
    assert sample(samples, "igate_bus_ingress_publishers_connected") == 0
    assert sample(samples, "igate_bus_ingress_replay_cache_entries", cache="events") == 0


def test_serve_process_exports_ingress_series_and_no_worker_series(amqp_url, sqlite_url, tmp_path):
    """`igate-bus serve` with its ops router and a config of routes ▶ /metrics has the ingress's counts only.

    Before, the ingress repeated the worker's per-route series (processed, retried, queue depth...) at 0.
    """
    bind_capture(amqp_url, "igate.events", routing_key="dossier.received")
    bind_capture(amqp_url, "bus.results", queue=RESULTS)
    refuse(amqp_url, "dossier.submitted")
    config = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9/")
    env = env_for(
        amqp_url,
        sqlite_url,
        config,
        IGATE_BUS_INGRESS_HMAC_SECRET=SECRET,
        IGATE_BUS_VILIS_SECURITY_CODE=VILIS_CODE,
        IGATE_BUS_ESMS_CALLBACK_TOKEN=ESMS_TOKEN,
        IGATE_BUS_IGATE_USERNAME=SIM_USER,
        IGATE_BUS_IGATE_PASSWORD=SIM_PASSWORD,
        IGATE_BUS_OPS_PORT="0",
    )
    good, unroutable = dumps(fresh()), dumps(fresh("dossier.submitted"))
    with serve_process(env, tmp_path / "serve.log") as (_proc, url), httpx.Client(base_url=url, timeout=10) as c:
        statuses = [
            c.post(EVENTS, content=good, headers=signed(good)).status_code,
            c.post(EVENTS, content=good, headers=signed(good, secret="y" * 40)).status_code,
            c.post(EVENTS, content=unroutable, headers=signed(unroutable)).status_code,
            c.get(ESMS, params={"token": ESMS_TOKEN, "SMSID": "m-1", "SendStatus": "5"}).status_code,
        ]
        health = c.get("/health")
        scrape = c.get("/metrics")
    assert statuses == [202, 401, 503, 200]
    assert health.status_code == 200 and "igate" in health.json()["connectors"], "the ops router is mounted"
    assert scrape.headers["content-type"].startswith("text/plain; version=")
    assert [p.message_id for _, p, _ in drain(amqp_url, CAPTURE)] == [json.loads(good)["event_id"]]
    value = ingress_values(scrape.text)
    assert value("requests_total", endpoint=EVENTS, outcome="accepted") == 1
    assert value("refusals_total", endpoint=EVENTS, reason="bad_signature") == 1
    assert value("unavailable_total", endpoint=EVENTS, reason="broker_refused") == 1
    assert value("requests_total", endpoint=ESMS, outcome="accepted") == 1
    assert value("publish_confirm_seconds_count", exchange="bus.results", result="confirmed") == 1
    # each process exports what it does: not one of the worker's series (bus/metrics.py), not even at 0
    assert worker_families(scrape.text) == []
    for worker_series in ("messages_processed", "processing_seconds", "queue_messages", "broker_up"):
        assert f"igate_bus_{worker_series}" not in scrape.text
