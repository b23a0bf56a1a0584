"""Stage 1, datasets: ``load(spec, root=None)`` returns a :class:`Dataset` for any supported source (notebook 00).

``spec`` is a registered name (see :data:`REGISTRY`), ``folder:PATH`` (one sub-folder per
class, leave-one-out; a folder holding ``query/`` and ``gallery/`` is read as the
query/gallery layout, detected automatically), ``qg:PATH`` (the query/gallery layout,
explicitly) or ``csv:PATH`` (a ``split,path,label`` manifest).

Registered datasets live under the data root (``root``, else ``$CBIR_DATA``, else the checkout's
``datasets/``, else the user's data folder: :func:`~cbir_kit.datasets.base.default_root`);
:func:`fetch` downloads or builds one there (:data:`FETCHERS`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .animals10 import fetch_animals10, load_animals10
from .base import Dataset, DatasetError, default_root, writable
from .cifar100 import fetch_cifar100, load_cifar100
from .corel1k import fetch_corel1k, load_corel1k
from .demo import build, load_demo, load_digits
from .manifest import load_csv, load_folder, load_query_gallery
from .revisitop import fetch_roxford5k, fetch_rparis6k, load_roxford5k, load_rparis6k

# name -> (loader(root, **kwargs), one-line description)
REGISTRY: dict[str, tuple[Callable[..., Dataset], str]] = {
    "demo": (load_demo, "embedded near-duplicate photos (offline, built in seconds)"),
    "digits": (load_digits, "scikit-learn handwritten digits, 10 classes (offline)"),
    "corel1k": (load_corel1k, "Corel-1K: 1,000 photos, 10 classes, 100 queries / 900 gallery (placed by hand)"),
    "animals10": (load_animals10, "Animals-10 from Kaggle: seeded split, 1,000 queries / 10,000 gallery"),
    "cifar100": (load_cifar100, "CIFAR-100 (python archive, MD5-checked): 1,000 test queries / 50,000 train gallery"),
    "roxford5k": (load_roxford5k, "Revisited Oxford 5k: 70 cropped queries, 4,993 images, Easy/Medium/Hard"),
    "rparis6k": (load_rparis6k, "Revisited Paris 6k: 70 cropped queries, 6,322 images, Easy/Medium/Hard"),
}

# name -> fetch(root=None, progress=True) -> folder: download / build / check the files once
FETCHERS: dict[str, Callable[..., Path]] = {
    "demo": lambda root=None, progress=True: build("demo", root),
    "digits": lambda root=None, progress=True: build("digits", root),
    "corel1k": fetch_corel1k,
    "animals10": fetch_animals10,
    "cifar100": fetch_cifar100,
    "roxford5k": fetch_roxford5k,
    "rparis6k": fetch_rparis6k,
}


def register(name: str, loader: Callable[..., Dataset], description: str,
             fetch: Callable[..., Path] | None = None) -> None:
    """Add a named dataset; ``loader(root=..., **kwargs)`` must return a :class:`Dataset`."""
    REGISTRY[name] = (loader, description)
    if fetch is not None:
        FETCHERS[name] = fetch


def fetch(name: str, root=None, progress: bool = True) -> Path:
    """Download, build or check the registered dataset ``name`` under the data root."""
    if name not in FETCHERS:
        raise DatasetError(f"nothing to fetch for {name!r}; fetchable datasets: {', '.join(sorted(FETCHERS))}")
    writable(default_root(root))
    return FETCHERS[name](root=root, progress=progress)


def load(spec: str, root=None, **kwargs) -> Dataset:
    """Load a dataset by spec: a registered name, ``folder:PATH``, ``qg:PATH`` or ``csv:PATH``."""
    kind, _, arg = spec.partition(":")
    if kind == "folder" and arg:
        return load_folder(arg)
    if kind == "qg" and arg:
        return load_query_gallery(arg)
    if kind == "csv" and arg:
        return load_csv(arg)
    if spec in REGISTRY:
        return REGISTRY[spec][0](root=root, **kwargs)
    names = ", ".join(sorted(REGISTRY))
    raise DatasetError(f"unknown dataset {spec!r}; use one of {names}, folder:PATH, qg:PATH or csv:PATH")


__all__ = ["Dataset", "DatasetError", "FETCHERS", "REGISTRY", "default_root", "fetch", "load", "load_csv",
           "load_folder", "load_query_gallery", "register"]
