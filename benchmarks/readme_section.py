"""Replace one ``## ...`` section of benchmarks/README.md, leaving the others untouched.

Each benchmark script owns one section (its heading) and rewrites only that,
so the scripts can be re-run in any order. The file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

from minires.atomic import atomic_write_text

README = Path(__file__).resolve().parent / "README.md"


def update_section(heading: str, body: str, readme: Path = README) -> None:
    """Put ``heading`` + ``body`` in place of the section that starts with ``heading`` (or append it)."""
    old = readme.read_text() if readme.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    section = heading + "\n\n" + body.rstrip() + "\n"
    if start is None:
        text = old.rstrip() + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + rest if rest else "")
    atomic_write_text(readme, text)
