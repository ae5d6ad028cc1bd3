"""``igate-bus vnpost pool load FILE`` and ``igate-bus vnpost pool status``: the operator's side of the item codes.

Where it sits: outside the message path. VNPost pre-issues S10 item codes to the province; every BCCI order
takes one from the pool in the bus's store (connector state, ``connectors/vnpost.py``). When the connector
warns ``vnpost_pool_low`` or an order is dead-lettered for an empty pool, the operator loads the next batch
VNPost sent, here, and replays the dead letters.

A file holds one code per line; blank lines and ``#`` comments are skipped. Every line is checked before any
code is added (S10 form and check digit): a file with a bad line adds nothing and each bad line is named
``FILE:LINE: message``, so a half-loaded batch never happens. Loading the same file twice adds nothing the
second time. Exit 0 when loaded, 1 when the file has bad lines, 2 for a usage or configuration problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bus.cli_ops import _fail, _load, config_option

if TYPE_CHECKING:
    from bus.wiring import App
    from connectors.kit.state import ConnectorState

#: the most codes one file may hold (VNPost issues batches of thousands; a bigger file is a mistake)
MAX_CODES = 1_000_000
#: the bad lines named before the rest are only counted
MAX_NAMED = 20


def read_codes(path: Path) -> tuple[list[str], list[str]]:
    """The codes of a pool file and its problems as ``FILE:LINE: message`` (both in file order)."""
    from schemas.vnpost import check_item_code

    codes: list[str] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot read it: {exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc}"]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            code = check_item_code(line)
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        if code in seen:
            problems.append(f"{path}:{number}: {code} is also on line {seen[code]}")
            continue
        seen[code] = number
        codes.append(code)
        if len(codes) > MAX_CODES:
            return [], [f"{path}:{number}: more than {MAX_CODES:,} codes in one file; split it"]
    if not codes and not problems:
        problems.append(f"{path}: no item codes in it")
    return codes, problems


@click.group()
def vnpost() -> None:
    """VNPost (BCCI): the pool of pre-issued item codes."""


@vnpost.group()
def pool() -> None:
    """The item codes orders take: load a batch VNPost issued, see how many are left."""


_connector_option = click.option(
    "--connector", "name", default="vnpost", show_default=True, help="The VNPost connector in connectors.yaml."
)


@pool.command()
@config_option
@_connector_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def load(config: Path | None, name: str, file: Path) -> None:
    """Add the item codes in FILE (one per line) to the pool; all or nothing."""
    from connectors.vnpost import load_pool

    codes, problems = read_codes(file)
    if problems:
        for line in problems[:MAX_NAMED]:
            click.echo(line, err=True)
        if len(problems) > MAX_NAMED:
            click.echo(f"... and {len(problems) - MAX_NAMED} more bad line(s)", err=True)
        click.echo(f"igate-bus: {file}: nothing loaded ({len(problems)} bad line(s))", err=True)
        raise SystemExit(1)
    app = _load(config)
    try:
        state = _state(app, name)
        added = load_pool(state, codes)
        free = _counts(state)["free"]
    finally:
        app.close()
    click.echo(f"{file}: {added} code(s) added, {len(codes) - added} already in the pool; {free} free now")


@pool.command()
@config_option
@_connector_option
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def status(config: Path | None, name: str, as_json: bool) -> None:
    """How many item codes are free and how many orders took (a refused or cancelled order gives its back)."""
    app = _load(config)
    try:
        counts = _counts(_state(app, name))
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(f"{name} pool: {counts['free']} free, {counts['taken']} taken by orders, {counts['total']} in all")


def _state(app: App, name: str) -> ConnectorState:
    from bus.wiring import open_store
    from connectors.kit.state import ConnectorState
    from schemas.errors import BusError

    spec = app.config.connectors.connectors.get(name)
    if spec is None:
        _fail(f"no connector {name!r} in connectors.yaml")
    if spec.type != "vnpost":
        _fail(f"connector {name!r} is of type {spec.type!r}, not vnpost")
    try:
        return ConnectorState(open_store(app), connector=name)
    except BusError as exc:
        _fail(f"the store cannot be opened: {exc}")


def _counts(state: ConnectorState) -> dict[str, int]:
    from connectors.vnpost import FREE, POOL

    free, total = state.count(POOL, status=FREE), state.count(POOL)
    return {"free": free, "taken": total - free, "total": total}


COMMANDS = [vnpost]
