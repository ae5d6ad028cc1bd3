"""The project carries its own documents: nothing reads or cites the notes kept outside the repository.

The code, the tests and the README cite the domain facts, the design and the reliability plan as
``docs/domain.md section N``, ``docs/design.md`` and ``docs/reliability.md R12``. A test that read
``../shared/DOMAIN.md`` skipped on a fresh clone, and "DOMAIN.md section 2" in the README pointed nowhere;
these tests fail on any such reference, and on a citation of a section the cited document does not have.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "var", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".wsdl", ".xsd", ".json", ".sh", ".cfg", ".txt", ""}
#: a document kept outside the repository, by its old name, or a path out of the checkout
OUTSIDE = re.compile(r"(?<![\w/])(DOMAIN|DESIGN|RELIABILITY|STYLE)\.md|\.\./shared|[\"'/]shared[\"'/]")
#: a citation of a project document, with the sections it names: "docs/domain.md section 1.1", "sections 5 and 6"
CITATION = re.compile(
    r"docs/(?P<doc>[a-z]+)\.md(?:'s)?(?P<rest>(?: sections? [0-9][0-9.]*(?:(?:,| and|-|–) ?[0-9][0-9.]*)*)?)"
    r"(?:,? (?P<plan>R[0-9]+))?"
)


def _files() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if SKIP_DIRS & set(rel.parts) or any(p.endswith(".egg-info") for p in rel.parts) or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES and path != Path(__file__):
            found.append(path)
    return found


def test_nothing_reads_or_cites_documents_outside_the_repository() -> None:
    """No file names DOMAIN.md, DESIGN.md, RELIABILITY.md, STYLE.md or ../shared: the project's docs/ has them."""
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _files()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "\n".join(hits)


def _headings(doc: Path) -> set[str]:
    """The section numbers of a document (``0``, ``1``, ``1.1``) and its heading words (``Security``)."""
    text = doc.read_text(encoding="utf-8")
    numbers = set(re.findall(r"^#{2,4} ([0-9]+(?:\.[0-9]+)*)\.? ", text, flags=re.MULTILINE))
    words = set(re.findall(r"^#{2,4} (.+)$", text, flags=re.MULTILINE))
    return numbers | words


def _citations() -> list[tuple[Path, int, str, list[str], str | None]]:
    found = []
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            for match in CITATION.finditer(line):
                sections = re.findall(r"[0-9]+(?:\.[0-9]+)*", match.group("rest") or "")
                if re.search(r"[0-9]\s*[-–]\s*[0-9]", match.group("rest") or ""):
                    low, high = (int(s) for s in sections[:2])
                    sections = [str(n) for n in range(low, high + 1)]
                found.append((path, number, match.group("doc"), sections, match.group("plan")))
    return found


def test_the_citations_are_found() -> None:
    """The search below sees the README's and the code's citations, so an empty search cannot pass."""
    cited = {(p.relative_to(ROOT).as_posix(), doc) for p, _, doc, _, _ in _citations()}
    assert ("README.md", "domain") in cited
    assert ("schemas/igate.py", "domain") in cited
    assert ("tests/routes/test_idempotency.py", "reliability") in cited


@pytest.mark.parametrize("doc", ["domain", "design", "reliability", "simulators"])
def test_the_cited_documents_exist(doc: str) -> None:
    """Each document the project cites is in docs/."""
    assert (ROOT / "docs" / f"{doc}.md").is_file()


def test_every_cited_section_exists() -> None:
    """``docs/domain.md section 2`` has a heading 2; ``docs/reliability.md R12`` a row R12; the file exists."""
    missing = []
    for path, number, doc, sections, plan in _citations():
        target = ROOT / "docs" / f"{doc}.md"
        where = f"{path.relative_to(ROOT)}:{number}"
        if not target.is_file():
            missing.append(f"{where}: docs/{doc}.md does not exist")
            continue
        headings = _headings(target)
        missing += [f"{where}: docs/{doc}.md has no section {s}" for s in sections if s not in headings]
        if plan and f"| {plan} |" not in target.read_text(encoding="utf-8"):
            missing.append(f"{where}: docs/{doc}.md has no {plan}")
    assert not missing, "\n".join(missing)


def test_the_files_the_docs_name_exist() -> None:
    """Paths in the README, docs/simulators.md and domain.md's "used by" table are files of this repository."""
    lines = [
        *(ROOT / "README.md").read_text(encoding="utf-8").splitlines(),
        *(ROOT / "docs" / "simulators.md").read_text(encoding="utf-8").splitlines(),
        *(line for line in (ROOT / "docs" / "domain.md").read_text(encoding="utf-8").splitlines() if line[:3] == "| ["),
    ]
    named = {p for line in lines for p in re.findall(r"`([a-z_.]+(?:/[A-Za-z_.]+)+\.(?:py|md|yaml|wsdl|xsd))`", line)}
    assert "schemas/igate.py" in named
    assert not sorted(p for p in named if not (ROOT / p).exists())
