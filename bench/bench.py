"""`make bench`: the engine's throughput and latency on a route with no external I/O, beside raw pika.

Two subjects consume the same JSON bodies (bus.ping envelopes) from a quorum queue with the same prefetch:

- **raw pika** (the baseline, written here): a ``SelectConnection`` consumer that republishes each body on a
  separate publish connection with asynchronous publisher confirms and acks each delivery only after its
  republish is confirmed; nothing else;
- **igate-bus**: the real worker (``python -m bus.cli run --routes bus-ping``) on a temporary config whose
  ``bus-ping`` route does the whole pipeline: validate ▶ when ▶ claim (store) ▶ map ▶ noop send ▶ complete
  (store) ▶ confirmed ``bus.pong`` result ▶ ack.

Each subject runs as its own OS process, so its CPU time and peak memory (``VmHWM``) are its own, and each
run has two passes:

1. **throughput**: ``--messages`` messages are published *before* the consumer starts (we measure consuming,
   not publishing); the rate is taken from the first to the last result arriving in a bench queue bound to
   the results exchange;
2. **latency**: a fresh process, then ``--latency-messages`` messages published at a steady pace (by default
   half the slowest throughput of pass 1, the same pace for every subject) after ``--warmup`` unmeasured
   ones; latency is publish ▶ result arrival, per message (the bench keeps ``seq`` ▶ send time and reads the
   ``seq`` back from the result).

Everything runs in a temporary vhost (and a temporary PostgreSQL database with ``--store-url pg``), removed
at the end, also on Ctrl-C. The last line printed is ``ratio: 0.NN`` (igate-bus msg/s ÷ raw pika msg/s, the
first store and log level given, median over ``--repeat``).
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
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
from _common import create_pg_database, drop_pg_database, percentile, proc_cpu_s, rabbitmqctl
from pika.adapters.select_connection import IOLoop

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# the baseline's own topology (the bus declares its own from the config)
RAW_IN_EXCHANGE = "bench.events"
RAW_IN_QUEUE = "bench.in"
RAW_OUT_EXCHANGE = "bench.results"
RAW_OUT_KEY = "bench.pong"
RAW_COLLECT = "bench.collect.raw"
BUS_COLLECT = "bench.collect.bus"
BUS_ROUTE = "bus-ping"
BUS_QUEUE = f"route.{BUS_ROUTE}"

ROUTES_YAML = """\
routes:
  - name: bus-ping
    from: {{exchange: igate.events, events: [bus.ping]}}
    when: "event_type == 'bus.ping'"
    adapter: builtin.ping
    to: noop.send
    emits: bus.pong
    prefetch: {prefetch}
{concurrency}"""
CONNECTORS_YAML = "connectors:\n  noop:\n    type: noop\n"


# -- small helpers ----------------------------------------------------------------------------------------
def now() -> float:
    """The one clock of the bench (publish times and arrival times are read in the same process)."""
    return time.perf_counter()


def proc_peak_mib(pid: int) -> float:
    """Peak resident memory (``VmHWM``) of a live process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pids_named(name: str) -> list[int]:
    """Pids of the processes whose command name is ``name`` (``beam.smp``: RabbitMQ, ``postgres``)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                pids.append(int(comm.parent.name))
        except (OSError, ValueError):
            continue
    return pids


def machine_busy_s() -> float:
    """CPU seconds processes on the machine have used (user, nice, system, and steal by the hypervisor).

    Interrupt and softirq time is left out: much of it is the kernel carrying our own loopback traffic.
    """
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds so far: the subject (all threads, main thread), the broker, the bench, the machine."""

    subject: float
    subject_main: float
    broker: float
    database: float
    bench: float
    machine: float

    @classmethod
    def take(cls, pid: int) -> CpuSnapshot:
        return cls(
            proc_cpu_s(pid),
            proc_cpu_s(pid, main_thread=True),
            sum(proc_cpu_s(p) for p in pids_named("beam.smp")),
            sum(proc_cpu_s(p) for p in pids_named("postgres")),
            time.process_time(),
            machine_busy_s(),
        )


def busy_cpus(window: float = 1.0) -> float:
    """How many CPUs' worth of work the machine does over ``window`` seconds (others' tests make us noisy)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    try:
        busy0, total0 = sample()
        time.sleep(window)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def blocking(url: str) -> pika.BlockingConnection:
    """A short-lived admin connection."""
    return pika.BlockingConnection(pika.URLParameters(url))


class ConfirmTracker:
    """Publisher-confirm bookkeeping: delivery tag ▶ item, settled singly or ``multiple``, in O(1) each."""

    _MISSING = object()

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._items: dict[int, Any] = {}

    def add(self, tag: int, item: Any) -> None:
        """Remember ``item`` until ``tag`` is confirmed."""
        self._order.append(tag)
        self._items[tag] = item

    def settle(self, tag: int, *, multiple: bool) -> list[Any]:
        """The items a confirm frame settles, oldest first."""
        out = []
        if multiple:
            while self._order and self._order[0] <= tag:
                item = self._items.pop(self._order.popleft(), self._MISSING)
                if item is not self._MISSING:
                    out.append(item)
        else:
            item = self._items.pop(tag, self._MISSING)
            if item is not self._MISSING:
                out.append(item)
        while self._order and self._order[0] not in self._items:
            self._order.popleft()
        return out

    def __len__(self) -> int:
        return len(self._items)


# -- the baseline consumer (runs in its own process: `bench.py --raw-worker ...`) --------------------------
def raw_params(url: str, role: str) -> pika.URLParameters:
    """The same connection settings as the bus worker's (routes.amqp.parameters)."""
    params = pika.URLParameters(url)
    params.heartbeat = 15
    params.blocked_connection_timeout = 10.0
    params.socket_timeout = 5.0
    params.connection_attempts = 1
    params.client_properties = {"connection_name": f"bench raw {role} pid {os.getpid()}"}
    return params


class RawWorker:
    """Consume ▶ republish with asynchronous confirms ▶ ack after confirm: raw pika, nothing else."""

    def __init__(self, url: str, queue: str, exchange: str, routing_key: str, prefetch: int) -> None:
        self.url, self.queue, self.exchange, self.routing_key, self.prefetch = (
            url,
            queue,
            exchange,
            routing_key,
            prefetch,
        )
        self.ioloop = IOLoop()
        self.parent = os.getppid()
        self.stop_requested = False
        self.pub_conn: Any = None
        self.pub_ch: Any = None
        self.con_conn: Any = None
        self.con_ch: Any = None
        self.pub_seq = 0
        self.pending = ConfirmTracker()
        self.failed = 0

    def run(self) -> None:
        """Block until SIGTERM."""
        signal.signal(signal.SIGTERM, lambda _s, _f: setattr(self, "stop_requested", True))
        signal.signal(signal.SIGINT, lambda _s, _f: setattr(self, "stop_requested", True))
        self.pub_conn = pika.SelectConnection(
            raw_params(self.url, "publish"),
            on_open_callback=lambda c: c.channel(on_open_callback=self._on_pub_channel),
            on_open_error_callback=self._fatal,
            custom_ioloop=self.ioloop,
        )
        self.ioloop.call_later(0.2, self._tick)
        self.ioloop.start()
        if self.failed:
            sys.exit(f"raw worker: {self.failed} publishes were nacked or returned")

    def _fatal(self, _conn: Any, exc: BaseException) -> None:
        sys.stderr.write(f"raw worker: cannot connect: {exc!r}\n")
        self.ioloop.stop()
        sys.exit(1)

    def _on_pub_channel(self, channel: Any) -> None:
        self.pub_ch = channel
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: self._open_consumer())

    def _open_consumer(self) -> None:
        self.con_conn = pika.SelectConnection(
            raw_params(self.url, "consume"),
            on_open_callback=lambda c: c.channel(on_open_callback=self._on_con_channel),
            on_open_error_callback=self._fatal,
            custom_ioloop=self.ioloop,
        )

    def _on_con_channel(self, channel: Any) -> None:
        self.con_ch = channel
        channel.basic_qos(
            prefetch_count=self.prefetch, callback=lambda _f: channel.basic_consume(self.queue, self._on_message)
        )

    def _on_message(self, _channel: Any, method: Any, props: Any, body: bytes) -> None:
        self.pub_seq += 1
        self.pending.add(self.pub_seq, method.delivery_tag)
        self.pub_ch.basic_publish(self.exchange, self.routing_key, body, props, mandatory=True)

    def _on_return(self, *_args: Any) -> None:
        self.failed += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            self.failed += 1
        for delivery_tag in self.pending.settle(method.delivery_tag, multiple=method.multiple):
            self.con_ch.basic_ack(delivery_tag)

    def _tick(self) -> None:
        if os.getppid() != self.parent:  # the bench is gone (killed): do not consume forever
            self.stop_requested = True
        if not self.stop_requested:
            self.ioloop.call_later(0.2, self._tick)
            return
        conns = [c for c in (self.con_conn, self.pub_conn) if c is not None and not c.is_closed]
        for conn in conns:
            if not conn.is_closing:
                conn.close()
        if conns:
            self.ioloop.call_later(0.05, self._tick)
        else:
            self.ioloop.stop()


# -- the bench side: publishing and collecting -------------------------------------------------------------
class AsyncPublisher:
    """Publish (seq, body, properties) with asynchronous confirms: as fast as a window allows, or paced."""

    def __init__(
        self,
        url: str,
        exchange: str,
        routing_key: str,
        messages: list[tuple[int, bytes, Any]],
        *,
        rate: float | None = None,
        window: int = 1000,
    ) -> None:
        self.exchange, self.routing_key, self.messages, self.rate, self.window = (
            exchange,
            routing_key,
            messages,
            rate,
            window,
        )
        self.sent_at: dict[int, float] = {}
        self._params = pika.URLParameters(url)
        self._next = 0
        self._tag = 0
        self._pending = ConfirmTracker()
        self._channel: Any = None
        self._conn: Any = None
        self._t0 = 0.0
        self._error: str | None = None

    def run(self, timeout: float) -> None:
        """Publish everything and wait for every confirm; raise on a nack, a return or a timeout."""
        self._conn = pika.SelectConnection(
            self._params,
            on_open_callback=lambda c: c.channel(on_open_callback=self._on_channel),
            on_open_error_callback=lambda _c, exc: self._fail(f"cannot connect: {exc!r}"),
            on_close_callback=lambda _c, _r: self._conn.ioloop.stop(),
        )
        self._conn.ioloop.call_later(timeout, lambda: self._fail(f"not confirmed within {timeout:.0f}s"))
        self._conn.ioloop.start()
        if self._error:
            raise RuntimeError(f"publisher: {self._error}")

    def _fail(self, why: str) -> None:
        self._error = self._error or why
        if self._conn.is_open:
            self._conn.close()
        else:
            self._conn.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_return_callback(lambda *_a: self._fail("a message was returned (unroutable)"))
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: self._start())

    def _start(self) -> None:
        self._t0 = now()
        self._pump()

    def _publish_one(self) -> None:
        seq, body, props = self.messages[self._next]
        self._next += 1
        self._tag += 1
        self._pending.add(self._tag, seq)
        self.sent_at[seq] = now()
        self._channel.basic_publish(self.exchange, self.routing_key, body, props, mandatory=True)

    def _pump(self) -> None:
        total = len(self.messages)
        if self.rate is None:
            while self._next < total and len(self._pending) < self.window:
                self._publish_one()
            return
        due = min(total, int((now() - self._t0) * self.rate) + 1)
        while self._next < due:
            self._publish_one()
        if self._next < total:
            self._conn.ioloop.call_later(0.001, self._pump)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            self._fail("the broker nacked a message")
            return
        self._pending.settle(method.delivery_tag, multiple=method.multiple)
        if self._next == len(self.messages) and not self._pending:
            self._conn.close()
        elif self.rate is None:
            self._pump()


class Collector:
    """Consumes the results of a run in a thread (auto-ack) and timestamps each arrival."""

    def __init__(self, url: str, queue: str, expected: int, pid_of: Any) -> None:
        self.url, self.queue, self.expected, self.pid_of = url, queue, expected, pid_of
        self.arrivals: list[tuple[float, bytes]] = []
        self.cpu: list[CpuSnapshot] = []  # at the first result and at the last
        self.done = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def start(self) -> Collector:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"collector did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        try:
            conn = blocking(self.url)
        except BaseException as exc:
            self._error = exc
            return
        try:
            channel = conn.channel()
            channel.queue_purge(self.queue)
            channel.basic_consume(self.queue, self._on_message, auto_ack=True)
            self._ready.set()
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.1)
        finally:
            if conn.is_open:
                conn.close()

    def _on_message(self, _channel: Any, _method: Any, _props: Any, body: bytes) -> None:
        self.arrivals.append((now(), body))
        count = len(self.arrivals)
        if count in {1, self.expected}:
            self.cpu.append(CpuSnapshot.take(self.pid_of()))
        if count == self.expected:
            self.done.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# -- subjects ------------------------------------------------------------------------------------------------
@dataclass
class Subject:
    """One thing measured: the raw pika baseline, or the bus worker with one store and one log level."""

    label: str
    kind: str  # raw | bus
    store: str = ""
    log_level: str = ""
    store_url: str = ""
    throughput: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    io_us: list[float] = field(default_factory=list)
    cpu_util: list[float] = field(default_factory=list)
    broker_util: list[float] = field(default_factory=list)
    db_util: list[float] = field(default_factory=list)
    others_util: list[float] = field(default_factory=list)
    lat_others_util: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    peak_mib: float = 0.0

    @property
    def collect_queue(self) -> str:
        return RAW_COLLECT if self.kind == "raw" else BUS_COLLECT

    @property
    def in_queue(self) -> str:
        return RAW_IN_QUEUE if self.kind == "raw" else BUS_QUEUE

    @property
    def in_exchange(self) -> str:
        return RAW_IN_EXCHANGE if self.kind == "raw" else "igate.events"


def others_util(collector: Collector, subject: Subject) -> float:
    """% of one core used by everything but the subject, the broker, PostgreSQL and the bench, first ▶ last result."""
    start, end = collector.cpu
    ours = (end.subject - start.subject) + (end.broker - start.broker) + (end.bench - start.bench)
    if subject.store == "postgresql":
        ours += end.database - start.database
    wall = collector.arrivals[-1][0] - collector.arrivals[0][0]
    return max((end.machine - start.machine) - ours, 0.0) / wall * 100


@dataclass
class Bench:
    """The whole run: options, the vhost, the temp dir, the subjects."""

    args: argparse.Namespace
    amqp_url: str
    tmp: Path
    subjects: list[Subject]
    seq: int = 0
    busy_before: float = 0.0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, flush=True)

    # -- messages
    def pings(self, n: int) -> list[tuple[int, bytes, Any]]:
        """``n`` bus.ping envelopes with fresh seqs (and event ids), as (seq, body, properties)."""
        from routes.amqp import event_properties

        stamp = datetime.now(UTC).isoformat()
        out = []
        for _ in range(n):
            seq = self.seq
            self.seq += 1
            event_id = str(uuid.uuid4())
            event = {
                "event_id": event_id,
                "event_type": "bus.ping",
                "occurred_at": stamp,
                "source": "bench",
                "dossier_code": f"000.00.16.H16-261126-{seq % 10_000:04d}",
                "payload": {"seq": seq},
            }
            body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
            out.append((seq, body, event_properties(event_id=event_id, event_type="bus.ping")))
        return out

    # -- topology
    def declare(self) -> None:
        """The baseline's queues, the bus's topology (from the bench config), and both collector queues."""
        from bus.wiring import declare_topology, load_app
        from config.settings import Settings

        conn = blocking(self.amqp_url)
        try:
            ch = conn.channel()
            ch.exchange_declare(RAW_IN_EXCHANGE, exchange_type="topic", durable=True)
            ch.exchange_declare(RAW_OUT_EXCHANGE, exchange_type="topic", durable=True)
            ch.queue_declare("bench.dlq", durable=True, arguments={"x-queue-type": "classic"})
            # the same arguments the bus gives a route queue (routes/topology.py)
            ch.queue_declare(
                RAW_IN_QUEUE,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": 20,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": "bench.dlq",
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            ch.queue_bind(RAW_IN_QUEUE, RAW_IN_EXCHANGE, routing_key="bus.ping")
        finally:
            conn.close()
        cfg = self.config_dir()
        settings = Settings(amqp_url=self.amqp_url, config_dir=cfg)
        declare_topology(settings, load_app(settings).routes)
        conn = blocking(self.amqp_url)
        try:
            ch = conn.channel()
            # results land in a durable classic queue, as un-bound results do in `unrouted`
            for queue, exchange, key in (
                (RAW_COLLECT, RAW_OUT_EXCHANGE, RAW_OUT_KEY),
                (BUS_COLLECT, "bus.results", "bus.pong"),
            ):
                ch.queue_declare(queue, durable=True, arguments={"x-queue-type": self.args.result_queue})
                ch.queue_bind(queue, exchange, routing_key=key)
        finally:
            conn.close()

    def config_dir(self) -> Path:
        folder = self.tmp / "config"
        folder.mkdir(exist_ok=True)
        conc = f"    concurrency: {self.args.concurrency}\n" if self.args.concurrency else ""
        (folder / "routes.yaml").write_text(ROUTES_YAML.format(prefetch=self.args.prefetch, concurrency=conc))
        (folder / "connectors.yaml").write_text(CONNECTORS_YAML)
        return folder

    def depth_and_consumers(self, queue: str) -> tuple[int, int]:
        conn = blocking(self.amqp_url)
        try:
            ok = conn.channel().queue_declare(queue, passive=True).method
            return int(ok.message_count), int(ok.consumer_count)
        finally:
            conn.close()

    # -- processes
    def spawn(self, subject: Subject, tag: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{subject.label}-{tag}.log").open("ab")
        if subject.kind == "raw":
            args = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--raw-worker",
                "--amqp-url",
                self.amqp_url,
                "--prefetch",
                str(self.args.prefetch),
            ]
            env = dict(os.environ)
        else:
            args = [sys.executable, "-m", "bus.cli", "run", "--routes", BUS_ROUTE, "--processes", "1"]
            env = dict(os.environ)
            env.update(
                {
                    "IGATE_BUS_AMQP_URL": self.amqp_url,
                    "IGATE_BUS_STORE_URL": subject.store_url,
                    "IGATE_BUS_CONFIG_DIR": str(self.tmp / "config"),
                    "IGATE_BUS_LOG_LEVEL": subject.log_level,
                    "IGATE_BUS_LOG_FORMAT": "json",
                    # metrics are still recorded; only the HTTP server (a fixed port others may hold) is off
                    "IGATE_BUS_OPS_PORT": "0",
                }
            )
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)  # noqa: S603
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.remove(proc)

    def log_tail(self, subject: Subject, tag: str, n: int = 15) -> str:
        path = self.tmp / f"{subject.label}-{tag}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])

    def wait_results(self, collector: Collector, proc: subprocess.Popen[bytes], subject: Subject, tag: str) -> None:
        deadline = time.monotonic() + 30 + collector.expected / 250
        while not collector.done.wait(0.2):
            if proc.poll() is not None:
                raise RuntimeError(f"{subject.label} exited with {proc.returncode}:\n{self.log_tail(subject, tag)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{subject.label}: {len(collector.arrivals)}/{collector.expected} results in time:\n"
                    f"{self.log_tail(subject, tag)}"
                )

    def wait_consuming(self, proc: subprocess.Popen[bytes], subject: Subject, tag: str) -> None:
        deadline = time.monotonic() + 30
        while self.depth_and_consumers(subject.in_queue)[1] < 1:
            if proc.poll() is not None:
                raise RuntimeError(f"{subject.label} exited with {proc.returncode}:\n{self.log_tail(subject, tag)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{subject.label} did not start consuming:\n{self.log_tail(subject, tag)}")
            time.sleep(0.05)

    @staticmethod
    def seq_of(subject: Subject, body: bytes) -> int:
        data = json.loads(body)
        return int(data["payload"]["seq"] if subject.kind == "raw" else data["payload"]["data"]["seq"])

    # -- passes
    def throughput(self, subject: Subject) -> float:
        """Pre-publish ``--messages``, start the subject, time first ▶ last result; returns msg/s."""
        n: int = self.args.messages
        messages = self.pings(n)
        AsyncPublisher(self.amqp_url, subject.in_exchange, "bus.ping", messages).run(timeout=60 + n / 200)
        holder: dict[str, int] = {}
        collector = Collector(self.amqp_url, subject.collect_queue, n, lambda: holder.get("pid", 0)).start()
        proc = self.spawn(subject, "throughput")
        holder["pid"] = proc.pid
        try:
            self.wait_results(collector, proc, subject, "throughput")
            subject.peak_mib = max(subject.peak_mib, proc_peak_mib(proc.pid))
        finally:
            collector.stop()
            self.stop(proc)
        self.check(subject, collector, {seq for seq, _, _ in messages})
        first, last = collector.arrivals[0][0], collector.arrivals[-1][0]
        rate = (n - 1) / (last - first)
        start, end = collector.cpu
        cpu = end.subject - start.subject
        broker = end.broker - start.broker
        database = end.database - start.database
        subject.throughput.append(rate)
        subject.cpu_us.append(cpu / (n - 1) * 1e6)
        subject.io_us.append((end.subject_main - start.subject_main) / (n - 1) * 1e6)
        subject.cpu_util.append(cpu / (last - first) * 100)
        subject.broker_util.append(broker / (last - first) * 100)
        subject.db_util.append(database / (last - first) * 100)
        subject.others_util.append(others_util(collector, subject))
        return rate

    def latency(self, subject: Subject, rate: float) -> None:
        """A fresh subject process, ``--warmup`` + ``--latency-messages`` paced at ``rate``; p50/p99."""
        warm, n = self.args.warmup, self.args.latency_messages
        messages = self.pings(warm + n)
        holder: dict[str, int] = {}
        collector = Collector(self.amqp_url, subject.collect_queue, warm + n, lambda: holder.get("pid", 0)).start()
        proc = self.spawn(subject, "latency")
        holder["pid"] = proc.pid
        try:
            self.wait_consuming(proc, subject, "latency")
            publisher = AsyncPublisher(self.amqp_url, subject.in_exchange, "bus.ping", messages, rate=rate)
            publisher.run(timeout=60 + (warm + n) / rate * 2)
            self.wait_results(collector, proc, subject, "latency")
            subject.peak_mib = max(subject.peak_mib, proc_peak_mib(proc.pid))
        finally:
            collector.stop()
            self.stop(proc)
        self.check(subject, collector, {seq for seq, _, _ in messages})
        measured = {seq for seq, _, _ in messages[warm:]}
        lat = []
        for arrived, body in collector.arrivals:
            seq = self.seq_of(subject, body)
            if seq in measured:
                lat.append((arrived - publisher.sent_at[seq]) * 1000)
        subject.p50_ms.append(percentile(lat, 0.50))
        subject.p99_ms.append(percentile(lat, 0.99))
        subject.lat_others_util.append(others_util(collector, subject))

    def check(self, subject: Subject, collector: Collector, sent: set[int]) -> None:
        got = [self.seq_of(subject, body) for _, body in collector.arrivals]
        if len(got) != len(sent) or set(got) != sent:
            distinct = len(set(got) & sent)
            raise RuntimeError(f"{subject.label}: {distinct}/{len(sent)} distinct results, {len(got)} in all")

    def run(self) -> None:
        if self.busy_before > 0.3:
            self.say(
                f"note: {self.busy_before:.1f} of {os.cpu_count()} CPUs were busy before starting: other work shares "
                "them, so expect noisy figures (use --repeat)"
            )
        self.declare()
        for rep in range(1, self.args.repeat + 1):
            pre = f"[{rep}/{self.args.repeat}] " if self.args.repeat > 1 else ""
            for s in self.subjects:
                rate = self.throughput(s)
                self.say(
                    f"{pre}{s.label}: {rate:,.0f} msg/s over {self.args.messages:,} pre-published messages "
                    f"(others {s.others_util[-1]:.0f}%)"
                )
            pace = self.args.latency_rate or 0.5 * min(s.throughput[-1] for s in self.subjects)
            for s in self.subjects:
                self.latency(s, pace)
                self.say(
                    f"{pre}{s.label}: latency at {pace:,.0f} msg/s: "
                    f"p50 {s.p50_ms[-1]:.1f} ms, p99 {s.p99_ms[-1]:.1f} ms (others {s.lat_others_util[-1]:.0f}%)"
                )
        self.report(pace)

    def report(self, pace: float) -> None:
        from rich.console import Console
        from rich.table import Table

        raw = self.subjects[0]
        base = statistics.median(raw.throughput)
        table = Table(title=f"route {BUS_ROUTE}: validate ▶ when ▶ claim ▶ map ▶ noop ▶ confirmed result ▶ ack")
        columns = (
            ("run", "left"),
            ("store", "left"),
            ("log", "left"),
            ("msg/s", "right"),
            ("× raw", "right"),
            ("p50 ms", "right"),
            ("p99 ms", "right"),
            ("CPU µs/msg", "right"),
            ("I/O loop µs", "right"),
            ("CPU %", "right"),
            ("broker %", "right"),
            ("PG %", "right"),
            ("others % thr/lat", "right"),
            ("peak MiB", "right"),
        )
        for name, justify in columns:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for s in self.subjects:
            rate = statistics.median(s.throughput)
            spread = f" ({min(s.throughput):,.0f}-{max(s.throughput):,.0f})" if len(s.throughput) > 1 else ""
            table.add_row(
                "raw pika" if s.kind == "raw" else "igate-bus",
                s.store or "-",
                s.log_level or "-",
                f"{rate:,.0f}{spread}",
                f"{rate / base:.2f}",
                f"{statistics.median(s.p50_ms):.1f}",
                f"{statistics.median(s.p99_ms):.1f}",
                f"{statistics.median(s.cpu_us):,.0f}",
                f"{statistics.median(s.io_us):,.0f}",
                f"{statistics.median(s.cpu_util):.0f}",
                f"{statistics.median(s.broker_util):.0f}",
                f"{statistics.median(s.db_util):.0f}" if s.store == "postgresql" else "-",
                f"{max(s.others_util):.0f}/{max(s.lat_others_util):.0f}",
                f"{s.peak_mib:.1f}",
            )
        console = Console(width=max(shutil.get_terminal_size().columns, 170))
        console.print(table)
        a = self.args
        console.print(
            f"{a.messages:,} messages pre-published per throughput run (rate = first ▶ last result); latency = "
            f"publish ▶ result over {a.latency_messages:,} messages paced at {pace:,.0f} msg/s after {a.warmup} "
            f"warm-up; prefetch {a.prefetch}, concurrency {a.concurrency or 'route default (8)'}, "
            f"{os.cpu_count()} CPUs shared by RabbitMQ, the subject and the bench ({self.busy_before:.1f} busy "
            f"before starting); median of {a.repeat} run(s); "
            "CPU columns cover the throughput run, in % of one core: the subject process (its I/O loop is the main "
            "thread, the rest the pipeline threads), the RabbitMQ node, PostgreSQL; others % is everything else on "
            "the machine during the throughput and the latency runs (the most over repeats): well above 0, someone "
            "else's work shared the CPUs and the figures are noisy. peak MiB is the subject's VmHWM.",
            highlight=False,
        )
        bus = self.subjects[1]
        ratio = statistics.median(bus.throughput) / base
        verdict = "meets" if ratio >= TARGET_RATIO else "is below"
        console.print(
            f"igate-bus ({bus.store}, log {bus.log_level}) {verdict} the target of {TARGET_RATIO:.1f}× raw pika.",
            highlight=False,
        )
        print(f"ratio: {ratio:.2f}", flush=True)


# -- setup and teardown -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=20_000, help="messages per throughput run (default 20000)")
    p.add_argument("--prefetch", type=int, default=50, help="prefetch of both consumers (default 50, the route's)")
    p.add_argument("--concurrency", type=int, default=None, help="the route's concurrency (default: route default 8)")
    p.add_argument(
        "--store-url",
        action="append",
        default=None,
        help="idempotency store: 'sqlite' (a temp file, default), 'pg' (= " + DEFAULT_PG + "), or a "
        "postgresql+psycopg:// URL whose server gets a temporary database; repeat to compare stores",
    )
    p.add_argument(
        "--log-level",
        action="append",
        default=None,
        help="worker log level(s) to measure; repeat to compare (default: info, then warning)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of everything; medians are reported (default 1)")
    p.add_argument("--latency-messages", type=int, default=1000, help="measured messages of a latency run")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured messages before them (default 200)")
    p.add_argument("--latency-rate", type=float, default=None, help="msg/s (default: half the slowest throughput)")
    p.add_argument(
        "--result-queue",
        choices=["classic", "quorum"],
        default="classic",
        help="type of the queue results land in (default classic, like `unrouted`)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp folder (worker logs) and print its path")
    p.add_argument("--amqp-host", default=os.environ.get("IGATE_BUS_BENCH_AMQP", "127.0.0.1:5672"))
    # internal: the baseline consumer process
    p.add_argument("--raw-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--amqp-url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.messages < 100 or args.latency_messages < 10 or args.repeat < 1:
        p.error("--messages >= 100, --latency-messages >= 10, --repeat >= 1")
    return args


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def build_subjects(args: argparse.Namespace, tmp: Path, pg_dbs: list[tuple[str, str]]) -> list[Subject]:
    """The baseline, then the bus for each store and log level (a temp database per PostgreSQL store)."""
    subjects = [Subject("raw pika", "raw")]
    for i, spec in enumerate(args.store_url or ["sqlite"]):
        if spec == "sqlite":
            store, url = "sqlite", f"sqlite:///{tmp / f'store-{i}.sqlite3'}"
        else:
            admin = DEFAULT_PG if spec == "pg" else spec
            name, url = create_pg_database(admin, "igb_bench")
            pg_dbs.append((admin, name))
            store = "postgresql"
        levels = args.log_level or ["info", "warning"]
        subjects.extend(Subject(f"igate-bus {store} {level}", "bus", store, level, url) for level in levels)
    return subjects


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.raw_worker:
        RawWorker(args.amqp_url, RAW_IN_QUEUE, RAW_OUT_EXCHANGE, RAW_OUT_KEY, args.prefetch).run()
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (nohup, &)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # cleanup runs on SIGTERM too
    busy = busy_cpus()  # before rabbitmqctl, whose Erlang VM and vhost start would count
    vhost = f"igb-bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="igb-bench-"))
    pg_dbs: list[tuple[str, str]] = []
    procs: list[subprocess.Popen[bytes]] = []
    vhost_made = False
    try:
        rabbitmqctl("add_vhost", vhost)
        vhost_made = True
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        amqp_url = f"amqp://guest:guest@{args.amqp_host}/{quote(vhost, safe='')}"
        Bench(args, amqp_url, tmp, build_subjects(args, tmp, pg_dbs), busy_before=busy, procs=procs).run()
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a subject died or stalled: its log tail is in the message
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        cleanup(procs, pg_dbs, vhost if vhost_made else None)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def cleanup(procs: list[subprocess.Popen[bytes]], pg_dbs: list[tuple[str, str]], vhost: str | None) -> None:
    """Kill what still runs, drop the temp databases, delete the vhost; every step tried even if one fails."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the vhost behind
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for admin, name in pg_dbs:
        try:
            drop_pg_database(admin, name)
        except Exception as exc:
            print(f"could not drop database {name}: {exc!r}", file=sys.stderr)
    if vhost is not None:
        try:
            rabbitmqctl("delete_vhost", vhost)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"could not delete vhost {vhost}: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
