"""Instructor side: autograde in a fresh kernel that loads only the student's definitions.

Autograde in a fresh kernel that loads only the student's definitions (the tests stay out of reach).

nbgrader's ``Execute`` runs the submitted notebook as it is, in one kernel, tests included, so a
student's cell can install an input transformer that turns every ``assert`` into ``pass``, patch what
the tests compare with, or print the hidden tests.  :class:`GuardedExecute` takes its place in
``cbir grade autograde``:

* the *instructor's* cells - every cell nbgrader restores from the gradebook: tests and read-only
  (locked) cells - run as the instructor wrote them;
* the *student's* cells (solutions, and any cell they added) contribute only their definitions
  (:func:`definitions`): imports, ``def``, ``class`` and constants.  Nothing else a student wrote runs
  at the top level, so nothing is installed, patched or printed before the tests run.
  ``%%writefile`` cells (a submission file) are kept: they write a file and run nothing;
* the grading kernel receives the cells through a file that its first cell reads and deletes,
  and runs them under :mod:`cbir_kit.grade.guard`, which checks every call into student code;
* a test counts as passed only with the guard's receipt for it (an HMAC under a secret of this
  process), so a test that was skipped somehow fails.

The notebook nbgrader saves keeps the outputs of the instructor's cells; the student's cells show
what the grader did with them.
"""
from __future__ import annotations

import ast
import json
import os
import secrets
from pathlib import Path

from nbformat.v4 import new_code_cell, new_output
from nbgrader.preprocessors import Execute
from nbgrader.utils import is_grade, is_locked, is_solution

from . import guard
from .kernel import ENV
from .sandbox import Limits

STUDENT_CELL_NOTE = "(graded from this cell's definitions: imports, def, class and constants)\n"
SKIPPED = "# not run by the grader (only imports, def, class and constants are): "


def _static(node: ast.AST | None) -> bool:
    """An expression that runs no code when evaluated: constants, names, attribute chains, subscripts."""
    if node is None:
        return True
    if isinstance(node, (ast.Constant, ast.Name)):
        return True
    if isinstance(node, ast.Attribute):
        return _static(node.value)
    if isinstance(node, ast.Subscript):
        return _static(node.value) and _static(node.slice)
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(_static(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, ast.BinOp):
        return _static(node.left) and _static(node.right) and isinstance(node.op, ast.BitOr)  # int | None
    return False


def _literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _signature_static(node) -> bool:
    """Decorators, defaults and annotations of a ``def`` run when it is defined: they must be static."""
    args = node.args
    parts = [*node.decorator_list, node.returns, *args.defaults, *args.kw_defaults,
             *(a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a)]
    return all(_static(p) for p in parts)


def _keep(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return True
    if isinstance(node, ast.ImportFrom):
        return node.level == 0
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return _signature_static(node)
    if isinstance(node, ast.ClassDef):
        return (not node.keywords and all(_static(b) for b in [*node.bases, *node.decorator_list])
                and all(_keep(n) or _docstring(n) or isinstance(n, ast.Pass) for n in node.body))
    if isinstance(node, ast.Assign):
        return all(isinstance(t, ast.Name) for t in node.targets) and _literal(node.value)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.value is not None and _literal(node.value) \
            and _static(node.annotation)
    return False


def _docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def definitions(source: str) -> str:
    """The part of a student's cell the grader runs: imports, ``def``, ``class`` and constant assignments.

    A ``def`` whose decorators, defaults or annotations would run code, a class with a metaclass or
    with statements other than definitions in its body, a relative import and every other statement
    are replaced by a comment saying so.  IPython magics and shell lines are dropped.  A cell that
    does not parse becomes a ``SyntaxError`` raised where the student's code would have been.
    """
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    text = "\n".join(lines)
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        return f"raise SyntaxError({f'line {err.lineno}: {err.msg}'!r})\n"
    out = []
    for node in tree.body:
        if _keep(node) or _docstring(node):
            out.append(ast.get_source_segment(text, node, padded=True) or ast.unparse(node))
        else:
            first = (ast.get_source_segment(text, node) or ast.unparse(node)).splitlines()[0][:80]
            out.append(SKIPPED + first)
    return "\n".join(out) + "\n"


def instructors(cell) -> bool:
    """Whether nbgrader restored this cell from the gradebook (a test or a read-only cell)."""
    nbg = cell.metadata.get("nbgrader", {})
    return bool(nbg.get("grade_id")) and not is_solution(cell) and is_locked(cell)


def _writes_a_file(source: str) -> bool:
    first = source.lstrip().split("\n", 1)[0]
    return first.startswith("%%writefile ")


class GuardedExecute(Execute):
    """nbgrader's ``Execute``, run on the guarded grading notebook (module docstring).

    Outputs are capped as they arrive (``notebook_output_mb`` of the sandbox limits, for the whole
    notebook): past the cap a cell's outputs are dropped - its error, if it raises, is kept - and the
    cell fails with ``OutputLimit``, so neither the grader's memory nor the feedback page grows without end.
    """

    def preprocess(self, nb, resources=None, km=None):
        settings = json.loads(os.environ[ENV])
        runtime = Path(settings["runtime_dir"])
        self._output_left = int(settings.get("limits", {}).get("notebook_output_mb", Limits.notebook_output_mb)) << 20
        self._over_limit: set[int] = set()
        secret = secrets.token_bytes(32)
        receipts, plan_file = runtime / "receipts.txt", runtime / "cells.json"
        receipts.unlink(missing_ok=True)
        plan = {"secret": secret.hex(), "receipts": str(receipts), "instructor": {}, "student": {}}
        run = nb.copy()
        run.cells = [new_code_cell("import cbir_kit.grade.guard\n"
                                   f"cbir_kit.grade.guard.install(get_ipython(), {str(plan_file)!r})")]
        order = []
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if instructors(cell):
                plan["instructor"][i] = cell.source
                stub = f'__import__("sys").audit("cbir.guard.run", {i})'
            elif _writes_a_file(cell.source):
                stub = cell.source
            else:
                plan["student"][i] = definitions(cell.source)
                stub = f'__import__("sys").audit("cbir.guard.define", {i})'
            run.cells.append(new_code_cell(stub))
            order.append(i)
        plan_file.write_text(json.dumps(plan))
        plan_file.chmod(0o644)
        try:
            run, resources = super().preprocess(run, resources, km=km)
            passed = _receipts(receipts, secret)
        finally:
            plan_file.unlink(missing_ok=True)
            receipts.unlink(missing_ok=True)
        setup_failed = [o for o in run.cells[0].outputs if o.get("output_type") == "error"]
        for i, done in zip(order, run.cells[1:]):
            cell = nb.cells[i]
            outputs = list(done.outputs)
            if i in plan["student"]:
                outputs.insert(0, new_output("stream", name="stdout", text=STUDENT_CELL_NOTE))
            elif is_grade(cell) and i not in passed and not any(o.get("output_type") == "error" for o in outputs):
                why = setup_failed[0].get("evalue", "") if setup_failed else "it did not run to the end"
                outputs.append(new_output("error", ename="GradingError", evalue=f"test not completed: {why}",
                                          traceback=[f"GradingError: test not completed: {why}"]))
            cell.outputs = outputs
            cell.execution_count = done.get("execution_count")
        return nb, resources


    def output(self, outs, msg, display_id, cell_index):
        """nbclient's handler of one output message, with the notebook's output budget applied."""
        size = len(json.dumps(msg.get("content", {}), default=str))
        self._output_left -= size
        if self._output_left >= 0:
            return super().output(outs, msg, display_id, cell_index)
        if cell_index not in self._over_limit:
            self._over_limit.add(cell_index)
            text = "the notebook's outputs passed the limit (notebook_output_mb); the rest of this cell's output is dropped"
            outs.append(new_output("error", ename="OutputLimit", evalue=text, traceback=[f"OutputLimit: {text}"]))
        if msg["msg_type"] == "error":
            content = msg["content"]
            outs.append(new_output("error", ename=str(content.get("ename", ""))[:200],
                                   evalue=str(content.get("evalue", ""))[:2000],
                                   traceback=[str(t)[:2000] for t in content.get("traceback", [])[-20:]]))
        return None


def _receipts(path: Path, secret: bytes) -> set[int]:
    """Indices of the instructor cells whose last genuine receipt says ``passed``."""
    status: dict[int, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return set()
    for line in lines[:100_000]:
        parts = line.split(" ")
        if len(parts) == 3 and parts[0].isdigit() and guard.receipt(secret, int(parts[0]), parts[1]) == line:
            status[int(parts[0])] = parts[1]
    return {i for i, s in status.items() if s == "passed"}
