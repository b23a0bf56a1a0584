"""Ground floor: lazy package exports (PEP 562), so importing a package loads no torch or faiss.

A package's ``__init__`` lists its public names and the submodule of each; a name's module
is imported the first time the name is used.  ``from cbir_kit.features import FeatureCache``
and ``cbir_kit.features.FeatureCache`` work as with eager imports.
"""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__, __all__)`` for ``package``; ``exports`` maps name -> submodule (``.cache``)."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(exports) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__, sorted(exports)
