"""What every simulator shares: its server on a real socket, its record of effects, its fault switches.

The server is threaded, started, stopped and used in ``with``; faults are drawn from a seeded generator.
A simulator module defines its handler, a :class:`SimServer` subclass naming its log event and its
``Faults`` model (a pydantic model with a ``seed`` field); its simulator class subclasses
``ServedSimulator[Faults]`` with ``_make_server``. The protocol, and what a request records, stay in the
module.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Self, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger(__name__)

#: requests a simulator keeps (the oldest are dropped): a soak must not grow its memory without end
MAX_RECORDED: Final = 100_000

F = TypeVar("F", bound=BaseModel)


def duration_arg(text: str) -> float:
    """``argparse`` type of a duration option (``--token-ttl 5m``): the bus's one parser, a unit required."""
    from config.model import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure_cli_logging() -> None:
    """Log as the bus does (JSON lines, personal data masked) when a simulator runs as ``python -m``.

    A line per request, written a group at a time as the worker's are (``bus/log_buffer.py``): a benchmark
    runs the simulator on the subject's CPUs, and a write per line was its CPU taken from the subject.
    ``IGATE_SIM_LOG_LEVEL`` (default ``info``; ``warning`` leaves the request lines out: the benchmark's rig).
    """
    import os

    from bus.logging import configure_logging

    configure_logging(os.environ.get("IGATE_SIM_LOG_LEVEL", "info"), buffered=True)


class SimServer(ThreadingHTTPServer):
    """The socket server behind a simulator; ``sim`` is the simulator its handlers answer for."""

    daemon_threads = True
    allow_reuse_address = True
    # a bus opens many connections at once; the default backlog of 5 drops bursts of them
    request_queue_size = 128
    #: this simulator's connection-error log event, e.g. ``igate_sim.connection_error``
    error_event: ClassVar[str] = "sim.connection_error"
    sim: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hang up on purpose in fault tests; note it quietly instead of printing a traceback."""
        del request
        log.debug(self.error_event, client=str(client_address))


class QuietHandler(BaseHTTPRequestHandler):
    """A simulator's request handler: HTTP/1.1 keep-alive, no stderr line per request, every method to ``_handle``.

    A subclass implements ``_handle`` (the record is the simulator's log, not the stdlib's line) and may end a
    connection the way a crashed peer would with :meth:`reset_connection`.
    """

    protocol_version = "HTTP/1.1"
    #: an idle keep-alive connection is closed after this long, so handler threads end
    timeout = 30
    #: headers and body go out in separate writes; with Nagle on, delayed ACKs add 40 ms to each reply
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's parameter name
        """Silence the stdlib's per-request stderr line."""

    def do_GET(self) -> None:
        """Dispatch a GET."""
        self._handle()

    def do_POST(self) -> None:
        """Dispatch a POST."""
        self._handle()

    def do_PUT(self) -> None:
        """Dispatch a PUT."""
        self._handle()

    def _handle(self) -> None:
        raise NotImplementedError

    def read_body(self, limit: int) -> bytes | None:
        """The request's body; None when its Content-Length is not a number or is over ``limit``.

        The connection is then closed: the unread body would be taken for the next request.
        """
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit() or int(raw) > limit:
            self.close_connection = True
            return None
        return self.rfile.read(int(raw))

    def send_json(self, status: int, body: Any) -> None:
        """Answer ``body`` as UTF-8 JSON (Vietnamese kept as is, as the real systems send it)."""
        self.send_raw_json(status, json.dumps(body, ensure_ascii=False).encode("utf-8"))

    def send_raw_json(self, status: int, data: bytes) -> None:
        """Answer bytes labelled JSON (a fault's broken or hostile body); a client gone is no error.

        Headers and body go out in one write, as the real systems' servers send a small reply: written
        apart, every reply reached the client as two segments and two wake-ups of its reader.
        """
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            # end_headers() without its flush: the body joins the stdlib's header buffer, flushed once
            self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]  # http.server since 3.3
            self.flush_headers()
        except OSError:
            self.close_connection = True

    def reset_connection(self) -> None:
        """Close with RST and without a word, as a crashed peer or a middlebox would."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True


def run_in_foreground(sim: ServedSimulator[Any], event: str, describe: Callable[[], dict[str, Any]]) -> None:
    """Serve ``sim`` until interrupted, a request logged per line (``igate-bus simulate``).

    Logs ``<event>.listening`` with ``describe()`` once it listens and ``<event>.stopping`` on an interrupt; an
    interrupt while starting stops as cleanly as one while serving.
    """
    sim.log_requests = True
    try:
        sim.start()
        log.info(f"{event}.listening", **describe())  # noqa: G004 - a structlog event name, not a message
        threading.Event().wait()
    except KeyboardInterrupt:
        log.info(f"{event}.stopping")  # noqa: G004 - a structlog event name, not a message
    finally:
        sim.stop()


class ServedSimulator(Generic[F]):
    """Start, stop and ``with`` for a simulator whose server runs in a daemon thread; its record and faults."""

    #: names the serving thread
    thread_name: ClassVar[str] = "sim"
    #: log one line per recorded request; :func:`serve` (a simulator in the foreground) turns it on, while
    #: tests and benchmarks running one in a thread read the record instead and keep their logs quiet
    log_requests: bool = False

    def _init_server(self, host: str, port: int, faults: F) -> None:
        """Call from ``__init__``: where to listen (port 0: a free one, known after :meth:`start`), no faults."""
        self.host = host
        self.port = port
        self._wake = threading.Event()
        self._server: SimServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._no_faults = faults
        self._faults = faults
        self._rng = random.Random()
        self._requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECORDED)
        self._effects: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    @property
    def faults(self) -> F:
        """The faults in force."""
        return self._faults

    def faults_schema(self) -> dict[str, Any]:
        """The JSON schema of the fault switches (``GET /_sim/faults/schema``): every field, type and default."""
        return type(self._no_faults).model_json_schema()

    def _faults_control(self, method: str, path: str, body: bytes) -> tuple[int, Any] | None:
        """``GET/POST /_sim/faults`` and ``GET /_sim/faults/schema``: (status, JSON), or None for other paths."""
        if path == "/_sim/faults/schema" and method == "GET":
            return 200, self.faults_schema()
        if path != "/_sim/faults":
            return None
        if method == "POST":
            try:
                self.set_faults(type(self._no_faults).model_validate_json(body or b"{}"))
            except ValidationError as exc:
                return 400, {"error": str(exc.errors(include_url=False, include_input=False))}
        return 200, self.faults.model_dump(mode="json")

    def set_faults(self, faults: F | None = None, **switches: Any) -> F:
        """Replace the faults (a ``Faults``, or its fields as keywords); a seed restarts the draws."""
        new = faults if faults is not None else type(self._no_faults).model_validate(switches)
        with self._lock:
            self._faults = new
            self._rng = random.Random(getattr(new, "seed", None))
        return new

    def effects_since(self, since: str) -> list[dict[str, Any]]:
        """:meth:`effects` from a ``since`` query parameter (``GET /_sim/effects?since=N``).

        Raises:
            ValueError: ``since`` is not a count (0 or more); its message is the 400 answer's.
        """
        if not since.isdigit():
            raise ValueError("since must be a count of effects (0 or more)")
        return self.effects(int(since))

    def effects(self, since: int = 0) -> list[dict[str, Any]]:
        """Every call that changed the target's state, in order; from the ``since``-th on (0 is the first).

        ``since`` lets a poller take only what is new: a benchmark polling every effect of a long run made
        the simulator serialise thousands of them twice a second, holding its GIL while the measured
        client's calls waited (issue 15).
        """
        with self._lock:
            return [dict(e) for e in self._effects[since:]]

    def _reset_record(self) -> None:
        """Wake hanging requests, then forget requests, effects and faults; call under no lock."""
        self._wake.set()
        self._wake.clear()
        with self._lock:
            self._faults = self._no_faults
            self._rng = random.Random()
            self._requests.clear()
            self._effects.clear()

    def _make_server(self) -> SimServer:
        """The module's server bound to ``(host, port)`` with its handler."""
        raise NotImplementedError

    def start(self) -> Self:
        """Bind and serve in a daemon thread."""
        self._wake.clear()
        server = self._make_server()
        server.sim = self
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging requests and close the socket."""
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_foreground(self, event: str, **fields: Any) -> None:
        """Serve until interrupted (``igate-bus simulate``), logging each request and ``{event}.listening``."""
        run_in_foreground(self, event, lambda: fields)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def simulator_main(argv: list[str] | None, *, name: str, port: int, serve: Callable[[str, int], None]) -> None:
    """``python -m simulators.<name> [--host H] [--port P]``, for a simulator with no other option."""
    parser = argparse.ArgumentParser(prog=f"python -m simulators.{name}", description=f"The {name} simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    args = parser.parse_args(argv)
    configure_cli_logging()
    serve(args.host, args.port)
