"""One strict parser for every duration the bus reads: routes.yaml, connectors.yaml, the environment, options.

A duration without a unit (``5``, ``probe_interval: 5``) reads as seconds to one person and milliseconds to
the next, and ``3 s`` splits unpredictably in YAML and shells: both are refused everywhere, each error
naming the file and line (or the variable, or the option) and the field. The last test finds every
duration-like field of the config and settings models and feeds it a bare number, so a duration added later
as a plain ``float`` fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from test_config_check import BASE_CONNECTORS, BASE_ROUTES

from bus.ingress import IngressSettings
from config.loader import ConfigInvalid, load_config
from config.model import ConnectorsFile, RoutesFile, format_duration, parse_duration
from config.settings import Settings, load_settings
from routes.model import check_config
from schemas.errors import ConfigError

#: the valid config of test_config_check.py, with every duration of a connector spelt out
ROUTES = BASE_ROUTES
CONNECTORS = BASE_CONNECTORS + textwrap.indent(
    "timeout: {connect: 3s, read: 10s, total: 15s}\nbreaker: {fail_max: 5, reset_timeout: 15s}\nprobe_interval: 30s\n",
    "    ",
)


def _line(text: str, needle: str) -> int:
    """The 1-based line of ``needle`` in ``text``."""
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


#: a field whose name says it holds a time
DURATION_NAME = re.compile(
    r"(^|_)(timeout|interval|backoff|lease|probe|window|delay|ttl|after|heartbeat|connect|read|total|age)(_|$)"
)


class TestParser:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("500ms", 0.5), ("5s", 5.0), ("1.5m", 90.0), ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), (" 5s ", 5.0)],
    )
    def test_a_number_with_its_unit_is_seconds(self, text: str, seconds: float) -> None:
        """The units the README lists, fractions allowed, surrounding blanks ignored."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize(
        ("value", "words"),
        [
            (5, "5 has no unit"),
            (5.0, "5.0 has no unit"),
            ("5", "'5' has no unit"),
            ("0.5", "'0.5' has no unit"),
            ("3 s", "write the unit right after the number, e.g. 3s"),
            ("every", "is not a duration"),
            ("5 sec", "is not a duration"),
            ("5S", "is not a duration"),
            ("1h30m", "is not a duration"),
            ("1e3s", "is not a duration"),
            ("-1s", "is not a duration"),
            ("0s", "must be more than 0"),
            ("31d", "at most 720h"),
            ("9" * 400 + "s", "at most 720h"),
            (True, "is not a duration"),
            (None, "is not a duration"),
            ([5], "is not a duration"),
        ],
    )
    def test_anything_else_is_refused_in_words(self, value: Any, words: str) -> None:
        """A bare number, a spaced unit, an unknown or upper-case unit, zero and absurd lengths are refused."""
        with pytest.raises(ValueError, match=re.escape(words)):
            parse_duration(value)

    def test_code_may_pass_a_timedelta(self) -> None:
        """A timedelta carries its unit, so Python callers pass one instead of a bare float."""
        assert parse_duration(timedelta(minutes=2)) == 120.0

    @pytest.mark.parametrize("seconds", [0.5, 1.5, 5.0, 90.0, 120.0, 3600.0, 86400.0])
    def test_format_duration_is_read_back_by_the_parser(self, seconds: float) -> None:
        """What error messages and retry queue names print is itself a valid duration."""
        assert parse_duration(format_duration(seconds)) == seconds


def _problems(tmp_path: Path, routes: str = ROUTES, connectors: str = CONNECTORS) -> list[str]:
    (tmp_path / "routes.yaml").write_text(routes, encoding="utf-8")
    (tmp_path / "connectors.yaml").write_text(connectors, encoding="utf-8")
    code, lines = check_config(tmp_path)
    assert code == (0 if lines == ["ok: 1 route, 1 connector"] else 2)
    return lines


class TestConfigFiles:
    def test_the_base_config_passes(self, tmp_path: Path) -> None:
        """Every duration below is broken one at a time in a config that is otherwise valid."""
        assert _problems(tmp_path) == ["ok: 1 route, 1 connector"]

    @pytest.mark.parametrize(
        ("old", "new", "key", "where", "words"),
        [
            ("connect: 3s", "connect: 3 s", "timeout:", "connector noop: timeout.connect", "'3 s' is not a duration"),
            ("read: 10s", "read: 10", "timeout:", "connector noop: timeout.read", "10 has no unit"),
            (
                "probe_interval: 30s",
                "probe_interval: 5",
                "probe_interval",
                "connector noop: probe_interval",
                "5 has no",
            ),
            (
                "reset_timeout: 15s",
                "reset_timeout: '15'",
                "breaker:",
                "connector noop: breaker.reset_timeout",
                "no unit",
            ),
        ],
    )
    def test_connectors_yaml(self, tmp_path: Path, old: str, new: str, key: str, where: str, words: str) -> None:
        """connectors.yaml: ``FILE:LINE: connector NAME: FIELD: message``."""
        [problem] = _problems(tmp_path, connectors=CONNECTORS.replace(old, new))
        assert problem.startswith(f"{tmp_path / 'connectors.yaml'}:{_line(CONNECTORS, key)}: {where}: ")
        assert words in problem

    @pytest.mark.parametrize(
        ("new", "field", "words"),
        [("[5s, 30]", "retry.backoff[1]", "30 has no unit"), ("[5 s]", "retry.backoff[0]", "'5 s' is not a duration")],
    )
    def test_routes_yaml_backoff(self, tmp_path: Path, new: str, field: str, words: str) -> None:
        """routes.yaml: ``FILE:LINE: route NAME: FIELD: message`` for a backoff step without its unit."""
        [problem] = _problems(tmp_path, routes=ROUTES.replace("[5s, 30s]", new))
        assert problem.startswith(f"{tmp_path / 'routes.yaml'}:{_line(ROUTES, 'backoff:')}: route bus-ping: {field}: ")
        assert words in problem

    @pytest.mark.parametrize(
        ("schedule", "words"),
        [("{every: 5}", "5 has no unit"), ("{every: 12 h}", "e.g. 12h"), ("{every: 5s, grace: 10}", "10 has no unit")],
    )
    def test_routes_yaml_schedule(self, tmp_path: Path, schedule: str, words: str) -> None:
        """A polling route's ``every`` and ``grace`` take a duration like any other."""
        routes = ROUTES.replace("      events: [bus.ping]\n", f"      schedule: {schedule}\n")
        problems = [p for p in _problems(tmp_path, routes=routes) if "from.schedule." in p]
        assert problems, "the schedule was not checked"
        line = _line(routes, "schedule:")
        assert problems[0].startswith(f"{tmp_path / 'routes.yaml'}:{line}: route bus-ping: from.schedule.")
        assert words in problems[0]

    def test_every_duration_of_the_shipped_config_has_its_unit(self) -> None:
        """The shipped files load with the strict parser (nothing there relied on the old leniency)."""
        loaded = load_config(Path(__file__).resolve().parents[2] / "config")
        assert loaded.connectors.connectors["igate"].timeout.total == 15.0

    def test_a_bad_duration_is_a_config_error_not_a_traceback(self, tmp_path: Path) -> None:
        """load_config (what `run` calls) raises ConfigInvalid with the same line."""
        (tmp_path / "routes.yaml").write_text(ROUTES, encoding="utf-8")
        (tmp_path / "connectors.yaml").write_text(CONNECTORS.replace("30s", "30"), encoding="utf-8")
        line = _line(CONNECTORS, "probe_interval")
        with pytest.raises(
            ConfigInvalid, match=rf"connectors\.yaml:{line}: connector noop: probe_interval: 30 has no unit"
        ):
            load_config(tmp_path)


class TestEnvironment:
    @pytest.mark.parametrize(
        ("variable", "value", "words"),
        [
            ("IGATE_BUS_HEARTBEAT", "15", "'15' has no unit"),
            ("IGATE_BUS_HEARTBEAT", "2m", "2m is too long: at most 1m"),
            ("IGATE_BUS_HEARTBEAT", "1500ms", "must be a whole number of seconds"),
            ("IGATE_BUS_BLOCKED_CONNECTION_TIMEOUT", "10 s", "e.g. 10s"),
        ],
    )
    def test_bus_settings(self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str) -> None:
        """``IGATE_BUS_*`` durations: one line naming the variable and the rule."""
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError) as caught:
            load_settings(Settings)
        assert str(caught.value).startswith(f"environment variable {variable}: ")
        assert words in str(caught.value)
        assert "\n" not in str(caught.value)

    def test_bus_settings_with_units(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With units they are seconds in the code."""
        monkeypatch.setenv("IGATE_BUS_HEARTBEAT", "20s")
        monkeypatch.setenv("IGATE_BUS_BLOCKED_CONNECTION_TIMEOUT", "1m")
        settings = load_settings(Settings)
        assert (settings.heartbeat, settings.blocked_connection_timeout) == (20, 60.0)

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("IGATE_BUS_INGRESS_WINDOW", "300"),
            ("IGATE_BUS_INGRESS_BODY_TIMEOUT", "10"),
            ("IGATE_BUS_INGRESS_REPLAY_TTL", "900"),
            ("IGATE_BUS_INGRESS_PUBLISH_TIMEOUT", "5"),
            ("IGATE_BUS_INGRESS_RETRY_AFTER", "2"),
            ("IGATE_BUS_INGRESS_RECONNECT_DELAY", "0.5"),
        ],
    )
    def test_ingress_settings(self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
        """Every duration of ``igate-bus serve`` is refused without its unit, naming the variable."""
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError, match=rf"^environment variable {variable}: '{re.escape(value)}' has no unit"):
            load_settings(IngressSettings)

    def test_the_cli_reports_a_bad_duration_in_one_line(self, tmp_path: Path) -> None:
        """`igate-bus check` (and every other command) names the variable and exits 2, no traceback."""
        result = subprocess.run(
            [sys.executable, "-m", "bus.cli", "check"],
            env={"PATH": "/usr/bin:/bin", "IGATE_BUS_HEARTBEAT": "15", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        expected = (
            "igate-bus: environment variable IGATE_BUS_HEARTBEAT: '15' has no unit: "
            "use a number with a unit, e.g. 500ms, 5s, 2m, 1h"
        )
        assert result.stderr.strip().splitlines() == [expected]


def _duration_fields(model: type[BaseModel]) -> set[tuple[type[BaseModel], str]]:
    """(model, field) of every field whose name says it holds a time, in nested models too."""
    found = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nested = [a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type)]
        models = [a for a in nested if issubclass(a, BaseModel)]
        if models:
            found |= _duration_fields(models[0])
        elif DURATION_NAME.search(name):
            found.add((model, name))
    return found


#: the roots of every file and setting the bus reads
ROOTS: list[type[BaseModel]] = [RoutesFile, ConnectorsFile, Settings, IngressSettings]
DURATION_FIELDS = sorted(set().union(*(_duration_fields(m) for m in ROOTS)), key=lambda f: (f[0].__name__, f[1]))


def test_the_duration_fields_are_found() -> None:
    """The search below sees the fields this issue named, so an empty search cannot pass silently."""
    names = {f"{m.__name__}.{f}" for m, f in DURATION_FIELDS}
    assert {"TimeoutSpec.connect", "ConnectorSpec.probe_interval", "RetrySpec.backoff", "Settings.heartbeat"} <= names
    assert "IngressSettings.window" in names
    assert len(names) >= 14


@pytest.mark.parametrize(("model", "field"), DURATION_FIELDS, ids=[f"{m.__name__}.{f}" for m, f in DURATION_FIELDS])
def test_every_duration_field_refuses_a_number_without_a_unit(model: type[BaseModel], field: str) -> None:
    """Found by name (timeout, interval, backoff, lease, probe, window, delay, ttl...): ``5`` is refused."""
    with pytest.raises(ValidationError, match="has no unit"):
        model.model_validate({field: [5] if field == "backoff" else 5})
