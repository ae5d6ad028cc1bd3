# mypy: allow-untyped-defs
"""The daily e-receipt reconciliation: the pure comparison, the file's contract, and the whole path over SFTP.

The whole path is real: receipts issued by the connector at the SOAP simulator (the payments recorded in the
connector's state in a SQLite store), the service's file of the day put on a private OpenSSH sshd, and
``igate-bus report receipts --date D`` run as a user runs it.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import pika
import pytest
import yaml
from busenv import ROOT, cli, depth, env_for, get_all, wait_for
from receiptenv import issue_request, receipt_credentials, receipt_sim, receipt_spec_data
from sftpenv import KEY_ENV, sftp_sim

from config.model import ConnectorSpec
from connectors.kit.state import ConnectorState
from connectors.receipt import PAYMENTS_NS, ReceiptConnector
from schemas.nps import ICT
from schemas.receipt import CancelReceipt
from schemas.receipt_reconcile import (
    FILE_COLUMNS,
    FileProblem,
    FileReceipt,
    SeenPayment,
    compare,
    file_name,
    parse_receipts_file,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from click.testing import Result

    from simulators.receipt import ReceiptSimulator
    from simulators.sftp import SftpSimulator

__all__ = ["receipt_credentials", "receipt_sim", "sftp_sim"]

DAY = date(2025, 12, 4)


def line(fkey: str, number: str, amount: int, *, status: str = "valid", at: int = 2) -> FileReceipt:
    return FileReceipt(fkey=fkey, number=number, amount_vnd=amount, status=status, line=at)


def test_compare_finds_each_kind_of_discrepancy_and_nothing_else():
    seen = [
        SeenPayment(fkey="phi-OK", amount_vnd=100),
        SeenPayment(fkey="phi-MISSING", amount_vnd=200),
        SeenPayment(fkey="phi-TWICE", amount_vnd=300),
        SeenPayment(fkey="lephi-WRONG", amount_vnd=400),
        SeenPayment(fkey="phi-CANCELLED", amount_vnd=500, cancelled=True),
        SeenPayment(fkey="phi-STILL-VALID", amount_vnd=600, cancelled=True),
        SeenPayment(fkey="phi-CANCEL-REISSUED", amount_vnd=700),
    ]
    receipts = [
        line("phi-OK", "1", 100),
        line("phi-TWICE", "2", 300),
        line("phi-TWICE", "3", 300),
        line("lephi-WRONG", "4", 4000),
        line("phi-CANCELLED", "5", 500, status="cancelled"),
        line("phi-STILL-VALID", "6", 600),
        line("phi-CANCEL-REISSUED", "7", 700, status="cancelled"),
        line("phi-CANCEL-REISSUED", "8", 700),
        line("phi-STRANGER", "9", 900),
        line("phi-YESTERDAY", "10", 1000),
    ]
    elsewhere = {"phi-YESTERDAY": SeenPayment(fkey="phi-YESTERDAY", amount_vnd=1000)}
    result = compare(DAY, seen, receipts, seen_elsewhere=elsewhere, file="f.csv", file_sha256="0" * 64)
    found = {(f.kind, f.fkey) for f in result.findings}
    assert found == {
        ("missing", "phi-MISSING"),
        ("duplicate", "phi-TWICE"),
        ("amount_mismatch", "lephi-WRONG"),
        ("cancelled_but_valid", "phi-STILL-VALID"),
        ("unknown_receipt", "phi-STRANGER"),
    }
    assert (result.payments, result.receipts, result.ok) == (7, 10, False)
    twice = next(f for f in result.findings if f.kind == "duplicate")
    assert twice.numbers == ("2", "3")


def test_a_day_that_agrees_has_no_finding():
    result = compare(
        DAY, [SeenPayment(fkey="phi-A", amount_vnd=1)], [line("phi-A", "1", 1)], file="f", file_sha256="0" * 64
    )
    assert result.ok and not result.findings


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b"fkey,number\n", "f.csv:1: the header"),
        (
            b",".join(c.encode() for c in FILE_COLUMNS) + b"\nphi-A,01BLP0-001,AA-19E,1,1.000.000,valid,2025-12-04\n",
            "f.csv:2: amount_vnd: '1.000.000'",
        ),
        (
            b",".join(c.encode() for c in FILE_COLUMNS) + b"\nphi-A,01BLP0-001,AA-19E,1,-5,valid,2025-12-04\n",
            "f.csv:2: amount_vnd",
        ),
        (
            b",".join(c.encode() for c in FILE_COLUMNS) + b"\nphi-A,p,s,1,5,valid,2025-12-04\nx-B,p,s,2,5,valid,d\n",
            "f.csv:3: fkey",
        ),
        (b",".join(c.encode() for c in FILE_COLUMNS) + b"\nphi-A,p,s,1,5\n", "f.csv:2: 5 fields"),
        (b"\xff\xfe", "f.csv: not UTF-8"),
    ],
)
def test_a_file_that_breaks_the_contract_is_refused_naming_file_line_and_column(text, where):
    with pytest.raises(FileProblem) as caught:
        parse_receipts_file(text, name="f.csv")
    assert str(caught.value).startswith(where)


# -- the whole path -------------------------------------------------------------------------------------------
@pytest.fixture
def setup(receipt_sim, receipt_credentials, sftp_sim, sqlite_url, tmp_path, monkeypatch):
    """A config folder whose receipt connector reaches the simulator and the sshd; a connector issuing into it."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    (sftp_sim.root / "outbox").mkdir()
    spec = receipt_spec_data(receipt_sim.endpoint)
    spec["timeout"] = {"connect": "5s", "read": "10s", "total": "30s"}
    spec["credentials"]["files_private_key"] = KEY_ENV
    spec["options"].update(
        files_endpoint=sftp_sim.endpoint,
        files_username=sftp_sim.username,
        files_known_hosts=str(sftp_sim.known_hosts),
        files_dir="outbox",
        report_dir=str(tmp_path / "reports"),
    )
    (folder / "connectors.yaml").write_text(yaml.safe_dump({"connectors": {"receipt": spec}}))
    (folder / "routes.yaml").write_text("routes: []\n")
    env = env_for("amqp://guest:guest@127.0.0.1:5672/%2F", sqlite_url, folder, **receipt_credentials)
    env[KEY_ENV] = str(sftp_sim.client_key)
    monkeypatch.setenv(KEY_ENV, str(sftp_sim.client_key))
    connector = ReceiptConnector("receipt", ConnectorSpec.model_validate(spec))
    state = ConnectorState(sqlite_url, connector="receipt")
    connector.attach_state(state)
    yield connector, env, tmp_path / "reports"
    connector.close()
    state.close()


def put_day_file(
    sftp_sim: SftpSimulator,
    receipt_sim: ReceiptSimulator,
    day: date,
    edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> None:
    """The service's file of ``day`` (its receipts issued today, dated ``day``), ``edit``-ed, on the sshd."""
    rows = [dict(r, issued_on=day.isoformat()) for r in receipt_sim.receipts()]
    rows = edit(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FILE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (sftp_sim.root / "outbox" / file_name(day)).write_text(out.getvalue(), encoding="utf-8")


def test_the_report_finds_every_planted_discrepancy_and_nothing_else(setup, receipt_sim, sftp_sim):
    connector, env, reports = setup
    for i in range(30):
        connector.issue(
            issue_request(f"PG{i:03d}", kind="phi" if i % 2 else "lephi", amounts=(1000 * (i + 1),)), f"k{i}"
        )
    connector.cancel(CancelReceipt(fkey="phi-PG001", reason="lập sai"), "c1")
    day = date.fromisoformat(connector.state.get(PAYMENTS_NS, "phi-PG003").value["asked_on"])
    planted = {("missing", "lephi-PG004"), ("duplicate", "phi-PG005"), ("amount_mismatch", "lephi-PG006")}

    def plant(rows):
        rows = [r for r in rows if r["fkey"] != "lephi-PG004"]
        rows.append({**next(r for r in rows if r["fkey"] == "phi-PG005"), "number": "9999999"})
        for r in rows:
            if r["fkey"] == "lephi-PG006":
                r["amount_vnd"] = r["amount_vnd"] + 1000
        return rows

    put_day_file(sftp_sim, receipt_sim, day, plant)
    run = cli("report", "receipts", "--date", day.isoformat(), "--json", env=env)
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert {(f["kind"], f["fkey"]) for f in report["findings"]} == planted
    assert (report["payments"], report["receipts"]) == (30, 30)
    saved = json.loads((reports / f"receipts-{day.isoformat()}.json").read_text())
    assert saved == report
    text = (reports / f"receipts-{day.isoformat()}.txt").read_text()
    assert "missing" in text and "lephi-PG004" in text and "3 finding(s)" in text
    assert "Traceback" not in run.stderr


def in_process(*args: str, env: dict[str, str]) -> Result:
    """``igate-bus ARGS`` in this process (the real command; cheaper than a subprocess for the short cases)."""
    from click.testing import CliRunner

    from bus.cli import main

    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_a_day_that_agrees_exits_0_and_a_missing_or_bad_file_or_date_is_one_line(setup, receipt_sim, sftp_sim):
    connector, env, _ = setup
    connector.issue(issue_request("PG900"), "k1")
    day = date.fromisoformat(connector.state.get(PAYMENTS_NS, "phi-PG900").value["asked_on"])
    missing = in_process("report", "receipts", "--date", day.isoformat(), env=env)
    assert missing.exit_code == 1 and "not on the service's SFTP server yet" in missing.stderr
    bad_date = in_process("report", "receipts", "--date", "04/12/2025", env=env)
    assert bad_date.exit_code == 2 and "--date" in bad_date.stderr
    (sftp_sim.root / "outbox" / file_name(DAY)).write_text("fkey,number\n")
    bad_file = in_process("report", "receipts", "--date", DAY.isoformat(), env=env)
    assert bad_file.exit_code == 1 and f"{file_name(DAY)}:1: the header" in bad_file.stderr
    put_day_file(sftp_sim, receipt_sim, day, lambda rows: rows)
    clean = in_process("report", "receipts", "--date", day.isoformat(), env=env)
    assert clean.exit_code == 0, clean.stderr
    assert clean.stdout.startswith(f"receipts {day.isoformat()}: 1 payments, 1 receipts") and ": ok" in clean.stdout
    for run in (missing, bad_date, bad_file, clean):
        assert "Traceback" not in run.stderr


def _with(extra: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*rows, *extra]


def test_the_scheduled_route_reconciles_yesterday_and_emits_the_report(
    setup, receipt_sim, sftp_sim, tmp_path, amqp_url
):
    """The daily route, firing every second here: each tick reconciles the day before it (a file planted with a
    receipt the bus never asked for), writes the report and emits ``receipt.reconciled`` with that finding."""
    from busenv import declare_routes, thread_worker

    _, env, reports = setup
    folder = tmp_path / "cfg"
    shipped = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text(encoding="utf-8"))
    [route] = [r for r in shipped["routes"] if r["name"] == "receipt-reconcile-daily"]
    route["from"]["schedule"] = {"every": "1s", "misfire": "run_once"}
    route["enabled"] = True
    route["retry"] = {"backoff": ["300ms"], "max_attempts": 3}
    (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": [route]}, sort_keys=False))
    today = datetime.now(ICT).date()
    for day in (today - timedelta(days=1), today):  # a tick just after midnight still reconciles a day with a file
        stranger = [
            {
                "fkey": "phi-STRANGER",
                "pattern": "01BLP0-001",
                "serial": "AA-19E",
                "number": "0000042",
                "amount_vnd": 42000,
                "status": "valid",
                "issued_on": day.isoformat(),
            }
        ]
        put_day_file(sftp_sim, receipt_sim, day, partial(_with, stranger))
    url = amqp_url
    declare_routes(url, folder)
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.queue_declare("reconciled-seen")
        ch.queue_bind("reconciled-seen", "bus.results", "receipt.reconciled")
    with thread_worker(url, env["IGATE_BUS_STORE_URL"], folder, routes=["receipt-reconcile-daily"]):
        wait_for(lambda: depth(url, "reconciled-seen") >= 1, timeout=60, what="a receipt.reconciled event")
    [(props, body)] = get_all(url, "reconciled-seen")[:1]
    event = json.loads(body)
    assert event["event_type"] == "receipt.reconciled" and props.type == "receipt.reconciled"
    day = date.fromisoformat(event["payload"]["day"])
    assert day in {today - timedelta(days=1), today - timedelta(days=2)}
    assert [(f["kind"], f["fkey"]) for f in event["payload"]["findings"]] == [("unknown_receipt", "phi-STRANGER")]
    assert (
        json.loads((reports / f"receipts-{day.isoformat()}.json").read_text())["findings"][0]["fkey"] == "phi-STRANGER"
    )
