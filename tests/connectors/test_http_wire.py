"""The REST transport (connectors/_http_wire.py) and HttpClient over it, against a raw TCP server on a real socket.

The server is written here, on ``socket`` and ``threading``, so that it can send exact bytes (hostile
replies, a reply split at chosen points, a connection closed at a chosen moment) and record exactly what
it received: each request's raw bytes, the first ``recv`` of each request, and how many connections it
accepted. Every assertion about keep-alive counts the server's accepts; every hostile case has its wall
time bounded (:func:`wallclock.assert_within`), with a design figure far from what the bug would cost.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from concurrently import run_concurrently
from wallclock import assert_within

from config.model import ConnectorSpec
from connectors import _http_wire as wire
from connectors._http import ERROR_BODY_BYTES, HttpClient
from schemas.errors import TargetRejected, TargetTimeout, TargetUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


# --------------------------------------------------------------------------------------------- the server


class Peer:
    """One accepted connection, server side: reads requests, sends exact bytes."""

    def __init__(self, sock: socket.socket, server: RawServer, index: int) -> None:
        self.sock = sock
        self.server = server
        #: which accepted connection this is (0 for the first)
        self.index = index
        self._buf = b""

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65_536)
        except OSError:
            return b""

    def read_request(self) -> bytes | None:
        """The next request's raw bytes (head and ``Content-Length`` body), or None at EOF; recorded."""
        first = self._buf or None
        while b"\r\n\r\n" not in self._buf:
            data = self._recv()
            if not data:
                return None
            if first is None:
                first = data
            self._buf += data
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        length = int(header_of(head, "content-length") or 0)
        while len(rest) < length:
            data = self._recv()
            if not data:
                return None
            rest += data
        raw = head + b"\r\n\r\n" + rest[:length]
        self._buf = rest[length:]
        self.server.record(raw, first or b"", self.index)
        return raw

    def send(self, data: bytes) -> None:
        """Write ``data`` (raises OSError once the client has gone)."""
        self.sock.sendall(data)

    def drip(self, data: bytes, pause: float) -> None:
        """Write ``data`` one byte at a time, ``pause`` seconds apart, until done or the client has gone."""
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])
            if self.server.stopping.wait(pause):
                return

    def wait_eof(self, limit: float = 10.0) -> bool:
        """Whether the client closed the connection (EOF or reset) within ``limit`` seconds (nothing else read)."""
        self.sock.settimeout(limit)
        try:
            return self.sock.recv(65_536) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class RawServer:
    """A threaded raw TCP server on 127.0.0.1: one thread per connection runs ``handler``."""

    handler: Callable[[Peer], None]
    accepts: int = 0
    #: each request's raw bytes, in arrival order
    requests: list[bytes] = field(default_factory=list)
    #: the first ``recv`` of each request (what arrived in the client's first segment)
    first_recvs: list[bytes] = field(default_factory=list)
    #: which accepted connection each request came on
    conn_of: list[int] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="raw-server-accept", daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, raw: bytes, first: bytes, index: int) -> None:
        with self._lock:
            self.requests.append(raw)
            self.first_recvs.append(first)
            self.conn_of.append(index)

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self.stopping.is_set():
                    sock.close()
                    return
                index = self.accepts
                self.accepts += 1
                self._socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(Peer(sock, self, index),), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, peer: Peer) -> None:
        try:
            self.handler(peer)
        except OSError:
            pass  # the client went away: what a hostile handler waits for
        finally:
            peer.close()

    def stop(self) -> None:
        """Close the listener and every connection; wait for the threads."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._acceptor.join(5)
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Peer], None]], RawServer]]:
    """Start raw servers with a handler each; all are stopped afterwards."""
    made: list[RawServer] = []

    def start(handler: Callable[[Peer], None]) -> RawServer:
        server = RawServer(handler)
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop()


def header_of(raw: bytes, name: str) -> str | None:
    """A header's value in a raw request head (the first one), or None."""
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode("latin-1")
    return None


def path_of(raw: bytes) -> str:
    """The request target of a raw request."""
    return raw.split(b"\r\n", 1)[0].split(b" ")[1].decode()


def reply(body: bytes = b"ok", status: str = "200 OK", *, extra: str = "", version: str = "HTTP/1.1") -> bytes:
    """A reply with a ``Content-Length`` (and ``extra`` header lines, each ending in CRLF)."""
    return f"{version} {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def keep_alive(answer: Callable[[bytes, Peer], bytes]) -> Callable[[Peer], None]:
    """A handler answering every request of the connection with ``answer(request, peer)``."""

    def handler(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            peer.send(answer(request, peer))

    return handler


def ok_or_stall(first: bytes) -> Callable[[Peer], None]:
    """A handler answering ``/ok`` with a 200; any other request gets ``first``, then silence until the client
    leaves (or 20 s): only the client can end the exchange."""

    def handler(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            if path_of(request) == "/ok":
                peer.send(reply())
                continue
            peer.send(first)
            peer.wait_eof(20)
            return

    return handler


# --------------------------------------------------------------------------------------------- the clients


@pytest.fixture
def pools() -> Iterator[Callable[[RawServer], wire.Pool]]:
    """``wire.Pool`` objects on raw servers; all cleared afterwards."""
    made: list[wire.Pool] = []

    def make(server: RawServer) -> wire.Pool:
        pool = wire.Pool("http", "127.0.0.1", server.port, maxsize=8, ssl_context=None)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.clear()


def fetch(
    pool: wire.Pool,
    target: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    read_timeout: float = 5.0,
) -> tuple[wire.Response, bytes]:
    """One exchange through ``pool``: the response and its whole body; the connection given back."""
    request = wire.encode_request(method, target, pool.host_header, headers or {}, body)
    response = pool.exchange(request, connect_timeout=2.0, read_timeout=read_timeout, head=method == "HEAD")
    chunks = []
    try:
        while chunk := response.read1(65_536):
            chunks.append(chunk)
    except BaseException:
        response.release(complete=False)  # closes it: unread bytes must not serve the next request
        raise
    response.release(complete=True)
    return response, b"".join(chunks)


def make_spec(endpoint: str, **timeouts: Any) -> ConnectorSpec:
    """A connector spec for a raw server (short timeouts unless ``timeouts`` says otherwise)."""
    return ConnectorSpec.model_validate(
        {"type": "x", "endpoint": endpoint, "timeout": {"connect": "1s", "read": "2s", "total": "5s", **timeouts}}
    )


@pytest.fixture
def clients() -> Iterator[Callable[..., HttpClient]]:
    """HttpClients on raw servers; all closed afterwards."""
    made: list[HttpClient] = []

    def make(server: RawServer | str, **timeouts: Any) -> HttpClient:
        url = server if isinstance(server, str) else server.url
        client = HttpClient("wire", make_spec(url, **timeouts))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def assert_unavailable_as_the_effect(client: HttpClient) -> None:
    """A POST with and without an effect ▶ TargetUnavailable whose ``maybe_applied`` is the request's effect."""
    for effect in (True, False):
        with pytest.raises(TargetUnavailable) as caught:
            client.request("POST", "/x", deadline=later(), effect=effect)
        assert caught.value.maybe_applied is effect


def assert_bad_reply_soon(server: RawServer, pools: Any, what: str) -> None:
    """Fetching from ``server`` raises BadReply within half a second (its design figure): ``what`` it sent."""
    started = time.monotonic()
    with pytest.raises(wire.BadReply):
        fetch(pools(server))
    assert_within(time.monotonic() - started, 0.5, what)


def later(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------- keep-alive


class TestKeepAlive:
    """A connection is reused only when its reply was read to the end and the server did not ask to close."""

    def test_fifty_sequential_requests_use_one_connection(self, serve: Any, pools: Any) -> None:
        """50 GETs through one pool ▶ one accept, 50 requests on it, each answered with its own path."""
        server = serve(keep_alive(lambda req, _peer: reply(path_of(req).encode())))
        pool = pools(server)
        for i in range(50):
            response, body = fetch(pool, f"/n/{i}")
            assert (response.status, body) == (200, f"/n/{i}".encode())
        assert server.accepts == 1
        assert [path_of(r) for r in server.requests] == [f"/n/{i}" for i in range(50)]

    def test_fifty_requests_through_http_client_use_one_connection(self, serve: Any, clients: Any) -> None:
        """The same through HttpClient (POSTs with JSON bodies) ▶ one accept, 50 requests."""
        server = serve(
            keep_alive(lambda _req, _peer: reply(b'{"ok":true}', extra="Content-Type: application/json\r\n"))
        )
        client = clients(server)
        for i in range(50):
            got = client.request("POST", f"/p/{i}", deadline=later(), effect=True, json_body={"i": i})
            assert got.body == b'{"ok":true}'
        assert server.accepts == 1
        assert [r.split(b"\r\n\r\n", 1)[1] for r in server.requests] == [f'{{"i":{i}}}'.encode() for i in range(50)]

    @pytest.mark.parametrize(
        "first",
        [
            reply(b"bye", extra="Connection: close\r\n"),
            reply(b"bye", version="HTTP/1.0"),
        ],
        ids=["connection-close", "http-1.0"],
    )
    def test_a_reply_that_closes_is_not_reused(self, serve: Any, pools: Any, first: bytes) -> None:
        """A reply asking to close (Connection: close, or HTTP/1.0) ▶ the next request opens a new connection.

        The server keeps answering on the old connection, so a client that reused it would show one accept.
        """
        server = serve(keep_alive(lambda req, _peer: first if path_of(req) == "/first" else reply()))
        pool = pools(server)
        assert fetch(pool, "/first")[1] == b"bye"
        assert fetch(pool, "/second")[1] == b"ok"
        assert server.accepts == 2
        assert server.conn_of == [0, 1]

    def test_an_error_reply_not_read_to_its_end_is_not_reused(self, serve: Any, clients: Any) -> None:
        """A 400 whose body is over ERROR_BODY_BYTES is read only in part ▶ its connection is closed; a small
        400 (read whole) keeps its connection: the contrast shows the count is the reuse rule's."""
        big = b"e" * (ERROR_BODY_BYTES * 4)
        server = serve(keep_alive(lambda req, _peer: reply(big if "big" in path_of(req) else b"no", "400 Bad Request")))
        client = clients(server)
        with pytest.raises(TargetRejected) as small_error:
            client.request("GET", "/small", deadline=later(), effect=False)
        with pytest.raises(TargetRejected):
            client.request("GET", "/small", deadline=later(), effect=False)
        assert server.accepts == 1, "a 400 read whole keeps its connection"
        with pytest.raises(TargetRejected) as big_error:
            client.request("GET", "/big", deadline=later(), effect=False)
        server.handler = keep_alive(lambda _req, _peer: reply())
        assert client.request("GET", "/after", deadline=later(), effect=False).body == b"ok"
        assert server.accepts == 2
        assert server.conn_of == [0, 0, 0, 1]
        assert small_error.value.code == big_error.value.code == "400"


class TestStaleIdleConnection:
    """A keep-alive connection the server closed, or wrote to unasked, while it sat idle is not used again."""

    @staticmethod
    def _one_reply_then_close(peer: Peer) -> None:
        if peer.read_request() is not None:
            peer.send(reply())
            time.sleep(0.05)
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _reply_then_an_unasked_one(peer: Peer) -> None:
        """The first connection answers its request, then sends a second reply nobody asked for; others answer."""
        while (request := peer.read_request()) is not None:
            peer.send(reply(path_of(request).encode()))
            if peer.index == 0:
                time.sleep(0.05)  # after the client has read its reply and pooled the connection
                peer.send(reply(b"unasked"))

    def test_a_connection_closed_by_the_server_while_idle_is_replaced(self, serve: Any, pools: Any) -> None:
        """The server closes each connection after its reply ▶ the next request (0.3 s later, well inside any
        idle limit) goes on a new connection, 200."""
        server = serve(self._one_reply_then_close)
        pool = pools(server)
        assert fetch(pool, "/1")[1] == b"ok"
        time.sleep(0.3)
        assert fetch(pool, "/2")[1] == b"ok"
        assert server.accepts == 2
        assert server.conn_of == [0, 1]

    def test_bytes_sent_unasked_to_an_idle_connection_are_never_read_as_the_next_reply(
        self, serve: Any, pools: Any
    ) -> None:
        """A second reply arrives on the idle connection 50 ms after the first ▶ the next request (0.2 s later)
        goes on a new connection and reads its own reply, never the unasked one."""
        server = serve(self._reply_then_an_unasked_one)
        pool = pools(server)
        assert fetch(pool, "/1")[1] == b"/1"
        time.sleep(0.2)
        assert fetch(pool, "/2")[1] == b"/2"
        assert fetch(pool, "/3")[1] == b"/3"
        assert server.conn_of == [0, 1, 1]

    @pytest.mark.parametrize("handler", ["_one_reply_then_close", "_reply_then_an_unasked_one"])
    def test_guard_without_the_check_the_same_sequence_goes_wrong(
        self, serve: Any, pools: Any, monkeypatch: pytest.MonkeyPatch, handler: str
    ) -> None:
        """Guard: with the check stubbed out, the dead connection is written into (ConnectionLost), or the
        unasked reply is read as the next request's. The faults the tests above survive are real."""
        monkeypatch.setattr(wire.Connection, "looks_closed", lambda _self: False)
        server = serve(getattr(self, handler))
        pool = pools(server)
        assert fetch(pool, "/1")[1] in {b"ok", b"/1"}
        time.sleep(0.3)
        if handler == "_one_reply_then_close":
            with pytest.raises(wire.ConnectionLost):
                fetch(pool, "/2")
            assert server.accepts == 1
        else:
            assert fetch(pool, "/2")[1] == b"unasked"


# --------------------------------------------------------------------------------------------- the request


class TestRequestBytes:
    """A request goes out in one write, with its Host and Content-Length right."""

    def test_a_small_request_arrives_in_one_segment(self, serve: Any, pools: Any) -> None:
        """A POST with headers and a small body ▶ the server's first recv holds the line, the headers and the
        body: one ``sendall`` (with TCP_NODELAY a second write would be a second segment)."""
        server = serve(keep_alive(lambda _req, _peer: reply()))
        pool = pools(server)
        body = b'{"note":"H\xe1\xbb\x87 th\xe1\xbb\x91ng"}'
        for i in range(5):
            fetch(pool, f"/notes/{i}", method="POST", headers={"X-Key": f"k-{i}"}, body=body)
        assert len(server.requests) == 5
        for i, (raw, first) in enumerate(zip(server.requests, server.first_recvs, strict=True)):
            assert first == raw, f"request {i} arrived in pieces: first recv {first!r}"
            assert raw.startswith(f"POST /notes/{i} HTTP/1.1\r\n".encode())
            assert header_of(raw, "Host") == f"127.0.0.1:{server.port}"
            assert header_of(raw, "Content-Length") == str(len(body))
            assert header_of(raw, "X-Key") == f"k-{i}"
            assert raw.endswith(b"\r\n\r\n" + body)

    def test_http_client_request_arrives_in_one_segment(self, serve: Any, clients: Any) -> None:
        """Through HttpClient, a JSON POST with a query ▶ one first recv holding it all, Host and length right."""
        server = serve(keep_alive(lambda _req, _peer: reply(b"{}")))
        client = clients(server)
        client.request("POST", "/pa/x", deadline=later(), effect=True, json_body={"a": "é"}, params={"q": 1})
        (raw,) = server.requests
        assert server.first_recvs == [raw]
        assert raw.startswith(b"POST /pa/x?q=1 HTTP/1.1\r\n")
        assert header_of(raw, "Host") == f"127.0.0.1:{server.port}"
        assert header_of(raw, "Content-Length") == str(len('{"a":"é"}'.encode()))
        assert raw.endswith('\r\n\r\n{"a":"é"}'.encode())

    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
    def test_a_body_less_post_declares_length_zero(self, serve: Any, clients: Any, method: str) -> None:
        """A POST/PUT/PATCH with no body ▶ ``Content-Length: 0`` (a server must not wait for a body)."""
        server = serve(keep_alive(lambda _req, _peer: reply()))
        clients(server).request(method, "/empty", deadline=later(), effect=True)
        (raw,) = server.requests
        assert raw.startswith(f"{method} /empty HTTP/1.1\r\n".encode())
        assert header_of(raw, "Content-Length") == "0"
        assert raw.endswith(b"\r\n\r\n")

    def test_a_get_declares_no_length(self, serve: Any, clients: Any) -> None:
        """A GET without a body ▶ no ``Content-Length`` at all."""
        server = serve(keep_alive(lambda _req, _peer: reply()))
        clients(server).request("GET", "/x", deadline=later(), effect=False)
        (raw,) = server.requests
        assert header_of(raw, "Content-Length") is None


BAD_HEADERS = [
    pytest.param({"X-Token": "abc\r\nX-Admin: 1"}, id="value-crlf"),
    pytest.param({"X-Token": "abc\nX-Admin: 1"}, id="value-lf"),
    pytest.param({"X-Token": "abc\rX-Admin: 1"}, id="value-cr"),
    pytest.param({"X-Token": "abc\x00def"}, id="value-nul"),
    pytest.param({"X-Token": "abc\x7f"}, id="value-del"),
    pytest.param({"X Token": "abc"}, id="name-space"),
    pytest.param({"X-Token:": "abc"}, id="name-colon"),
    pytest.param({"X-Token\r\nX-Admin": "1"}, id="name-crlf"),
    pytest.param({"": "abc"}, id="name-empty"),
    pytest.param({"Host": "evil.example"}, id="own-host"),
    pytest.param({"content-length": "0"}, id="own-content-length"),
    pytest.param({"Transfer-Encoding": "chunked"}, id="own-transfer-encoding"),
]
BAD_TARGETS = [
    pytest.param("/a b", id="space"),
    pytest.param("/a\r\nX-Admin: 1", id="crlf"),
    pytest.param("/a\x01b", id="control"),
    pytest.param("/a\x00", id="nul"),
    pytest.param("/hồ-sơ", id="non-ascii"),
    pytest.param("/a\tb", id="tab"),
]


class TestInjectionRefusedBeforeSending:
    """A header or target that would break the framing is refused, and nothing reaches the server."""

    @pytest.mark.parametrize("headers", BAD_HEADERS)
    def test_encode_request_refuses_a_bad_header(self, headers: dict[str, str]) -> None:
        with pytest.raises(wire.InvalidRequest):
            wire.encode_request("GET", "/", "h", headers, None)

    @pytest.mark.parametrize("target", BAD_TARGETS)
    def test_encode_request_refuses_a_bad_target(self, target: str) -> None:
        with pytest.raises(wire.InvalidRequest):
            wire.encode_request("GET", target, "h", {}, None)

    def test_encode_request_accepts_what_is_legal(self) -> None:
        """Guard: a tab and Latin-1 in a value, every token character in a name ▶ encoded, so the refusals
        above are the checks', not a refusal of everything."""
        raw = wire.encode_request("GET", "/a/b?c=d&e=%20", "h:1", {"X-!#$%&'*+-.^_`|~9": "a\tb caf\xe9"}, None)
        assert raw == b"GET /a/b?c=d&e=%20 HTTP/1.1\r\nHost: h:1\r\nX-!#$%&'*+-.^_`|~9: a\tb caf\xe9\r\n\r\n"

    @pytest.mark.parametrize("headers", BAD_HEADERS)
    def test_http_client_sends_nothing_for_a_bad_header(
        self, serve: Any, clients: Any, headers: dict[str, str]
    ) -> None:
        """▶ TargetRejected(code="invalid-request"), and the server saw no connection and no byte."""
        server = serve(keep_alive(lambda _req, _peer: reply()))
        client = clients(server)
        with pytest.raises(TargetRejected) as caught:
            client.request("POST", "/x", deadline=later(), effect=True, headers=headers, json_body={"a": 1})
        assert caught.value.code == "invalid-request"
        time.sleep(0.05)
        assert (server.accepts, server.requests) == (0, [])
        assert client.request("GET", "/fine", deadline=later(), effect=False).status == 200  # guard: server works
        assert server.accepts == 1

    @pytest.mark.parametrize("tail", ["/a\r\nX-Admin: 1", "/a\tb", "/a b", "/hồ-sơ", "/a\x00"])
    def test_http_client_sends_nothing_for_a_bad_absolute_url(self, serve: Any, clients: Any, tail: str) -> None:
        """An absolute URL is refused whole: urlsplit would drop a CR, LF or tab and send another path."""
        server = serve(keep_alive(lambda _req, _peer: reply()))
        client = clients(server)
        with pytest.raises(TargetRejected) as caught:
            client.request("GET", server.url + tail, deadline=later(), effect=False)
        assert caught.value.code == "invalid-request"
        time.sleep(0.05)
        assert (server.accepts, server.requests) == (0, [])
        assert client.request("GET", server.url + "/fine", deadline=later(), effect=False).status == 200  # guard
        assert server.accepts == 1

    @pytest.mark.parametrize("target", BAD_TARGETS)
    def test_http_client_sends_nothing_for_a_bad_target(self, serve: Any, clients: Any, target: str) -> None:
        server = serve(keep_alive(lambda _req, _peer: reply()))
        client = clients(server)
        with pytest.raises(TargetRejected) as caught:
            client.request("GET", target, deadline=later(), effect=False)
        assert caught.value.code == "invalid-request"
        time.sleep(0.05)
        assert (server.accepts, server.requests) == (0, [])
        assert client.request("GET", "/fine", deadline=later(), effect=False).status == 200
        assert server.accepts == 1


# --------------------------------------------------------------------------------------------- hostile replies


def after_request(then: Callable[[Peer], object]) -> Callable[[Peer], None]:
    """A handler that reads one request, then does ``then``."""

    def handler(peer: Peer) -> None:
        if peer.read_request() is not None:
            then(peer)

    return handler


class TestHostileHeaders:
    """A reply whose head is not HTTP, or never ends, or is over the limits ▶ BadReply, at once."""

    def test_a_header_block_that_never_ends_is_cut(self, serve: Any, pools: Any) -> None:
        """Header lines streamed forever (each well formed) ▶ BadReply once past the limit, not a hang;
        the server saw the client hang up."""
        sent = [0]

        def endless(peer: Peer) -> None:
            peer.send(b"HTTP/1.1 200 OK\r\n")
            line = b"X-Filler: " + b"f" * 990 + b"\r\n"
            while not peer.server.stopping.is_set():
                peer.send(line)
                sent[0] += len(line)

        server = serve(after_request(endless))
        started = time.monotonic()
        with pytest.raises(wire.BadReply):
            fetch(pools(server), read_timeout=10.0)
        assert_within(time.monotonic() - started, 0.5, "an endless header block")
        assert sent[0] >= wire.MAX_HEADER_BYTES, "the server never sent past the limit"

    def test_one_header_line_that_never_ends_is_cut(self, serve: Any, pools: Any) -> None:
        """One header value streamed forever with no CRLF (llhttp never reports it) ▶ BadReply by the byte count."""

        def endless(peer: Peer) -> None:
            peer.send(b"HTTP/1.1 200 OK\r\nX-Long: ")
            while not peer.server.stopping.is_set():
                peer.send(b"v" * 4096)

        assert_bad_reply_soon(serve(after_request(endless)), pools, "an endless header line")

    def test_more_than_max_headers_is_refused(self, serve: Any, pools: Any) -> None:
        """MAX_HEADERS + 1 short headers (far under the byte limit) ▶ BadReply; exactly MAX_HEADERS ▶ read."""
        limit = "".join(f"X-H{i}: {i}\r\n" for i in range(wire.MAX_HEADERS - 1))  # + Content-Length
        one_more = limit + "X-Last: 1\r\n"
        server = serve(keep_alive(lambda req, _p: reply(extra=one_more if "more" in path_of(req) else limit)))
        pool = pools(server)
        response, body = fetch(pool, "/limit")  # Content-Length + MAX_HEADERS - 1 others
        assert (len(response.headers), body) == (wire.MAX_HEADERS, b"ok")
        with pytest.raises(wire.BadReply):
            fetch(pool, "/more")

    @pytest.mark.parametrize(
        "answer",
        [
            pytest.param(b"garbage\r\n\r\n", id="garbage"),
            pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="bad-status"),
            pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", id="two-lengths"),
            pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", id="negative-length"),
            pytest.param(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", id="no-colon"),
            pytest.param(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", id="101"
            ),
            pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", id="101-bare"),
        ],
    )
    def test_a_reply_that_is_not_http_is_refused(self, serve: Any, pools: Any, answer: bytes) -> None:
        """▶ BadReply at once (the server keeps the connection open: only the parser can end the call)."""
        server = serve(ok_or_stall(answer))
        started = time.monotonic()
        with pytest.raises(wire.BadReply):
            fetch(pools(server), read_timeout=10.0)
        assert_within(time.monotonic() - started, 0.5, "a non-HTTP reply")
        assert len(server.requests) == 1

    def test_http_client_maps_a_non_http_reply_to_unavailable(self, serve: Any, clients: Any) -> None:
        """▶ TargetUnavailable whose maybe_applied is the request's effect."""
        server = serve(keep_alive(lambda _req, _peer: b"garbage\r\n\r\n"))
        assert_unavailable_as_the_effect(clients(server))
        assert len(server.requests) == 2


class TestInterimReplies:
    """``100 Continue`` is skipped and the real reply read."""

    def test_100_then_200_in_one_packet(self, serve: Any, pools: Any) -> None:
        server = serve(keep_alive(lambda _r, _p: b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"real")))
        pool = pools(server)
        for _ in range(3):
            response, body = fetch(pool)
            assert (response.status, body) == (200, b"real")
        assert server.accepts == 1

    def test_100_then_200_in_separate_packets(self, serve: Any, pools: Any, clients: Any) -> None:
        """The 100 alone, a pause, then the 200 split in two ▶ the 200 and its body, on a reused connection."""

        def answer(peer: Peer) -> None:
            while peer.read_request() is not None:
                peer.send(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
                time.sleep(0.05)
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Le")
                time.sleep(0.05)
                peer.send(b"ngth: 4\r\n\r\nreal")

        server = serve(answer)
        pool = pools(server)
        for _ in range(2):
            response, body = fetch(pool)
            assert (response.status, body) == (200, b"real")
            assert "x-interim" not in response.headers
        got = clients(server).request("GET", "/c", deadline=later(), effect=False)
        assert (got.status, got.body) == (200, b"real")
        assert server.accepts == 2  # one for the pool, one for the client

    def test_endless_interim_replies_are_cut(self, serve: Any, pools: Any) -> None:
        """100 Continue streamed forever ▶ BadReply by the byte count, not a hang."""

        def endless(peer: Peer) -> None:
            while not peer.server.stopping.is_set():
                peer.send(b"HTTP/1.1 100 Continue\r\n\r\n" * 100)

        assert_bad_reply_soon(serve(after_request(endless)), pools, "endless interim replies")


class TestBodies:
    """Bodies framed every way HTTP/1.1 allows, read whole; a short one is a lost connection."""

    def test_trailing_bytes_after_a_reply_are_not_read_and_the_connection_not_reused(
        self, serve: Any, pools: Any
    ) -> None:
        """A reply and the start of a second one in the same packet ▶ the first body intact, the extra bytes
        never served to the next request: it goes on a new connection."""
        extra = reply(b"SMUGGLED")
        server = serve(keep_alive(lambda req, _p: reply(b"first") + extra if path_of(req) == "/1" else reply(b"next")))
        pool = pools(server)
        response, body = fetch(pool, "/1")
        assert (response.status, body) == (200, b"first")
        response, body = fetch(pool, "/2")
        assert body == b"next"
        assert server.conn_of == [0, 1]

    def test_trailing_bytes_after_a_closing_reply(self, serve: Any, pools: Any) -> None:
        """The same after a ``Connection: close`` reply (llhttp refuses data after it) ▶ the body intact."""
        first = reply(b"first", extra="Connection: close\r\n") + reply(b"SMUGGLED")
        server = serve(keep_alive(lambda req, _p: first if path_of(req) == "/1" else reply(b"next")))
        pool = pools(server)
        assert fetch(pool, "/1")[1] == b"first"
        assert fetch(pool, "/2")[1] == b"next"
        assert server.conn_of == [0, 1]

    def test_trailing_garbage_after_a_reply(self, serve: Any, pools: Any) -> None:
        """A reply and bytes that are not HTTP in the same packet ▶ the body intact, the connection dropped."""
        server = serve(
            keep_alive(lambda req, _p: reply(b"first") + b"\x00junk\r\n" if path_of(req) == "/1" else reply(b"next"))
        )
        pool = pools(server)
        assert fetch(pool, "/1")[1] == b"first"
        assert fetch(pool, "/2")[1] == b"next"
        assert server.conn_of == [0, 1]

    def test_trailing_bytes_through_http_client(self, serve: Any, clients: Any) -> None:
        extra = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUG"
        server = serve(keep_alive(lambda req, _p: reply(b"first") + extra if path_of(req) == "/1" else reply(b"next")))
        client = clients(server)
        assert client.request("GET", "/1", deadline=later(), effect=False).body == b"first"
        assert client.request("GET", "/2", deadline=later(), effect=False).body == b"next"
        assert server.conn_of == [0, 1]

    def test_a_chunked_body_split_across_packets_is_read_whole(self, serve: Any, pools: Any) -> None:
        """Chunks split mid size line, mid data and mid CRLF, with an extension and a trailer ▶ the whole
        body; the connection is reused (the reply was read to its end)."""
        pieces = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhel",
            b"lo\r\n1",
            b"0;ext=1\r\n0123456789abcdef\r",
            b"\n3\r\n, w\r\n",
            b"0\r\nX-Trailer: t\r\n",
            b"\r\n",
        ]

        def answer(peer: Peer) -> None:
            while peer.read_request() is not None:
                for piece in pieces:
                    peer.send(piece)
                    time.sleep(0.01)

        server = serve(answer)
        pool = pools(server)
        for _ in range(2):
            _response, body = fetch(pool)
            assert body == b"hello0123456789abcdef, w"
        assert server.accepts == 1

    @pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
    def test_a_close_delimited_body_is_read_whole(self, serve: Any, pools: Any, version: str) -> None:
        """No Content-Length, no chunking: the body ends with the connection ▶ read whole, not reused."""

        def answer(peer: Peer) -> None:
            if peer.read_request() is not None:
                peer.send(f"{version} 200 OK\r\nContent-Type: text/plain\r\n\r\npart1-".encode())
                time.sleep(0.05)
                peer.send(b"part2-" * 1000)
                time.sleep(0.05)
                peer.send(b"end")

        server = serve(answer)
        pool = pools(server)
        assert fetch(pool)[1] == b"part1-" + b"part2-" * 1000 + b"end"
        assert fetch(pool)[1].endswith(b"end")
        assert server.accepts == 2

    def test_a_body_cut_short_is_a_lost_connection(self, serve: Any, pools: Any, clients: Any) -> None:
        """Content-Length 100, 10 bytes, close ▶ ConnectionLost; HttpClient: TargetUnavailable(maybe_applied=effect)."""
        server = serve(after_request(lambda peer: peer.send(reply(b"x" * 100)[:-90])))
        with pytest.raises(wire.ConnectionLost):
            fetch(pools(server))
        with pytest.raises(TargetUnavailable) as caught:
            clients(server).request("POST", "/x", deadline=later(), effect=True)
        assert caught.value.maybe_applied is True
        assert len(server.requests) == 2

    def test_a_chunked_body_cut_short_is_a_lost_connection(self, serve: Any, pools: Any) -> None:
        server = serve(
            after_request(lambda peer: peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"))
        )
        with pytest.raises(wire.ConnectionLost):
            fetch(pools(server))
        assert len(server.requests) == 1

    def test_the_server_closing_without_a_byte_is_a_lost_connection(self, serve: Any, pools: Any, clients: Any) -> None:
        """The server reads the request and closes ▶ ConnectionLost; HttpClient: TargetUnavailable, maybe_applied
        as the effect (the server had the request)."""
        server = serve(after_request(lambda _peer: None))
        with pytest.raises(wire.ConnectionLost):
            fetch(pools(server))
        assert_unavailable_as_the_effect(clients(server))
        assert len(server.requests) == 3


# --------------------------------------------------------------------------------------------- time


class TestTimeouts:
    """A silent or dripping server costs the read timeout or the deadline, never more."""

    def test_a_server_that_never_answers_times_out(self, serve: Any, pools: Any) -> None:
        """The server reads the request and stays silent (for 20 s) ▶ ReadTimedOut after the 0.5 s read timeout."""
        server = serve(after_request(lambda peer: peer.wait_eof(20)))
        started = time.monotonic()
        with pytest.raises(wire.ReadTimedOut):
            fetch(pools(server), read_timeout=0.5)
        elapsed = time.monotonic() - started
        assert elapsed >= 0.45, "the timeout fired before its time"
        assert_within(elapsed, 0.5, "a read timeout of 0.5 s")
        assert len(server.requests) == 1

    def test_http_client_maps_silence_to_target_timeout(self, serve: Any, clients: Any) -> None:
        """▶ TargetTimeout (maybe_applied) after the spec's 0.5 s read timeout; the connection is not reused."""
        server = serve(ok_or_stall(b""))
        client = clients(server, read="0.5s", total="10s")
        started = time.monotonic()
        with pytest.raises(TargetTimeout) as caught:
            client.request("POST", "/silent", deadline=later(10), effect=True)
        assert_within(time.monotonic() - started, 0.5, "a read timeout of 0.5 s")
        assert caught.value.maybe_applied is True
        assert client.request("GET", "/ok", deadline=later(), effect=False).body == b"ok"
        assert server.conn_of == [0, 1]

    def test_a_drip_fed_body_ends_at_the_deadline(self, serve: Any, clients: Any) -> None:
        """One body byte every 0.2 s (each read well within the 5 s read timeout) ▶ TargetTimeout at the 1 s
        deadline; the server had not finished (guard: the fault lasted past the deadline)."""
        dripped = [0]

        def drip(peer: Peer) -> None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                peer.send(b"x")
                dripped[0] += 1
                if peer.server.stopping.wait(0.2):
                    return

        server = serve(after_request(drip))
        client = clients(server, read="5s", total="1s")
        started = time.monotonic()
        with pytest.raises(TargetTimeout):
            client.request("GET", "/drip", deadline=later(1.0), effect=False)
        assert_within(time.monotonic() - started, 1.0, "a 1 s deadline")
        assert dripped[0] < 100

    def test_a_stalled_body_is_cut_by_the_watchdog(self, serve: Any, clients: Any) -> None:
        """Headers and one byte, then silence (under the 8 s read timeout) ▶ the watchdog shuts the socket:
        TargetTimeout at the 1 s deadline, far before the read timeout; the connection is not reused."""
        server = serve(ok_or_stall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nx"))
        client = clients(server, read="8s", total="1s")
        started = time.monotonic()
        with pytest.raises(TargetTimeout):
            client.request("GET", "/stall", deadline=later(1.0), effect=False)
        assert_within(time.monotonic() - started, 1.0, "a 1 s deadline")
        assert client.request("GET", "/ok", deadline=later(), effect=False).body == b"ok"
        assert server.conn_of == [0, 1]

    @pytest.mark.parametrize(
        "head",
        [
            pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: " + b"s" * 50 + b"\r\n\r\nok", id="header"),
            pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" * 3 + reply(), id="interim-replies"),
        ],
    )
    def test_a_drip_fed_header_block_ends_at_the_deadline(self, serve: Any, clients: Any, head: bytes) -> None:
        """A whole reply dripped one byte every 0.1 s (~10 s; each read within the 5 s read timeout, the head far
        under the byte limits) ▶ TargetTimeout at the 1 s deadline, not a 200 once the head is in."""
        server = serve(after_request(lambda peer: peer.drip(head, 0.1)))
        client = clients(server, read="5s", total="1s")
        started = time.monotonic()
        with pytest.raises(TargetTimeout):
            client.request("GET", "/drip-head", deadline=later(1.0), effect=False)
        assert_within(time.monotonic() - started, 1.0, "a 1 s deadline")
        assert len(server.requests) == 1

    def test_a_finished_request_s_deadline_never_shuts_its_pooled_connection(self, serve: Any, clients: Any) -> None:
        """Requests with a 0.2 s deadline, each reused connection idle past the previous one's deadline ▶ every
        request succeeds on the one connection: the watchdog is disarmed (and the connection detached) before
        it goes back to the pool."""
        server = serve(keep_alive(lambda _req, _peer: reply()))
        client = clients(server)
        for _ in range(3):
            assert client.request("POST", "/x", deadline=later(0.2), effect=True).body == b"ok"
            time.sleep(0.3)
        assert server.accepts == 1
        assert len(server.requests) == 3


class TestConnect:
    """Nothing listening: the request never left."""

    def test_nothing_listening(self, clients: Any) -> None:
        port = free_port()
        pool = wire.Pool("http", "127.0.0.1", port, maxsize=2, ssl_context=None)
        started = time.monotonic()
        with pytest.raises(wire.ConnectFailed):
            pool.exchange(
                wire.encode_request("GET", "/", pool.host_header, {}, None),
                connect_timeout=1.0,
                read_timeout=1.0,
                head=False,
            )
        with pytest.raises(TargetUnavailable) as caught:
            clients(f"http://127.0.0.1:{port}").request("POST", "/x", deadline=later(), effect=True)
        assert caught.value.maybe_applied is False
        assert_within(time.monotonic() - started, 1.0, "two refused connects")

    def test_a_tls_handshake_that_never_ends_is_bounded_by_the_connect_timeout(self) -> None:
        """A server that accepts and then says nothing ▶ ConnectFailed once the connect timeout is spent (the
        connect and the handshake share it), not a read timeout later and not never."""
        listener = socket.create_server(("127.0.0.1", 0))
        held: list[socket.socket] = []
        acceptor = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
        acceptor.start()
        pool = wire.Pool(
            "https", "127.0.0.1", listener.getsockname()[1], maxsize=2, ssl_context=ssl.create_default_context()
        )
        started = time.monotonic()
        try:
            with pytest.raises(wire.ConnectFailed, match="cannot open the connection"):
                pool.exchange(
                    wire.encode_request("GET", "/", pool.host_header, {}, None),
                    connect_timeout=0.5,
                    read_timeout=30.0,
                    head=False,
                )
            assert_within(time.monotonic() - started, 0.5 + 1.0, "a silent TLS handshake")
            assert time.monotonic() - started >= 0.45
        finally:
            acceptor.join(2)
            for sock in (*held, listener):
                sock.close()


# --------------------------------------------------------------------------------------------- headers


class TestReplyHeaders:
    """Header names are case-insensitive; a repeated header's values are joined."""

    ANSWER = (
        b"HTTP/1.1 200 OK\r\nCONTENT-type: application/json\r\nX-Dup: a\r\nContent-Length: 2\r\n"
        b"x-dup: b\r\nX-DUP: c\r\nX-Empty:\r\n\r\n{}"
    )

    def test_wire_headers(self, serve: Any, pools: Any) -> None:
        server = serve(keep_alive(lambda _r, _p: self.ANSWER))
        response, body = fetch(pools(server))
        headers = response.headers
        assert body == b"{}"
        assert headers.get("Content-Type") == headers.get("content-type") == "application/json"
        assert headers["CONTENT-TYPE"] == "application/json"
        assert "Content-Type" in headers and "content-type" in headers
        assert headers.get("X-Dup") == "a, b, c"
        assert headers.get("x-empty") == ""
        assert headers.get("X-Missing") is None and headers.get("X-Missing", "d") == "d"
        assert "X-Missing" not in headers

    def test_http_client_reply_headers(self, serve: Any, clients: Any) -> None:
        server = serve(keep_alive(lambda _r, _p: self.ANSWER))
        got = clients(server).request("GET", "/h", deadline=later(), effect=False)
        assert got.headers.get("Content-Type") == got.headers.get("content-type") == "application/json"
        assert got.headers["X-DUP"] == "a, b, c"


# --------------------------------------------------------------------------------------------- threads


def test_eight_threads_share_one_client(serve: Any, clients: Any) -> None:
    """8 threads x 50 requests through one HttpClient ▶ each request arrives exactly once (by its path),
    each reply is the one for its own request, and at most 8 connections were opened."""
    server = serve(keep_alive(lambda req, _p: reply(path_of(req).encode())))
    client = clients(server)
    wrong: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait(5)
            for i in range(50):
                path = f"/t{t}/r{i}"
                got = client.request("GET", path, deadline=later(), effect=False)
                if got.body != path.encode():
                    wrong.append(f"{path} got {got.body!r}")
        except BaseException as exc:
            errors.append(exc)

    run_concurrently(work, [(t,) for t in range(8)], timeout=30)
    assert errors == [] and wrong == []
    paths = sorted(path_of(r) for r in server.requests)
    assert paths == sorted(f"/t{t}/r{i}" for t in range(8) for i in range(50))
    assert 1 <= server.accepts <= 8


# --------------------------------------------------------------------------------------------- redirects


def test_a_redirect_body_cut_short_closes_its_connection(serve: Any, clients: Any) -> None:
    """A 302 whose body ends early (the server half-closes) while HttpClient drains it ▶ TargetUnavailable,
    and the client closes that connection at once, not when the garbage collector finds the socket (then an
    unclosed-socket ResourceWarning): the server, still reading, sees the client's EOF."""
    client_closed: list[bool] = []

    def cut(peer: Peer) -> None:
        peer.send(reply(b"r" * 100, "302 Found", extra="Location: /final\r\n")[:-90])
        peer.sock.shutdown(socket.SHUT_WR)
        client_closed.append(peer.wait_eof(2.0))

    server = serve(after_request(cut))
    client = clients(server)
    with pytest.raises(TargetUnavailable) as caught:
        client.request("GET", "/r", deadline=later(), effect=False)
    assert "closed before the reply's end" in str(caught.value)
    deadline = later(3.0)
    while not client_closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client_closed == [True], "the client kept the redirect's connection open"
    assert [path_of(r) for r in server.requests] == ["/r"]
