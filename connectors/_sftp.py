"""The one SFTP client every connector that moves files builds on (paramiko): checked host, whole files, once.

Where it sits: inside the connector step (event → route → adapter → **connector** → result/DLQ) of every route
that moves a file: the generic ``sftp`` connector (``connectors/sftp.py``), the land system's documents and
the Finance reconciliation file. A connector builds one :class:`SftpClient` from its ``ConnectorSpec`` and
calls :meth:`SftpClient.put`, :meth:`SftpClient.lookup`, :meth:`SftpClient.get` or :meth:`SftpClient.list_dir`;
everything below is decided here once, so no connector can forget it.

**The server is who it says it is.** ``SSHClient`` + ``load_host_keys(options.known_hosts)`` + a
``RejectPolicy``: a host missing from that file, or presenting another key than the one listed, is refused
before any credential or byte is sent, with an error naming the host and both fingerprints in OpenSSH's
``SHA256:…`` form. The system's known_hosts is never read, no key is ever added, and we never call
``Transport.connect(hostkey=None)`` (which skips the check). paramiko ignores ``@revoked`` and
``@cert-authority`` lines: list only the keys to trust.

**A file arrives whole, under its final name, once.** An upload writes ``.<name>.<16 hex of the key>.part``
in the target directory, then renames it. The standard SFTP rename (not the posix-rename extension) fails
when the final name exists (OpenSSH's server links then unlinks), so a file is never overwritten: when the
final name is taken, the remote bytes are hashed; the same SHA-256 is "already applied" (``already_present``),
another is refused (``TargetRejected(code="exists")``).

**The remote bytes are proven by reading them back.** The SHA-256 is computed while the bytes stream out;
after the last write (and an ``fsync@openssh.com`` where the server offers it) the temporary file is read
back and hashed, and only a match is renamed into place. OpenSSH's server has no checksum extension
(``check-file`` is not implemented), a shell ``sha256sum`` is not available to an SFTP-only account, and
comparing sizes proves nothing about the bytes, so reading back is the only check that proves what the
server holds; it costs a second transfer of the file on the same connection.

**A cut upload resumes.** When the temporary file exists (an earlier attempt was cut), its first N bytes
are read back and compared with the first N bytes of the local file; if they match, the upload continues at
N, otherwise it starts over. The same holds for downloads (the local ``.<name>.part`` is kept and continued
when the request gives the expected SHA-256, which then proves the whole file).

**A file is an effect like any other.** The claim of the pipeline guards it; :meth:`SftpClient.lookup` answers
by idempotency key from a *ledger* on the server: ``<ledger_dir>/<key>.json`` (default ``.igate-bus/``
under the base directory), written ``staged`` after the read-back matched and before the rename, and
``done`` after it. The key is not put in the remote name, because receivers expect the names they were
promised. The ledger makes "not there" trustworthy: no ledger entry means no rename was ever attempted under
that key. A receiver that takes files away does not break it: a ``done`` entry answers "applied" with
``still_present=False``.

**Memory is bounded.** Bytes move in 32 KiB requests with at most ``requests_in_flight`` of them
outstanding (paramiko's own prefetch can buffer a whole file: paramiko PR #2519), so an upload or download
holds a few MiB whatever the file's size. That pipelining uses two private calls of paramiko's
``SFTPClient`` (``_async_request``, ``_read_response``), kept in :class:`_Wire`; paramiko is pinned.

**Time is bounded.** The TCP connect, the banner, the key exchange, the login and the channel open each wait
at most ``timeout.connect``; every SFTP request waits at most ``timeout.read`` for its answer; and the
whole operation ends by ``timeout.total`` (a timer closes the connection), whatever the server does. The
claim's lease is derived from ``timeout.total``: give it room for the largest file at the slowest link.

**Errors are translated into the tree** (:mod:`schemas.errors`), so routes never see paramiko:

  ==============================================  ================================================
  what happened                                   raised
  ==============================================  ================================================
  refused/unreachable host, connect, banner or    ``TargetUnavailable(maybe_applied=False)``
  key-exchange timeout, no common algorithm
  host key not in known_hosts, or changed         ``HostKeyRefused`` (``field="known_hosts"``, both
                                                  fingerprints named); the breaker opens at once and
                                                  messages wait for an operator, spending no attempt
  login refused                                   ``CredentialsRefused`` (``field="credentials"``); the
                                                  breaker opens at once, so a partner's fail2ban never
                                                  sees the bus retry a refused login
  connection lost, request timeout or deadline    ``TargetUnavailable(maybe_applied=False)``: only
  before the rename was sent                      the temporary file exists
  the same during or after the rename             ``TargetTimeout`` / ``TargetUnavailable(
                                                  maybe_applied=True)``: reconciled by lookup
  bytes read back differ from the bytes sent      ``TargetUnavailable(maybe_applied=False)``; the
                                                  temporary file is removed
  final name holds other bytes                    ``TargetRejected(code="exists")``
  permission denied                               ``TargetRejected(code="permission")``
  other server failure (disk full, quota)         ``TargetUnavailable(maybe_applied=<phase>)``
  any failure of a lookup                         ``TargetUnavailable(maybe_applied=True)``: a
                                                  failed lookup never clears a claim
  ledger says staged, neither file nor temporary  ``AmbiguousOutcome``: a person must decide
  download: missing, not a file, over the cap     ``TargetRejected(code="not_found"|"not_a_file"|
                                                  "too_large")``
  download: hash or size differs from expected    ``TargetUnavailable`` (a file still being written
                                                  settles; the partial file is not kept)
  unsafe name, path or key; source missing,       ``MappingError`` naming the field
  over the size cap, changed while sent, or not
  matching the request's SHA-256
  the local spool cannot be read or written       ``TransientError`` (the bus's disk, not the
                                                  server: retried)
  ==============================================  ================================================

Each operation opens its own connection and closes it: a connection cut in one worker thread never
poisons another's transfer, and paramiko's client is used by one thread at a time. Each operation is one
call of the connector kit's guard (``connectors/kit/guard.py``): the breaker admits it before connecting,
the rate limit (``rate_limit``: operations a second) gives it a slot, ``timeout.total`` is its deadline and
the kit's watchdog closes the connection when it passes; its transient failures count against the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NoReturn, cast
from urllib.parse import urlsplit

import paramiko
import structlog
from paramiko.sftp import CMD_DATA, CMD_EXTENDED, CMD_READ, CMD_STATUS, CMD_WRITE, int64

from connectors.base import credential, endpoint, required_option
from connectors.kit.guard import WATCHDOG, Guard
from schemas.errors import (
    AmbiguousOutcome,
    BusError,
    ConfigError,
    CredentialsRefused,
    HostKeyRefused,
    MappingError,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
    TransientError,
)
from schemas.sftp import check_name, check_relative_path

if TYPE_CHECKING:
    from collections.abc import Iterator

    from paramiko.message import Message

    from config.model import ConnectorSpec

log = structlog.get_logger(__name__)

#: bytes per SFTP read or write request (what OpenSSH's own client sends; larger ones some servers refuse)
CHUNK: Final = 32_768
#: write requests outstanding at once, by default (OpenSSH's sftp client uses 64)
DEFAULT_IN_FLIGHT: Final = 64
DEFAULT_MAX_FILE_BYTES: Final = 1 << 30
DEFAULT_LEDGER_DIR: Final = ".igate-bus"
#: an SFTP channel's receive window; read requests in flight are kept to half of it, so replies never stall
CHANNEL_WINDOW: Final = 4 << 20
#: a ledger entry is a few hundred bytes; a larger one is not ours
LEDGER_ENTRY_MAX_BYTES: Final = 4096
#: what an idempotency key may look like, since it names a ledger file on the server
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LEDGER_DIR: Final = re.compile(r"(?!\.{1,2}(/|\Z))[A-Za-z0-9._-]{1,64}(/(?!\.{1,2}(/|\Z))[A-Za-z0-9._-]{1,64}){0,3}")
_SSH_PORT: Final = 22

# SFTP status codes (draft-ietf-secsh-filexfer-02 section 7)
FX_OK: Final = 0
FX_EOF: Final = 1
FX_NO_SUCH_FILE: Final = 2
FX_PERMISSION_DENIED: Final = 3
FX_OP_UNSUPPORTED: Final = 8


@dataclass(frozen=True, slots=True)
class PutResult:
    """A file on the server under its final name, holding exactly the bytes of the local file."""

    remote_path: str
    size: int
    sha256: str
    outcome: str  # uploaded | already_present
    resumed_from: int = 0
    still_present: bool = True
    #: seconds spent writing the bytes, and reading them back to verify them (0 when nothing was sent)
    send_seconds: float = 0.0
    verify_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class GetResult:
    """A fetched file, in place under its final local name."""

    path: Path
    size: int
    sha256: str
    outcome: str  # downloaded | already_present
    resumed_from: int = 0


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """A regular file found by :meth:`SftpClient.list`."""

    name: str
    size: int
    mtime: int


def fingerprint(key: paramiko.PKey) -> str:
    """A key as ``ssh-ed25519 SHA256:…``, the form ``ssh-keygen -lf`` and OpenSSH's prompts print."""
    return f"{key.get_name()} {key.fingerprint}"


def check_key(idempotency_key: str) -> str:
    """The idempotency key, which names a ledger entry on the server; ``MappingError`` when unsafe."""
    if not isinstance(idempotency_key, str) or not KEY_PATTERN.fullmatch(idempotency_key):
        raise MappingError(
            "an idempotency key is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="idempotency_key",
        )
    return idempotency_key


def temp_name(name: str, idempotency_key: str) -> str:
    """The temporary name an upload of ``name`` under ``idempotency_key`` is written as, before its rename."""
    return f".{name}.{hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]}.part"


def _field_checked(check: Any, value: str, field: str, **kwargs: Any) -> str:
    try:
        return str(check(value, **kwargs))
    except ValueError as exc:
        raise MappingError(str(exc), field=field) from None


class _UnknownHostKeyError(paramiko.SSHException):
    """The server's host is not in the configured known_hosts."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


class _RefuseUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising an error that keeps the offered key (for its fingerprint)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        """Refuse, always."""
        del client
        raise _UnknownHostKeyError(hostname, key)


class _StatusError(Exception):
    """A pipelined request answered with an SFTP status other than OK."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"SFTP status {code}: {text}")
        self.code = code
        self.text = text


class _DeadlineError(Exception):
    """The operation's total deadline passed."""


class _SourceChangedError(Exception):
    """The local file changed while it was sent."""


class _LocalError(Exception):
    """Reading or writing the local spool failed (not the server's doing)."""


@contextlib.contextmanager
def _local(what: str) -> Iterator[None]:
    """Tell local I/O errors apart from the server's, which paramiko also raises as ``OSError``."""
    try:
        yield
    except OSError as exc:
        raise _LocalError(f"{what}: {exc.strerror or type(exc).__name__}") from None


class _Replies:
    """What our pipelined requests are registered under in paramiko: keeps each reply by request number."""

    __slots__ = ("__weakref__", "replies")

    def __init__(self) -> None:
        self.replies: dict[int, tuple[int, Message]] = {}

    def _async_response(self, t: int, msg: Message, num: int) -> None:
        self.replies[num] = (t, msg)


class _Wire:
    """Pipelined SFTP requests on paramiko's client: send many, then take each answer by its number.

    paramiko's public API either waits for every request (slow on a link with latency) or, with prefetch,
    can buffer a whole file in memory. These two private calls are the seam: ``_async_request`` sends a
    request registered under our :class:`_Replies`, ``_read_response`` reads one packet and hands it over.
    """

    def __init__(self, sftp: paramiko.SFTPClient, tick: Any) -> None:
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
        """Wait for a request answered by a status; raise :class:`_StatusError` unless it is OK."""
        kind, msg = self.wait(num)
        if kind != CMD_STATUS:
            raise paramiko.SFTPError(f"expected a status, got packet type {kind}")
        code = msg.get_int()
        if code != FX_OK:
            raise _StatusError(code, _text(msg))

    def read_range(self, handle: bytes, start: int, end: int, in_flight: int) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of an open file, in order, with ``in_flight`` requests outstanding.

        Raises:
            _StatusError: the file ended before ``end`` (``FX_EOF``) or the server refused a read.
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
            raise _StatusError(code, _text(msg))
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
        except _StatusError as exc:
            if exc.code == FX_OP_UNSUPPORTED:
                return False
            raise
        return True


def _text(msg: Message) -> str:
    try:
        return msg.get_text()[:200]
    except (UnicodeDecodeError, paramiko.SSHException):
        return "(no readable message)"


def _load_private_key(connector: str, spec: ConnectorSpec) -> paramiko.PKey | None:
    """The login key named by ``credentials.private_key`` (the key itself, or an absolute path to it)."""
    if "private_key" not in spec.credentials:
        return None
    raw = credential(connector, spec, "private_key").get_secret_value()
    passphrase = (
        credential(connector, spec, "passphrase").get_secret_value() if "passphrase" in spec.credentials else None
    )
    where = f"credentials.private_key of connector {connector!r}"
    if raw.lstrip().startswith("-----BEGIN"):
        text = raw
    else:
        path = Path(raw)
        if not path.is_absolute():
            raise ConfigError(f"{where} must hold the private key itself or an absolute path to it")
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read the key file {path}: {type(exc).__name__}") from None
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise ConfigError(f"{where} is encrypted: name its passphrase in credentials.passphrase") from None
        except (paramiko.SSHException, ValueError):
            continue
    raise ConfigError(
        f"{where} is not an OpenSSH or PEM private key (ed25519, ecdsa or rsa) or its passphrase is wrong"
    )


class SftpClient:
    """Uploads, lookups, downloads and listings on one SFTP server, each on its own checked connection.

    Args:
        name: the connector's name (logs, messages).
        spec: its ``connectors.yaml`` entry. ``endpoint`` is ``sftp://HOST[:PORT][/BASE/DIR]`` (the base
            directory every remote path is under; default the login directory). Options: ``username``
            and ``known_hosts`` (required); ``host_key_alias`` (the name to look up in known_hosts instead
            of ``[HOST]:PORT``, e.g. behind a port forward); ``ledger_dir`` (``.igate-bus``);
            ``max_file_bytes`` (1 GiB); ``requests_in_flight`` (64). Credentials:
            ``private_key`` (the key, or an absolute path to it) with ``passphrase``, and/or ``password``.

    Raises:
        ConfigError: a bad endpoint, a missing option, an unreadable known_hosts or key, no credential.
    """

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        self.name = name
        self.spec = spec
        url = urlsplit(endpoint(name, spec))
        if url.scheme != "sftp" or not url.hostname:
            raise ConfigError(f"connector {name!r}: endpoint must be sftp://HOST[:PORT][/DIR]", field="endpoint")
        if url.username or url.password or url.query or url.fragment:
            raise ConfigError(
                f"connector {name!r}: endpoint must hold no user, password, query or fragment "
                "(the user is options.username; secrets go in credentials)",
                field="endpoint",
            )
        self.host = url.hostname
        try:
            self.port = url.port or _SSH_PORT
        except ValueError:
            raise ConfigError(f"connector {name!r}: endpoint has a bad port", field="endpoint") from None
        base = url.path.strip("/")
        self.base = "/" + _config_path(name, base, "endpoint") if base else ""
        self.username = required_option(name, spec, "username", "the SFTP account")
        known = Path(required_option(name, spec, "known_hosts", "the host keys to trust"))
        if not known.is_absolute() or not known.is_file():
            raise ConfigError(
                f"connector {name!r}: options.known_hosts {str(known)!r} is not an absolute path to a file",
                field="options.known_hosts",
            )
        try:
            paramiko.HostKeys(str(known))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise ConfigError(
                f"connector {name!r}: options.known_hosts {known} cannot be read: {type(exc).__name__}",
                field="options.known_hosts",
            ) from None
        self.known_hosts = known
        alias = spec.options.get("host_key_alias")
        default_alias = self.host if self.port == _SSH_PORT else f"[{self.host}]:{self.port}"
        self.host_key_name = str(alias) if alias else default_alias
        ledger = str(spec.options.get("ledger_dir", DEFAULT_LEDGER_DIR))
        if not _LEDGER_DIR.fullmatch(ledger):
            raise ConfigError(
                f"connector {name!r}: options.ledger_dir {ledger!r} must be a relative path of letters, digits, "
                "'.', '_' and '-'",
                field="options.ledger_dir",
            )
        self.ledger_dir = ledger
        self.max_file_bytes = _int_option(name, spec, "max_file_bytes", DEFAULT_MAX_FILE_BYTES, 0, 1 << 40)
        self.in_flight = _int_option(name, spec, "requests_in_flight", DEFAULT_IN_FLIGHT, 1, 256)
        self._pkey = _load_private_key(name, spec)
        self._password = credential(name, spec, "password") if "password" in spec.credentials else None
        if self._pkey is None and self._password is None:
            raise ConfigError(
                f"connector {name!r} needs credentials.private_key or credentials.password", field="credentials"
            )
        self.where = f"sftp://{self.host}:{self.port}"
        #: the kit's breaker, rate limit and deadline, around every operation
        self.guard = Guard(name, spec, log_as="sftp")

    # -- paths ----------------------------------------------------------------------------------------------

    def _remote(self, relative: str) -> str:
        """A path on the server from one relative to the base directory."""
        if not self.base:
            return relative or "."
        return f"{self.base}/{relative}" if relative else self.base

    def _ledger_entry(self, key: str) -> str:
        return self._remote(f"{self.ledger_dir}/{key}.json")

    # -- operations -----------------------------------------------------------------------------------------

    def put(
        self,
        source: BinaryIO,
        size: int,
        *,
        remote_dir: str,
        remote_name: str,
        idempotency_key: str,
        expected_sha256: str | None = None,
    ) -> PutResult:
        """Send ``source`` (``size`` bytes) to ``remote_dir/remote_name``, at most once per key.

        Args:
            source: an open, seekable local file (read with ``pread``; its position is not used).
            size: its size when it was opened; a file that changes meanwhile is refused.
            remote_dir: directory under the base directory ('' = the base); missing ones are created.
            remote_name: the final name.
            idempotency_key: the pipeline's key for this effect (names the temporary file and the ledger).
            expected_sha256: what the bytes must hash to, when the producer said so.

        Raises:
            MappingError, TargetRejected, TargetUnavailable, TargetTimeout: see the module's table.
        """
        key = check_key(idempotency_key)
        directory = _field_checked(check_relative_path, remote_dir, "remote_dir", allow_empty=True)
        name = _field_checked(check_name, remote_name, "remote_name")
        if size > self.max_file_bytes:
            raise MappingError(f"the file is {size} bytes, over max_file_bytes {self.max_file_bytes}", field="source")
        relative = f"{directory}/{name}" if directory else name
        fd = source.fileno()
        started = time.monotonic()
        with self._session("put", relative) as s:
            final = self._remote(relative)
            temp = self._remote(f"{directory}/{temp_name(name, key)}" if directory else temp_name(name, key))
            s.mkdirs(self._remote(directory))
            present = s.stat(final)
            if present is not None:
                result = self._already_there(s, fd, size, final, relative, present, expected_sha256, key)
            else:
                resumed, digest = self._upload(s, fd, size, temp, expected_sha256)
                result = replace(
                    self._commit(s, temp, final, relative, size, digest, resumed, key),
                    send_seconds=s.timings.get("send", 0.0),
                    verify_seconds=s.timings.get("verify", 0.0),
                )
        elapsed = time.monotonic() - started
        log.info(
            "sftp.put",
            connector=self.name,
            remote_path=relative,
            size=size,
            sha256=result.sha256,
            outcome=result.outcome,
            resumed_from=result.resumed_from,
            duration_ms=round(elapsed * 1000, 1),
            send_ms=round(result.send_seconds * 1000, 1),
            verify_ms=round(result.verify_seconds * 1000, 1),
        )
        return result

    def lookup(self, idempotency_key: str) -> PutResult | None:
        """The file an earlier :meth:`put` under this key placed, or None when none was ever renamed into place.

        Raises:
            TargetUnavailable: the server could not be asked (``maybe_applied=True``: keep the claim).
            AmbiguousOutcome: the ledger says the rename was under way and neither file is there.
        """
        key = check_key(idempotency_key)
        with self._session("lookup", key, lookup=True) as s:
            entry = self._read_ledger(s, key)
            if entry is None:
                return None
            relative, size, digest, state = entry
            final = self._remote(relative)
            present = s.stat(final)
            if present is not None:
                if present.st_size != size or s.sha256_of(final, size) != digest:
                    raise AmbiguousOutcome(
                        f"{relative} holds other bytes than the ones sent under key {key}: replaced on the server?"
                    )
                return PutResult(relative, size, digest, "uploaded")
            if state == "done":
                return PutResult(relative, size, digest, "uploaded", still_present=False)
            directory, _, name = relative.rpartition("/")
            temp = self._remote(f"{directory}/{temp_name(name, key)}" if directory else temp_name(name, key))
            if s.stat(temp) is not None:
                return None  # staged, never renamed: the next put resumes it
            raise AmbiguousOutcome(
                f"{relative} was about to be renamed into place under key {key}, and neither it nor its temporary "
                "file is on the server: taken by the receiver, or removed? Check with the receiver, then replay or drop"
            )

    def get(
        self,
        remote_dir: str,
        remote_name: str,
        dest: Path,
        *,
        expected_sha256: str | None = None,
        max_bytes: int | None = None,
    ) -> GetResult:
        """Fetch ``remote_dir/remote_name`` into ``dest`` (a temporary ``.<name>.part`` first, then renamed).

        Raises:
            MappingError: unsafe names, or ``dest`` already holds other bytes (never overwritten).
            TargetRejected: missing, not a regular file, or over the size cap.
            TargetUnavailable, TargetTimeout: see the module's table.
        """
        directory = _field_checked(check_relative_path, remote_dir, "remote_dir", allow_empty=True)
        name = _field_checked(check_name, remote_name, "remote_name")
        cap = self.max_file_bytes if max_bytes is None else min(max_bytes, self.max_file_bytes)
        relative = f"{directory}/{name}" if directory else name
        partial = dest.with_name(f".{dest.name}.part")
        started = time.monotonic()
        with self._session("get", relative) as s:
            remote = self._remote(relative)
            info = s.stat(remote)
            if info is None:
                raise TargetRejected(f"{relative}: no such file on the server", code="not_found")
            if info.st_mode is None or not stat.S_ISREG(info.st_mode):
                raise TargetRejected(f"{relative} is not a regular file", code="not_a_file")
            size = int(info.st_size or 0)
            if size > cap:
                raise TargetRejected(f"{relative} is {size} bytes, over the {cap}-byte cap", code="too_large")
            resumed, digest = s.download(remote, size, partial, expected_sha256)
            after = s.stat(remote)
            if after is None or after.st_size != size or after.st_mtime != info.st_mtime:
                _discard(partial)
                raise TargetUnavailable(f"{relative} changed on the server while it was read")
        if expected_sha256 is not None and digest != expected_sha256:
            _discard(partial)
            raise TargetUnavailable(f"{relative}: the bytes read hash to {digest}, not the expected {expected_sha256}")
        outcome = _place(partial, dest, digest)
        log.info(
            "sftp.get",
            connector=self.name,
            remote_path=relative,
            size=size,
            sha256=digest,
            outcome=outcome,
            resumed_from=resumed,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return GetResult(dest, size, digest, outcome, resumed)

    def list_dir(self, remote_dir: str, *, limit: int = 1000) -> tuple[list[RemoteEntry], int, bool]:
        """The regular files of a remote directory with safe names, sorted; how many unsafe names; truncated?"""
        directory = _field_checked(check_relative_path, remote_dir, "remote_dir", allow_empty=True)
        with self._session("list", directory or ".") as s:
            return s.listing(self._remote(directory), limit)

    def check(self) -> None:
        """Connect, log in and stat the base directory, bypassing the breaker (a connector's probe).

        Raises:
            BusError: the server cannot be reached, its host key or our login is refused, no base directory.
        """
        with self._session("probe", ".", guard=False) as s:
            if s.stat(self._remote("")) is None:
                raise TargetRejected("the base directory does not exist", code="not_found")

    # -- steps of an upload ---------------------------------------------------------------------------------

    def _already_there(
        self,
        s: _Session,
        fd: int,
        size: int,
        final: str,
        relative: str,
        present: paramiko.SFTPAttributes,
        expected: str | None,
        key: str,
    ) -> PutResult:
        """The final name is taken: the same bytes are this effect already applied; others are refused."""
        digest = _local_sha256(fd, size)
        _check_expected(digest, expected)
        if present.st_size != size or s.sha256_of(final, size) != digest:
            raise TargetRejected(
                f"{relative} already exists on the server with other content ({present.st_size} bytes); "
                "refusing to overwrite it",
                code="exists",
            )
        self._write_ledger(s, key, relative, size, digest, "done")
        s.remove_quietly(self._remote(_temp_relative(relative, key)))
        return PutResult(relative, size, digest, "already_present")

    def _upload(self, s: _Session, fd: int, size: int, temp: str, expected: str | None) -> tuple[int, str]:
        """Write the temporary file (continuing a verified prefix), fsync it, read it back: (resumed, sha256)."""
        hasher = hashlib.sha256()
        offset = 0
        existing = s.stat(temp)
        if existing is not None and 0 < (existing.st_size or 0) <= size:
            prefix = int(existing.st_size or 0)
            local = _local_sha256(fd, prefix, hasher)
            if s.sha256_of(temp, prefix) == local:
                offset = prefix
            else:
                hasher = hashlib.sha256()
        sending = time.monotonic()
        handle_file = s.sftp.open(temp, "r+" if offset else "w")
        try:
            s.wire.write_from(s.handle(handle_file), _local_chunks(fd, offset, size, hasher), self.in_flight)
            s.wire.fsync(s.handle(handle_file))
        finally:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                handle_file.close()
        with _local("reading the source"):
            changed = os.fstat(fd).st_size != size
        if changed:
            raise _SourceChangedError
        digest = hasher.hexdigest()
        try:
            _check_expected(digest, expected)
        except MappingError:
            s.remove_quietly(temp)
            raise
        s.timings["send"] = time.monotonic() - sending
        s.phase = "verify"
        verifying = time.monotonic()
        info = s.stat(temp)
        complete_prefix = offset == size and size > 0  # the whole temporary file was read back just above
        if info is None or info.st_size != size or (not complete_prefix and s.sha256_of(temp, size) != digest):
            s.remove_quietly(temp)
            got = "missing" if info is None else f"{info.st_size} bytes"
            raise TargetUnavailable(
                f"the temporary file read back ({got}) does not hold the {size} bytes sent; removed, to be sent again"
            )
        s.timings["verify"] = time.monotonic() - verifying
        return offset, digest

    def _commit(
        self, s: _Session, temp: str, final: str, relative: str, size: int, digest: str, resumed: int, key: str
    ) -> PutResult:
        """Ledger ``staged``, rename (never over an existing file), ledger ``done``."""
        self._write_ledger(s, key, relative, size, digest, "staged")
        s.phase = "commit"  # from here on the effect may be applied
        try:
            s.sftp.rename(temp, final)
        except OSError as exc:
            if isinstance(exc, TimeoutError) or (
                not isinstance(exc, FileNotFoundError | PermissionError) and exc.errno
            ):
                raise  # the connection, not the server's answer: translated as maybe applied
            # The final name is taken (or our temporary file is gone): a concurrent attempt under the same key,
            # or another file. Only the same bytes count as this effect.
            present = s.stat(final)
            if present is None or present.st_size != size or s.sha256_of(final, size) != digest:
                raise
            s.remove_quietly(temp)
            self._write_ledger(s, key, relative, size, digest, "done")
            return PutResult(relative, size, digest, "already_present", resumed)
        self._write_ledger(s, key, relative, size, digest, "done")
        return PutResult(relative, size, digest, "uploaded", resumed)

    def _write_ledger(self, s: _Session, key: str, relative: str, size: int, digest: str, state: str) -> None:
        entry = {
            "key": key,
            "remote_path": relative,
            "size": size,
            "sha256": digest,
            "state": state,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        body = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode()
        s.mkdirs(self._remote(self.ledger_dir))
        target = self._ledger_entry(key)
        scratch = self._remote(f"{self.ledger_dir}/.{key}.json.tmp")
        with s.sftp.open(scratch, "w") as f:
            f.write(body)
        try:
            s.sftp.posix_rename(scratch, target)
        except OSError as exc:
            if isinstance(exc, TimeoutError) or exc.errno is not None:
                raise
            s.remove_quietly(target)  # a server without posix-rename@openssh.com: replace in two steps
            s.sftp.rename(scratch, target)

    def _read_ledger(self, s: _Session, key: str) -> tuple[str, int, str, str] | None:
        path = self._ledger_entry(key)
        if s.stat(path) is None:
            return None
        with s.sftp.open(path, "r") as f:
            raw = f.read(LEDGER_ENTRY_MAX_BYTES + 1)
        try:
            return _parse_ledger(raw, key)
        except (ValueError, KeyError, TypeError) as exc:
            raise TargetUnavailable(
                f"ledger entry {self.ledger_dir}/{key}.json is not one of ours ({exc})", maybe_applied=True
            ) from None

    # -- connections ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, operation: str, what: str, *, lookup: bool = False, guard: bool = True) -> Iterator[_Session]:
        """One connection for one operation, inside one call of the guard, its errors translated (module table).

        Args:
            operation: what it is for (logs): put, lookup, get, list, probe.
            what: the remote path or key it is about (logs).
            lookup: a lookup, whose every failure keeps the claim maybe applied.
            guard: False for the probe, which must see the server and not the breaker.
        """
        deadline = self.guard.deadline()
        with self.guard.call(deadline, guard=guard, operation=operation, target=what):
            session = _Session(self, deadline)
            try:
                session.open()
                yield session
            except BusError as exc:
                raise _for_lookup(exc) if lookup else exc from None
            except Exception as exc:
                error = self._translate(exc, session, lookup=lookup)
                raise _for_lookup(error) if lookup else error from None
            finally:
                session.close()

    def _translate(self, exc: BaseException, s: _Session, *, lookup: bool) -> BusError:  # noqa: C901, PLR0911 - one branch per row of the module's table
        maybe = lookup or s.phase == "commit"
        if isinstance(exc, _LocalError):
            return TransientError(f"local spool: {exc}")
        if isinstance(exc, _SourceChangedError):
            return MappingError("the local file changed while it was sent; finish it before publishing", field="source")
        if isinstance(exc, _UnknownHostKeyError):
            log.error("sftp.host_key_unknown", connector=self.name, host=exc.hostname, offered=fingerprint(exc.key))
            return self._operator_problem(
                HostKeyRefused,
                f"host key of {exc.hostname} is not in known_hosts {self.known_hosts}: the server offered "
                f"{fingerprint(exc.key)}; nothing was sent. Add the key only after checking that fingerprint "
                "with the server's administrator",
                "known_hosts",
            )
        if isinstance(exc, paramiko.BadHostKeyException):
            offered, expected = fingerprint(exc.key), fingerprint(exc.expected_key)
            log.error(
                "sftp.host_key_changed", connector=self.name, host=exc.hostname, offered=offered, expected=expected
            )
            return self._operator_problem(
                HostKeyRefused,
                f"host key of {exc.hostname} CHANGED: known_hosts {self.known_hosts} lists {expected}, the server "
                f"offered {offered}; refused, nothing was sent (a changed key can mean a man in the middle)",
                "known_hosts",
            )
        if isinstance(exc, paramiko.AuthenticationException):
            log.error("credentials_refused", connector=self.name, what="login", host=self.host, user=self.username)
            return self._operator_problem(
                CredentialsRefused,
                f"{self.where} refused the login of {self.username!r} ({type(exc).__name__}): check the bus's "
                "account and key; events wait meanwhile",
                "credentials",
            )
        if isinstance(exc, _DeadlineError) or s.deadline_passed():
            text = f"the {self.spec.timeout.total:g}s deadline passed ({s.phase})"
            return TargetTimeout(text) if maybe else TargetUnavailable(text, maybe_applied=False)
        if isinstance(exc, TimeoutError):
            text = f"no answer from {self.where} in time ({s.phase})"
            return TargetTimeout(text) if maybe else TargetUnavailable(text, maybe_applied=False)
        if isinstance(exc, _StatusError):
            return self._status(exc.code, exc.text, s.phase, maybe)
        if isinstance(exc, FileNotFoundError):
            return self._status(FX_NO_SUCH_FILE, str(exc.strerror or exc), s.phase, maybe)
        if isinstance(exc, PermissionError):
            return self._status(FX_PERMISSION_DENIED, str(exc.strerror or exc), s.phase, maybe)
        if isinstance(exc, OSError) and exc.errno is None and s.connected:
            return TargetUnavailable(f"{self.where} failed a request ({s.phase}): {exc}", maybe_applied=maybe)
        if isinstance(exc, OSError | EOFError | paramiko.SSHException | paramiko.SFTPError):
            where = "connecting to" if not s.connected else "connection lost with"
            return TargetUnavailable(f"{where} {self.where} ({s.phase}: {type(exc).__name__})", maybe_applied=maybe)
        log.error("sftp.unexpected_error", connector=self.name, phase=s.phase, exc_info=exc)
        return TargetUnavailable(f"unexpected {type(exc).__name__} ({s.phase})", maybe_applied=True)

    def _operator_problem(
        self, kind: type[HostKeyRefused | CredentialsRefused], message: str, field: str
    ) -> HostKeyRefused | CredentialsRefused:
        """Open the breaker at once (nothing the server says can help until an operator acts) and say so."""
        self.guard.breaker.trip(message)
        return kind(message, field=field, retry_after=self.guard.breaker.reset_timeout)

    def _status(self, code: int, text: str, phase: str, maybe: bool) -> BusError:
        if code == FX_PERMISSION_DENIED:
            return TargetRejected(f"{self.where} denied permission ({phase}): {text}", code="permission")
        if code == FX_NO_SUCH_FILE and phase == "prepare":
            return TargetRejected(f"{self.where}: no such file or directory ({phase}): {text}", code="not_found")
        return TargetUnavailable(f"{self.where} failed a request ({phase}): status {code}: {text}", maybe_applied=maybe)


class _Session:
    """One SSH connection and its SFTP channel, bounded by one deadline; knows the phase it is in."""

    def __init__(self, client: SftpClient, deadline: float) -> None:
        self.client = client
        self.deadline = deadline
        self.phase = "connect"
        self.connected = False
        self.timings: dict[str, float] = {}
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._wire: _Wire | None = None
        self._ticket: int | None = None
        self._expired = threading.Event()

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The SFTP client of this session."""
        assert self._sftp is not None  # noqa: S101 - only used after open()
        self.tick()
        return self._sftp

    @property
    def wire(self) -> _Wire:
        """Pipelined requests on this session."""
        assert self._wire is not None  # noqa: S101 - only used after open()
        return self._wire

    @staticmethod
    def handle(file: paramiko.SFTPFile) -> bytes:
        """The server's handle of an open file."""
        return cast("bytes", file.handle)

    def remaining(self) -> float:
        """Seconds left before the deadline."""
        return self.deadline - time.monotonic()

    def deadline_passed(self) -> bool:
        """Whether the deadline passed (or its timer already closed the connection)."""
        return self._expired.is_set() or self.remaining() <= 0

    def tick(self) -> None:
        """Check the deadline; make the next wait on the channel end by it, and by the read timeout."""
        left = self.remaining()
        if left <= 0 or self._expired.is_set():
            raise _DeadlineError
        if self._sftp is not None:
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(min(self.client.spec.timeout.read, left))

    def open(self) -> None:
        """TCP, host key, login, SFTP channel: each step bounded by the connect timeout and the deadline."""
        client = self.client
        self._ticket = WATCHDOG.arm(self.deadline, self._expire)
        wait = min(client.spec.timeout.connect, max(self.remaining(), 0.001))
        sock = socket.create_connection((client.host, client.port), timeout=wait)
        ssh = paramiko.SSHClient()
        self._ssh = ssh
        try:
            ssh.load_host_keys(str(client.known_hosts))
        except OSError as exc:
            raise TargetUnavailable(
                f"known_hosts {client.known_hosts} cannot be read now ({exc.strerror}); nothing was sent",
                field="known_hosts",
            ) from None
        ssh.set_missing_host_key_policy(_RefuseUnknownHost())
        host, _, port = client.host_key_name.removeprefix("[").partition("]:")
        # With our own socket, paramiko uses hostname and port only to look the host key up.
        ssh.connect(
            hostname=host if port else client.host_key_name,
            port=int(port) if port else _SSH_PORT,
            username=client.username,
            password=client._password.get_secret_value() if client._password is not None else None,  # noqa: SLF001
            pkey=client._pkey,  # noqa: SLF001
            sock=sock,
            timeout=wait,
            banner_timeout=wait,
            auth_timeout=wait,
            channel_timeout=wait,
            allow_agent=False,
            look_for_keys=False,
        )
        transport = ssh.get_transport()
        if transport is None:
            raise paramiko.SSHException("no transport after login")
        self.tick()
        sftp = paramiko.SFTPClient.from_transport(transport, window_size=CHANNEL_WINDOW)
        if sftp is None:
            raise paramiko.SSHException("the server refused the SFTP channel")
        self._sftp = sftp
        self._wire = _Wire(sftp, self.tick)
        self.connected = True
        self.phase = "prepare"

    def _expire(self) -> None:
        """The deadline passed: close the connection, which wakes whatever waits on it."""
        self._expired.set()
        if self._ssh is not None:
            with contextlib.suppress(Exception):  # the watchdog's thread must survive a failing close
                self._ssh.close()

    def close(self) -> None:
        """Close the channel and the connection; disarm the deadline's watchdog."""
        if self._ticket is not None:
            WATCHDOG.disarm(self._ticket)
        with contextlib.suppress(Exception):
            if self._sftp is not None:
                self._sftp.close()
        with contextlib.suppress(Exception):
            if self._ssh is not None:
                self._ssh.close()

    # -- requests -------------------------------------------------------------------------------------------

    def stat(self, path: str) -> paramiko.SFTPAttributes | None:
        """The attributes of ``path``, or None when it does not exist."""
        try:
            return self.sftp.stat(path)
        except FileNotFoundError:
            return None

    def mkdirs(self, path: str) -> None:
        """Create ``path`` and its missing parents (under the base directory)."""
        if path in {"", "."} or self.stat(path) is not None:
            return
        parent = path.rpartition("/")[0]
        if parent and parent != self.client.base:
            self.mkdirs(parent)
        try:
            self.sftp.mkdir(path)
        except OSError:
            if self.stat(path) is None:  # not created by a concurrent attempt either
                raise

    def remove_quietly(self, path: str) -> None:
        """Remove a file of ours if it is there; a missing file is fine."""
        with contextlib.suppress(FileNotFoundError):
            self.sftp.remove(path)

    def sha256_of(self, path: str, size: int) -> str:
        """SHA-256 of the first ``size`` bytes of a remote file, read back in pipelined requests."""
        hasher = hashlib.sha256()
        with self.sftp.open(path, "r") as file:
            for data in self.wire.read_range(self.handle(file), 0, size, self._read_flight()):
                hasher.update(data)
        return hasher.hexdigest()

    def _read_flight(self) -> int:
        return max(1, min(self.client.in_flight, CHANNEL_WINDOW // (2 * CHUNK)))

    def download(self, remote: str, size: int, partial: Path, expected: str | None) -> tuple[int, str]:
        """Read a remote file into ``partial``, continuing it when ``expected`` will prove the whole."""
        self.phase = "read"
        hasher = hashlib.sha256()
        offset = 0
        with _local(f"the spool's {partial.name}"):
            if expected is not None and partial.is_file() and partial.stat().st_size <= size:
                with partial.open("rb") as kept:
                    while chunk := kept.read(CHUNK * 8):
                        hasher.update(chunk)
                        offset += len(chunk)
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (0 if offset else os.O_TRUNC)
            fd = os.open(partial, flags, 0o640)
        resumed = offset
        try:
            with self.sftp.open(remote, "r") as file:
                for data in self.wire.read_range(self.handle(file), offset, size, self._read_flight()):
                    hasher.update(data)
                    with _local(f"the spool's {partial.name}"):
                        os.pwrite(fd, data, offset)
                    offset += len(data)
            with _local(f"the spool's {partial.name}"):
                os.ftruncate(fd, size)
                os.fsync(fd)
        finally:
            os.close(fd)
        return resumed, hasher.hexdigest()

    def listing(self, path: str, limit: int) -> tuple[list[RemoteEntry], int, bool]:
        """Up to ``limit`` regular files of a directory, sorted by name; unsafe names counted."""
        entries: list[RemoteEntry] = []
        skipped = 0
        truncated = False
        for attr in self.sftp.listdir_iter(path):
            self.tick()
            if attr.st_mode is None or not stat.S_ISREG(attr.st_mode):
                continue
            try:
                name = check_name(attr.filename)
            except ValueError:
                skipped += 1
                continue
            if name != attr.filename:  # not NFC on the server: another name than the one we would ask for
                skipped += 1
                continue
            if len(entries) >= limit:
                truncated = True
                break
            entries.append(RemoteEntry(name, int(attr.st_size or 0), int(attr.st_mtime or 0)))
        entries.sort(key=lambda e: e.name)
        return entries, skipped, truncated


# -- local helpers ------------------------------------------------------------------------------------------


def _for_lookup(exc: BusError) -> BusError:
    """A lookup that fails for any reason keeps the claim maybe applied; only an ambiguous answer stays one."""
    if isinstance(exc, AmbiguousOutcome) or getattr(exc, "maybe_applied", False):
        return exc
    return TargetUnavailable(f"lookup failed: {exc}", field=exc.field, maybe_applied=True)


def _config_path(connector: str, value: str, field: str) -> str:
    try:
        return check_relative_path(value)
    except ValueError as exc:
        raise ConfigError(f"connector {connector!r}: {field}: {exc}", field=field) from None


def _int_option(connector: str, spec: ConnectorSpec, key: str, default: int, low: int, high: int) -> int:
    value = spec.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"connector {connector!r}: options.{key} must be a whole number from {low} to {high}",
            field=f"options.{key}",
        )
    return value


def _temp_relative(relative: str, key: str) -> str:
    directory, _, name = relative.rpartition("/")
    return f"{directory}/{temp_name(name, key)}" if directory else temp_name(name, key)


def _local_chunks(fd: int, offset: int, size: int, hasher: Any) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` pieces of the local file from ``offset`` to ``size``, hashed as they are read."""
    while offset < size:
        with _local("reading the source"):
            data = os.pread(fd, min(CHUNK, size - offset), offset)
        if not data:
            raise _SourceChangedError
        hasher.update(data)
        yield offset, data
        offset += len(data)
    with _local("reading the source"):
        beyond = os.pread(fd, 1, size)
    if beyond:
        raise _SourceChangedError


def _local_sha256(fd: int, size: int, hasher: Any = None) -> str:
    """SHA-256 of the first ``size`` bytes of a local file (feeding ``hasher`` when given)."""
    hasher = hasher if hasher is not None else hashlib.sha256()
    offset = 0
    while offset < size:
        with _local("reading the source"):
            data = os.pread(fd, min(CHUNK * 8, size - offset), offset)
        if not data:
            raise _SourceChangedError
        hasher.update(data)
        offset += len(data)
    return str(hasher.hexdigest())


def _parse_ledger(raw: bytes, key: str) -> tuple[str, int, str, str]:
    """``(remote_path, size, sha256, state)`` of a ledger entry; ``ValueError`` when it is not one of ours."""
    if len(raw) > LEDGER_ENTRY_MAX_BYTES:
        raise ValueError("too large")
    entry = json.loads(raw)
    relative = check_relative_path(entry["remote_path"])
    size, digest, state = entry["size"], entry["sha256"], entry["state"]
    if entry["key"] != key or not isinstance(size, int) or size < 0 or state not in {"staged", "done"}:
        raise ValueError("unexpected fields")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("not a sha256")
    return relative, size, digest, state


def _check_expected(digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise MappingError(f"the file's bytes hash to {digest}, not to the sha256 the request gives", field="sha256")


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _place(partial: Path, dest: Path, digest: str) -> str:
    """Move a verified download into place without overwriting a different file; ``downloaded`` or not."""
    try:
        os.link(partial, dest)
    except FileExistsError:
        with dest.open("rb") as existing:
            same = hashlib.file_digest(existing, "sha256").hexdigest() == digest
        _discard(partial)
        if not same:
            raise MappingError(
                "the spool already holds another file under that name; not overwritten", field="dest"
            ) from None
        return "already_present"
    _discard(partial)
    with contextlib.suppress(OSError):
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return "downloaded"
