"""Side branch, training: metric-learning losses and miners, and the hash recipe's cosine loss (notebook 08).

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

The hash layer's own terms act on the sigmoid outputs h in (0, 1)^B, relaxed to
u = 2h - 1 in (-1, 1)^B, so that for binary codes u_i . u_j = B - 2 d_H(i, j):

* :func:`neighbour_code_loss` (Hamming ranking): for anchor i and reference items j != i,
  target  p_ij = softmax_j( (cos(x_i, x_j) + beta [y_i = y_j]) / tau_f )  from the frozen
  features x (beta > 0 ranks an item's same-class neighbours first), model
  q_ij = softmax_j( u_i . u_j / tau_h ), and L = mean_i sum_j -p_ij log q_ij (cross-entropy,
  = KL(p_i || q_i) + const), so the codes keep each item's nearest neighbours nearest in
  Hamming distance.
* :func:`quantisation_loss`: L = mean (1 - u^2) = mean 4 h (1 - h), pushing h to 0 or 1 so
  that thresholding at 0.5 changes little.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from ..errors import CbirError
from .recipes import LOSSES

def make_loss(name: str):
    """``(loss, miner)`` for a loss named in :data:`cbir_kit.train.recipes.LOSSES`."""
    if name not in LOSSES:
        raise CbirError(f"loss={name!r} is not one of {', '.join(LOSSES)}")
    (loss_class, loss_args), (miner_class, miner_args) = LOSSES[name]
    return getattr(losses, loss_class)(**loss_args), getattr(miners, miner_class)(**miner_args)


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


def neighbour_code_loss(h_anchor: torch.Tensor, h_ref: torch.Tensor, x_anchor: torch.Tensor,
                        x_ref: torch.Tensor, y_anchor: torch.Tensor, y_ref: torch.Tensor, self_mask: torch.Tensor,
                        label_bonus: float = 0.3, feature_temp: float = 0.05,
                        code_temp: float = 4.0) -> torch.Tensor:
    """Cross-entropy of the frozen-feature neighbour distribution and the relaxed-code one (module doc).

    ``h_anchor`` (A, B) and ``h_ref`` (R, B) are sigmoid outputs, ``x_*`` the frozen features,
    ``y_*`` integer labels, ``self_mask`` (A, R) True where the reference item is the anchor itself.
    """
    u_a, u_r = 2.0 * h_anchor - 1.0, 2.0 * h_ref - 1.0
    sim = F.normalize(x_anchor, dim=1) @ F.normalize(x_ref, dim=1).T
    sim = sim + label_bonus * (y_anchor[:, None] == y_ref[None, :]).float()
    target = F.softmax((sim / feature_temp).masked_fill(self_mask, float("-inf")), dim=1)
    log_q = F.log_softmax((u_a @ u_r.T / code_temp).masked_fill(self_mask, float("-inf")), dim=1)
    return -(target * log_q.masked_fill(self_mask, 0.0)).sum(dim=1).mean()


def quantisation_loss(h: torch.Tensor) -> torch.Tensor:
    """L = mean (1 - (2h - 1)^2): zero when every sigmoid output is 0 or 1."""
    return (1.0 - (2.0 * h - 1.0) ** 2).mean()
