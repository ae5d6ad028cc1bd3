"""Test data for VNPost: item codes with the right check digit, and BCCI events built from the shipped examples."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

from schemas.vnpost import s10_check_digit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "events"
#: a namespace for the test events' ids, so a run's events are the same each time
NS = uuid.UUID("5b1f3c0e-9a61-4c55-8a0e-2f6c1d7e9b10")


def item_code(n: int, prefix: str = "EB") -> str:
    """The ``n``-th S10 code of a series, with its check digit (``EB00000001xVN``)."""
    serial = f"{n:08d}"
    return f"{prefix}{serial}{s10_check_digit(serial)}VN"


def wrong_check_digit(code: str) -> str:
    """The same code with another check digit."""
    return code[:10] + str((int(code[10]) + 1) % 10) + code[11:]


def codes(count: int, start: int = 1, prefix: str = "EB") -> list[str]:
    """``count`` consecutive item codes."""
    return [item_code(n, prefix) for n in range(start, start + count)]


def _example(event_type: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{event_type}.json").read_text())
    return data


def bcci_event(kind: str, i: int, *, run: str = "", dossier: str | None = None) -> dict[str, Any]:
    """A ``dossier.result_ready`` with BCCI (kind ``return``) or a ``bcci.pickup_requested`` (``pickup``)."""
    event_type = "dossier.result_ready" if kind == "return" else "bcci.pickup_requested"
    event = copy.deepcopy(_example(event_type))
    event["event_id"] = str(uuid.uuid5(NS, f"{run}/{kind}/{i}"))
    code = dossier or f"000.00.16.H16-261126-{i:04d}"
    event["dossier_code"] = code
    event["correlation_id"] = str(uuid.uuid5(NS, f"{run}/corr/{code}"))
    return event


def withdrawn_event(i: int, item: str | None, *, run: str = "", dossier: str | None = None) -> dict[str, Any]:
    """A ``dossier.withdrawn`` of a dossier whose result was to be posted (under ``item`` once issued)."""
    event = bcci_event("return", i, run=run, dossier=dossier)
    event.update(event_type="dossier.withdrawn", status=7)
    event["payload"].pop("result_docs", None)
    event["payload"]["reason"] = "Công dân rút hồ sơ"
    if item is not None:
        event["payload"]["bcci"]["item_code"] = item
    return event


#: the order routes as the route tests run them (short backoff), to follow ``routes:``
ORDER_ROUTES_YAML = """\
  - name: vnpost-pickup
    from: {exchange: igate.events, events: [bcci.pickup_requested]}
    adapter: igate_to_vnpost.pickup_requested
    to: vnpost.create_order
    retry: {backoff: [300ms, 600ms], max_attempts: 12}
    concurrency: 8
  - name: vnpost-return
    from: {exchange: igate.events, events: [dossier.result_ready]}
    when: "payload.bcci != null"
    adapter: igate_to_vnpost.result_ready
    to: vnpost.create_order
    retry: {backoff: [300ms, 600ms], max_attempts: 12}
    concurrency: 8
"""


def vnpost_connector_yaml(endpoint: str, *, pool_low: int = 5, poll_budget: int = 5000) -> str:
    """The ``vnpost`` entry of a test connectors.yaml (to follow ``connectors:``), short timeouts."""
    return f"""\
  vnpost:
    type: vnpost
    endpoint: {endpoint}
    timeout: {{connect: 1s, read: 2s, total: 3s}}
    breaker: {{fail_max: 200, reset_timeout: 1s}}
    credentials: {{customer_key: IGATE_BUS_VNPOST_KEY, secret_key: IGATE_BUS_VNPOST_SECRET}}
    options:
      customer_code: DLK0001
      pool_low: {pool_low}
      poll_budget: {poll_budget}
      agency_name: Bộ phận một cửa
      agency_phone: "02623812345"
      agency_address: 09 Lê Duẩn
      agency_province: "66"
      agency_district: "643"
      agency_ward: "24121"
"""
