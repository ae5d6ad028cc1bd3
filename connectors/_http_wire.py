"""HTTP/1.1 on the wire for :mod:`connectors._http`: keep-alive sockets and llhttp's parser, nothing more.

Why not urllib3 (issue 15): per request urllib3 and ``http.client`` build a connection wrapper, a file object
over the socket, an ``email`` header parser, a response object and a timeout object, and poll the socket
before reusing it and before every read (Python's socket timeouts are a ``poll`` before each call). Measured
on this machine, one thread, a GET of 377 bytes from the iGate simulator, 2,000 calls: 302-308 µs of CPU per
call through a urllib3 pool against 64-75 µs here (``httptools``, the binding of Node's llhttp parser that
uvicorn uses). In the worker each of those extra system calls also hands the GIL to another thread.

What is kept from the library, and what is ours:

- **Parsing is llhttp's** (:mod:`httptools`): status line, headers, ``Content-Length`` and chunked bodies,
  and its refusals of malformed replies (:class:`BadReply`). Nothing here splits HTTP by hand.
- **A request is written once** (request line, headers and body in one ``sendall``) with ``TCP_NODELAY``.
  Header names and values and the request target are checked for control characters first
  (:class:`InvalidRequest`): a token or key holding CR/LF must never become a second header.
- **Timeouts**: the connect timeout bounds the connect and the TLS handshake together; a read timeout per read. On a
  plain socket the read and write timeouts are the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO``, set only when
  they change), so a read is one system call; a TLS socket uses Python's timeout. The total deadline is the
  caller's (:mod:`connectors._http` arms a watchdog that shuts the socket; :meth:`Pool.exchange` hands it the
  connection before writing, so the head is under the deadline too).
- **Keep-alive**: a connection goes back to its origin's idle list only when its reply was read to the end
  and the server did not ask to close. Every idle connection is checked before reuse (a zero-timeout poll
  on a poll object made once per connection, under a microsecond): a server's keep-alive timeout closes it
  on its side, and a request written into that would look like a connection lost after sending; and bytes
  a server sent unasked while it sat idle (a second reply, say) would be read as the next request's reply.

Errors (the caller maps them to :mod:`schemas.errors`): :class:`ConnectFailed` (the request never left),
:class:`ReadTimedOut`, :class:`ConnectionLost` (closed or reset after the request was written, or a write
that failed part way), :class:`BadReply` (not HTTP), :class:`InvalidRequest` (refused before sending).
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Final, overload

import httptools

if TYPE_CHECKING:
    from collections.abc import Callable

#: bytes asked of the socket per read
RECV_BYTES: Final = 65_536
#: a reply's header block is refused past this many bytes (a hostile server could stream headers forever)
MAX_HEADER_BYTES: Final = 65_536
#: header lines a reply may have
MAX_HEADERS: Final = 200

_ILLEGAL_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed in a value
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: a request target (or an absolute URL before it is split): printable ASCII, no space, no control character
VISIBLE_ASCII: Final = re.compile(r"[\x21-\x7e]+")
#: headers :func:`encode_request` writes itself; a caller's own would frame the request twice
_FRAMING_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})


class WireError(Exception):
    """A failure of the exchange; the subclass says in which phase."""


class ConnectFailed(WireError):
    """No connection (DNS, refused, connect timeout, TLS handshake): the request never left."""


class ReadTimedOut(WireError):
    """No bytes within the read (or write) timeout."""


class ConnectionLost(WireError):
    """The connection closed or failed after (part of) the request was written."""


class BadReply(WireError):
    """The reply is not HTTP/1.x as llhttp reads it, or its header block is over the limits."""


class InvalidRequest(WireError):
    """The request would carry a control character in its target or a header: refused before sending."""


class Headers(dict[str, str]):
    """A reply's headers, names lower-cased; a repeated header's values joined with ``", "``."""

    @overload  # type: ignore[override]
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str) -> str: ...
    def get(self, key: str, default: str | None = None) -> str | None:
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


def encode_request(method: str, target: str, host: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """The request's bytes: line, headers (``Host`` and ``Content-Length`` added) and body.

    Raises:
        InvalidRequest: a method, target, header name or value that would break the framing.
    """
    if not _TOKEN.fullmatch(method):
        raise InvalidRequest("the method is not an HTTP token")
    if not VISIBLE_ASCII.fullmatch(target):
        raise InvalidRequest("the request target has a space, a control or a non-ASCII character")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidRequest(f"header name {name[:40]!r} is not an HTTP token")
        if name.lower() in _FRAMING_HEADERS:  # a second one would make the peer and a proxy read two requests
            raise InvalidRequest(f"header {name} is the wire's own (it frames the request)")
        if _ILLEGAL_VALUE.search(value):
            raise InvalidRequest(f"header {name} has a control character in its value")
        lines.append(f"{name}: {value}")
    if body is not None or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body or b'')}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidRequest("a header value is not Latin-1 (encode it first)") from None
    return head + body if body else head


class _Parse:
    """llhttp's callbacks: what the reply being read has told so far (an interim 1xx reply is skipped)."""

    __slots__ = (
        "chunks",
        "complete",
        "header_bytes",
        "headers",
        "headers_done",
        "keep_alive",
        "parser",
        "status",
        "trailing",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.trailing = False
        self.keep_alive = False
        self.on_message_begin()

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the reply: never read as a reply, and the connection is not reused
            self.trailing = True
            return
        self.headers = Headers()
        self.header_bytes = 0
        self.headers_done = False
        self.complete = False
        self.chunks.clear()
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.trailing:
            return
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            raise BadReply("the reply's header block is over the limit")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = dict.get(self.headers, key)
        dict.__setitem__(self.headers, key, text if old is None else f"{old}, {text}")

    def on_headers_complete(self) -> None:
        if self.trailing:
            return
        self.status = self.parser.get_status_code()
        if self.status == 101:
            raise BadReply("the server switched protocols")
        self.headers_done = not 100 <= self.status < 200  # an interim reply: the real one follows

    def on_body(self, body: bytes) -> None:
        if not self.trailing:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if not self.trailing and self.headers_done:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is over


class Connection:
    """One keep-alive connection to an origin; used by one thread at a time (taken from its pool)."""

    __slots__ = ("_buf", "_poll", "_timeout", "_view", "sock", "tls")

    def __init__(self, sock: socket.socket, *, tls: bool) -> None:
        self.sock = sock
        self.tls = tls
        self._timeout: float | None = None
        self._buf = bytearray(RECV_BYTES)
        self._view = memoryview(self._buf)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN | select.POLLPRI)

    def set_timeout(self, seconds: float) -> None:
        """The read and write timeout of the next calls (a system call only when it changes)."""
        if seconds == self._timeout:
            return
        self._timeout = seconds
        if self.tls:
            self.sock.settimeout(seconds)
            return
        whole = int(seconds)
        tv = struct.pack("ll", whole, max(int((seconds - whole) * 1_000_000), 1 if whole == 0 else 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

    def recv(self) -> memoryview:
        """The next bytes (empty at EOF)."""
        try:
            n = self.sock.recv_into(self._buf)
        except (BlockingIOError, TimeoutError) as exc:
            raise ReadTimedOut(f"no answer within {self._timeout:g}s") from exc
        except OSError as exc:
            raise ConnectionLost(f"connection lost while reading ({type(exc).__name__})") from exc
        return self._view[:n]

    def looks_closed(self) -> bool:
        """Whether the idle connection was closed by the server, or has bytes nobody asked for: not reusable."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():  # decrypted already: no poll sees them
            return True
        try:
            return bool(self._poll.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class DeadlineCut:
    """The deadline's hold on one request: when it passes, the connection the request is on is shut.

    Armed before the request is written, not once its headers are in: each read is within the read timeout,
    so a server dripping its head (or streaming ``100 Continue``) would otherwise hold the call past any
    deadline. :meth:`Pool.exchange` hands over each connection the request uses (:meth:`attach`); the caller
    detaches it before it goes back to its pool, so the watchdog never shuts an idle connection. Used by
    both transports (``connectors/_http.py``, ``connectors/_soap.py``) with the kit's watchdog.

    No lock (a lock per request costs what the plain flag saved, issue 15): the watchdog writes ``fired``
    then reads the connection, the request's thread clears the connection then reads ``fired``, each one
    bytecode under the GIL. Whichever order they run in, either the watchdog finds no connection, or the
    request's thread sees ``fired`` and closes the connection instead of pooling it.
    """

    __slots__ = ("_conn", "fired")

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self.fired = False

    def fire(self) -> None:
        """The deadline passed (the watchdog's thread): wake any read or write blocked on the connection."""
        self.fired = True
        conn = self._conn
        if conn is not None:
            # socket.socket.shutdown, not SSLSocket.shutdown: the latter tears down TLS state under the reader.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)

    def attach(self, conn: Connection) -> None:
        """The request is about to be written on ``conn``.

        Raises:
            ConnectFailed: the deadline has passed already (nothing is written).
        """
        self._conn = conn
        if self.fired:
            raise ConnectFailed("the deadline passed before the request was written")

    def detach(self) -> bool:
        """Stop watching the connection (before it is given back or closed); whether the deadline fired."""
        self._conn = None
        return self.fired


class Response:
    """A reply whose status and headers are in; its body is read with :meth:`read1`."""

    __slots__ = ("_conn", "_parse", "_pool", "_released", "head", "headers", "status")

    def __init__(self, pool: Pool, conn: Connection, parse: _Parse, *, head: bool) -> None:
        self._pool = pool
        self._conn = conn
        self._parse = parse
        self.status = parse.status
        self.headers = parse.headers
        self.head = head
        self._released = False

    def read1(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (more may be buffered); ``b""`` at its end.

        Raises:
            ReadTimedOut, ConnectionLost, BadReply.
        """
        parse = self._parse
        while not parse.chunks:
            if parse.complete or self.head:
                return b""
            data = self._conn.recv()
            if not data:
                if parse.parser.should_keep_alive() or self._declares_length():
                    raise ConnectionLost("the connection closed before the reply's end")
                parse.complete = True  # a body delimited by the connection's close
                return b""
            _feed(parse, data)
        chunk = parse.chunks.popleft()
        if len(chunk) > limit:
            parse.chunks.appendleft(chunk[limit:])
            chunk = chunk[:limit]
        return chunk

    def _declares_length(self) -> bool:
        return "content-length" in self.headers or "chunked" in (self.headers.get("transfer-encoding") or "")

    def release(self, *, complete: bool) -> None:
        """Give the connection back (its reply read to the end and reusable) or close it."""
        if self._released:
            return
        self._released = True
        parse = self._parse
        reusable = complete and not self.head and parse.complete and not parse.chunks and not parse.trailing
        if reusable and parse.keep_alive:
            self._pool.put(self._conn)
        else:
            self._conn.close()


def _feed(parse: _Parse, data: memoryview) -> None:
    """Give llhttp the next bytes.

    What llhttp refuses once the reply is complete (anything after a ``Connection: close`` reply, bytes that
    are not HTTP) is trailing bytes, like a second reply would be: never read, and the connection is not
    reused; the reply itself stands.
    """
    try:
        parse.parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
        if parse.complete:
            parse.trailing = True
            return
        raise _bad_reply(exc) from None


def _bad_reply(exc: Exception) -> BadReply:
    if isinstance(exc, httptools.HttpParserUpgrade):
        return BadReply("the server switched protocols")
    if isinstance(exc, httptools.HttpParserCallbackError):
        cause = exc.__cause__ or exc.__context__
        return cause if isinstance(cause, BadReply) else BadReply("not an HTTP reply")
    return BadReply(f"not an HTTP reply ({type(exc).__name__})")


class Pool:
    """The idle connections to one origin, most recent first; at most ``maxsize`` are kept."""

    def __init__(self, scheme: str, host: str, port: int, *, maxsize: int, ssl_context: ssl.SSLContext | None) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        name = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 literal in brackets
        self.host_header = name if port == {"http": 80, "https": 443}[scheme] else f"{name}:{port}"
        self.maxsize = maxsize
        self._ssl = ssl_context
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def put(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < self.maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def take(self, connect_timeout: float) -> Connection:
        """An idle connection still open, or a new one.

        Raises:
            ConnectFailed: no connection could be made.
        """
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(connect_timeout)
            if conn.looks_closed():
                conn.close()
                continue
            return conn

    def _connect(self, timeout: float) -> Connection:
        """A new connection within ``timeout`` in all: the TLS handshake gets what the connect left of it.

        (Python bounds a handshake as a whole by the socket's timeout, not per read: a server dripping its
        handshake cannot stretch it.)
        """
        end = time.monotonic() + timeout
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect ({type(exc).__name__})") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no time left for the TLS handshake")
                sock.settimeout(left)
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
                return Connection(sock, tls=True)
            sock.settimeout(None)  # blocking: the kernel's timeouts from here (Connection.set_timeout)
            return Connection(sock, tls=False)
        except (OSError, ssl.SSLError) as exc:
            with contextlib.suppress(OSError):
                sock.close()
            raise ConnectFailed(f"cannot open the connection ({type(exc).__name__})") from exc

    def exchange(
        self,
        request: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
        head: bool,
        watch: Callable[[Connection], None] | None = None,
    ) -> Response:
        """Write ``request`` and read the reply up to the end of its headers.

        ``watch`` is told the connection before anything is written: the caller's deadline watchdog must be
        able to shut it while the head is still coming (each read is within the read timeout, so a server
        dripping its head, or streaming ``100 Continue``, would otherwise hold the call past any deadline).

        Raises:
            ConnectFailed: the request never left.
            ReadTimedOut, ConnectionLost, BadReply: after it was (or may have been) written.
        """
        conn = self.take(connect_timeout)
        try:
            if watch is not None:
                watch(conn)
            conn.set_timeout(read_timeout)
            try:
                conn.sock.sendall(request)
            except (BlockingIOError, TimeoutError) as exc:
                raise ReadTimedOut(f"the request could not be written within {read_timeout:g}s") from exc
            except OSError as exc:
                raise ConnectionLost(f"connection lost while writing ({type(exc).__name__})") from exc
            return self._head(conn, head=head)
        except BaseException:
            conn.close()
            raise

    def _head(self, conn: Connection, *, head: bool) -> Response:
        parse = _Parse()
        received = 0
        while not parse.headers_done:
            data = conn.recv()
            if not data:
                raise ConnectionLost("the connection closed before a reply")
            received += len(data)
            if received > MAX_HEADER_BYTES + RECV_BYTES and not parse.headers_done:
                raise BadReply("no end of the reply's headers")
            _feed(parse, data)
        return Response(self, conn, parse, head=head)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Pools:
    """One :class:`Pool` per origin, made at its first request and kept; thread-safe. Each transport owns one.

    Args:
        maxsize: idle connections kept per origin (more are opened while all are busy).
        ca_file: a PEM bundle to trust instead of the system's, for ``https`` origins.
    """

    def __init__(self, *, maxsize: int, ca_file: str | None = None) -> None:
        self._maxsize = maxsize
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._lock = threading.Lock()

    def get(self, scheme: str, host: str, port: int | None) -> Pool:
        """The pool of ``scheme://host:port`` (``port`` None: the scheme's own)."""
        origin = (scheme, host, port or {"http": 80, "https": 443}[scheme])
        pool = self._pools.get(origin)
        if pool is None:
            with self._lock:
                pool = self._pools.get(origin)
                if pool is None:
                    tls = self._ssl if scheme == "https" else None
                    pool = self._pools[origin] = Pool(*origin, maxsize=self._maxsize, ssl_context=tls)
        return pool

    def clear(self) -> None:
        """Close every idle connection (the pools stay, empty)."""
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.clear()
