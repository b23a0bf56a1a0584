"""Side branch, training: class-balanced P-K batches, seeded (notebook 08).

``pk_batches`` yields index batches of P classes x K items (pytorch-metric-learning's
``MPerClassSampler``): each batch picks P distinct classes at random and K items of each
(with replacement only when a class has fewer than K).  The sampler draws from numpy's
global-style ``RandomState``; here it is given its own ``RandomState(seed)`` for the
duration of the epoch, so batches depend on the seed alone.
"""
from __future__ import annotations

import contextlib

import numpy as np
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common

from ..errors import CbirError


@contextlib.contextmanager
def _seeded_sampler_rng(seed: int):
    saved = pml_common.NUMPY_RANDOM
    pml_common.NUMPY_RANDOM = np.random.RandomState(seed)
    try:
        yield
    finally:
        pml_common.NUMPY_RANDOM = saved


def pk_batches(labels, p: int, k: int, n_items: int, seed: int) -> list[np.ndarray]:
    """About ``n_items`` indices as batches of ``p`` classes x ``k`` items (one epoch)."""
    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    if n_classes < 2:
        raise CbirError("metric learning needs at least two classes in the training split")
    p = min(p, n_classes)
    batch = p * k
    sampler = MPerClassSampler(labels, m=k, batch_size=batch, length_before_new_iter=max(n_items, batch))
    with _seeded_sampler_rng(seed):
        order = np.fromiter(iter(sampler), dtype=np.int64)
    return [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]
