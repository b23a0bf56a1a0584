"""Stage 2, features: the small networks trained on top of frozen features, applied at query time (notebook 08).

:class:`ProjectionHead` (the CLIP-retrieval project's head)::

    z = W x + b                    (Linear, in_dim -> out_dim)
    z = BatchNorm(z)               (batch statistics while training, running ones at inference)
    z = Dropout_p(z)               (identity at inference)
    e = z / ||z||_2                (cosine similarity of two embeddings = their inner product)

:class:`HashHead` (the binary-hash project's recipe)::

    h = sigmoid(W_h x + b_h)       (the hash layer, ``n_bits`` outputs in (0, 1))
    b = [h > 0.5]                  (the binary code)
    s = W_s h + b_s                (the semantic embedding, trained toward class targets)
    e = s / ||s||_2                ("Algo 2" searches these with inner products)

:meth:`HashHead.init_from_projection` starts the hash layer at a sign hash b = [(x - mu) P > 0]
(e.g. ITQ's mean and projection): W_h = a P^T, b_h = -a mu P, so h > 0.5 exactly when
(x - mu) P > 0; the gain a > 0 sets how far the sigmoid is from saturation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Linear -> BatchNorm -> Dropout -> L2-normalise; ``forward`` returns unit vectors."""

    def __init__(self, in_dim: int, out_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.in_dim, self.out_dim, self.dropout_p = int(in_dim), int(out_dim), float(dropout)
        self.linear = nn.Linear(self.in_dim, self.out_dim)
        self.bn = nn.BatchNorm1d(self.out_dim)
        self.dropout = nn.Dropout(self.dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.dropout(self.bn(self.linear(x))), dim=1)

    def hparams(self) -> dict:
        return {"kind": "projection", "in_dim": self.in_dim, "out_dim": self.out_dim, "dropout": self.dropout_p}


class HashHead(nn.Module):
    """Hash layer (Linear -> sigmoid, ``n_bits``) followed by a linear semantic embedding.

    ``forward`` returns ``(h, e)``: the sigmoid activations (B, n_bits) and the
    L2-normalised semantic embedding (B, embed_dim).  ``codes`` thresholds ``h`` at 0.5.
    """

    def __init__(self, in_dim: int, n_bits: int = 48, embed_dim: int = 100):
        super().__init__()
        self.in_dim, self.n_bits, self.out_dim = int(in_dim), int(n_bits), int(embed_dim)
        self.hash = nn.Linear(self.in_dim, self.n_bits)
        self.semantic = nn.Linear(self.n_bits, self.out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.sigmoid(self.hash(x))
        return h, F.normalize(self.semantic(h), dim=1)

    @torch.no_grad()
    def init_from_projection(self, mean, projection, gain: float) -> None:
        """Set W_h = gain * P^T and b_h = -gain * mu P for ``mean`` (D,) and ``projection`` (D, n_bits)."""
        p = torch.as_tensor(projection, dtype=torch.float32)
        mu = torch.as_tensor(mean, dtype=torch.float32)
        self.hash.weight.copy_(gain * p.T)
        self.hash.bias.copy_(-gain * (mu @ p))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes ``h > 0.5`` as a bool tensor (B, n_bits)."""
        return torch.sigmoid(self.hash(x)) > 0.5

    def hparams(self) -> dict:
        return {"kind": "hash", "in_dim": self.in_dim, "n_bits": self.n_bits, "embed_dim": self.out_dim}


def build_head(hparams: dict) -> nn.Module:
    """Rebuild a head from its ``hparams()`` (used when loading a saved head)."""
    kind = hparams.get("kind")
    if kind == "projection":
        return ProjectionHead(hparams["in_dim"], hparams["out_dim"], hparams["dropout"])
    if kind == "hash":
        return HashHead(hparams["in_dim"], hparams["n_bits"], hparams["embed_dim"])
    raise ValueError(f"unknown head kind {kind!r}")
