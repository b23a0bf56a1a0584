"""Side branch, training: the ``cbir train`` job, cached features -> seeded split -> head -> held-out metrics (notebook 08).

Protocol (stated in every run's output):

1. Features of every query and gallery image come from the feature cache (extracted once
   with the frozen backbone ``model``), exactly as ``cbir evaluate`` gets them.
2. The *gallery* images are split per class, seeded: ``train_fraction`` of each class is
   the training part, the rest is held out.  Of the training part, ``val_fraction`` of each
   class is the validation split used for early stopping only.  Query images are never
   trained on.
3. Test = every query image (minus any that is byte-identical to a training image) against
   the *held-out* gallery images only; for leave-one-out datasets the held-out images query
   each other.  The head's file records the content hashes of all training and validation
   images, so ``cbir evaluate --head`` applies the same hold-out and reproduces the numbers.
4. Both the frozen features and the head's embeddings are measured on that same test part
   with the same code as ``cbir evaluate`` (exact inner-product search, full-ranking mAP).

For a hash head the run also reports "Algo 2" and "Algo 2 + hashes" (shortlist 2k) with
the binary-hash project's mAP@k (AP@k/k) and mAHP@k, and compares the learned codes with
ITQ codes of the same length (fitted on the frozen features of the training images, the
same ones the head was fitted on, with the run's seed) on the same test queries and
held-out gallery, by

* shortlist recall@10: the share of an exact top 10 inside the 2k = 20 gallery items
  nearest in Hamming distance (:func:`~cbir_kit.index.hash_search.shortlist_recall_at_k`),
  with the same exact top 10 for both code makers, taken two ways:
  - of the *frozen features* (cosine): how faithfully the codes keep the backbone's
    neighbours, the job of a hash in front of a float re-rank of those features;
  - of *Algo 2* (cosine of the semantic embeddings): how much of what "Algo 2 + hashes"
    would return the shortlist keeps, the job the project's hash layer does (ITQ's codes
    still come from the frozen features: the embedding has fewer dimensions than bits,
    e.g. 15 on Corel-1K, and ITQ needs at least as many);
* R@10 of the Hamming ranking by class labels, ties at the 10th distance averaged.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..evaluation import metrics as M
from ..datasets import Dataset, load
from ..errors import CbirError
from .._io import atomic_path, write_json
from ..pipeline.job import full_ranking_metrics
from ..features import OFFLINE_MODEL, FeatureCache, create_extractor
from ..index import ExactIndex
from ..runtime import Runtime, runtime_of
from ..features.checkpoint import TrainedHead, save_head
from ..datasets.splits import hold_out
from .fit import FitResult, HeadConfig, fit_head
from ..index.hash_search import algo2_hash_search, algo2_search, hamming_recall_at_k, shortlist_recall_at_k
from .losses import class_targets

HASH_KS = (5, 10, 25)


@dataclass
class TrainResult:
    """What one training run measured; ``to_dict()`` is what ``--json`` writes."""

    dataset: str
    model: str
    protocol: dict
    frozen: dict
    trained: dict
    fit: FitResult
    head_path: str
    curve_path: str | None = None
    hashing: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "model": self.model, "protocol": self.protocol,
                "metrics": {"frozen": self.frozen, "head": self.trained}, "hashing": self.hashing,
                "fit": self.fit.to_dict(), "head": self.head_path, "loss_curve": self.curve_path,
                "timings": self.timings}

    def table(self) -> str:
        p = self.protocol
        lines = [f"dataset  {self.dataset}", f"model    {self.model} (frozen) + {p['head']}",
                 *protocol_lines(p),
                 f"stopped  epoch {self.fit.best_epoch} kept (validation mAP {self.fit.best_val_map:.4f}"
                 + (f", validation shortlist recall@10 "
                    f"{self.fit.history['val_shortlist_recall@10'][self.fit.best_epoch - 1]:.4f})"
                    if self.fit.config.kind == "hash" else ")")
                 + ("; stopped early" if self.fit.stopped_early else ""),
                 *metric_columns(self.frozen, self.trained, "head")]
        if self.hashing:
            lines += ["", f"binary hash ({self.hashing['n_bits']} bits, hierarchy: {self.hashing['hierarchy']})",
                      "metric            Algo 2    Algo 2 + hashes (shortlist 2k)"]
            for name, value in self.hashing["algo2"].items():
                lines.append(f"{name:<17} {value:.4f}    {self.hashing['algo2_hashes'][name]:.4f}")
            lines.append(f"shortlist recall@10 (share of an exact top 10 in the 20 nearest codes): learned codes vs "
                         f"ITQ ({self.hashing['n_bits']} bits, fitted on the training images' frozen features)")
            for target, what in (("frozen", "frozen features' top 10"), ("algo2", "Algo 2's top 10")):
                lines.append(f"  {what:<24} learned {self.hashing[f'shortlist_recall@10_{target}_learned']:.4f}, "
                             f"ITQ {self.hashing[f'shortlist_recall@10_{target}_itq']:.4f}")
            lines.append(f"Hamming ranking R@10 (same label, ties averaged): learned codes {self.hashing['hamming_R@10_learned']:.4f}, "
                         f"ITQ {self.hashing['hamming_R@10_itq']:.4f}")
        lines += ["", f"head     {self.head_path}"]
        if self.curve_path:
            lines.append(f"curve    {self.curve_path}")
        return "\n".join(lines)


def labelled_features(dataset: str | Dataset, extractor, cache: FeatureCache,
                      runtime: Runtime) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """``(dataset, query features, gallery features)`` from the feature cache, for training.

    Refuses revisitop ground truth (no class labels); images that fail to decode are left out.
    """
    ds = dataset if isinstance(dataset, Dataset) else load(dataset, root=runtime.root, seed=runtime.seed)
    if ds.gnd is not None:
        raise CbirError(f"{ds.name} has revisitop ground truth (no class labels to train on); "
                        "train on a labelled dataset such as corel1k or csv:PATH")
    q_feats, g_feats, _ = cache.dataset_features(extractor, ds, runtime.progress)
    if not (g_feats.ok.all() and q_feats.ok.all()):
        ds = ds.subset(q_feats.ok, g_feats.ok)
    return ds, q_feats.vectors[q_feats.ok], g_feats.vectors[g_feats.ok]


def held_out_k(k: int, ds_test: Dataset) -> int:
    """``k`` capped at what the held-out gallery can return (one fewer for leave-one-out)."""
    return min(k, ds_test.n_gallery - (1 if ds_test.leave_one_out else 0))


def held_out_metrics(queries, gallery, ds_test: Dataset, k: int) -> dict:
    """The metrics of ``cbir evaluate`` (exact inner-product search, full ranking) on the test part."""
    return full_ranking_metrics(ExactIndex("ip").fit(gallery), queries, ds_test, k)[0]


def protocol_lines(p: dict) -> list[str]:
    """The protocol of a training run as printed in its table."""
    return [f"protocol {p['description']}",
            f"         train {p['n_train']}  validation {p['n_val']}  |  test: {p['n_test_queries']} queries "
            f"x {p['n_test_gallery']} held-out gallery images  (seed {p['seed']})"]


def metric_columns(frozen: dict, trained: dict, name: str) -> list[str]:
    """Frozen and trained metrics side by side, one row per metric."""
    return ["", f"metric        frozen    {name}"] + [f"{m:<13} {frozen[m]:.4f}    {trained[m]:.4f}" for m in frozen]


def save_curve(path, history: dict, best_epoch: int, title: str) -> Path:
    """Loss and validation mAP (and shortlist recall@10, when measured) per epoch as a PNG, written atomically."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    h = history
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(h["epoch"], h["loss"], color="tab:blue", marker="o", ms=3, label="training loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(h["epoch"], h["val_mAP"], color="tab:orange", marker="s", ms=3, label="validation mAP")
    if not np.all(np.isnan(h.get("val_shortlist_recall@10", [np.nan]))):
        ax2.plot(h["epoch"], h["val_shortlist_recall@10"], color="tab:green", marker="^", ms=3,
                 label="validation shortlist recall@10")
        ax2.legend(loc="lower right", fontsize=7)
    ax2.set_ylabel("validation mAP", color="tab:orange")
    ax2.axvline(best_epoch, color="grey", ls=":", lw=1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def _hash_report(th: TrainedHead, ds_test: Dataset, q_test, g_test, train_feats, hierarchy, seed) -> dict:
    """Algo 2 vs Algo 2 + hashes (mAP@k, mAHP@k); learned codes vs ITQ (module docstring)."""
    q_emb, g_emb = th.apply(q_test), th.apply(g_test)
    q_codes, g_codes = th.codes(q_test), th.codes(g_test)
    labels = set(np.asarray(ds_test.gallery_labels).tolist()) | set(np.asarray(ds_test.query_labels).tolist())
    coarse = {c: (hierarchy or {}).get(c, c) for c in labels}  # no hierarchy: each class its own group
    k_max = min(max(HASH_KS), len(g_test))
    exclude = np.arange(len(q_test)) if ds_test.leave_one_out else None
    out = {"n_bits": th.head.n_bits, "hierarchy": "given" if hierarchy else "none (flat classes)"}
    for name, (_, ids) in (("algo2", algo2_search(q_emb, g_emb, k_max + (1 if exclude is not None else 0))),
                           ("algo2_hashes", algo2_hash_search(q_codes, g_codes, q_emb, g_emb,
                                                               k_max + (1 if exclude is not None else 0)))):
        if exclude is not None:  # leave-one-out: drop each query's own entry
            ids = np.array([row[row != i][:k_max] for i, row in enumerate(ids)])
        rel = M.relevance_matrix(ids, ds_test.query_labels, ds_test.gallery_labels)
        gains, ideal = M.hierarchical_gains(ids, ds_test.query_labels, ds_test.gallery_labels, coarse, exclude)
        out[name] = {**{f"mAP@{k}": M.map_at_k_over_k(rel, k) for k in HASH_KS if k <= k_max},
                     **{f"mAHP@{k}": M.mahp_at_k(gains, ideal, k) for k in HASH_KS if k <= k_max}}
    from ..index.hashing import ITQHasher

    itq = ITQHasher(th.head.n_bits, seed=seed).fit(train_feats)
    itq_q, itq_g = itq.transform_bits(q_test), itq.transform_bits(g_test)
    for target, (q_ref, g_ref) in (("frozen", (q_test, g_test)), ("algo2", (q_emb, g_emb))):
        out[f"shortlist_recall@10_{target}_learned"] = shortlist_recall_at_k(q_codes, g_codes, q_ref, g_ref, 10)
        out[f"shortlist_recall@10_{target}_itq"] = shortlist_recall_at_k(itq_q, itq_g, q_ref, g_ref, 10)
    out["hamming_R@10_learned"] = hamming_recall_at_k(q_codes, g_codes, ds_test.query_labels,
                                                      ds_test.gallery_labels, 10)
    out["hamming_R@10_itq"] = hamming_recall_at_k(itq_q, itq_g, ds_test.query_labels, ds_test.gallery_labels, 10)
    return out


def train(dataset: str | Dataset = "demo", model: str = OFFLINE_MODEL, config: HeadConfig | None = None,
          out: str | os.PathLike = "head.pt", curve: str | os.PathLike | None = None, plot: bool = True,
          train_fraction: float = 0.5, val_fraction: float = 0.2, hierarchy: dict | None = None,
          k: int = 10, runtime: Runtime | None = None, **runtime_options) -> TrainResult:
    """Run the protocol of the module docstring; save the head to ``out``.

    With ``plot`` the loss curve goes to ``curve`` (default: ``out`` with suffix ``.png``).
    ``runtime`` (or its fields as keywords): data root, cache, device, batch size, decoding
    threads, progress bars; the seed of the split and the training is ``config.seed``.
    """
    config = config or HeadConfig()
    config.check()
    rt = runtime_of(runtime, runtime_options)
    if rt.seed != config.seed and (runtime is not None or "seed" in runtime_options):
        raise CbirError(f"train() takes its seed from config.seed ({config.seed}); got seed={rt.seed} as well: "
                        "set HeadConfig(seed=...) only")
    rt = rt.replace(seed=config.seed)
    progress = rt.progress
    t_start = time.perf_counter()
    extractor = create_extractor(model, device=rt.device, batch_size=rt.batch_size, num_workers=rt.num_workers)
    ds, queries, gallery = labelled_features(dataset, extractor, FeatureCache(rt.cache_dir), rt)
    extract_s = time.perf_counter() - t_start

    split = hold_out(ds, train_fraction, val_fraction, config.seed)
    classes, y, fit_idx, val_idx = split.classes, split.labels, split.fit_idx, split.val_idx
    ds_test = ds.subset(split.keep_query, split.keep_gallery)
    q_test, g_test = queries[split.keep_query], gallery[split.keep_gallery]

    targets = None
    if config.kind == "hash":
        targets = class_targets(classes, hierarchy)
    t0 = time.perf_counter()
    fit = fit_head(gallery[fit_idx], y[fit_idx], gallery[val_idx], y[val_idx], config, targets, progress)
    fit_s = time.perf_counter() - t0

    head_desc = (f"{config.kind} head ({config.loss} loss, {config.out_dim}-d)" if config.kind == "projection"
                 else f"hash head ({config.n_bits} bits -> {targets.shape[1]}-d semantic embedding; cosine loss + "
                       f"Hamming-ranking and quantisation terms, {config.hash_init} start)")
    protocol = {
        "description": "gallery split per class into train/held-out; test = queries vs held-out gallery",
        "head": head_desc, "seed": config.seed, "train_fraction": train_fraction, "val_fraction": val_fraction,
        "n_train": int(len(fit_idx)), "n_val": int(len(val_idx)),
        "n_test_queries": int(len(q_test)), "n_test_gallery": int(len(g_test)),
        "classes": [str(c) for c in classes], "trained_fingerprints": split.trained_fingerprints,
    }
    base = {**extractor.cache_identity(), "dim": int(gallery.shape[1])}
    th = TrainedHead(head=fit.head, base=base)
    k_eff = held_out_k(k, ds_test)
    frozen = held_out_metrics(q_test, g_test, ds_test, k_eff)
    trained = held_out_metrics(th.apply(q_test), th.apply(g_test), ds_test, k_eff)
    hashing = _hash_report(th, ds_test, q_test, g_test, gallery[fit_idx], hierarchy, config.seed) \
        if config.kind == "hash" else {}

    metrics = {"frozen": frozen, "head": trained, "hashing": hashing, "k": k_eff}
    head_path = save_head(out, fit.head, base, asdict(config), metrics, protocol)
    curve_path = None
    if plot:
        curve_path = str(save_curve(curve or Path(out).with_suffix(".png"), fit.history, fit.best_epoch,
                                    f"{ds.name} | {model} | {head_desc}"))
    timings = {"extract_s": extract_s, "fit_s": fit_s, "total_s": time.perf_counter() - t_start}
    public_protocol = {key: v for key, v in protocol.items() if key != "trained_fingerprints"}
    return TrainResult(dataset=ds.name, model=model, protocol=public_protocol, frozen=frozen, trained=trained,
                       fit=fit, head_path=str(head_path), curve_path=curve_path, hashing=hashing, timings=timings)


def write_result_json(result: TrainResult, path) -> None:
    write_json(path, result.to_dict())
