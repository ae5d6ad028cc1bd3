"""One SSH connection to an SFTP server, its host key checked, bounded by one deadline: the session layer.

Where it sits: between ``connectors/_sftp.py`` (what a transfer does) and ``connectors/_sftp_wire.py`` (how
requests travel), inside the connector step (event → route → adapter → **connector** → result/DLQ).
:class:`SshTarget` is what a connector's spec says about the server (parsed and checked once, at start);
:class:`Session` opens one connection for one operation:

- our own TCP socket (connect timeout), then ``SSHClient`` with ``load_host_keys(known_hosts)`` and a
  ``RejectPolicy`` (:class:`RefuseUnknownHost`, which keeps the offered key so its fingerprint can be
  named): an unknown host raises :class:`UnknownHostKeyError`, a changed key paramiko's
  ``BadHostKeyException``, before any credential is sent. The system's known_hosts is never read and no key
  is ever added; ``Transport.connect(hostkey=None)`` (which skips the check) is never called;
- the login with the configured key or password only (no agent, no ``~/.ssh`` keys);
- the SFTP channel; every later wait on it ends by ``timeout.read`` and by the deadline (:meth:`Session.tick`),
  and the kit's watchdog closes the connection when the deadline passes, whatever the server does.

Its requests raise paramiko's errors; ``connectors/_sftp.py`` translates them into the error tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn, cast
from urllib.parse import urlsplit

import paramiko

from connectors._sftp_wire import CHUNK, Wire
from connectors._spool import local
from connectors.base import credential, endpoint, required_option
from connectors.kit.guard import WATCHDOG
from schemas.errors import ConfigError, TargetUnavailable
from schemas.sftp import check_name, check_relative_path

if TYPE_CHECKING:
    from pydantic import SecretStr

    from config.model import ConnectorSpec

#: write requests outstanding at once, by default (OpenSSH's sftp client uses 64)
DEFAULT_IN_FLIGHT: Final = 64
#: an SFTP channel's receive window; read requests in flight are kept to half of it, so replies never stall
CHANNEL_WINDOW: Final = 4 << 20
SSH_PORT: Final = 22


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """A regular file found by :meth:`SftpClient.list`."""

    name: str
    size: int
    mtime: int


def fingerprint(key: paramiko.PKey) -> str:
    """A key as ``ssh-ed25519 SHA256:…``, the form ``ssh-keygen -lf`` and OpenSSH's prompts print."""
    return f"{key.get_name()} {key.fingerprint}"


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where and as whom to connect, and how long to wait: what a connector's spec says, checked at start."""

    host: str
    port: int
    #: the name looked up in known_hosts: ``host``, ``[host]:port``, or ``options.host_key_alias``
    host_key_name: str
    known_hosts: Path
    username: str
    password: SecretStr | None
    pkey: paramiko.PKey | None
    connect_s: float
    read_s: float
    #: requests outstanding at once on the wire
    in_flight: int
    #: the base directory on the server (``/inbox``), or "" for the login directory
    base: str

    @property
    def where(self) -> str:
        """``sftp://host:port``, for messages."""
        return f"sftp://{self.host}:{self.port}"

    @classmethod
    def from_spec(cls, name: str, spec: ConnectorSpec) -> SshTarget:
        """Parse and check the endpoint, known_hosts, account, credentials and limits of a connector.

        Raises:
            ConfigError: a bad endpoint, a missing option, an unreadable known_hosts or key, no credential.
        """
        url = urlsplit(endpoint(name, spec))
        if url.scheme != "sftp" or not url.hostname:
            raise ConfigError(f"connector {name!r}: endpoint must be sftp://HOST[:PORT][/DIR]", field="endpoint")
        if url.username or url.password or url.query or url.fragment:
            raise ConfigError(
                f"connector {name!r}: endpoint must hold no user, password, query or fragment "
                "(the user is options.username; secrets go in credentials)",
                field="endpoint",
            )
        try:
            port = url.port or SSH_PORT
        except ValueError:
            raise ConfigError(f"connector {name!r}: endpoint has a bad port", field="endpoint") from None
        base = url.path.strip("/")
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
        alias = spec.options.get("host_key_alias")
        pkey = load_private_key(name, spec)
        password = credential(name, spec, "password") if "password" in spec.credentials else None
        if pkey is None and password is None:
            raise ConfigError(
                f"connector {name!r} needs credentials.private_key or credentials.password", field="credentials"
            )
        return cls(
            host=url.hostname,
            port=port,
            host_key_name=str(alias) if alias else (url.hostname if port == SSH_PORT else f"[{url.hostname}]:{port}"),
            known_hosts=known,
            username=required_option(name, spec, "username", "the SFTP account"),
            password=password,
            pkey=pkey,
            connect_s=spec.timeout.connect,
            read_s=spec.timeout.read,
            in_flight=int_option(name, spec, "requests_in_flight", DEFAULT_IN_FLIGHT, 1, 256),
            base="/" + config_path(name, base, "endpoint") if base else "",
        )


class UnknownHostKeyError(paramiko.SSHException):
    """The server's host is not in the configured known_hosts."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


class RefuseUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising an error that keeps the offered key (for its fingerprint)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        """Refuse, always."""
        del client
        raise UnknownHostKeyError(hostname, key)


class DeadlineError(Exception):
    """The operation's total deadline passed."""


def load_private_key(connector: str, spec: ConnectorSpec) -> paramiko.PKey | None:
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


class Session:
    """One SSH connection and its SFTP channel, bounded by one deadline; knows the phase it is in."""

    def __init__(self, target: SshTarget, deadline: float) -> None:
        self.target = target
        self.deadline = deadline
        self.phase = "connect"
        self.connected = False
        self.timings: dict[str, float] = {}
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._wire: Wire | None = None
        self._ticket: int | None = None
        self._expired = threading.Event()

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The SFTP client of this session."""
        assert self._sftp is not None  # noqa: S101 - only used after open()
        self.tick()
        return self._sftp

    @property
    def wire(self) -> Wire:
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
            raise DeadlineError
        if self._sftp is not None:
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(min(self.target.read_s, left))

    def open(self) -> None:
        """TCP, host key, login, SFTP channel: each step bounded by the connect timeout and the deadline."""
        client = self.target
        self._ticket = WATCHDOG.arm(self.deadline, self._expire)
        wait = min(client.connect_s, max(self.remaining(), 0.001))
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
        ssh.set_missing_host_key_policy(RefuseUnknownHost())
        host, _, port = client.host_key_name.removeprefix("[").partition("]:")
        # With our own socket, paramiko uses hostname and port only to look the host key up.
        ssh.connect(
            hostname=host if port else client.host_key_name,
            port=int(port) if port else SSH_PORT,
            username=client.username,
            password=client.password.get_secret_value() if client.password is not None else None,
            pkey=client.pkey,
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
        self._wire = Wire(sftp, self.tick)
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
        if parent and parent != self.target.base:
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
        return max(1, min(self.target.in_flight, CHANNEL_WINDOW // (2 * CHUNK)))

    def download(self, remote: str, size: int, partial: Path, expected: str | None) -> tuple[int, str]:
        """Read a remote file into ``partial``, continuing it when ``expected`` will prove the whole."""
        self.phase = "read"
        hasher = hashlib.sha256()
        offset = 0
        with local(f"the spool's {partial.name}"):
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
                    with local(f"the spool's {partial.name}"):
                        os.pwrite(fd, data, offset)
                    offset += len(data)
            with local(f"the spool's {partial.name}"):
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


def config_path(connector: str, value: str, field: str) -> str:
    try:
        return check_relative_path(value)
    except ValueError as exc:
        raise ConfigError(f"connector {connector!r}: {field}: {exc}", field=field) from None


def int_option(connector: str, spec: ConnectorSpec, key: str, default: int, low: int, high: int) -> int:
    """A whole-number option within ``[low, high]``; ``ConfigError`` naming it otherwise."""
    value = spec.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"connector {connector!r}: options.{key} must be a whole number from {low} to {high}",
            field=f"options.{key}",
        )
    return value
