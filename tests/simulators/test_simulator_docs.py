"""What a person driving a simulator by hand relies on: its documented fault switches and credentials, its logs.

``docs/simulators.md`` carries a table per simulator generated from its ``Faults`` model; these tests fail
when a field is added without a description, when the doc and the model differ, when a new simulator has
no table, and when the documented default credentials are not the ones in the code. The last tests run
``igate-bus simulate`` as a process and read its stderr: JSON lines from the bus's own logging chain, with
personal data masked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from simulators import igate, nps
from simulators.reference import DOC, FAULT_MODELS, faults_table, render

ROOT = Path(__file__).resolve().parents[2]
CCCD = "066090001234"


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_simulator_with_fault_switches_has_a_table() -> None:
    """A module of simulators/ that defines a ``Faults`` model is in the reference (and so in the doc)."""
    with_faults = {
        p.stem
        for p in (ROOT / "simulators").glob("*.py")
        if re.search(r"^class Faults\(BaseModel\)", p.read_text(encoding="utf-8"), flags=re.MULTILINE)
    }
    assert with_faults == set(FAULT_MODELS)


@pytest.mark.parametrize("name", sorted(FAULT_MODELS))
def test_the_doc_lists_every_field_of_every_faults_model(name: str) -> None:
    """Each field of the model has its row (name, type, default, meaning) in that simulator's table."""
    model = FAULT_MODELS[name]
    start = _doc().index(f"<!-- faults:{name} ")
    table = _doc()[start : _doc().index(f"<!-- /faults:{name} -->")]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_]+)` \|.*$", table, flags=re.MULTILINE)}
    assert set(rows) == set(model.model_fields), "run python -m simulators.reference"
    for field_name, field in model.model_fields.items():
        cells = [c.strip() for c in rows[field_name].strip("|").split("|")]
        assert len(cells) == 4 and all(cells), rows[field_name]
        assert cells[3] == field.description


def test_the_doc_tables_are_what_the_models_generate() -> None:
    """Types, bounds and defaults in the doc are the models' own (regenerating changes nothing)."""
    assert render(_doc()) == _doc(), "docs/simulators.md is stale: run python -m simulators.reference"


def test_a_field_without_a_description_cannot_be_documented() -> None:
    """Every switch must say what it does: the generator refuses a field without a description."""

    class Faults(BaseModel):
        latency_s: float = 0.0

    with pytest.raises(ValueError, match="latency_s has no description"):
        faults_table(Faults)


def test_the_documented_default_credentials_are_the_codes() -> None:
    """The credentials table states what the simulators accept when the environment names none."""
    doc = _doc()
    for module, prefix in ((igate, "IGATE_BUS_IGATE"), (nps, "IGATE_BUS_NPS")):
        name = module.__name__.rsplit(".", 1)[1]
        [row] = [line for line in doc.splitlines() if line.startswith(f"| `{name}` |")]
        assert f"`{module.USERNAME_ENV}`, `{module.PASSWORD_ENV}`" in row
        assert module.USERNAME_ENV.startswith(prefix)
        assert f"| `{module.DEFAULT_USERNAME}` | `{module.DEFAULT_PASSWORD}` |" in row
    assert f"realm `{igate.DEFAULT_REALM}`, client id `{igate.DEFAULT_CLIENT_ID}`" in doc
    assert f"(`madonvi`) `{nps.DEFAULT_MADONVI}`" in doc


@pytest.mark.parametrize(
    ("simulator", "path"), [(igate.IGateSimulator, "/_sim/faults/schema"), (nps.NpsSimulator, "/_sim/faults/schema")]
)
def test_the_fault_schema_is_served(simulator: Any, path: str) -> None:
    """``GET /_sim/faults/schema`` names every field with its default and description, over HTTP."""
    with simulator() as sim:
        base = sim.url if hasattr(sim, "url") else sim.endpoint
        schema = httpx.get(f"{base.split('/lgsp')[0]}{path}", timeout=5).json()
    model = type(sim.faults)
    assert set(schema["properties"]) == set(model.model_fields)
    assert all(p.get("description") for p in schema["properties"].values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _simulate(system: str, port: int, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IGATE_BUS_")}
    args = [sys.executable, "-m", "bus.cli", "simulate", system, "--port", str(port)]
    with (tmp_path / f"{system}.log").open("wb") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env={**base, **env}, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)


def _wait_listening(log: Path, event: str) -> None:
    """Until the simulator has logged that it listens (so an interrupt finds it serving, not starting)."""
    deadline = time.monotonic() + 20
    while event not in log.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, f"no {event} within 20 s: {log.read_text(encoding='utf-8')}"
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_simulate_igate_logs_json_lines_like_the_bus_with_personal_data_masked(tmp_path: Path) -> None:
    """Every stderr line is a JSON object of the bus's chain; a citizen ID in a request is masked; no password."""
    port = _free_port()
    password = "run-it-yourself-9f3k"
    process = _simulate("igate", port, tmp_path, IGATE_BUS_IGATE_PASSWORD=password)
    try:
        _wait_listening(tmp_path / "igate.log", "igate_sim.listening")
        token = httpx.post(
            f"http://127.0.0.1:{port}/auth/realms/digo/protocol/openid-connect/token",
            data={"grant_type": "password", "client_id": "igate-bus", "username": "igate-bus", "password": password},
            timeout=5,
        ).json()["access_token"]
        httpx.get(
            f"http://127.0.0.1:{port}/pa/dossier/search",
            params={"code": CCCD},
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
    finally:
        _stop(process)
    text = (tmp_path / "igate.log").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"igate_sim.listening", "igate_sim.request"} <= {line["event"] for line in lines}
    assert all({"timestamp", "level", "event"} <= set(line) for line in lines)
    [search] = [line for line in lines if line.get("path") == "/pa/dossier/search"]
    assert search["status"] == 200
    assert CCCD[-2:] in json.dumps(search["query"]), "the request line must carry the (masked) query"
    assert CCCD not in text, "a citizen ID reached the simulator's log unmasked"
    assert password not in text


def test_simulate_nps_logs_json_lines(tmp_path: Path) -> None:
    """The portal simulator logs through the same chain: JSON lines, its listening line first."""
    port = _free_port()
    process = _simulate("nps", port, tmp_path)
    try:
        _wait_listening(tmp_path / "nps.log", "nps_sim.listening")
        assert httpx.get(f"http://127.0.0.1:{port}/_sim/faults", timeout=5).json()["mode"] is None
    finally:
        _stop(process)
    lines = [json.loads(line) for line in (tmp_path / "nps.log").read_text(encoding="utf-8").splitlines()]
    assert lines[0]["event"] == "nps_sim.listening"
    assert lines[0]["level"] == "info"


def test_simulate_refuses_a_token_ttl_without_a_unit(tmp_path: Path) -> None:
    """``--token-ttl 300`` is refused as every unitless duration is: exit 2, the parser's words."""
    result = subprocess.run(
        [sys.executable, "-m", "bus.cli", "simulate", "igate", "--token-ttl", "300"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "'300' has no unit" in result.stderr
