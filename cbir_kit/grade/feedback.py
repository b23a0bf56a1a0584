"""nbgrader feedback that teaches without leaking hidden tests.

nbgrader's autograded notebooks contain the hidden tests again (they had to run), and a
failed hidden test's traceback quotes its code.  For the feedback HTML, cells that hold a
``### BEGIN HIDDEN TESTS`` region keep their visible part, lose the hidden region (nbgrader's
``ClearHiddenTests``, run after this) and have their outputs replaced by one line: whether the
hidden tests passed, or the name of the exception they raised - never its message or traceback.
"""
from __future__ import annotations

from nbformat.v4 import new_output
from nbgrader.preprocessors import NbGraderPreprocessor

MARKER = "BEGIN HIDDEN TESTS"


class HideHiddenTestOutputs(NbGraderPreprocessor):
    """Replace the outputs of cells with hidden tests by a one-line verdict."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or MARKER not in cell.source:
            return cell, resources
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            text = f"Hidden tests failed ({errors[0].get('ename', 'error')}); their code is not shown.\n"
        else:
            text = "Hidden tests passed.\n"
        cell.outputs = [new_output("stream", name="stdout", text=text)]
        return cell, resources
