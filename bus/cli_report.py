"""``igate-bus report receipts --date D``: the day's e-receipt reconciliation, on demand.

Where it sits: outside the message path, for the Finance officer and the operator. It runs what the daily
scheduled route runs (``connectors/receipt.py`` ``reconcile``: fetch the service's receipts file of the day
over SFTP, compare it with the payments the bus recorded that day, write the report into the connector's
report folder) and prints the report. Exit 0 when the day reconciles, 1 when there are findings or the file
cannot be had, 2 for a usage or configuration problem; one line on stderr, never a traceback. The log lines
of the run (the SFTP fetch) come after the report, on stderr.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import date
from typing import TYPE_CHECKING

import click

from bus.cli_ops import _fail, _load, config_option

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from bus.wiring import App


@click.group()
def report() -> None:
    """Reports the bus computes from what it saw and what the targets hold."""


@report.command()
@config_option
@click.option("--date", "day", required=True, help="The day to reconcile, YYYY-MM-DD (Vietnam time).")
@click.option("--connector", "name", default="receipt", show_default=True, help="The e-receipt connector.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def receipts(config: Path | None, day: str, name: str, as_json: bool) -> None:
    """Compare the e-receipt service's receipts of a day with the payments the bus saw; list every finding."""
    from bus.cli_logs import logs_after_report
    from bus.wiring import build_connectors
    from connectors.receipt import ReceiptConnector
    from schemas.errors import BusError, ConfigError
    from schemas.receipt_reconcile import ReconcileDay, render_text

    try:
        when = date.fromisoformat(day)
    except ValueError:
        _fail(f"--date: {day!r} is not a date (YYYY-MM-DD)")
    app = _load(config)
    with logs_after_report(), _closing(app):
        if name not in app.config.connectors.connectors:
            _fail(f"no connector {name!r} in connectors.yaml")
        try:
            connector = build_connectors(app, [name])[name]
        except ConfigError as exc:
            _fail(str(exc))
        if not isinstance(connector, ReceiptConnector):
            _fail(f"connector {name!r} is not an e-receipt connector (type receipt)")
        try:
            result = connector.reconcile(ReconcileDay(day=when))
        except ConfigError as exc:
            _fail(str(exc))
        except BusError as exc:
            _fail(f"reconciliation of {when} failed: {exc}", 1)
        click.echo(
            json.dumps(result.model_dump(mode="json"), ensure_ascii=False, indent=2)
            if as_json
            else render_text(result),
            nl=False,
        )
        if as_json:
            click.echo()
    raise SystemExit(0 if result.ok else 1)


@contextmanager
def _closing(app: App) -> Iterator[None]:
    try:
        yield
    finally:
        app.close()


COMMANDS = [report]
