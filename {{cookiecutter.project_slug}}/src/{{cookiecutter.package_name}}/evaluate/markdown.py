"""Markdown tables: the one writer behind reports/eval.md, the README results section and the model card.

Every cell goes through `escape`, so a `|` or a line break in a model's answer cannot break a table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

EMPTY = "*(empty)*"  # an empty answer, made visible: a blank cell reads like a rendering bug
# Control characters other than tab and line break, as a garbled generation can hold (NUL, ESC, C1): shown
# as \xNN, or the README would be binary data to `file`, `grep` and GitHub.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
ALIGN = {"l": "---", "r": "---:"}  # numbers read best right-aligned


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, align: str = "") -> list[str]:
    """The table's lines: header, separator, one line per row. `align` holds one letter per column,
    "l" or "r" (missing letters: "l")."""
    letters = align.ljust(len(header), "l")
    return [_line(header), "|" + "|".join(ALIGN[letter] for letter in letters) + "|", *(_line(row) for row in rows)]


def escape(value: object) -> str:
    """A cell's text: pipes escaped, line breaks as <br> (a table row is one line), control characters as \\xNN."""
    text = CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value))
    return text.replace("|", "\\|").replace("\n", "<br>")


def answer_cell(text: str, *, limit: int | None = None) -> str:
    """A prompt or a generated answer as a cell: an empty one visible; with `limit`, on one line and cut
    to `limit` characters (a README must stay readable; eval.md keeps answers whole)."""
    if not text.strip():
        return EMPTY
    if limit is None:
        return text
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line(cells: Sequence[object]) -> str:
    # An empty cell is one space ("| |"), not two: the bytes of the tables written before this module.
    return "|" + "|".join(f" {escape(cell)} " if cell != "" else " " for cell in cells) + "|"


def display_path(path: Path) -> str:
    """Relative to the current (project) folder when inside it, else the bare name: no home folders in a
    published README."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path.name
    return path.name if relative.startswith("..") else Path(relative).as_posix()


def shown_source(source: str) -> str:
    """A model source as a report shows it: a local absolute path via `display_path`, a URI or hub id as is."""
    return display_path(Path(source)) if os.path.isabs(source) else source
