"""Stage 2, features: test-time augmentation, several views of each image embedded and averaged (notebook 06).

Test-time augmentation (TTA): embed several views of each image and average them.

f_TTA(x) = normalise( sum_{v in views} f(v(x)) ),  f = the extractor's L2-normalised embedding,

views: the preprocessed image itself, its horizontal flip (``flip``), and each of those
resized by the factors in ``scales`` (multi-scale; bilinear, on the preprocessed tensor).
A network with global pooling (the CNNs) accepts any input size; a ViT (CLIP) needs scale 1.

:class:`TTAExtractor` is an :class:`~cbir_kit.features.extractor.Extractor` whose
``embed_batch`` does this, so batching, decoding threads and the feature cache (its key
includes the views) work unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CbirError
from .extractor import Extractor


class TTAExtractor(Extractor):
    """An extractor averaging the embeddings of flipped / rescaled views (module docstring)."""

    def __init__(self, spec: str, flip: bool = True, scales: tuple[float, ...] = (1.0,), **kwargs):
        if not flip and tuple(scales) == (1.0,):
            raise CbirError("TTA needs at least one extra view: flip=True or a scale other than 1")
        if any(s <= 0 for s in scales):
            raise CbirError(f"TTA scales must be positive; got {scales}")
        super().__init__(spec, **kwargs)
        self.flip = flip
        self.scales = tuple(float(s) for s in scales)

    def cache_identity(self) -> dict:
        return {**super().cache_identity(), "tta": {"flip": self.flip, "scales": list(self.scales)}}

    def views(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """The augmented batches (B, 3, H, W) whose embeddings are averaged."""
        out = []
        for s in self.scales:
            x = batch if s == 1.0 else F.interpolate(batch, scale_factor=s, mode="bilinear", align_corners=False)
            out.append(x)
            if self.flip:
                out.append(torch.flip(x, dims=[-1]))
        return out

    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        total = sum(Extractor.embed_batch(self, v) for v in self.views(batch))
        return F.normalize(total, dim=1)


def parse_tta(spec: str) -> tuple[bool, tuple[float, ...]]:
    """``flip`` -> horizontal flip; ``ms`` -> scales 1/sqrt(2), 1, sqrt(2); ``flip+ms`` -> both."""
    options = {"flip": (True, (1.0,)), "ms": (False, (2 ** -0.5, 1.0, 2 ** 0.5)),
               "flip+ms": (True, (2 ** -0.5, 1.0, 2 ** 0.5))}
    if spec not in options:
        raise CbirError(f"--tta {spec!r} must be one of {', '.join(options)}")
    return options[spec]
