"""The ``cbir`` command: the only package that imports argparse.

Each sub-command lives in a module of this package with a function ``add_<name>(subparsers)``
that registers its flags and a ``run_<name>(args)`` that imports the library when it runs, so
``cbir --help`` and ``cbir datasets list`` load neither torch nor faiss.

Errors raised on purpose (:class:`cbir_kit.errors.CbirError`) print as one line and exit 2;
notices of adjusted input (:class:`cbir_kit.errors.CbirWarning`) print as one line each, once per run.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from ..errors import CbirError, CbirWarning
from .bench import add_bench
from .collection import add_index, add_search
from .compare import add_compare
from .datasets import add_datasets
from .evaluate import add_evaluate
from .grade import add_grade
from .train import add_finetune, add_train


COMMANDS = [add_evaluate, add_compare, add_index, add_search, add_datasets, add_train, add_finetune, add_bench,
            add_grade]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbir", description="cbir_kit: content-based image retrieval, taught")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


# library parameter -> the flag's argparse dest, where the two names differ
PARAMETER_DESTS = {"num_workers": "workers", "cache_dir": "cache", "overwrite": "force"}


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{name: --option}`` of ``parser`` and every sub-command under it: argparse dests and the
    library parameters they feed (:data:`PARAMETER_DESTS`)."""
    names = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                names.update(option_names(child))
        elif action.option_strings:
            names.setdefault(action.dest, max(action.option_strings, key=len))
    names.update({param: names[dest] for param, dest in PARAMETER_DESTS.items() if dest in names})
    return names


QUOTED = re.compile(r"""('[^']*'|"[^"]*")""")


def as_flags(message: str, names: dict[str, str]) -> str:
    """A library message in the command's words: each ``param=`` becomes ``--option``.

    The library speaks in its functions' parameter names, only the command in flags (DESIGN.md).
    ``name=True`` becomes the on/off flag alone.  Quoted text (what the user typed, a path) is left as it is.
    """
    quoted = [m.span() for m in QUOTED.finditer(message)]
    pattern = re.compile(r"(?<![\w.=/-])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                         + r")=(True\b)?(?=([^\s,;.)]?))")

    def flag(m: re.Match) -> str:
        if any(a <= m.start() < b for a, b in quoted):
            return m.group(0)
        if m.group(2):                                   # name=True is an on/off flag: just the flag
            return names[m.group(1)]
        return names[m.group(1)] + (" " if m.group(3) else "")

    return pattern.sub(flag, message) if names else message


def one_line_warnings(command: str, names: dict[str, str]):
    """A ``warnings.showwarning`` that prints a :class:`CbirWarning` as ``cbir COMMAND: warning: ...``.

    Each message is printed once, however many runs (``cbir compare``) raise it; other warnings
    keep Python's own format.
    """
    python_format = warnings.showwarning
    printed = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CbirWarning):
            if str(message) not in printed:
                printed.add(str(message))
                print(f"cbir {command}: warning: {as_flags(str(message), names)}", file=sys.stderr)
        else:
            python_format(message, category, filename, lineno, file, line)
    return show


def quiet_openmp() -> None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose otherwise.

    libgomp's default spins waiting threads, which steals the cores the working threads need
    on a shared or loaded machine: measured on a busy 2-core machine, one faiss
    IndexBinaryFlat query took 24 ms instead of 0.08 ms, and EfficientNet-Lite0 ran at 10
    instead of 38 images/s.  The ``cbir`` process owns its environment, so it sets this before
    torch or faiss load; ``import cbir_kit`` changes nothing (set the variable yourself in a
    notebook's environment).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    names = option_names(parser._subparsers._group_actions[0].choices[args.command])
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warnings(args.command, names)
            return args.func(args)
    except CbirError as err:
        print(f"cbir {args.command}: error: {as_flags(str(err), names)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cbir {args.command}: interrupted", file=sys.stderr)
        return 130

