"""The README's "Run it yourself" session works as written: its shell blocks, run in order, in bash.

What a newcomer copies: the exports, the simulators, the topology, the worker, the ingress, a signed post,
the effects at both simulators, the dossier followed by its correlation_id, ``status``, and the stop. The
only changes made to the text are where it would collide with a machine running other tests: the ports
(8600, 8601, 8602 become free ones, in the blocks and in a copy of the shipped connectors.yaml), the
broker (a fresh vhost through ``IGATE_BUS_AMQP_URL``, which the README says may be exported) and the
folder it runs in (a temporary one holding links to the virtualenv and the examples).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PORTS = ("8600", "8601", "8602", "8610")
#: the example event the README posts, and the correlation id it follows
CODE = "000.00.16.H16-261126-0001"
CORRELATION = "5842e439-b01d-517c-90a7-a83e8e6c5d3c"


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Run it yourself")
    return text[start : text.index("\n## ", start + 1)]


def _blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", _section(), flags=re.DOTALL)


def _free_ports(n: int) -> list[str]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [str(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _moved(text: str, ports: dict[str, str]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"(?<![0-9]){old}(?![0-9])", new, text)
    return text


def test_the_section_has_the_four_steps() -> None:
    """Exports, starts in order, a signed post, a stop: the test below runs exactly these."""
    blocks = _blocks()
    assert len(blocks) == 4
    exports, starts, post, stop = blocks
    for name in ("IGATE_BUS_IGATE_PASSWORD", "IGATE_BUS_NPS_PASSWORD", "IGATE_BUS_INGRESS_HMAC_SECRET"):
        assert f"export {name}=" in exports or f" {name}=" in exports
    order = [starts.index(c) for c in ("simulate igate", "simulate nps", "topology --declare", "run ", "serve ")]
    assert order == sorted(order), "simulators, topology, worker, ingress: in that order"
    assert "igate-bus sign" in post
    assert "kill" in stop
    assert "`simulator-only`" in _section(), "the simulators' default password is stated"


def test_the_session_runs_end_to_end(amqp_url: str, tmp_path: Path) -> None:
    """Run in bash: 202, a note and a status update at iGate, the record at the portal, three routes'
    lines under one correlation_id, status naming the routes, every process stopped by the last block."""
    ports = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
    script = _moved("\n".join(_blocks()), ports)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).resolve().parents[1])
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    connectors = config / "connectors.yaml"
    connectors.write_text(_moved(connectors.read_text(encoding="utf-8"), ports), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGATE_BUS_")}
    env.update(
        IGATE_BUS_AMQP_URL=amqp_url,
        IGATE_BUS_CONFIG_DIR=str(config),
        IGATE_BUS_OPS_PORT=ports["8610"],
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:  # the session hung: stop it and every job it started, then report
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate(timeout=30)
    logs = {p.name: p.read_text(encoding="utf-8", errors="replace") for p in (tmp_path / "var").glob("*.log")}
    where = f"\n--- output ---\n{output}\n--- worker ---\n{logs.get('worker.log', '')[-3000:]}"

    assert '"status":"accepted"' in output.replace(" ", ""), where
    assert f'"dossier_code": "{CODE}"' in output and '"type": "note"' in output and '"type": "status"' in output, where
    assert '"service": "DongBoHoSoMC"' in output, where
    followed = [line for line in output.splitlines() if CORRELATION in line and '"processed"' in line]
    routes = {re.search(r'"route": "([a-z-]+)"', line).group(1) for line in followed}  # type: ignore[union-attr]
    assert routes == {"bus-ack", "nps-dossier-received", "results-to-igate"}, where
    assert "bus-ack" in output.split(CORRELATION)[-1], "status printed the routes" + where
    for name in ("sim-igate.log", "sim-nps.log", "worker.log", "ingress.log"):
        assert logs.get(name, "").startswith("{"), f"{name} is not JSON lines{where}"
        assert "change-me-igate" not in logs[name], f"a password reached {name}"
    assert '"worker_stopped"' in logs["worker.log"], "the last block stopped the worker gracefully" + where
