"""Instructor side: nbgrader feedback that teaches without leaking hidden tests.

nbgrader's autograded notebooks contain the hidden tests again (they had to run), and a
failed hidden test's traceback quotes its code.  For the feedback HTML, cells that hold a
``### BEGIN HIDDEN TESTS`` region keep their visible part, lose the hidden region (nbgrader's
``ClearHiddenTests``, run after this) and have their outputs replaced by one line: whether the
hidden tests passed, or the name of the exception they raised - never its message or traceback.

When the hidden test names a known mistake (:class:`cbir_kit.grade.hidden.Misconception`), the
verdict is the catalogue's sentence for it (``notebooks/misconceptions.toml``, kept beside the
hidden tests), so the feedback teaches what went wrong without showing the test.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from nbformat.v4 import new_output
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

from .hidden import PREFIX

MARKER = "### BEGIN HIDDEN TESTS"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CELL_LINE = re.compile(r"Cell In\[\d*\], line (\d+)")


def load_catalogue(path: str | Path) -> dict[str, str]:
    """``key -> sentence`` from a misconception catalogue (TOML table ``[misconceptions]``)."""
    return dict(tomllib.loads(Path(path).read_text()).get("misconceptions", {}))


def _failing_line(error: dict) -> int | None:
    """The line of the graded cell that raised, from IPython's traceback ("Cell In[7], line 3").

    The last such frame: in the guarded grading kernel (:mod:`cbir_kit.grade.isolate`) the cell runs
    below a one-line stub, and the student's functions have file names of their own.
    """
    text = ANSI.sub("", "\n".join(error.get("traceback", [])))
    found = CELL_LINE.findall(text)
    return int(found[-1]) if found else None


def outcome(source: str, outputs: list) -> tuple[str, str, str]:
    """How a graded test cell ended: ``(where, error, message)`` from its source and outputs.

    ``where`` is ``""`` (passed), ``visible`` (the part above ``### BEGIN HIDDEN TESTS``, which the
    student has) or ``hidden``; ``error`` the misconception key of a hidden test that names one,
    else the exception's name.
    """
    errors = [o for o in outputs if o.get("output_type") == "error"]
    if not errors:
        return "", "", ""
    ename, evalue = errors[0].get("ename", "error"), str(errors[0].get("evalue", ""))
    if evalue.startswith(PREFIX):
        return "hidden", evalue[len(PREFIX):].strip(), evalue
    line = _failing_line(errors[0])
    visible_lines = source[:source.find(MARKER)].count("\n") if MARKER in source else line or 0
    return ("visible" if line is not None and line <= visible_lines else "hidden"), ename, evalue


def verdict(source: str, outputs: list, catalogue: dict[str, str]) -> str:
    """The one line a student sees for a test cell with hidden tests, from its source and outputs.

    A failure in the visible part (above the hidden region) shows its message: the student has
    that test already.  A hidden failure shows the catalogue's sentence for its misconception key,
    else only the exception's name.
    """
    where, error, message = outcome(source, outputs)
    if not where:
        return "Hidden tests passed."
    if where == "visible":
        return f"A visible test failed: {error}: {message[:500]}"
    if error in catalogue:
        return f"Hidden tests failed: {catalogue[error]}"
    name = next(o.get("ename", "error") for o in outputs if o.get("output_type") == "error")
    return f"Hidden tests failed ({name}); their code is not shown."


class StderrIsNotAFailure(NbGraderPreprocessor):
    """After execution, turn every stderr stream output into stdout, so that only an exception fails a test.

    nbgrader scores a test cell with any stderr output as 0, so a correct answer that triggers a
    ``RuntimeWarning`` (or a library that warns on import) would lose its points.  The text is kept
    and still shown in the feedback.
    """

    def preprocess_cell(self, cell, resources, index):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                out["name"] = "stdout"
        return cell, resources


class HideHiddenTestOutputs(NbGraderPreprocessor):
    """Replace the outputs of cells with hidden tests by a one-line verdict."""

    catalogue = Unicode("", help="misconception catalogue (TOML) whose sentences explain failed hidden tests"
                        ).tag(config=True)

    def preprocess(self, nb, resources):
        self._sentences = load_catalogue(self.catalogue) if self.catalogue else {}
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or MARKER not in cell.source:
            return cell, resources
        text = verdict(cell.source, cell.get("outputs", []), self._sentences)
        cell.outputs = [new_output("stream", name="stdout", text=text + "\n")]
        return cell, resources
