"""Files waiting in the spool ▶ the ``sftp`` connector's upload request.

Where it sits: the adapter step of file routes (``file.ready`` → **adapter** → ``sftp.put_file``). Pure: the
event already carries every name, checked by :mod:`schemas.sftp` when it was parsed; the adapter only copies
them, so a route can be pointed at any SFTP connector by its ``to`` and a ``when`` on ``target``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.registry import adapter
from schemas.errors import MappingError
from schemas.sftp import FileReady, PutFileRequest

if TYPE_CHECKING:
    from datetime import datetime

    from schemas.envelope import Event


@adapter(accepts=("file.ready",), produces=PutFileRequest)
def put_file(event: Event, *, now: datetime) -> PutFileRequest:
    """Send the spool file the event names to its remote directory and name, with its SHA-256 if given."""
    del now
    payload = event.payload
    if not isinstance(payload, FileReady):
        raise MappingError(f"expected a file.ready payload, got {type(payload).__name__}", field="payload")
    return PutFileRequest(
        source=payload.source,
        remote_dir=payload.remote_dir,
        remote_name=payload.remote_name,
        sha256=payload.sha256,
    )
