"""A TCP fault proxy: put it between the bus and a simulator or broker, then break the link on demand.

Why: the reliability plan (docs/reliability.md §2–3, R8 R9 R20) needs latency, a thin pipe, resets after a reply
has started, a black hole, a slow drip and a frozen (half-open) link. `tc netem` is missing from this kernel,
root-namespace `tc`/`iptables` rules would hit the shared broker and database, and toxiproxy is not
packaged, so this is a small asyncio proxy instead. It runs its own event loop in a daemon thread, so
synchronous tests and simulators can drive it; every fault is a thread-safe property that takes effect on
live connections at once (waits are interrupted when a setting changes).

Direction matters and follows toxiproxy's default "downstream" stream: `latency_s`, `slow_drip_bytes_per_s`
and `reset_after_bytes` act on what the upstream sends back to the client (the reply), so a request/reply
round trip grows by exactly `latency_s`. `bandwidth_bps` (bytes, not bits, per second) limits each direction
of each connection. `blackhole`, `half_open`, `refuse` and `drop_all()` act on both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import socket
import struct
import termios
import threading
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from types import TracebackType

_CHUNK = 65536
_QUEUE_CHUNKS = 16
_PACE_S = 0.01  # bandwidth is paced in slices of 10 ms worth of bytes
_FLUSH_TIMEOUT_S = 1.0
_THREAD_TIMEOUT_S = 10.0


class _Direction(Enum):
    UP = "client→upstream"
    DOWN = "upstream→client"


class _ResetConnectionError(Exception):
    """Raised inside a connection to end it with RST on both sides."""


@dataclass
class _Faults:
    """The current fault settings (copied under the lock before use)."""

    latency_s: float = 0.0
    bandwidth_bps: float | None = None
    reset_after_bytes: int | None = None
    blackhole: bool = False
    slow_drip_bytes_per_s: float | None = None
    refuse: bool = False
    half_open: bool = False


@dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy started.

    Attributes:
        connections_total: connections accepted (including refused and black-holed ones).
        connections_active: connections open now.
        connections_refused: connections reset at once because `refuse` was on.
        upstream_failures: connections reset because the upstream could not be reached.
        bytes_client_to_upstream: bytes forwarded from clients to the upstream.
        bytes_upstream_to_client: bytes forwarded from the upstream to clients.
        bytes_discarded: bytes read and thrown away by `blackhole`.
    """

    connections_total: int = 0
    connections_active: int = 0
    connections_refused: int = 0
    upstream_failures: int = 0
    bytes_client_to_upstream: int = 0
    bytes_upstream_to_client: int = 0
    bytes_discarded: int = 0


def _set_linger_zero(writer: asyncio.StreamWriter) -> None:
    """Make the next close of this socket send RST instead of FIN.

    Args:
        writer: the stream whose socket to change.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _unsent_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes still buffered in asyncio or in the kernel (unsent or unacknowledged) for this socket.

    Args:
        writer: the stream to inspect.

    Returns:
        The byte count; 0 when the socket is gone.
    """
    pending = writer.transport.get_write_buffer_size()
    sock = writer.get_extra_info("socket")
    if sock is None:
        return pending
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ on sockets
    except OSError:
        return pending
    queued: int = struct.unpack("i", raw)[0]
    return pending + queued


class _Connection:
    """One proxied client connection and its upstream."""

    def __init__(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.client_r = client_r
        self.client_w = client_w
        self.up_r: asyncio.StreamReader | None = None
        self.up_w: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[object] | None = asyncio.current_task()
        self.reset = False
        self.sent_down = 0
        self.last_send = {_Direction.UP: 0.0, _Direction.DOWN: 0.0}
        self.last_len = {_Direction.UP: 0, _Direction.DOWN: 0}

    def source(self, direction: _Direction) -> asyncio.StreamReader:
        """The stream data in this direction is read from."""
        if direction is _Direction.UP:
            return self.client_r
        assert self.up_r is not None  # noqa: S101 - pumps start only after the upstream connected
        return self.up_r

    def sink(self, direction: _Direction) -> asyncio.StreamWriter:
        """The stream data in this direction is written to."""
        if direction is _Direction.DOWN:
            return self.client_w
        assert self.up_w is not None  # noqa: S101 - pumps start only after the upstream connected
        return self.up_w

    def close(self) -> None:
        """Close both sockets: RST when `reset` is set, otherwise a normal close after buffered data."""
        for writer in (self.client_w, self.up_w):
            if writer is None:
                continue
            if self.reset:
                _set_linger_zero(writer)
                writer.transport.abort()
            else:
                writer.close()


class FaultProxy:
    """A TCP proxy in a daemon thread, with faults switchable at run time.

    Args:
        upstream_host: where to forward to.
        upstream_port: the upstream port.
        listen_host: the address to listen on.
        listen_port: the port to listen on; 0 picks a free one (see `port`).
        connect_timeout_s: how long to wait for the upstream before resetting the client.

    Example:
        >>> with FaultProxy("127.0.0.1", 8080) as proxy:  # doctest: +SKIP
        ...     proxy.latency_s = 0.5
        ...     call_the_target(f"http://127.0.0.1:{proxy.port}/")
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._changed: asyncio.Event | None = None
        self._conns: set[_Connection] = set()
        self._closing = False
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on.

        Raises:
            RuntimeError: before `start`.
        """
        if self._port is None:
            raise RuntimeError("the fault proxy is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """`(listen_host, port)`, ready for `socket.create_connection`."""
        return (self.listen_host, self.port)

    def start(self) -> Self:
        """Start listening in a daemon thread; returns once the port is bound.

        Returns:
            The proxy itself, for `proxy = FaultProxy(...).start()`.

        Raises:
            RuntimeError: when already started or the thread did not come up.
            OSError: when the listen address cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the fault proxy is already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name=f"fault-proxy→{self.upstream_port}", daemon=True
        )
        self._thread.start()
        if not ready.wait(_THREAD_TIMEOUT_S):
            raise RuntimeError("the fault proxy thread did not start")
        if failure:
            self._thread.join(_THREAD_TIMEOUT_S)
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Reset every connection, stop listening, stop the thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be gone
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_THREAD_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_THREAD_TIMEOUT_S)
        self._thread = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def drop_all(self, *, reset: bool = True) -> int:
        """Close every live connection now, both sides.

        Args:
            reset: send RST (the default, like a crashed peer or a middlebox); False sends FIN.

        Returns:
            How many connections were dropped.
        """
        loop = self._loop
        if loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._drop_all(reset=reset), loop).result(_THREAD_TIMEOUT_S)

    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats

    def clear_faults(self) -> None:
        """Switch every fault off (a healthy link again)."""
        with self._lock:
            self._faults = _Faults()
        self._notify_threadsafe()

    @property
    def latency_s(self) -> float:
        """Seconds added to every chunk the upstream sends back (0 = none)."""
        return self._get().latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        if value < 0:
            raise ValueError("latency_s must be >= 0")
        self._set(latency_s=float(value))

    @property
    def bandwidth_bps(self) -> float | None:
        """Bytes per second allowed in each direction of each connection (None = unlimited)."""
        return self._get().bandwidth_bps

    @bandwidth_bps.setter
    def bandwidth_bps(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError("bandwidth_bps must be > 0 or None")
        self._set(bandwidth_bps=value)

    @property
    def reset_after_bytes(self) -> int | None:
        """Forward this many bytes from the upstream per connection, then RST both sides (None = never).

        The count starts when the connection opens; 0 resets on the first upstream byte. The client receives
        exactly the first N bytes before the reset.
        """
        return self._get().reset_after_bytes

    @reset_after_bytes.setter
    def reset_after_bytes(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError("reset_after_bytes must be >= 0 or None")
        self._set(reset_after_bytes=value)

    @property
    def blackhole(self) -> bool:
        """Accept and read, but never forward or answer; data read meanwhile is lost.

        New connections are not connected upstream and stay black until closed, even after the switch is
        turned off; live connections discard in both directions while it is on.
        """
        return self._get().blackhole

    @blackhole.setter
    def blackhole(self, value: bool) -> None:
        self._set(blackhole=bool(value))

    @property
    def slow_drip_bytes_per_s(self) -> float | None:
        """Forward the upstream's bytes one at a time at this rate (e.g. 0.2 = 1 byte per 5 s; None = off)."""
        return self._get().slow_drip_bytes_per_s

    @slow_drip_bytes_per_s.setter
    def slow_drip_bytes_per_s(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError("slow_drip_bytes_per_s must be > 0 or None")
        self._set(slow_drip_bytes_per_s=value)

    @property
    def refuse(self) -> bool:
        """Reset new connections at once (the client sees a reset or EOF); live ones are untouched."""
        return self._get().refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        self._set(refuse=bool(value))

    @property
    def half_open(self) -> bool:
        """Freeze the link: stop reading and forwarding both ways, keep every socket open, answer nothing.

        Unlike `blackhole` nothing is lost: the kernel buffers fill, writers eventually block, and when the
        switch is turned off the held data flows again (a healed partition). New connections are accepted
        and frozen too.
        """
        return self._get().half_open

    @half_open.setter
    def half_open(self, value: bool) -> None:
        self._set(half_open=bool(value))

    def _get(self) -> _Faults:
        with self._lock:
            return dataclasses.replace(self._faults)

    def _set(self, **changes: float | bool | None) -> None:
        with self._lock:
            self._faults = dataclasses.replace(self._faults, **changes)  # type: ignore[arg-type]
        self._notify_threadsafe()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            current = self._stats
            self._stats = dataclasses.replace(
                current, **{name: getattr(current, name) + delta for name, delta in deltas.items()}
            )

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        """Wake every coroutine waiting on a setting (runs in the loop thread)."""
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._changed = asyncio.Event()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.listen_host, self._listen_port, backlog=1024)
            )
            self._port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            failure.append(exc)
            self._loop = None
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers))
            loop.run_until_complete(loop.shutdown_asyncgens())
            self._loop = None
            loop.close()

    async def _shutdown(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        # Let handlers of connections accepted just before close start, see _closing and reset.
        for _ in range(3):
            await asyncio.sleep(0)
        await self._drop_all(reset=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _drop_all(self, *, reset: bool) -> int:
        conns = list(self._conns)
        tasks = [conn.task for conn in conns if conn.task is not None]
        for conn in conns:
            conn.reset = reset
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.01)  # let the transports' connection_lost callbacks run
        return len(conns)

    async def _changed_or_timeout(self, delay: float) -> None:
        """Sleep up to `delay` seconds, waking early when a fault setting changes."""
        if delay <= 0 or self._changed is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._changed.wait()

    async def _hold_while_half_open(self) -> _Faults:
        """Wait until the link is not frozen; return the settings then in force."""
        while True:
            faults = self._get()
            if not faults.half_open or self._changed is None:
                return faults
            await self._changed.wait()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        conn = _Connection(client_r, client_w)
        self._conns.add(conn)
        self._count(connections_total=1, connections_active=1)
        try:
            await self._serve(conn)
        except (asyncio.CancelledError, _ResetConnectionError):
            pass  # dropped or stopped (whoever cancelled chose `conn.reset`), or reset on purpose
        except OSError:
            conn.reset = True  # a peer reset or the upstream failed mid-stream: pass the reset on
        finally:
            conn.close()
            self._conns.discard(conn)
            self._count(connections_active=-1)

    async def _serve(self, conn: _Connection) -> None:
        faults = self._get()
        if self._closing or faults.refuse:
            conn.reset = True
            self._count(connections_refused=1)
            return
        if faults.blackhole:
            await self._sink(conn.client_r)
            return
        await self._hold_while_half_open()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                conn.up_r, conn.up_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except (OSError, TimeoutError):
            conn.reset = True
            self._count(upstream_failures=1)
            return
        tasks: list[asyncio.Task[None]] = []
        for direction in _Direction:
            queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
            tasks.append(asyncio.create_task(self._read_side(conn, direction, queue)))
            tasks.append(asyncio.create_task(self._write_side(conn, direction, queue)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sink(self, reader: asyncio.StreamReader) -> None:
        """Read and discard until EOF (a black-holed connection)."""
        while data := await reader.read(_CHUNK):
            self._count(bytes_discarded=len(data))

    async def _read_side(
        self, conn: _Connection, direction: _Direction, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        source = conn.source(direction)
        while True:
            await self._hold_while_half_open()
            data = await source.read(_CHUNK)
            if not data:
                await queue.put(None)
                return
            faults = await self._hold_while_half_open()
            if faults.blackhole:
                self._count(bytes_discarded=len(data))
                continue
            await queue.put((loop.time(), data))

    async def _write_side(
        self, conn: _Connection, direction: _Direction, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        while (item := await queue.get()) is not None:
            await self._send(conn, direction, *item)
        sink = conn.sink(direction)
        if sink.can_write_eof() and not sink.is_closing():
            sink.write_eof()

    async def _send(self, conn: _Connection, direction: _Direction, arrival: float, data: bytes) -> None:
        """Forward one chunk, applying the faults in force at each step (re-read after every wait)."""
        loop = asyncio.get_running_loop()
        sink = conn.sink(direction)
        down = direction is _Direction.DOWN
        pos = 0
        while pos < len(data):
            faults = await self._hold_while_half_open()
            if faults.blackhole:
                self._count(bytes_discarded=len(data) - pos)
                return
            now = loop.time()
            if down and faults.latency_s > 0 and arrival + faults.latency_s > now:
                await self._changed_or_timeout(arrival + faults.latency_s - now)
                continue
            drip = faults.slow_drip_bytes_per_s if down else None
            rate = drip or faults.bandwidth_bps
            size = len(data) - pos
            if rate is not None:
                ready_at = conn.last_send[direction] + conn.last_len[direction] / rate
                if ready_at > now:
                    await self._changed_or_timeout(ready_at - now)
                    continue
                size = 1 if drip else max(1, min(_CHUNK, int(rate * _PACE_S)))
            if down and faults.reset_after_bytes is not None:
                allowed = faults.reset_after_bytes - conn.sent_down
                if allowed <= 0:
                    await self._reset_after_flush(conn)
                size = min(size, allowed)
            piece = data[pos : pos + size]
            sink.write(piece)
            await sink.drain()
            pos += size
            conn.last_send[direction] = loop.time()
            conn.last_len[direction] = size
            if down:
                conn.sent_down += size
                self._count(bytes_upstream_to_client=size)
                if faults.reset_after_bytes is not None and conn.sent_down >= faults.reset_after_bytes:
                    await self._reset_after_flush(conn)
            else:
                self._count(bytes_client_to_upstream=size)

    async def _reset_after_flush(self, conn: _Connection) -> None:
        """Let the client's kernel acknowledge what it was sent, then end the connection with RST.

        Raises:
            _ResetConnectionError: always.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _FLUSH_TIMEOUT_S
        # Polls the kernel's send queue: no event tells when the peer has acknowledged everything.
        while _unsent_bytes(conn.client_w) > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        conn.reset = True
        raise _ResetConnectionError
