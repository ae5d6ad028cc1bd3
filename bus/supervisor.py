"""``igate-bus run --processes N``: N worker processes sharing the routes, one supervisor watching them.

Where it sits: around the whole path (event → route → adapter → connector → result/DLQ), as process
management. A worker process holds one core at most (the GIL), so a host with N cores runs N workers; they
share each route's queue as competing consumers and the store's claims keep effects exactly-once between
them, exactly as N workers on N hosts do (README, "Scaling").

The supervisor:

- starts N children (``igate-bus run --processes 1``, the same routes and config), each with its ops
  server off and ``PROMETHEUS_MULTIPROC_DIR`` set, so their counters and histograms land in one folder;
- restarts a child that dies, after a backoff that doubles with each death in a row (1 s up to 30 s; a
  child that lived a minute resets it), logging ``worker_died`` (pid, exit code or signal, when it
  restarts) and ``worker_started``; a child that exits with the configuration's exit code (2) is not
  restarted (it would only fail again): the supervisor stops the others and exits 2;
- passes SIGTERM (or SIGINT) on to every child: each drains (finishes what it holds, acks, closes) and the
  supervisor exits 0 once all have exited 0 (1 otherwise);
- serves one ``GET /metrics`` (prometheus-client's multiprocess collector: each series summed over the
  children, living and dead, gauges per pid) and one ``GET /health`` (200 while every child runs, 503 with
  the list otherwise) on ``IGATE_BUS_OPS_HOST:IGATE_BUS_OPS_PORT``; ``GET /health/ready`` is a live
  child's readiness report (``igate-bus status`` reads it; each child serves its own ops endpoint on a
  loopback port of its own), 503 unless every child runs and that one is ready.

The multiprocess mode holds what the children count and time; the series a worker computes when scraped
(queue depths and ages, broker up, connector health and breaker state, its consumer) live in each child's
own registry. ``/metrics`` reads them from the children's own endpoints at each scrape: the queue and
broker series once (from the first child that answers: they are the broker's numbers, the same for all),
the connector, breaker and consumer series from every live child with a ``worker`` label (its slot), since
each child has its own breaker. ``/health`` carries each live child's connector states the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

if TYPE_CHECKING:
    from collections.abc import Sequence

    from prometheus_client.metrics_core import Metric

__all__ = [
    "WORKER_CPU_ENV",
    "Child",
    "Supervisor",
    "child_command",
    "default_processes",
    "follow_supervisor",
    "merge_scrape_series",
]

log = structlog.get_logger("igate_bus.supervisor")

#: prometheus-client reads this variable when a process imports it: set only in the children's environment
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: how long a scrape or a health check waits for one child's own endpoint, and how much it reads of it
CHILD_TIMEOUT_S: Final = 2.0
MAX_CHILD_BYTES: Final = 8 * 1024 * 1024
#: the scrape-time series that are the broker's numbers, the same from every child: taken from one
BROKER_SERIES: Final = ("igate_bus_queue_", "igate_bus_broker_up")
#: set in each child's environment: the supervisor's pid, so a child ends with it (:func:`follow_supervisor`)
SUPERVISOR_PID_ENV: Final = "IGATE_BUS_SUPERVISOR_PID"
#: set in each child's environment: the CPU its slot runs on ("" for none: the kernel places it), bus/affinity.py
WORKER_CPU_ENV: Final = "IGATE_BUS_WORKER_CPU"
#: Linux prctl option: the signal a process gets when its parent dies
_PR_SET_PDEATHSIG: Final = 1
#: the exit code of a refused configuration (``bus/cli_ops.py``): restarting would only fail again
EXIT_CONFIG: Final = 2
FIRST_BACKOFF_S: Final = 1.0
MAX_BACKOFF_S: Final = 30.0
#: a child that lived this long before dying restarts after FIRST_BACKOFF_S again
STABLE_AFTER_S: Final = 60.0
_POLL_S: Final = 0.2


@dataclass(slots=True)
class Child:
    """One worker slot: its process (None while it waits for a restart), deaths in a row, the next start."""

    slot: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs ``processes`` children of ``child_argv`` until SIGTERM/SIGINT; see the module docstring.

    Args:
        child_argv: the command of one worker (``python -m bus.cli run --processes 1 ...``).
        processes: how many run at once.
        env: their environment (the supervisor adds the metrics folder and turns their ops server off).
        ops_host, ops_port: where ``/metrics`` and ``/health`` are served; port 0 serves nothing.
        drain_timeout_s: how long SIGTERM waits for the children before killing them.
        cpus: the CPU each slot's worker is pinned to (None: the kernel places it; bus/affinity.py); a
            restarted worker keeps its slot's CPU. Default: none pinned.
    """

    def __init__(
        self,
        child_argv: Sequence[str],
        processes: int,
        *,
        env: dict[str, str],
        ops_host: str,
        ops_port: int,
        drain_timeout_s: float = 90.0,
        cpus: Sequence[int | None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self._cpus = list(cpus) if cpus is not None else [None] * processes
        if len(self._cpus) != processes:
            raise ValueError("cpus must name one CPU (or None) per process")
        self._argv = list(child_argv)
        self._env = env
        self._ops = (ops_host, ops_port)
        self._drain_timeout = drain_timeout_s
        self._children = [Child(slot) for slot in range(processes)]
        #: each child's own ops endpoint (readiness), when the supervisor serves one
        self._child_ports = [_free_port() if ops_port else 0 for _ in range(processes)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._metrics_dir = Path(env[MULTIPROC_ENV]) if env.get(MULTIPROC_ENV) else None
        self._own_dir = self._metrics_dir is None
        self._server: ThreadingHTTPServer | None = None
        self._exit_code = 0

    # -- public --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Begin the graceful stop; safe from signal handlers and other threads."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the supervisor gracefully (call from the main thread)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: self.stop())

    def run(self) -> int:
        """Start the children, keep them running until :meth:`stop`, drain them; the exit code."""
        self._prepare_metrics_dir()
        try:
            self._serve_ops()
            for child in self._children:
                self._start(child)
            while not self._stop.wait(_POLL_S):
                self._watch()
            self._drain()
        finally:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
            if self._own_dir and self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("supervisor_stopped", exit_code=self._exit_code)
        return self._exit_code

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether every child runs, and each one's pid, restarts and CPU (what ``GET /health`` answers)."""
        with self._lock:
            workers: list[dict[str, Any]] = [
                {
                    "slot": c.slot,
                    "pid": c.proc.pid if c.proc is not None else None,
                    "alive": c.proc is not None and c.proc.poll() is None,
                    "restarts": c.restarts,
                    "cpu": self._cpus[c.slot],
                }
                for c in self._children
            ]
        ok = all(w["alive"] for w in workers) and not self._stop.is_set()
        for worker in workers:
            if worker["alive"]:
                worker["connectors"] = self._child_connectors(worker["slot"])
        return ok, {"status": "ok" if ok else "degraded", "processes": len(workers), "workers": workers}

    def _child_connectors(self, slot: int) -> dict[str, str] | None:
        """A child's connector states from its own ``/health`` (None while it does not answer)."""
        port = self._child_ports[slot]
        if not port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=CHILD_TIMEOUT_S) as r:
                body = json.loads(r.read(MAX_CHILD_BYTES))
        except (OSError, ValueError):
            return None
        connectors = body.get("connectors") if isinstance(body, dict) else None
        if not isinstance(connectors, dict):
            return None
        return {str(name): str(c.get("state")) for name, c in connectors.items() if isinstance(c, dict)}

    def readiness(self) -> tuple[int, bytes]:
        """A live child's readiness report; 503 unless every child runs and that child is ready."""
        ok, body = self.health()
        for worker in body["workers"]:
            port = self._child_ports[worker["slot"]]
            if not worker["alive"] or not port:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=10) as r:
                    return (200 if ok else 503), r.read()
            except urllib.error.HTTPError as exc:  # 503: not ready, with the same report
                return 503, exc.read()
            except OSError:
                continue  # still starting: ask the next one
        return 503, json.dumps(body).encode()

    def metrics(self) -> bytes:
        """The children's series, aggregated (prometheus-client's multiprocess collector)."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]
        counted = generate_latest(registry)
        return counted + self._children_scrape_series(counted)

    def _children_scrape_series(self, counted: bytes) -> bytes:
        """The gauges the children compute when scraped, read from their own ``/metrics`` (module docstring)."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.parser import text_string_to_metric_families

        have = {f.name for f in text_string_to_metric_families(counted.decode())}
        with self._lock:
            live = [c.slot for c in self._children if c.proc is not None and c.proc.poll() is None]
        read = [(slot, families) for slot in live if (families := self._child_families(slot)) is not None]
        merged = merge_scrape_series(read, counted=have)
        if not merged:
            return b""

        class _Families:
            def collect(self) -> list[Metric]:
                return merged

        extra = CollectorRegistry()
        extra.register(_Families())
        return generate_latest(extra)

    def _child_families(self, slot: int) -> list[Metric] | None:
        """A child's own series (None while it does not answer: starting, stopping or stuck)."""
        from prometheus_client.parser import text_string_to_metric_families

        port = self._child_ports[slot]
        if not port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=CHILD_TIMEOUT_S) as r:
                return list(text_string_to_metric_families(r.read(MAX_CHILD_BYTES).decode()))
        except (OSError, ValueError):
            return None

    # -- children --------------------------------------------------------------------------------------
    def _prepare_metrics_dir(self) -> None:
        if self._metrics_dir is None:
            self._metrics_dir = Path(tempfile.mkdtemp(prefix="igate-bus-metrics-"))
        self._metrics_dir.mkdir(parents=True, exist_ok=True)
        for stale in self._metrics_dir.glob("*.db"):  # a previous run's children: not ours to count
            stale.unlink()

    def _start(self, child: Child) -> None:
        env = {
            **self._env,
            MULTIPROC_ENV: str(self._metrics_dir),
            "IGATE_BUS_OPS_HOST": "127.0.0.1",
            "IGATE_BUS_OPS_PORT": str(self._child_ports[child.slot]),
            SUPERVISOR_PID_ENV: str(os.getpid()),
            WORKER_CPU_ENV: "" if (cpu := self._cpus[child.slot]) is None else str(cpu),
        }
        proc = subprocess.Popen(self._argv, env=env)  # noqa: S603 - our own interpreter and CLI
        with self._lock:
            child.proc, child.started_at, child.restart_at = proc, time.monotonic(), None
            child.pids.append(proc.pid)
        log.info("worker_started", slot=child.slot, pid=proc.pid, restarts=child.restarts, cpu=cpu)

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self._children:
            proc = child.proc
            if proc is not None and (code := proc.poll()) is not None:
                self._died(child, proc, code, now)
            elif proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)

    def _died(self, child: Child, proc: subprocess.Popen[bytes], code: int, now: float) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(proc.pid, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]
        how = {"signal": signal.Signals(-code).name} if code < 0 else {"exit_code": code}
        if code == EXIT_CONFIG:
            log.error("worker_refused_config", slot=child.slot, pid=proc.pid, **how)
            with self._lock:
                child.proc = None
            self._exit_code = EXIT_CONFIG
            self._stop.set()
            return
        if now - child.started_at >= STABLE_AFTER_S:
            child.backoff_s = FIRST_BACKOFF_S
        delay = child.backoff_s
        child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)
        with self._lock:
            child.proc, child.restart_at = None, now + delay
        log.error("worker_died", slot=child.slot, pid=proc.pid, restart_in_s=delay, **how)

    def _drain(self) -> None:
        live = [c.proc for c in self._children if c.proc is not None and c.proc.poll() is None]
        log.info("supervisor_stopping", workers=[p.pid for p in live])
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._drain_timeout
        for proc in live:
            try:
                code = proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker_drain_timeout", pid=proc.pid, timeout_s=self._drain_timeout)  # noqa: TRY400 - no traceback wanted
                proc.kill()
                code = proc.wait()
            if code != 0:
                log.warning("worker_exited", pid=proc.pid, exit_code=code)
                self._exit_code = self._exit_code or 1

    # -- /metrics and /health ------------------------------------------------------------------------
    def _serve_ops(self) -> None:
        host, port = self._ops
        if not port:
            return
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                del format, args

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST

                    self._send(200, supervisor.metrics(), CONTENT_TYPE_LATEST)
                elif path == "/health/ready" or (path == "/health" and "ready=1" in self.path):
                    self._send(*supervisor.readiness(), "application/json")
                elif path == "/health":
                    ok, body = supervisor.health()
                    self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b'{"error": "not_found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # as a single worker does: say so and run without it
            log.error("ops_server_failed", host=host, port=port, error=str(exc))  # noqa: TRY400 - said in one line
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="igate-bus-supervisor-ops", daemon=True).start()
        log.info("ops_listening", host=host, port=port, processes=len(self._children))


def merge_scrape_series(children: Sequence[tuple[int, Sequence[Metric]]], *, counted: set[str]) -> list[Metric]:
    """The children's scrape-time gauges as one set of families (the module docstring says which).

    Args:
        children: each live child's slot and the families its own ``/metrics`` served.
        counted: the families the multiprocess collector already holds (left out here).
    """
    from prometheus_client.core import GaugeMetricFamily

    merged: dict[str, tuple[GaugeMetricFamily, list[str]]] = {}
    broker_from: int | None = None
    for slot, families in children:
        for family in families:
            if family.type != "gauge" or family.name in counted:
                continue
            shared = family.name.startswith(BROKER_SERIES)
            if shared and broker_from not in (None, slot):
                continue  # the broker's numbers: one child's reading is enough
            broker_from = slot if shared else broker_from
            for sample in family.samples:
                labels = dict(sample.labels) if shared else {**sample.labels, "worker": str(slot)}
                if family.name not in merged:
                    names = list(labels)
                    merged[family.name] = (GaugeMetricFamily(family.name, family.documentation, labels=names), names)
                target, names = merged[family.name]
                if list(labels) == names:
                    target.add_metric([labels[n] for n in names], sample.value)
    return [family for family, _ in merged.values()]


def follow_supervisor() -> bool:
    """In a child: be sent SIGTERM (a graceful drain) when the supervisor dies; False if it is already gone.

    Why: a supervisor killed outright (SIGKILL, the OOM killer) cannot pass SIGTERM on; its children would go
    on consuming as orphans, and a supervisor started again would add N more beside them. Linux's parent-death
    signal covers it (children are started from the supervisor's main thread, which lives as long as it
    does); elsewhere, nothing is set. A child whose parent is not the supervisor named in its environment
    (it died before the signal was set) should stop at once.
    """
    from bus.affinity import libc

    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if not expected:
        return True
    if sys.platform.startswith("linux"):
        try:
            libc().prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError) as exc:  # no libc to ask: the supervisor's SIGTERM still reaches us
            log.warning("parent_death_signal_unset", error=str(exc))
    return str(os.getppid()) == expected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_command(route_names: str, config: Path | None) -> list[str]:
    """The command line of one child worker: this interpreter, ``bus.cli run``, one process."""
    argv = [sys.executable, "-m", "bus.cli", "run", "--processes", "1"]
    if route_names:
        argv += ["--routes", route_names]
    if config is not None:
        argv += ["--config", str(config)]
    return argv


def default_processes() -> int:
    """The number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
