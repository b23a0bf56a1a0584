"""Submissions for the real course, built the way students make them: from the released notebooks.

``solved``   the instructor's answer in every solution cell (the solution delimiters dropped),
``answers``  the released notebook with the given cells (by grade id) replaced by other code.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

DELIMITERS = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$\n?", re.M)


def grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def instructor_answers(instructor: Path) -> dict[str, str]:
    """``grade id -> source`` of every solution cell, as a student who solved it would write it."""
    nb = nbformat.read(instructor, as_version=4)
    return {grade_id(c): DELIMITERS.sub("", c.source) for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def answers(released: Path, replace: dict[str, str], out: Path) -> Path:
    """Write the released notebook with the cells named in ``replace`` rewritten; return ``out``."""
    nb = nbformat.read(released, as_version=4)
    unknown = set(replace) - {grade_id(c) for c in nb.cells}
    assert not unknown, f"{released.name} has no cells {sorted(unknown)}"
    for cell in nb.cells:
        if grade_id(cell) in replace:
            cell.source = replace[grade_id(cell)]
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out
