"""Pipelined SFTP requests on paramiko's client: many reads or writes outstanding, each answer checked.

Where it sits: the lowest layer of ``connectors/_sftp.py`` (event → route → adapter → **connector** →
result/DLQ). paramiko's public file API either waits for every 32 KiB request (slow on a link with latency)
or, with prefetch, may buffer a whole file in memory (paramiko PR #2519: the prefetch thread can outrun the
reader). :class:`Wire` keeps a fixed number of requests outstanding instead, so a transfer holds a few MiB
whatever the file's size, and checks every status (paramiko's pipelined writes drop the statuses of the
last writes). It uses two private calls of ``SFTPClient`` (``_async_request``, ``_read_response``), kept
here and nowhere else; paramiko is pinned in ``pyproject.toml``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Final

import paramiko
from paramiko.sftp import CMD_DATA, CMD_EXTENDED, CMD_READ, CMD_STATUS, CMD_WRITE, int64

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from paramiko.message import Message

#: bytes per SFTP read or write request (what OpenSSH's own client sends; larger ones some servers refuse)
CHUNK: Final = 32_768

# SFTP status codes (draft-ietf-secsh-filexfer-02 section 7)
FX_OK: Final = 0
FX_EOF: Final = 1
FX_NO_SUCH_FILE: Final = 2
FX_PERMISSION_DENIED: Final = 3
FX_OP_UNSUPPORTED: Final = 8


class StatusError(Exception):
    """A pipelined request answered with an SFTP status other than OK."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"SFTP status {code}: {text}")
        self.code = code
        self.text = text


class _Replies:
    """What our pipelined requests are registered under in paramiko: keeps each reply by request number."""

    __slots__ = ("__weakref__", "replies")

    def __init__(self) -> None:
        self.replies: dict[int, tuple[int, Message]] = {}

    def _async_response(self, t: int, msg: Message, num: int) -> None:
        self.replies[num] = (t, msg)


class Wire:
    """Pipelined SFTP requests on paramiko's client: send many, then take each answer by its number.

    paramiko's public API either waits for every request (slow on a link with latency) or, with prefetch,
    can buffer a whole file in memory. These two private calls are the seam: ``_async_request`` sends a
    request registered under our :class:`_Replies`, ``_read_response`` reads one packet and hands it over.
    """

    def __init__(self, sftp: paramiko.SFTPClient, tick: Callable[[], None]) -> None:
        self._sftp: Any = sftp
        self._sink = _Replies()
        self._tick = tick

    def send(self, kind: int, *args: Any) -> int:
        """Send one request; its number."""
        self._tick()
        return int(self._sftp._async_request(self._sink, kind, *args))  # noqa: SLF001 - see the class docstring

    def wait(self, num: int) -> tuple[int, Message]:
        """The answer to request ``num`` (other answers that arrive meanwhile are kept)."""
        replies = self._sink.replies
        while num not in replies:
            self._tick()
            self._sftp._read_response()  # noqa: SLF001 - see the class docstring
        return replies.pop(num)

    def status(self, num: int) -> None:
        """Wait for a request answered by a status; raise :class:`StatusError` unless it is OK."""
        kind, msg = self.wait(num)
        if kind != CMD_STATUS:
            raise paramiko.SFTPError(f"expected a status, got packet type {kind}")
        code = msg.get_int()
        if code != FX_OK:
            raise StatusError(code, _text(msg))

    def read_range(self, handle: bytes, start: int, end: int, in_flight: int) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of an open file, in order, with ``in_flight`` requests outstanding.

        Raises:
            StatusError: the file ended before ``end`` (``FX_EOF``) or the server refused a read.
            paramiko.SFTPError: the server answered more than was asked.
        """
        pending: deque[tuple[int, int, int]] = deque()
        ahead = start
        while ahead < end or pending:
            while ahead < end and len(pending) < in_flight:
                size = min(CHUNK, end - ahead)
                pending.append((self.send(CMD_READ, handle, int64(ahead), size), ahead, size))
                ahead += size
            num, offset, size = pending.popleft()
            data = self._data(num, size)
            yield data
            # A short read is legal; fetch the rest of this block before the blocks already asked for.
            got = len(data)
            while got < size:
                more = self._data(self.send(CMD_READ, handle, int64(offset + got), size - got), size - got)
                yield more
                got += len(more)

    def _data(self, num: int, size: int) -> bytes:
        kind, msg = self.wait(num)
        if kind == CMD_STATUS:
            code = msg.get_int()
            raise StatusError(code, _text(msg))
        if kind != CMD_DATA:
            raise paramiko.SFTPError(f"expected data, got packet type {kind}")
        data = msg.get_string()
        if not 0 < len(data) <= size:
            raise paramiko.SFTPError(f"asked for {size} bytes, the server answered {len(data)}")
        return data

    def write_from(self, handle: bytes, chunks: Iterator[tuple[int, bytes]], in_flight: int) -> None:
        """Write ``(offset, bytes)`` pieces with ``in_flight`` requests outstanding; every status is checked."""
        pending: deque[int] = deque()
        for offset, data in chunks:
            pending.append(self.send(CMD_WRITE, handle, int64(offset), data))
            if len(pending) >= in_flight:
                self.status(pending.popleft())
        while pending:
            self.status(pending.popleft())

    def fsync(self, handle: bytes) -> bool:
        """Ask the server to flush the file to disk (``fsync@openssh.com``); False when it does not offer it."""
        try:
            self.status(self.send(CMD_EXTENDED, "fsync@openssh.com", handle))
        except StatusError as exc:
            if exc.code == FX_OP_UNSUPPORTED:
                return False
            raise
        return True


def _text(msg: Message) -> str:
    try:
        return msg.get_text()[:200]
    except (UnicodeDecodeError, paramiko.SSHException):
        return "(no readable message)"
