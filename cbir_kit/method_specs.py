"""Ground floor: the one parser of method specs, ``itq:64``, ``aqe:5``, ``flip+ms`` (notebooks 04 and 06).

A method option of ``evaluate()`` (and ``cbir evaluate``) is one short string:

``hash``  ``METHOD:BITS``  binary codes for the hash shortlist; METHOD ``itq``, ``lsh`` or ``pca``,
          BITS a positive multiple of 8 (``itq:64``)
``qe``    ``aqe:N``        average query expansion with the top N; ``alpha:A:N`` alpha-QE with
          weights s^A (``alpha:3:10``)
``tta``   ``flip``, ``ms`` (scales 1/sqrt(2), 1, sqrt(2)) or ``flip+ms``

:func:`parse_method` turns one into a typed value or raises one error that names the option,
the value and the forms; the stages that use them (:mod:`cbir_kit.index.hashing`,
:mod:`cbir_kit.rerank.qe`, :mod:`cbir_kit.features.tta`) never parse strings themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import CbirError

HASH_METHODS = ("itq", "lsh", "pca")
MULTI_SCALE = (2 ** -0.5, 1.0, 2 ** 0.5)


@dataclass(frozen=True)
class HashSpec:
    """``METHOD:BITS``: which code maker, and its number of bits."""

    method: str
    bits: int


@dataclass(frozen=True)
class QESpec:
    """``aqe:N`` (``alpha`` 0) or ``alpha:A:N``: the top ``n`` neighbours, weighted by similarity^alpha."""

    n: int
    alpha: float


@dataclass(frozen=True)
class TTASpec:
    """The views averaged at test time: the image (at each scale) and, with ``flip``, its mirror image."""

    flip: bool
    scales: tuple[float, ...]


FORMS = {
    "hash": f"METHOD:BITS with METHOD one of {', '.join(HASH_METHODS)} and BITS a positive multiple of 8, e.g. itq:64",
    "qe": "aqe:N (average of the top N) or alpha:A:N (alpha-QE), e.g. aqe:5 or alpha:3:10",
    "tta": "flip, ms or flip+ms",
}


def _hash(parts: list[str]) -> HashSpec | None:
    if len(parts) == 2 and parts[0] in HASH_METHODS and parts[1].isdigit():
        bits = int(parts[1])
        if bits > 0 and bits % 8 == 0:
            return HashSpec(parts[0], bits)
    return None


def _qe(parts: list[str]) -> QESpec | None:
    try:
        if parts[0] == "aqe" and len(parts) == 2:
            n, alpha = int(parts[1]), 0.0
        elif parts[0] == "alpha" and len(parts) == 3:
            n, alpha = int(parts[2]), float(parts[1])
        else:
            return None
    except ValueError:
        return None
    return QESpec(n, alpha) if n >= 1 and alpha >= 0 and math.isfinite(alpha) else None


def _tta(parts: list[str]) -> TTASpec | None:
    views = {"flip": TTASpec(True, (1.0,)), "ms": TTASpec(False, MULTI_SCALE), "flip+ms": TTASpec(True, MULTI_SCALE)}
    return views.get(":".join(parts))


PARSERS = {"hash": _hash, "qe": _qe, "tta": _tta}


def parse_method(option: str, spec) -> HashSpec | QESpec | TTASpec:
    """The typed value of method option ``option`` (``hash``, ``qe`` or ``tta``) written as ``spec``."""
    if option not in PARSERS:
        raise CbirError(f"unknown method option {option!r}; use one of {', '.join(PARSERS)}")
    parsed = PARSERS[option](spec.split(":")) if isinstance(spec, str) and spec else None
    if parsed is None:
        raise CbirError(f"{option}={spec!r} must be {FORMS[option]}")
    return parsed
