"""Stage 1, datasets: every seeded split of labelled items (notebooks 05 and 08).

``stratified_split`` puts round(f * n_c) items of every class c into the first part (at
least one and at most n_c - 1 when n_c >= 2), chosen by a seeded permutation.

``hold_out`` is the protocol of ``cbir train`` and ``cbir finetune`` (stated in
:mod:`cbir_kit.train.run`): the gallery split per class into training (itself split into fit and
validation parts) and held-out images; any query or gallery image byte-identical to a
training image is left out of the test (:func:`held_out_masks`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CbirError
from .images import fingerprint


def stratified_split(labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(first, second)`` with ``fraction`` of every class in ``first`` (see module doc)."""
    if not 0.0 < fraction < 1.0:
        raise CbirError(f"split fraction must lie strictly between 0 and 1; got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in sorted(set(labels.tolist()), key=str):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_first = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_first = min(max(n_first, 1), len(idx) - 1)
        first.append(idx[:n_first])
        second.append(idx[n_first:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


@dataclass
class HoldOut:
    """One seeded split of a labelled dataset (module docstring); indices are gallery rows."""

    classes: list
    labels: np.ndarray          # integer class of every gallery image (index into ``classes``)
    fit_idx: np.ndarray         # trained on
    val_idx: np.ndarray         # early stopping only
    keep_query: np.ndarray      # bool per query: not one of the training images
    keep_gallery: np.ndarray    # bool per gallery image: held out
    trained_fingerprints: list  # content hashes of every training and validation image

    @property
    def train_idx(self) -> np.ndarray:
        return np.sort(np.concatenate([self.fit_idx, self.val_idx]))


def class_codes(labels, classes) -> np.ndarray:
    """Integer codes of ``labels`` by position in ``classes`` (-1 for a label not in it)."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(c, -1) for c in np.asarray(labels).tolist()], np.int64)


def hold_out(ds, train_fraction: float, val_fraction: float, seed: int) -> HoldOut:
    """Split ``ds`` (a :class:`~cbir_kit.datasets.Dataset`) for training (module docstring)."""
    if not 0.0 < val_fraction < 1.0:
        raise CbirError(f"val_fraction={val_fraction!r} must lie strictly between 0 and 1")
    classes = sorted(set(np.asarray(ds.gallery_labels).tolist()), key=str)
    y = class_codes(ds.gallery_labels, classes)
    train_idx, _ = stratified_split(y, train_fraction, seed)
    fit_pos, val_pos = stratified_split(y[train_idx], 1.0 - val_fraction, seed + 1)
    trained = sorted({fingerprint(ds.gallery[i]) for i in train_idx})
    keep_q, keep_g = held_out_masks(trained, ds.query, ds.gallery)
    if not keep_q.any() or keep_g.sum() < 2:
        raise CbirError(f"{ds.name}: nothing is left to test on after holding out the training images; "
                        f"lower train_fraction= (now {train_fraction})")
    return HoldOut(classes, y, train_idx[fit_pos], train_idx[val_pos], keep_q, keep_g, trained)


def held_out_masks(trained_fingerprints, query_refs, gallery_refs) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks keeping the queries and gallery images whose content hash is not a trained one.

    The one definition of "held out": the training run and ``cbir evaluate`` (of a head or a
    fine-tuned network) both use it, so they test on the same images.
    """
    trained = set(trained_fingerprints or ())
    if not trained:
        return np.ones(len(query_refs), bool), np.ones(len(gallery_refs), bool)
    return (np.array([fingerprint(r) not in trained for r in query_refs], bool),
            np.array([fingerprint(r) not in trained for r in gallery_refs], bool))
