r"""File transfer over SFTP: the names allowed on the wire, the requests and replies, the ``file.ready`` event.

Where it sits: the shapes of a file's path through the bus. A producer puts a finished file in the spool
directory and publishes ``file.ready``; a route maps it (``adapters/files.py``) into a
:class:`PutFileRequest` for the ``sftp`` connector (``connectors/sftp.py``), which moves the bytes with
``connectors/_sftp.py`` and answers a :class:`PutFileReply`, emitted as ``file.sent``. Connectors that move
files as part of their own protocol (the land system's documents, the Finance reconciliation file) use the
same name rules and replies.

**Names.** A remote file name, and each segment of a remote directory or a spool path, must be one path
segment that means the same thing on every server it may reach (OpenSSH on Linux, and the Windows SFTP
servers some agencies run), so nothing in it can climb out of the directory it was meant for or hide what it
is. :func:`check_name` allows:

- any letters, digits, marks, punctuation and symbols of Unicode, and the plain space, normalised to NFC
  (so ``Đắk Lắk`` typed in NFD and in NFC is one name, docs/design.md);
- at most :data:`MAX_NAME_BYTES` bytes in UTF-8 (the temporary name adds a prefix and a suffix and must
  still fit the 255-byte limit of common file systems).

and refuses, each with its own reason:

- an empty name, ``.`` and ``..``, and any name starting with a dot (hidden files, and the temporary and
  ledger names the bus itself uses on the server);
- ``/`` and ``\`` (path separators), and ``: * ? " < > |`` (not allowed by Windows servers);
- control characters (``Cc``: NUL, newline, tab, DEL, C1), format characters (``Cf``: bidirectional
  overrides such as U+202E, zero-width characters), line and paragraph separators, surrogates, private-use
  and unassigned code points;
- a leading or trailing space, a trailing dot (Windows strips them: two names would become one);
- the Windows device names ``CON PRN AUX NUL COM1-9 LPT1-9``, with or without an extension.

Validators here raise ``ValueError`` (pydantic turns it into a validation error naming the field);
connectors call :func:`check_name` and :func:`check_relative_path` themselves and raise
:class:`schemas.errors.MappingError` with the field.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

#: longest name in UTF-8 bytes; a temporary name is ``.<name>.<16 hex>.part`` and must stay under 255
MAX_NAME_BYTES: Final = 200
#: most segments in a remote directory or a spool path
MAX_DEPTH: Final = 8
#: a SHA-256 as lower-case hex
SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
#: what a ``file.ready`` event's ``target`` may be (it selects the route with a ``when`` condition)
TARGET_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,39}$"

_REFUSED_CATEGORIES: Final = {
    "Cc": "a control character",
    "Cf": "an invisible format character (e.g. a bidirectional override)",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned character",
}
_SEPARATORS: Final = frozenset("/\\")
_WINDOWS_RESERVED: Final = frozenset(':*?"<>|')
_DEVICE_NAMES: Final = re.compile(r"^(CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(\..*)?$", re.IGNORECASE)


def _char_problem(char: str, position: int) -> str | None:
    """Why one character may not appear in a name, or None."""
    if char in _SEPARATORS:
        return f"a name must not contain the path separator {char!r} (character {position})"
    category = unicodedata.category(char)
    if category in _REFUSED_CATEGORIES:
        return f"a name must not contain {_REFUSED_CATEGORIES[category]}: U+{ord(char):04X} at character {position}"
    if char in _WINDOWS_RESERVED:
        return f"a name must not contain {char!r} (refused by Windows servers)"
    if category.startswith("Z") and char != " ":
        return f"a name must not contain the space character U+{ord(char):04X}; use a plain space"
    return None


def _whole_name_problem(name: str) -> str | None:
    """Why a name whose characters are all allowed is still refused, or None."""
    rules = (
        (not name, "a name must not be empty"),
        (name in {".", ".."}, f"{name!r} is not a name (it climbs the directory tree)"),
        (name.startswith("."), "a name must not start with a dot (hidden files and the bus's temporary names do)"),
        (name != name.strip(" "), "a name must not start or end with a space"),
        (name.endswith("."), "a name must not end with a dot (Windows servers drop it)"),
        (bool(_DEVICE_NAMES.match(name)), f"{name!r} is a reserved device name on Windows servers"),
    )
    return next((message for broken, message in rules if broken), None)


def check_name(value: str) -> str:
    """``value`` as one safe path segment in NFC, or ``ValueError`` saying what is wrong with it.

    The module docstring lists what is allowed. The message names the offending character by code point
    (``U+0000``), never by pasting it, so a NUL or a newline cannot break the log line that reports it.
    """
    if not isinstance(value, str):
        raise ValueError("a name must be a string")
    name = unicodedata.normalize("NFC", value)
    if name in {".", ".."}:
        raise ValueError(f"{name!r} is not a name (it climbs the directory tree)")
    for index, char in enumerate(name):
        problem = _char_problem(char, index + 1)
        if problem is not None:
            raise ValueError(problem)
    problem = _whole_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"a name is at most {MAX_NAME_BYTES} bytes in UTF-8; this one is {size}")
    return name


def check_relative_path(value: str, *, allow_empty: bool = False) -> str:
    """A relative path of safe segments joined by ``/`` (each checked by :func:`check_name`), in NFC.

    Args:
        value: the path as given, e.g. ``2026/11/hs-000123``.
        allow_empty: True where the empty path means "the base directory itself" (a remote directory).

    Raises:
        ValueError: an absolute path, an empty segment (``a//b``, a trailing ``/``), too many segments, or a
            segment :func:`check_name` refuses (the message says which segment).
    """
    if not isinstance(value, str):
        raise ValueError("a path must be a string")
    if value == "":
        if allow_empty:
            return value
        raise ValueError("a path must not be empty")
    if value.startswith(("/", "\\")):
        raise ValueError("a path must be relative (no leading /)")
    segments = value.split("/")
    if len(segments) > MAX_DEPTH:
        raise ValueError(f"a path has at most {MAX_DEPTH} segments; this one has {len(segments)}")
    checked = []
    for number, segment in enumerate(segments, start=1):
        try:
            checked.append(check_name(segment))
        except ValueError as exc:
            raise ValueError(f"segment {number}: {exc}") from None
    return "/".join(checked)


def _remote_dir(value: str) -> str:
    return check_relative_path(value, allow_empty=True)


def _spool_path(value: str) -> str:
    return check_relative_path(value)


#: one path segment (a file name), checked and NFC-normalised
FileName = Annotated[str, AfterValidator(check_name)]
#: a directory under the connector's base directory on the server; empty = the base directory
RemoteDir = Annotated[str, AfterValidator(_remote_dir)]
#: a file inside the connector's local spool directory
SpoolPath = Annotated[str, AfterValidator(_spool_path)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, description="SHA-256 of the bytes, lower-case hex.")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PutFileRequest(_Model):
    """Send one file from the spool to the server: ``sftp.put_file``."""

    source: SpoolPath = Field(description="The file to send, relative to the connector's spool directory.")
    remote_dir: RemoteDir = Field(default="", description="Directory under the base directory ('' = the base).")
    remote_name: FileName = Field(description="The name the file gets on the server.")
    sha256: Sha256 | None = Field(
        default=None, description="What the producer says the bytes hash to; checked while they stream."
    )


class PutFileReply(_Model):
    """A file that is on the server under its final name, with the bytes we sent (verified by reading back)."""

    remote_path: str = Field(description="Path on the server, relative to the base directory.")
    size: StrictInt = Field(ge=0)
    sha256: Sha256
    outcome: Literal["uploaded", "already_present"] = Field(
        description="uploaded: this call renamed it into place; already_present: the same bytes were there."
    )
    resumed_from: StrictInt = Field(default=0, ge=0, description="Bytes of an earlier cut upload kept.")
    verified: Literal["read_back"] = Field(
        default="read_back", description="How the remote bytes were proven: read back and hashed."
    )
    still_present: bool = Field(
        default=True, description="False when a lookup found it applied but the receiver already took it away."
    )


class GetFileRequest(_Model):
    """Fetch one file from the server into the spool: ``sftp.get_file`` (a read; no claim)."""

    remote_dir: RemoteDir = ""
    remote_name: FileName
    dest: SpoolPath = Field(description="Where to put it, relative to the connector's spool directory.")
    sha256: Sha256 | None = Field(default=None, description="The bytes must hash to this, or nothing is kept.")
    max_bytes: StrictInt | None = Field(
        default=None, ge=0, description="Refuse a larger file (capped by the connector's max_file_bytes)."
    )


class GetFileReply(_Model):
    """A file now in the spool, renamed into place only after its size and hash were checked."""

    local_path: str = Field(description="Path relative to the spool directory.")
    size: StrictInt = Field(ge=0)
    sha256: Sha256
    outcome: Literal["downloaded", "already_present"]
    resumed_from: StrictInt = Field(default=0, ge=0)


class ListFilesRequest(_Model):
    """List the regular files of one remote directory: ``sftp.list_files`` (a read)."""

    remote_dir: RemoteDir = ""
    limit: StrictInt = Field(default=1000, ge=1, le=10_000)


class RemoteFile(_Model):
    """One entry of a listing."""

    name: str
    size: StrictInt = Field(ge=0)
    modified_at: StrictInt = Field(description="Modification time, Unix seconds.")


class ListFilesReply(_Model):
    """The regular files found, sorted by name; names the rules refuse are counted, not listed."""

    remote_dir: str
    files: list[RemoteFile]
    skipped_unsafe: StrictInt = Field(default=0, ge=0, description="Entries whose names the rules refuse.")
    truncated: bool = False


class FileReady(_Model):
    """Payload of ``file.ready``: a finished file waits in the spool for the route that ``target`` selects."""

    target: str = Field(pattern=TARGET_PATTERN, description="Which system it is for, e.g. finance, vilis.")
    source: SpoolPath
    remote_dir: RemoteDir = ""
    remote_name: FileName
    sha256: Sha256 | None = None
    size: StrictInt | None = Field(default=None, ge=0)


#: event types of file transfer, merged into :data:`schemas.events.EVENT_PAYLOADS`
FILE_EVENTS: dict[str, type[BaseModel]] = {"file.ready": FileReady, "file.sent": PutFileReply}
