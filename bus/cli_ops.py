"""The operational commands of ``igate-bus``: run, publish, map, dlq, topology, simulate.

Each command turns every expected failure (bad config, bad event file, broker down) into one clear line on
stderr and exit code 2 (usage, config, input) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from bus.cli_types import DURATION
from config.settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bus.wiring import App


def _settings(config: Path | None) -> Settings:
    """The settings, or one line per bad ``IGATE_BUS_*`` variable and exit 2 (never its value: a URL's password)."""
    from schemas.errors import ConfigError

    try:
        return load_settings(Settings, config_dir=config) if config else load_settings(Settings)
    except ConfigError as exc:
        _fail(str(exc).replace("\n", "\nigate-bus: "))


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"igate-bus: {message}", err=True)
    sys.exit(code)


def _load(config: Path | None) -> App:
    from bus.wiring import load_app
    from config.loader import ConfigInvalid

    try:
        return load_app(_settings(config))
    except ConfigInvalid as exc:
        for p in exc.problems:
            click.echo(p.format(), err=True)
        sys.exit(2)
    except OSError as exc:
        _fail(f"cannot read the config: {exc}")


config_option = click.option(
    "--config",
    "config",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder with routes.yaml and connectors.yaml (default: IGATE_BUS_CONFIG_DIR or the shipped config).",
)


@click.command()
@config_option
@click.option("--routes", "route_names", default="", help="Comma-separated route names (default: all enabled).")
def run(config: Path | None, route_names: str) -> None:
    """Run the worker: consume the routes' queues until SIGTERM/SIGINT, then drain and stop."""
    from bus.logging import configure_logging
    from bus.wiring import build_worker
    from schemas.errors import ConfigError

    app = _load(config)
    configure_logging(app.settings.log_level, app.settings.log_format)
    try:
        worker = build_worker(app, [n for n in route_names.split(",") if n] or None)
    except ConfigError as exc:
        _fail(str(exc))
    worker.install_signal_handlers()
    try:
        worker.run()
    finally:
        app.close()


def read_events(source: str) -> Iterator[tuple[int, bytes]]:
    """(line or index, raw JSON) from a JSON file (one object or an array) or JSON lines; ``-`` is stdin."""
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        _fail(f"{source}: cannot read: {exc.strerror}")
    stripped = raw.strip()
    if stripped.startswith(b"["):
        try:
            items = json.loads(stripped)
        except ValueError as exc:
            _fail(f"{source}: not valid JSON: {exc}")
        for i, item in enumerate(items, start=1):
            yield i, json.dumps(item, ensure_ascii=False).encode()
        return
    lines = [(n, line.strip()) for n, line in enumerate(raw.splitlines(), start=1) if line.strip()]
    if len(lines) > 1 and all(line.startswith(b"{") and line.endswith(b"}") for _, line in lines):
        yield from lines
        return
    yield 1, stripped


@click.command()
@click.argument("source", type=str)
@click.option(
    "--exchange",
    type=click.Choice(["igate.events", "bus.results"]),
    default="igate.events",
    help="igate.events for iGate's events, bus.results for results of external systems.",
)
@click.option("--no-validate", is_flag=True, help="Publish as is (to test how routes handle bad events).")
def publish(source: str, exchange: str, no_validate: bool) -> None:
    """Publish events from a JSON file, JSON lines, or - (stdin); prints each confirmed event id.

    Every event is validated first; if any is invalid, nothing is published and each problem is listed.
    """
    from routes.publisher import Publisher, PublishFailed
    from schemas.envelope import parse_event
    from schemas.errors import InvalidEvent
    from schemas.events import EVENT_PAYLOADS

    events: list[dict[str, Any]] = []
    problems: list[str] = []
    for where, raw in read_events(source):
        try:
            if no_validate:
                events.append(json.loads(raw))
            else:
                events.append(parse_event(raw, payload_models=EVENT_PAYLOADS).as_dict())
        except (InvalidEvent, ValueError) as exc:
            problems.append(f"{source}:{where}: {exc}")
    if problems:
        for p in problems:
            click.echo(p, err=True)
        sys.exit(2)
    try:
        with Publisher(_settings(None).amqp_url.get_secret_value()) as pub:
            for published in pub.publish_many(events, exchange=exchange):
                click.echo(published.event_id)
    except PublishFailed as exc:
        _fail(f"not published: {exc}", code=1)


@click.command(name="map")
@click.option("--route", "route_name", required=True, help="The route whose adapter to run.")
@click.argument("event_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@config_option
def map_(route_name: str, event_file: Path, config: Path | None) -> None:
    """Dry run: show what a route's adapter makes of an event file (no broker, no store, no network)."""
    from routes.pipeline import _truthy
    from schemas.envelope import parse_event
    from schemas.errors import BusError
    from schemas.events import EVENT_PAYLOADS

    app = _load(config)
    route = next((r for r in app.routes if r.spec.name == route_name), None)
    if route is None:
        _fail(f"unknown route {route_name!r}; known: {', '.join(r.spec.name for r in app.routes)}")
    try:
        event = parse_event(event_file.read_bytes(), payload_models=EVENT_PAYLOADS)
        if route.when is not None and not _truthy(route.when.search(event.as_dict())):
            click.echo(f"route {route_name}: skipped (when: {route.spec.when} is false for this event)")
            return
        request = route.adapter(event, now=datetime.now(UTC))
    except BusError as exc:
        _fail(f"{event_file}: {exc.kind}: {exc}")
    click.echo(f"# route {route_name}: {route.spec.adapter} -> {route.spec.to} ({type(request).__name__})")
    click.echo(_render(app, route.connector, route.operation, request))


def _render(app: App, connector: str, operation: str, request: Any) -> str:
    """What the connector would put on the wire, when its module can say without I/O; else the request."""
    import importlib

    from connectors.base import CONNECTOR_TYPES

    spec = app.config.connectors.connectors[connector]
    module = importlib.import_module(CONNECTOR_TYPES[spec.type].partition(":")[0])
    render = getattr(module, "render", None)
    if callable(render):
        text: str = render(
            operation, request, **({"madonvi": str(spec.options["madonvi"])} if "madonvi" in spec.options else {})
        )
        return text
    dumped: str = request.model_dump_json(indent=2)
    return dumped


@click.group()
def dlq() -> None:
    """Dead letters: list, show, replay (same event_id) and purge, per route or 'unrouted'."""


def _dlq_routes(app: App, route: str | None) -> list[str]:
    from routes.topology import UNROUTED_QUEUE

    names = [r.spec.name for r in app.routes] + [UNROUTED_QUEUE]
    if route is not None and route not in names:
        _fail(f"unknown route {route!r}; known: {', '.join(names)}")
    return [route] if route else names


def _dead_letters(app: App) -> Any:
    import pika

    from routes.amqp import parameters
    from routes.dlq import DeadLetters

    try:
        conn = pika.BlockingConnection(parameters(app.settings.amqp_url.get_secret_value(), name="igate-bus dlq"))
    except pika.exceptions.AMQPError as exc:
        _fail(f"cannot reach RabbitMQ at {app.settings.amqp_url}: {exc!r}", code=1)
    return conn, DeadLetters(conn)


def _filter(event_ids: tuple[str, ...], kind: str | None, dossier: str | None) -> Any:
    from routes.dlq import match

    return match(event_ids=set(event_ids) or None, kind=kind, dossier_code=dossier)


route_opt = click.option("--route", "route", default=None, help="A route name, or 'unrouted' (default: all).")
json_opt = click.option("--json", "as_json", is_flag=True, help="JSON output.")
filter_opts = [
    click.option("--event-id", "event_ids", multiple=True, help="Only these event ids (repeatable)."),
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
    """List dead letters with their reasons."""
    app = _load(config)
    conn, dl = _dead_letters(app)
    try:
        rows = [
            d.summary() for r in _dlq_routes(app, route) for d in dl.browse(r, where=_filter(event_ids, kind, dossier))
        ]
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("queue", "event_id", "event_type", "dossier", "kind", "attempts", "error", title="dead letters")
    for row in rows:
        table.add_row(
            row["queue"],
            row["event_id"] or "-",
            row["event_type"] or "-",
            row["dossier_code"] or "-",
            row["error_kind"],
            str(row["attempts"] or "-"),
            (row["error"] or "")[:80],
        )
    Console().print(table)
    click.echo(f"{len(rows)} dead letter(s)")


@dlq.command(name="show")
@click.argument("event_id")
@route_opt
@config_option
def dlq_show(event_id: str, route: str | None, config: Path | None) -> None:
    """Show one dead letter whole: headers and body."""
    app = _load(config)
    conn, dl = _dead_letters(app)
    try:
        found = [d for r in _dlq_routes(app, route) for d in dl.browse(r, where=_filter((event_id,), None, None))]
    finally:
        conn.close()
    if not found:
        _fail(f"no dead letter with event_id {event_id}", code=1)
    for d in found:
        headers = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.headers.items()}
        click.echo(json.dumps({**d.summary(), "headers": headers}, ensure_ascii=False, indent=2, default=str))
        click.echo(d.body.decode("utf-8", errors="replace"))


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
    """Send dead letters back to their route, keeping their event_id."""
    if not (replay_all or event_ids or kind or dossier):
        _fail("say what to replay: --all, --event-id, --kind or --dossier")
    app = _load(config)
    conn, dl = _dead_letters(app)
    try:
        counts = {r: dl.replay(r, where=_filter(event_ids, kind, dossier)) for r in _dlq_routes(app, route)}
    finally:
        conn.close()
    counts = {k: v for k, v in counts.items() if v}
    click.echo(json.dumps(counts) if as_json else f"replayed {sum(counts.values())}: {counts}")


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
    if not yes and not click.confirm("Delete the selected dead letters for good?", default=False):
        _fail("nothing purged", code=1)
    app = _load(config)
    conn, dl = _dead_letters(app)
    try:
        counts = {r: dl.purge(r, where=_filter(event_ids, kind, dossier)) for r in _dlq_routes(app, route)}
    finally:
        conn.close()
    counts = {k: v for k, v in counts.items() if v}
    click.echo(json.dumps(counts) if as_json else f"purged {sum(counts.values())}: {counts}")


@click.command()
@config_option
@json_opt
@click.option("--declare", "do_declare", is_flag=True, help="Also declare it on the broker.")
def topology(config: Path | None, as_json: bool, do_declare: bool) -> None:
    """Print (and optionally declare) the exchanges, queues, arguments and bindings the routes need."""
    from bus.wiring import declare_topology, topology_of
    from routes.topology import EVENTS_EXCHANGE, RESULTS_EXCHANGE, UNROUTED_EXCHANGE
    from schemas.errors import ConfigError

    app = _load(config)
    topo = topology_of(app.routes)
    exchanges = {
        EVENTS_EXCHANGE: "topic, AE bus.unrouted",
        RESULTS_EXCHANGE: "topic, AE bus.unrouted",
        UNROUTED_EXCHANGE: "fanout",
    }
    data: dict[str, Any] = {
        "exchanges": exchanges,
        "queues": [
            {"name": q.name, "arguments": q.arguments, "bindings": [list(b) for b in q.bindings]} for q in topo.queues
        ],
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for name, kind in exchanges.items():
            click.echo(f"exchange {name}: {kind}")
        for q in topo.queues:
            binds = ", ".join(f"{e}:{k}" for e, k in q.bindings) or "-"
            click.echo(f"queue {q.name}  {q.arguments}  bound: {binds}")
    if do_declare:
        try:
            declare_topology(app.settings, app.routes)
        except ConfigError as exc:
            _fail(str(exc), code=1)
        click.echo("declared")


@click.command()
@click.argument("system", type=click.Choice(["igate", "nps"]))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=None, type=int, help="Default: 8601 for igate, 8602 for nps.")
@click.option(
    "--token-ttl",
    type=DURATION,
    default=None,
    help="Lifetime of an issued token (igate) or session (nps), e.g. 5m (default: 5m igate, 1h nps).",
)
def simulate(system: str, host: str, port: int | None, token_ttl: float | None) -> None:
    """Run a system's simulator in the foreground (record at /_sim/requests, faults at /_sim/faults).

    It logs JSON lines like the bus (IGATE_BUS_LOG_FORMAT, IGATE_BUS_LOG_LEVEL), personal data masked, and
    accepts the credentials the bus is given (IGATE_BUS_IGATE_USERNAME/PASSWORD, IGATE_BUS_NPS_USERNAME/
    PASSWORD), or the simulator's published defaults when they are unset (docs/simulators.md).
    """
    from bus.logging import configure_logging

    settings = _settings(None)
    configure_logging(settings.log_level, settings.log_format)
    if system == "nps":
        from simulators import nps

        nps.serve(host, port or nps.DEFAULT_PORT, session_ttl_s=token_ttl or nps.DEFAULT_SESSION_TTL_S)
    else:
        from simulators import igate

        igate.serve(host, port or igate.DEFAULT_PORT, token_ttl_s=token_ttl or igate.DEFAULT_TOKEN_TTL_S)


COMMANDS = [run, publish, map_, dlq, topology, simulate]


@click.command()
@click.option("--dossiers", default=300, show_default=True, help="dossier.received events to publish.")
def demo(dossiers: int) -> None:
    """Run the bus against the iGate simulator with a live table, then print a summary."""
    from bus.demo import Plan, run_demo
    from schemas.errors import ConfigError

    try:
        code = run_demo(Plan(received=dossiers))
    except ConfigError as exc:
        _fail(str(exc))
    sys.exit(code)


COMMANDS.append(demo)
