"""A trained head as one file, and applying it at evaluation time.

The file is ``torch.save`` of a plain dict (loaded back with ``weights_only=True``, so
opening a head file never runs code)::

    format    1
    head      hyper-parameters that rebuild the module (kind, in_dim, out_dim, ...)
    state     the module's state_dict
    base      the frozen features it was trained on: model spec, pretrained, preprocess, dim
    config    the training configuration;  metrics  what the training run measured
    protocol  how the data were split, with ``trained_fingerprints``: content hashes of every
              image used for training or validation (so evaluation can hold them out)

The head is written to a temporary file and renamed into place.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CbirError
from ..images import fingerprint
from .heads import build_head

HEAD_FORMAT = 1


@dataclass
class TrainedHead:
    """A head with what it was trained on; ``apply`` maps frozen features to embeddings."""

    head: nn.Module
    base: dict
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    path: str = ""

    @property
    def kind(self) -> str:
        return self.head.hparams()["kind"]

    @torch.no_grad()
    def apply(self, features) -> np.ndarray:
        """L2-normalised embeddings (N, out_dim) of frozen features (N, in_dim)."""
        self.head.eval()
        x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))
        out = self.head(x)
        return (out[1] if isinstance(out, tuple) else out).numpy()

    def codes(self, features) -> np.ndarray:
        """Binary codes (N, n_bits) as uint8 0/1 (hash heads only)."""
        if self.kind != "hash":
            raise CbirError(f"head {self.path or '(in memory)'} is a {self.kind} head; only hash heads give codes")
        return self.head.codes(torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))).numpy() \
            .astype(np.uint8)

    def check_base(self, model: str, dim: int | None = None) -> None:
        """Raise a clear error unless features of ``model`` (with dimension ``dim``, if given) fit this head."""
        name = self.path or "the head"
        if model != self.base.get("model"):
            raise CbirError(f"{name} was trained on features of --model {self.base.get('model')}, "
                            f"not {model}; evaluate with --model {self.base.get('model')} or train a head for {model}")
        if dim is not None and dim != self.head.in_dim:
            raise CbirError(f"{name} expects {self.head.in_dim}-d features but {model} gives {dim}-d; "
                            "retrain the head on these features")

    def held_out_masks(self, query_refs, gallery_refs) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks keeping the queries and gallery images the head was not trained on."""
        trained = set(self.protocol.get("trained_fingerprints", []))
        if not trained:
            return np.ones(len(query_refs), bool), np.ones(len(gallery_refs), bool)
        keep_q = np.array([fingerprint(r) not in trained for r in query_refs], bool)
        keep_g = np.array([fingerprint(r) not in trained for r in gallery_refs], bool)
        return keep_q, keep_g

    def prepare_evaluation(self, model: str, ds, queries, gallery):
        """What ``cbir evaluate --head`` searches: held-out images only, mapped through the head.

        Checks that the features come from the head's base model, drops the queries and
        gallery images the head was trained or validated on (matched by content hash), and
        returns ``(dataset, query embeddings, gallery embeddings, info)``.
        """
        self.check_base(model, np.asarray(gallery).shape[1])
        keep_q, keep_g = self.held_out_masks(ds.query, ds.gallery)
        if not keep_q.any() or keep_g.sum() < 2:
            raise CbirError(f"every query or gallery image of {ds.name} was used to train {self.path}; "
                            "evaluate the head on images it has not seen")
        if not (keep_q.all() and keep_g.all()):
            ds = ds.subset(keep_q, keep_g)
        info = {"path": self.path, "kind": self.kind, "out_dim": self.head.out_dim,
                "held_out": "images the head was trained or validated on are left out",
                "dropped_queries": int((~keep_q).sum()), "dropped_gallery": int((~keep_g).sum())}
        return ds, self.apply(np.asarray(queries)[keep_q]), self.apply(np.asarray(gallery)[keep_g]), info


def save_head(path, head: nn.Module, base: dict, config: dict, metrics: dict, protocol: dict) -> Path:
    """Write a head file atomically (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": HEAD_FORMAT, "head": head.hparams(),
               "state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
               "base": base, "config": config, "metrics": metrics, "protocol": protocol}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_head(path) -> TrainedHead:
    """Load a head file written by :func:`save_head`; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"--head {path} does not exist; train one with `cbir train --out {path}`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise CbirError(f"--head {path} is not a cbir_kit head file ({type(err).__name__}: {err}); "
                        "train one with `cbir train`") from err
    if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
        raise CbirError(f"--head {path} is not a cbir_kit head file of format {HEAD_FORMAT}; retrain it with `cbir train`")
    try:
        head = build_head(payload["head"])
        head.load_state_dict(payload["state"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CbirError(f"--head {path} is damaged ({err}); retrain it with `cbir train`") from err
    head.eval()
    return TrainedHead(head=head, base=payload["base"], config=payload.get("config", {}),
                       metrics=payload.get("metrics", {}), protocol=payload.get("protocol", {}), path=str(path))
