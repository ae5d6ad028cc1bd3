"""SOAP route benchmark (issue 4): the nps-dossier-received route against the portal simulator.

What runs:

- the **portal simulator** (``python -m simulators.nps``) as its own OS process on a free port, so its XSD
  validation and XML building do not share this process's GIL with the worker;
- the **worker** in a thread of this process (so ``cProfile`` can see its pipeline threads), built from the
  shipped ``nps-dossier-received`` route (only the retry shortened) and an ``nps`` connector pointing at the
  simulator: validate ▶ claim (SQLite store) ▶ ``igate_to_nps.dossier_received`` ▶ zeep ``DongBoHoSoMC`` ▶
  complete ▶ confirmed ``dvcqg.sync_result`` ▶ ack;
- a **temporary vhost** (``rabbitmqctl add_vhost``/``set_permissions``/``delete_vhost``, removed in
  ``finally``, also on Ctrl-C and SIGTERM).

Three passes, each with a fresh worker and fresh ``dossier.received`` events (new event ids and dossier codes,
so every call is a create the portal accepts at once):

1. **throughput**: ``--messages`` published *before* the worker starts; msg/s from the first to the last
   effect the simulator records (its ``at``), plus the pipeline's mean wall and CPU time per message;
2. **latency**: ``--latency-messages`` published at a steady pace (``--latency-rate``, default half the
   throughput) while the worker runs; latency per message is publish ▶ effect time at the simulator (same
   machine, same clock), matched by the request key (``maYeuCau``);
3. **profile**: ``--messages`` again with ``cProfile`` (timer: the thread's CPU time) enabled in every pipeline
   call; zeep's share is the CPU time inside the SOAP client's exchange (``SoapClient._send``: the envelope
   from its compiled plan or from zeep, the reply read by the plan or by zeep) and ``zeep.helpers.serialize_object``
   minus the CPU time inside our transport's HTTP ``post`` (``connectors/_http_wire.py``, sockets), over the CPU time of
   the whole pipeline (``RouteRunner.handle_batch``). The breakdown table attributes each function's own time to
   a package (time of builtins and stdlib helpers goes to the package that called them).

Usage::

    .venv/bin/python bench/bench_soap.py                       # 2,000 messages, concurrency 8
    .venv/bin/python bench/bench_soap.py --messages 5000 --concurrency 16 --log-level warning
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml
from _common import SimulatorProcess, percentile, proc_cpu_s, rabbitmqctl, temp_store

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from routes.pipeline import idempotency_key  # noqa: E402 - after the path fix when run as a script

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROUTE = "nps-dossier-received"
USER = "igate-bus-bench"
PASSWORD = "bench-only-secret"  # noqa: S105 - the simulator's throwaway password for this run
USER_ENV = "IGATE_BUS_NPS_USERNAME"
PASSWORD_ENV = "IGATE_BUS_NPS_PASSWORD"  # noqa: S105 - a variable's name
MADONVI = "000.00.16.H16"
AMQP_HOST = os.environ.get("IGATE_BUS_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("IGATE_BUS_TEST_AMQP_PORT", "5672"))


# -- environment ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def temp_vhost() -> Iterator[str]:
    """A fresh vhost for the run, deleted afterwards whatever happens."""
    vhost = f"igb-bench-soap-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{quote(vhost, safe='')}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


class Simulator(SimulatorProcess):
    """The portal simulator as a child process, driven over its control endpoints."""

    def __init__(self, workdir: Path) -> None:
        env = {USER_ENV: USER, PASSWORD_ENV: PASSWORD}
        super().__init__("simulators.nps", workdir, env, log_name="simulator.log", root=ROOT)
        self.endpoint = f"{self.url}/lgsp/dvcqg"

    def _get(self, path: str) -> Any:
        return self.get(path)

    def effects(self) -> list[dict[str, Any]]:
        return list(self.get("/_sim/effects")["effects"])

    def reset(self) -> None:
        self.post("/_sim/reset", {})


def write_config(folder: Path, endpoint: str, *, concurrency: int, prefetch: int) -> Path:
    """The shipped nps-dossier-received route (retry shortened) and the nps connector at ``endpoint``."""
    shipped = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text(encoding="utf-8"))
    [route] = [r for r in shipped["routes"] if r["name"] == ROUTE]
    route["retry"] = {"backoff": ["300ms", "600ms"], "max_attempts": 10}
    route["concurrency"] = concurrency
    route["prefetch"] = prefetch
    connectors = {
        "connectors": {
            "nps": {
                "type": "nps",
                "endpoint": endpoint,
                "timeout": {"connect": "1s", "read": "5s", "total": "10s"},
                "breaker": {"fail_max": 50, "reset_timeout": "1s"},
                "credentials": {"username": USER_ENV, "password": PASSWORD_ENV},
                "options": {"madonvi": MADONVI},
            }
        }
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": [route]}, allow_unicode=True, sort_keys=False))
    (folder / "connectors.yaml").write_text(yaml.safe_dump(connectors, sort_keys=False))
    return folder


def received_events(n: int, tag: str) -> list[dict[str, Any]]:
    """``n`` dossier.received events from the shipped example, each with its own event id and dossier code."""
    base = json.loads((ROOT / "examples" / "events" / "dossier.received.json").read_text(encoding="utf-8"))
    out = []
    for i in range(n):
        ev = json.loads(json.dumps(base))
        ev["event_id"] = str(uuid.uuid4())
        # docs/domain.md's form: the tag names a day, every 10,000 codes the next one (as the daily counter would)
        day = date(2020, 1, 1) + timedelta(days=int(tag, 16) % 2000 + i // 10_000)
        ev["dossier_code"] = f"000.00.16.H16-{day:%y%m%d}-{i % 10_000:04d}"
        out.append(ev)
    return out


# -- the worker ----------------------------------------------------------------------------------------------


@dataclass
class PipelineClock:
    """Wall and CPU seconds in the pipeline (``RouteRunner.handle_batch``), messages through it, and optional
    per-thread profiles."""

    profile: bool = False
    wall: float = 0.0
    cpu: float = 0.0
    calls: int = 0
    profiles: list[cProfile.Profile] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    def wrap(self, handle: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def timed(deliveries: Any) -> Any:
            prof: cProfile.Profile | None = None
            if self.profile:
                prof = getattr(self._local, "prof", None)
                if prof is None:
                    prof = self._local.prof = cProfile.Profile(time.thread_time)
                    with self._lock:
                        self.profiles.append(prof)
            w0, c0 = time.perf_counter(), time.thread_time()
            if prof is not None:
                prof.enable()
            try:
                return handle(deliveries)
            finally:
                if prof is not None:
                    prof.disable()
                w, c = time.perf_counter() - w0, time.thread_time() - c0
                with self._lock:
                    self.wall += w
                    self.cpu += c
                    self.calls += len(deliveries)

        return timed


class Probe:
    """Wall and CPU time inside zeep's operation call, our HTTP post under it, zeep's serialize_object, the store.

    A few wrappers per message instead of a profiler's hook on every call, so the shares are not inflated by
    the profiler's own cost (which grows with the number of Python calls, and zeep makes many).
    """

    NAMES = ("zeep_call", "http_post", "serialize", "store")

    def __init__(self) -> None:
        self.wall: dict[str, float] = dict.fromkeys(self.NAMES, 0.0)
        self.cpu: dict[str, float] = dict.fromkeys(self.NAMES, 0.0)
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def measured(*args: Any, **kwargs: Any) -> Any:
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                w, c = time.perf_counter() - w0, time.thread_time() - c0
                with self._lock:
                    self.wall[name] += w
                    self.cpu[name] += c

        setattr(owner, attr, measured)
        self._undo.append(lambda: setattr(owner, attr, original))

    @contextlib.contextmanager
    def installed(self) -> Iterator[Probe]:
        import zeep.helpers

        from connectors._soap import SoapClient, SoapTransport
        from routes.idempotency import IdempotencyStore

        self._wrap(SoapClient, "_send", "zeep_call")  # the plan's path or zeep's operation call
        self._wrap(SoapTransport, "post", "http_post")
        self._wrap(zeep.helpers, "serialize_object", "serialize")
        self._wrap(IdempotencyStore, "claim", "store")
        self._wrap(IdempotencyStore, "complete", "store")
        self._wrap(IdempotencyStore, "claim_many", "store")
        self._wrap(IdempotencyStore, "complete_many", "store")
        try:
            yield self
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()


@dataclass
class CpuMeter:
    """CPU used by this process, the simulator and the whole machine between :meth:`start` and :meth:`stop`."""

    sim_pid: int
    hz: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK"))
    used: dict[str, float] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        machine = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        idle = machine[3] + machine[4]
        return {
            "wall": time.monotonic(),
            "bench": proc_cpu_s("self"),
            "simulator": proc_cpu_s(self.sim_pid),
            "machine": (sum(machine) - idle) / self.hz,
        }

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        end = self._read()
        wall = end["wall"] - self._start["wall"]
        self.used = {k: (end[k] - self._start[k]) / wall for k in ("bench", "simulator", "machine")}
        self.used["others"] = max(0.0, self.used["machine"] - self.used["bench"] - self.used["simulator"])


@contextlib.contextmanager
def running_worker(amqp_url: str, store_url: str, config_dir: Path, clock: PipelineClock) -> Iterator[Any]:
    """The real worker for the route, in a thread, its pipeline calls timed (and profiled) by ``clock``."""
    from bus.wiring import build_runners, declare_topology, load_app
    from config.settings import Settings
    from routes.worker import Worker

    settings = Settings(amqp_url=amqp_url, store_url=store_url, config_dir=config_dir, heartbeat="10s")
    app = load_app(settings)
    runners = build_runners(app, app.routes, worker_id=f"bench-{os.getpid()}")
    for runner in runners:
        runner.handle_batch = clock.wrap(runner.handle_batch)  # type: ignore[method-assign,assignment]  # instrumented, not replaced
    worker = Worker(
        amqp_url,
        runners,
        declare=lambda: declare_topology(settings, app.routes),
        heartbeat=settings.heartbeat,
        blocked_connection_timeout=settings.blocked_connection_timeout,
    )
    thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
    thread.start()
    try:
        if not worker.wait_ready(30):
            raise RuntimeError("the worker did not start consuming within 30 s")
        yield worker
    finally:
        worker.stop()
        thread.join(60)
        app.close()


def declare(amqp_url: str, config_dir: Path) -> None:
    from bus.wiring import declare_topology, load_app
    from config.settings import Settings

    settings = Settings(amqp_url=amqp_url, config_dir=config_dir)
    declare_topology(settings, load_app(settings).routes)


def publish(amqp_url: str, events: list[dict[str, Any]], *, rate: float | None = None) -> dict[str, float]:
    """Publish with confirms (at ``rate`` per second when given); returns key ▶ wall time just before publishing."""
    from routes.publisher import Publisher

    sent: dict[str, float] = {}
    start = time.perf_counter()
    with Publisher(amqp_url) as pub:
        for i, ev in enumerate(events):
            if rate:
                wait = start + i / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            sent[idempotency_key(ROUTE, ev["event_id"])] = time.time()
            pub.publish_event(ev)
    return sent


def wait_effects(sim: Simulator, keys: set[str], timeout: float) -> dict[str, float]:
    """Wait until the simulator applied every key; returns key ▶ its first effect's time (``at``)."""
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, float] = {}
        for e in sim.effects():
            k = str(e["maYeuCau"])
            if k in keys and k not in seen:
                seen[k] = float(e["at"])
        if len(seen) == len(keys):
            return seen
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)}/{len(keys)} effects after {timeout:.0f} s")
        time.sleep(0.25)


# -- passes --------------------------------------------------------------------------------------------------


@dataclass
class Pass:
    name: str
    messages: int
    seconds: float
    clock: PipelineClock
    latencies_ms: list[float] = field(default_factory=list)
    probe: Probe | None = None
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.messages - 1) / self.seconds if self.seconds > 0 else float("nan")


def run_burst(name: str, amqp_url: str, sim: Simulator, store_url: str, cfg: Path, n: int, *, profile: bool) -> Pass:
    """``n`` events queued before the worker starts; msg/s from the first to the last effect."""
    sim.reset()
    declare(amqp_url, cfg)
    events = received_events(n, uuid.uuid4().hex[:6].upper())
    publish(amqp_url, events)
    clock = PipelineClock(profile=profile)
    probe = None if profile else Probe()
    meter = CpuMeter(sim.proc.pid)
    with contextlib.ExitStack() as stack:
        if probe is not None:
            stack.enter_context(probe.installed())
        stack.enter_context(running_worker(amqp_url, store_url, cfg, clock))
        meter.start()
        done = wait_effects(sim, {idempotency_key(ROUTE, e["event_id"]) for e in events}, timeout=max(120, n / 5))
        meter.stop()
    times = sorted(done.values())
    return Pass(name, n, times[-1] - times[0], clock, probe=probe, cpu=meter.used)


def run_paced(amqp_url: str, sim: Simulator, store_url: str, cfg: Path, n: int, rate: float, warmup: int) -> Pass:
    """``warmup`` + ``n`` events published at ``rate``/s while the worker runs; latency publish ▶ effect."""
    sim.reset()
    clock = PipelineClock()
    events = received_events(warmup + n, uuid.uuid4().hex[:6].upper())
    with running_worker(amqp_url, store_url, cfg, clock):
        sent = publish(amqp_url, events, rate=rate)
        done = wait_effects(sim, set(sent), timeout=max(120, n / 5))
    measured = [idempotency_key(ROUTE, e["event_id"]) for e in events[warmup:]]
    lat = [(done[k] - sent[k]) * 1000 for k in measured]
    times = sorted(done[k] for k in measured)
    return Pass(f"latency @{rate:.0f}/s", n, times[-1] - times[0], clock, lat)


# -- profile analysis ----------------------------------------------------------------------------------------

Func = tuple[str, int, str]

CATEGORIES: tuple[tuple[str, str], ...] = (
    ("/zeep/", "zeep"),
    ("/lxml/", "lxml"),
    ("lxml.", "lxml"),
    ("/isodate/", "zeep"),
    ("connectors/_http_wire.py", "http (wire, httptools, sockets)"),
    ("httptools", "http (wire, httptools, sockets)"),
    ("/requests/", "http (wire, httptools, sockets)"),
    ("/urllib3/", "http (wire, httptools, sockets)"),
    ("http/client.py", "http (wire, httptools, sockets)"),
    ("_socket.socket", "http (wire, httptools, sockets)"),
    ("_ssl._SSLSocket", "http (wire, httptools, sockets)"),
    ("/sqlalchemy/", "store (SQLAlchemy/SQLite)"),
    ("sqlite3", "store (SQLAlchemy/SQLite)"),
    ("/pydantic/", "pydantic"),
    ("pydantic_core", "pydantic"),
    ("/structlog/", "logging (structlog)"),
    ("/jmespath/", "bus"),
    ("/pika/", "pika"),
)


def category(func: Func) -> str | None:
    filename, _, name = func
    where = filename + " " + name
    for needle, cat in CATEGORIES:
        if needle in where:
            return cat
    if filename.startswith(str(ROOT)) and "/.venv/" not in filename:
        return "bus (adapters, connector, pipeline)"
    return None


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Own CPU time by package; a builtin or stdlib function's time goes to the package that called it."""
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table untyped
    memo: dict[Func, str] = {}

    def owner(func: Func, depth: int = 0) -> str:
        if func in memo:
            return memo[func]
        found = category(func)
        if found is None:
            callers = table.get(func, (0, 0, 0, 0, {}))[4]
            if not callers or depth > 30:
                found = "other (stdlib)"
            else:
                weights: dict[str, float] = defaultdict(float)
                memo[func] = "other (stdlib)"  # breaks call cycles
                for caller, edge in callers.items():
                    weights[owner(caller, depth + 1)] += edge[2]
                found = max(weights, key=lambda k: weights[k])
        memo[func] = found
        return found

    out: dict[str, float] = defaultdict(float)
    for func, (_, _, tt, _, callers) in table.items():
        if category(func) is not None or not callers:
            out[owner(func)] += tt
            continue
        for caller, edge in callers.items():  # split the own time across the callers' packages
            out[owner(caller)] += edge[2]
    return dict(out)


def cum(stats: pstats.Stats, match: Callable[[Func], bool]) -> float:
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    return float(sum(v[3] for f, v in table.items() if match(f)))


def zeep_share(stats: pstats.Stats) -> dict[str, float]:
    """Pipeline CPU, CPU inside zeep (operation call + serialize_object) and inside the HTTP post under it."""
    total = cum(stats, lambda f: f[2] == "handle_batch" and f[0].endswith("routes/pipeline.py"))
    zeep_call = cum(stats, lambda f: f[0].endswith("connectors/_soap.py") and f[2] == "_send")
    serialize = cum(stats, lambda f: f[0].endswith("zeep/helpers.py") and f[2] == "serialize_object")
    http = cum(stats, lambda f: f[0].endswith("connectors/_soap.py") and f[2] == "post")
    return {"total": total, "zeep_call": zeep_call, "serialize": serialize, "http": http}


def top_functions(stats: pstats.Stats, match: Callable[[Func], bool], n: int) -> list[tuple[float, float, int, str]]:
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    rows = [
        (v[3], v[2], v[1], f"{Path(f[0]).parent.name}/{Path(f[0]).name}:{f[1]}({f[2]})")
        for f, v in table.items()
        if match(f)
    ]
    return sorted(rows, reverse=True)[:n]


# -- report --------------------------------------------------------------------------------------------------


def _ms(seconds: float, n: int) -> str:
    return f"{seconds / n * 1000:7.2f} ms"


def report(burst: Pass, paced: Pass, profiled: Pass, args: argparse.Namespace) -> None:
    print()
    print(f"SOAP route {ROUTE} ▶ nps.dong_bo_ho_so (zeep, DongBoHoSoMC) ▶ portal simulator (own process)")
    print(
        f"concurrency {args.concurrency}, prefetch {args.prefetch}, {args.store} store, log level {args.log_level}, "
        f"{os.cpu_count()} CPUs"
    )
    print()
    header = f"{'pass':<18}{'msgs':>7}{'seconds':>9}{'msg/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    print(header)
    print("-" * len(header))
    for p in (burst, paced):
        lat = p.latencies_ms
        cells = [percentile(lat, 0.5), percentile(lat, 0.9), percentile(lat, 0.99), max(lat)] if lat else []
        row = "".join(f"{c:>9.1f}" for c in cells) if cells else f"{'(all queued before start)':>36}"
        print(f"{p.name:<18}{p.messages:>7}{p.seconds:>9.2f}{p.rate:>9.1f}{row}")
    print()
    used = burst.cpu
    print(
        f"CPU during the throughput pass (cores): bench process {used['bench']:.2f} "
        f"(worker + its I/O loop), simulator {used['simulator']:.2f}, "
        f"others {used['others']:.2f} (broker and the rest of the machine)"
    )

    zeep_cpu_share = _print_probe(burst)
    prof_share = _print_profile(profiled, args)
    print()
    print(
        f"RESULT msg/s={burst.rate:.1f} p50_ms={percentile(paced.latencies_ms, 0.5):.1f} "
        f"p99_ms={percentile(paced.latencies_ms, 0.99):.1f} zeep_cpu_share={zeep_cpu_share:.1%} "
        f"zeep_cpu_share_cprofile={prof_share:.1%}"
    )


def _print_probe(burst: Pass) -> float:
    """The per-message table of the throughput pass; returns zeep's share of the pipeline's CPU."""
    c, n = burst.clock, burst.clock.calls
    probe = burst.probe
    if probe is None:
        raise RuntimeError("the throughput pass ran without its probe")
    zeep_cpu = probe.cpu["zeep_call"] - probe.cpu["http_post"] + probe.cpu["serialize"]
    zeep_wall = probe.wall["zeep_call"] - probe.wall["http_post"] + probe.wall["serialize"]
    print()
    print(f"per message, throughput pass (wrappers at 5 points, no profiler; {n} messages):")
    print(f"  {'':<46}{'wall':>10}{'':>3}{'CPU':>10}{'':>3}{'CPU share':>10}")
    rows = [
        ("pipeline (RouteRunner.handle_batch)", c.wall, c.cpu),
        ("  zeep operation call (inclusive)", probe.wall["zeep_call"], probe.cpu["zeep_call"]),
        ("    HTTP post under it (wire, socket)", probe.wall["http_post"], probe.cpu["http_post"]),
        ("  zeep.helpers.serialize_object (reply)", probe.wall["serialize"], probe.cpu["serialize"]),
        ("  ZEEP (build + serialise + parse, no HTTP)", zeep_wall, zeep_cpu),
        ("  store: claim + complete", probe.wall["store"], probe.cpu["store"]),
        (
            "  the rest (validate, adapter, pydantic, logs)",
            c.wall - probe.wall["zeep_call"] - probe.wall["serialize"] - probe.wall["store"],
            c.cpu - probe.cpu["zeep_call"] - probe.cpu["serialize"] - probe.cpu["store"],
        ),
    ]
    for label, wall, cpu in rows:
        print(f"  {label:<46}{_ms(wall, n)}   {_ms(cpu, n)}   {cpu / c.cpu:9.1%}")
    return zeep_cpu / c.cpu


def _print_profile(profiled: Pass, args: argparse.Namespace) -> float:
    """The cProfile tables; returns zeep's share of the pipeline's CPU by the profile."""
    stats = pstats.Stats(*profiled.clock.profiles)
    share = zeep_share(stats)
    prof_zeep = share["zeep_call"] + share["serialize"] - share["http"]
    total = share["total"] or float("nan")
    print()
    print(f"cProfile (thread CPU time, pipeline threads only; {profiled.messages} messages; the profiler's own cost")
    print("inflates code that makes many small Python calls, zeep most, so read shares beside the table above):")
    print(f"  pipeline CPU total                {share['total']:8.2f} s  {_ms(share['total'], profiled.messages)}")
    print(f"  zeep operation call (inclusive)   {share['zeep_call']:8.2f} s  {share['zeep_call'] / total:6.1%}")
    print(f"    of which HTTP post (wire)       {share['http']:8.2f} s  {share['http'] / total:6.1%}")
    print(f"  zeep.helpers.serialize_object     {share['serialize']:8.2f} s  {share['serialize'] / total:6.1%}")
    print(f"  zeep without HTTP                 {prof_zeep:8.2f} s  {prof_zeep / total:6.1%}")
    print()
    print("  own CPU time by package (builtins and stdlib charged to their caller's package):")
    parts = breakdown(stats)
    whole = sum(parts.values()) or float("nan")
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<38}{seconds:8.2f} s  {seconds / whole:6.1%}")
    print()
    print("  zeep functions by cumulative CPU (s cum, s own, calls):")
    for cum_s, own_s, calls, where in top_functions(stats, lambda f: "/zeep/" in f[0], args.top):
        print(f"    {cum_s:7.2f} {own_s:7.2f} {calls:>8}  {where}")
    print()
    print("  connector and transport (connectors/*) by cumulative CPU:")
    for cum_s, own_s, calls, where in top_functions(stats, lambda f: "/connectors/" in f[0], args.top):
        print(f"    {cum_s:7.2f} {own_s:7.2f} {calls:>8}  {where}")
    if args.pstats:
        stats.dump_stats(args.pstats)
        print(f"\n  raw profile written to {args.pstats} (python -m pstats {args.pstats})")
    return prof_zeep / total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000, help="messages in the throughput and profile passes")
    parser.add_argument("--latency-messages", type=int, default=1000)
    parser.add_argument("--latency-rate", type=float, default=None, help="msg/s (default: half the throughput)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured messages before the latency pass")
    parser.add_argument("--concurrency", type=int, default=8, help="the route's concurrency (shipped default 8)")
    parser.add_argument("--prefetch", type=int, default=50)
    parser.add_argument(
        "--store", choices=("sqlite", "pg"), default="sqlite", help="idempotency store (pg: a temporary database)"
    )
    parser.add_argument("--log-level", default="info", help="the worker's log level (logs go to a file)")
    parser.add_argument("--top", type=int, default=15, help="rows in the function tables")
    parser.add_argument("--pstats", default=None, help="also write the merged profile to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, config)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from bus.logging import configure_logging

    def on_term(signum: int, frame: Any) -> None:
        del signum, frame
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="bench-soap-"))
    log_file = (work / "worker.log").open("w", encoding="utf-8")
    configure_logging(args.log_level, "json", stream=log_file)
    os.environ[USER_ENV] = USER
    os.environ[PASSWORD_ENV] = PASSWORD
    os.environ["IGATE_BUS_OPS_PORT"] = "0"
    sim: Simulator | None = None
    try:
        sim = Simulator(work)
        cfg = write_config(work / "cfg", sim.endpoint, concurrency=args.concurrency, prefetch=args.prefetch)
        with temp_vhost() as amqp_url, temp_store(args.store, work, prefix="igb_bench_soap") as store:
            print("warm-up (100 messages) ... ", end="", flush=True)
            run_burst("warmup", amqp_url, sim, store, cfg, 100, profile=False)
            print("throughput ... ", end="", flush=True)
            burst = run_burst("throughput", amqp_url, sim, store, cfg, args.messages, profile=False)
            rate = args.latency_rate or max(1.0, burst.rate / 2)
            print(f"latency at {rate:.0f}/s ... ", end="", flush=True)
            paced = run_paced(amqp_url, sim, store, cfg, args.latency_messages, rate, args.warmup)
            print("profile ... ", end="", flush=True)
            profiled = run_burst("profile", amqp_url, sim, store, cfg, args.messages, profile=True)
            print("done")
        report(burst, paced, profiled, args)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if sim is not None:
            sim.stop()
        log_file.close()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
