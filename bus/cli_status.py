"""``igate-bus status``: connectors and routes in one table (state, depth, oldest age, DLQ size).

Where it sits: outside the message path (event → route → adapter → connector → result/DLQ), looking at all
of it at once for an operator. Three sources are read in parallel, each with a timeout:

- **the running bus**: its ``GET /health/ready`` (``bus/ops_api.py``, on ``IGATE_BUS_OPS_PORT`` of this host by
  default, or ``--url``). Only the bus knows a connector's history (degraded after a failed probe, down
  after several, the breaker, the live error rate and p95) and the age of its route queues' heads, so when
  it answers, a connector's state is the bus's;
- **a probe now** from this process, with a fresh connection, side-effect free (``--no-probe`` skips it). It
  is the state shown when no bus answers;
- **the broker**: depth and consumers of every route queue, delay queue and DLQ, and the age of the oldest
  dead letter (DLQs are classic queues, so peeking costs nothing).

Exit code 0 when the status could be reported (whatever it says), 2 for a bad config or setting.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import click
from pydantic import BaseModel, Field

from bus.schedule_status import SchedulesCheck, gather_schedules, render_schedules

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bus.ops_api import HealthReport
    from bus.wiring import App
    from connectors.base import Health
    from routes.model import Route

#: seconds to wait for the running bus's answer
BUS_TIMEOUT_S: Final = 5.0
#: the probe may take the connector's own total deadline plus this
PROBE_MARGIN_S: Final = 1.0
NONE_URL: Final = "none"


# -- the report ------------------------------------------------------------------------------------------
class BusLink(BaseModel):
    """Whether the running bus answered, and what it said of itself."""

    url: str | None = Field(description="The ops endpoint asked; null when none was.")
    reachable: bool
    ready: bool | None = None
    error: str | None = None


class ProbeNow(BaseModel):
    """A probe run by ``status`` itself."""

    state: Literal["up", "degraded", "down"]
    detail: str
    latency_ms: float | None = None


class ConnectorRow(BaseModel):
    """One connector in ``status``."""

    name: str
    state: Literal["up", "degraded", "down", "unknown"]
    source: Literal["bus", "probe", "none"] = Field(description="Whose view ``state`` is.")
    detail: str
    breaker: str | None = None
    error_rate: float | None = None
    p95_ms: float | None = None
    last_success: datetime | None = None
    since: datetime | None = None
    probe: ProbeNow | None = Field(default=None, description="The probe run now; null with --no-probe.")


class BrokerCheck(BaseModel):
    """Whether the broker answered the queue inspection."""

    ok: bool
    detail: str


class StaleCheck(BaseModel):
    """Queues and bindings of ours on the broker that no route declares (routes/stale.py)."""

    checked: bool = Field(description="False when the management API could not be asked; `error` says why.")
    error: str | None = None
    queues: list[dict[str, Any]] = Field(default_factory=list)
    bindings: list[dict[str, Any]] = Field(default_factory=list)
    lines: list[str] = Field(default_factory=list, description="One readable line per finding.")


class StatusReport(BaseModel):
    """What ``igate-bus status --json`` prints."""

    checked_at: datetime
    bus: BusLink
    broker: BrokerCheck
    connectors: list[ConnectorRow]
    routes: list[dict[str, Any]] = Field(description="RouteStatus objects of bus/ops_api.py.")
    stale: StaleCheck | None = Field(default=None, description="Null when not checked (--no-stale).")
    schedules: SchedulesCheck | None = Field(
        default=None, description="Each scheduled route's owner, last and next run; null when no route has one."
    )


# -- gathering -------------------------------------------------------------------------------------------
def default_bus_url() -> str | None:
    """The ops endpoint of a bus on this host, from ``IGATE_BUS_OPS_HOST``/``PORT``; None when disabled.

    Raises:
        ConfigError: ``IGATE_BUS_OPS_PORT`` is not a port number.
    """
    from bus.ops_api import ops_address

    host, port = ops_address()
    if port == 0:
        return None
    if host in {"0.0.0.0", "::", ""}:  # a wildcard bind is reached on loopback
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ask_bus(url: str, timeout_s: float = BUS_TIMEOUT_S) -> tuple[HealthReport | None, str | None]:
    """The bus's readiness report (200 or 503 both carry it), or None and why not."""
    import httpx

    from bus.ops_api import HealthReport

    try:
        reply = httpx.get(f"{url.rstrip('/')}/health/ready", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if reply.status_code not in {200, 503}:
        return None, f"HTTP {reply.status_code} from {url}"
    try:
        return HealthReport.model_validate_json(reply.content), None
    except ValueError as exc:
        return None, f"not a health report: {str(exc)[:200]}"


def probe_connector(app: App, name: str) -> Health:
    """Build ``name`` here, probe it once within its deadline, close it; never raises."""
    from bus.wiring import build_connectors
    from connectors.base import Health

    spec = app.config.connectors.connectors.get(name)
    timeout = (spec.timeout.total if spec is not None else 15.0) + PROBE_MARGIN_S
    try:
        conn = build_connectors(app, [name])[name]
    except Exception as exc:  # an unset credential is a finding of status, not a crash
        return Health("down", f"not configured here: {exc}", None, datetime.now(UTC))
    pool = ThreadPoolExecutor(1, thread_name_prefix=f"igate-bus-status-probe-{name}")
    try:
        return pool.submit(conn.probe).result(timeout=timeout)
    except FutureTimeout:
        return Health("down", f"no answer within {timeout:g}s", timeout * 1000, datetime.now(UTC))
    except Exception as exc:
        return Health("down", f"probe raised {type(exc).__name__}: {exc}", None, datetime.now(UTC))
    finally:
        pool.shutdown(wait=False)


def check_stale(app: App) -> StaleCheck:
    """Ask the management API for our queues and bindings that no route declares; never raises."""
    from bus.wiring import stale_topology
    from routes.broker_admin import ManagementUnavailable

    try:
        stale = stale_topology(app)
    except ManagementUnavailable as exc:
        return StaleCheck(checked=False, error=str(exc))
    except Exception as exc:  # an odd listing must not cost the operator the rest of the report
        return StaleCheck(checked=False, error=f"{type(exc).__name__}: {exc}"[:300])
    return StaleCheck(checked=True, **stale.as_json(), lines=stale.lines())


def gather(app: App, *, bus_url: str | None, probe: bool, stale: bool = True) -> StatusReport:
    """Ask the bus, probe the connectors, read the queues and look for stale ones, in parallel; merge.

    Args:
        app: the loaded config.
        bus_url: the running bus's ops endpoint, or None not to ask one.
        probe: probe each connector from here.
        stale: ask the management API for queues and bindings no route declares.
    """
    from bus.metrics import QueueInspector
    from bus.wiring import select_routes

    routes = select_routes(app.routes, None)
    names = sorted({r.connector for r in routes})
    with ThreadPoolExecutor(len(names) + 4, thread_name_prefix="igate-bus-status") as pool:
        bus_f = pool.submit(ask_bus, bus_url) if bus_url else None
        probe_fs = {n: pool.submit(probe_connector, app, n) for n in names} if probe else {}
        queues_f = pool.submit(QueueInspector(app.settings.amqp_url.get_secret_value(), routes, cache_s=0).inspect)
        stale_f = pool.submit(check_stale, app) if stale else None
        schedules_f = pool.submit(gather_schedules, app, routes)
        bus, bus_error = bus_f.result() if bus_f is not None else (None, None)
        probes = {n: f.result() for n, f in probe_fs.items()}
        try:
            infos, broker = queues_f.result(), BrokerCheck(ok=True, detail="queues read")
        except Exception as exc:
            infos, broker = [], BrokerCheck(ok=False, detail=f"{type(exc).__name__}: {exc}"[:300])
        stale_check = stale_f.result() if stale_f is not None else None
    connectors = [_connector_row(n, bus, probes.get(n)) for n in names]
    return StatusReport(
        checked_at=datetime.now(UTC),
        bus=BusLink(url=bus_url, reachable=bus is not None, ready=bus.ready if bus else None, error=bus_error),
        broker=broker,
        connectors=connectors,
        routes=_route_rows(routes, infos, {c.name: c.state for c in connectors}, bus),
        stale=stale_check,
        schedules=schedules_f.result(),
    )


def _connector_row(name: str, bus: HealthReport | None, probe: Health | None) -> ConnectorRow:
    now = None if probe is None else ProbeNow(state=probe.state, detail=probe.detail, latency_ms=probe.latency_ms)
    seen = bus.connectors.get(name) if bus is not None else None
    if seen is not None:
        return ConnectorRow(
            name=name,
            state=seen.state,
            source="bus",
            detail=seen.detail,
            breaker=seen.breaker,
            error_rate=seen.error_rate,
            p95_ms=seen.p95_ms,
            last_success=seen.last_success,
            since=seen.since,
            probe=now,
        )
    if probe is not None:
        return ConnectorRow(name=name, state=probe.state, source="probe", detail=probe.detail, probe=now)
    return ConnectorRow(name=name, state="unknown", source="none", detail="no bus answered and no probe was run")


def _route_rows(
    routes: Sequence[Route], infos: Sequence[Any], states: dict[str, str], bus: HealthReport | None
) -> list[dict[str, Any]]:
    from bus.ops_api import route_statuses

    rows = route_statuses(routes, infos, states)
    seen = {r.name: r for r in bus.routes} if bus is not None else {}
    for row in rows:
        theirs = seen.get(row.name)
        # only the process that consumes a route queue can tell its head's age (bus/metrics.py says why)
        if row.queue.oldest_age_s is None and theirs is not None:
            row.queue.oldest_age_s = theirs.queue.oldest_age_s
    return [r.model_dump(mode="json") for r in rows]


# -- rendering -------------------------------------------------------------------------------------------
_STYLE: Final = {"up": "green", "degraded": "yellow", "down": "bold red", "unknown": "dim"}


def human_age(seconds: float | None) -> str:
    """``-``, ``0s``, ``42s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def render(report: StatusReport) -> None:
    """Print the report as one rich table, with a line on the bus and the broker."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="igate-bus status", title_justify="left")
    for col in ("", "name", "state", "breaker", "err", "p95", "depth", "cons", "oldest", "retry", "DLQ"):
        table.add_column(col, no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in report.connectors:
        table.add_row(
            "connector",
            c.name,
            f"[{_STYLE[c.state]}]{c.state}[/]",
            c.breaker or "-",
            "-" if c.error_rate is None else f"{c.error_rate:.0%}",
            "-" if c.p95_ms is None else f"{c.p95_ms:g}ms",
            "",
            "",
            "",
            "",
            "",
            escape(
                f"{c.detail} ({c.source})"
                + ("" if c.probe is None or c.source == "probe" else f"; probe now: {c.probe.state}")
            ),
        )
    for r in report.routes:
        q, dead = r["queue"], r["dlq"]
        retry = sum(x["depth"] or 0 for x in r["retry"])
        table.add_row(
            "route",
            r["name"],
            f"[{_STYLE.get(r['state'], 'dim')}]{r['state']}[/]",
            "",
            "",
            "",
            _n(q["depth"]),
            _n(q["consumers"]),
            human_age(q["oldest_age_s"]),
            str(retry),
            _n(dead["depth"]),
            f"→ {r['connector']}; oldest dead letter {human_age(dead['oldest_age_s'])}"
            if dead["depth"]
            else f"→ {r['connector']}",
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, keep rows on one line
        console = Console(width=200)
    console.print(table)
    render_schedules(report.schedules, console)
    bus = report.bus
    if bus.url is None:
        console.print("bus: not asked")
    elif bus.reachable:
        console.print(f"bus: {bus.url} answered, ready={bus.ready}")
    else:
        console.print(f"bus: {bus.url} did not answer ({bus.error}); states are from probes run now")
    console.print(f"broker: {'ok' if report.broker.ok else 'unreachable: ' + report.broker.detail}", markup=False)
    stale = report.stale
    if stale is not None and not stale.checked:
        console.print(f"stale queues: not checked: {stale.error}", markup=False)
    elif stale is not None and stale.lines:
        console.print(f"[yellow]stale: {len(stale.lines)} finding(s); `igate-bus topology --prune` removes them:[/]")
        for line in stale.lines:
            console.print(f"  {line}", markup=False)


# -- the command -----------------------------------------------------------------------------------------
def _load(config: Path | None) -> App:
    from bus.wiring import load_app
    from config.loader import ConfigInvalid
    from config.settings import Settings, load_settings
    from schemas.errors import ConfigError

    try:
        return load_app(load_settings(Settings, config_dir=config) if config else load_settings(Settings))
    except ConfigError as exc:
        for line in str(exc).splitlines():
            click.echo(f"igate-bus: {line}", err=True)
        sys.exit(2)
    except ConfigInvalid as exc:
        for p in exc.problems:
            click.echo(p.format(), err=True)
        sys.exit(2)
    except (OSError, ValueError) as exc:
        click.echo(f"igate-bus: cannot load the config: {exc}", err=True)
        sys.exit(2)


@click.command()
@click.option(
    "--config",
    "config",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder with routes.yaml and connectors.yaml (default: IGATE_BUS_CONFIG_DIR or the shipped config).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option(
    "--url",
    "bus_url",
    default=None,
    help="Ops endpoint of the running bus (default: http://127.0.0.1:$IGATE_BUS_OPS_PORT, 8610); 'none' skips it.",
)
@click.option("--no-probe", is_flag=True, help="Do not probe the connectors from here.")
@click.option("--no-stale", is_flag=True, help="Do not ask the management API for queues no route declares.")
def status(config: Path | None, as_json: bool, bus_url: str | None, no_probe: bool, no_stale: bool) -> None:
    """Connectors and routes in one table: state, queue depth, oldest age, retries, DLQ size, stale queues."""
    from bus.cli_logs import logs_after_report
    from schemas.errors import ConfigError

    app = _load(config)
    try:
        url = None if bus_url == NONE_URL else (bus_url or default_bus_url())
    except ConfigError as exc:
        click.echo(f"igate-bus: {exc}", err=True)
        sys.exit(2)
    # what the probes, connectors and pika log is held back and written to stderr after the report
    with logs_after_report("warning", app.settings.log_format):
        try:
            report = gather(app, bus_url=url, probe=not no_probe, stale=not no_stale)
        finally:
            app.close()
        if as_json:
            click.echo(report.model_dump_json(indent=2))
        else:
            render(report)


COMMANDS = [status]
