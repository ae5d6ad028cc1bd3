"""``igate-bus check``: every broken config is reported as ``FILE:LINE: route NAME: FIELD: message``, exit 2.

Each test writes a config folder into ``tmp_path`` and runs the installed CLI as a subprocess, so what is
tested is what an integrator sees, including that no traceback escapes. The base config is the diagnostic
``bus-ping`` route (``builtin.ping`` adapter → ``noop.send``), which needs no external system; each test
breaks one thing and asserts the exact problem line, whose line number is found from the text it wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from config.loader import ConfigInvalid, ConfigProblem, load_config
from config.settings import DEFAULT_CONFIG_DIR
from routes.model import binding_matches
from schemas.events import EVENT_PAYLOADS

BASE_ROUTES = textwrap.dedent("""\
    # a comment, so that lines and list items do not start at 1
    routes:
      - name: bus-ping
        from:
          exchange: igate.events
          events: [bus.ping]
        adapter: builtin.ping
        to: noop.send
        emits: bus.pong
        retry:
          backoff: [5s, 30s]
          max_attempts: 3
""")

BASE_CONNECTORS = textwrap.dedent("""\
    connectors:
      noop:
        type: noop
        credentials:
          token: IGATE_BUS_NOOP_TOKEN
""")


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "igate-bus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bus.cli"]


@dataclass
class Run:
    """The outcome of one ``igate-bus check``."""

    code: int
    lines: list[str]
    stderr: str


@dataclass
class ConfigDir:
    """A config folder in tmp_path, with helpers to find the line of a piece of text in each file."""

    path: Path
    routes_text: str
    connectors_text: str

    @property
    def routes(self) -> Path:
        """The routes.yaml written."""
        return self.path / "routes.yaml"

    @property
    def connectors(self) -> Path:
        """The connectors.yaml written."""
        return self.path / "connectors.yaml"

    def line(self, needle: str, *, occurrence: int = 1, connectors: bool = False) -> int:
        """The 1-based line holding the ``occurrence``-th appearance of ``needle`` in the file."""
        text = self.connectors_text if connectors else self.routes_text
        hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
        assert len(hits) >= occurrence, f"{needle!r} is not in the test's YAML {occurrence} time(s)"
        return hits[occurrence - 1]

    def check(self) -> Run:
        """Run the installed CLI on this folder."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("IGATE_BUS_")}
        proc = subprocess.run(
            [*_cli(), "check", "--config", str(self.path)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return Run(proc.returncode, proc.stdout.splitlines(), proc.stderr)


WriteConfig = Callable[..., "ConfigDir"]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write routes.yaml and connectors.yaml into a fresh folder; the base files by default."""

    def write(routes: str = BASE_ROUTES, connectors: str = BASE_CONNECTORS) -> ConfigDir:
        routes_text, connectors_text = routes, connectors
        folder = tmp_path / "config"
        folder.mkdir()
        (folder / "routes.yaml").write_text(routes_text, encoding="utf-8")
        (folder / "connectors.yaml").write_text(connectors_text, encoding="utf-8")
        return ConfigDir(folder, routes_text, connectors_text)

    return write


def _only_problem(run: Run) -> str:
    assert run.code == 2, (run.code, run.lines, run.stderr)
    assert len(run.lines) == 1, run.lines
    return run.lines[0]


class TestValidConfig:
    """The base config of these tests and the shipped defaults pass."""

    def test_base_config_passes(self, write_config: WriteConfig) -> None:
        """The unbroken base config is accepted, so every failure below is caused by the one thing broken."""
        run = write_config().check()
        assert (run.code, run.lines) == (0, ["ok: 1 route, 1 connector"])

    def test_shipped_config_passes(self) -> None:
        """config/routes.yaml and config/connectors.yaml, as shipped, validate against the real registries."""
        cfg = ConfigDir(DEFAULT_CONFIG_DIR, "", "")
        run = cfg.check()
        shipped = yaml.safe_load((DEFAULT_CONFIG_DIR / "routes.yaml").read_text(encoding="utf-8"))
        connectors = yaml.safe_load((DEFAULT_CONFIG_DIR / "connectors.yaml").read_text(encoding="utf-8"))
        # counted from the files (a new system's routes must not edit this test), and at least what shipped
        routes, conns = len(shipped["routes"]), len(connectors["connectors"])
        assert routes >= 24 and conns >= 5
        assert (run.code, run.lines, run.stderr) == (0, [f"ok: {routes} routes, {conns} connectors"], "")


class TestYamlProblems:
    """What the YAML reader itself refuses: syntax and duplicate keys."""

    def test_bad_yaml_syntax(self, write_config: WriteConfig) -> None:
        """An unclosed flow list is reported on the line where the parser gave up, with the context's line."""
        cfg = write_config(BASE_ROUTES.replace("events: [bus.ping]", "events: [bus.ping"))
        line = _only_problem(cfg.check())
        expected = (
            f"{cfg.routes}:{cfg.line('adapter: builtin.ping')}: invalid YAML: "
            "expected ',' or ']', but got ':' "
            f"(while parsing a flow sequence on line {cfg.line('events: [bus.ping')})"
        )
        assert line == expected

    def test_duplicate_key(self, write_config: WriteConfig) -> None:
        """A key given twice is refused with both lines (YAML would silently keep one)."""
        cfg = write_config(BASE_ROUTES.replace("    to: noop.send\n", "    to: noop.send\n    adapter: builtin.x\n"))
        first, again = cfg.line("adapter: builtin.ping"), cfg.line("adapter: builtin.x")
        line = _only_problem(cfg.check())
        assert line.startswith(f"{cfg.routes}:{again}: route bus-ping: adapter: duplicate key 'adapter'")
        assert f"also on line {first}" in line

    def test_top_level_must_be_a_mapping(self, write_config: WriteConfig) -> None:
        """A file that is a list rather than ``routes:`` says what was expected."""
        cfg = write_config("- name: bus-ping\n")
        assert _only_problem(cfg.check()) == (f"{cfg.routes}:1: expected a mapping with `routes:` at the top, got list")


class TestShapeProblems:
    """What the YAML models refuse, placed on the deepest line that exists."""

    def test_unknown_route_field_with_did_you_mean(self, write_config: WriteConfig) -> None:
        """A misspelt field is unknown, and the closest real field is offered."""
        cfg = write_config(BASE_ROUTES.replace("    retry:\n", "    retyr:\n"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('retyr:')}: route bus-ping: retyr: unknown field (did you mean retry?)"
        )

    def test_unknown_field_without_close_match_lists_fields(self, write_config: WriteConfig) -> None:
        """A field nothing like a real one gets the list of known fields instead of a guess."""
        cfg = write_config(BASE_ROUTES.replace("    emits: bus.pong\n", "    colour: blue\n"))
        line = _only_problem(cfg.check())
        assert line.startswith(f"{cfg.routes}:{cfg.line('colour')}: route bus-ping: colour: unknown field; known")
        assert "adapter" in line.split("known fields:")[1]

    def test_missing_required_field_to(self, write_config: WriteConfig) -> None:
        """A route without ``to`` is reported on the route's first line, naming the missing field."""
        cfg = write_config(BASE_ROUTES.replace("    to: noop.send\n", ""))
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('- name: bus-ping')}: route bus-ping: to: required field is missing"
        )

    def test_bad_duration(self, write_config: WriteConfig) -> None:
        """``5 sec`` is not a duration; the problem names the list item."""
        cfg = write_config(BASE_ROUTES.replace("backoff: [5s, 30s]", "backoff: [5s, 5 sec]"))
        line = _only_problem(cfg.check())
        assert line.startswith(f"{cfg.routes}:{cfg.line('backoff:')}: route bus-ping: retry.backoff[1]: '5 sec' ")
        assert "not a duration" in line

    def test_bad_binding_key(self, write_config: WriteConfig) -> None:
        """A binding key with a space and capitals is refused with what a binding key looks like."""
        cfg = write_config(
            BASE_ROUTES.replace("      events: [bus.ping]\n", "      events:\n        - bus.ping\n        - Bus Ping\n")
        )
        line = _only_problem(cfg.check())
        assert line.startswith(
            f"{cfg.routes}:{cfg.line('- Bus Ping')}: route bus-ping: from.events[1]: 'Bus Ping' is not a binding key"
        )

    def test_invalid_jmespath_in_when(self, write_config: WriteConfig) -> None:
        """A ``when`` that does not parse as JMESPath is refused at load, not at the first message."""
        cfg = write_config(
            BASE_ROUTES.replace("    emits: bus.pong\n", "    emits: bus.pong\n    when: 'payload.seq >'\n")
        )
        line = _only_problem(cfg.check())
        assert line.startswith(f"{cfg.routes}:{cfg.line('when:')}: route bus-ping: when: JMESPath does not parse")

    def test_unknown_exchange_with_did_you_mean(self, write_config: WriteConfig) -> None:
        """An exchange name one letter off is refused with the real one offered."""
        cfg = write_config(BASE_ROUTES.replace("exchange: igate.events", "exchange: igate.event"))
        line = _only_problem(cfg.check())
        assert line.startswith(f"{cfg.routes}:{cfg.line('exchange:')}: route bus-ping: from.exchange: 'igate.event'")
        assert line.endswith("(did you mean igate.events?)")

    def test_bad_env_var_name_in_credentials(self, write_config: WriteConfig) -> None:
        """A credential must name an environment variable; the problem points at that entry's line."""
        cfg = write_config(connectors=BASE_CONNECTORS.replace("IGATE_BUS_NOOP_TOKEN", "noop-token"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.connectors}:{cfg.line('token:', connectors=True)}: connector noop: credentials.token: "
            "must name an environment variable (A-Z, 0-9, _) (got 'noop-token')"
        )


class TestRegistryProblems:
    """What only the registries know: adapters, connectors, operations, event types."""

    def test_unknown_adapter(self, write_config: WriteConfig) -> None:
        """An adapter name one letter off is unknown, and the registered one is offered."""
        cfg = write_config(BASE_ROUTES.replace("adapter: builtin.ping", "adapter: builtin.pong"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('adapter:')}: route bus-ping: adapter: unknown adapter 'builtin.pong' "
            "(did you mean builtin.ping?)"
        )

    def test_unknown_connector(self, write_config: WriteConfig) -> None:
        """``to`` naming a connector not in connectors.yaml is refused, offering the declared one."""
        cfg = write_config(BASE_ROUTES.replace("to: noop.send", "to: nop.send"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('to: nop.send')}: route bus-ping: to: unknown connector 'nop' "
            "(connectors are declared in connectors.yaml) (did you mean noop?)"
        )

    def test_unknown_operation(self, write_config: WriteConfig) -> None:
        """``to`` naming an operation the connector's type lacks is refused, offering the real one."""
        cfg = write_config(BASE_ROUTES.replace("to: noop.send", "to: noop.sned"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('to: noop.sned')}: route bus-ping: to: unknown operation 'sned' "
            "for connector noop (type noop) (did you mean send?)"
        )

    def test_unknown_connector_type(self, write_config: WriteConfig) -> None:
        """A connector ``type`` that is not registered is refused in connectors.yaml, offering the closest."""
        cfg = write_config(connectors=BASE_CONNECTORS.replace("type: noop", "type: noopp"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.connectors}:{cfg.line('type:', connectors=True)}: connector noop: type: "
            "unknown connector type 'noopp' (did you mean noop?)"
        )

    def test_duplicate_route_name(self, write_config: WriteConfig) -> None:
        """Two routes with one name would share queues; the second is refused, naming the first's line."""
        second = BASE_ROUTES.split("routes:\n", 1)[1]
        cfg = write_config(BASE_ROUTES + second)
        first, again = cfg.line("- name: bus-ping"), cfg.line("- name: bus-ping", occurrence=2)
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{again}: route bus-ping: name: duplicate route name (first on line {first})"
        )

    def test_single_consumer_needs_one_thread(self, write_config: WriteConfig) -> None:
        """One consumer with several threads would not keep the queue's order: refused, saying the count."""
        routes = BASE_ROUTES + "    concurrency: 4\n    single_consumer: true\n"
        cfg = write_config(routes)
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('single_consumer:')}: route bus-ping: single_consumer: "
            "single_consumer keeps the queue's order only with concurrency: 1 (it is 4)"
        )

    def test_unreachable_route(self, write_config: WriteConfig) -> None:
        """A key matching no known event type makes the route unreachable; the close type is offered."""
        cfg = write_config(BASE_ROUTES.replace("events: [bus.ping]", "events: [bus.pingg]"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('events:')}: route bus-ping: from.events[0]: "
            "unreachable route: binds no known event type ('bus.pingg') (did you mean bus.ping?)"
        )

    def test_unreachable_wildcard(self, write_config: WriteConfig) -> None:
        """A wildcard key is matched with AMQP topic rules: ``nosuch.#`` matches nothing known."""
        cfg = write_config(BASE_ROUTES.replace("events: [bus.ping]", "events: ['nosuch.#']"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('events:')}: route bus-ping: from.events[0]: "
            "unreachable route: binds no known event type ('nosuch.#')"
        )

    def test_adapter_operation_model_mismatch(self, write_config: WriteConfig) -> None:
        """An adapter producing one model routed to an operation taking another is refused."""
        routes = BASE_ROUTES.replace("events: [bus.ping]", "events: [dossier.received]").replace(
            "adapter: builtin.ping", "adapter: igate_ack.dossier_received"
        )
        cfg = write_config(routes)
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('adapter:')}: route bus-ping: adapter: "
            "adapter igate_ack.dossier_received produces AddNoteRequest, but noop.send takes NoopRequest"
        )

    def test_adapter_does_not_accept_bound_event(self, write_config: WriteConfig) -> None:
        """``bus.*`` also binds ``bus.pong`` (and the bus's other events), which the ping adapter cannot map:
        refused before it arrives, naming every type it refuses."""
        cfg = write_config(BASE_ROUTES.replace("events: [bus.ping]", "events: ['bus.*']"))
        # bus.tick is never delivered through a binding (only the scheduler publishes it, into the route's queue)
        refused = sorted(t for t in EVENT_PAYLOADS if t.startswith("bus.") and t not in {"bus.ping", "bus.tick"})
        assert "bus.pong" in refused
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('events:')}: route bus-ping: from.events[0]: "
            f"adapter builtin.ping does not accept {', '.join(refused)} (it accepts bus.ping)"
        )

    def test_unknown_emits(self, write_config: WriteConfig) -> None:
        """``emits`` must be a known event type, or nothing could parse the result."""
        cfg = write_config(BASE_ROUTES.replace("emits: bus.pong", "emits: bus.pongg"))
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('emits:')}: route bus-ping: emits: unknown event type 'bus.pongg' "
            "(did you mean bus.pong?)"
        )

    def test_result_route_loop(self, write_config: WriteConfig) -> None:
        """A route on bus.results that binds its own result would feed itself forever."""
        routes = BASE_ROUTES.replace("exchange: igate.events", "exchange: bus.results").replace(
            "emits: bus.pong", "emits: bus.ping"
        )
        cfg = write_config(routes)
        assert _only_problem(cfg.check()) == (
            f"{cfg.routes}:{cfg.line('emits:')}: route bus-ping: emits: loop: the route emits bus.ping on "
            "bus.results and binds it there (bus.ping)"
        )

    def test_backoff_longer_than_a_day(self, write_config: WriteConfig) -> None:
        """A delay over one day is refused: such a message belongs in the DLQ, replayed by hand."""
        cfg = write_config(BASE_ROUTES.replace("backoff: [5s, 30s]", "backoff: [5s, 2d]"))
        line = _only_problem(cfg.check())
        assert line.startswith(f"{cfg.routes}:{cfg.line('backoff:')}: route bus-ping: retry.backoff[1]: 172800s")


class TestReporting:
    """How problems are gathered and printed."""

    def test_every_problem_reported_sorted_by_file_and_line(self, write_config: WriteConfig) -> None:
        """Problems in both files are all reported in one run, sorted by file, then line."""
        routes = BASE_ROUTES.replace("    retry:\n", "    retyr:\n").replace("to: noop.send", "to: noop.sned")
        cfg = write_config(routes, BASE_CONNECTORS.replace("IGATE_BUS_NOOP_TOKEN", "lower"))
        run = cfg.check()
        assert run.code == 2
        # The shape problems stop routes.yaml before the registry checks, so `to` is not reported yet.
        assert [line.split(": ", 1)[0] for line in run.lines] == [
            f"{cfg.connectors}:{cfg.line('token:', connectors=True)}",
            f"{cfg.routes}:{cfg.line('retyr:')}",
        ]

    def test_missing_file(self, write_config: WriteConfig) -> None:
        """A missing connectors.yaml is one line naming the file, never a traceback."""
        cfg = write_config()
        cfg.connectors.unlink()
        run = cfg.check()
        assert (run.code, run.lines) == (2, [f"{cfg.connectors}: cannot read: No such file or directory"])

    def test_problem_format_omits_what_does_not_apply(self) -> None:
        """``format()`` leaves out route, connector, field and hint when they are not set."""
        bare = ConfigProblem(Path("c/routes.yaml"), 3, None, "", "invalid YAML: x")
        full = ConfigProblem(Path("c/routes.yaml"), 7, "bus-ack", "retyr", "unknown field", "retry")
        conn = ConfigProblem(Path("c/connectors.yaml"), 2, None, "type", "unknown", None, connector="igate")
        assert bare.format() == "c/routes.yaml:3: invalid YAML: x"
        assert full.format() == "c/routes.yaml:7: route bus-ack: retyr: unknown field (did you mean retry?)"
        assert conn.format() == "c/connectors.yaml:2: connector igate: type: unknown"


class TestLoaderEdges:
    """The YAML reader in process: hostile or unusual input gives problems, never hangs or tracebacks."""

    def _problems(self, folder: Path, routes: bytes) -> list[str]:
        (folder / "routes.yaml").write_bytes(routes)
        (folder / "connectors.yaml").write_text(BASE_CONNECTORS, encoding="utf-8")
        with pytest.raises(ConfigInvalid) as caught:
            load_config(folder)
        return [p.format() for p in caught.value.problems]

    def test_alias_bomb_is_refused(self, tmp_path: Path) -> None:
        """Aliases that would expand to millions of nodes stop the reader instead of exhausting memory."""
        levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
        problems = self._problems(tmp_path, "\n".join(levels).encode())
        assert len(problems) == 1
        assert "YAML nodes (an alias expanding too far?)" in problems[0]

    def test_merge_key_errors_point_at_the_anchor(self, tmp_path: Path) -> None:
        """A bad value merged in with ``<<`` is reported on the line where the anchor defines it."""
        routes = BASE_ROUTES.replace("  - name: bus-ping\n", "  - &base\n    name: bus-ping\n").replace(
            "max_attempts: 3", "max_attempts: 0"
        )
        routes += "  - <<: *base\n    name: bus-ping-2\n"
        problems = self._problems(tmp_path, routes.encode())
        line = routes.splitlines().index("      max_attempts: 0") + 1
        message = "retry.max_attempts: Input should be greater than or equal to 1 (got 0)"
        assert problems == [
            f"{tmp_path / 'routes.yaml'}:{line}: route bus-ping: {message}",
            f"{tmp_path / 'routes.yaml'}:{line}: route bus-ping-2: {message}",
        ]

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A Latin-1 file (an editor's default on some desktops) is refused on the line of the bad byte."""
        problems = self._problems(tmp_path, "routes:\n  - name: café\n".encode("latin-1"))
        assert problems == [f"{tmp_path / 'routes.yaml'}:2: not UTF-8: byte 0xe9"]


class TestBindingMatches:
    """AMQP topic semantics used to decide which event types a binding key reaches."""

    @pytest.mark.parametrize(
        ("key", "event_type", "expected"),
        [
            ("dossier.received", "dossier.received", True),
            ("dossier.*", "dossier.received", True),
            ("dossier.*", "dossier.received.late", False),
            ("dossier.#", "dossier", True),
            ("dossier.#", "dossier.received.late", True),
            ("#", "bus.ping", True),
            ("#.issued", "receipt.issued", True),
            ("*.issued", "receipt.issued.again", False),
            ("bus.ping", "bus.pong", False),
        ],
    )
    def test_topic_rules(self, key: str, event_type: str, expected: bool) -> None:
        """``*`` is exactly one word, ``#`` any number of words (zero included)."""
        assert binding_matches(key, event_type) is expected
