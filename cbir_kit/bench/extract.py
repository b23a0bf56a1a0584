"""Stage 6, timings: ``cbir bench extract``, the naive per-image loop against the extraction pipeline (notebook 01).

``cbir bench extract``: the naive per-image loop against cbir_kit's pipeline, side by side.

Both embed the same images with the same model in one run:

* naive: for each image, ``open`` -> ``preprocess`` -> forward a batch of one, default
  (contiguous) memory format, no decoding threads, torch's default thread count;
* pipeline: :meth:`cbir_kit.features.Extractor.extract` (decoding threads, uint8 batches,
  BatchNorm folded and oneDNN-frozen network, channels-last, ``inference_mode``, the
  model's batch size, one single-threaded forward stream per core).

The naive loop runs the network exactly as built (``extractor.backbone.model``, which the
pipeline never modifies: it runs its own rewritten copy).

The images are cut into blocks and the two methods alternate block by block (naive first
on even blocks, pipeline first on odd ones), so load from other processes on a shared
machine falls on both alike.  Reported per method: images/s = images / wall seconds, and
CPU ms per image = (user + sys CPU time of this process) / images, which background load
disturbs much less.  ``speedup`` = pipeline images/s / naive images/s.
``max_abs_diff`` = max |f_naive - f_pipeline| over all features (both L2-normalised).

FLOP bound: ``model_gflops`` is counted by ``torch.utils.flop_counter`` for one image
(2 FLOPs per multiply-add); ``sgemm_gflops`` is the best of several timed float32
``(n x n) @ (n x n)`` products (2 n^3 FLOPs each) with the same threads; the ratio
``model_gflops * images/s / sgemm_gflops`` is the fraction of the machine's dense
matrix-multiply speed the pipeline reaches (depthwise convolutions rarely get near 1).
"""
from __future__ import annotations

import os
import platform
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import load
from ..errors import CbirError
from ..features import OFFLINE_MODEL, create_extractor
from ..features.extractor import Extractor, available_cores
from ..datasets.images import ImageLoadError, open_image


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads; ``time.process_time``, any platform)."""
    return time.process_time()


def naive_features(extractor: Extractor, images: Sequence) -> np.ndarray:
    """The per-image loop of the seed projects: open, preprocess, forward one image, no batching."""
    bb = extractor.backbone
    model = bb.model.to(memory_format=torch.contiguous_format)
    out = np.full((len(images), bb.dim), np.nan, dtype=np.float32)
    try:
        for i, ref in enumerate(images):
            try:
                x = bb.preprocess(open_image(ref)).unsqueeze(0).to(extractor.device)
            except ImageLoadError:
                continue
            with torch.no_grad():
                out[i] = F.normalize(model(x).float(), dim=1).cpu().numpy()[0]
    finally:
        if bb.channels_last and extractor.device.type != "mps":
            model.to(memory_format=torch.channels_last)
    return out


def model_gflops(extractor: Extractor) -> float:
    """Forward FLOPs of one 224x224 (or the model's input size) image, in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    size = getattr(extractor.backbone.preprocess, "transforms", [None])
    crop = next((t.size for t in size if hasattr(t, "size") and type(t).__name__ == "CenterCrop"), (224, 224))
    x = torch.zeros(1, 3, *crop, device=extractor.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        extractor.backbone.model(x)
    return counter.get_total_flops() / 1e9


def sgemm_gflops(n: int = 1024, repeats: int = 5, threads: int | None = None) -> float:
    """Best-of-``repeats`` float32 matrix-multiply speed: 2 n^3 / seconds, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    old = torch.get_num_threads()
    torch.set_num_threads(threads or old)
    try:
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return 2 * n ** 3 / best / 1e9


def bench_extract(dataset: str = "demo", model: str = OFFLINE_MODEL, limit: int | None = None,
                  block: int = 100, device: str = "cpu", batch_size: int | None = None,
                  num_workers: int | None = None, num_threads: int | None = None, precision: str = "auto",
                  pretrained: bool = True, root=None, progress: bool = True) -> dict:
    """Time the naive loop and the pipeline on the same images (see the module docstring)."""
    ds = load(dataset, root=root)
    images = list(ds.gallery) if ds.leave_one_out else list(ds.gallery) + list(ds.query)
    images = images[:limit] if limit else images
    if not images:
        raise CbirError(f"{dataset}: no images to benchmark")
    if block < 1:
        raise CbirError(f"block={block} must be at least 1 (images per alternating block)")
    ex = create_extractor(model, device=device, pretrained=pretrained, batch_size=batch_size,
                          num_workers=num_workers, num_threads=num_threads, precision=precision)
    ex.extract(images[:2 * ex.batch_size], progress=False)  # builds (and freezes) the pipeline's network
    warm = images[:min(len(images), ex.batch_size)]
    naive_features(ex, warm[:2])

    n = len(images)
    naive, fast = np.empty((n, ex.dim), np.float32), np.empty((n, ex.dim), np.float32)
    wall = {"naive": 0.0, "pipeline": 0.0}
    cpu = {"naive": 0.0, "pipeline": 0.0}
    blocks = [(a, min(a + block, n)) for a in range(0, n, block)]
    for j, (a, b) in enumerate(blocks):
        order = ("naive", "pipeline") if j % 2 == 0 else ("pipeline", "naive")
        for method in order:
            c0, t0 = cpu_seconds(), time.perf_counter()
            if method == "naive":
                naive[a:b] = naive_features(ex, images[a:b])
            else:
                fast[a:b] = ex.extract(images[a:b], progress=False).vectors
            wall[method] += time.perf_counter() - t0
            cpu[method] += cpu_seconds() - c0
        if progress:
            print(f"  {b}/{n} images: naive {b / wall['naive']:.1f} img/s, "
                  f"pipeline {b / wall['pipeline']:.1f} img/s", flush=True)

    both = np.isfinite(naive).all(1) & np.isfinite(fast).all(1)
    gflops = model_gflops(ex)
    threads = ex.num_threads if ex.device.type == "cpu" else None
    gemm = sgemm_gflops(threads=threads)
    ips = {m: n / wall[m] for m in wall}
    return {
        "dataset": ds.name, "model": model, "n_images": n, "device": str(ex.device), "precision": ex.precision,
        "batch_size": ex.batch_size, "num_workers": ex.num_workers, "num_threads": ex.num_threads,
        "streams": ex.streams, "network": ex.network_kind(),
        "block": block,
        "naive": {"images_per_s": ips["naive"], "cpu_ms_per_image": 1000 * cpu["naive"] / n,
                  "wall_s": wall["naive"]},
        "pipeline": {"images_per_s": ips["pipeline"], "cpu_ms_per_image": 1000 * cpu["pipeline"] / n,
                     "wall_s": wall["pipeline"]},
        "speedup": ips["pipeline"] / ips["naive"],
        "max_abs_diff": float(np.abs(naive[both] - fast[both]).max()) if both.any() else float("nan"),
        "n_failed": int((~both).sum()),
        "model_gflops": gflops, "sgemm_gflops": gemm,
        "flop_bound_ratio": gflops * ips["pipeline"] / gemm,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": available_cores(),
                    "torch": torch.__version__, "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg")
                    else None},
    }


def batch_size_sweep(model: str = OFFLINE_MODEL, sizes: Sequence[int] = (1, 2, 4, 8, 16, 32), seconds: float = 1.0,
                     rounds: int = 3, device: str = "cpu", num_threads: int | None = None,
                     pretrained: bool = False) -> dict[int, float]:
    """Model-only images/s per batch size (best of ``rounds`` rounds, sizes interleaved)."""
    ex = create_extractor(model, device=device, pretrained=pretrained, num_threads=num_threads)
    from PIL import Image
    x0 = ex._to_input([np.asarray(ex._split.pil_stage(Image.new("RGB", (256, 256), (90, 120, 150))))]
                      if ex._split is not None else [ex.backbone.preprocess(Image.new("RGB", (256, 256)))])
    best = {s: 0.0 for s in sizes}
    from ..features.extractor import torch_threads
    with torch_threads(ex.num_threads if ex.device.type == "cpu" else None):
        for _ in range(rounds):
            for s in sizes:
                x = x0.expand(s, *x0.shape[1:]).contiguous(memory_format=x0.dim() == 4 and torch.channels_last
                                                           or torch.contiguous_format)
                ex.embed_batch(x)
                t, done = time.perf_counter(), 0
                while time.perf_counter() - t < seconds:
                    ex.embed_batch(x)
                    done += s
                best[s] = max(best[s], done / (time.perf_counter() - t))
    return best
