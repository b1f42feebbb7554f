"""What the benchmark scripts share: a result table as text and markdown, and their README section.

Each benchmark script owns one ``## ...`` section of benchmarks/README.md (its
heading) and rewrites only that, so the scripts can be re-run in any order.
The file is written atomically.
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


def render_table(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[str]]:
    """The same table twice: aligned plain-text lines for the terminal, and markdown lines for the README.

    Cells may mark markdown bold with ``**``; the plain-text version drops
    the markers. The first column is left-aligned, the others right-aligned.
    """
    plain = [[cell.replace("**", "") for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in plain) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    text = [line(plain[0]), line(["-" * w for w in widths])] + [line(r) for r in plain[1:]]
    markdown = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    markdown += ["| " + " | ".join(r) + " |" for r in rows]
    return text, markdown
