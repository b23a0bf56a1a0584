"""Stage 3, index: vectors -> ranked lists (notebooks 02 and 04).

Exact search (faiss Flat and a numpy reference, :mod:`.exact`), approximate search from any
faiss factory string (:mod:`.ann`), binary hashing with a float re-rank (:mod:`.hashing`) and
the hash project's Hamming algorithms (:mod:`.hash_search`).
"""
from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "AnnIndex": ".ann", "compare_to_exact": ".ann", "recall_vs_exact": ".ann",
    "ExactIndex": ".exact", "numpy_search": ".exact",
    "HashIndex": ".hashing", "ITQHasher": ".hashing", "LSHHasher": ".hashing", "PCAHasher": ".hashing",
    "make_hasher": ".hashing", "shortlist_recall": ".hashing",
})
