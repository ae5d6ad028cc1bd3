# mypy: allow-untyped-defs
"""What an integrator runs while writing a route: ``map`` (honest about bindings and ``when``) and ``list``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from busenv import EXAMPLES, env_for
from click.testing import CliRunner

from adapters.registry import adapters
from bus.cli import main
from connectors.base import CONNECTOR_TYPES, connector_type
from routes.model import check_config
from schemas.events import EVENT_PAYLOADS

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config"
#: no broker, no store: map and list must not need them
ENV = env_for("amqp://nobody:nothing@127.0.0.1:1/%2F", "sqlite:///nonexistent/x.db", SHIPPED)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, env: dict[str, str] = ENV) -> Result:
    """``igate-bus ARGS`` in this process (click's runner: exit code, stdout and stderr apart)."""
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def with_when(tmp_path: Path) -> Path:
    """The shipped config plus a route whose `when` skips desk dossiers (channel 1) and one that is disabled."""
    routes = yaml.safe_load((SHIPPED / "routes.yaml").read_text(encoding="utf-8"))
    ack = next(r for r in routes["routes"] if r["name"] == "bus-ack")
    routes["routes"].append({**ack, "name": "ack-online", "when": "channel != `1`"})
    routes["routes"].append({**ack, "name": "ack-off", "enabled": False})
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(routes, allow_unicode=True), encoding="utf-8")
    (tmp_path / "connectors.yaml").write_text((SHIPPED / "connectors.yaml").read_text(encoding="utf-8"))
    return tmp_path


def _event_file(tmp_path: Path, **changes: object) -> Path:
    event = json.loads((EXAMPLES / "dossier.received.json").read_text(encoding="utf-8"))
    event.update(changes)
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event, ensure_ascii=False), encoding="utf-8")
    return path


class TestMap:
    def test_an_event_type_the_route_does_not_bind_is_refused_and_says_what_it_binds(self):
        """bus-ack + dossier.submitted ▶ exit 1, nothing rendered, the message names the type and the bindings."""
        result = cli("map", "--route", "bus-ack", str(EXAMPLES / "dossier.submitted.json"))
        assert result.returncode == 1
        assert result.stdout == ""
        assert "route bus-ack does not bind dossier.submitted (it binds dossier.received on igate.events)" in (
            result.stderr
        )
        assert "--force" in result.stderr

    def test_force_renders_it_marked_as_forced(self):
        """--force ▶ exit 0, a FORCED line before the request, the request itself."""
        result = cli("map", "--route", "bus-ack", str(EXAMPLES / "dossier.submitted.json"), "--force")
        assert result.returncode == 0, result.stderr
        header, forced, *body = result.stdout.splitlines()
        assert header.startswith("# route bus-ack: igate_ack.dossier_received -> igate.add_note")
        assert forced.startswith("# FORCED: route bus-ack does not bind dossier.submitted")
        assert json.loads("\n".join(body))["dossier_code"]

    def test_a_false_when_is_refused_naming_the_condition(self, with_when, tmp_path):
        """channel 1 (at the desk) on a route with `channel != 1` ▶ exit 1, 'when' named; channel 2 ▶ rendered."""
        env = {**ENV, "IGATE_BUS_CONFIG_DIR": str(with_when)}
        desk = cli("map", "--route", "ack-online", str(_event_file(tmp_path, channel=1)), env=env)
        assert desk.returncode == 1
        assert "route ack-online skips this event: its when (channel != `1`) is false for it" in desk.stderr
        online = cli("map", "--route", "ack-online", str(_event_file(tmp_path, channel=2)), env=env)
        assert online.returncode == 0, online.stderr
        assert "FORCED" not in online.stdout
        forced = cli("map", "--route", "ack-online", str(_event_file(tmp_path, channel=1)), "--force", env=env)
        assert forced.returncode == 0 and "# FORCED: route ack-online skips this event" in forced.stdout

    def test_a_disabled_route_is_refused(self, with_when):
        """enabled: false ▶ the worker runs no consumer for it: exit 1."""
        env = {**ENV, "IGATE_BUS_CONFIG_DIR": str(with_when)}
        result = cli("map", "--route", "ack-off", str(EXAMPLES / "dossier.received.json"), env=env)
        assert result.returncode == 1 and "route ack-off is disabled" in result.stderr

    def test_every_shipped_route_maps_its_own_example(self):
        """Every shipped route with an example of a type it binds renders it, without FORCED (no false refusals)."""
        routes = yaml.safe_load((SHIPPED / "routes.yaml").read_text(encoding="utf-8"))["routes"]
        tried = 0
        for route in routes:
            for key in route["from"].get("events", []):
                example = EXAMPLES / f"{key}.json"
                if (
                    "*" in key
                    or "#" in key
                    or not example.exists()
                    or route.get("when")
                    or route.get("enabled") is False
                ):
                    continue
                result = cli("map", "--route", route["name"], str(example))
                assert result.returncode == 0, (route["name"], key, result.stderr)
                assert "FORCED" not in result.stdout
                tried += 1
                break
        assert tried >= 15, tried


class TestList:
    def json_of(self, kind: str) -> list[dict[str, object]]:
        result = cli("list", kind, "--json")
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, object]] = json.loads(result.stdout)
        return rows

    def test_adapters_are_the_registry_check_resolves_against(self):
        """Names, accepted types and produced models equal adapters/registry.py; each has a doc line."""
        rows = {r["name"]: r for r in self.json_of("adapters")}
        registry = adapters()
        assert set(rows) == set(registry)
        for name, a in registry.items():
            assert rows[name]["accepts"] == ", ".join(sorted(a.accepts))
            assert rows[name]["produces"] == a.produces.__name__
            assert rows[name]["doc"], f"adapter {name} has no docstring"
        shipped = yaml.safe_load((SHIPPED / "routes.yaml").read_text(encoding="utf-8"))["routes"]
        assert {r["adapter"] for r in shipped} <= set(rows)

    def test_operations_cover_every_connector_type_and_every_shipped_to(self):
        """type.operation for every OPERATIONS entry, request -> reply; every `to:` of the shipped routes is there."""
        rows = {r["name"]: r for r in self.json_of("operations")}
        expected = {f"{t}.{op}" for t in CONNECTOR_TYPES for op in connector_type(t).OPERATIONS}
        assert set(rows) == expected
        assert rows["igate.add_note"]["request"] == "AddNoteRequest"
        assert rows["igate.get_dossier"]["effect"] is False
        types = {
            n: c["type"] for n, c in yaml.safe_load((SHIPPED / "connectors.yaml").read_text())["connectors"].items()
        }
        for route in yaml.safe_load((SHIPPED / "routes.yaml").read_text(encoding="utf-8"))["routes"]:
            connector, op = route["to"].split(".")
            assert f"{types[connector]}.{op}" in rows, route["to"]

    def test_events_and_connectors(self):
        """Every event type with its payload model; every connector type with its operations and users."""
        events = {r["name"]: r for r in self.json_of("events")}
        assert set(events) == set(EVENT_PAYLOADS)
        assert events["dossier.received"]["payload"] == EVENT_PAYLOADS["dossier.received"].__name__
        assert "igate.events" in str(events["dossier.received"]["origin"])
        connectors = {r["name"]: r for r in self.json_of("connectors")}
        assert set(connectors) == set(CONNECTOR_TYPES)
        assert connectors["igate"]["configured"] == ["igate"]
        assert "add_note" in str(connectors["igate"]["operations"])

    @pytest.mark.parametrize("kind", ["adapters", "operations", "events", "connectors"])
    def test_one_line_each_in_text(self, kind):
        """The text form has exactly one line per item, each starting with its name."""
        text = cli("list", kind)
        assert text.returncode == 0, text.stderr
        names = [r["name"] for r in self.json_of(kind)]
        lines = text.stdout.splitlines()
        assert len(lines) == len(names)
        assert all(line.startswith(f"{name} ") or line == name for line, name in zip(lines, names, strict=True))


def test_the_readme_add_a_route_example_checks_and_maps(tmp_path):
    """The entry of README "Add a route", added to the shipped routes, passes check and `map` renders it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Add a route", 1)[1].split("### Add an adapter", 1)[0]
    [entry] = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    shipped = (SHIPPED / "routes.yaml").read_text(encoding="utf-8")
    (tmp_path / "routes.yaml").write_text(shipped.rstrip() + "\n\n" + entry, encoding="utf-8")
    (tmp_path / "connectors.yaml").write_text((SHIPPED / "connectors.yaml").read_text(encoding="utf-8"))
    code, lines = check_config(tmp_path)
    assert code == 0, lines
    [command] = [line for line in section.splitlines() if line.startswith("igate-bus map ")]
    args = command.split("#")[0].split()[1:]
    result = cli(*args, env={**ENV, "IGATE_BUS_CONFIG_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# route ack-online: igate_ack.dossier_received -> igate.add_note")
