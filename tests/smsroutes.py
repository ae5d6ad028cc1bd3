"""The SMS routes' test config and events, shared by the route tests and ``bench/bench_sms_otp.py``.

The routes are the shipped ``sms-otp`` and ``sms-notices`` (enabled, faster backoff); the connector points at
the two simulators with the credential variables of ``tests/smsenv.py``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import busenv
import smsenv
import yaml
from busenv import depth, dossier_code, drained, example, publish, thread_worker, wait_for

from routes.pipeline import idempotency_key
from routes.publisher import Publisher

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


QUEUES = ("route.sms-otp", "route.sms-notices")


def keys(route: str, events: list[dict[str, Any]]) -> set[str]:
    """The request ids the connector sends for these events on ``route``."""
    return {idempotency_key(route, e["event_id"]) for e in events}


def first_receipt(viettel: ViettelSmsSimulator, esms_sim: EsmsSimulator) -> dict[str, float]:
    """When each request id first reached a gateway that sent it (the simulator's clock)."""
    seen: dict[str, float] = {}
    for sim in (viettel, esms_sim):
        for sent in sim.sent():
            key = sent["request_id"]
            seen[key] = min(seen.get(key, sent["received_at"]), sent["received_at"])
    return seen


def sent_counts(viettel: ViettelSmsSimulator, esms_sim: EsmsSimulator, wanted: set[str]) -> dict[str, int]:
    """How many times each wanted key was sent, over both gateways together."""
    counts = dict.fromkeys(wanted, 0)
    for sim in (viettel, esms_sim):
        for key, n in sim.effect_counts().items():
            if key in counts:
                counts[key] += n
    return counts


def publish_timed(amqp_url: str, events: list[dict[str, Any]], *, pause_s: float = 0.0) -> dict[str, float]:
    """Publish one by one (confirmed), recording each event's wall-clock publish time by event id."""
    at: dict[str, float] = {}
    with Publisher(amqp_url) as pub:
        for ev in events:
            at[ev["event_id"]] = time.time()
            for _ in pub.publish_many([ev]):
                pass
            if pause_s:
                time.sleep(pause_s)
    return at


@dataclass(frozen=True)
class OtpRun:
    """What one OTP-behind-notices run measured."""

    latencies: list[float]  #: seconds from publish to the gateway, per OTP, sorted
    backlog: int  #: notices still queued when the last OTP had gone out
    counts: dict[str, int]  #: sends per request id (OTPs and notices), over both gateways


def measure_otp_priority(
    amqp_url: str,
    store_url: str,
    folder: Path,
    viettel: ViettelSmsSimulator,
    esms_sim: EsmsSimulator,
    *,
    otps: int,
    notices: int,
    otp_rate: float = 50.0,
    gateway_latency_s: float = 0.02,
) -> OtpRun:
    """Queue ``notices``, then publish ``otps`` at ``otp_rate`` a second behind them; time each OTP to a gateway."""
    viettel.set_faults(latency_s=gateway_latency_s)
    config = write_sms_config(folder, viettel, esms_sim)
    busenv.declare_routes(amqp_url, config)
    notice_evs = notice_events(notices, run="prio")
    otp_evs = otp_events(otps, run="prio")
    publish(amqp_url, notice_evs)
    with thread_worker(amqp_url, store_url, config):
        wait_for(lambda: len(viettel.sent()) >= 10, timeout=60, what="notices flowing")
        published = publish_timed(amqp_url, otp_evs, pause_s=1.0 / otp_rate)
        otp_keys = keys("sms-otp", otp_evs)
        wait_for(lambda: otp_keys <= set(first_receipt(viettel, esms_sim)), timeout=300, what="every OTP sent")
        backlog = depth(amqp_url, "route.sms-notices")
        wait_for(lambda: drained(amqp_url, QUEUES), timeout=1800, what="the notices drained")
    seen = first_receipt(viettel, esms_sim)
    latencies = sorted(seen[idempotency_key("sms-otp", e["event_id"])] - published[e["event_id"]] for e in otp_evs)
    counts = sent_counts(viettel, esms_sim, otp_keys | keys("sms-notices", notice_evs))
    return OtpRun(latencies, backlog, counts)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]
