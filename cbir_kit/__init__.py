"""Ground floor: cbir_kit, a teaching toolkit for content-based image retrieval (notebook 00 starts the course).

The pipeline is the folder structure, one package per stage in pipeline order:
``datasets`` (1) -> ``features`` (2) -> ``index`` (3) -> ``rerank`` (4) -> ``threshold`` (5)
-> ``evaluation`` and ``bench`` (6) -> ``report`` (7); ``pipeline`` walks the path once,
``train`` and ``grade`` are side branches and ``cli`` is the ``cbir`` command.

``import cbir_kit`` loads nothing heavy and changes nothing in the process: the names below
are imported on first use (PEP 562), so ``cbir_kit.evaluate(...)`` works without importing
torch or faiss up front.
"""
import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CbirError": "cbir_kit.errors",
    "CbirWarning": "cbir_kit.errors",
    "Dataset": "cbir_kit.datasets",
    "load": "cbir_kit.datasets",
    "create_extractor": "cbir_kit.features",
    "EvalResult": "cbir_kit.pipeline.job",
    "evaluate": "cbir_kit.pipeline.job",
    "compare": "cbir_kit.pipeline.comparison",
    "Collection": "cbir_kit.collection.collection",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cbir_kit' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
