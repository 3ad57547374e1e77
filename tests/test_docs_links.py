"""The README and docs/ render and hold together: relative links resolve, tables are whole.

A broken relative link (a file that moved, a heading renamed under an anchor) or a table row
with the wrong number of cells is easy to miss in review and shows up only on the rendered
page, so every Markdown file of the front door is checked here, and the checker itself is
shown to catch each kind of fault.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
"""Issue 17's bound: the README is a front door a newcomer reads in five minutes."""

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"  # the link text, one level of nested brackets allowed
    r"\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"  # (target "optional title")
)
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DELIMITER_CELL = re.compile(r"^\s*:?-+:?\s*$")


def docs_files() -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        opener = _FENCE.match(line)
        if opener:
            marker = opener.group(1)
            if fence is None:
                fence = marker
                continue
            if marker == fence:
                fence = None
                continue
        if fence is None:
            lines.append((number, line))
    return lines


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text.

    GitHub lower-cases the heading, drops every character that is not a letter, digit,
    space, hyphen or underscore, turns spaces into hyphens, and numbers repeats (-1, -2).
    """
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(text):
        heading = _HEADING.match(line)
        if not heading:
            continue
        title = _CODE_SPAN.sub(lambda span: span.group(0).strip("`"), heading.group(2))
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)
        slug = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_").replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link that is not a URL with a scheme (http:, mailto:)."""
    links: list[tuple[int, str]] = []
    for number, line in prose_lines(text):
        without_code = _CODE_SPAN.sub("", line)
        targets = [match.group(1) for match in _INLINE_LINK.finditer(without_code)]
        definition = _REFERENCE_DEF.match(without_code)
        if definition:
            targets.append(definition.group(1))
        links.extend((number, target) for target in targets if not _SCHEME.match(target))
    return links


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """One message per relative link of `page` whose file or heading anchor does not exist."""
    text = page.read_text(encoding="utf-8")
    problems: list[str] = []
    for number, target in relative_links(text):
        path_part, _, fragment = target.partition("#")
        where = f"{page.relative_to(root)}:{number}: {target}"
        if path_part:
            resolved = (page.parent / path_part).resolve()
            if not resolved.is_relative_to(root.resolve()):
                problems.append(f"{where}: points outside the repository")
                continue
            if not resolved.exists():
                problems.append(f"{where}: no such file")
                continue
        else:
            resolved = page
        if (
            fragment
            and resolved.suffix == ".md"
            and resolved.is_file()
            and fragment not in heading_anchors(resolved.read_text(encoding="utf-8"))
        ):
            problems.append(f"{where}: no heading with anchor #{fragment}")
    return problems


def table_cells(row: str) -> list[str]:
    """The cells of a table row, split on pipes that are not escaped."""
    cells = re.split(r"(?<!\\)\|", row.strip())
    if cells and cells[0].strip() == "":
        cells = cells[1:]
    if cells and cells[-1].strip() == "":
        cells = cells[:-1]
    return cells


def malformed_tables(page: Path, root: Path = REPO) -> list[str]:
    """One message per table whose delimiter row is missing or whose rows differ in width."""
    problems: list[str] = []
    block: list[tuple[int, str]] = []

    def check(block: list[tuple[int, str]]) -> None:
        if not block:
            return
        first_number, header = block[0]
        where = f"{page.relative_to(root)}:{first_number}"
        width = len(table_cells(header))
        if len(block) < 2 or not all(
            _DELIMITER_CELL.match(cell) for cell in table_cells(block[1][1])
        ):
            problems.append(f"{where}: table without a delimiter row (| --- | --- |)")
            return
        for number, row in block[1:]:
            if len(table_cells(row)) != width:
                problems.append(
                    f"{page.relative_to(root)}:{number}: {len(table_cells(row))} cells, "
                    f"the header has {width}"
                )

    previous = 0
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        is_row = line.lstrip().startswith("|")
        if is_row and block and number == previous + 1:
            block.append((number, line))
        else:
            check(block)
            block = [(number, line)] if is_row else []
        previous = number
    check(block)
    return problems


@pytest.mark.parametrize("page", docs_files(), ids=lambda page: page.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", docs_files(), ids=lambda page: page.relative_to(REPO).as_posix())
def test_tables_are_whole(page: Path) -> None:
    assert malformed_tables(page) == []


def test_readme_is_a_front_door() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


def test_readme_test_command_is_what_ci_runs() -> None:
    """The command under the README's "Tests" heading is .ci/run's last command, verbatim."""
    ci_lines = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tests_section = re.search(r"^## Tests\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert tests_section, "README.md has no '## Tests' section"
    assert ci_lines[-1] in tests_section.group(1)


def test_checker_reports_each_kind_of_fault(tmp_path: Path) -> None:
    """The checks above can fail: each planted fault is reported, the sound links are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# Real heading\n\n## Second `code` part\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n"
        "[ok](docs/there.md) [ok anchor](docs/there.md#second-code-part) [self](#title)\n"
        "[web](https://example.com/missing) `[in code](nowhere.md)`\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/there.md#no-such-heading)\n"
        "[out](../../etc/passwd)\n"
        "```\n[fenced](nowhere.md)\n```\n"
        "[ref]: docs/also-missing.md\n"
        "\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 1 | 2 | 3 |\n"
        "\n"
        "| no | delimiter |\n| 1 | 2 |\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "docs/missing.md: no such file",
        "docs/there.md#no-such-heading: no heading with anchor #no-such-heading",
        "../../etc/passwd: points outside the repository",
        "docs/also-missing.md: no such file",
    ]
    tables = malformed_tables(page, root=tmp_path)
    assert tables == [
        "README.md:15: 3 cells, the header has 2",
        "README.md:17: table without a delimiter row (| --- | --- |)",
    ]
