"""Results files written in sections, one per mode of a benchmark, so that running one mode
replaces its own part and keeps the others (imported by the scripts beside it, which run as
`python benchmarks/<name>.py`)."""

from __future__ import annotations

from pathlib import Path


def write_section(results: Path, name: str, text: str, heading: str = "") -> None:
    """Put `text` between `<!-- name -->` and `<!-- /name -->` in `results`: in place of that
    section's old text, or at the end (a new file starts with `heading`); then print it."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    old = results.read_text() if results.exists() else heading
    block = f"{begin}\n{text}{end}\n"
    if begin in old:
        head, rest = old.split(begin, 1)
        old = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        old = old + ("\n" if old and not old.endswith("\n\n") else "") + block
    results.write_text(old)
    print(text)
