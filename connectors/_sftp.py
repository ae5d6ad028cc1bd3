"""The one SFTP client every connector that moves files builds on (paramiko): checked host, whole files, once.

Where it sits: inside the connector step (event → route → adapter → **connector** → result/DLQ) of every route
that moves a file: the generic ``sftp`` connector (``connectors/sftp.py``), the land system's documents and
the Finance reconciliation file. A connector builds one :class:`SftpClient` from its ``ConnectorSpec`` and
calls :meth:`SftpClient.put`, :meth:`SftpClient.lookup`, :meth:`SftpClient.get` or :meth:`SftpClient.list_dir`;
everything below is decided here once, so no connector can forget it. The connection itself (host key,
login, deadline) is ``connectors/_sftp_session.py``; the pipelined requests ``connectors/_sftp_wire.py``.

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
outstanding (``connectors/_sftp_wire.py``; paramiko's own prefetch can buffer a whole file), so an upload or
download holds a few MiB whatever the file's size.

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
import json
import os
import re
import stat
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import paramiko
import structlog

from connectors._sftp_session import (
    DeadlineError,
    RemoteEntry,
    Session,
    SshTarget,
    UnknownHostKeyError,
    fingerprint,
    int_option,
)
from connectors._sftp_wire import FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, StatusError
from connectors._spool import (
    LocalError,
    SourceChangedError,
    discard,
    local,
    place,
    source_chunks,
    source_sha256,
)
from connectors.kit.guard import Guard
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
    from pathlib import Path

    from config.model import ConnectorSpec

__all__ = ["GetResult", "PutResult", "RemoteEntry", "SftpClient", "check_key", "fingerprint", "temp_name"]

log = structlog.get_logger(__name__)

DEFAULT_MAX_FILE_BYTES: Final = 1 << 30
DEFAULT_LEDGER_DIR: Final = ".igate-bus"
#: a ledger entry is a few hundred bytes; a larger one is not ours
LEDGER_ENTRY_MAX_BYTES: Final = 4096
#: what an idempotency key may look like, since it names a ledger file on the server
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LEDGER_DIR: Final = re.compile(r"(?!\.{1,2}(/|\Z))[A-Za-z0-9._-]{1,64}(/(?!\.{1,2}(/|\Z))[A-Za-z0-9._-]{1,64}){0,3}")


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
        #: the server, the account and the waits, checked once
        self.target = SshTarget.from_spec(name, spec)
        self.base = self.target.base
        self.where = self.target.where
        self.known_hosts = self.target.known_hosts
        ledger = str(spec.options.get("ledger_dir", DEFAULT_LEDGER_DIR))
        if not _LEDGER_DIR.fullmatch(ledger):
            raise ConfigError(
                f"connector {name!r}: options.ledger_dir {ledger!r} must be a relative path of letters, digits, "
                "'.', '_' and '-'",
                field="options.ledger_dir",
            )
        self.ledger_dir = ledger
        self.max_file_bytes = int_option(name, spec, "max_file_bytes", DEFAULT_MAX_FILE_BYTES, 0, 1 << 40)
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
                discard(partial)
                raise TargetUnavailable(f"{relative} changed on the server while it was read")
        if expected_sha256 is not None and digest != expected_sha256:
            discard(partial)
            raise TargetUnavailable(f"{relative}: the bytes read hash to {digest}, not the expected {expected_sha256}")
        outcome = place(partial, dest, digest)
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
        s: Session,
        fd: int,
        size: int,
        final: str,
        relative: str,
        present: paramiko.SFTPAttributes,
        expected: str | None,
        key: str,
    ) -> PutResult:
        """The final name is taken: the same bytes are this effect already applied; others are refused."""
        digest = source_sha256(fd, size)
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

    def _upload(self, s: Session, fd: int, size: int, temp: str, expected: str | None) -> tuple[int, str]:
        """Write the temporary file (continuing a verified prefix), fsync it, read it back: (resumed, sha256)."""
        hasher = hashlib.sha256()
        offset = 0
        existing = s.stat(temp)
        if existing is not None and 0 < (existing.st_size or 0) <= size:
            prefix = int(existing.st_size or 0)
            ours = source_sha256(fd, prefix, hasher)
            if s.sha256_of(temp, prefix) == ours:
                offset = prefix
            else:
                hasher = hashlib.sha256()
        sending = time.monotonic()
        handle_file = s.sftp.open(temp, "r+" if offset else "w")
        try:
            s.wire.write_from(s.handle(handle_file), source_chunks(fd, offset, size, hasher), self.target.in_flight)
            s.wire.fsync(s.handle(handle_file))
        finally:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                handle_file.close()
        with local("reading the source"):
            changed = os.fstat(fd).st_size != size
        if changed:
            raise SourceChangedError
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
        self, s: Session, temp: str, final: str, relative: str, size: int, digest: str, resumed: int, key: str
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

    def _write_ledger(self, s: Session, key: str, relative: str, size: int, digest: str, state: str) -> None:
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

    def _read_ledger(self, s: Session, key: str) -> tuple[str, int, str, str] | None:
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
    def _session(self, operation: str, what: str, *, lookup: bool = False, guard: bool = True) -> Iterator[Session]:
        """One connection for one operation, inside one call of the guard, its errors translated (module table).

        Args:
            operation: what it is for (logs): put, lookup, get, list, probe.
            what: the remote path or key it is about (logs).
            lookup: a lookup, whose every failure keeps the claim maybe applied.
            guard: False for the probe, which must see the server and not the breaker.
        """
        deadline = self.guard.deadline()
        with self.guard.call(deadline, guard=guard, operation=operation, target=what):
            session = Session(self.target, deadline)
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

    def _translate(self, exc: BaseException, s: Session, *, lookup: bool) -> BusError:  # noqa: C901, PLR0911 - one branch per row of the module's table
        maybe = lookup or s.phase == "commit"
        if isinstance(exc, LocalError):
            return TransientError(f"local spool: {exc}")
        if isinstance(exc, SourceChangedError):
            return MappingError("the local file changed while it was sent; finish it before publishing", field="source")
        if isinstance(exc, UnknownHostKeyError):
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
            target = self.target
            log.error("credentials_refused", connector=self.name, what="login", host=target.host, user=target.username)
            return self._operator_problem(
                CredentialsRefused,
                f"{self.where} refused the login of {target.username!r} ({type(exc).__name__}): check the bus's "
                "account and key; events wait meanwhile",
                "credentials",
            )
        if isinstance(exc, DeadlineError) or s.deadline_passed():
            text = f"the {self.spec.timeout.total:g}s deadline passed ({s.phase})"
            return TargetTimeout(text) if maybe else TargetUnavailable(text, maybe_applied=False)
        if isinstance(exc, TimeoutError):
            text = f"no answer from {self.where} in time ({s.phase})"
            return TargetTimeout(text) if maybe else TargetUnavailable(text, maybe_applied=False)
        if isinstance(exc, StatusError):
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


# -- local helpers ------------------------------------------------------------------------------------------


def _for_lookup(exc: BusError) -> BusError:
    """A lookup that fails for any reason keeps the claim maybe applied; only an ambiguous answer stays one."""
    if isinstance(exc, AmbiguousOutcome) or getattr(exc, "maybe_applied", False):
        return exc
    return TargetUnavailable(f"lookup failed: {exc}", field=exc.field, maybe_applied=True)


def _temp_relative(relative: str, key: str) -> str:
    directory, _, name = relative.rpartition("/")
    return f"{directory}/{temp_name(name, key)}" if directory else temp_name(name, key)


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
