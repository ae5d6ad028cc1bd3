"""``igate-bus dlq``: list, show, replay and purge dead letters, per route or ``unrouted``.

Where it sits: outside the message path, at its end: ``routes/dlq.py`` reads and moves the letters,
``bus/dlq_view.py`` decides how they look. Personal data is masked on screen by default, with the rules of
the logs; ``show --reveal`` prints a letter whole after writing who asked to the audit log (``bus/audit.py``).
Event ids are shown as their shortest unique prefix (at least 8 characters) and accepted back as selectors.

Exit codes: 0 done, 1 nothing matched or the broker could not be reached, 2 bad usage (an ambiguous or too
short id prefix, an unknown route).
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from bus.cli_ops import _fail, _load, config_option

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from bus.wiring import App
    from routes.dlq import DeadLetter, DeadLetters, Filter


@click.group()
def dlq() -> None:
    """Dead letters: list, show, replay (same event_id) and purge, per route or 'unrouted'."""


def _dlq_routes(app: App, route: str | None) -> list[str]:
    from routes.topology import UNROUTED_QUEUE

    names = [r.spec.name for r in app.routes] + [UNROUTED_QUEUE]
    if route is not None and route not in names:
        _fail(f"unknown route {route!r}; known: {', '.join(names)}")
    return [route] if route else names


@contextmanager
def _session(app: App) -> Iterator[DeadLetters]:
    """A connection for the command, its log lines held back until the output is out (bus/cli_logs.py)."""
    import pika

    from bus.cli_logs import logs_after_report
    from routes.amqp import parameters
    from routes.dlq import DeadLetters

    with logs_after_report("warning", app.settings.log_format):
        try:
            conn = pika.BlockingConnection(parameters(app.settings.amqp_url.get_secret_value(), name="igate-bus dlq"))
        except pika.exceptions.AMQPError as exc:
            _fail(f"cannot reach RabbitMQ at {app.settings.amqp_url}: {exc!r}", code=1)
        try:
            yield DeadLetters(conn)
        finally:
            if conn.is_open:
                conn.close()


def _resolve(dl: DeadLetters, routes: Iterable[str], selectors: Iterable[str]) -> set[str]:
    """Full event ids for ids or unique prefixes, among the dead letters of ``routes``; exit 2 if ambiguous."""
    from bus.dlq_view import SelectorError, resolve_ids

    wanted = list(selectors)
    if not wanted:
        return set()
    if all(_is_uuid(s) for s in wanted):  # whole event ids: nothing to resolve, no need to read every letter
        return {s.strip() for s in wanted}
    known = {i for r in routes for i in dl.event_ids(r)}
    try:
        resolved = resolve_ids(wanted, known)
    except SelectorError as exc:
        _fail(str(exc))
    # a selector matching nothing stays as typed: it then matches no letter, and the count says so
    return set(resolved.event_ids) | set(resolved.unmatched)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text.strip())) == text.strip().lower()
    except ValueError:
        return False


def _filter(event_ids: set[str], kind: str | None, dossier: str | None) -> Filter:
    from routes.dlq import match

    return match(event_ids=event_ids or None, kind=kind, dossier_code=dossier)


route_opt = click.option("--route", "route", default=None, help="A route name, or 'unrouted' (default: all).")
json_opt = click.option("--json", "as_json", is_flag=True, help="JSON output.")
filter_opts = [
    click.option(
        "--event-id",
        "event_ids",
        multiple=True,
        help="Only these event ids, or unique prefixes of them (8+ characters; repeatable).",
    ),
    click.option("--kind", default=None, help="Only this error kind (prefix), e.g. invalid, rejected."),
    click.option("--dossier", default=None, help="Only this dossier code."),
]


def _with_filters(f: Any) -> Any:
    for opt in reversed(filter_opts):
        f = opt(f)
    return f


@dlq.command(name="list")
@route_opt
@json_opt
@_with_filters
@config_option
def dlq_list(
    route: str | None,
    as_json: bool,
    event_ids: tuple[str, ...],
    kind: str | None,
    dossier: str | None,
    config: Path | None,
) -> None:
    """List dead letters with a short reason each (personal data masked)."""
    from bus.dlq_view import masked_summary, terminal_json

    app = _load(config)
    routes = _dlq_routes(app, route)
    with _session(app) as dl:
        where = _filter(_resolve(dl, routes, event_ids), kind, dossier)
        letters = [d for r in routes for d in dl.browse(r, where=where)]
        if as_json:
            click.echo(terminal_json([masked_summary(d) for d in letters]))
        else:
            render_list(letters)


def render_list(letters: list[DeadLetter], console: Console | None = None) -> None:
    """One table per queue, fitted to the terminal: a column each when they fit, else two columns.

    Event ids are never cut: each is its shortest unique prefix (``bus/dlq_view.py``) in a column that does
    not wrap. The reason is cut here, at a word boundary, to the room its column has, so rich never crops it.
    """
    from rich.console import Console

    from bus.dlq_view import mask_text, printable, short_ids

    console = console or Console()
    prefixes = short_ids(d.event_id for d in letters if d.event_id)
    rows = [
        _Row(
            letter.queue,
            printable(prefixes.get(letter.event_id or "", "-")),
            printable(letter.event_type or "-"),
            printable(letter.dossier_code or "-"),
            printable(letter.error_kind),
            str(letter.attempts or "-"),
            printable(mask_text(letter.error)),
        )
        for letter in letters
    ]
    widths = [max([len(h), *(len(r.cells()[i]) for r in rows)]) for i, h in enumerate(_HEADERS)]
    # a boxed table: each column has one space of padding either side, and one rule more than columns
    room = console.width - sum(widths) - 3 * (len(widths) + 1) - 1
    for queue in dict.fromkeys(r.queue for r in rows):
        mine = [r for r in rows if r.queue == queue]
        table = _wide(mine, room) if room >= MIN_REASON else _narrow(mine, console.width, widths[0])
        table.title = f"{queue} ({len(mine)})"
        console.print(table)
    console.print(f"{len(letters)} dead letter(s)" + ("; ids shown as unique prefixes" if letters else ""))


#: the reason column is shown only with at least this much room; else the narrow layout
MIN_REASON = 24
#: the longest reason the wide layout shows (``dlq show`` has the whole error)
WIDE_REASON = 100
_HEADERS = ("event", "type", "dossier", "kind", "att")


@dataclass(frozen=True, slots=True)
class _Row:
    queue: str
    event: str
    type: str
    dossier: str
    kind: str
    attempts: str
    error: str

    def cells(self) -> tuple[str, str, str, str, str]:
        return (self.event, self.type, self.dossier, self.kind, self.attempts)


def _wide(rows: list[_Row], room: int) -> Table:
    from rich.markup import escape
    from rich.table import Table

    from bus.dlq_view import reason

    table = Table(title_justify="left")
    for header in _HEADERS:
        table.add_column(header, no_wrap=True, justify="right" if header == "att" else "left")
    table.add_column("reason", no_wrap=True, max_width=room)
    for r in rows:
        table.add_row(*(escape(c) for c in r.cells()), escape(reason(r.error, min(room, WIDE_REASON))))
    return table


def _narrow(rows: list[_Row], width: int, id_width: int) -> Table:
    """Two columns: the id, and the rest on lines of their own, the reason wrapped at word boundaries."""
    from rich.markup import escape
    from rich.table import Table

    from bus.dlq_view import reason

    room = max(width - id_width - 7, 20)
    table = Table(title_justify="left", show_lines=True)
    table.add_column("event", no_wrap=True, min_width=id_width)
    table.add_column("kind ×attempts, type, dossier, reason", overflow="fold", max_width=room)
    for r in rows:
        detail = f"{r.kind} ×{r.attempts}\n{r.type}\n{r.dossier}\n{reason(r.error, 2 * room)}"
        table.add_row(escape(r.event), escape(detail))
    return table


@dlq.command(name="show")
@click.argument("event_id")
@route_opt
@click.option("--reveal", is_flag=True, help="Show personal data unmasked (writes an audit log line first).")
@click.option("--operator", default=None, help="Your name, recorded in the audit line with your OS account.")
@config_option
def dlq_show(event_id: str, route: str | None, reveal: bool, operator: str | None, config: Path | None) -> None:
    """Show one dead letter whole (EVENT_ID or a unique prefix of it): headers and body, personal data masked."""
    from bus.dlq_view import masked_letter, revealed_letter, terminal_json

    app = _load(config)
    routes = _dlq_routes(app, route)
    with _session(app) as dl:
        ids = _resolve(dl, routes, [event_id])
        found = [d for r in routes for d in dl.browse(r, where=_filter(ids, None, None))]
        if not found:
            _fail(f"no dead letter with event_id {event_id}", code=1)
        if reveal:
            _audit_reveal(app, found, operator)
        for d in found:
            click.echo(terminal_json(revealed_letter(d) if reveal else masked_letter(d)))


def _audit_reveal(app: App, letters: list[DeadLetter], operator: str | None) -> None:
    """One audit line per letter about to be shown unmasked; refuse to show anything if one cannot be written."""
    from bus.audit import record

    path = app.settings.audit_log
    for d in letters:
        try:
            record(path, "dlq_revealed", operator=operator, queue=d.queue, route=d.route, event_id=d.event_id)
        except OSError as exc:
            _fail(f"not revealed: cannot write the audit log {path}: {exc.strerror or exc}", code=1)


@dlq.command(name="replay")
@route_opt
@json_opt
@_with_filters
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of the selected queues.")
@config_option
def dlq_replay(
    route: str | None,
    as_json: bool,
    event_ids: tuple[str, ...],
    kind: str | None,
    dossier: str | None,
    replay_all: bool,
    config: Path | None,
) -> None:
    """Send dead letters back to their route, keeping their event_id and message properties."""
    if not (replay_all or event_ids or kind or dossier):
        _fail("say what to replay: --all, --event-id, --kind or --dossier")
    app = _load(config)
    routes = _dlq_routes(app, route)
    with _session(app) as dl:
        where = _filter(_resolve(dl, routes, event_ids), kind, dossier)
        counts = {r: dl.replay(r, where=where) for r in routes}
    _report("replayed", counts, as_json)


@dlq.command(name="purge")
@route_opt
@json_opt
@_with_filters
@click.option("--all", "purge_all", is_flag=True, help="Delete every dead letter of the selected queues.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
def dlq_purge(
    route: str | None,
    as_json: bool,
    event_ids: tuple[str, ...],
    kind: str | None,
    dossier: str | None,
    purge_all: bool,
    yes: bool,
    config: Path | None,
) -> None:
    """Delete dead letters (after you have dealt with them)."""
    if not (purge_all or event_ids or kind or dossier):
        _fail("say what to purge: --all, --event-id, --kind or --dossier")
    app = _load(config)
    routes = _dlq_routes(app, route)
    if not yes and not click.confirm("Delete the selected dead letters for good?", default=False):
        _fail("nothing purged", code=1)
    with _session(app) as dl:
        where = _filter(_resolve(dl, routes, event_ids), kind, dossier)
        counts = {r: dl.purge(r, where=where) for r in routes}
    _report("purged", counts, as_json)


def _report(verb: str, counts: dict[str, int], as_json: bool) -> None:
    counts = {k: v for k, v in counts.items() if v}
    click.echo(json.dumps(counts) if as_json else f"{verb} {sum(counts.values())}: {counts}")
