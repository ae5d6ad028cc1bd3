"""``igate-bus demo``: the bus doing its job on this machine, shown live, ending with a summary.

It starts the iGate simulator, a worker for the shipped routes, and publishes a province-morning's worth of
events: dossiers received (each must get exactly one "received by the bus" note at iGate), results from other
systems flowing back to iGate, diagnostic pings, a few broken events (dead-lettered with their reason) and
one event no route wants (kept in ``unrouted``). For the first seconds the simulator answers 503 to a third
of the calls, so the retry queues are seen at work. The table is live; the summary counts effects at the
simulator by idempotency key: duplicates must be 0.

The demo leaves the broker as it found it: it runs in a vhost of its own (``igate-bus-demo-<random>``), made
through the management API (``routes/broker_admin.py``) and deleted at the end, also on Ctrl-C, SIGTERM or a
failure; ``--keep`` keeps it, to explore its dead letters with ``igate-bus dlq``. Its idempotency store is a
temporary SQLite file beside its config copy. Dead letters are counted in every DLQ and ``unrouted`` (a broken
``dossier.received`` is dead-lettered by each route that binds it), and shown masked, as ``dlq list`` shows them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import pika
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from config.settings import DEFAULT_CONFIG_DIR, HIDDEN, SecretUrl, Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from routes.dlq import DeadLetter
    from routes.model import Route

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "events"
SIM_PORT = 8601
NPS_PORT = 8602


@dataclass
class Plan:
    """How many of each kind the demo publishes."""

    received: int = 300
    results: int = 40
    pings: int = 60
    broken: int = 3
    unrouted: int = 1
    fault_seconds: float = 4.0


def _example(event_type: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{event_type}.json").read_text(encoding="utf-8"))
    return data


def _fresh(base: dict[str, Any], i: int, *, code: bool = True) -> dict[str, Any]:
    ev: dict[str, Any] = json.loads(json.dumps(base))
    ev["event_id"] = str(uuid.uuid4())
    ev["occurred_at"] = datetime.now(UTC).astimezone().isoformat()
    if code:
        ev["dossier_code"] = f"000.00.16.H16-{datetime.now(UTC):%y%m%d}-{i:04d}"
    return ev


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


#: the prefix of the demo's private vhosts
VHOST_PREFIX = "igate-bus-demo-"
#: the demo's backoff, so it ends in seconds; the shipped routes.yaml keeps 5s 30s 2m 10m 1h
DEMO_BACKOFF = ["1s", "2s", "4s"]


@contextmanager
def _config_for(sim_url: str, nps_url: str) -> Iterator[Path]:
    """A copy of the shipped config with endpoints on the simulators and the demo's short backoff."""
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="igate-bus-demo-"))
    try:
        routes = yaml.safe_load((DEFAULT_CONFIG_DIR / "routes.yaml").read_text(encoding="utf-8"))
        for route in routes["routes"]:
            route.setdefault("retry", {})["backoff"] = DEMO_BACKOFF
            route["retry"]["max_attempts"] = 10
        (tmp / "routes.yaml").write_text(yaml.safe_dump(routes, allow_unicode=True), encoding="utf-8")
        text = (DEFAULT_CONFIG_DIR / "connectors.yaml").read_text(encoding="utf-8")
        text = text.replace(f"http://127.0.0.1:{SIM_PORT}", sim_url).replace(f"http://127.0.0.1:{NPS_PORT}", nps_url)
        (tmp / "connectors.yaml").write_text(text, encoding="utf-8")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _portal_counts(portal: Any, keys: set[str]) -> dict[str, int]:
    """Effects at the portal simulator per request key (maYeuCau), for the keys this run sent."""
    counts: dict[str, int] = {}
    for effect in portal.effects():
        key = effect.get("maYeuCau")
        if key in keys:
            counts[key] = counts.get(key, 0) + 1
    return counts


def _depths(conn: pika.BlockingConnection, queues: list[str]) -> dict[str, int]:
    out = {}
    ch = conn.channel()
    for q in queues:
        try:
            out[q] = int(ch.queue_declare(q, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            out[q] = 0
            ch = conn.channel()
    if ch.is_open:
        ch.close()
    return out


def with_vhost(amqp_url: str, vhost: str) -> str:
    """``amqp_url`` pointing at ``vhost`` instead (same host, user, password, query)."""
    parts = urlsplit(amqp_url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


class DemoInterrupted(KeyboardInterrupt):
    """SIGTERM during the demo: unwinds like Ctrl-C, so the vhost is removed on the way out."""


@contextmanager
def private_vhost(settings: Settings, *, keep: bool = False) -> Iterator[tuple[SecretUrl, str]]:
    """A fresh vhost for the demo (its AMQP URL, still a secret, and its name), deleted on the way out unless ``keep``.

    Raises:
        ManagementUnavailable: the vhost cannot be created (management API off or refusing).
    """
    from bus.wiring import management_api

    api = management_api(settings)
    vhost = VHOST_PREFIX + secrets.token_hex(4)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(_signum: int, _frame: Any) -> None:
        raise DemoInterrupted

    api.create_vhost(vhost)
    try:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
        yield SecretUrl(with_vhost(settings.amqp_url.get_secret_value(), vhost)), vhost
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        try:
            if not keep:
                api.delete_vhost(vhost)
        finally:
            api.close()


def expected_dead_letters(routes: list[Route], broken: list[dict[str, Any]], stray: list[dict[str, Any]]) -> int:
    """Dead letters the run must leave: each broken event once per enabled route binding its type, each stray once.

    A broken event fails validation in every route that receives it; an event no route binds lands in
    ``unrouted`` once.
    """
    from routes.model import binding_matches

    def takers(event_type: str) -> int:
        return sum(
            1 for r in routes if r.spec.enabled and any(binding_matches(k, event_type) for k in r.spec.from_.events)
        )

    return sum(takers(str(e["event_type"])) for e in broken) + len(stray)


def dead_letter_line(letter: DeadLetter, short_id: str | None = None) -> str:
    """One dead letter for the summary, as rich markup with every text from the message escaped and masked."""
    from bus.dlq_view import mask_text, printable, reason

    text = f"{letter.queue}: {letter.event_type} {short_id or letter.event_id}  [{letter.error_kind}] "
    return "  " + escape(printable(text)) + escape(printable(reason(mask_text(letter.error), 110)))


def run_demo(plan: Plan | None = None, console: Console | None = None, *, keep: bool = False) -> int:
    """Run the demo in a vhost of its own; returns 0 when every expectation held, else 1.

    The vhost is deleted on the way out (``keep`` keeps it), whatever happens; Ctrl-C and SIGTERM end the
    demo early, clean up, and return 130.
    """
    from routes.broker_admin import ManagementUnavailable

    console = console or Console()
    settings = load_settings(Settings)
    try:
        with private_vhost(settings, keep=keep) as (amqp_url, vhost):
            try:
                code = _run(plan or Plan(), console, amqp_url, vhost)
            except KeyboardInterrupt:
                console.print("[yellow]interrupted: stopping the worker and removing the demo's vhost")
                return 130
            if keep:
                console.print(
                    f"The demo's vhost {vhost} was kept. Explore it:\n"
                    f"  export IGATE_BUS_AMQP_URL='{escape(str(amqp_url))}'   # your password in place of {HIDDEN}\n"
                    "  igate-bus dlq list   |   igate-bus dlq show EVENT_ID\n"
                    f"and remove it: rabbitmqctl delete_vhost {vhost}",
                    highlight=False,
                )
            else:
                console.print(
                    f"The demo's vhost {vhost} is removed: the broker is as the demo found it "
                    "(`igate-bus demo --keep` keeps it to explore with `igate-bus dlq`).",
                    highlight=False,
                )
            return code
    except ManagementUnavailable as exc:
        console.print(f"igate-bus demo: cannot make the demo's own vhost: {escape(str(exc))}", highlight=False)
        return 1


def _run(plan: Plan, console: Console, amqp_url: SecretUrl, vhost: str) -> int:  # noqa: C901, PLR0912, PLR0915 - a script read top to bottom
    """The demo itself, against ``amqp_url``; returns 0 when every expectation held (no loss, no duplicate)."""
    from bus.dlq_view import short_ids
    from bus.logging import configure_logging
    from bus.wiring import build_worker, load_app
    from routes.dlq import DeadLetters
    from routes.pipeline import idempotency_key, result_event_id
    from routes.publisher import Publisher
    from routes.topology import UNROUTED_QUEUE, dlq, route_queue
    from simulators import nps
    from simulators.igate import DEFAULT_PASSWORD, DEFAULT_USERNAME, IGateSimulator

    os.environ.setdefault("IGATE_BUS_IGATE_USERNAME", DEFAULT_USERNAME)
    os.environ.setdefault("IGATE_BUS_IGATE_PASSWORD", DEFAULT_PASSWORD)
    os.environ.setdefault("IGATE_BUS_NPS_USERNAME", nps.DEFAULT_USERNAME)
    os.environ.setdefault("IGATE_BUS_NPS_PASSWORD", nps.DEFAULT_PASSWORD)
    Path("var").mkdir(exist_ok=True)
    log_path = Path("var/demo.log")
    with log_path.open("w", encoding="utf-8") as log_stream:
        configure_logging("info", "json", stream=log_stream)
        sim = IGateSimulator(
            port=SIM_PORT if _port_free(SIM_PORT) else 0,
            username=os.environ["IGATE_BUS_IGATE_USERNAME"],
            password=os.environ["IGATE_BUS_IGATE_PASSWORD"],
        ).start()
        portal = nps.NpsSimulator(
            port=NPS_PORT if _port_free(NPS_PORT) else 0,
            username=os.environ["IGATE_BUS_NPS_USERNAME"],
            password=os.environ["IGATE_BUS_NPS_PASSWORD"],
        ).start()
        try:
            with _config_for(sim.url, portal.url) as config_dir, ExitStack() as stack:
                settings = load_settings(
                    Settings,
                    config_dir=config_dir,
                    amqp_url=amqp_url,
                    store_url=f"sqlite:///{config_dir / 'store.sqlite3'}",
                )
                app = load_app(settings)
                worker = build_worker(app)
                thread = threading.Thread(target=worker.run, name="demo-worker", daemon=True)
                thread.start()
                worker_stack = stack.enter_context(ExitStack())
                worker_stack.callback(_stop_worker, worker, thread, app)
                if not worker.wait_ready(30):
                    console.print("[red]the worker could not start consuming within 30 s; see var/demo.log")
                    return 1
                routes = [r.spec.name for r in app.routes if r.spec.enabled]
                console.print(
                    f"[bold]igate-bus demo[/]: iGate simulator at {sim.url}, portal simulator at {portal.url}, "
                    f"{len(routes)} routes, broker {escape(str(amqp_url))} "
                    f"(vhost {vhost}, the demo's own), logs in {log_path}\n"
                    f"(demo backoff {', '.join(DEMO_BACKOFF)}; the shipped routes.yaml uses 5s 30s 2m 10m 1h)",
                    highlight=False,
                )

                received = [_fresh(_example("dossier.received"), i) for i in range(plan.received)]
                results = [
                    _fresh(_example("sms.delivery_report" if i % 2 else "dvcqg.sync_result"), i)
                    for i in range(plan.results)
                ]
                pings = [
                    {
                        "event_id": str(uuid.uuid4()),
                        "event_type": "bus.ping",
                        "occurred_at": datetime.now(UTC).isoformat(),
                        "source": "demo",
                        "payload": {"seq": i},
                    }
                    for i in range(plan.pings)
                ]
                broken = [_fresh(_example("dossier.received"), 9000 + i) for i in range(plan.broken)]
                for i, ev in enumerate(broken):  # each broken its own way
                    if i % 3 == 0:
                        ev["payload"]["applicant"]["id_no"] = "12345"
                    elif i % 3 == 1:
                        ev["occurred_at"] = "2026-02-30T10:00:00+07:00"
                    else:
                        ev["payload"]["fees"] = [
                            {
                                "kind": "lephi",
                                "code": "LP1",
                                "name": "Lệ phí",
                                "amount_vnd": 50000.5,
                                "collect": "truoc",
                            }
                        ]
                stray = [_fresh(_example("dossier.received"), 9900 + i) for i in range(plan.unrouted)]
                for ev in stray:
                    ev["event_type"] = "dossier.archived"

                sim.set_faults(error_rate=0.33, error_status=503, seed=42, only_paths=["/pa/dossier/"])
                started = time.monotonic()
                with Publisher(amqp_url.get_secret_value()) as pub:
                    for ev in received + pings + broken + stray:
                        pub.publish_event(ev)
                    for ev in results:
                        pub.publish_event(ev, exchange="bus.results")
                # at iGate: a note per dossier, an update per result published, and an update per portal sync
                # (nps-dossier-received emits dvcqg.sync_result, which results-to-igate carries back to iGate)
                chained = {result_event_id("nps-dossier-received", e["event_id"]) for e in received}
                expected_keys = (
                    {idempotency_key("bus-ack", e["event_id"]) for e in received}
                    | {idempotency_key("results-to-igate", e["event_id"]) for e in results}
                    | {idempotency_key("results-to-igate", rid) for rid in chained}
                )
                portal_keys = {idempotency_key("nps-dossier-received", e["event_id"]) for e in received}
                queues = [q for r in routes for q in (route_queue(r), dlq(r))] + [UNROUTED_QUEUE]
                conn = pika.BlockingConnection(pika.URLParameters(amqp_url.get_secret_value()))
                stack.callback(lambda: conn.close() if conn.is_open else None)
                faults_on = True

                def table() -> Group:
                    depths = _depths(conn, queues)
                    t = Table(
                        title=f"events flowing ({time.monotonic() - started:4.1f}s), busy routes"
                        + ("  [yellow]iGate answering 503 to 1 call in 3[/]" if faults_on else "")
                    )
                    for col in ("route", "recv", "done", "dup", "retry", "dead", "queue", "DLQ"):
                        t.add_column(col, justify="right" if col != "route" else "left")
                    for name in routes:
                        st = worker.stats[name]
                        if not st.received:
                            continue
                        t.add_row(
                            name,
                            str(st.received),
                            str(st.outcomes.get("delivered", 0)),
                            str(st.outcomes.get("duplicate", 0)),
                            str(st.outcomes.get("retry", 0)),
                            str(st.outcomes.get("dead_lettered", 0)),
                            str(depths[route_queue(name)]),
                            str(depths[dlq(name)]),
                        )
                    counts = sim.effect_counts()
                    mine = {k: v for k, v in counts.items() if k in expected_keys}
                    s = Table(title=f"at the simulators (unrouted queue: {depths[UNROUTED_QUEUE]})")
                    for col in ("system", "applied", "expected", "duplicates", "503s sent"):
                        s.add_column(col, justify="right")
                    answered_503 = sum(1 for r in sim.requests("/pa/dossier/") if r.get("status") == 503)
                    dupes_now = sum(v - 1 for v in mine.values())
                    s.add_row("iGate", str(len(mine)), str(len(expected_keys)), str(dupes_now), str(answered_503))
                    p_now = _portal_counts(portal, portal_keys)
                    s.add_row(
                        "portal", str(len(p_now)), str(len(portal_keys)), str(sum(v - 1 for v in p_now.values())), "-"
                    )
                    return Group(t, s)

                deadline = started + 120
                with Live(table(), console=console, refresh_per_second=4) as live:
                    while time.monotonic() < deadline:
                        if faults_on and time.monotonic() - started > plan.fault_seconds:
                            sim.set_faults()
                            faults_on = False
                        applied = [k for k in sim.effect_counts() if k in expected_keys]
                        pongs_done = (
                            worker.stats.get("bus-ping") is None or worker.stats["bus-ping"].acked >= plan.pings
                        )
                        portal_done = len(_portal_counts(portal, portal_keys)) >= len(portal_keys)
                        if portal_done and len(applied) >= len(expected_keys) and pongs_done and not faults_on:
                            live.update(table())
                            break
                        live.update(table())
                        time.sleep(0.25)
                elapsed = time.monotonic() - started
                worker_stack.close()  # stop the worker: the counts below are final

                counts = sim.effect_counts()
                mine = {k: v for k, v in counts.items() if k in expected_keys}
                p_counts = _portal_counts(portal, portal_keys)
                lost = len(expected_keys) - len(mine) + len(portal_keys) - len(p_counts)
                dupes = sum(v - 1 for v in mine.values()) + sum(v - 1 for v in p_counts.values())
                # the vhost is the demo's own: every dead letter in it is this run's, in whichever DLQ
                dead = DeadLetters(conn)
                dead_rows = [d for q in [*routes, UNROUTED_QUEUE] for d in dead.browse(q, limit=10_000)]
                conn.close()
                expected_dead = expected_dead_letters(app.routes, broken, stray)

                console.print()
                summary = Table(title=f"summary after {elapsed:.1f}s", show_header=False)
                summary.add_row(
                    "published",
                    f"{len(received)} dossier.received, {len(results)} results, "
                    f"{len(pings)} pings, {len(broken)} broken, {len(stray)} unrouted",
                )
                summary.add_row("effects at iGate", f"{len(mine)} of {len(expected_keys)}")
                summary.add_row("records at the portal", f"{len(p_counts)} of {len(portal_keys)}")
                summary.add_row("lost", str(lost))
                summary.add_row("duplicate effects", str(dupes))
                summary.add_row("retries", str(sum(worker.stats[r].outcomes.get("retry", 0) for r in routes)))
                queues_hit = sorted({d.queue for d in dead_rows})
                summary.add_row(
                    "dead letters",
                    f"{len(dead_rows)} of {expected_dead} expected, in {', '.join(queues_hit) or 'no queue'}",
                )
                console.print(summary)
                prefixes = short_ids(d.event_id for d in dead_rows if d.event_id)
                for d in dead_rows:
                    console.print(dead_letter_line(d, prefixes.get(d.event_id or "")), highlight=False)
                ok = lost == 0 and dupes == 0 and len(dead_rows) == expected_dead
                console.print(
                    "[green]ok: every event delivered once, every bad one kept with its reason"
                    if ok
                    else "[red]NOT OK: see the summary and var/demo.log"
                )
                return 0 if ok else 1
        finally:
            sim.stop()
            portal.stop()


def _stop_worker(worker: Any, thread: threading.Thread, app: Any) -> None:
    """Stop the demo's worker and wait for it (before its vhost goes), then close what it used."""
    worker.stop()
    thread.join(60)
    app.close()
