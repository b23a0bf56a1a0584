"""Datasets: ``load(spec, root=None)`` returns a :class:`Dataset` for any supported source.

``spec`` is a registered name (see :data:`REGISTRY`), ``folder:PATH`` (one sub-folder per
class, leave-one-out) or ``csv:PATH`` (a ``split,path,label`` manifest).
"""
from __future__ import annotations

from typing import Callable

from .base import Dataset, DatasetError, default_root
from .demo import load_demo, load_digits
from .manifest import load_csv, load_folder

# name -> (loader(root, **kwargs), one-line description)
REGISTRY: dict[str, tuple[Callable[..., Dataset], str]] = {
    "demo": (load_demo, "embedded near-duplicate photos (offline, built in seconds)"),
    "digits": (load_digits, "scikit-learn handwritten digits, 10 classes (offline)"),
}


def register(name: str, loader: Callable[..., Dataset], description: str) -> None:
    """Add a named dataset; ``loader(root=..., **kwargs)`` must return a :class:`Dataset`."""
    REGISTRY[name] = (loader, description)


def load(spec: str, root=None, **kwargs) -> Dataset:
    """Load a dataset by spec: a registered name, ``folder:PATH`` or ``csv:PATH``."""
    kind, _, arg = spec.partition(":")
    if kind == "folder" and arg:
        return load_folder(arg)
    if kind == "csv" and arg:
        return load_csv(arg)
    if spec in REGISTRY:
        return REGISTRY[spec][0](root=root, **kwargs)
    names = ", ".join(sorted(REGISTRY))
    raise DatasetError(f"unknown dataset {spec!r}; use one of {names}, folder:PATH or csv:PATH")


__all__ = ["Dataset", "DatasetError", "REGISTRY", "default_root", "load", "load_csv", "load_folder", "register"]
