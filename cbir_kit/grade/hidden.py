"""Instructor side: tools for hidden tests, naming the misconception a failure reveals.

Tools for the course's hidden tests: name the misconception a failure reveals, check the student's own work.

A hidden test that detects a known mistake raises :class:`Misconception` with a key from the
catalogue ``notebooks/misconceptions.toml``; the feedback (:mod:`cbir_kit.grade.feedback`) shows
the catalogue's sentence for that key ("ignores the ``mu`` argument"), never the test code::

    from cbir_kit.grade.hidden import expect, without
    expect(np.isfinite(l2_normalize(np.zeros((2, 3)))).all(), "l2-zero-rows")
    with without(cbir_kit.threshold.retrieval_metrics):      # the exercise must not call it
        mine = threshold_prf(dist, relevant, 0.5)

:func:`without` makes library functions unavailable while the block runs: every binding of each
function in ``cbir_kit``'s loaded modules and in the notebook's namespace is replaced by a stub
that raises ``Misconception("library-call")``, and restored afterwards.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

PREFIX = "misconception:"


class Misconception(AssertionError):
    """A hidden test failed in a way the catalogue explains; ``str()`` is ``misconception:<key>``."""

    def __init__(self, key: str):
        super().__init__(f"{PREFIX}{key}")
        self.key = key


def expect(condition, key: str) -> None:
    """Raise :class:`Misconception` ``key`` unless ``condition`` holds."""
    if not bool(condition):
        raise Misconception(key)


def close(actual, expected, key: str, atol: float = 1e-9, rtol: float = 1e-7) -> None:
    """``expect`` that ``actual`` equals ``expected`` within tolerances (same shape, no NaN where a number is due)."""
    import numpy as np

    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    expect(actual.shape == expected.shape and np.allclose(actual, expected, atol=atol, rtol=rtol), key)


def _bindings(function: Callable, namespaces: list[dict]) -> list[tuple[dict, str]]:
    """Every ``(namespace, name)`` whose value is ``function``."""
    return [(ns, name) for ns in namespaces for name, value in list(ns.items()) if value is function]


@contextlib.contextmanager
def without(*functions: Callable, namespace: dict | None = None) -> Iterator[None]:
    """Make ``functions`` raise ``Misconception("library-call")`` while the block runs.

    ``namespace`` is where the student's code lives (default: the notebook's ``__main__``).
    """
    def stub(*args, **kwargs):
        raise Misconception("library-call")

    spaces = [vars(m) for name, m in list(sys.modules.items())
              if m is not None and (name == "cbir_kit" or name.startswith("cbir_kit."))]
    spaces.append(namespace if namespace is not None else vars(sys.modules["__main__"]))
    saved = [(ns, name, ns[name]) for f in functions for ns, name in _bindings(f, spaces)]
    try:
        for ns, name, _ in saved:
            ns[name] = stub
        yield
    finally:
        for ns, name, value in saved:
            ns[name] = value
