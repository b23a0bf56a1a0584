"""Metric-learning losses and miners (pytorch-metric-learning), and the hash recipe's cosine loss.

Losses on a batch of L2-normalised embeddings ``e`` with labels ``y``; ``s_ij = e_i . e_j``:

* ``circle``  (Sun et al. 2020), m = 0.4, gamma = 80, O_p = 1 + m, O_n = -m, D_p = 1 - m, D_n = m:
  L = softplus( logsumexp_n[gamma a_n (s_n - D_n)] + logsumexp_p[-gamma a_p (s_p - D_p)] ),
  a_p = [O_p - s_p]_+, a_n = [s_n - O_n]_+ .
* ``triplet`` with hard mining: L = mean over mined (a, p, n) of [d(a,p) - d(a,n) + margin]_+,
  d Euclidean; after the warm-up each anchor keeps only its hardest positive and negative
  (batch-hard mining).
* ``multi_similarity`` (Wang et al. 2019), alpha 2, beta 50, lambda 0.5:
  L_i = (1/alpha) log(1 + sum_p e^{-alpha (s_ip - lambda)}) + (1/beta) log(1 + sum_n e^{beta (s_in - lambda)}).
* ``contrastive``: L = mean over positive pairs of [d_ij - m_pos]_+ and negative pairs of [m_neg - d_ij]_+,
  d Euclidean (m_pos 0, m_neg 1; the embeddings are unit vectors so d lies in [0, 2]).

Mining after warm-up: for the first ``mining_warmup`` epochs the loss sees every pair or
triplet of the batch; afterwards the miner (multi-similarity mining with epsilon 0.1 for the
pair losses, batch-hard for the triplet loss) keeps the informative ones.

The hash recipe trains against fixed class targets: :func:`class_targets` builds them from
a class hierarchy and :func:`cosine_target_loss` is L = mean_i (1 - cos(e_i, t_{y_i})).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from ..errors import CbirError

# name -> (loss factory, miner factory used after the warm-up)
LOSSES: dict[str, tuple[Callable, Callable]] = {
    "circle": (lambda: losses.CircleLoss(m=0.4, gamma=80), lambda: miners.MultiSimilarityMiner(epsilon=0.1)),
    "triplet": (lambda: losses.TripletMarginLoss(margin=0.1), lambda: miners.BatchHardMiner()),
    "multi_similarity": (lambda: losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
                         lambda: miners.MultiSimilarityMiner(epsilon=0.1)),
    "contrastive": (lambda: losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0),
                    lambda: miners.MultiSimilarityMiner(epsilon=0.1)),
}


def make_loss(name: str):
    """``(loss, miner)`` for a loss named in :data:`LOSSES`."""
    if name not in LOSSES:
        raise CbirError(f"--loss {name!r} is not one of {', '.join(LOSSES)}")
    loss_factory, miner_factory = LOSSES[name]
    return loss_factory(), miner_factory()


def class_targets(class_names, hierarchy: dict | None = None, coarse_weight: float = 1.0) -> np.ndarray:
    """Per-class target embeddings (unit vectors) whose similarities follow a class hierarchy.

    With C fine classes and G coarse groups (``hierarchy`` maps fine -> coarse), class c
    gets ``t_c = (onehot_C(c) + w * onehot_G(parent(c))) / sqrt(1 + w^2)``, so
    ``cos(t_c, t_c') = w^2 / (1 + w^2)`` for two classes of the same group and 0 otherwise
    (w = ``coarse_weight``; w = 1 gives 0.5).  Without a hierarchy the targets are one-hot
    (every pair of classes orthogonal).  Returns an array (C, C + G) in ``class_names`` order.
    """
    class_names = list(class_names)
    n = len(class_names)
    if not hierarchy:
        return np.eye(n, dtype=np.float32)
    missing = [c for c in class_names if c not in hierarchy]
    if missing:
        raise CbirError(f"the class hierarchy has no coarse class for {', '.join(map(str, missing[:5]))}; "
                        "give every fine class a row fine,coarse")
    groups = sorted({hierarchy[c] for c in class_names})
    targets = np.zeros((n, n + len(groups)), dtype=np.float32)
    for i, c in enumerate(class_names):
        targets[i, i] = 1.0
        targets[i, n + groups.index(hierarchy[c])] = coarse_weight
    return targets / np.sqrt(1.0 + coarse_weight ** 2)


def cosine_target_loss(embeddings: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L = mean_i (1 - cos(e_i, t_{y_i})) for embeddings (B, D), integer labels (B,), targets (C, D)."""
    return (1.0 - F.cosine_similarity(embeddings, targets[labels], dim=1)).mean()
