"""The README and docs/: every relative link points at something that exists.

For README.md and every docs/*.md, each markdown link ``[text](target)`` outside code
(web and mail links aside) must name a file or folder that exists relative to the page,
and a ``#anchor`` must match a heading of the page it points into, slugged as GitHub
does it. The README stays a short read.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 350

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lowercased, punctuation except
    '-' and '_' removed, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's slug in a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) for every relative link on a page, outside code."""
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            target = match.group(2)
            if not target.lower().startswith(EXTERNAL):
                found.append((number, target))
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in links(page):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}:{number}: ({target})"
        if not destination.exists():
            problems.append(f"{where} points at {path_part}, which does not exist")
            continue
        if anchor:
            if destination.is_dir() or destination.suffix != ".md":
                problems.append(f"{where} has an anchor into a file that is not markdown")
            elif anchor not in anchors(destination):
                problems.append(
                    f"{where}: no heading of {destination.relative_to(ROOT)} has the anchor #{anchor}"
                )
    return problems


def test_the_readme_and_the_docs_are_there() -> None:
    assert (ROOT / "README.md").is_file()
    assert len(pages()) > 1, "docs/ holds no markdown page"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_something_that_exists(page: Path) -> None:
    assert links(page) or page.name != "README.md", "no links found in the README"
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_a_short_read() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move the rest to docs/"
    )


def test_the_slugs_follow_github() -> None:
    assert slug("Full searches: what they cost") == "full-searches-what-they-cost"
    assert slug("Quick start: the whole loop in two to three minutes on a CPU") == (
        "quick-start-the-whole-loop-in-two-to-three-minutes-on-a-cpu"
    )
    assert (
        slug("The `search/` map, **bold** and [a link](x.md)") == "the-search-map-bold-and-a-link"
    )
    assert slug("snake_case and hyphen-ated") == "snake_case-and-hyphen-ated"
