"""What every simulator shares: a threaded HTTP server on a real socket, started, stopped and used in ``with``.

A simulator module defines its handler and a :class:`SimServer` subclass naming its log event, and its
simulator class subclasses :class:`ServedSimulator` with ``_make_server``; the record, the faults and the
protocol stay in the module.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any, ClassVar, Self

import structlog

log = structlog.get_logger(__name__)


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


class ServedSimulator:
    """Start, stop and ``with`` for a simulator whose server runs in a daemon thread."""

    #: names the serving thread
    thread_name: ClassVar[str] = "sim"

    def _init_server(self, host: str, port: int) -> None:
        """Call from ``__init__``: where to listen (port 0: a free one, known after :meth:`start`)."""
        self.host = host
        self.port = port
        self._wake = threading.Event()
        self._server: SimServer | None = None
        self._thread: threading.Thread | None = None

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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
