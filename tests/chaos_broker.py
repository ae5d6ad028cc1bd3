"""A private, disposable RabbitMQ node for tests that stop, disconnect or kill the broker.

Why: the reliability plan (docs/reliability.md §2–3) needs `kill -9`, `stop_app`, `close_all_connections` and
`SIGSTOP` on a broker, and the shared node at 127.0.0.1:5672 (`rabbit@localhost`) serves every other engineer
and test run, so it must never be touched. Docker is not available here, so each test gets its own Erlang
node from the Debian RabbitMQ install: its own node name, ports, Mnesia and log directories in a temporary
directory owned by the `rabbitmq` user, and its own config file. The recipe is the one checked in
docs/reliability.md §2:

* the node runs as user `rabbitmq`, so it shares that user's Erlang cookie with the CLI tools;
* `rabbitmqctl` is called from the versioned `sbin` directory, never the `/usr/sbin` wrapper (its `su` drops
  the environment), and also as user `rabbitmq`: run as root it reads another cookie, silently does nothing,
  and the node keeps running;
* every signal goes to the pid in *this* node's pid file, and only after `/proc/<pid>/environ` shows this
  node's name, so no code path here can signal the shared node.

Tests use the function-scoped `chaos_broker` fixture below (a fresh node per test, since a test may kill
it), or `with ChaosBroker() as broker:` directly. Both stop the node and delete its directory afterwards,
also when the test fails.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pika
import pika.exceptions
import pytest
from pika.adapters.utils.connection_workflow import AMQPConnectorException

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import TracebackType

RABBITMQ_USER = "rabbitmq"
SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBITMQ_LIB = Path("/usr/lib/rabbitmq/lib")
CTL_GLOB = "rabbitmq_server-*/sbin/rabbitmqctl"
SHARED_NODE = "rabbit@localhost"
DEFAULT_START_TIMEOUT_S = 60.0

# rabbitmqctl's own distribution listener uses 35672–35682 by default (RABBITMQ_DIST_PORT + 10000); keep
# our node's ports out of that range so a concurrent rabbitmqctl against the shared node cannot collide.
_CLI_DIST_PORTS = range(35672, 35683)
_CTL_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


class ChaosBrokerError(RuntimeError):
    """The private node could not be started, controlled or stopped."""


def _free_port(exclude: set[int]) -> int:
    """A currently unused TCP port on 127.0.0.1 (the usual bind-to-0 race is acceptable for tests).

    Args:
        exclude: ports already handed out to this node.

    Returns:
        The port number.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in exclude and port not in _CLI_DIST_PORTS:
            return port


def _port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port.

    Args:
        port: the port to probe.

    Returns:
        True if a connection could be opened.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie.

    Args:
        pid: the OS process id.

    Returns:
        True while the process runs (or is stopped); False once it is gone or a zombie.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def find_rabbitmqctl() -> Path:
    """The versioned `rabbitmqctl` (the `/usr/sbin` wrapper drops the environment).

    Returns:
        The path of the newest installed `sbin/rabbitmqctl`.

    Raises:
        ChaosBrokerError: when RabbitMQ is not installed.
    """
    found = sorted(RABBITMQ_LIB.glob(CTL_GLOB))
    if not found:
        raise ChaosBrokerError(
            f"no rabbitmqctl matches {RABBITMQ_LIB / CTL_GLOB}; is the rabbitmq-server package installed?"
        )
    return found[-1]


def _as_rabbitmq(argv: list[str]) -> list[str]:
    """Prefix a command so that it runs as the `rabbitmq` user.

    Args:
        argv: the command.

    Returns:
        The command, wrapped in `runuser` when we are root.

    Raises:
        ChaosBrokerError: when we are neither root nor `rabbitmq`.
    """
    if os.geteuid() == 0:
        return ["runuser", "-u", RABBITMQ_USER, "--", *argv]
    if pwd.getpwuid(os.geteuid()).pw_name == RABBITMQ_USER:
        return argv
    raise ChaosBrokerError("a private RabbitMQ node must run as user rabbitmq: run the tests as root or rabbitmq")


class ChaosBroker:
    """One private RabbitMQ node in a temporary directory, with levers for fault injection.

    Args:
        port: AMQP port on 127.0.0.1; a free port is picked when None.
        config: extra `rabbitmq.conf` settings (e.g. `{"consumer_timeout": 60000}`), written one per line.
        start_timeout_s: how long `start`, `start_app` and `restart_after_kill` wait for AMQP to answer.

    Attributes:
        nodename: the Erlang node name, `chaos-<random>@localhost`.
        port: the AMQP port.
        dist_port: the Erlang distribution port.
        timings: seconds taken by the last `start`, `restart_after_kill`, `start_app` and `stop`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        config: Mapping[str, str | int] | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        self.nodename = f"chaos-{secrets.token_hex(4)}@localhost"
        self.port = port if port is not None else _free_port(set())
        self.dist_port = _free_port({self.port})
        self._config = dict(config or {})
        self._start_timeout_s = start_timeout_s
        self._ctl = find_rabbitmqctl()
        self._dir: Path | None = None
        self._paused = False
        self._atexit_registered = False
        self.timings: dict[str, float] = {}

    @property
    def amqp_url(self) -> str:
        """The AMQP URL of the default vhost, as guest (allowed because we connect from localhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def directory(self) -> Path:
        """The node's temporary directory (Mnesia, logs, config, pid file).

        Raises:
            ChaosBrokerError: before `start` or after `stop`.
        """
        if self._dir is None:
            raise ChaosBrokerError("the chaos broker is not started")
        return self._dir

    @property
    def pid_file(self) -> Path:
        """The file in which the node writes its OS pid."""
        return self.directory / "rabbitmq.pid"

    @property
    def log_file(self) -> Path:
        """The node's main log file."""
        return self.directory / "log" / f"{self.nodename}.log"

    @property
    def os_pid(self) -> int | None:
        """The pid of this node's `beam.smp`, or None when it is not running.

        Read from the pid file; before the node has written it (early in boot), found by scanning /proc.
        Only a pid whose environment names this node is ever returned, so callers can signal it safely.
        """
        if self._dir is None:
            return None
        try:
            pid = int(self.pid_file.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and self._is_this_node(pid):
            return pid
        return next((p for p in self._scan_beams() if self._is_this_node(p)), None)

    def _is_this_node(self, pid: int) -> bool:
        """Whether `pid` is a live process whose environment names this node (never the shared one)."""
        if not _pid_alive(pid):
            return False
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"RABBITMQ_NODENAME={self.nodename}".encode() in environ

    @staticmethod
    def _scan_beams() -> list[int]:
        """The pids of every `beam.smp` process (to be filtered by `_is_this_node`)."""
        pids: list[int] = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if (entry / "comm").read_text(encoding="ascii", errors="replace").strip() == "beam.smp":
                        pids.append(int(entry.name))
        return pids

    def start(self) -> float:
        """Create the directory, start the node and wait until an AMQP connection succeeds.

        Returns:
            Seconds from launch until AMQP answered.

        Raises:
            ChaosBrokerError: when the node does not answer within the start timeout (it is then stopped).
        """
        if self._dir is not None:
            raise ChaosBrokerError("the chaos broker is already started")
        self._dir = Path(tempfile.mkdtemp(prefix="igb-chaos-"))
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._write_files()
            self.timings["start"] = self._launch()
        except BaseException:
            self.stop()
            raise
        return self.timings["start"]

    def restart_after_kill(self) -> float:
        """Start the node again on the same directory and ports, e.g. after `kill9`.

        Returns:
            Seconds from launch until AMQP answered.

        Raises:
            ChaosBrokerError: when the node is still running, or does not come back in time.
        """
        if self.os_pid is not None:
            raise ChaosBrokerError(f"{self.nodename} is still running; kill9() or stop_app() it first")
        self.pid_file.unlink(missing_ok=True)
        self.timings["restart_after_kill"] = self._launch()
        return self.timings["restart_after_kill"]

    def stop(self) -> None:
        """Stop the node (kill -9 if it does not stop) and delete its directory; safe to call twice."""
        if self._dir is None:
            return
        started = time.monotonic()
        try:
            pid = self.os_pid
            if pid is not None:
                if self._paused:
                    os.kill(pid, signal.SIGCONT)
                    self._paused = False
                with contextlib.suppress(ChaosBrokerError, subprocess.TimeoutExpired):
                    self.ctl("stop", str(self.pid_file), timeout=_STOP_TIMEOUT_S)
                if self.os_pid is not None:
                    self.kill9()
        finally:
            self._sweep()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self.timings["stop"] = time.monotonic() - started
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False

    def _sweep(self, settle_s: float = 2.0) -> None:
        """SIGKILL any beam of this node still alive, for ``settle_s``: a node caught mid-boot has no pid file
        yet and would outlive a plain stop (one was found running after a test run, its directory deleted)."""
        deadline = time.monotonic() + settle_s
        while True:
            for pid in self._scan_beams():
                if self._is_this_node(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.2)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def ctl(self, *args: str, timeout: float = _CTL_TIMEOUT_S) -> str:
        """Run `rabbitmqctl -n <this node> ARGS` as the rabbitmq user.

        Args:
            *args: the command and its arguments, e.g. `("set_vm_memory_high_watermark", "0.0001")`.
            timeout: seconds before the call is abandoned.

        Returns:
            The command's standard output.

        Raises:
            ChaosBrokerError: when rabbitmqctl exits non-zero.
        """
        argv = _as_rabbitmq([str(self._ctl), "-n", self.nodename, *args])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self._base_env(), check=False)
        if done.returncode != 0:
            raise ChaosBrokerError(
                f"rabbitmqctl {' '.join(args)} on {self.nodename} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    def stop_app(self) -> None:
        """Stop the RabbitMQ application; the Erlang node keeps running and AMQP is refused."""
        self.ctl("stop_app")

    def start_app(self) -> float:
        """Start the RabbitMQ application again and wait until AMQP answers.

        Returns:
            Seconds until AMQP answered.
        """
        started = time.monotonic()
        self.ctl("start_app")
        self.wait_for_amqp(started)
        self.timings["start_app"] = time.monotonic() - started
        return self.timings["start_app"]

    def close_all_connections(self, reason: str = "chaos test") -> None:
        """Close every client connection in every vhost (clients get 320 CONNECTION_FORCED).

        Args:
            reason: the explanation sent to clients.
        """
        self.ctl("close_all_connections", "--global", reason)

    def kill9(self) -> int:
        """SIGKILL this node's beam process (only this node's) and wait until it has released its ports.

        Caution, checked on 3.10.8 (Ra 2.2.0): Ra keeps a quorum queue's name→UID registration in a DETS
        table saved to disk only after 500 ms without writes (`auto_save`). A quorum queue declared less
        than that before a kill -9 comes back as a *new, empty* member (its confirmed messages stay in the
        old, orphaned Ra directory) and may never elect a leader. Declare queues, wait a second, then kill;
        messages confirmed right up to the kill are safe.

        Returns:
            The pid that was killed.

        Raises:
            ChaosBrokerError: when the node is not running, or survives SIGKILL for 10 s.
        """
        pid = self.os_pid
        if pid is None:
            raise ChaosBrokerError(f"{self.nodename} is not running")
        os.kill(pid, signal.SIGKILL)
        self._paused = False
        self._wait_gone(pid)
        return pid

    def pause(self) -> None:
        """SIGSTOP the node: sockets stay open but nothing answers (a hung broker, R5)."""
        pid = self.os_pid
        if pid is None:
            raise ChaosBrokerError(f"{self.nodename} is not running")
        os.kill(pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a node paused by `pause`."""
        pid = self.os_pid
        if pid is None:
            raise ChaosBrokerError(f"{self.nodename} is not running")
        os.kill(pid, signal.SIGCONT)
        self._paused = False

    def amqp_ok(self, timeout: float = 2.0) -> bool:
        """Whether an AMQP connection to the node opens now.

        Args:
            timeout: socket and handshake timeout in seconds.

        Returns:
            True if a connection opened (it is closed again at once).
        """
        params = pika.ConnectionParameters(
            host="127.0.0.1",
            port=self.port,
            credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1,
            socket_timeout=timeout,
            stack_timeout=timeout * 2,
            blocked_connection_timeout=timeout,
        )
        try:
            pika.BlockingConnection(params).close()
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError):
            return False  # refused, reset, or (node paused) a handshake timeout
        return True

    def wait_for_amqp(self, since: float | None = None) -> None:
        """Wait until an AMQP connection succeeds.

        Args:
            since: a `time.monotonic()` value the start timeout counts from; now if None.

        Raises:
            ChaosBrokerError: on timeout, or at once if the node died.
        """
        deadline = (since if since is not None else time.monotonic()) + self._start_timeout_s
        launched = time.monotonic()
        while True:
            if _port_open(self.port) and self.amqp_ok():
                return
            # The pid file appears a second or so into boot; if it names a dead process, boot failed.
            if self.pid_file.exists() and self.os_pid is None and time.monotonic() - launched > 2.0:
                raise ChaosBrokerError(f"{self.nodename} died while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ChaosBrokerError(
                    f"{self.nodename} did not accept AMQP on port {self.port} within "
                    f"{self._start_timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the node's log and of the server script's output, for error messages.

        Args:
            lines: how many lines of each.

        Returns:
            The text, or a note that there is none.
        """
        parts: list[str] = []
        for path in (self.directory / "server.out", self.log_file):
            with contextlib.suppress(OSError):
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts) or "(no log output)"

    @staticmethod
    def _base_env() -> dict[str, str]:
        """A clean environment: nothing from the caller's RABBITMQ_* or ERL_* leaks into the node or CLI."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": pwd.getpwnam(RABBITMQ_USER).pw_dir,
        }

    def _node_env(self) -> dict[str, str]:
        """The RABBITMQ_* variables that make this node private (they override /etc/rabbitmq/*)."""
        base = self.directory
        return {
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),  # the node appends ".conf"
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }

    def _write_files(self) -> None:
        """Write the config, an empty plugin list, and hand the directory to the rabbitmq user."""
        base = self.directory
        lines = [
            "# private chaos node: written by tests/chaos_broker.py",
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = info",
        ]
        lines += [f"{key} = {value}" for key, value in self._config.items()]
        (base / "rabbitmq.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (base / "enabled_plugins").write_text("[].\n", encoding="utf-8")
        if os.geteuid() == 0:
            user = pwd.getpwnam(RABBITMQ_USER)
            for path in (base, *base.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)

    def _wait_gone(self, pid: int, timeout: float = 30.0) -> None:
        """Wait until a killed node has released its ports.

        A SIGKILLed beam turns into a zombie at once, but its threads take a while to exit and its
        listening sockets (AMQP, distribution) and epmd registration stay open until the last one has:
        a restart before that fails or finds the old name still registered.

        Args:
            pid: the killed beam's pid.
            timeout: seconds to wait.

        Raises:
            ChaosBrokerError: when the process or its listeners outlive the timeout.
        """
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) or _port_open(self.port) or _port_open(self.dist_port):
            if time.monotonic() > deadline:
                raise ChaosBrokerError(
                    f"{self.nodename} (pid {pid}) still holds its ports {timeout:.0f} s after SIGKILL"
                )
            time.sleep(0.05)

    def _launch(self) -> float:
        """Run `rabbitmq-server -detached` as rabbitmq and wait for AMQP.

        Returns:
            Seconds from launch until AMQP answered.
        """
        if _port_open(self.port):
            raise ChaosBrokerError(f"port {self.port} is already in use; pick another")
        started = time.monotonic()
        argv = _as_rabbitmq(
            ["env", *(f"{k}={v}" for k, v in self._node_env().items()), str(SERVER_SCRIPT), "-detached"]
        )
        # The detached node inherits the script's stdout/stderr: send them to a file, never to a pipe we
        # would wait on.
        with (self.directory / "server.out").open("ab") as out:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._base_env(),
                timeout=_CTL_TIMEOUT_S,
                check=False,
            )
        if done.returncode != 0:
            raise ChaosBrokerError(f"rabbitmq-server exited {done.returncode}:\n{self.log_tail()}")
        self.wait_for_amqp(started)
        return time.monotonic() - started


@pytest.fixture
def chaos_broker() -> Iterator[ChaosBroker]:
    """A started private RabbitMQ node for one test; stopped and deleted afterwards, even on failure.

    Function-scoped on purpose: a test may kill the node, so no two tests share one. Expose it to all tests
    with `pytest_plugins = ["chaos_broker"]` in tests/conftest.py.
    """
    broker = ChaosBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
