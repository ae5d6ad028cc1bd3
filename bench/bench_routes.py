"""`make bench`, real routes: the worker against the iGate (REST) and portal (SOAP) simulators, beside a plain client.

Each case is one route of the shipped config against its simulator, with the target answering at once or
after ``--target-ms`` (20 ms), and two subjects making **the same calls with the same concurrency**, each in
its own OS process (so CPU time and peak memory are its own):

- **igate-bus**: the real worker (``python -m bus.cli run --routes ROUTE``), SQLite store (``--store pg``
  for PostgreSQL), log level info: consume ▶ validate ▶ claim ▶ adapt ▶ call ▶ complete ▶ (result) ▶ ack;
- **plain client**: ``bench_routes.py --plain-worker``: a thread pool of the route's concurrency, one httpx
  client per thread, the same requests on the wire (the same JSON body or SOAP envelope, the same
  ``clientRequestId``/``maYeuCau`` keys, built beforehand by the bus's own adapters), one login first, each
  reply read and parsed; no broker, no store.

Cases: ``bus-ack`` (``dossier.received`` ▶ iGate note, REST) and ``nps-dossier-received`` (▶ the portal's
``DongBoHoSoMC``, SOAP), each at 0 ms and ``--target-ms``. Per subject two passes:

1. **throughput**: ``--messages`` events ready before the subject starts (published to the route's queue for
   the bus; read from stdin before the clock for the plain client); msg/s from the first to the last effect
   the simulator records, CPU µs per message of the subject over the same window;
2. **latency**: ``--latency-messages`` more at a steady pace (half the subject's own throughput, so each is
   measured below its saturation), each from its publish (or its hand-over to the plain client) to its
   effect at the simulator (same clock).

Every effect is counted at the simulator by its key: a missing or repeated one fails the run.
The last line is ``real-route ratio: 0.NN``: igate-bus msg/s ÷ plain client msg/s on the REST route at 0 ms.
``--quick`` runs smaller passes (about a minute in all).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from _common import SimulatorProcess, percentile, proc_cpu_s, rabbitmqctl, temp_store

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_soap import received_events  # noqa: E402

from bench import AsyncPublisher, blocking, proc_peak_mib  # noqa: E402 - after the path fix

AMQP_HOST = os.environ.get("IGATE_BUS_BENCH_AMQP", "127.0.0.1:5672")
USER, PASSWORD = "igate-bus-bench", "bench-only-secret"  # the simulators' throwaway credentials for this run
ENV_CREDENTIALS = {
    # the simulator shares the subject's CPUs: no log line per request (its warnings and errors still show)
    "IGATE_SIM_LOG_LEVEL": "warning",
    "IGATE_BUS_IGATE_USERNAME": USER,
    "IGATE_BUS_IGATE_PASSWORD": PASSWORD,
    "IGATE_BUS_NPS_USERNAME": USER,
    "IGATE_BUS_NPS_PASSWORD": PASSWORD,
}
SESSION_MARK = "@@SESSION@@"
SOAP_NS = "urn:dvcqg:lgsp:v1"


@dataclass(frozen=True)
class Kind:
    """One protocol: its route, connector, simulator module and where the simulator listens."""

    name: str  # rest | soap
    route: str
    connector: str
    simulator: str
    path: str  # the service's base path on the simulator


KINDS = {
    "rest": Kind("rest", "bus-ack", "igate", "simulators.igate", ""),
    "soap": Kind("soap", "nps-dossier-received", "nps", "simulators.nps", "/lgsp/dvcqg"),
}


# -- the plain client (its own process: `bench_routes.py --plain-worker KIND URL CONCURRENCY`) -------------
def plain_worker(kind: str, url: str, concurrency: int, *, burst: bool) -> int:
    """Read one call per stdin line (after a login line), make each with a pool of httpx clients.

    With ``burst`` every line is read before the first call (the events are "there" at start, as the
    bus's are in its queue); otherwise each call is made as its line arrives (the latency pass).
    """
    import httpx
    from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints

    login = json.loads(sys.stdin.readline())
    lines: list[str] = sys.stdin.readlines() if burst else []
    local = threading.local()
    timeout = httpx.Timeout(10.0, connect=3.0)
    parser = etree.XMLParser(resolve_entities=False, no_network=True)

    def client() -> httpx.Client:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = httpx.Client(timeout=timeout)
        return c

    with httpx.Client(timeout=timeout) as c:
        if kind == "rest":
            reply = c.post(url + login["path"], data=login["form"])
            reply.raise_for_status()
            auth = {"Authorization": f"Bearer {reply.json()['access_token']}", "Content-Type": "application/json"}
        else:
            reply = c.post(url, content=login["body"].encode(), headers=login["headers"])
            reply.raise_for_status()
            session = etree.fromstring(reply.content, parser).findtext(f".//{{{SOAP_NS}}}session")
            if not session:
                raise SystemExit(f"plain client: no session in the login reply: {reply.text[:200]}")

    sys.stdout.write("ready\n")  # logged in: the parent starts its clock
    sys.stdout.flush()

    def call(line: str) -> None:
        item = json.loads(line)
        if kind == "rest":
            r = client().post(url + item["path"], content=item["body"].encode(), headers=auth)
            r.raise_for_status()
            r.json()
        else:
            body = item["body"].replace(SESSION_MARK, session).encode()
            r = client().post(url, content=body, headers=item["headers"])
            r.raise_for_status()
            etree.fromstring(r.content, parser)

    failed = 0
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(call, line) for line in lines] if burst else []
        if not burst:
            futures = [pool.submit(call, line) for line in iter(sys.stdin.readline, "")]
        for f in futures:
            if f.exception() is not None:
                failed += 1
                sys.stderr.write(f"plain client: {f.exception()!r}\n")
    return 1 if failed else 0


# -- the simulators ----------------------------------------------------------------------------------------
class Simulator(SimulatorProcess):
    """A simulator as a child process, driven over its control endpoints."""

    def __init__(self, kind: Kind, workdir: Path) -> None:
        super().__init__(kind.simulator, workdir, ENV_CREDENTIALS, log_name=f"sim-{kind.name}.log", root=ROOT)
        self.kind = kind
        self.endpoint = self.url + kind.path
        #: effect time by key, as read so far (only new effects are asked for: ``?since=``)
        self._got: dict[str, float] = {}
        self._read = 0

    def reset(self, target_ms: float) -> None:
        """Forget effects and faults; then answer every call after ``target_ms``."""
        self.post("/_sim/reset", {})
        self._got, self._read = {}, 0
        if target_ms:
            self.post("/_sim/faults", {"latency_s": target_ms / 1000})

    def effects(self) -> dict[str, float]:
        """Effect time by key; raises on a key applied twice.

        Only the effects recorded since the last poll are fetched: fetching every effect twice a second made
        the simulator serialise thousands of them while the measured subject's calls waited on its GIL.
        """
        new = self.get(f"/_sim/effects?since={self._read}")["effects"]
        self._read += len(new)
        for e in new:
            key = e.get("client_request_id") or e.get("maYeuCau")
            if key in self._got:
                raise RuntimeError(f"{self.kind.name}: the effect of {key} was applied twice")
            self._got[key] = float(e["at"])
        return dict(self._got)

    def wait(self, keys: set[str], timeout: float, alive: Any) -> dict[str, float]:
        """Wait until every key's effect is recorded: effect time by key."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.effects()
            if keys <= got.keys():
                extra = got.keys() - keys
                if extra:
                    raise RuntimeError(f"{self.kind.name}: {len(extra)} effects nobody asked for")
                return got
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(f"{self.kind.name}: {len(keys & got.keys())}/{len(keys)} effects after {timeout}s")
            time.sleep(0.5)


# -- measuring a process -----------------------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    """``pid`` and its children (a supervisor's workers with ``--processes N``).

    From ``/proc/PID/task/PID/children`` where the kernel has it (one small read: the sampler runs on the
    subject's CPUs every 50 ms), else by scanning every process's ``stat``.
    """
    try:
        return [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return [pid]
    out = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


class CpuSampler:
    """CPU seconds of a process sampled every 50 ms (wall clock ``time.time``, the simulators' clock)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        #: the most resident memory (``VmHWM``) seen, summed over the process and its children
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree(self.pid)
            self.samples.append((time.time(), sum(proc_cpu_s(p) for p in pids)))
            self.peak_mib = max(self.peak_mib, sum(proc_peak_mib(p) for p in pids))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def at(self, when: float) -> float:
        """CPU seconds at ``when``, interpolated between the samples around it."""
        before = [(t, cpu) for t, cpu in self.samples if t <= when]
        after = [(t, cpu) for t, cpu in self.samples if t > when]
        if not before or not after:
            return (before or after or [(0.0, 0.0)])[-1 if before else 0][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 + (c1 - c0) * (when - t0) / max(t1 - t0, 1e-9)


@dataclass
class Result:
    """One subject in one case (medians over --repeat)."""

    rate: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    peak_mib: float = 0.0
    uptime: list[str] = field(default_factory=list)


def load_average() -> str:
    """The 1-minute load average (others' work shares the CPUs: say so beside each figure)."""
    return Path("/proc/loadavg").read_text().split()[0]


# -- the run -----------------------------------------------------------------------------------------------
class Bench:
    """Cases × subjects: simulators, the bus's config and topology, the calls both subjects make."""

    def __init__(self, args: argparse.Namespace, amqp_url: str, store_url: str, tmp: Path) -> None:
        self.args, self.amqp_url, self.store_url, self.tmp = args, amqp_url, store_url, tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sims = {k: Simulator(KINDS[k], tmp) for k in args.kinds}
        self.config = self.write_config()
        self.results: dict[tuple[str, int, str], Result] = {}
        self.batch = 0

    def close(self) -> None:
        for sim in self.sims.values():
            sim.stop()

    def write_config(self) -> Path:
        """The shipped routes under test (short retries) and their connectors pointing at the simulators."""
        folder = self.tmp / "config"
        folder.mkdir()
        shipped = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text(encoding="utf-8"))
        shipped_conn = yaml.safe_load((ROOT / "config" / "connectors.yaml").read_text(encoding="utf-8"))
        routes, connectors = [], {}
        for k in self.args.kinds:
            kind = KINDS[k]
            [route] = [r for r in shipped["routes"] if r["name"] == kind.route]
            route["retry"] = {"backoff": ["1s", "2s"], "max_attempts": 10}
            if self.args.concurrency:
                route["concurrency"] = self.args.concurrency
            routes.append(route)
            spec = dict(shipped_conn["connectors"][kind.connector])
            spec["endpoint"] = self.sims[k].endpoint
            spec["probe_interval"] = "1h"  # no probe traffic in the measured window
            connectors[kind.connector] = spec
        (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}, allow_unicode=True, sort_keys=False))
        (folder / "connectors.yaml").write_text(yaml.safe_dump({"connectors": connectors}, sort_keys=False))
        from bus.wiring import declare_topology, load_app
        from config.settings import Settings

        settings = Settings(amqp_url=self.amqp_url, config_dir=folder)
        declare_topology(settings, load_app(settings).routes)
        return folder

    def concurrency(self, kind: Kind) -> int:
        from config.model import RouteSpec

        del kind
        return self.args.concurrency or int(RouteSpec.model_fields["concurrency"].default)

    def events(self, n: int) -> list[dict[str, Any]]:
        self.batch += 1
        return received_events(n, f"{(os.getpid() * 31 + self.batch) % 0xFFFF:04x}")

    # -- what the plain client sends: the bus's own adapter output, rendered as the connector puts it on the wire
    def calls(self, kind: Kind, events: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str], list[str]]:
        """The login, one JSON line per call, and each call's key (as the bus would send it)."""
        from datetime import UTC, datetime

        from adapters.registry import adapters
        from routes.pipeline import idempotency_key
        from schemas.envelope import EventRules, parse_event
        from schemas.events import EVENT_PAYLOADS

        [route] = [
            r for r in yaml.safe_load((self.config / "routes.yaml").read_text())["routes"] if r["name"] == kind.route
        ]
        adapter = adapters()[route["adapter"]]
        soap = self.soap_client() if kind.name == "soap" else None
        lines, keys = [], []
        now = datetime.now(UTC)
        for ev in events:
            event = parse_event(json.dumps(ev).encode(), payload_models=EVENT_PAYLOADS, rules=EventRules())
            request = adapter(event, now=now)
            key = idempotency_key(kind.route, ev["event_id"])
            keys.append(key)
            if soap is None:
                body = request.model_dump(mode="json", by_alias=True, exclude_none=True) | {"clientRequestId": key}
                path = f"/pa/dossier/{quote(body['dossierCode'], safe='')}/--bus-note"
                lines.append(json.dumps({"path": path, "body": json.dumps(body, ensure_ascii=False)}))
            else:
                header = {"session": SESSION_MARK, "madonvi": "000.00.16.H16", "maYeuCau": key}
                body = request.model_dump(mode="json", exclude_none=True)
                envelope = soap.render("DongBoHoSoMC", body, soap_headers={"header": header})
                headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{SOAP_NS}#DongBoHoSoMC"'}
                lines.append(json.dumps({"body": envelope, "headers": headers}, ensure_ascii=False))
        if soap is None:
            login = {
                "path": "/auth/realms/digo/protocol/openid-connect/token",
                "form": {"grant_type": "password", "client_id": "igate-bus", "username": USER, "password": PASSWORD},
            }
        else:
            envelope = soap.render("XacThuc", {"username": USER, "password": PASSWORD}, soap_headers={})
            login = {
                "body": envelope,
                "headers": {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{SOAP_NS}#XacThuc"'},
            }
            soap.close()
        return login, lines, keys

    @staticmethod
    def soap_client() -> Any:
        from config.model import ConnectorSpec
        from connectors._soap import SoapClient
        from connectors.nps import BINDING, WSDL_FILE

        spec = ConnectorSpec(type="nps", endpoint="http://render.invalid/lgsp/dvcqg")
        return SoapClient("render", spec, WSDL_FILE, binding=BINDING, address=str(spec.endpoint))

    # -- subjects
    def run_plain(self, kind: Kind, target_ms: int, res: Result) -> None:
        sim = self.sims[kind.name]
        sim.reset(target_ms)
        login, lines, keys = self.calls(kind, self.events(self.args.messages))
        argv = [sys.executable, __file__, "--plain-worker", kind.name, sim.endpoint, str(self.concurrency(kind))]
        proc = subprocess.Popen([*argv, "--burst"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT)  # noqa: S603
        self.procs.append(proc)
        sampler = CpuSampler(proc.pid)
        assert proc.stdin is not None  # noqa: S101 - Popen(stdin=PIPE) has one
        proc.stdin.write(("\n".join([json.dumps(login), *lines]) + "\n").encode())
        proc.stdin.close()
        got = sim.wait(set(keys), 600, lambda: proc.poll() in (None, 0))
        if proc.wait(60) != 0:
            raise RuntimeError("the plain client failed")
        sampler.stop()
        res.peak_mib = max(res.peak_mib, sampler.peak_mib)
        self.throughput(got, sampler, res)
        # latency: a fresh client, calls handed over at a steady pace
        sim.reset(target_ms)
        n = self.args.latency_messages
        login, lines, keys = self.calls(kind, self.events(n))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)  # noqa: S603
        self.procs.append(proc)
        assert proc.stdin is not None  # noqa: S101 - Popen(stdin=PIPE) has one
        assert proc.stdout is not None  # noqa: S101 - Popen(stdout=PIPE) has one
        proc.stdin.write((json.dumps(login) + "\n").encode())
        proc.stdin.flush()
        if proc.stdout.readline().strip() != b"ready":  # its imports and login, before the clock
            raise RuntimeError("the plain client did not log in")
        sent: dict[str, float] = {}
        t0, pace = time.monotonic(), self.pace(res)
        for i, (line, key) in enumerate(zip(lines, keys, strict=True)):
            delay = t0 + i / pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[key] = time.time()
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()
        proc.stdin.close()
        got = sim.wait(set(keys), 600, lambda: proc.poll() in (None, 0))
        proc.wait(60)
        self.latency(got, sent, res)

    def run_bus(self, kind: Kind, target_ms: int, res: Result) -> None:
        from routes.amqp import event_properties

        sim = self.sims[kind.name]
        sim.reset(target_ms)
        events = self.events(self.args.messages)
        self.purge()  # every route under test binds dossier.received: drop what the other route's runs left
        self.publish(events)
        env = {
            **os.environ,
            **ENV_CREDENTIALS,
            "IGATE_BUS_AMQP_URL": self.amqp_url,
            "IGATE_BUS_STORE_URL": self.store_url,
            "IGATE_BUS_CONFIG_DIR": str(self.config),
            "IGATE_BUS_LOG_LEVEL": self.args.log_level,
            "IGATE_BUS_CPU_AFFINITY": self.args.cpu_affinity,
            "IGATE_BUS_OPS_PORT": "0",
        }
        if self.args.processes > 1:  # the supervisor's metrics folder in ours: gone with it even if it is killed
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.tmp / f"metrics-{kind.name}-{target_ms}")
        log = (self.tmp / f"worker-{kind.name}-{target_ms}.log").open("ab")
        argv = [sys.executable, "-m", "bus.cli", "run", "--routes", kind.route, "--processes", str(self.args.processes)]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)  # noqa: S603
        self.procs.append(proc)
        try:
            sampler = CpuSampler(proc.pid)
            spy = self.py_spy(proc.pid, f"{kind.name}-{target_ms}")
            keys = {self.key(kind, e) for e in events}
            got = sim.wait(keys, 600, lambda: proc.poll() is None)
            sampler.stop()
            res.peak_mib = max(res.peak_mib, sampler.peak_mib)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            self.throughput(got, sampler, res)
            # latency: the same worker, events published at a steady pace
            sim.reset(target_ms)
            events = self.events(self.args.latency_messages)
            messages = [
                (i, json.dumps(e).encode(), event_properties(event_id=e["event_id"], event_type="dossier.received"))
                for i, e in enumerate(events)
            ]
            pace = self.pace(res)
            publisher = AsyncPublisher(self.amqp_url, "igate.events", "dossier.received", messages, rate=pace)
            started = time.time() - time.perf_counter()  # the publisher's perf_counter ▶ wall clock
            publisher.run(timeout=60 + len(messages) / pace * 2)
            keys = {self.key(kind, e) for e in events}
            got = sim.wait(keys, 600, lambda: proc.poll() is None)
            sent = {self.key(kind, events[i]): started + t for i, t in publisher.sent_at.items()}
            self.latency(got, sent, res)
            res.peak_mib = max(res.peak_mib, sum(proc_peak_mib(p) for p in tree(proc.pid)))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()

    def py_spy(self, pid: int, name: str) -> subprocess.Popen[bytes] | None:
        """With ``--py-spy``: sample the worker's threads (collapsed stacks, kept in the temp folder)."""
        if not self.args.py_spy:
            return None
        if shutil.which("py-spy") is None:
            raise SystemExit("--py-spy: py-spy is not installed here (pip install py-spy)")
        out = self.tmp / f"py-spy-{name}.txt"
        argv = ["py-spy", "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--nonblocking"]
        if self.args.py_spy_gil:
            argv.append("--gil")  # only the thread holding the GIL: where the Python CPU goes
        spy = subprocess.Popen([*argv, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        self.procs.append(spy)
        return spy

    @staticmethod
    def key(kind: Kind, event: dict[str, Any]) -> str:
        from routes.pipeline import idempotency_key

        return idempotency_key(kind.route, event["event_id"])

    def purge(self) -> None:
        from routes.topology import route_queue

        conn = blocking(self.amqp_url)
        try:
            channel = conn.channel()
            for k in self.args.kinds:
                channel.queue_purge(route_queue(KINDS[k].route))
        finally:
            conn.close()

    def publish(self, events: list[dict[str, Any]]) -> None:
        from routes.amqp import event_properties

        messages = [
            (i, json.dumps(e).encode(), event_properties(event_id=e["event_id"], event_type="dossier.received"))
            for i, e in enumerate(events)
        ]
        AsyncPublisher(self.amqp_url, "igate.events", "dossier.received", messages).run(timeout=300)

    def pace(self, res: Result) -> float:
        return self.args.latency_rate or max(5.0, 0.5 * res.rate[-1])

    def throughput(self, got: dict[str, float], sampler: CpuSampler, res: Result) -> None:
        times = sorted(got.values())
        first, last = times[0], times[-1]
        res.rate.append((len(times) - 1) / max(last - first, 1e-6))
        res.cpu_us.append((sampler.at(last) - sampler.at(first)) / max(len(times) - 1, 1) * 1e6)
        res.uptime.append(load_average())

    @staticmethod
    def latency(got: dict[str, float], sent: dict[str, float], res: Result) -> None:
        lat = [(got[k] - sent[k]) * 1000 for k in sent]
        res.p50.append(percentile(lat, 0.5))
        res.p99.append(percentile(lat, 0.99))

    def run(self) -> None:
        for rep in range(self.args.repeat):
            for k in self.args.kinds:
                kind = KINDS[k]
                for target_ms in dict.fromkeys((0, self.args.target_ms)):  # --target-ms 0: the 0 ms case only
                    for subject in self.args.subjects:
                        res = self.results.setdefault((k, target_ms, subject), Result())
                        (self.run_plain if subject == "plain" else self.run_bus)(kind, target_ms, res)
                        print(
                            f"[{rep + 1}/{self.args.repeat}] {kind.route} target {target_ms} ms, {subject}: "
                            f"{res.rate[-1]:,.0f} msg/s, {res.cpu_us[-1]:,.0f} CPU µs/msg, p50 {res.p50[-1]:.1f} ms "
                            f"(load {res.uptime[-1]})",
                            flush=True,
                        )
        self.report()

    def report(self) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="real routes: igate-bus beside a plain client making the same calls")
        for name in (
            "route",
            "target",
            "subject",
            "msg/s",
            "× plain",
            "p50 ms",
            "p99 ms",
            "CPU µs/msg",
            "peak MiB",
            "load",
        ):
            table.add_column(name, justify="left" if name in {"route", "subject"} else "right", no_wrap=True)
        med = statistics.median
        for (k, target_ms, subject), res in self.results.items():
            plain_res = self.results.get((k, target_ms, "plain"))
            plain = med(plain_res.rate) if plain_res else float("nan")
            table.add_row(
                KINDS[k].route,
                f"{target_ms} ms",
                "igate-bus" if subject == "bus" else "plain client",
                f"{med(res.rate):,.0f}",
                f"{med(res.rate) / plain:.2f}",
                f"{med(res.p50):.1f}",
                f"{med(res.p99):.1f}",
                f"{med(res.cpu_us):,.0f}",
                f"{res.peak_mib:.0f}",
                "/".join(res.uptime),
            )
        console = Console(width=max(shutil.get_terminal_size().columns, 150))
        console.print(table)
        a = self.args
        console.print(
            f"{a.messages:,} events ready before each throughput run (rate = first ▶ last effect at the simulator); "
            f"latency = publish ▶ effect over {a.latency_messages:,} events at half the subject's rate; concurrency "
            f"{a.concurrency or 'route default'}; {a.processes} worker process(es), CPU affinity "
            f"{a.cpu_affinity}; store {a.store}; worker log {a.log_level}; median of {a.repeat}; "
            f"{os.cpu_count()} CPUs shared by RabbitMQ, the simulator, the subject and the bench; load = the 1-minute "
            "load average after each run (above the CPU count, other work shared the CPUs: noisy figures).",
            highlight=False,
        )
        if ("rest", 0, "bus") in self.results and ("rest", 0, "plain") in self.results:
            rest_bus, rest_plain = self.results[("rest", 0, "bus")], self.results[("rest", 0, "plain")]
            print(f"real-route ratio: {med(rest_bus.rate) / med(rest_plain.rate):.2f}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=None, help="events per throughput run (default 2000; quick 400)")
    p.add_argument("--latency-messages", type=int, default=None, help="events per latency run (default 300; quick 100)")
    p.add_argument("--latency-rate", type=float, default=None, help="msg/s (default: half the subject's throughput)")
    p.add_argument("--target-ms", type=int, default=20, help="the slow target's latency (default 20)")
    p.add_argument("--concurrency", type=int, default=None, help="both subjects' threads (default: the route's, 8)")
    p.add_argument("--kinds", default="rest,soap", help="rest, soap or both (default rest,soap)")
    p.add_argument("--store", choices=["sqlite", "pg"], default="sqlite", help="the bus's store (default sqlite)")
    p.add_argument("--log-level", default="info", help="the worker's log level (default info)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="the bus's worker processes (run --processes; default 1); CPU and "
        "peak MiB then add up the supervisor and its workers",
    )
    p.add_argument(
        "--cpu-affinity",
        default="auto",
        help="the workers' run --cpu-affinity (default auto: each on a CPU of its own; none: the kernel places them)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of everything; medians reported (default 1)")
    p.add_argument("--quick", action="store_true", help="smaller runs (about a minute in all)")
    p.add_argument("--subjects", default="plain,bus", help="plain, bus or both (default both; the ratios need both)")
    p.add_argument("--py-spy", action="store_true", help="sample the worker with py-spy (implies --keep)")
    p.add_argument("--py-spy-gil", action="store_true", help="--py-spy, sampling only the thread holding the GIL")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) and print its path")
    p.add_argument(
        "--amqp-url", default=None, help="a broker (vhost) of your own, used as is: no temporary vhost is made"
    )
    p.add_argument("--plain-worker", nargs=3, metavar=("KIND", "URL", "CONCURRENCY"), help=argparse.SUPPRESS)
    p.add_argument("--burst", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.messages = args.messages or (400 if args.quick else 2000)
    args.latency_messages = args.latency_messages or (100 if args.quick else 300)
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.py_spy = args.py_spy or args.py_spy_gil
    args.subjects = [s for s in ("plain", "bus") if s in args.subjects.split(",")]
    args.keep = args.keep or args.py_spy
    if not set(args.kinds) <= set(KINDS) or args.messages < 10 or args.latency_messages < 10:
        p.error("--kinds from rest,soap; --messages and --latency-messages >= 10")
    return args


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run_bench(args: argparse.Namespace, amqp_url: str, store_url: str, tmp: Path) -> None:
    """The cases, then every process it started stopped, whatever happened."""
    bench = Bench(args, amqp_url, store_url, tmp)
    try:
        bench.run()
    finally:
        for proc in bench.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        bench.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_worker:
        kind, url, conc = args.plain_worker
        return plain_worker(kind, url, int(conc), burst=args.burst)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    vhost = f"igb-bench-routes-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="igb-bench-routes-"))
    made = False
    try:
        if args.amqp_url:
            amqp_url = args.amqp_url
        else:
            rabbitmqctl("add_vhost", vhost)
            made = True
            rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            amqp_url = f"amqp://guest:guest@{AMQP_HOST}/{quote(vhost, safe='')}"
        with temp_store(args.store, tmp, prefix="igb_bench_routes") as store_url:
            run_bench(args, amqp_url, store_url, tmp)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench failed: {exc} (logs in {tmp})", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if made:
            try:
                rabbitmqctl("delete_vhost", vhost)
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"could not delete vhost {vhost}: {exc!r}", file=sys.stderr)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
