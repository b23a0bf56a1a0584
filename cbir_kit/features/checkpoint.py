"""Stage 2, features: a trained head or fine-tuned network as one file, applied at evaluation time (notebook 08).

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

A fully fine-tuned network (``cbir finetune``) is a file of the same kind, with ``format``
``"finetuned-1"``, ``base`` holding what rebuilds it (model spec, out_dim, dropout,
image_size) and ``state`` the whole network's state_dict; :func:`load_finetuned` rebuilds
it, and the model spec ``finetuned:PATH`` makes it a feature extractor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._io import atomic_path
from ..errors import CbirError
from ..datasets.splits import held_out_masks
from .embedding_net import build_embedding_net
from .heads import build_head
from .models import Backbone
from .specs import parse_model

HEAD_FORMAT = 1
FINETUNED_FORMAT = "finetuned-1"


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
            raise CbirError(f"{name} was trained on features of model={self.base.get('model')!r}, not "
                            f"model={model!r}; evaluate with model={self.base.get('model')!r} or train a head "
                            f"for {model!r}")
        if dim is not None and dim != self.head.in_dim:
            raise CbirError(f"{name} expects {self.head.in_dim}-d features but {model} gives {dim}-d; "
                            "retrain the head on these features")

    def prepare_evaluation(self, model: str, ds, queries, gallery):
        """What ``cbir evaluate --head`` searches: held-out images only, mapped through the head.

        Checks that the features come from the head's base model, drops the queries and
        gallery images the head was trained or validated on (matched by content hash), and
        returns ``(dataset, query embeddings, gallery embeddings, info)``.
        """
        self.check_base(model, np.asarray(gallery).shape[1])
        ds, queries, gallery, info = apply_hold_out(self.protocol.get("trained_fingerprints"), ds, queries, gallery,
                                                    self.path or "the head")
        info = {"path": self.path, "kind": self.kind, "out_dim": self.head.out_dim, **info}
        return ds, self.apply(queries), self.apply(gallery), info


def save_head(path, head: nn.Module, base: dict, config: dict, metrics: dict, protocol: dict) -> Path:
    """Write a head file atomically (see the module docstring)."""
    return save_atomically(path, {"format": HEAD_FORMAT, "head": head.hparams(), "state": cpu_state(head),
                                  "base": base, "config": config, "metrics": metrics, "protocol": protocol})


def cpu_state(module: nn.Module) -> dict:
    """A detached CPU copy of ``module``'s state_dict."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_atomically(path, payload: dict) -> Path:
    """``torch.save(payload)`` to ``path``, whole or not at all (:mod:`cbir_kit._io`)."""
    path = Path(path)
    with atomic_path(path, fsync=True) as tmp:
        torch.save(payload, tmp)
    return path


def load_head(path) -> TrainedHead:
    """Load a head file written by :func:`save_head`; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"head={str(path)!r} does not exist; train one with `cbir train --out {path}`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise CbirError(f"head={str(path)!r} is not a cbir_kit head file ({type(err).__name__}: {err}); "
                        "train one with `cbir train`") from err
    if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
        raise CbirError(f"head={str(path)!r} is not a cbir_kit head file of format {HEAD_FORMAT}; "
                        "retrain it with `cbir train`")
    try:
        head = build_head(payload["head"])
        head.load_state_dict(payload["state"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CbirError(f"head={str(path)!r} is damaged ({err}); retrain it with `cbir train`") from err
    head.eval()
    return TrainedHead(head=head, base=payload["base"], config=payload.get("config", {}),
                       metrics=payload.get("metrics", {}), protocol=payload.get("protocol", {}), path=str(path))


def apply_hold_out(trained_fingerprints, ds, queries, gallery, what: str):
    """``(dataset, queries, gallery, info)`` without the images a model was trained or validated on."""
    keep_q, keep_g = held_out_masks(trained_fingerprints, ds.query, ds.gallery)
    if not keep_q.any() or keep_g.sum() < 2:
        raise CbirError(f"every query or gallery image of {ds.name} was used to train {what}; "
                        "evaluate it on images it has not seen")
    if not (keep_q.all() and keep_g.all()):
        ds = ds.subset(keep_q, keep_g)
    info = {"held_out": f"images {what} was trained or validated on are left out",
            "dropped_queries": int((~keep_q).sum()), "dropped_gallery": int((~keep_g).sum())}
    return ds, np.asarray(queries)[keep_q], np.asarray(gallery)[keep_g], info


def finetuned_hold_out(spec: str, ds, queries, gallery):
    """:func:`apply_hold_out` with the training images recorded in the ``finetuned:PATH`` file ``spec``."""
    protocol = read_finetuned(parse_model(spec).path).get("protocol", {})
    return apply_hold_out(protocol.get("trained_fingerprints"), ds, queries, gallery, spec)


def save_finetuned(path, net: nn.Module, base: dict, config: dict, metrics: dict, protocol: dict) -> Path:
    """Write a fine-tuned network file atomically (module docstring)."""
    return save_atomically(path, {"format": FINETUNED_FORMAT, "base": base, "state": cpu_state(net),
                                  "config": config, "metrics": metrics, "protocol": protocol})


def read_finetuned(path) -> dict:
    """The payload of a fine-tuned network file; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"model={'finetuned:' + str(path)!r}: the file does not exist; make it with "
                        f"`cbir finetune --out {path}`")
    try:  # memory-mapped: reading the protocol alone does not read the weights
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # unpickling errors come in many types
        raise CbirError(f"model={'finetuned:' + str(path)!r} is not a cbir_kit fine-tuned network "
                        f"({type(err).__name__}: {err}); make one with `cbir finetune`") from err
    if not isinstance(payload, dict) or payload.get("format") != FINETUNED_FORMAT:
        raise CbirError(f"model={'finetuned:' + str(path)!r} is not a cbir_kit fine-tuned network of format "
                        f"{FINETUNED_FORMAT}; make one with `cbir finetune`")
    return payload


def load_finetuned(path) -> nn.Module:
    """Rebuild the network of a fine-tuned network file, in eval mode (``.preprocess`` attached)."""
    payload = read_finetuned(path)
    base = payload["base"]
    try:
        net = build_embedding_net(base["model"], base["out_dim"], base["dropout"], pretrained=False,
                                  image_size=base.get("image_size"))
        net.load_state_dict(payload["state"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CbirError(f"model={'finetuned:' + str(path)!r} is damaged ({err}); fine-tune again with "
                        "`cbir finetune`") from err
    return net.eval()


def build_finetuned(spec: str) -> Backbone:
    """The :class:`~cbir_kit.features.models.Backbone` of a ``finetuned:PATH`` spec."""
    net = load_finetuned(parse_model(spec).path)
    return Backbone(net, net.preprocess, net.head.out_dim, spec, channels_last=not net.tokens)
