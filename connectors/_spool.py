"""The local side of a file transfer: the spool directory files are sent from and fetched into.

Where it sits: inside the connector step of a route that moves files (event → route → adapter →
**connector** → result/DLQ). A request names a file by a path *relative to the spool* (never an absolute
path, never a URL), so an event cannot make the bus read ``/etc/shadow`` or write over its own config: the
path's segments pass :func:`schemas.sftp.check_relative_path`, then the resolved path (symbolic links
followed) must still be inside the spool, and a source must be a regular file, opened without following a
final symbolic link. A producer writes a file elsewhere (or under a dot-name) and renames it into the spool
when it is complete, then publishes ``file.ready``: a file that changes while it is sent is refused.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from schemas.errors import ConfigError, MappingError
from schemas.sftp import check_relative_path

if TYPE_CHECKING:
    from collections.abc import Iterator


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
