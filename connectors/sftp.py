"""The generic SFTP connector: a route moves a file from the local spool to a server, or fetches one back.

Where it sits: the connector step of file routes (event → route → adapter → **connector** → result/DLQ),
e.g. ``file.ready`` → ``files.put_file`` → ``sftp.put_file`` → ``file.sent``. A producer writes the file,
renames it into the spool directory when it is complete, and publishes ``file.ready`` naming it; the route's
claim makes the upload an effect like any other: sent at most once, and after a crash or a cut connection
reconciled by :meth:`SftpConnector.lookup_put` (the server-side ledger of ``connectors/_sftp.py``) before
anything is sent again. The bytes never travel through the broker, only their path and hash.

``connectors.yaml``::

    finance_sftp:
      type: sftp
      endpoint: sftp://sftp.stc.daklak.gov.vn:22/inbox   # the base directory every remote path is under
      timeout: {connect: 5s, read: 30s, total: 30m}     # total: the deadline of one whole file (and the lease)
      credentials:
        private_key: IGATE_BUS_FINANCE_SFTP_KEY          # the key itself, or an absolute path to the key file
        passphrase: IGATE_BUS_FINANCE_SFTP_KEY_PASSPHRASE  # only for an encrypted key
      options:
        username: igate-bus
        known_hosts: /etc/igate-bus/known_hosts            # ssh-keyscan output, checked with the agency first
        spool_dir: /var/lib/igate-bus/spool/finance
        max_file_bytes: 1073741824

Built on the connector kit (``connectors/kit``): the breaker, the rate limit (operations a second), the
total deadline and the probe are the kit's, the same as for the REST and SOAP connectors.

Options: ``username``, ``known_hosts`` and ``spool_dir`` (required; absolute paths); ``host_key_alias``
(the known_hosts name when the endpoint is a port forward or a proxy); ``ledger_dir`` (default
``.igate-bus``, under the base directory: the receiver must let us keep it); ``max_file_bytes`` (1 GiB);
``requests_in_flight`` (64 requests of 32 KiB); ``degraded_ms`` (2000, for the probe). Credentials:
``private_key`` (+ ``passphrase``) and/or ``password``, each the name of an environment variable.

Operations:

- ``put_file`` (effect, with lookup): :class:`schemas.sftp.PutFileRequest` → :class:`schemas.sftp.PutFileReply`.
- ``get_file`` (read): :class:`schemas.sftp.GetFileRequest` → :class:`schemas.sftp.GetFileReply`.
- ``list_files`` (read): :class:`schemas.sftp.ListFilesRequest` → :class:`schemas.sftp.ListFilesReply`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from connectors._sftp import PutResult, SftpClient
from connectors._spool import Spool
from connectors.base import required_option
from connectors.kit import KitConnector, operation
from schemas.sftp import (
    GetFileReply,
    GetFileRequest,
    ListFilesReply,
    ListFilesRequest,
    PutFileReply,
    PutFileRequest,
    RemoteFile,
)

if TYPE_CHECKING:
    from config.model import ConnectorSpec


def _reply(result: PutResult) -> PutFileReply:
    return PutFileReply(
        remote_path=result.remote_path,
        size=result.size,
        sha256=result.sha256,
        outcome="uploaded" if result.outcome == "uploaded" else "already_present",
        resumed_from=result.resumed_from,
        still_present=result.still_present,
    )


class SftpConnector(KitConnector):
    """Files to and from one SFTP server: ``put_file`` (effect, with lookup), ``get_file``, ``list_files``.

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; see the module docstring.

    Raises:
        ConfigError: see :class:`connectors._sftp.SftpClient`, or no usable ``spool_dir``.
    """

    PROBE_ANSWERED: ClassVar[str] = "logged in, base directory found"

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        self.client = SftpClient(name, spec)
        super().__init__(name, spec, guard=self.client.guard)
        self.spool = Spool(name, required_option(name, spec, "spool_dir", "the local directory files move through"))

    def check(self) -> float | None:
        """Log in and look at the base directory, bypassing the breaker; timed whole (the login is the point)."""
        self.client.check()
        return None

    def close(self) -> None:
        """Nothing stays open between operations: each opens and closes its own connection."""

    @operation(PutFileRequest, PutFileReply, lookup="lookup_put")
    def put_file(self, request: PutFileRequest, idempotency_key: str) -> PutFileReply:
        """Upload a spool file under a temporary name, verify it by reading back, rename it into place."""
        with self.spool.open_source(request.source) as (source, size):
            result = self.client.put(
                source,
                size,
                remote_dir=request.remote_dir,
                remote_name=request.remote_name,
                idempotency_key=idempotency_key,
                expected_sha256=request.sha256,
            )
        return _reply(result)

    def lookup_put(self, idempotency_key: str) -> PutFileReply | None:
        """The file an earlier ``put_file`` with this key renamed into place, or None when none was."""
        found = self.client.lookup(idempotency_key)
        return None if found is None else _reply(found)

    @operation(GetFileRequest, GetFileReply, effect=False)
    def get_file(self, request: GetFileRequest, idempotency_key: str = "") -> GetFileReply:
        """Download a file into the spool, checking its size cap and SHA-256 before it is renamed into place."""
        del idempotency_key
        dest = self.spool.destination(request.dest)
        result = self.client.get(
            request.remote_dir,
            request.remote_name,
            dest,
            expected_sha256=request.sha256,
            max_bytes=request.max_bytes,
        )
        return GetFileReply(
            local_path=self.spool.relative(result.path),
            size=result.size,
            sha256=result.sha256,
            outcome="downloaded" if result.outcome == "downloaded" else "already_present",
            resumed_from=result.resumed_from,
        )

    @operation(ListFilesRequest, ListFilesReply, effect=False)
    def list_files(self, request: ListFilesRequest, idempotency_key: str = "") -> ListFilesReply:
        """List the regular files of a remote directory (safe names only, sorted)."""
        del idempotency_key
        entries, skipped, truncated = self.client.list_dir(request.remote_dir, limit=request.limit)
        return ListFilesReply(
            remote_dir=request.remote_dir,
            files=[RemoteFile(name=e.name, size=e.size, modified_at=e.mtime) for e in entries],
            skipped_unsafe=skipped,
            truncated=truncated,
        )
