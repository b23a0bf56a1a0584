"""Side branch, training: the ``cbir finetune`` job, full fine-tuning of a backbone on images (notebook 08).

Protocol: the one of ``cbir train`` (:mod:`.run`, :func:`cbir_kit.datasets.splits.hold_out`): the gallery is
split per class, seeded, into fit, validation and held-out images, and every query that is
not byte-identical to a training image is searched against the held-out gallery only.

Training (the CLIP-retrieval project's recipe, :mod:`.backbone` for the network and the
optimiser): per epoch, P-K class-balanced batches of the fit images (:func:`cbir_kit.train.sampling.pk_batches`),
each image decoded and augmented by :func:`training_transform`, one
:meth:`~.backbone.Finetuner.step` per batch (gradient accumulation, clipping, AMP on CUDA,
layer-wise learning-rate decay, warm-up + cosine over all optimiser steps, metric-learning
loss with mining after ``mining_warmup`` epochs).  After every epoch the validation images
query the fit + validation images (each query's own row removed) with the backbone's
evaluation transform; the epoch with the best validation mAP is kept, and training stops
after ``patience`` epochs without a better one.

Test: the frozen backbone's features (from the feature cache) and the fine-tuned network's
embeddings are both extracted by :func:`~cbir_kit.features.create_extractor` (the fine-tuned
one as the model spec ``finetuned:PATH``) and measured with the same exact search and
full-ranking metrics as ``cbir evaluate``, so ``cbir evaluate --model finetuned:PATH``
applies the same hold-out and reproduces the reported numbers.

Seeded: the split, the batches and the augmentations' workers follow ``seed``, and torch's
global random state is set from it (the head's initialisation, dropout, random erasing).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from .._io import write_json
from ..datasets import Dataset
from ..errors import CbirError
from ..runtime import Runtime, runtime_of
from ..features import FeatureCache, create_extractor, resolve_device
from ..datasets.images import open_image
from ..features.embedding_net import build_embedding_net
from .backbone import FinetuneConfig, Finetuner
from ..features.checkpoint import cpu_state, save_finetuned
from ..datasets.splits import hold_out
from .sampling import pk_batches
from .fit import leave_one_out_map
from .run import held_out_k, held_out_metrics, labelled_features, metric_columns, protocol_lines, save_curve


def training_transform(preprocess) -> T.Compose:
    """Augmentations of the CLIP-retrieval project around a backbone's evaluation transform.

    RandomResizedCrop to the evaluation crop size (scale 0.5-1), horizontal flip (p 0.5),
    colour jitter (brightness, contrast, saturation 0.3, hue 0.05; p 0.8), greyscale (p 0.1),
    the evaluation transform's normalisation, random erasing (p 0.25).
    """
    steps = list(getattr(preprocess, "transforms", []))
    norm = next((t for t in steps if isinstance(t, T.Normalize)), None)
    crop = next((t for t in steps if isinstance(t, T.CenterCrop)), None)
    if norm is None or crop is None:
        raise CbirError(f"cannot derive training augmentations from {preprocess!r}: it needs a CenterCrop "
                        "and a Normalize step")
    return T.Compose([
        T.RandomResizedCrop(crop.size, scale=(0.5, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.8),
        T.RandomGrayscale(p=0.1),
        T.ToTensor(),
        T.Normalize(norm.mean, norm.std),
        T.RandomErasing(p=0.25),
    ])


class LabelledImages(TorchDataset):
    """Images decoded from disk through ``transform``, with integer labels."""

    def __init__(self, refs, labels, transform):
        self.refs, self.labels, self.transform = list(refs), np.asarray(labels, np.int64), transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i):
        return self.transform(open_image(self.refs[i])), int(self.labels[i])


@torch.no_grad()
def embed_images(net, refs, transform, device, batch_size: int, num_workers: int) -> np.ndarray:
    """Embeddings (N, out_dim) of images ``refs`` by ``net`` in eval mode."""
    net.eval()
    loader = DataLoader(LabelledImages(refs, np.zeros(len(refs)), transform), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    return np.concatenate([net(x.to(device)).float().cpu().numpy() for x, _ in loader])


@dataclass
class FinetuneResult:
    """What one fine-tuning run measured; ``to_dict()`` is what ``--json`` writes."""

    dataset: str
    model: str
    protocol: dict
    frozen: dict
    trained: dict
    history: dict
    best_epoch: int
    stopped_early: bool
    path: str
    curve_path: str | None = None
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "model": self.model, "protocol": self.protocol,
                "metrics": {"frozen": self.frozen, "finetuned": self.trained}, "history": self.history,
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early, "network": self.path,
                "loss_curve": self.curve_path, "timings": self.timings}

    def table(self) -> str:
        p = self.protocol
        lines = [f"dataset  {self.dataset}", f"model    {self.model}, fully fine-tuned ({p['network']})",
                 *protocol_lines(p),
                 f"stopped  epoch {self.best_epoch} kept (validation mAP "
                 f"{self.history['val_mAP'][self.best_epoch - 1]:.4f})"
                 + ("; stopped early" if self.stopped_early else ""),
                 *metric_columns(self.frozen, self.trained, "fine-tuned"),
                 "", f"network  {self.path}  (use it as the model finetuned:{self.path})"]
        if self.curve_path:
            lines.append(f"curve    {self.curve_path}")
        return "\n".join(lines)


@dataclass
class EpochData:
    """What the epochs of :func:`finetune` train and validate on (gallery rows of the fit split)."""

    fit_refs: list
    y_fit: np.ndarray
    pool_refs: list          # fit images, then validation images
    pool_labels: np.ndarray
    val_rows: np.ndarray     # rows of the validation images in the pool


def train_epochs(net, tuner: Finetuner, data: EpochData, p: int, k: int, epochs: int, patience: int, dev,
                 workers: int, batch_size: int, seed: int, progress: bool, desc: str) -> dict:
    """P-K epochs with early stopping on the validation mAP; ``net`` ends with its best state.

    Validation: leave-one-out mAP of the validation images against the fit + validation pool.
    Returns ``history``, ``best_map``, ``best_epoch``, ``stopped_early`` and ``fit_s``.
    """
    train_data = LabelledImages(data.fit_refs, data.y_fit, training_transform(net.preprocess))
    history = {"epoch": [], "loss": [], "val_mAP": [], "lr": []}  # lr: the head's, at the end of the epoch
    best_state, best_map, best_epoch, since_best, stopped_early = None, -1.0, 0, 0, False
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        batches = pk_batches(data.y_fit, p, k, len(data.fit_refs), seed * 100003 + epoch)
        loader = DataLoader(train_data, batch_sampler=batches, num_workers=workers, pin_memory=dev.type == "cuda",
                            generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        losses = [tuner.step(x, y)["loss"] for x, y in tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch",
                                                             leave=False, disable=not progress)]
        pool = embed_images(net, data.pool_refs, net.preprocess, dev, batch_size, workers)
        rows = data.val_rows
        val_map = leave_one_out_map(pool[rows], data.pool_labels[rows], pool, data.pool_labels, rows)
        history["epoch"].append(epoch + 1)
        history["loss"].append(float(np.mean(losses)))
        history["val_mAP"].append(val_map)
        history["lr"].append(next(g["lr"] for g in tuner.optimiser.param_groups if g["name"] == "head.w"))
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", val_mAP=f"{val_map:.4f}")
        if val_map > best_map:
            best_state, best_map, best_epoch, since_best = cpu_state(net), val_map, epoch + 1, 0
        else:
            since_best += 1
            if since_best >= patience:
                stopped_early = True
                break
    bar.close()
    net.load_state_dict(best_state)
    return {"history": history, "best_map": best_map, "best_epoch": best_epoch, "stopped_early": stopped_early,
            "fit_s": time.perf_counter() - t0}


def finetune(dataset: str | Dataset = "demo", model: str = "efficientnet_lite0",
             config: FinetuneConfig | None = None, out: str | os.PathLike = "finetuned.pt",
             curve: str | os.PathLike | None = None, plot: bool = True, epochs: int = 10, p: int = 32, k: int = 4,
             mining_warmup: int = 1, patience: int = 3, out_dim: int = 512, dropout: float = 0.1,
             train_fraction: float = 0.5, val_fraction: float = 0.2, pretrained: bool = True,
             image_size: int | None = None, top_k: int = 10, runtime: Runtime | None = None,
             **runtime_options) -> FinetuneResult:
    """Run the protocol of the module docstring; save the best network to ``out``.

    ``pretrained=False`` starts from random weights (for tests); ``image_size`` builds an
    open_clip ViT for that input size.  With ``plot`` the loss curve goes to ``curve``
    (default: ``out`` with suffix ``.png``).  ``runtime`` (or its fields as keywords, e.g.
    ``seed=1, progress=False``): data root, cache, device, batch size (default 32 here),
    decoding threads, progress bars and the seed of the split, the batches and the initialisation.
    """
    config, rt = config or FinetuneConfig(), runtime_of(runtime, runtime_options)
    for name, value, least in (("epochs", epochs, 1), ("patience", patience, 1), ("p", p, 2)):
        if value < least:
            raise CbirError(f"{name}={value!r} must be at least {least}")
    if k < 2:  # not written as k=: the cbir command would print that as its top-k option
        raise CbirError(f"k, the images per class in a batch, must be at least 2; got {k}")
    t_start, seed = time.perf_counter(), rt.seed
    torch.manual_seed(seed)
    frozen_extractor = create_extractor(model, device=rt.device, pretrained=pretrained, num_workers=rt.num_workers)
    cache = FeatureCache(rt.cache_dir)
    ds, queries, gallery = labelled_features(dataset, frozen_extractor, cache, rt)
    split = hold_out(ds, train_fraction, val_fraction, seed)
    ds_test = ds.subset(split.keep_query, split.keep_gallery)

    dev, batch_size = resolve_device(rt.device), rt.batch_size or 32
    net = build_embedding_net(model, out_dim, dropout, pretrained=pretrained, image_size=image_size).to(dev)
    fit_refs, y_fit = [ds.gallery[i] for i in split.fit_idx], split.labels[split.fit_idx]
    pool_refs = fit_refs + [ds.gallery[i] for i in split.val_idx]
    data = EpochData(fit_refs, y_fit, pool_refs, np.concatenate([y_fit, split.labels[split.val_idx]]),
                     np.arange(len(fit_refs), len(pool_refs)))
    steps_per_epoch = max(1, len(pk_batches(y_fit, p, k, len(fit_refs), seed)) // config.accumulation)
    config = FinetuneConfig(**{**asdict(config), "total_steps": epochs * steps_per_epoch,
                               "mining_after_step": mining_warmup * steps_per_epoch})
    run = train_epochs(net, Finetuner(net, config, dev), data, p, k, epochs, patience, dev,
                       frozen_extractor.num_workers, batch_size, seed, rt.progress, f"fine-tune {model}")

    protocol = {
        "description": "gallery split per class into train/held-out; test = queries vs held-out gallery",
        "network": f"GeM + projection head ({out_dim}-d), {config.loss} loss", "seed": seed,
        "train_fraction": train_fraction, "val_fraction": val_fraction,
        "n_train": int(len(split.fit_idx)), "n_val": int(len(split.val_idx)),
        "n_test_queries": int(split.keep_query.sum()), "n_test_gallery": int(split.keep_gallery.sum()),
        "classes": [str(c) for c in split.classes], "trained_fingerprints": split.trained_fingerprints,
    }
    base = {"model": model, "pretrained": pretrained, "out_dim": out_dim, "dropout": dropout,
            "image_size": image_size}
    settings = {**asdict(config), "epochs": epochs, "p": p, "k": k, "mining_warmup": mining_warmup,
                "patience": patience}
    save_finetuned(out, net, base, settings, {"best_val_mAP": run["best_map"], "best_epoch": run["best_epoch"]},
                   protocol)

    k_eff = held_out_k(top_k, ds_test)
    frozen = held_out_metrics(queries[split.keep_query], gallery[split.keep_gallery], ds_test, k_eff)
    tuned_extractor = create_extractor(f"finetuned:{out}", device=rt.device, batch_size=batch_size,
                                       num_workers=rt.num_workers)
    q_tuned, g_tuned, _ = cache.dataset_features(tuned_extractor, ds_test, rt.progress, label=" (held-out)")
    trained = held_out_metrics(q_tuned.vectors, g_tuned.vectors, ds_test, k_eff)

    curve_path = None
    if plot:
        curve_path = str(save_curve(curve or Path(out).with_suffix(".png"), run["history"], run["best_epoch"],
                                    f"{ds.name} | {model} fine-tuned"))
    public_protocol = {key: v for key, v in protocol.items() if key != "trained_fingerprints"}
    return FinetuneResult(dataset=ds.name, model=model, protocol=public_protocol, frozen=frozen, trained=trained,
                          history=run["history"], best_epoch=run["best_epoch"], stopped_early=run["stopped_early"],
                          path=str(out), curve_path=curve_path,
                          timings={"fit_s": run["fit_s"], "total_s": time.perf_counter() - t_start})


def write_result_json(result: FinetuneResult, path) -> None:
    write_json(path, result.to_dict())
