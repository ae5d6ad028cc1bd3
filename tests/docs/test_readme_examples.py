"""The README's configuration examples are accepted by the code, so the docs cannot drift from it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from routes.model import check_config

ROOT = Path(__file__).resolve().parents[2]


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_readme_route_example_passes_check(tmp_path: Path) -> None:
    """The routes.yaml example in the README, beside the shipped connectors, checks ok."""
    [routes] = [b for b in _yaml_blocks() if b.startswith("routes:")]
    (tmp_path / "routes.yaml").write_text(routes, encoding="utf-8")
    shutil.copy(ROOT / "config" / "connectors.yaml", tmp_path / "connectors.yaml")
    code, lines = check_config(tmp_path)
    shipped = len(yaml.safe_load((tmp_path / "connectors.yaml").read_text(encoding="utf-8"))["connectors"])
    assert (code, lines) == (0, [f"ok: 1 route, {shipped} connectors"])


def test_the_readme_connector_example_passes_check(tmp_path: Path) -> None:
    """The connectors.yaml example in the README, with the shipped routes that use igate only, checks ok."""
    [connectors] = [b for b in _yaml_blocks() if b.startswith("connectors:")]
    (tmp_path / "connectors.yaml").write_text(connectors, encoding="utf-8")
    [routes] = [b for b in _yaml_blocks() if b.startswith("routes:")]
    (tmp_path / "routes.yaml").write_text(routes, encoding="utf-8")
    code, lines = check_config(tmp_path)
    assert (code, lines) == (0, ["ok: 1 route, 1 connector"])


def test_the_shipped_config_passes_check() -> None:
    """config/ as shipped is valid."""
    code, lines = check_config(ROOT / "config")
    assert code == 0, lines


def test_the_readme_check_example_prints_what_check_prints(tmp_path: Path) -> None:
    """The README's broken-config example (backoff '5 sec') is the line `check` prints, word for word."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    [shown] = re.findall(r"^(broken/routes\.yaml:\d+: .*)$", text, flags=re.MULTILINE)
    [routes] = [b for b in _yaml_blocks() if b.startswith("routes:")]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "routes.yaml").write_text(routes.replace("backoff: [5s,", "backoff: [5 sec,"), encoding="utf-8")
    shutil.copy(ROOT / "config" / "connectors.yaml", broken / "connectors.yaml")
    code, lines = check_config(broken)
    assert code == 2
    assert [line.replace(str(broken), "broken") for line in lines] == [shown]
