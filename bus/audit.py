"""The audit trail of operators' looks at personal data: who saw which citizen's data, and when.

Where it sits: outside the message path. ``igate-bus dlq show --reveal`` prints a dead letter unmasked; before
it prints anything it appends one JSON line here (and logs the same line through the logging chain), and it
refuses to reveal when the line cannot be written: a look that leaves no trace does not happen.

The line names the person by the operating-system account that ran the command (from the real user id, not
from ``$USER``, which anyone can set), the account ``sudo`` was run from if any, and the name given with
``--operator``; the dead letter by its queue, route and event id; and the time in UTC. It never holds the
personal data itself.
"""

from __future__ import annotations

import json
import os
import pwd
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bus.logging import get_logger

if TYPE_CHECKING:
    from pathlib import Path


def who(operator: str | None) -> dict[str, str | None]:
    """The person behind this process: OS account, the account sudo was run from, and the declared name."""
    try:
        os_user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no passwd entry (a container): the number still names it
        os_user = f"uid {os.getuid()}"
    return {"os_user": os_user, "sudo_user": os.environ.get("SUDO_USER") or None, "operator": operator or None}


def record(path: Path, action: str, *, operator: str | None, **fields: Any) -> dict[str, Any]:
    """Append one audit line to ``path`` (created with mode 0600), flushed to disk, and log it.

    Args:
        path: the audit file (``IGATE_BUS_AUDIT_LOG``).
        action: what was done, e.g. ``dlq_revealed``.
        operator: the name given on the command line, if any.
        **fields: what it was done to (queue, route, event id); never personal data.

    Returns:
        The line written.

    Raises:
        OSError: the line could not be written; the caller must then not do what it was about to.
    """
    line = {"at": datetime.now(UTC).isoformat(), "action": action, **who(operator), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())
    get_logger("igate_bus.audit").warning(action, **{k: v for k, v in line.items() if k != "action"})
    return line
