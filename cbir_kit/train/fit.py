"""Side branch, training: training a head on cached frozen features, one loop for both head kinds (notebook 08).

Per epoch: P-K class-balanced batches (:func:`~cbir_kit.train.sampling.pk_batches`) covering
about one pass over the training items; per step the head embeds the batch and

* projection head: metric-learning loss on the embeddings (all pairs / triplets during the
  first ``mining_warmup`` epochs, the miner's selection afterwards, see ``losses.py``);
* hash head: the recipe's L_cos = mean_i (1 - cos(e_i, t_{y_i})) toward the fixed class
  targets, plus terms on the hash layer itself (formulas in ``losses.py``):
  L = L_cos + lambda_n L_neighbour + lambda_q L_quant, where L_neighbour compares each batch
  item's neighbour distribution over the training items (frozen cosine + beta for the same
  class, temperature tau_f) with the one of its relaxed codes (u_i . u_j / tau_h).  The hash
  layer starts at ITQ (``hash_init="itq"``: ITQ fitted on the training features with the
  run's seed, W_h = a (P R)^T, b_h = -a mu P R, a = ``init_scale`` / std of the projections),
  so training starts from ITQ's codes and moves them only where the losses gain.  With more
  than ``HASH_REFERENCE`` training items the reference set is a seeded random subset per step.

Optimiser AdamW (decoupled weight decay).  Learning rate per step s of S in total, with
W = round(warmup_frac * S) warm-up steps:  lr_s = lr * (s + 1) / W for s < W, else
lr * (1 + cos(pi * (s - W) / (S - W))) / 2.

Early stopping: after every epoch the validation images query the pool of training and
validation images (each query's own row removed) and their mAP is computed; training stops
when the validation score has not improved for ``patience`` epochs and the best epoch's
weights are kept.  The score is that mAP for a projection head; for a hash head it is the
mean of the mAP of the semantic embedding and the codes' shortlist recall@10 (the share of
the frozen features' exact top 10 inside the 20 nearest codes, :func:`~cbir_kit.index.hash_search.
leave_one_out_shortlist_recall`), so the kept epoch is good at both jobs.
Seeded: the weights' initialisation, dropout and the batches depend on ``seed`` alone (the
caller's torch random state is left as it was).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluation import metrics as M
from ..errors import CbirError
from .sampling import pk_batches
from ..index.exact import numpy_search
from ..index.hash_search import leave_one_out_shortlist_recall
from ..features.heads import HashHead, ProjectionHead
from .losses import cosine_target_loss, make_loss, neighbour_code_loss, quantisation_loss

HASH_REFERENCE = 4096  # most training items a hash batch's neighbour loss compares against


@dataclass
class HeadConfig:
    """Hyper-parameters of head training (defaults: the CLIP-retrieval project's recipe)."""

    kind: str = "projection"          # projection | hash
    loss: str = "circle"              # circle | triplet | multi_similarity | contrastive (projection)
    out_dim: int = 512                # projection output dimension
    dropout: float = 0.1
    n_bits: int = 48                  # hash layer width
    hash_init: str = "itq"            # itq | random: where the hash layer starts
    init_scale: float = 3.0           # ITQ start: std of the hash layer's pre-activations
    neighbour_weight: float = 5.0     # lambda_n of the Hamming-ranking term
    label_bonus: float = 0.3          # beta: added to the cosine of same-class pairs in its target
    feature_temp: float = 0.05        # tau_f: temperature of the frozen-feature neighbour target
    code_temp: float = 4.0            # tau_h: temperature of the relaxed-code similarities
    quant_weight: float = 0.1         # lambda_q of the quantisation term
    epochs: int = 30
    lr: float | None = None           # None: 1e-3 for a projection head, 3e-3 for a hash head
    weight_decay: float = 0.05
    warmup_frac: float = 0.15         # share of all steps used for the linear warm-up
    mining_warmup: int = 4            # epochs without mining (projection head)
    p: int = 32                       # classes per batch (capped at the number of classes)
    k: int = 4                        # items per class in a batch
    patience: int = 6                 # early stopping: epochs without a better validation mAP
    seed: int = 0
    threads: int = 1                  # torch CPU threads while training (tiny matrices: 1 is fastest)

    @property
    def learning_rate(self) -> float:
        """``lr``, or the kind's default (chosen on the validation split of Corel-1K) when it is None."""
        return self.lr if self.lr is not None else (3e-3 if self.kind == "hash" else 1e-3)

    def check(self) -> None:
        if self.kind not in ("projection", "hash"):
            raise CbirError(f"kind={self.kind!r} must be 'projection' or 'hash'")
        if self.hash_init not in ("itq", "random"):
            raise CbirError(f"hash_init {self.hash_init!r} must be itq or random")
        if self.lr is not None and self.lr <= 0:
            raise CbirError(f"lr={self.lr!r} must be positive")
        for name in ("init_scale", "feature_temp", "code_temp"):
            if getattr(self, name) <= 0:
                raise CbirError(f"{name} must be positive; got {getattr(self, name)}")
        for name in ("neighbour_weight", "quant_weight", "label_bonus"):
            if getattr(self, name) < 0:
                raise CbirError(f"{name} must be at least 0; got {getattr(self, name)}")
        for name in ("out_dim", "n_bits", "epochs", "p", "k", "patience"):
            if getattr(self, name) < 1:
                raise CbirError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.k < 2:
            raise CbirError(f"k (items per class in a batch) must be at least 2; got {self.k}")
        if not 0.0 <= self.dropout < 1.0:
            raise CbirError(f"dropout must lie in [0, 1); got {self.dropout}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise CbirError(f"warmup_frac must lie in [0, 1); got {self.warmup_frac}")


@dataclass
class FitResult:
    """The trained head (best validation epoch) and per-epoch history."""

    head: nn.Module
    config: HeadConfig
    history: dict = field(default_factory=lambda: {"epoch": [], "loss": [], "val_mAP": [], "lr": [],
                                                   "val_shortlist_recall@10": [], "val_score": []})
    best_epoch: int = 0
    best_val_map: float = float("nan")
    best_val_score: float = float("nan")
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "history": self.history, "best_epoch": self.best_epoch,
                "best_val_mAP": self.best_val_map, "best_val_score": self.best_val_score,
                "stopped_early": self.stopped_early}


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """The learning-rate factor at ``step`` (see the module docstring)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def leave_one_out_map(query_emb: np.ndarray, query_labels, pool_emb: np.ndarray, pool_labels,
                      query_rows: np.ndarray) -> float:
    """mAP of queries against a pool that contains them (row ``query_rows[i]`` is query i, left out)."""
    _, order = numpy_search(query_emb, pool_emb, len(pool_emb) - 1, own_ids=query_rows)
    rel = M.relevance_matrix(order, np.asarray(query_labels), np.asarray(pool_labels))
    pool_labels = np.asarray(pool_labels)
    n_rel = np.array([(pool_labels == y).sum() - 1 for y in np.asarray(query_labels)])
    return M.mean_average_precision(rel, n_rel)


@torch.no_grad()
def embed(head: nn.Module, x: np.ndarray) -> np.ndarray:
    """Apply a head (in eval mode) to features (N, D); returns the L2-normalised embeddings."""
    head.eval()
    out = head(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32))
    return (out[1] if isinstance(out, tuple) else out).numpy()


def fit_head(x_train, y_train, x_val, y_val, config: HeadConfig | None = None,
             targets: np.ndarray | None = None, progress: bool = True) -> FitResult:
    """Train a head on features ``x_train`` (N, D) with integer labels; validate on ``x_val``.

    ``targets`` (C, E) are the class targets of the hash head (row c for label c).
    """
    config = config or HeadConfig()
    config.check()
    x_train = torch.as_tensor(np.asarray(x_train, np.float32))
    y_train = torch.as_tensor(np.asarray(y_train, np.int64))
    x_val, y_val = np.asarray(x_val, np.float32), np.asarray(y_val, np.int64)
    if not np.isfinite(x_train.numpy()).all() or not np.isfinite(x_val).all():
        raise CbirError("training features contain NaN rows (images that failed to load); drop them first")
    pool = np.concatenate([x_train.numpy(), x_val])
    pool_labels = np.concatenate([y_train.numpy(), y_val])
    val_rows = np.arange(len(x_train), len(pool))

    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(config.threads)
        with torch.random.fork_rng(devices=[]):
            return _fit(x_train, y_train, x_val, y_val, pool, pool_labels, val_rows, config, targets, progress)
    finally:
        torch.set_num_threads(saved_threads)


def _hash_start(head: HashHead, x_train: torch.Tensor, config: HeadConfig) -> None:
    """Start the hash layer at ITQ fitted on the training features (module docstring)."""
    from ..index.hashing import ITQHasher

    if config.n_bits % 8 or config.n_bits > x_train.shape[1]:
        raise CbirError(f"an ITQ start needs n_bits= (the hash layer's bits) to be a multiple of 8 and at most "
                        f"the feature dimension {x_train.shape[1]}; got n_bits={config.n_bits} (or start from "
                        "random weights)")
    itq = ITQHasher(config.n_bits, seed=config.seed).fit(x_train.numpy())
    spread = float(((x_train.numpy() - itq.mean_) @ itq.projection_).std())
    head.init_from_projection(itq.mean_, itq.projection_, config.init_scale / max(spread, 1e-12))


def _hash_loss(head: HashHead, x_train, y_train, idx, targets, config, generator) -> torch.Tensor:
    """L_cos + lambda_n L_neighbour + lambda_q L_quant for the batch ``idx`` (module docstring)."""
    n = len(x_train)
    ref = torch.arange(n) if n <= HASH_REFERENCE else torch.randperm(n, generator=generator)[:HASH_REFERENCE]
    h_ref = torch.sigmoid(head.hash(x_train[ref]))
    h, emb = head(x_train[idx])
    loss = cosine_target_loss(emb, y_train[idx], targets)
    if config.neighbour_weight > 0:
        self_mask = torch.as_tensor(idx)[:, None] == ref[None, :]
        loss = loss + config.neighbour_weight * neighbour_code_loss(
            h, h_ref, x_train[idx], x_train[ref], y_train[idx], y_train[ref], self_mask,
            config.label_bonus, config.feature_temp, config.code_temp)
    if config.quant_weight > 0:
        loss = loss + config.quant_weight * quantisation_loss(h)
    return loss


def _validate(head, x_val, y_val, pool, pool_labels, val_rows, kind) -> tuple[float, float]:
    """``(mAP, shortlist recall@10)``; the recall is NaN for a projection head."""
    val_map = leave_one_out_map(embed(head, x_val), y_val, embed(head, pool), pool_labels, val_rows)
    if kind != "hash":
        return val_map, float("nan")
    with torch.no_grad():
        codes = head.codes(torch.as_tensor(pool)).numpy().astype(np.uint8)
    return val_map, leave_one_out_shortlist_recall(codes, pool, val_rows, k=10)


def _make_head(x_train, config: HeadConfig, targets):
    """``(head, loss, miner, targets tensor)`` of ``config.kind``: a hash head trains against class targets."""
    if config.kind == "hash":
        if targets is None:
            raise CbirError("the hash head needs class targets (see cbir_kit.train.losses.class_targets)")
        head = HashHead(x_train.shape[1], config.n_bits, targets.shape[1])
        if config.hash_init == "itq":
            _hash_start(head, x_train, config)
        return head, None, None, torch.as_tensor(targets, dtype=torch.float32)
    return (ProjectionHead(x_train.shape[1], config.out_dim, config.dropout), *make_loss(config.loss), None)


def _fit(x_train, y_train, x_val, y_val, pool, pool_labels, val_rows, config, targets, progress) -> FitResult:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    head, loss_fn, miner, target_t = _make_head(x_train, config, targets)
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    epochs_batches = len(pk_batches(y_train.numpy(), config.p, config.k, len(x_train), config.seed))
    total = config.epochs * epochs_batches
    warmup = round(config.warmup_frac * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, total, warmup))

    result = FitResult(head=head, config=config)
    best_state, since_best = None, 0
    bar = tqdm(range(config.epochs), desc=f"train {config.kind} head", unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        batches = pk_batches(y_train.numpy(), config.p, config.k, len(x_train), config.seed * 100003 + epoch)
        losses = []
        for idx in batches:
            if config.kind == "hash":
                loss = _hash_loss(head, x_train, y_train, idx, target_t, config, generator)
            else:
                xb, yb = x_train[idx], y_train[idx]
                emb = head(xb)
                pairs = miner(emb, yb) if epoch >= config.mining_warmup else None
                loss = loss_fn(emb, yb, pairs)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        val_map, val_recall = _validate(head, x_val, y_val, pool, pool_labels, val_rows, config.kind)
        score = val_map if config.kind != "hash" else (val_map + val_recall) / 2
        h = result.history
        h["epoch"].append(epoch + 1)
        h["loss"].append(float(np.mean(losses)) if losses else float("nan"))
        h["val_mAP"].append(val_map)
        h["val_shortlist_recall@10"].append(val_recall)
        h["val_score"].append(score)
        h["lr"].append(optimiser.param_groups[0]["lr"])
        bar.set_postfix(loss=f"{h['loss'][-1]:.4f}", val_mAP=f"{val_map:.4f}")
        if best_state is None or score > result.best_val_score:
            best_state = copy.deepcopy(head.state_dict())
            result.best_epoch, result.best_val_map, result.best_val_score, since_best = epoch + 1, val_map, score, 0
        else:
            since_best += 1
            if since_best >= config.patience:
                result.stopped_early = True
                break
    bar.close()
    head.load_state_dict(best_state)
    head.eval()
    return result
