"""The package configuration in pyproject.toml declares every folder and data file the code ships.

Why: setuptools warns once per file (``Package 'schemas.wsdl' is absent from the packages configuration``,
about forty lines on a first install) when a folder Python can import is not declared, and a data file no
``package-data`` pattern names is left out of a wheel, so ``nps.wsdl`` would be missing at run time. This
walks the tree as setuptools does, without building anything.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {"__pycache__"}


def _setuptools() -> dict[str, Any]:
    found: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    return found


def _importable_dirs(top: str) -> set[str]:
    """Every folder under ``top`` that Python would import as a (namespace) package and that holds files."""
    found = set()
    for folder in [ROOT / top, *(ROOT / top).rglob("*")]:
        rel = folder.relative_to(ROOT)
        if not folder.is_dir() or SKIPPED_DIRS & set(rel.parts) or not all(p.isidentifier() for p in rel.parts):
            continue
        if any(f.is_file() for f in folder.iterdir()):
            found.add(".".join(rel.parts))
    return found


def test_every_importable_folder_is_a_declared_package() -> None:
    """A folder under a shipped package (schemas/wsdl) is in ``packages``, so setuptools has nothing to warn."""
    declared = set(_setuptools()["packages"])
    roots = {p for p in declared if "." not in p}
    missing = sorted(set().union(*(_importable_dirs(r) for r in roots)) - declared)
    assert not missing, f"add to [tool.setuptools] packages: {missing}"


def test_every_data_file_is_named_by_package_data() -> None:
    """Each non-Python file in a declared package matches one of its ``package-data`` patterns."""
    config = _setuptools()
    patterns = config.get("package-data", {})
    unshipped = []
    for package in config["packages"]:
        folder = ROOT.joinpath(*package.split("."))
        for file in folder.iterdir():
            data = file.is_file() and file.suffix not in {".py", ".pyc"}
            if data and not any(fnmatch.fnmatch(file.name, p) for p in patterns.get(package, [])):
                unshipped.append(str(file.relative_to(ROOT)))
    assert not unshipped, f"add to [tool.setuptools.package-data]: {unshipped}"
    assert patterns["schemas.wsdl"], "the WSDL and XSD the NPS connector loads must ship"
