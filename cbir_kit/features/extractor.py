"""Stage 2, features: batched, streaming extraction tuned for a laptop CPU, and a GPU when there is one (notebook 01).

``Extractor.extract(images)`` returns :class:`Features`: one L2-normalised float32 row per
image, ``f_i = phi(x_i) / ||phi(x_i)||_2``, so the inner product of two rows is their cosine
similarity.  Images that fail to decode are reported (path and reason), their rows are NaN
and ``ok`` is False for them: a bad file never stops a run.

``Extractor.stream(images, ranges)`` yields one :class:`Batch` per ``(start, stop)`` range,
in order, so a caller (the feature cache) can write results as they are made and never hold
all images or all features in memory.

How the pipeline is made fast (each choice measured by ``cbir bench extract``):

* Decoding and the PIL part of the preprocessing (resize, crop) run in ``num_workers``
  threads, a few batches ahead of the model; PIL releases the GIL while it works.
* The tensor part of the preprocessing (``ToTensor`` then ``Normalize``) is done once per
  batch, on uint8 pixels: ``x = (u8 / 255 - mean) / std``, the same float32 operations in
  the same order as torchvision's transforms, hence bit-identical input tensors.  Decoding
  threads never call torch, so they never start OpenMP thread teams of their own.
* The network is rewritten for inference (:mod:`.inference`): BatchNorm folded into the
  convolutions and, on the CPU in fp32, traced, frozen and oneDNN-optimised (fused
  convolution + bias + activation, pre-packed weights); the rewrite is checked against the
  original network on the first batch of each input size.  EfficientNet-Lite0 model alone,
  one thread: 18.4 -> 12.5 CPU ms per image.  ``backbone.model`` itself is never changed.
* ``streams`` batches go through the network at once, each in its own thread with
  ``num_threads // streams`` intra-op threads (default on the CPU: one stream per thread,
  one thread each).  Separate single-threaded forward passes need no OpenMP barrier per
  layer, which on a shared 2-core machine costs more than the layer itself at small sizes.
* The model runs under ``torch.inference_mode``, CNNs in channels-last memory format (the
  uint8 batch is channels-last already).
* glibc's allocator is told to keep large blocks (:func:`keep_large_allocations`): by
  default a large activation (dynamic threshold, up to 32 MB) is a fresh ``mmap`` that the
  kernel zero-fills page by page (minor faults, counted as sys time) and unmaps after each
  layer.  Measured on EfficientNet-Lite0 at batch 32: about 7,400 minor faults per image
  before, none after, sys time near zero; peak memory unchanged (about 1.2 GB, set by the
  batch's activations); the wall-time gain was within the noise of the shared machine.
* ``precision``: ``fp32`` (CPU default), ``bf16`` (CPU autocast, optional) or ``fp16``
  (CUDA default: autocast, uint8 batches copied from pinned memory).
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from tqdm.auto import tqdm

from ..errors import CbirError
from ..datasets.images import ImageLoadError, ImageRef, describe, open_image
from .inference import close_enough, inference_copy, optimize_for_cpu
from . import models
from .checkpoint import build_finetuned
from .models import Backbone
from .specs import check_spec, parse_model, preprocess_id

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RANDOM_INIT_SEED = 0

# Images per forward pass (per stream).  EfficientNet-Lite0, oneDNN-frozen, one thread, CPU
# ms per image: batch 1: 16.0, 4: 12.4, 8: 12.7, 16: 12.7, 32: 12.5, 64: 15.2 (activations
# outgrow the cache).  Two streams hold two batches of activations, so the smallest batch
# on the flat part is taken.  `cbir bench extract --batch-sizes 1,4,8,16,32` re-measures.
DEFAULT_BATCH_SIZE = {"efficientnet_lite0": 8, "resnet18": 8, "resnet50": 8, "clip": 8}

def default_batch_size(spec: str) -> int:
    """The measured default batch size for a model spec (``clip:*`` share one entry)."""
    return DEFAULT_BATCH_SIZE.get(parse_model(spec).family, 32)


def build_backbone(spec: str, pretrained: bool = True) -> Backbone:
    """Build the backbone of any model spec (:mod:`.specs`): named, CLIP or fine-tuned.

    A random CLIP (``clip:ARCH:none``) is drawn from torch's CPU generator seeded with
    :data:`RANDOM_INIT_SEED`, without touching the caller's random state: it is the same network in
    every process, so a collection's image features and a text query embedded later share one space.
    Other random initialisations (``pretrained=False``) draw from the caller's generator, which
    training seeds with its own seed.
    """
    parsed = check_spec(spec)
    if parsed.kind == "finetuned":
        return build_finetuned(spec)
    if not parsed.random_init:
        return models.build_backbone(spec, pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(RANDOM_INIT_SEED)   # the CPU generator only: the networks are made there
        return models.build_backbone(spec, pretrained)


_MALLOC_TUNED = False


def keep_large_allocations() -> bool:
    """Ask glibc malloc to serve large blocks from its heap and keep freed memory (once per process).

    ``mallopt(M_MMAP_THRESHOLD, 256 MiB)``, ``M_TRIM_THRESHOLD`` 512 MiB, ``M_TOP_PAD`` 64 MiB:
    activation buffers are then reused between forward passes instead of being mapped,
    page-faulted and unmapped every time.  Returns False (and does nothing) off glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 256 << 20) and libc.mallopt(-1, 512 << 20) and libc.mallopt(-2, 64 << 20)
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = bool(ok)
    return _MALLOC_TUNED


def release_free_memory() -> None:
    """``malloc_trim(0)``: hand the blocks :func:`keep_large_allocations` kept back to the OS.

    Called when an extraction run ends, so that the search that follows starts from the
    memory actually in use (measured: 20,000-image ``cbir evaluate`` peak 1.97 GB without).
    """
    if _MALLOC_TUNED:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class Features:
    """Extracted features: ``vectors`` (N, D) float32, ``ok`` (N,) bool, ``failures``.

    ``fingerprints``: the content hash of each row's image, when the features came through the cache.
    """

    vectors: np.ndarray
    ok: np.ndarray
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (index, image, reason)
    fingerprints: list[str] | None = None


class Batch(NamedTuple):
    """Features of ``images[start:stop]``: rows of failed images are NaN with ``ok`` False."""

    start: int
    stop: int
    vectors: np.ndarray
    ok: np.ndarray
    failures: list[tuple[int, str, str]]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; other values are checked."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps"):
        raise CbirError(f"device={device!r} is not one of auto, cpu, cuda, mps")
    if device == "cuda" and not torch.cuda.is_available():
        raise CbirError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CbirError("device='mps' was asked for but Apple MPS is not available; use device='cpu'")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is fp16 on CUDA and fp32 elsewhere; fp16 needs CUDA."""
    if precision not in PRECISIONS:
        raise CbirError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise CbirError("precision='fp16' needs a CUDA GPU; on the CPU use 'fp32' (what 'auto' picks there) "
                        "or 'bf16'")
    return precision


class SplitPreprocess(NamedTuple):
    """A torchvision pipeline cut at ``ToTensor``: a PIL stage and the normalisation constants."""

    pil_stage: Callable[[Image.Image], Image.Image]
    mean: torch.Tensor | None  # (3,) float32, or None when there is no Normalize
    std: torch.Tensor | None


def split_preprocess(preprocess) -> SplitPreprocess | None:
    """Cut ``Compose([...PIL transforms..., ToTensor(), Normalize(mean, std)])`` in two.

    Returns None for any other shape of pipeline (it then runs whole, per image).
    """
    if not isinstance(preprocess, T.Compose):
        return None
    steps = list(preprocess.transforms)
    at = [i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)]
    if len(at) != 1:
        return None
    tail = steps[at[0] + 1:]
    if len(tail) > 1 or (tail and not (isinstance(tail[0], T.Normalize) and not tail[0].inplace)):
        return None
    mean = std = None
    if tail:
        mean = torch.as_tensor(tail[0].mean, dtype=torch.float32)
        std = torch.as_tensor(tail[0].std, dtype=torch.float32)
        if mean.numel() != 3 or std.numel() != 3:
            return None
    return SplitPreprocess(T.Compose(steps[:at[0]]), mean, std)


def uint8_batch_to_input(pixels: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32: ``(u8 / 255 - mean) / std``.

    The operations are those of ``ToTensor`` then ``Normalize`` in the same order, so the
    result is bit-identical to stacking per-image transforms.  The result keeps the
    channels-last layout of the pixels (no copy).
    """
    x = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255)
    if mean is not None:
        x.sub_(mean.to(x.device).view(1, -1, 1, 1)).div_(std.to(x.device).view(1, -1, 1, 1))
    return x


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op threads, restoring the previous setting after."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Extractor:
    """Turns images into L2-normalised feature vectors with one named backbone.

    ``batch_size`` None takes the measured per-model default (:data:`DEFAULT_BATCH_SIZE`);
    ``num_workers`` decoding threads (default: the number of cores, at most 4);
    ``num_threads`` torch threads in all (default: the number of cores), shared by
    ``streams`` concurrent forward passes (default: ``num_threads`` on the CPU, else 1).
    ``optimize`` False runs the network as built (no BatchNorm folding, no freezing).
    The network is built lazily, on the first call that needs it, so a run that finds its
    features in the cache never loads the model.
    """

    def __init__(self, spec: str, device: str = "auto", pretrained: bool = True,
                 batch_size: int | None = None, num_workers: int | None = None,
                 num_threads: int | None = None, precision: str = "auto", prefetch_batches: int = 2,
                 streams: int | None = None, optimize: bool = True):
        self.spec = spec
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.pretrained = pretrained
        self.batch_size = int(batch_size or default_batch_size(spec))
        if self.batch_size < 1:
            raise CbirError(f"batch_size={batch_size!r} must be at least 1")
        cores = available_cores()
        self.num_workers = int(num_workers or min(4, cores))
        self.num_threads = int(num_threads or cores)
        if self.num_workers < 1:
            raise CbirError(f"num_workers={num_workers!r} must be at least 1 (image decoding threads)")
        if self.num_threads < 1:
            raise CbirError(f"num_threads={num_threads!r} must be at least 1 (torch threads)")
        self.streams = int(streams or (self.num_threads if self.device.type == "cpu" else 1))
        if self.streams < 1:
            raise CbirError(f"streams={streams!r} must be at least 1")
        self.threads_per_stream = max(1, self.num_threads // self.streams)
        self.prefetch_batches = max(1, int(prefetch_batches))
        self.optimize = bool(optimize)
        self._backbone: Backbone | None = None
        self._split: SplitPreprocess | None = None
        self._folded: torch.nn.Module | None = None
        self._runners: dict[tuple, Callable] = {}  # (C, H, W) -> the network that runs those batches
        self._runner_lock = threading.Lock()

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            bb = build_backbone(self.spec, pretrained=self.pretrained)
            bb.model.eval().to(self.device)
            if self.device.type == "cpu":
                keep_large_allocations()
            if bb.channels_last and self.device.type != "mps":
                bb.model.to(memory_format=torch.channels_last)
            self._split = split_preprocess(bb.preprocess)
            self._backbone = bb
        return self._backbone

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def cache_identity(self) -> dict:
        """What determines the features besides the images (the cache key); builds nothing."""
        return {"model": self.spec, "pretrained": self.pretrained, "preprocess": preprocess_id(self.spec),
                "precision": self.precision}

    def _load(self, ref: ImageRef):
        """Worker thread: decoded and resized pixels (uint8 HWC array, or a tensor), or the error."""
        try:
            img = open_image(ref)
            split = self._split
            if split is None:
                return self.backbone.preprocess(img)
            out = split.pil_stage(img)
            if not isinstance(out, Image.Image) or out.mode != "RGB":
                return self.backbone.preprocess(img)
            return np.asarray(out, dtype=np.uint8)
        except ImageLoadError as err:
            return err.reason

    def _to_input(self, loaded: list) -> torch.Tensor:
        """Stack one batch of worker outputs into the model's input tensor on its device."""
        split = self._split
        if all(isinstance(a, np.ndarray) for a in loaded) and len({a.shape for a in loaded}) == 1:
            pixels = torch.from_numpy(np.stack(loaded))
            if self.device.type == "cuda":
                pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            x = uint8_batch_to_input(pixels, split.mean, split.std)
        else:
            tensors = [a if isinstance(a, torch.Tensor)
                       else uint8_batch_to_input(torch.from_numpy(a)[None], split.mean, split.std)[0]
                       for a in loaded]
            x = torch.stack(tensors).to(self.device)
        if self._channels_last() and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.precision == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    def _channels_last(self) -> bool:
        return self.backbone.channels_last and self.device.type != "mps"

    def folded_network(self) -> torch.nn.Module:
        """The BatchNorm-folded copy of the network (built once).

        Folding traces the network with ``torch.fx``, which patches ``nn.Module.__call__``
        process-wide while it runs, so :meth:`stream` builds it before its threads start.
        """
        if self._folded is None:
            self._folded = inference_copy(self.backbone.model, self._channels_last())
        return self._folded

    def runner(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network rewritten for inference (:mod:`.inference`) for batches shaped like ``x``.

        Built once per input size (C, H, W) from ``x``: a BatchNorm-folded copy and, on the CPU
        in fp32, its oneDNN-frozen trace (about a second to build); each is kept only if it
        reproduces the original network's output on ``x`` (:func:`close_enough`).  The choice
        never depends on how many images a call embeds, so a resumed extraction computes its
        remaining images exactly as an uninterrupted one would.
        """
        bb = self.backbone
        if not self.optimize:
            return bb.model
        key = tuple(x.shape[1:])
        with self._runner_lock:
            if key in self._runners:
                return self._runners[key]
            fast = self.folded_network()
            with torch.inference_mode(), self._autocast():
                reference = bb.model(x)
                run = fast if close_enough(fast(x), reference) else bb.model
            if run is not bb.model and self.device.type == "cpu" and self.precision == "fp32":
                run = optimize_for_cpu(run, x, reference)
            self._runners[key] = run
            return run

    def network_kind(self) -> str:
        """What runs the forward passes so far: ``oneDNN-frozen``, ``BatchNorm-folded`` or ``as built``."""
        runs = list(self._runners.values())
        if runs and all(isinstance(run, torch.jit.ScriptModule) for run in runs):
            return "oneDNN-frozen"
        if runs and all(run is not self.backbone.model for run in runs):
            return "BatchNorm-folded"
        return "as built"

    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Forward one preprocessed (B, 3, H, W) batch; L2-normalised float32 features on the CPU."""
        x = batch.to(self.device, non_blocking=True)
        if self._channels_last() and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        run = self.runner(x)
        with torch.inference_mode(), self._autocast():
            out = run(x)
        return F.normalize(out.float(), dim=1).cpu()

    @staticmethod
    def _reject_degenerate(images, a: int, vectors: np.ndarray, ok: np.ndarray) -> list[tuple[int, str, str]]:
        """Mark rows with NaN/infinite values or all zeros (no direction for cosine) as failures."""
        finite = np.isfinite(vectors).all(axis=1)
        zero = finite & ~vectors.any(axis=1)
        out = []
        for i in np.flatnonzero(ok & (~finite | zero)):
            reason = ("the model returned an all-zero feature vector" if zero[i]
                      else "the model returned NaN or infinite feature values")
            out.append((a + int(i), describe(images[a + int(i)]), reason))
            vectors[i] = np.nan
            ok[i] = False
        return out

    def batch_ranges(self, start: int, stop: int) -> list[tuple[int, int]]:
        """``[start, stop)`` cut into ``batch_size`` pieces, the last one possibly shorter."""
        return [(a, min(a + self.batch_size, stop)) for a in range(start, stop, self.batch_size)]

    def _embed_range(self, images: Sequence[ImageRef], a: int, b: int, loads: list[Future]) -> Batch:
        """Forward thread: wait for the decoded images ``a..b``, embed them, mark the failures."""
        loaded = [f.result() for f in loads]
        vectors = np.full((b - a, self.dim), np.nan, dtype=np.float32)
        ok = np.zeros(b - a, dtype=bool)
        failures = [(a + i, describe(images[a + i]), t) for i, t in enumerate(loaded) if isinstance(t, str)]
        good = [i for i, t in enumerate(loaded) if not isinstance(t, str)]
        if good:
            x = self._to_input([loaded[i] for i in good])
            vectors[good] = self.embed_batch(x).numpy()
            ok[good] = True
            failures += self._reject_degenerate(images, a, vectors, ok)
            failures.sort()
        return Batch(a, b, vectors, ok, failures)

    def stream(self, images: Sequence[ImageRef], ranges: Sequence[tuple[int, int]],
               bar: tqdm | None = None) -> Iterator[Batch]:
        """Embed ``images[a:b]`` for each ``(a, b)`` in ``ranges``, yielding one Batch each, in order.

        ``streams`` ranges are in the network at once, and decoding runs up to
        ``prefetch_batches`` ranges ahead of them; at most ``streams + prefetch_batches``
        batches of pixels and features are in memory at once.
        """
        if self.optimize:
            self.folded_network()  # before the threads start (see there)
        else:
            _ = self.backbone
        cpu = self.device.type == "cpu"
        threads = self.threads_per_stream if cpu else None
        # torch.set_num_threads in each forward thread: OpenMP keeps a thread count per thread
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="cbir-decode") as decode, \
                ThreadPoolExecutor(self.streams, thread_name_prefix="cbir-forward",
                                   initializer=torch.set_num_threads if cpu else None,
                                   initargs=(threads,) if cpu else ()) as forward, \
                torch_threads(threads):
            queue: deque[tuple[Future, list[Future]]] = deque()
            todo = iter(ranges)

            def refill():
                while len(queue) < self.prefetch_batches + self.streams:
                    nxt = next(todo, None)
                    if nxt is None:
                        return
                    a, b = nxt
                    loads = [decode.submit(self._load, images[i]) for i in range(a, b)]
                    queue.append((forward.submit(self._embed_range, images, a, b, loads), loads))

            try:
                refill()
                while queue:
                    batch = queue[0][0].result()
                    queue.popleft()
                    refill()
                    if bar is not None:
                        bar.update(batch.stop - batch.start)
                    yield batch
            finally:
                for job, loads in queue:
                    for f in loads:
                        f.cancel()
                    job.cancel()
        if cpu:
            release_free_memory()

    def extract(self, images: Sequence[ImageRef], progress: bool = True, desc: str = "extract") -> Features:
        """Embed all ``images`` in memory (the feature cache streams to disk instead)."""
        n = len(images)
        vectors = np.full((n, self.dim), np.nan, dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        failures: list[tuple[int, str, str]] = []
        with tqdm(total=n, desc=f"{desc} [{self.spec}]", unit="img", disable=not progress, leave=False) as bar:
            for batch in self.stream(images, self.batch_ranges(0, n), bar):
                vectors[batch.start:batch.stop] = batch.vectors
                ok[batch.start:batch.stop] = batch.ok
                failures += batch.failures
        return Features(vectors, ok, failures)


def create_extractor(spec: str = "efficientnet_lite0", device: str = "auto", pretrained: bool = True,
                     batch_size: int | None = None, num_workers: int | None = None,
                     num_threads: int | None = None, precision: str = "auto", streams: int | None = None,
                     optimize: bool = True) -> Extractor:
    """The one factory for feature extractors; ``spec`` as in :mod:`cbir_kit.features.models`."""
    check_spec(spec)
    return Extractor(spec, device=device, pretrained=pretrained, batch_size=batch_size, num_workers=num_workers,
                     num_threads=num_threads, precision=precision, streams=streams, optimize=optimize)
