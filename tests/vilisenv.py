# mypy: allow-untyped-defs
"""Land-system test harness: the land office simulator beside a private sshd, a spool, land and other dossiers.

Nothing is stubbed: the connector talks HTTP to :class:`simulators.vilis.VilisSimulator` and SFTP to the
private OpenSSH of ``tests/sftpenv.py``; the land office reads the uploaded files from that server's disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from busenv import dossier_code, example
from sftpenv import KEY_ENV

from config.model import ConnectorSpec

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.sftp import SftpSimulator
    from simulators.vilis import VilisSimulator

VILIS_USER = "igate-bus"
VILIS_PASSWORD = "land-s3cret-for-tests"
USER_ENV, PASSWORD_ENV = "IGATE_BUS_VILIS_USERNAME", "IGATE_BUS_VILIS_PASSWORD"
#: a land procedure (in the shipped `when` list) and one that is not
LAND_PROCEDURE = "1.003560.000.00.00.H16"
OTHER_PROCEDURE = "1.001612.000.00.00.H16"


def land_when() -> str:
    """The `when` the shipped land routes use."""
    import yaml
    from busenv import ROOT

    routes = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text(encoding="utf-8"))["routes"]
    return str(next(r for r in routes if r["name"] == "vilis-dossier-received")["when"])


def vilis_spec_dict(
    vilis: VilisSimulator,
    sftp: SftpSimulator,
    spool: Path,
    *,
    sftp_endpoint: str | None = None,
    known_hosts: Path | None = None,
    total: str = "60s",
    **options: Any,
) -> dict[str, Any]:
    """The connectors.yaml entry of the land connector for these simulators (credentials by variable)."""
    os.environ[KEY_ENV] = str(sftp.client_key)
    os.environ[USER_ENV] = VILIS_USER
    os.environ[PASSWORD_ENV] = VILIS_PASSWORD
    return {
        "type": "vilis",
        "endpoint": vilis.url,
        "timeout": {"connect": "2s", "read": "5s", "total": total},
        "breaker": {"fail_max": 50, "reset_timeout": "1s"},
        "credentials": {"username": USER_ENV, "password": PASSWORD_ENV, "sftp_private_key": KEY_ENV},
        "options": {
            "sftp_endpoint": sftp_endpoint or sftp.endpoint,
            "sftp_username": sftp.username,
            "sftp_known_hosts": str(known_hosts or sftp.known_hosts),
            "spool_dir": str(spool),
            **options,
        },
    }


def vilis_spec(vilis: VilisSimulator, sftp: SftpSimulator, spool: Path, **kwargs: Any) -> ConnectorSpec:
    """The land connector's spec for these simulators."""
    return ConnectorSpec.model_validate(vilis_spec_dict(vilis, sftp, spool, **kwargs))


def land_events(n: int, spool: Path, *, prefix: str = "L", seed: int = 1, size: int = 4096) -> list[dict[str, Any]]:
    """``n`` land dossier.received events, each with two documents whose bytes the export put in the spool."""
    rng = random.Random(seed)
    base = example("dossier.received")
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        ev = json.loads(json.dumps(base))
        code = dossier_code(i, prefix)
        ev.update(event_id=str(uuid.uuid4()), dossier_code=code, procedure_code=LAND_PROCEDURE, channel=3)
        ev["occurred_at"] = now.isoformat()
        ev["payload"]["receipt_no"] = code
        ev["payload"]["dates"] = {
            "submitted": (now - timedelta(hours=2)).isoformat(),
            "received": (now - timedelta(hours=1)).isoformat(),
            "appointment": (now + timedelta(days=15)).isoformat(),
        }
        for d, doc in enumerate(ev["payload"]["documents"]):
            if doc["url"] is None:
                continue
            file_id = f"{i:04d}{d:02d}{uuid.uuid4().hex[:18]}"
            doc["url"] = f"https://dvcapi.daklak.gov.vn/fi/file/{file_id}"
            path = spool / code / file_id
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(size + rng.randrange(size)))
        out.append(ev)
    return out


def other_events(n: int, *, prefix: str = "O") -> list[dict[str, Any]]:
    """``n`` dossier.received events of a procedure outside the land sector (no files in the spool)."""
    base = example("dossier.received")
    out = []
    for i in range(n):
        ev = json.loads(json.dumps(base))
        ev.update(event_id=str(uuid.uuid4()), dossier_code=dossier_code(i, prefix), procedure_code=OTHER_PROCEDURE)
        out.append(ev)
    return out


def spool_files(spool: Path, code: str) -> dict[str, str]:
    """The dossier's files in the spool: file id → SHA-256."""
    folder = spool / code
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}
