"""Stage 4, rerank: ranked lists -> better ranked lists (notebooks 06 and 07).

k-reciprocal re-ranking (:mod:`.kreciprocal`), query expansion and database-side
augmentation (:mod:`.qe`).
"""
from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "euclidean_distances": ".kreciprocal", "k_reciprocal_rerank": ".kreciprocal",
    "k_reciprocal_rerank_features": ".kreciprocal", "reciprocal_neighbours": ".kreciprocal",
    "database_augmentation": ".qe", "query_expansion": ".qe",
})
