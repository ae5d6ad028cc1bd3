# mypy: allow-untyped-defs
"""Test harness for route tests: a config folder, a worker (thread or real process), queue depths, waiting.

Everything is real: the broker (a fresh vhost), the store (a SQLite file or PostgreSQL), the simulator (a
real HTTP server). Nothing here replaces a connector's I/O.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "events"
SIM_USER = "igate-bus"
SIM_PASSWORD = "s3cret-for-tests"

ROUTES_YAML = """\
routes:
  - name: bus-ack
    from: {{exchange: igate.events, events: [dossier.received]}}
    adapter: igate_ack.dossier_received
    to: igate.add_note
    retry: {{backoff: [{backoff}], max_attempts: {max_attempts}}}
    prefetch: {prefetch}
    concurrency: {concurrency}
  - name: results-to-igate
    from: {{exchange: bus.results, events: [vnpost.tracking_updated, dvcqg.sync_result]}}
    adapter: results_to_igate.status_update
    to: igate.update_dossier
    retry: {{backoff: [{backoff}], max_attempts: {max_attempts}}}
  - name: bus-ping
    from: {{exchange: igate.events, events: [bus.ping]}}
    adapter: builtin.ping
    to: noop.send
    emits: bus.pong
    retry: {{backoff: [{backoff}], max_attempts: {max_attempts}}}
    prefetch: {prefetch}
    concurrency: {concurrency}
"""

CONNECTORS_YAML = """\
connectors:
  igate:
    type: igate
    endpoint: {endpoint}
    timeout: {{connect: 1s, read: {read}, total: {total}}}
    breaker: {{fail_max: {fail_max}, reset_timeout: {reset_timeout}}}
    credentials: {{username: IGATE_BUS_IGATE_USERNAME, password: IGATE_BUS_IGATE_PASSWORD}}
    options: {{realm: digo, client_id: igate-bus}}
  noop:
    type: noop
"""


def write_config(
    folder: Path,
    *,
    endpoint: str,
    backoff: str = "300ms, 600ms",
    max_attempts: int = 12,
    prefetch: int = 50,
    concurrency: int = 16,
    read: str = "2s",
    total: str = "3s",
    fail_max: int = 50,
    reset_timeout: str = "1s",
) -> Path:
    """Write routes.yaml and connectors.yaml for tests into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.yaml").write_text(
        ROUTES_YAML.format(backoff=backoff, max_attempts=max_attempts, prefetch=prefetch, concurrency=concurrency)
    )
    (folder / "connectors.yaml").write_text(
        CONNECTORS_YAML.format(
            endpoint=endpoint, read=read, total=total, fail_max=fail_max, reset_timeout=reset_timeout
        )
    )
    return folder


def env_for(amqp_url: str, store_url: str, config_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a worker process needs."""
    env = dict(os.environ)
    env.update(
        {
            "IGATE_BUS_AMQP_URL": amqp_url,
            "IGATE_BUS_STORE_URL": store_url,
            "IGATE_BUS_CONFIG_DIR": str(config_dir),
            "IGATE_BUS_IGATE_USERNAME": SIM_USER,
            "IGATE_BUS_IGATE_PASSWORD": SIM_PASSWORD,
            "IGATE_BUS_HEARTBEAT": "10s",
            "IGATE_BUS_PROCESSES": "1",  # one worker process per ProcessWorker (a test of --processes sets more)
            **extra,
        }
    )
    return env


def cli(
    *args: str, env: dict[str, str], stdin: str | None = None, columns: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``igate-bus ARGS`` as a user runs it: a subprocess with ``env`` (and a fixed terminal width if given)."""
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args],
        env=env if columns is None else {**env, "COLUMNS": str(columns), "TERM": "dumb"},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def example(event_type: str) -> dict[str, Any]:
    """The shipped example event of a type."""
    data: dict[str, Any] = json.loads((EXAMPLES / f"{event_type}.json").read_text())
    return data


def dossier_code(i: int, run: str = "") -> str:
    """The ``i``-th dossier code of a run, in docs/domain.md's form ``{unit}-{yyMMdd}-{NNNN}`` (distinct per run and i).

    A run names a day (from its text), and every 10,000 codes move to the next day, as the counter would.
    """
    day = date(2020, 1, 1) + timedelta(days=zlib.crc32(run.encode()) % 2000 + i // 10_000)
    return f"000.00.16.H16-{day:%y%m%d}-{i % 10_000:04d}"


def received_events(n: int, *, prefix: str = "T") -> list[dict[str, Any]]:
    """``n`` distinct dossier.received events (new event_id and dossier code each; ``prefix`` names the run)."""
    base = example("dossier.received")
    out = []
    for i in range(n):
        ev = json.loads(json.dumps(base))
        ev["event_id"] = str(uuid.uuid4())
        ev["dossier_code"] = dossier_code(i, prefix)
        out.append(ev)
    return out


def ping_events(n: int) -> list[dict[str, Any]]:
    """``n`` bus.ping events."""
    now = datetime.now(UTC).isoformat()
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "bus.ping",
            "occurred_at": now,
            "source": "test",
            "dossier_code": dossier_code(i, "PING"),
            "payload": {"seq": i},
        }
        for i in range(n)
    ]


def declare_routes(amqp_url: str, config_dir: Path) -> None:
    """Declare the topology of a config folder, as `igate-bus topology --declare` does."""
    from bus.wiring import declare_topology, load_app
    from config.settings import Settings

    settings = Settings(amqp_url=amqp_url, config_dir=config_dir)
    declare_topology(settings, load_app(settings).routes)


def publish(amqp_url: str, events: list[dict[str, Any]], *, exchange: str = "igate.events") -> None:
    """Publish with confirms (the bus's own publisher)."""
    from routes.publisher import Publisher

    with Publisher(amqp_url) as pub:
        for _ in pub.publish_many(events, exchange=exchange):
            pass


def publish_raw(
    amqp_url: str,
    body: bytes,
    *,
    routing_key: str,
    content_type: str | None = "application/json",
    message_id: str | None = None,
    exchange: str = "igate.events",
    amqp_type: str | None = "",
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish arbitrary bytes (hostile inputs) with confirms; ``type`` is the routing key unless given."""
    from routes.publisher import Publisher

    props = pika.BasicProperties(
        content_type=content_type,
        delivery_mode=2,
        message_id=message_id,
        type=routing_key if amqp_type == "" else amqp_type,
        headers=headers,
    )
    with Publisher(amqp_url) as pub:
        pub.publish_raw(body, exchange=exchange, routing_key=routing_key, properties=props)


class NoSuchQueue(AssertionError):
    """A test asked about a queue the broker does not have: a wrong name, or a topology never declared."""


def depth(amqp_url: str, queue: str) -> int:
    """Ready messages in a queue.

    Raises:
        NoSuchQueue: the queue does not exist. Counting it as empty would let "every queue is empty" pass
            for a misspelt name or a route whose topology was never declared.
    """
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        try:
            return int(ch.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                raise NoSuchQueue(f"queue {queue!r} does not exist on the broker ({exc.reply_text})") from None
            raise
    finally:
        if conn.is_open:
            conn.close()


def get_all(amqp_url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Take every message out of a queue (acked): (properties, body) pairs."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            out.append((props, body))
    finally:
        conn.close()
    return out


def drained(amqp_url: str, queues: list[str] | tuple[str, ...], *, pause: float = 1.0) -> bool:
    """No message waits in ``queues``, twice ``pause`` seconds apart (one may be in flight between them)."""
    for _ in range(2):
        if any(depth(amqp_url, q) for q in queues):
            return False
        time.sleep(pause)
    return True


def wait_for(cond: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll until ``cond()`` or fail with ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class ThreadWorker:
    """A worker running in a thread of the test process."""

    worker: Any
    app: Any
    thread: threading.Thread = field(init=False)

    def start(self) -> ThreadWorker:
        self.thread = threading.Thread(target=self.worker.run, name="test-worker", daemon=True)
        self.thread.start()
        assert self.worker.wait_ready(30), "worker did not start consuming within 30 s"
        return self

    def stop(self, timeout: float = 60) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        self.app.close()


@contextmanager
def thread_worker(
    amqp_url: str, store_url: str, config_dir: Path, routes: list[str] | None = None
) -> Iterator[ThreadWorker]:
    """Run a worker in a thread for the duration of the block, then stop it gracefully."""
    from bus.wiring import build_worker, load_app
    from config.settings import Settings

    os.environ["IGATE_BUS_IGATE_USERNAME"] = SIM_USER
    os.environ["IGATE_BUS_IGATE_PASSWORD"] = SIM_PASSWORD
    os.environ.setdefault("IGATE_BUS_OPS_PORT", "0")
    settings = Settings(amqp_url=amqp_url, store_url=store_url, config_dir=config_dir, heartbeat="10s")
    app = load_app(settings)
    tw = ThreadWorker(build_worker(app, routes), app).start()
    try:
        yield tw
    finally:
        tw.stop()


class ProcessWorker:
    """A worker as a real OS process (``igate-bus run``), for SIGKILL and SIGTERM tests."""

    def __init__(self, env: dict[str, str], log_path: Path, routes: str | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.routes = routes
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessWorker:
        args = [sys.executable, "-m", "bus.cli", "run"]
        if self.routes:
            args += ["--routes", self.routes]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        return self

    def wait_consuming(self, routes: int, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            return self.log_path.read_text(errors="replace").count('"consuming"') >= routes

        wait_for(ready, timeout=timeout, what="worker consuming")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
