"""Search indexes: exact (faiss Flat and a numpy reference)."""
from .exact import ExactIndex, numpy_search

__all__ = ["ExactIndex", "numpy_search"]
