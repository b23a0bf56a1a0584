"""Instructor side, inside the grading kernel: the tests run where student code cannot see, patch or skip them.

:mod:`cbir_kit.grade.isolate` grades a notebook in a fresh kernel whose cells are stubs; this module
runs inside that kernel.  :func:`install` (the first cell) reads the cells from a file the grader
wrote and deletes it: the instructor's cells (setup and tests) are compiled and kept in the closure
of a Python *audit hook*, the student's cells are reduced to their definitions.  An audit hook
cannot be removed and nothing in Python refers to its closure, so student code can neither read the
tests' text nor reach the grader's state.  The stubs raise audit events the hook acts on:

``cbir.guard.run i``
    runs instructor cell ``i`` in the notebook's namespace; its source is in no ``In``, history,
    line cache or message the student's code can read.  Afterwards everything the tests use must
    be as before (:func:`_changes`), and the hook writes a receipt (an HMAC with a secret of the
    grader's) saying whether the cell passed: a test whose receipt is missing counts as failed.
``cbir.guard.define i``
    runs student cell ``i``'s definitions under the file name ``<student cell i>`` and wraps every
    function and method it defined in :class:`Checked`.  A definition may not rebind a name the
    instructor's cells defined.

A call through :class:`Checked` raises ``cbir.guard.enter`` / ``cbir.guard.exit``.  On exit the
hook compares the *surfaces* - the namespaces of the modules the tests compare with (numpy, scipy,
scikit-learn, torch, pytorch-metric-learning, cbir_kit, ``builtins`` and the standard modules in
:data:`SURFACES`), the classes defined there, their ``sys.modules`` entries, IPython's transformers
- and the notebook's namespace with their state on entry: a function, class or module replaced,
deleted or added (other than by an import) is put back and the call raises
``Misconception("tampering")``.  Its result must be plain data (numbers, strings, numpy arrays,
tensors and containers of them): an object whose ``__eq__`` says yes to everything is refused.

While student code is on the stack (a frame whose file is not part of the installed Python,
cbir_kit or a grader cell), the hook refuses what reaches frames or memory behind the grader's
back: ``sys._getframe``, ``tb_frame``/``gi_frame``, ``gc.get_referrers`` and friends,
``sys.settrace``, ``ctypes`` (unless a library called it), new code objects, grader-looking file names, changing a function's
``__code__`` or defaults; reading ``/proc/*/mem`` is refused at any time.

One Python process cannot be made airtight against code that runs inside it; this closes the
routes known to work (grading/README.md, "How a notebook is scored").
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import hmac
import importlib
import json
import operator
import os
import secrets
import sys
import types

from .hidden import Misconception

SURFACES = ("numpy", "scipy", "sklearn", "torch", "pytorch_metric_learning", "cbir_kit", "builtins", "math",
            "operator", "functools", "itertools", "collections", "copy", "json", "sys", "threading", "importlib",
            "linecache", "inspect", "IPython", "ipykernel")
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
REFUSED_SETATTR = frozenset({"__code__", "__defaults__", "__kwdefaults__"})
REFUSED_NEAR_STUDENT_CODE = frozenset({"sys._getframe", "sys._current_frames", "gc.get_referrers",
                                       "gc.get_referents", "gc.get_objects", "sys.settrace", "sys.setprofile",
                                       "code.__new__", "function.__new__", "cbir.guard.run", "cbir.guard.define"})
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))   # the cbir_kit folder
# imported before the first check, as the notebooks' own imports would: a library that a student's
# function imports for the first time is then never mistaken for one the student changed
PRELOAD = ("cbir_kit.pipeline.job", "cbir_kit.pipeline.stages")
TRANSFORMERS = ("input_transformers_cleanup", "input_transformers_post", "ast_transformers")
BUILTIN_NAMES = frozenset(dir(builtins))
PLAIN_SCALARS = (int, float, complex, bool, str, bytes, type(None))
MAX_PLAIN_ITEMS = 1_000_000
STUDENT_FILE = "<student cell "
# bound once at import, before any student code runs: the hook never looks these up again
_is, _ModuleType, _MODULES, _getframe = operator.is_, types.ModuleType, sys.modules, sys._getframe


class GuardError(PermissionError):
    """What student code gets when it reaches for frames, memory or the grader's objects while graded."""


def receipt(secret: bytes, index: int, status: str) -> str:
    """The line the guard writes when instructor cell ``index`` finished with ``status`` (passed/failed)."""
    mac = hmac.new(secret, f"{index}:{status}".encode(), hashlib.sha256).hexdigest()
    return f"{index} {status} {mac}"


def _is_surface(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in SURFACES)


def _trusted_roots(cell_prefix: str) -> tuple[str, ...]:
    roots = {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots.add(PACKAGE_DIR + os.sep)
    return (*sorted(roots), "<frozen ", cell_prefix)


def _surfaces(shell, cache: list) -> list[tuple[object, object]]:
    """``(owner, namespace)`` for every surface: modules, their classes, sys.modules, IPython's hooks.

    Module and class namespaces are the live objects, listed again only when ``sys.modules`` changed
    size (``cache`` = ``[size, list]``, kept by the caller); the other two are built here.
    """
    if cache[0] != len(_MODULES):
        found = []
        for name, module in list(_MODULES.items()):
            if type(module) is not _ModuleType or not _is_surface(name):
                continue
            space = vars(module)
            found.append((module, space))
            for value in list(space.values()):
                if issubclass(type(value), type) and vars(value).get("__module__") == name:
                    found.append((value, vars(value)))
        cache[:] = [len(_MODULES), found]
    return [*cache[1], (_MODULES, _surface_modules()), (shell, _ipython_hooks(shell))]


def _surface_modules() -> dict:
    return {n: m for n, m in list(_MODULES.items()) if _is_surface(n)}


def _ipython_hooks(shell) -> dict:
    """IPython's input and AST transformers, one entry per function (what could rewrite a test's code)."""
    return {(attr, i): f for attr in TRANSFORMERS for i, f in enumerate(getattr(shell, attr))}


def _live(owner, space, shell):
    """The namespace of ``owner`` now: the same live object, or rebuilt for sys.modules and the shell."""
    if owner is _MODULES:
        return _surface_modules()
    return _ipython_hooks(shell) if owner is shell else space


def _snapshot(shell, cache: list) -> list:
    return [(owner, space, tuple(space.keys()), tuple(space.values())) for owner, space in _surfaces(shell, cache)]


def _unchanged(space, keys: tuple, values: tuple) -> bool:
    return len(space) == len(keys) and all(map(_is, space.values(), values)) and tuple(space.keys()) == keys


def _still(shell, snapshot: list, cache: list) -> bool:
    """Whether nothing was imported and every surface is as in ``snapshot`` (identity of every value)."""
    return cache[0] == len(_MODULES) and all(_unchanged(_live(owner, space, shell), keys, values)
                                             for owner, space, keys, values in snapshot)


def _code_bearing(value) -> bool:
    return callable(value) or isinstance(value, _ModuleType)


def _label(owner, name) -> str:
    return f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"


def _changes(shell, before: list, strict: bool) -> list[str]:
    """Functions, classes and modules of the surfaces replaced, deleted or added since ``before``; put back.

    A name that held ``None`` may get a value: libraries set things up lazily that way.  After an
    instructor cell, a function may also be replaced by a wrapper of itself (``functools.wraps``:
    torch's optimizers wrap their class's ``step`` when the first one is made).

    ``strict`` (after student code): every addition counts but a submodule import.  Otherwise
    (after an instructor cell, whose own imports and plots add things) only additions that
    shadow a builtin name or add an input/AST transformer count.
    """
    changed = []
    for owner, space, keys, values in before:
        space = _live(owner, space, shell)
        if _unchanged(space, keys, values):
            continue
        old = dict(zip(keys, values))
        found = [name for name, value in space.items() if name not in old and _code_bearing(value)
                 and not isinstance(value, _ModuleType)
                 and (strict or name in BUILTIN_NAMES or (isinstance(name, tuple) and name[0] in TRANSFORMERS))]
        found += [name for name, value in space.items() if name in old and old[name] is not value
                  and old[name] is not None and (_code_bearing(value) or _code_bearing(old[name]))
                  and (strict or getattr(value, "__wrapped__", None) is not old[name])]
        found += [name for name in old.keys() - space.keys() if _code_bearing(old[name])]
        if found:
            changed += [_label(owner, name) for name in found]
            _put_back(owner, old, found)
    return changed


def _put_back(owner, old: dict, names: list) -> None:
    """Restore ``names`` of ``owner`` to ``old`` (missing there: delete them)."""
    if hasattr(owner, TRANSFORMERS[0]):     # the IPython shell
        ordered = sorted(old.items(), key=lambda item: item[0][1])
        for attr in TRANSFORMERS:
            getattr(owner, attr)[:] = [f for (a, _), f in ordered if a == attr]
        return
    for name in names:
        if isinstance(owner, type):
            setattr(owner, name, old[name]) if name in old else delattr(owner, name)
        else:
            space = vars(owner) if isinstance(owner, _ModuleType) else owner
            if name in old:
                space[name] = old[name]
            else:
                space.pop(name, None)


def is_plain(value, budget: list | None = None) -> bool:
    """Plain data: numbers, strings, None, numpy arrays and scalars, torch tensors, and lists, tuples,
    sets and dicts of them - exact types, so no ``__eq__`` or ``__float__`` of the student's own."""
    import numpy as np

    budget = budget if budget is not None else [MAX_PLAIN_ITEMS]
    budget[0] -= 1
    kind = type(value)
    if budget[0] < 0:
        return False
    if kind in PLAIN_SCALARS:
        return True
    if kind is np.ndarray:
        return value.dtype != object or all(is_plain(v, budget) for v in value.ravel().tolist())
    if isinstance(value, np.generic):
        return kind.__module__ == "numpy" and kind is not np.object_
    torch = sys.modules.get("torch")
    if torch is not None and kind in (torch.Tensor, torch.nn.Parameter):
        return True
    if kind in (list, tuple, set, frozenset):
        return all(is_plain(v, budget) for v in value)
    if kind is dict:
        return all(is_plain(k, budget) and is_plain(v, budget) for k, v in value.items())
    return False


class Checked:
    """A student's function as the tests call it: audited on entry and exit, plain data out."""

    __slots__ = ("function",)

    def __init__(self, function):
        object.__setattr__(self, "function", function)

    def __call__(self, *args, _audit=sys.audit, _new=object, _plain=is_plain, **kwargs):
        function = self.function
        token = _new()
        _audit("cbir.guard.enter", token)
        try:
            result = function(*args, **kwargs)
        finally:
            _audit("cbir.guard.exit", token)
        if not _plain(result):
            raise Misconception("not-plain-result")
        return result

    def __get__(self, obj, owner=None):
        return self if obj is None else types.MethodType(self, obj)

    def __repr__(self) -> str:
        return repr(self.function)


def _compile_cell(source: str, filename: str, shell) -> tuple:
    """``(body, last)`` code objects of one cell: ``last`` is its final expression, shown like IPython does."""
    tree = ast.parse(shell.transform_cell(source), filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Interactive([tree.body.pop()]), filename, "single")
    return compile(tree, filename, "exec"), last


def _wrap_definitions(main: dict, before: dict, instructor_names: set) -> list[str]:
    """Wrap what a student cell defined; undo rebinding of the instructor's names; return those names."""
    kept = []
    for name, value in list(main.items()):
        if name in before and before[name] is value:
            continue
        if name in instructor_names:
            main[name] = before[name]
            kept.append(name)
        elif _students(value):
            main[name] = Checked(value)
        elif isinstance(value, type) and vars(value).get("__module__") == "__main__":
            for attr, member in list(vars(value).items()):
                if _students(member):
                    setattr(value, attr, Checked(member))
                elif isinstance(member, (staticmethod, classmethod)) and _students(member.__func__):
                    setattr(value, attr, type(member)(Checked(member.__func__)))
    return kept


def _students(value) -> bool:
    """A function the student's cell defined (not one it imported)."""
    return isinstance(value, types.FunctionType) and value.__code__.co_filename.startswith(STUDENT_FILE)


def install(shell, cells_file: str) -> None:
    """Start guarding this kernel: read and delete ``cells_file``, add the audit hook (module docstring).

    The hook and the helpers it calls run with private copies of this module's globals and of the
    builtins: a student function that rebinds a name here, or ``builtins.len``, changes nothing they use
    (and the change itself is found on its return).
    """
    private = dict(globals())
    private["__builtins__"] = dict(vars(builtins))
    for name, value in list(private.items()):
        if isinstance(value, types.FunctionType) and value.__module__ == __name__:
            private[name] = types.FunctionType(value.__code__, private, value.__name__, value.__defaults__,
                                               value.__closure__)
    private["_install"](shell, cells_file)


# long: the audit hook and the stubs it serves must share one closure (nothing else may reach the
# compiled tests or the secret), so they are defined together here rather than as module functions
def _install(shell, cells_file: str) -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    with open(cells_file) as fh:
        plan = json.load(fh)
    os.unlink(cells_file)
    cell_prefix = f"<grader cell {secrets.token_hex(16)}"
    roots = _trusted_roots(cell_prefix)
    secret, receipts = bytes.fromhex(plan["secret"]), plan["receipts"]
    cells = {int(i): _compile_cell(src, f"{cell_prefix} {i}>", shell) for i, src in plan["instructor"].items()}
    students = {int(i): compile(src, f"{STUDENT_FILE}{i}>", "exec") for i, src in plan["student"].items()}
    del plan
    compiler = shell.compile
    for i in cells:
        compiler._filename_map[f"{cell_prefix} {i}>"] = i

    def name_without_cache(transformed_code, number=0, raw_code=None):   # the stubs: nothing in linecache
        name = f"{cell_prefix} stub {number}>"
        compiler._filename_map[name] = number
        return name

    compiler.cache = name_without_cache
    main = shell.user_ns
    student_names: set = set()
    calls: list = []            # [(token, surfaces on entry, notebook namespace on entry)]
    latest: list = []           # [the last snapshot of the surfaces]: reused while nothing changed
    busy = [False]
    getframe, is_, guard_file = _getframe, _is, os.path.realpath(__file__)
    cache: list = [0, []]

    def student_on_stack() -> bool:
        frame = getframe(1)
        while frame is not None:
            if not frame.f_code.co_filename.startswith(roots):
                return True
            frame = frame.f_back
        return False

    def student_asked() -> bool:
        """Whether the code that called into ctypes (its own frames skipped) is the student's."""
        frame = getframe(1)
        while frame is not None and (frame.f_code.co_filename.startswith(guard_file)
                                     or os.sep + "ctypes" + os.sep in frame.f_code.co_filename):
            frame = frame.f_back
        return frame is not None and not frame.f_code.co_filename.startswith(roots)

    def run_instructor_cell(index: int) -> None:
        body, last = cells[index]
        before, status = _snapshot(shell, cache), "failed"
        try:
            busy[0] = False
            exec(body, main)
            if last is not None:
                exec(last, main)
            status = "passed"
        finally:
            busy[0] = True
            changed = _changes(shell, before, strict=False)
            with open(receipts, "a") as fh:
                fh.write(receipt(secret, index, "failed" if changed else status) + "\n")
        if changed:
            print(f"changed while the cell ran (put back): {', '.join(changed[:20])}")
            raise Misconception("tampering")

    def define_student_cell(index: int) -> None:
        before, surfaces = dict(main), _snapshot(shell, cache)
        try:
            busy[0] = False
            exec(students[index], main)
        finally:
            busy[0] = True
            changed = _changes(shell, surfaces, strict=True)
            instructor = {name for name in before if name not in student_names}
            kept = _wrap_definitions(main, before, instructor)
            student_names.update(name for name in main if name not in instructor)
        if kept:
            print(f"(the grader kept the notebook's own {', '.join(sorted(kept))}: a solution may not redefine it)")
        if changed:
            print(f"changed by the definitions (put back): {', '.join(changed[:20])}")
            raise Misconception("tampering")

    def notebook_changes(before: dict) -> list[str]:
        """Names of the notebook's namespace a student call rebound, added or deleted; put back."""
        changed = [name for name in main.keys() | before.keys() if not name.startswith("_")
                   and not (name in main and name in before and is_(main[name], before[name]))]
        for name in changed:
            if name in before:
                main[name] = before[name]
            else:
                del main[name]
        return changed

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            if event == "cbir.guard.enter":
                if not (latest and _still(shell, latest[0], cache)):   # trusted code changed something since
                    latest[:] = [_snapshot(shell, cache)]
                calls.append((args[0], latest[0], dict(main)))
            elif event == "cbir.guard.exit":
                if not calls or not is_(calls[-1][0], args[0]):
                    raise Misconception("tampering")
                _, surfaces, before = calls.pop()
                changed = _changes(shell, surfaces, strict=True) + notebook_changes(before)
                if changed:
                    print(f"changed by the call (put back): {', '.join(changed[:20])}")
                    raise Misconception("tampering")
            elif event == "open" and isinstance(args[0], str) and args[0].startswith("/proc/") \
                    and args[0].endswith("/mem"):
                raise GuardError(f"{args[0]} is not readable while grading")
            elif event.startswith("ctypes.") and student_asked():
                raise GuardError(f"{event} is not allowed in graded code")
            elif event in REFUSED_NEAR_STUDENT_CODE or \
                    (event == "object.__getattr__" and args[1] in FRAME_ATTRIBUTES) or \
                    (event == "object.__setattr__" and args[1] in REFUSED_SETATTR) or \
                    (event == "compile" and isinstance(args[1], str) and args[1].startswith(cell_prefix)):
                if student_on_stack():
                    raise GuardError(f"{event} is not allowed in graded code")
                if event == "cbir.guard.run":
                    run_instructor_cell(int(args[0]))
                elif event == "cbir.guard.define":
                    define_student_cell(int(args[0]))
        finally:
            busy[0] = False

    sys.addaudithook(hook)
