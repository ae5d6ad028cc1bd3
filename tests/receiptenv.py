# mypy: allow-untyped-defs
"""The e-receipt test harness: the simulator on a real socket, the connector's spec and credentials, requests.

Shared by the connector, route and reconciliation tests; nothing here replaces the network.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

import pytest

from config.model import ConnectorSpec
from schemas.receipt import IssueReceipt, ReceiptLine, amount_in_words
from simulators.receipt import DEFAULT_ACCOUNT, DEFAULT_PASSWORD, DEFAULT_USERNAME, ReceiptSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator

#: the environment variables the test specs name for the four secrets
ENVS = {
    "account": "IGATE_BUS_TEST_RECEIPT_ACCOUNT",
    "account_password": "IGATE_BUS_TEST_RECEIPT_ACPASS",
    "username": "IGATE_BUS_TEST_RECEIPT_USERNAME",
    "password": "IGATE_BUS_TEST_RECEIPT_PASSWORD",
}
VALUES = {
    "account": DEFAULT_ACCOUNT,
    "account_password": DEFAULT_PASSWORD,
    "username": DEFAULT_USERNAME,
    "password": DEFAULT_PASSWORD,
}


@pytest.fixture
def receipt_sim() -> Iterator[ReceiptSimulator]:
    """A fresh e-receipt simulator for one test."""
    with ReceiptSimulator() as sim:
        yield sim


@pytest.fixture
def receipt_credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The simulator's credentials in the variables the spec names; the variables, for a worker's env."""
    for key, env in ENVS.items():
        monkeypatch.setenv(env, VALUES[key])
    return {env: VALUES[key] for key, env in ENVS.items()}


def receipt_spec_data(endpoint: str, **overrides: Any) -> dict[str, Any]:
    """A ``connectors.yaml`` entry for the simulator with short timeouts."""
    return {
        "type": "receipt",
        "endpoint": endpoint,
        "timeout": {"connect": "1s", "read": "1s", "total": "2s"},
        "credentials": dict(ENVS),
        "options": {"pattern": "01BLP0-001", "serial": "AA-19E"},
        **overrides,
    }


def receipt_spec(endpoint: str, **overrides: Any) -> ConnectorSpec:
    """:func:`receipt_spec_data` as a validated spec."""
    return ConnectorSpec.model_validate(receipt_spec_data(endpoint, **overrides))


def issue_request(
    ref: str = "PG2611260001", *, kind: str = "phi", amounts: tuple[int, ...] = (500_000,)
) -> IssueReceipt:
    """A valid request for the receipt of ``kind`` of payment ``ref``."""
    code = "PHI-TDHS" if kind == "phi" else "LP-CGCN"
    lines = tuple(ReceiptLine(fee_code=code, name=f"Khoản {i}", amount_vnd=a) for i, a in enumerate(amounts))
    total = sum(amounts)
    return IssueReceipt(
        fkey=f"{kind}-{ref}",
        kind=kind,  # type: ignore[arg-type]
        payment_ref=ref,
        dossier_code="000.00.16.H16-261126-0001",
        procedure_code="1.003560.000.00.00.H16",
        payer_name="Nguyễn Thị Hương",
        payer_address="Số 12 Lê Duẩn",
        method="TTO",
        paid_on=date(2025, 12, 4),
        lines=lines,
        total_vnd=total,
        amount_in_words=amount_in_words(total),
    )
