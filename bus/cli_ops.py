"""The operational commands of ``igate-bus``: run, publish, map, topology, simulate, demo (dlq: cli_dlq.py).

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

    from bus.affinity import AffinityRule
    from bus.wiring import App
    from routes.model import Route
    from schemas.envelope import Event


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
@click.option(
    "--processes",
    type=click.IntRange(min=1, max=256),
    default=None,
    envvar="IGATE_BUS_PROCESSES",
    show_envvar=True,
    help="Worker processes sharing the routes, under one supervisor (default: the number of cores).",
)
@click.option(
    "--cpu-affinity",
    "affinity",
    default="auto",
    envvar="IGATE_BUS_CPU_AFFINITY",
    show_envvar=True,
    callback=lambda _ctx, _param, value: _affinity(value),
    help="auto (each worker on a CPU of its own), none (the kernel places them) or a CPU list such as 0,2-3.",
)
def run(config: Path | None, route_names: str, processes: int | None, affinity: AffinityRule) -> None:
    """Run the worker: consume the routes' queues until SIGTERM/SIGINT, then drain and stop."""
    import threading

    from bus.logging import configure_logging
    from bus.wiring import build_worker, warn_stale
    from schemas.errors import ConfigError

    app = _load(config)
    # a line per message: written a group at a time (bus/log_buffer.py); warnings and worse at once
    configure_logging(app.settings.log_level, app.settings.log_format, buffered=True)
    from bus.supervisor import default_processes, follow_supervisor

    processes = processes or default_processes()
    if processes > 1:
        _supervise(app, config, route_names, processes, affinity)
    if not follow_supervisor():  # a supervisor's child whose supervisor is already gone
        _fail("the supervisor that started this worker is gone; not starting", 1)
    _pin(affinity)  # before the worker's threads start: they inherit the CPU
    try:
        worker = build_worker(app, [n for n in route_names.split(",") if n] or None)
    except ConfigError as exc:
        _fail(str(exc))
    worker.install_signal_handlers()
    _freeze_startup_heap()
    # queues of removed routes keep taking events nobody reads: say so at start, off the way of consumption
    threading.Thread(target=warn_stale, args=(app,), name="igate-bus-stale-check", daemon=True).start()
    try:
        worker.run()
    finally:
        app.close()


def _affinity(value: str) -> AffinityRule:
    from bus.affinity import parse_affinity

    try:
        return parse_affinity(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _pin(rule: AffinityRule) -> None:
    """Pin this worker to its CPU (bus/affinity.py); a CPU the rule named but the kernel refuses stops it."""
    import os

    import structlog

    from bus.affinity import AUTO, pin_process
    from bus.supervisor import WORKER_CPU_ENV

    log = structlog.get_logger("igate_bus.worker")
    given = os.environ.get(WORKER_CPU_ENV)  # a supervisor's child: the CPU of its slot ("" for none)
    if given is not None:
        cpu = int(given) if given.isdigit() else None
    else:
        [cpu] = rule.placements(1)
    if cpu is None:
        log.info("cpu_affinity", cpu=None, rule=str(rule))
        return
    try:
        pin_process(cpu)
    except OSError as exc:
        if rule.mode != AUTO:
            _fail(f"--cpu-affinity {rule}: the kernel refuses CPU {cpu}: {exc.strerror or exc}")
        log.warning("cpu_affinity_refused", cpu=cpu, rule=str(rule), error=exc.strerror or str(exc))
        return
    log.info("cpu_affinity", cpu=cpu, rule=str(rule))


def _freeze_startup_heap() -> None:
    """Keep what start-up made (modules, schemas, WSDLs, the config) out of the garbage collector's scans.

    Why: a worker's heap is mostly start-up objects that live as long as it does (about 143,000 tracked
    objects on the shipped config), and each full collection walked all of them: 81 ms, a stall of every
    message in flight, whenever enough objects had survived (issue 15). ``gc.freeze`` moves them to a
    generation the collector never scans (a full collection then took under 1 ms); the objects messages
    make are collected as before.
    """
    import gc

    import structlog

    gc.collect()
    gc.freeze()
    structlog.get_logger("igate_bus.worker").info("startup_heap_frozen", objects=gc.get_freeze_count())


def _supervise(app: App, config: Path | None, route_names: str, processes: int, affinity: AffinityRule) -> NoReturn:
    """``run --processes N``: check what every child would refuse once, then run N of them (bus/supervisor.py)."""
    import os

    from bus.ops_api import ops_address
    from bus.supervisor import Supervisor, child_command
    from bus.wiring import select_routes
    from routes.pipeline import crash_plan_from_env
    from schemas.errors import ConfigError

    try:  # refused here once, rather than by N children restarted again and again
        crash_plan_from_env()
        routes = select_routes(app.routes, [n for n in route_names.split(",") if n] or None)
        host, port = ops_address()
    except ConfigError as exc:
        _fail(str(exc))
    if not routes:
        _fail("no route to run: every route is disabled or none was selected")
    app.close()
    supervisor = Supervisor(
        child_command(route_names, config),
        processes,
        env=dict(os.environ),
        ops_host=host,
        ops_port=port,
        cpus=affinity.placements(processes),
    )
    supervisor.install_signal_handlers()
    sys.exit(supervisor.run())


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

    settings = _settings(None)
    rules, now = settings.event_rules(), datetime.now(UTC)
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    for where, raw in read_events(source):
        try:
            if no_validate:
                events.append(json.loads(raw))
            else:
                event = parse_event(raw, payload_models=EVENT_PAYLOADS, rules=rules, received_at=now)
                events.append(event.as_dict())
        except (InvalidEvent, ValueError) as exc:
            problems.append(f"{source}:{where}: {exc}")
    if problems:
        for p in problems:
            click.echo(p, err=True)
        sys.exit(2)
    try:
        with Publisher(settings.amqp_url.get_secret_value()) as pub:
            for published in pub.publish_many(events, exchange=exchange):
                click.echo(published.event_id)
    except PublishFailed as exc:
        _fail(f"not published: {exc}", code=1)


@click.command(name="map")
@click.option("--route", "route_name", required=True, help="The route whose adapter to run.")
@click.argument("event_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--force", is_flag=True, help="Render it even when the route would not take this event (the output says so)."
)
@config_option
def map_(route_name: str, event_file: Path, force: bool, config: Path | None) -> None:
    """Dry run: show what a route's adapter makes of an event file (no broker, no store, no network).

    Exits 1 without rendering when the worker would never hand the route this event (its bindings do not
    take the event type, its ``when`` is false for it, or it is disabled); ``--force`` renders it anyway.
    """
    from schemas.envelope import parse_event
    from schemas.errors import BusError
    from schemas.events import EVENT_PAYLOADS

    app = _load(config)
    route = next((r for r in app.routes if r.spec.name == route_name), None)
    if route is None:
        _fail(f"unknown route {route_name!r}; known: {', '.join(r.spec.name for r in app.routes)}")
    try:
        event = parse_event(event_file.read_bytes(), payload_models=EVENT_PAYLOADS)
        refused = why_not(route, event)
        if refused and not force:
            _fail(f"route {route_name} {refused}; the worker would never hand it this event (--force renders it)", 1)
        request = route.adapter(event, now=datetime.now(UTC))
    except BusError as exc:
        _fail(f"{event_file}: {exc.kind}: {exc}")
    click.echo(f"# route {route_name}: {route.spec.adapter} -> {route.spec.to} ({type(request).__name__})")
    if refused:
        click.echo(f"# FORCED: route {route_name} {refused}; the worker would never send this")
    click.echo(_render(app, route.connector, route.operation, request))


def why_not(route: Route, event: Event) -> str | None:  # noqa: PLR0911 - one return per reason
    """Why the worker would never hand ``route`` this event, or None when it would (pure).

    The same three gates the message path has: the route is enabled, one of its binding keys matches the
    event type (as RabbitMQ matches topic keys), and its ``when`` holds for the event.
    """
    from jmespath.exceptions import JMESPathError

    from routes.model import binding_matches
    from routes.pipeline import _truthy
    from schemas.bus import TICK_EVENT

    spec = route.spec
    event_type = event.envelope.event_type
    if not spec.enabled:
        return "is disabled (enabled: false in routes.yaml)"
    schedule = spec.from_.schedule
    if schedule is not None and event_type == TICK_EVENT:
        return None  # the route's own schedule fires these (routes/scheduler.py)
    if not spec.from_.events:
        return f"binds no event type: it runs on a schedule ({schedule.describe() if schedule else '?'})"
    if not any(binding_matches(key, event_type) for key in spec.from_.events):
        return f"does not bind {event_type} (it binds {', '.join(spec.from_.events)} on {spec.from_.exchange})"
    if route.when is None:
        return None
    try:
        holds = _truthy(route.when.search(event.as_dict()))
    except JMESPathError as exc:  # the worker would retry it as an internal error, then dead-letter it
        return f"cannot evaluate its when ({spec.when}) for this event: {exc}"
    return None if holds else f"skips this event: its when ({spec.when}) is false for it"


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


json_opt = click.option("--json", "as_json", is_flag=True, help="JSON output.")


@click.command()
@config_option
@json_opt
@click.option("--declare", "do_declare", is_flag=True, help="Also declare it on the broker.")
@click.option(
    "--stale",
    "show_stale",
    is_flag=True,
    help="List our queues and bindings on the broker that no route declares (needs the management API).",
)
@click.option("--prune", is_flag=True, help="Remove those stale queues (when empty) and bindings; says what it did.")
@click.option("--force", is_flag=True, help="With --prune: delete stale queues even with messages or consumers.")
def topology(config: Path | None, as_json: bool, do_declare: bool, show_stale: bool, prune: bool, force: bool) -> None:
    """Print (and optionally declare) the exchanges, queues, arguments and bindings the routes need.

    With --stale or --prune, also compare with what the broker has: queues named route.*, retry.*, dlq.* and
    bindings of our exchanges to them that no route in the config declares (a removed route, a removed key).
    --prune unbinds stale bindings, deletes stale queues that are empty and unread, and unbinds (but keeps)
    those still holding messages; --force deletes those too. No other queue is ever touched.
    """
    from bus.wiring import declare_topology, topology_of
    from routes.topology import EVENTS_EXCHANGE, RESULTS_EXCHANGE, UNROUTED_EXCHANGE
    from schemas.errors import ConfigError

    if force and not prune:
        _fail("--force goes with --prune")
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
    if show_stale or prune:
        data.update(_stale_and_prune(app, prune=prune, force=force))
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_topology(data)
    if do_declare:
        try:
            declare_topology(app.settings, app.routes)
        except ConfigError as exc:
            _fail(str(exc), code=1)
        click.echo("declared")


def _print_topology(data: dict[str, Any]) -> None:
    for name, kind in data["exchanges"].items():
        click.echo(f"exchange {name}: {kind}")
    for q in data["queues"]:
        binds = ", ".join(f"{e}:{k}" for e, k in q["bindings"]) or "-"
        click.echo(f"queue {q['name']}  {q['arguments']}  bound: {binds}")
    if "stale" in data:
        lines = data["stale"]["lines"]
        click.echo(f"stale: {len(lines)} finding(s)" + (":" if lines else " (the broker has only what routes declare)"))
        for line in lines:
            click.echo(f"  {line}")
    for line in data.get("pruned", []):
        click.echo(f"pruned: {line}")
    for line in data.get("kept", []):
        click.echo(f"kept: {line}")


def _stale_and_prune(app: App, *, prune: bool, force: bool) -> dict[str, Any]:
    """The stale findings (and what --prune did about them), JSON-ready; exits 1 when the broker cannot say."""
    import pika

    from bus.cli_logs import logs_after_report
    from bus.wiring import stale_topology
    from routes.amqp import parameters
    from routes.broker_admin import ManagementUnavailable
    from routes.stale import prune as prune_stale

    with logs_after_report("warning", app.settings.log_format):
        try:
            stale = stale_topology(app)
        except ManagementUnavailable as exc:
            _fail(f"cannot list the broker's queues: {exc}", code=1)
        out: dict[str, Any] = {"stale": {**stale.as_json(), "lines": stale.lines()}}
        if prune and stale:
            try:
                conn = pika.BlockingConnection(
                    parameters(app.settings.amqp_url.get_secret_value(), name="igate-bus topology --prune")
                )
            except pika.exceptions.AMQPError as exc:
                _fail(f"cannot reach RabbitMQ at {app.settings.amqp_url}: {exc!r}", code=1)
            try:
                report = prune_stale(conn, stale, force=force)
            finally:
                if conn.is_open:
                    conn.close()
            out.update({"pruned": report.done, "kept": report.kept})
        elif prune:
            out.update({"pruned": [], "kept": []})
    return out


@click.command()
@click.argument("system", type=click.Choice(["igate", "nps", "viettel-sms", "esms", "vilis", "receipt", "vnpost"]))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    default=None,
    type=int,
    help="Default: 8601 igate, 8602 nps, 8603 viettel-sms, 8604 esms, 8605 vilis, 8606 receipt, 8607 vnpost.",
)
@click.option("--bus-url", default=None, help="vilis: the bus's ingress to call back (e.g. http://127.0.0.1:8600).")
@click.option(
    "--token-ttl",
    type=DURATION,
    default=None,
    help="Lifetime of an issued token (igate) or session (nps), e.g. 5m (default: 5m igate, 1h nps).",
)
def simulate(system: str, host: str, port: int | None, bus_url: str | None, token_ttl: float | None) -> None:
    """Run a system's simulator in the foreground (record at /_sim/requests, faults at /_sim/faults).

    It logs JSON lines like the bus (IGATE_BUS_LOG_FORMAT, IGATE_BUS_LOG_LEVEL), personal data masked, and
    accepts the credentials the bus is given (IGATE_BUS_IGATE_USERNAME/PASSWORD, IGATE_BUS_NPS_USERNAME/
    PASSWORD), or the simulator's published defaults when they are unset (docs/simulators.md).
    """
    from bus.logging import configure_logging

    settings = _settings(None)
    configure_logging(settings.log_level, settings.log_format, buffered=True)  # a line per request, grouped
    if system == "vilis":
        from simulators import vilis

        vilis.serve(host, port or vilis.DEFAULT_PORT, bus_url=bus_url, life="callback")
    elif system == "receipt":
        from simulators import receipt

        receipt.serve(host, port or receipt.DEFAULT_PORT)
    elif system == "vnpost":
        from simulators import vnpost

        vnpost.serve(host, port or vnpost.DEFAULT_PORT)
    elif system == "nps":
        from simulators import nps

        nps.serve(host, port or nps.DEFAULT_PORT, session_ttl_s=token_ttl or nps.DEFAULT_SESSION_TTL_S)
    elif system == "viettel-sms":
        from simulators import viettel_sms

        viettel_sms.serve(host, port or viettel_sms.DEFAULT_PORT)
    elif system == "esms":
        from simulators import esms

        esms.serve(host, port or esms.DEFAULT_PORT)
    else:
        from simulators import igate

        igate.serve(host, port or igate.DEFAULT_PORT, token_ttl_s=token_ttl or igate.DEFAULT_TOKEN_TTL_S)


COMMANDS = [run, publish, map_, topology, simulate]


@click.command()
@click.option("--dossiers", default=300, show_default=True, help="dossier.received events to publish.")
@click.option("--keep", is_flag=True, help="Keep the demo's own vhost afterwards, to explore it with igate-bus dlq.")
def demo(dossiers: int, keep: bool) -> None:
    """Run the bus against the simulators with a live table, in a vhost of its own, then print a summary."""
    from bus.demo import Plan, run_demo
    from schemas.errors import ConfigError

    try:
        code = run_demo(Plan(received=dossiers), keep=keep)
    except ConfigError as exc:
        _fail(str(exc).replace("\n", "\nigate-bus: "))
    sys.exit(code)


COMMANDS.append(demo)
