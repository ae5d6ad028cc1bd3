# mypy: allow-untyped-defs, allow-incomplete-defs
"""``igate-bus serve`` as a real process: it starts, accepts a signed event, stops on SIGTERM; and its refusals.

Also the logs: what the ingress writes never holds a body's personal data or a callback's credential.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import httpx
import pytest
from busenv import example
from click.testing import CliRunner
from ingress_harness import (
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
from structlog.testing import capture_logs

from bus.cli_serve import COMMANDS
from bus.cli_serve import serve as serve_command


def test_commands_exported_for_the_cli():
    """bus/cli.py registers serve and sign from COMMANDS."""
    assert [c.name for c in COMMANDS] == ["serve", "sign"]


def test_serve_without_secret_is_one_line_and_exit_2(monkeypatch):
    """No HMAC secret in the environment ▶ exit 2 naming the variable, no traceback, nothing served."""
    monkeypatch.delenv("IGATE_BUS_INGRESS_HMAC_SECRET", raising=False)
    result = CliRunner().invoke(serve_command, ["--port", "0"])
    assert result.exit_code == 2
    assert "IGATE_BUS_INGRESS_HMAC_SECRET (iGate's HMAC secret) is not set" in result.output
    assert "Traceback" not in result.output


def test_serve_bad_setting_is_one_line_and_exit_2(monkeypatch):
    """An invalid IGATE_BUS_INGRESS_* setting ▶ exit 2 naming it."""
    monkeypatch.setenv("IGATE_BUS_INGRESS_HMAC_SECRET", SECRET)
    monkeypatch.setenv("IGATE_BUS_INGRESS_WINDOW", "5s")
    result = CliRunner().invoke(serve_command, ["--port", "0"])
    assert result.exit_code == 2
    assert "environment variable IGATE_BUS_INGRESS_WINDOW: 5s is too short: at least 30s" in result.output


@pytest.mark.parametrize(("value", "refusal"), [("300", "'300' has no unit"), ("5 m", "'5 m' is not a duration")])
def test_serve_refuses_a_duration_without_its_unit(monkeypatch, value, refusal):
    """IGATE_BUS_INGRESS_WINDOW=300 could be seconds or milliseconds: refused, as in routes.yaml, exit 2."""
    monkeypatch.setenv("IGATE_BUS_INGRESS_HMAC_SECRET", SECRET)
    monkeypatch.setenv("IGATE_BUS_INGRESS_WINDOW", value)
    result = CliRunner().invoke(serve_command, ["--port", "0"])
    assert result.exit_code == 2
    assert f"igate-bus: environment variable IGATE_BUS_INGRESS_WINDOW: {refusal}" in result.output
    assert "Traceback" not in result.output


def test_serve_process_accepts_a_signed_event_and_stops_on_sigterm(amqp_url, tmp_path):
    """`serve` in its own process: 202 for a signed event (stored on the broker), then SIGTERM ▶ graceful stop."""
    bind_capture(amqp_url, "igate.events")
    env = {
        "IGATE_BUS_AMQP_URL": amqp_url,
        "IGATE_BUS_INGRESS_HMAC_SECRET": SECRET,
        "IGATE_BUS_OPS_PORT": "0",
        "IGATE_BUS_STORE_URL": f"sqlite:///{tmp_path / 'store.sqlite3'}",
    }
    with serve_process(env, tmp_path / "serve.log") as (proc, url):
        event = example("dossier.received")
        event["event_id"] = str(uuid.uuid4())
        body = dumps(event)
        response = httpx.post(f"{url}/events", content=body, headers=signed(body), timeout=10)
        assert response.status_code == 202, response.text
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM, as systemd expects)
        assert proc.wait(30) in {0, -signal.SIGTERM}
    assert [p.message_id for _, p, _ in drain(amqp_url)] == [event["event_id"]]
    lines = [json.loads(x) for x in (tmp_path / "serve.log").read_text().splitlines() if x.startswith("{")]
    accepted = [x for x in lines if x.get("event") == "ingress_request" and x.get("outcome") == "accepted"]
    assert accepted, "the accepted request was not logged"
    assert accepted[0]["event_id"] == event["event_id"]
    assert accepted[0]["dossier_code"] == event["dossier_code"]
    assert any(x.get("event") == "ingress_stopped" for x in lines), "no graceful shutdown (publisher not closed)"


def test_logs_hold_no_personal_data_and_no_credential(amqp_url):
    """Accepted and refused requests log ids and outcomes only: no CCCD, phone, name, security code."""
    bind_capture(amqp_url, "igate.events")
    event = example("dossier.received")
    event["event_id"] = str(uuid.uuid4())
    applicant = event["payload"]["applicant"]
    body = dumps(event)
    with serve(amqp_url) as srv, client(srv) as c, capture_logs() as logs:
        assert c.post("/events", content=body, headers=signed(body)).status_code == 202
        bad = body.replace(b'"source": "igate"', b'"source": 5')
        assert c.post("/events", content=bad, headers=signed(bad)).status_code == 422
        land = {"SoBienNhan": event["dossier_code"], "NgayKetThuc": "2026-12-05T03:00:00", "GhiChu": applicant["id_no"]}
        assert c.post(f"/callbacks/vilis/KetThucHoSo/{VILIS_CODE}", json=land).status_code == 200
        time.sleep(0.1)
    text = json.dumps(logs, ensure_ascii=False, default=str)
    assert any(x.get("outcome") == "accepted" for x in logs)
    for secret in (applicant["id_no"], applicant["phone"], applicant["name"], VILIS_CODE, SECRET):
        assert secret not in text, f"{secret[:4]}… reached the logs"
