"""The SMS routes' test config and events, shared by the route tests and ``bench/bench_sms_otp.py``.

The routes are the shipped ``sms-otp`` and ``sms-notices`` (enabled, faster backoff); the connector points at
the two simulators with the credential variables of ``tests/smsenv.py``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import smsenv
import yaml
from busenv import dossier_code, example

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.esms import EsmsSimulator
    from simulators.viettel_sms import ViettelSmsSimulator

NOTICE_TYPES = ("dossier.received", "dossier.refused", "dossier.result_ready", "dossier.supplement_requested")


def write_sms_config(
    folder: Path,
    viettel: ViettelSmsSimulator,
    esms_sim: EsmsSimulator,
    *,
    otp_backoff: str = "300ms, 1s, 2s",
    notice_backoff: str = "300ms, 1s, 2s",
    max_attempts: int = 30,
    fail_max: int = 3,
    reset_timeout: str = "2s",
    total: str = "2s",
    notice_concurrency: int = 2,
    **options: Any,
) -> Path:
    """routes.yaml and connectors.yaml for the SMS routes against the simulators; ``options`` on top."""
    folder.mkdir(parents=True, exist_ok=True)

    def retry(backoff: str) -> dict[str, Any]:
        return {"backoff": [b.strip() for b in backoff.split(",")], "max_attempts": max_attempts}

    routes = {
        "routes": [
            {
                "name": "sms-otp",
                "from": {"exchange": "igate.events", "events": ["dossier.otp_requested"]},
                "adapter": "igate_to_sms.otp",
                "to": "sms.send_otp",
                "retry": retry(otp_backoff),
                "prefetch": 64,
                "concurrency": 16,
            },
            {
                "name": "sms-notices",
                "from": {"exchange": "igate.events", "events": list(NOTICE_TYPES)},
                "when": "payload.applicant.phone != null",
                "adapter": "igate_to_sms.notice",
                "to": "sms.send_notice",
                "retry": retry(notice_backoff),
                "prefetch": notice_concurrency * 2,
                "concurrency": notice_concurrency,
            },
        ]
    }
    connectors = {
        "connectors": {
            "sms": {
                "type": "sms",
                "timeout": {"connect": "1s", "read": total, "total": total},
                "breaker": {"fail_max": fail_max, "reset_timeout": reset_timeout},
                "credentials": smsenv.CREDENTIALS,
                "options": smsenv.options(
                    viettel, esms_sim, viettel_rate_limit=500, esms_rate_limit=500, otp_min_left="5s", **options
                ),
            }
        }
    }
    (folder / "routes.yaml").write_text(yaml.safe_dump(routes))
    (folder / "connectors.yaml").write_text(yaml.safe_dump(connectors))
    return folder


def otp_events(
    n: int, *, run: str, ttl_s: int = 300, age_s: float = 0.0, phone: str = "0912000111"
) -> list[dict[str, Any]]:
    """``n`` OTP requests, each with its own code (``run`` makes codes distinct across runs), ``age_s`` old."""
    base = example("dossier.otp_requested")
    at = (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat()
    out = []
    for i in range(n):
        ev = json.loads(json.dumps(base))
        ev["event_id"] = str(uuid.uuid4())
        ev["occurred_at"] = at
        ev["dossier_code"] = dossier_code(i, f"OTP{run}")
        ev["payload"].update({"phone": phone, "ttl_s": ttl_s, "otp_code": otp_code(i, run)})
        out.append(ev)
    return out


def otp_code(i: int, run: str) -> str:
    """A 6-digit code unique to (run, i), that no other number in a log is likely to be."""
    return f"{(uuid.uuid5(uuid.NAMESPACE_OID, f'{run}/{i}').int % 900_000) + 100_000}"


def notice_events(n: int, *, run: str, phone: str | None = "0912000111") -> list[dict[str, Any]]:
    """``n`` notice events, cycling through :data:`NOTICE_TYPES`."""
    out = []
    for i in range(n):
        ev = json.loads(json.dumps(example(NOTICE_TYPES[i % len(NOTICE_TYPES)])))
        ev["event_id"] = str(uuid.uuid4())
        ev["dossier_code"] = dossier_code(i, f"N{run}")
        ev["payload"]["applicant"]["phone"] = phone
        out.append(ev)
    return out
