"""The pipeline: the course's one switch, ``CBIR_PROFILE`` picks the data and sizes of every notebook (notebook 00).

``CBIR_PROFILE=ci``   offline and small: the embedded ``demo`` near-duplicate photos and a
                      class-stratified subset of scikit-learn's ``digits`` stand in for the
                      real datasets; no notebook needs the network.
unset (or ``full``)   the real datasets: Corel-1K, CIFAR-100, Animals-10, Revisited Oxford.

A notebook asks for a dataset by its *role* in the course, never by name, so the same
cell runs under both profiles::

    P = get_profile()
    ds = load_dataset("classes")          # Corel-1K, or the digits subset under ci
    queries, gallery = embed(ds, P.model) # cached features, one row per image

Roles: ``classes`` (category retrieval), ``instances`` (same object or place),
``hashing`` (many classes, many images), ``assignment`` (the Animals-10 challenge).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..datasets import Dataset, DatasetError, load
from ..datasets.base import default_root
from ..features import FeatureCache, OFFLINE_MODEL, create_extractor

ENV = "CBIR_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Which dataset plays each role, which model embeds it, and how big the runs are.

    ``per_class`` caps the gallery images kept per class (None keeps all); ``extra_models``
    are compared against ``model`` in the features notebook; ``epochs`` bounds training.
    """

    name: str
    datasets: dict = field(default_factory=dict)
    per_class: int | None = None
    model: str = OFFLINE_MODEL
    extra_models: tuple = ()
    epochs: int = 30
    repeats: int = 5

    @property
    def offline(self) -> bool:
        return self.name == "ci"


PROFILES = {
    "ci": Profile(
        name="ci",
        datasets={"classes": "digits", "instances": "demo", "hashing": "digits", "assignment": "digits"},
        per_class=30, epochs=15, repeats=3),
    "full": Profile(
        name="full",
        datasets={"classes": "corel1k", "instances": "roxford5k", "hashing": "cifar100",
                  "assignment": "animals10"},
        extra_models=("resnet18", "clip:ViT-B-32:laion2b_s34b_b79k"), epochs=60, repeats=20),
}


def get_profile(name: str | None = None) -> Profile:
    """The profile named ``name``, else ``$CBIR_PROFILE``, else ``full``."""
    name = (name or os.environ.get(ENV) or "full").strip().lower()
    if name not in PROFILES:
        raise DatasetError(f"{ENV}={name!r} is not a profile; use one of {', '.join(PROFILES)} "
                           f"(ci = offline demo data, full = the real datasets)")
    return PROFILES[name]


def cap_per_class(ds: Dataset, per_class: int | None, seed: int = 0) -> Dataset:
    """Keep at most ``per_class`` gallery images of each label (seeded, order preserved).

    Queries are all kept; leave-one-out sets cap queries and gallery together.
    """
    if per_class is None:
        return ds
    rng = np.random.default_rng(seed)
    keep = np.zeros(ds.n_gallery, bool)
    for label in np.unique(ds.gallery_labels):
        members = np.flatnonzero(ds.gallery_labels == label)
        if len(members) > per_class:
            members = rng.choice(members, size=per_class, replace=False)
        keep[members] = True
    query_keep = keep if ds.leave_one_out else np.ones(ds.n_queries, bool)
    out = ds.subset(query_keep, keep)
    out.info["per_class"] = per_class
    return out


class MissingData(DatasetError):
    """Datasets a notebook needs are not there: Jupyter shows this one sentence, not a traceback."""

    def _render_traceback_(self) -> list[str]:   # IPython's hook for an exception's display
        return [f"MissingData: {self}"]


STAND_INS: dict[str, str] = {}   # role -> the offline dataset a notebook uses instead (require(fallback=True))


def require(*roles: str, profile: Profile | None = None, root=None, fallback: bool = False) -> dict[str, str]:
    """Check, at the top of a notebook, that the datasets playing ``roles`` are there; return ``role -> spec``.

    A missing dataset that can be fetched without a hand step is fetched (``cbir datasets fetch``);
    one that is still missing stops the notebook with one sentence naming it, the command that fetches
    it and the offline path (``CBIR_PROFILE=ci``).  With ``fallback`` (notebook 00, where a student
    learns to fetch) nothing is downloaded: the offline stand-in of the ``ci`` profile plays a missing
    role instead, and it says so.
    """
    from ..datasets import FETCHERS, fetch

    profile = profile or get_profile()
    used, missing = {}, []
    for role in roles:
        spec = profile.datasets[role]
        STAND_INS.pop(role, None)
        try:
            load(spec, root=root)
        except DatasetError:
            try:
                if fallback or spec not in FETCHERS:   # notebook 00 shows how to fetch; it does not start to
                    raise DatasetError(f"{spec} is not fetched here")
                fetch(spec, root=root, progress=True)
                load(spec, root=root)
            except DatasetError:
                if not fallback:
                    missing.append(spec)
                    continue
                spec = STAND_INS[role] = PROFILES["ci"].datasets[role]
                print(f"{role}: {profile.datasets[role]} is not in {default_root(root)} yet; "
                      f"using the offline {spec} until you fetch it")
        used[role] = spec
    if missing:
        raise MissingData(f"this notebook needs {', '.join(missing)}, which {default_root(root)} does not have: "
                          f"fetch with `cbir datasets fetch {missing[0]}` (datasets/README.md says how for each), "
                          f"or run the course offline with {ENV}=ci")
    print("datasets:", ", ".join(f"{role} = {spec}" for role, spec in used.items()))
    return used


def load_dataset(role: str, profile: Profile | None = None, root=None) -> Dataset:
    """The dataset that plays ``role`` under ``profile`` (or its stand-in, :func:`require`), with clear
    advice when it is absent."""
    profile = profile or get_profile()
    if role not in profile.datasets:
        raise DatasetError(f"unknown dataset role {role!r}; use one of {', '.join(profile.datasets)}")
    spec = STAND_INS.get(role, profile.datasets[role])
    try:
        ds = load(spec, root=root)
    except DatasetError as err:
        raise MissingData(
            f"the {profile.name} profile uses {spec!r} for {role!r} but it could not be loaded: {err} "
            f"Fetch it as datasets/README.md describes (into {default_root()}), or run the "
            f"course offline on the embedded demo data with {ENV}=ci.") from None
    return cap_per_class(ds, profile.per_class)


def embed(ds: Dataset, model: str | None = None, cache_dir=None, device: str = "auto",
          progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(query_features, gallery_features)`` of ``ds``, through the on-disk feature cache.

    Rows are L2-normalised.  For leave-one-out datasets both are the same array.  Images
    that fail to decode raise an error naming them (the course data should be clean).
    """
    extractor = create_extractor(model or OFFLINE_MODEL, device=device)
    query, gallery, _ = FeatureCache(cache_dir).dataset_features(extractor, ds, progress)
    failures = gallery.failures + ([] if ds.leave_one_out else query.failures)
    if failures:
        shown = "; ".join(f"{img}: {reason}" for _, img, reason in failures[:3])
        raise DatasetError(f"{ds.name}: {len(failures)} image(s) could not be decoded ({shown}); "
                           "remove them from the dataset folder or manifest")
    return query.vectors, gallery.vectors
