"""Collections: a gallery indexed once, then searched by image or by text, from Python, the CLI and notebooks (notebook 02).

:class:`Collection` (:mod:`.collection`) builds, opens, searches and grows a collection folder;
:mod:`.store` is its on-disk format (atomic generations, a verified manifest) and :mod:`.items`
the per-item paths, labels and content hashes.
"""
from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "Collection": ".collection", "Hit": ".collection", "QueryResult": ".collection",
})
