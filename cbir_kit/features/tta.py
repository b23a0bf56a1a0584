"""Stage 2, features: test-time augmentation, several views of each image embedded and averaged (notebook 06).

f_TTA(x) = normalise( sum_{v in views} f(v(x)) ),  f = the extractor's L2-normalised embedding,

views: the preprocessed image itself, its horizontal flip (``flip``), and each of those
resized by the factors in ``scales`` (multi-scale; bilinear, on the preprocessed tensor).
A network with global pooling (the CNNs) accepts any input size; a ViT (CLIP) needs scale 1.

:class:`TTAExtractor` wraps an existing :class:`~cbir_kit.features.extractor.Extractor`: it
shares that extractor's network and settings (nothing is built again) and only its
``embed_batch`` differs, so batching, decoding threads and the feature cache (its key
includes the views) work unchanged.  The views of ``tta="flip+ms"`` and the like come from
:func:`cbir_kit.method_specs.parse_method`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CbirError
from .extractor import Extractor
from .specs import check_spec


class TTAExtractor(Extractor):
    """An extractor averaging the embeddings of flipped / rescaled views (module docstring)."""

    def __init__(self, base: Extractor | str, flip: bool = True, scales: tuple[float, ...] = (1.0,), **kwargs):
        """``base``: the extractor to wrap, or a model spec to build one with ``Extractor(base, **kwargs)``."""
        if not flip and tuple(scales) == (1.0,):
            raise CbirError("TTA needs at least one extra view: flip=True or a scale other than 1")
        if any(s <= 0 for s in scales):
            raise CbirError(f"TTA scales must be positive; got scales={scales}")
        if isinstance(base, str):
            check_spec(base)
            base = Extractor(base, **kwargs)
        elif kwargs:
            raise CbirError(f"extractor options {sorted(kwargs)} belong to the wrapped extractor; pass them to "
                            "create_extractor() when you make it")
        vars(self).update(vars(base))   # the same network, runners and settings: nothing is rebuilt
        self.base = base
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
