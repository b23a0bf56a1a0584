"""Batched feature extraction: decode in a thread pool while the model runs.

``Extractor.extract(images)`` returns :class:`Features`: one L2-normalised float32 row per
image, ``f_i = phi(x_i) / ||phi(x_i)||_2``, so the inner product of two rows is their cosine
similarity.  Images that fail to decode are reported (path and reason), their rows are NaN
and ``ok`` is False for them: a bad file never stops a run.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import CbirError
from ..images import ImageLoadError, ImageRef, describe, open_image
from .models import Backbone, build_backbone, check_spec, preprocess_id


@dataclass
class Features:
    """Extracted features: ``vectors`` (N, D) float32, ``ok`` (N,) bool, ``failures``."""

    vectors: np.ndarray
    ok: np.ndarray
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (index, image, reason)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; other values are checked."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps"):
        raise CbirError(f"--device {device!r} is not one of auto, cpu, cuda, mps")
    if device == "cuda" and not torch.cuda.is_available():
        raise CbirError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CbirError("--device mps was asked for but Apple MPS is not available; use --device cpu")
    return torch.device(device)


class Extractor:
    """Turns images into L2-normalised feature vectors with one named backbone.

    The network is built lazily, on the first call that needs it, so a run that finds its
    features in the cache never loads the model.
    """

    def __init__(self, spec: str, device: str = "auto", pretrained: bool = True,
                 batch_size: int = 32, num_workers: int | None = None):
        self.spec = spec
        self.device = resolve_device(device)
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.num_workers = num_workers or min(4, os.cpu_count() or 1)
        self._backbone: Backbone | None = None

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            bb = build_backbone(self.spec, pretrained=self.pretrained)
            bb.model.eval().to(self.device)
            if bb.channels_last and self.device.type != "mps":
                bb.model.to(memory_format=torch.channels_last)
            self._backbone = bb
        return self._backbone

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def cache_identity(self) -> dict:
        """What determines the features besides the images (the cache key); builds nothing."""
        return {"model": self.spec, "pretrained": self.pretrained, "preprocess": preprocess_id(self.spec)}

    def _load(self, ref: ImageRef) -> torch.Tensor | str:
        try:
            return self.backbone.preprocess(open_image(ref))
        except ImageLoadError as err:
            return err.reason

    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Forward one preprocessed batch; returns L2-normalised float32 features on the CPU."""
        bb = self.backbone
        x = batch.to(self.device, non_blocking=True)
        if bb.channels_last and x.dim() == 4 and self.device.type != "mps":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = bb.model(x)
        return F.normalize(out.float(), dim=1).cpu()

    def extract(self, images: Sequence[ImageRef], progress: bool = True, desc: str = "extract") -> Features:
        """Embed ``images`` in batches; decoding runs ``num_workers`` threads ahead of the model."""
        n = len(images)
        dim = self.dim
        vectors = np.full((n, dim), np.nan, dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        failures: list[tuple[int, str, str]] = []
        starts = range(0, n, self.batch_size)
        with ThreadPoolExecutor(self.num_workers) as pool, \
                tqdm(total=n, desc=f"{desc} [{self.spec}]", unit="img", disable=not progress, leave=False) as bar:
            def submit(first: int) -> list:
                return [pool.submit(self._load, r) for r in images[first:first + self.batch_size]]

            pending = submit(0) if n else []
            for start in starts:
                loaded = [f.result() for f in pending]
                nxt = start + self.batch_size
                pending = submit(nxt) if nxt < n else []  # decode the next batch while this one runs
                good = [i for i, t in enumerate(loaded) if isinstance(t, torch.Tensor)]
                for i, t in enumerate(loaded):
                    if not isinstance(t, torch.Tensor):
                        failures.append((start + i, describe(images[start + i]), t))
                if good:
                    feats = self.embed_batch(torch.stack([loaded[i] for i in good]))
                    idx = [start + i for i in good]
                    vectors[idx] = feats.numpy()
                    ok[idx] = True
                bar.update(len(loaded))
        return Features(vectors, ok, failures)


def create_extractor(spec: str = "efficientnet_lite0", device: str = "auto", pretrained: bool = True,
                     batch_size: int = 32, num_workers: int | None = None) -> Extractor:
    """The one factory for feature extractors; ``spec`` as in :mod:`cbir_kit.features.models`."""
    check_spec(spec)
    return Extractor(spec, device=device, pretrained=pretrained, batch_size=batch_size, num_workers=num_workers)
