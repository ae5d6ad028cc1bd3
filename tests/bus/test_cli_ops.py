# mypy: allow-untyped-defs
"""The operational CLI as a user runs it: a subprocess, real broker, real files; output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from busenv import EXAMPLES, cli, declare_routes, env_for, get_all, write_config

ROOT = Path(__file__).resolve().parents[2]


def _event(event_type: str = "dossier.received") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{event_type}.json").read_text(encoding="utf-8"))
    return data


def test_publish_json_lines_from_stdin_prints_confirmed_ids_and_they_reach_the_route(amqp_url, sqlite_url, tmp_path):
    """`publish -` with JSON lines ▶ each event id printed once, each message in the route queue."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    declare_routes(amqp_url, cfg)
    events = [_event() for _ in range(3)]
    for i, ev in enumerate(events):
        ev["event_id"] = f"00000000-0000-4000-8000-00000000000{i}"
    result = cli(
        "publish",
        "-",
        env=env_for(amqp_url, sqlite_url, cfg),
        stdin="\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [e["event_id"] for e in events]
    queued = get_all(amqp_url, "route.bus-ack")
    assert [p.message_id for p, _ in queued] == [e["event_id"] for e in events]
    assert all(p.delivery_mode == 2 and p.content_type == "application/json" for p, _ in queued)


def test_publish_refuses_the_whole_file_when_one_event_is_invalid(amqp_url, sqlite_url, tmp_path):
    """One bad line ▶ exit 2 with FILE:LINE and the field; nothing at all is published."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    declare_routes(amqp_url, cfg)
    good, bad = _event(), _event()
    bad["payload"]["fees"] = [{"kind": "lephi", "code": "LP", "name": "Lệ phí", "amount_vnd": 1.5, "collect": "truoc"}]
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(good, ensure_ascii=False) + "\n" + json.dumps(bad, ensure_ascii=False) + "\n")
    result = cli("publish", str(path), env=env_for(amqp_url, sqlite_url, cfg))
    assert result.returncode == 2
    assert f"{path}:2: payload.fees.0.amount_vnd" in result.stderr
    assert "Traceback" not in result.stderr
    assert get_all(amqp_url, "route.bus-ack") == []


def test_map_prints_the_adapter_output_without_any_io(tmp_path):
    """`map --route bus-ack` ▶ the AddNoteRequest as JSON, with the dossier code; no broker needed."""
    env = env_for("amqp://nobody:nothing@127.0.0.1:1/%2F", "sqlite:///nonexistent/x.db", ROOT / "config")
    result = cli("map", "--route", "bus-ack", str(EXAMPLES / "dossier.received.json"), env=env)
    assert result.returncode == 0, result.stderr
    header, _, body = result.stdout.partition("\n")
    assert header.startswith("# route bus-ack: igate_ack.dossier_received -> igate.add_note")
    mapped = json.loads(body)
    assert mapped["dossierCode" if "dossierCode" in mapped else "dossier_code"] == _event()["dossier_code"]


def test_map_names_an_unknown_route_and_exits_2(tmp_path):
    """An unknown route ▶ exit 2, the known routes listed, no traceback."""
    env = env_for("amqp://x@127.0.0.1:1/%2F", "sqlite:///x.db", ROOT / "config")
    result = cli("map", "--route", "bus-akc", str(EXAMPLES / "dossier.received.json"), env=env)
    assert result.returncode == 2
    assert "unknown route 'bus-akc'" in result.stderr and "bus-ack" in result.stderr
    assert "Traceback" not in result.stderr


def test_topology_json_lists_every_queue_with_explicit_arguments(tmp_path):
    """`topology --json` ▶ route, retry and dead-letter queues, each quorum queue with every argument set."""
    env = env_for("amqp://x@127.0.0.1:1/%2F", "sqlite:///x.db", ROOT / "config")
    result = cli("topology", "--json", env=env)
    assert result.returncode == 0, result.stderr
    queues = {q["name"]: q for q in json.loads(result.stdout)["queues"]}
    assert {"route.bus-ack", "retry.bus-ack.5s", "retry.bus-ack.1h", "dlq.bus-ack", "unrouted"} <= set(queues)
    args = queues["route.bus-ack"]["arguments"]
    assert args["x-queue-type"] == "quorum"
    assert args["x-delivery-limit"] == 20
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert args["x-overflow"] == "reject-publish"
    assert queues["route.bus-ack"]["bindings"] == [["igate.events", "dossier.received"]]


def test_map_on_a_portal_route_prints_the_soap_envelope_zeep_would_send(tmp_path):
    """`map --route nps-dossier-received` ▶ a SOAP 1.1 envelope with the session header and the record."""
    env = env_for("amqp://x@127.0.0.1:1/%2F", "sqlite:///x.db", ROOT / "config")
    result = cli("map", "--route", "nps-dossier-received", str(EXAMPLES / "dossier.received.json"), env=env)
    assert result.returncode == 0, result.stderr
    assert 'xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"' in result.stdout
    assert "<ns0:madonvi>000.00.16.H16</ns0:madonvi>" in result.stdout
    assert "<ns0:DongBoHoSoMC " in result.stdout
    assert f"<ns0:MaHoSo>{_event()['dossier_code']}</ns0:MaHoSo>" in result.stdout
    assert "<ns0:TrangThaiHoSo>2</ns0:TrangThaiHoSo>" in result.stdout
