"""A CPU study's results file: the tables a script renders, then the reading a person wrote (kept on re-render)."""

from __future__ import annotations

from pathlib import Path

READING = "\n## Reading"


def write_keeping_reading(path: Path, table: str) -> None:
    """Write the rendered tables, keeping the hand-written "## Reading" section of an earlier file at the end."""
    old = path.read_text() if path.is_file() else ""
    path.write_text(table + (old[old.index(READING) :] if READING in old else ""))
