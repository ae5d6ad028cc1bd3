"""The local side of a file transfer: the spool directory files are sent from and fetched into.

Where it sits: inside the connector step of a route that moves files (event → route → adapter →
**connector** → result/DLQ). A request names a file by a path *relative to the spool* (never an absolute
path, never a URL), so an event cannot make the bus read ``/etc/shadow`` or write over its own config: the
path's segments pass :func:`schemas.sftp.check_relative_path`, then the resolved path (symbolic links
followed) must still be inside the spool, and a source must be a regular file, opened without following a
final symbolic link. A producer writes a file elsewhere (or under a dot-name) and renames it into the spool
when it is complete, then publishes ``file.ready``: a file that changes while it is sent is refused.

Also here, because they are the local side of every transfer: reading a source in blocks while hashing it
(:func:`source_chunks`, :func:`source_sha256`), putting a verified download in place without overwriting
another file (:func:`place`), and telling a local disk error from the server's (:func:`local`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from schemas.errors import ConfigError, MappingError
from schemas.sftp import check_relative_path

if TYPE_CHECKING:
    from collections.abc import Iterator

#: bytes read from a local file at once
READ_BLOCK: Final = 32_768


class Spool:
    """A local directory that requests name files in, by relative path only.

    Args:
        connector: the connector's name, for messages.
        path: the directory; it must exist.

    Raises:
        ConfigError: the directory does not exist or is not a directory.
    """

    def __init__(self, connector: str, path: str | os.PathLike[str]) -> None:
        self.connector = connector
        root = Path(path)
        if not root.is_absolute():
            raise ConfigError(f"connector {connector!r}: options.spool_dir must be an absolute path, not {str(root)!r}")
        if not root.is_dir():
            raise ConfigError(f"connector {connector!r}: options.spool_dir {str(root)!r} is not a directory")
        self.root = root.resolve(strict=True)

    def _inside(self, relative: str, field: str) -> Path:
        try:
            checked = check_relative_path(relative)
        except ValueError as exc:
            raise MappingError(str(exc), field=field) from None
        path = (self.root / checked).resolve(strict=False)
        if not path.is_relative_to(self.root) or path == self.root:
            raise MappingError("the path leaves the spool directory (through a symbolic link)", field=field)
        return path

    @contextlib.contextmanager
    def open_source(self, relative: str, *, field: str = "source") -> Iterator[tuple[BinaryIO, int]]:
        """Open a file of the spool for reading; yields the file and its size.

        Raises:
            MappingError: the path is unsafe, leaves the spool, is missing or is not a regular file.
        """
        path = self._inside(relative, field)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise MappingError(f"no such file in the spool: {relative}", field=field) from None
        except OSError as exc:
            raise MappingError(f"cannot open {relative} in the spool: {exc.strerror}", field=field) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise MappingError(f"{relative} in the spool is not a regular file", field=field)
        with os.fdopen(fd, "rb", buffering=0) as file:
            yield file, info.st_size

    def destination(self, relative: str, *, field: str = "dest") -> Path:
        """Where a fetched file goes: inside the spool, its parent directories created.

        Raises:
            MappingError: the path is unsafe or leaves the spool.
        """
        path = self._inside(relative, field)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.resolve(strict=True).is_relative_to(self.root):
            raise MappingError("the path leaves the spool directory (through a symbolic link)", field=field)
        return path

    def relative(self, path: Path) -> str:
        """``path`` relative to the spool, as a reply shows it."""
        return path.relative_to(self.root).as_posix()


class SourceChangedError(Exception):
    """The local file changed while it was sent (its producer did not finish it before publishing)."""


class LocalError(Exception):
    """Reading or writing the local spool failed (not the server's doing)."""


@contextlib.contextmanager
def local(what: str) -> Iterator[None]:
    """Tell local I/O errors apart from the server's, which paramiko also raises as ``OSError``."""
    try:
        yield
    except OSError as exc:
        raise LocalError(f"{what}: {exc.strerror or type(exc).__name__}") from None


def source_chunks(fd: int, offset: int, size: int, hasher: Any) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` pieces of the local file from ``offset`` to ``size``, hashed as they are read."""
    while offset < size:
        with local("reading the source"):
            data = os.pread(fd, min(READ_BLOCK, size - offset), offset)
        if not data:
            raise SourceChangedError
        hasher.update(data)
        yield offset, data
        offset += len(data)
    with local("reading the source"):
        beyond = os.pread(fd, 1, size)
    if beyond:
        raise SourceChangedError


def source_sha256(fd: int, size: int, hasher: Any = None) -> str:
    """SHA-256 of the first ``size`` bytes of a local file (feeding ``hasher`` when given)."""
    hasher = hasher if hasher is not None else hashlib.sha256()
    offset = 0
    while offset < size:
        with local("reading the source"):
            data = os.pread(fd, min(READ_BLOCK * 8, size - offset), offset)
        if not data:
            raise SourceChangedError
        hasher.update(data)
        offset += len(data)
    return str(hasher.hexdigest())


def discard(path: Path) -> None:
    """Remove a partial file of ours; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def place(partial: Path, dest: Path, digest: str) -> str:
    """Move a verified download into place without overwriting a different file; ``downloaded`` or not."""
    try:
        os.link(partial, dest)
    except FileExistsError:
        with dest.open("rb") as existing:
            same = hashlib.file_digest(existing, "sha256").hexdigest() == digest
        discard(partial)
        if not same:
            raise MappingError(
                "the spool already holds another file under that name; not overwritten", field="dest"
            ) from None
        return "already_present"
    discard(partial)
    with contextlib.suppress(OSError):
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return "downloaded"
