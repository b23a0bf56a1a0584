"""Search indexes: exact (faiss Flat and a numpy reference), ANN (faiss factory strings),
binary hashing (hash shortlist + float re-rank)."""
from .ann import AnnIndex, compare_to_exact, recall_vs_exact
from .exact import ExactIndex, numpy_search
from .hashing import HashIndex, ITQHasher, LSHHasher, PCAHasher, make_hasher, shortlist_recall

__all__ = ["AnnIndex", "ExactIndex", "HashIndex", "ITQHasher", "LSHHasher", "PCAHasher", "compare_to_exact",
           "make_hasher", "numpy_search", "recall_vs_exact", "shortlist_recall"]
