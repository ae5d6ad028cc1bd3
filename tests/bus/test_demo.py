# mypy: allow-untyped-defs
"""``igate-bus demo`` leaves the broker as it found it, counts every dead letter, and prints their kinds.

The demo runs as a user runs it (a subprocess) against the shared broker; the broker is read through the
management API before and after. Other test runs create and delete their own ``igb-*`` vhosts meanwhile, so
those are left out of the comparison; the default vhost ``/`` and every other vhost must be exactly as before.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
import yaml
from busenv import wait_for

from bus.demo import VHOST_PREFIX
from routes.broker_admin import ManagementApi
from routes.model import binding_matches

ROOT = Path(__file__).resolve().parents[2]
BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"


def broker_state() -> tuple[set[str], dict[str, int]]:
    """Vhosts (other test runs' left out) and every queue of ``/`` with its depth."""
    with ManagementApi.for_broker(BROKER) as api:
        vhosts = {v for v in api.vhosts() if not v.startswith("igb-")}
        names = [q.name for q in api.queues()]
    conn = pika.BlockingConnection(pika.URLParameters(BROKER))
    try:
        depths = {name: int(conn.channel().queue_declare(name, passive=True).method.message_count) for name in names}
    finally:
        conn.close()
    return vhosts, depths


def demo_vhosts() -> list[str]:
    with ManagementApi.for_broker(BROKER) as api:
        return [v for v in api.vhosts() if v.startswith(VHOST_PREFIX)]


def run(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    with (tmp_path / "out.txt").open("w") as out:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "bus.cli", "demo", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,  # its var/demo.log goes here, not into the repository
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", "HOME": str(tmp_path)},
        )


def test_a_demo_run_leaves_the_broker_as_it_found_it_and_counts_every_dead_letter(tmp_path):
    """Vhosts and `/` unchanged afterwards; the summary counts each broken event once per route binding it."""
    assert not demo_vhosts(), "a demo vhost is left over from an earlier run"
    before = broker_state()
    proc = run(tmp_path, "--dossiers", "10")
    assert proc.wait(180) == 0, (tmp_path / "out.txt").read_text()
    out = (tmp_path / "out.txt").read_text()
    assert broker_state() == before
    assert not demo_vhosts()

    routes = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text(encoding="utf-8"))["routes"]
    takers = sum(
        1
        for r in routes
        if r.get("enabled", True) and any(binding_matches(k, "dossier.received") for k in r["from"].get("events", []))
    )
    assert takers >= 2, "the demo's point: one broken event, a dead letter in each route that binds it"
    expected = 3 * takers + 1
    assert f"{expected} of {expected} expected" in out, out
    assert out.count("[invalid]") == 3 * takers, out  # rich printed the kind, it did not eat it as markup
    assert out.count("[unrouted]") == 1, out
    assert "ok: every event delivered once" in out
    assert "Nguyễn Thị Hương" not in out and "066190012345" not in out
    assert "amqp://guest:***@127.0.0.1" in out, out  # the broker is named, its password hidden
    assert "guest:guest" not in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_demo_removes_its_vhost(tmp_path, sig):
    """Ctrl-C or SIGTERM mid-run ▶ exit 130, the worker stopped, the demo's vhost deleted."""
    before = broker_state()
    proc = run(tmp_path, "--dossiers", "20000")
    try:
        wait_for(lambda: bool(demo_vhosts()), timeout=60, what="the demo's vhost")
        out = tmp_path / "out.txt"
        wait_for(lambda: "igate-bus demo" in out.read_text(), timeout=60, what="the demo to start publishing")
        time.sleep(1)
        proc.send_signal(sig)
        assert proc.wait(90) == 130, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "interrupted" in (tmp_path / "out.txt").read_text()
    assert not demo_vhosts()
    assert broker_state() == before
