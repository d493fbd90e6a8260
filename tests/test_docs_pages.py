"""The docs pages: their links resolve, the limits they list are the code's, and
nothing in the repository points at a file outside it."""

from __future__ import annotations

import re
import subprocess

from frankenmoe.measure.quality_limits import GGUF_8BIT, GGUF_TIERS, LIMITS, TIERS
from tests.conftest import REPO

DOCS = REPO / "docs"


def test_every_relative_link_in_the_readme_and_the_docs_resolves():
    missing = []
    for page in [REPO / "README.md", *DOCS.glob("*.md")]:
        for link in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            if not link.startswith(("http://", "https://")) and not (page.parent / link).exists():
                missing.append(f"{page.name}: {link}")
    assert not missing, missing


def _limit_rows(table_start: str) -> list[tuple[float, ...]]:
    """The limit columns of the table whose header starts with `table_start`."""
    text = (DOCS / "verification.md").read_text(encoding="utf-8").split("## Where the limits come from", 1)[1]
    table = table_start + text.split(table_start, 1)[1].split("\n\n", 1)[0]
    header = [h.strip(" `") for h in table.splitlines()[0].split("|")]
    columns = [header.index(name) for name in LIMITS]
    rows = [line.split("|") for line in table.splitlines()[2:]]
    return [tuple(float(row[c]) for c in columns) for row in rows]


def test_the_verification_page_lists_the_codes_limits():
    tiers = lambda ts: [tuple(getattr(t, name) for name in LIMITS) for t in ts]
    assert _limit_rows("| dense size |") == tiers(TIERS)
    assert _limit_rows("| GGUF type |") == tiers([GGUF_8BIT, *GGUF_TIERS])


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    outside = [f"{d}/NOTES" for d in ("shared",)] + [f"../{d}/" for d in ("shared",)] + [f"/{d}/" for d in ("work",)]
    found = []
    for name in tracked:
        path = REPO / name
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".json", "") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{name}: {o}" for o in outside if o in text]
    assert not found, found
