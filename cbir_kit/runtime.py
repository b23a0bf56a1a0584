"""Ground floor: the runtime, where and how the work runs, built once and handed down (notebook 00).

A :class:`Runtime` holds what every stage needs to know about the run and nothing about the
method: the data root, the feature cache folder, the device, the extraction batch size and
decoding threads, whether to draw progress bars, the seed of every random choice, and the cluster
the heavy work may run on (:mod:`cbir_kit.cluster`; ``"none"``: this process).  The
``cbir`` command builds one from its flags; a notebook passes the fields it wants to change as
keywords (``evaluate(ds, progress=False)``) or a whole ``Runtime``.  ``None`` for ``root`` and
``cache_dir`` means the documented defaults (``$CBIR_DATA`` ..., ``$CBIR_CACHE`` ...).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .errors import CbirError


@dataclass(frozen=True)
class Runtime:
    """Where and how the work runs (module docstring)."""

    root: str | os.PathLike | None = None
    cache_dir: str | os.PathLike | None = None
    device: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    progress: bool = True
    seed: int = 0
    cluster: object = "none"      # "none", "local:N", a scheduler address or a distributed.Client (cbir_kit.cluster)

    def replace(self, **options) -> "Runtime":
        """A copy with ``options`` changed; an unknown name is an error that lists the fields."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise CbirError(f"unknown option(s) {', '.join(unknown)}; the runtime options are {', '.join(names)}")
        return dataclasses.replace(self, **options)


RUNTIME_OPTIONS = tuple(f.name for f in dataclasses.fields(Runtime))


def runtime_of(runtime: Runtime | None, options: dict) -> Runtime:
    """``runtime`` (default: ``Runtime()``) with the keyword ``options`` a caller passed changed."""
    return (runtime or Runtime()).replace(**options)
