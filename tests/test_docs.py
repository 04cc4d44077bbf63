"""The project explains itself: every docs reference in code, configs and README resolves, and README's
deviations table is docs/deviations.md's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: "docs/method.md §2.7", "docs/data.md §2–§4", "(docs/deviations.md §1, §3)", "[docs/data.md](docs/data.md)"
REFERENCE = re.compile(r"docs/([\w-]+\.md)(?:\)?\s*((?:§[\d.]+(?:\s*(?:,|–|and)\s*)?)+))?")
SOURCES = [
    *sorted((ROOT / "src").rglob("*.py")),
    *sorted((ROOT / "conf").rglob("*.yaml")),
    *sorted((ROOT / "tests").glob("*.py")),
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]


def _sections(doc: Path) -> set[str]:
    return set(re.findall(r"^#+ §([\d.]+)", doc.read_text(encoding="utf-8"), flags=re.MULTILINE))


def test_every_docs_reference_resolves_inside_the_repository():
    checked, broken = 0, []
    for source in SOURCES:
        text = source.read_text(encoding="utf-8")
        for match in REFERENCE.finditer(text):
            doc = ROOT / "docs" / match.group(1)
            checked += 1
            if not doc.is_file():
                broken.append(f"{source.relative_to(ROOT)}: {match.group(0)} (no such file)")
                continue
            missing = set(re.findall(r"§(\d+(?:\.\d+)*)", match.group(2) or "")) - _sections(doc)
            if missing:
                broken.append(f"{source.relative_to(ROOT)}: {match.group(0)} (no section {sorted(missing)})")
    assert checked > 40, "the pattern no longer finds the references"
    assert not broken, "\n".join(broken)


#: a Markdown file named in prose or comments ("see docs/data.md", "README.md")
MARKDOWN_NAME = re.compile(r"[\w./-]*?([\w-]+\.md)\b")
#: a relative Markdown link target
#: Markdown files a run writes (metrics.md, metrics_<split>.md) or rsrefseg-aggregate writes
#: (aggregate.md), not documents
RUN_OUTPUT = re.compile(r"metrics(_\w+)?\.md|aggregate\.md")
LINK = re.compile(r"\]\((?!https?:|#)([^)#\s]+)")


def test_every_markdown_file_named_ships_with_the_repository():
    """Code, configs, tests and docs name only documents users get with the repository."""
    shipped = {p.name for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}
    named = {
        f"{source.relative_to(ROOT)}: {match.group(1)}"
        for source in SOURCES
        for match in MARKDOWN_NAME.finditer(source.read_text(encoding="utf-8"))
        if match.group(1) not in shipped and not RUN_OUTPUT.fullmatch(match.group(1))
    }
    assert not named, sorted(named)


def test_every_relative_link_stays_inside_the_repository():
    broken = []
    for source in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in LINK.finditer(source.read_text(encoding="utf-8")):
            target = (source.parent / match.group(1)).resolve()
            if ROOT not in target.parents or not target.exists():
                broken.append(f"{source.relative_to(ROOT)}: {match.group(1)}")
    assert not broken, broken


def _table(text: str, heading: str) -> list[str]:
    """The lines of the first Markdown table after ``heading``."""
    after = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    rows = []
    for line in after[start:]:
        if not line.startswith("|"):
            break
        rows.append(line.strip())
    return rows


def test_readme_deviations_table_is_the_docs_table():
    readme = _table((ROOT / "README.md").read_text(), "## Where the authors' release and this code differ")
    docs = _table((ROOT / "docs" / "deviations.md").read_text(), "## §1 The authors' release and this code")
    assert len(readme) > 10
    assert readme == docs
