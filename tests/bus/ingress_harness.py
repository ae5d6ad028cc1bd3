# mypy: allow-untyped-defs, allow-incomplete-defs
"""Test harness for the HTTP ingress: the app served by a real uvicorn on a socket, signed requests, queues.

Everything is real: uvicorn in a thread on a free port (httpx's ``serve_in_thread``), an httpx client, the
broker (a private vhost on the shared node, or the chaos node). Tests assert on what reached the broker by
reading a capture queue bound to the exchange, never on what they sent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import httpx
import pika
import uvicorn
from busenv import ROOT, wait_for
from opsenv import free_port

from bus.ingress import IngressSettings, create_app
from bus.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from config.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from fastapi import FastAPI

SECRET = "test-hmac-secret-6f1c0a9e2b7d4c3a8e5f1b0d9c7a6e4f"
VILIS_CODE = "vilis-security-code-3a7e9c1f"
ESMS_TOKEN = "esms-callback-token-8d2b6f0a"
ENV = {
    "IGATE_BUS_INGRESS_HMAC_SECRET": SECRET,
    "IGATE_BUS_VILIS_SECURITY_CODE": VILIS_CODE,
    "IGATE_BUS_ESMS_CALLBACK_TOKEN": ESMS_TOKEN,
}
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
CAPTURE = "test.capture"
#: ``igate-bus serve`` as its own process runs it
RUN_SERVE = "from bus.cli_serve import serve; serve()"


class ServerThread:
    """uvicorn serving ``app`` in a daemon thread on a socket bound to a free port; lifespan included."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", loop="asyncio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn died while starting"
            assert time.monotonic() < deadline, "uvicorn did not start within 15 s"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def make_app(amqp_url: str, *, env: dict[str, str] | None = None, observe: bool = False, **ingress: Any) -> FastAPI:
    """The ingress app on ``amqp_url`` with test secrets; ``ingress`` overrides IngressSettings fields."""
    settings = Settings(amqp_url=amqp_url, heartbeat="10s", blocked_connection_timeout="10s")
    factory = ingress.pop("publisher_factory", None)
    return create_app(
        settings,
        ingress=IngressSettings(**ingress),
        publisher_factory=factory,
        observe=observe,
        environ=ENV if env is None else env,
    )


@contextmanager
def serve(amqp_url: str, **kwargs: Any) -> Iterator[ServerThread]:
    """Serve the ingress on ``amqp_url`` for the block."""
    with ServerThread(make_app(amqp_url, **kwargs)) as server:
        yield server


def signed(body: bytes, *, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    """Headers of a correctly signed JSON request (signed now unless ``ts`` is given)."""
    timestamp = int(time.time()) if ts is None else ts
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def dumps(event: dict[str, Any]) -> bytes:
    """An event as iGate would send it (UTF-8 JSON)."""
    return json.dumps(event, ensure_ascii=False).encode()


def _ctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def private_vhost() -> Iterator[str]:
    """A fresh vhost on the shared broker for a whole module (the conftest fixture is per test), then deleted."""
    vhost = f"igb-ingress-{uuid.uuid4().hex[:10]}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{quote(vhost, safe='')}"
    finally:
        _ctl("delete_vhost", vhost)


def _connection(amqp_url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(amqp_url)
    params.socket_timeout = 5
    params.blocked_connection_timeout = 10
    return pika.BlockingConnection(params)


def bind_capture(
    amqp_url: str, exchange: str, *, queue: str = CAPTURE, quorum: bool = False, routing_key: str = "#"
) -> None:
    """Declare the exchanges (as the ingress does) and a queue bound to ``exchange`` with ``routing_key``.

    With a narrower key than ``#``, an event of another type is unroutable: the broker refuses the ingress's
    mandatory publish (503 ``broker_refused``).
    """
    from routes.topology import declare_exchanges

    conn = _connection(amqp_url)
    try:
        ch = conn.channel()
        declare_exchanges(ch)
        args = {"x-queue-type": "quorum"} if quorum else {"x-queue-type": "classic"}
        ch.queue_declare(queue, durable=True, arguments=args)
        ch.queue_bind(queue, exchange, routing_key=routing_key)
    finally:
        conn.close()


def drain(amqp_url: str, queue: str = CAPTURE) -> list[tuple[Any, Any, bytes]]:
    """Take every message out of ``queue``: (method, properties, body) triples."""
    conn = _connection(amqp_url)
    out: list[tuple[Any, Any, bytes]] = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((method, props, body))
    finally:
        conn.close()


def client(server: ServerThread, *, timeout: float = 10.0) -> httpx.Client:
    """An httpx client for the server."""
    return httpx.Client(base_url=server.url, timeout=timeout)


@contextmanager
def serve_process(env: dict[str, str], log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``igate-bus serve`` in its own process with ``env`` on a free port, output to ``log_path``.

    Yields (the process, its base URL) once ``/openapi.json`` answers; kills it after the block if it still
    runs.
    """
    port = free_port()
    full_env = {**os.environ, **env, "IGATE_BUS_INGRESS_PORT": str(port)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_SERVE], env=full_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                assert proc.poll() is None, log_path.read_text()
                try:
                    return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, timeout=30, interval=0.2, what="serve listening")
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
