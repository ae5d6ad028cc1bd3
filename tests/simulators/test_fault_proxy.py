"""The fault proxy does what each switch says, measured against a local echo server.

Why: R8, R9 and R20 trust these faults to produce exact conditions (a reply cut after N bytes, +5 s, a
black hole); a proxy that silently forwarded would make those tests pass for the wrong reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest
from wallclock import assert_within

from simulators.faults import FaultProxy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class EchoServer:
    """A threaded TCP echo server: echoes every byte until EOF, then closes."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener shut down
            thread = threading.Thread(target=self._echo, args=(conn,), name="echo-conn", daemon=True)
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
                self._threads.append(thread)
            thread.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def stop(self) -> None:
        """Wake and join every thread, close every socket."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """An echo server for one test."""
    server = EchoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    """A started fault proxy in front of the echo server."""
    with FaultProxy("127.0.0.1", echo.port) as started:
        yield started


def _connect(proxy: FaultProxy, timeout: float = 3.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            raise EOFError(f"EOF after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _rtt(sock: socket.socket) -> float:
    started = time.monotonic()
    sock.sendall(b"ping")
    assert _recv_exactly(sock, 4) == b"ping"
    return time.monotonic() - started


def _eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


def test_passthrough_forwards_and_counts_bytes_each_way(proxy: FaultProxy, echo: EchoServer) -> None:
    """With no fault, 1 MiB goes through unchanged and is counted once in each direction."""
    payload = os.urandom(1 << 20)
    with _connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert _recv_exactly(sock, len(payload)) == payload
        sender.join()
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the echo server's EOF travels back through the proxy
    _eventually(lambda: proxy.stats().connections_active == 0)
    stats = proxy.stats()
    assert stats.connections_total == 1
    assert stats.bytes_client_to_upstream == len(payload)
    assert stats.bytes_upstream_to_client == len(payload)
    assert echo.accepted == 1


def test_latency_is_added_to_each_round_trip(proxy: FaultProxy) -> None:
    """latency_s=0.2 adds 0.2 s to a request/reply round trip (once, not twice), and switching it off removes it.

    Each figure is the fastest of five round trips: a loaded machine only ever adds time, so the fastest is
    the one closest to what the proxy itself did.
    """
    with _connect(proxy) as sock:
        baseline = min(_rtt(sock) for _ in range(5))
        proxy.latency_s = 0.2
        delayed = min(_rtt(sock) for _ in range(5))
        proxy.latency_s = 0
        after = min(_rtt(sock) for _ in range(5))
    added = delayed - baseline
    print(f"baseline {baseline * 1000:.2f} ms, with latency {delayed * 1000:.1f} ms, added {added * 1000:.1f} ms")
    assert added >= 0.16, "the latency was not added"
    assert added < 0.4, "the latency was added twice"
    assert after < 0.16, "the latency stayed after it was switched off"


def test_bandwidth_limits_throughput(proxy: FaultProxy) -> None:
    """bandwidth_bps=200 kB/s moves 80 kB through the echo in 0.4 s: never faster than the limit."""
    proxy.bandwidth_bps = 200_000
    payload = os.urandom(80_000)
    with _connect(proxy) as sock:
        started = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert _recv_exactly(sock, len(payload)) == payload
        elapsed = time.monotonic() - started
        sender.join()
    rate = len(payload) / elapsed
    print(f"80 kB in {elapsed:.3f} s = {rate / 1000:.0f} kB/s")
    assert rate <= 240_000, "more than the limit (+20%) went through"
    assert_within(elapsed, 0.5, "80 kB at 200 kB/s")  # a loaded machine only slows it: see wallclock.py


def test_reset_after_bytes_delivers_exactly_n_bytes_then_resets(proxy: FaultProxy) -> None:
    """reset_after_bytes=100: the client gets exactly 100 of 1,000 echoed bytes, then ECONNRESET."""
    proxy.reset_after_bytes = 100
    received = bytearray()
    with _connect(proxy) as sock:
        sock.sendall(b"x" * 1000)
        with pytest.raises(ConnectionResetError):  # noqa: PT012 - the reset ends a read loop
            while chunk := sock.recv(65536):
                received += chunk
    assert len(received) == 100
    proxy.reset_after_bytes = None
    with _connect(proxy) as sock:
        assert_within(_rtt(sock), 0.05, "a round trip on a new connection (healthy again)")


def test_blackhole_swallows_data_and_the_client_read_times_out(proxy: FaultProxy, echo: EchoServer) -> None:
    """A black-holed connection is accepted, its data read and dropped, and never answered."""
    with _connect(proxy) as live:
        _rtt(live)
        proxy.blackhole = True
        with _connect(proxy, timeout=0.5) as sock:
            sock.sendall(b"y" * 1000)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        live.settimeout(0.5)
        live.sendall(b"z" * 10)  # a live connection goes black too
        with pytest.raises(TimeoutError):
            live.recv(1)
    _eventually(lambda: proxy.stats().bytes_discarded == 1010)
    assert echo.accepted == 1  # the black-holed connection never reached the upstream


def test_slow_drip_forwards_one_byte_at_a_time(proxy: FaultProxy) -> None:
    """slow_drip_bytes_per_s=20 returns 10 bytes one by one, 50 ms apart (0.45 s in all, no faster)."""
    proxy.slow_drip_bytes_per_s = 20
    with _connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"0123456789")
        pieces = [sock.recv(65536) for _ in range(10)]
        elapsed = time.monotonic() - started
    assert pieces == [bytes([c]) for c in b"0123456789"]
    print(f"10 bytes dripped in {elapsed:.3f} s")
    assert elapsed >= 0.36, "dripped faster than 20 bytes/s"
    assert_within(elapsed, 0.54, "10 bytes at 20 bytes/s")


def test_refuse_resets_new_connections_and_spares_live_ones(proxy: FaultProxy) -> None:
    """refuse=True resets each new connection at once; a live connection keeps working."""
    with _connect(proxy) as live:
        _rtt(live)  # the proxy decides at accept time: make sure it has accepted this one
        proxy.refuse = True
        try:
            with _connect(proxy) as sock:
                got = sock.recv(1)
        except ConnectionResetError:  # the RST can already arrive during connect() on loopback
            got = b""
        assert got == b""
        assert_within(_rtt(live), 0.05, "a round trip on the live connection")
        proxy.refuse = False
        with _connect(proxy) as sock:
            assert_within(_rtt(sock), 0.05, "a round trip on a new connection")
    assert proxy.stats().connections_refused == 1


def test_half_open_freezes_both_ways_without_closing_and_loses_nothing(proxy: FaultProxy) -> None:
    """half_open holds data and sockets open (reads time out, no EOF); clearing it delivers the held data."""
    with _connect(proxy, timeout=0.5) as sock:
        _rtt(sock)
        proxy.half_open = True
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.sendall(b"-more")  # still open for writing: no RST, no FIN
        proxy.half_open = False
        assert _recv_exactly(sock, 9) == b"held-more"


def test_drop_all_kills_live_connections(proxy: FaultProxy) -> None:
    """drop_all() resets every live connection at once; new connections still work."""
    with _connect(proxy) as first, _connect(proxy) as second:
        _rtt(first)
        _rtt(second)
        assert proxy.drop_all() == 2
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
    with _connect(proxy) as sock:
        assert_within(_rtt(sock), 0.05, "a round trip")
    assert proxy.stats().connections_total == 3


def test_many_concurrent_connections_then_a_clean_stop(echo: EchoServer) -> None:
    """300 concurrent clients all get their echo through one proxy; stop() then closes 50 idle connections."""
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    try:
        proxy.latency_s = 0.05  # keeps every connection open at the same time

        async def one(i: int) -> bool:
            reader, writer = await asyncio.open_connection(*proxy.address)
            try:
                payload = f"{i:05d}".encode() * 800
                writer.write(payload)
                await writer.drain()
                return await reader.readexactly(len(payload)) == payload
            finally:
                writer.close()
                await writer.wait_closed()

        async def many() -> list[bool]:
            return await asyncio.gather(*(one(i) for i in range(300)))

        assert all(asyncio.run(many()))
        assert proxy.stats().connections_total == 300

        proxy.latency_s = 0
        idle = [_connect(proxy) for _ in range(50)]
        try:
            for sock in idle:
                _rtt(sock)
            proxy.stop()
            for sock in idle:
                with contextlib.suppress(ConnectionResetError):  # stop() resets: EOF or ECONNRESET
                    assert sock.recv(1) == b""
        finally:
            for sock in idle:
                sock.close()
        assert not any(t.name.startswith("fault-proxy") for t in threading.enumerate())
    finally:
        proxy.stop()


def test_setters_validate_and_start_reports_a_busy_port(echo: EchoServer) -> None:
    """Negative settings are refused, and a taken listen port raises at start()."""
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        with pytest.raises(ValueError, match="latency_s"):
            proxy.latency_s = -1
        with pytest.raises(ValueError, match="bandwidth_bps"):
            proxy.bandwidth_bps = 0
        proxy.latency_s = 1
        proxy.clear_faults()
        assert proxy.latency_s == 0
        with pytest.raises(OSError, match="address already in use"):
            FaultProxy("127.0.0.1", echo.port, listen_port=proxy.port).start()
