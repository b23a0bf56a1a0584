"""Re-ranking and expansion: k-reciprocal re-ranking, query expansion, DBA."""
from .kreciprocal import (euclidean_distances, k_reciprocal_rerank, k_reciprocal_rerank_features,
                          reciprocal_neighbours)
from .qe import database_augmentation, parse_qe, query_expansion

__all__ = ["database_augmentation", "euclidean_distances", "k_reciprocal_rerank", "k_reciprocal_rerank_features",
           "parse_qe", "query_expansion", "reciprocal_neighbours"]
