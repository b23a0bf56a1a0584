"""The pipeline: ``compare()``, several configurations on one dataset, one table (notebook 03).

A configuration is a string of ``key=value`` pairs separated by commas, each key a retrieval
method option (a field of :class:`cbir_kit.pipeline.stages.Methods`, the ``cbir evaluate`` flags) or
``head``; ``exact`` (or an empty string) means the defaults.  A comma followed by a part without
``=`` continues the previous value, so faiss factory strings keep their commas.  Examples::

    exact
    index=HNSW32
    index=IVF64,Flat,nprobe=8
    hash=itq:64,shortlist=200
    rerank=kreciprocal,qe=aqe:5

Values that look like integers, floats or booleans (``true`` / ``false``) are converted.
All configurations share the dataset, model and feature cache, so features are extracted
once and the other runs load them (``cache_hit`` in ``--json`` / ``--report`` says which).
Every configuration after the first gets ``config["vs_first"]``: its mAP difference from the
first with a seeded paired-bootstrap 95% interval over the queries, and "not distinguishable"
when the interval contains 0 (:mod:`cbir_kit.evaluation.bootstrap`).
The printed table fits a 100-column terminal: one row per configuration, a few key columns
(:func:`cbir_kit.report.document.key_table`); ``--json`` and ``--report`` hold every metric and timing.
"""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from ..errors import CbirError
from ..evaluation.bootstrap import paired_difference
from ..runtime import RUNTIME_OPTIONS, runtime_of

# evaluate() arguments that belong to the whole comparison, not to one configuration
SHARED = ("dataset", "model", "k", "runtime", *RUNTIME_OPTIONS)


def _convert(value: str):
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def method_keys() -> list[str]:
    """The retrieval-method keys: the fields of :class:`~cbir_kit.pipeline.stages.Methods`."""
    from .stages import Methods

    return [field.name for field in dataclasses.fields(Methods)]


def config_keys() -> list[str]:
    """The keys a configuration may set: the method keys and evaluate()'s own per-run arguments."""
    from .job import evaluate

    own = [p.name for p in inspect.signature(evaluate).parameters.values()
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in SHARED and p.name != "methods"]
    return method_keys() + own


def parse_config(text: str) -> dict:
    """``"hash=itq:64,shortlist=200"`` -> ``{"hash": "itq:64", "shortlist": 200}``; ``exact`` -> {}."""
    text = text.strip()
    if text in ("", "exact"):
        return {}
    allowed = config_keys()
    pairs: list[list[str]] = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep:
            pairs.append([key.strip().replace("-", "_"), value.strip()])
        elif pairs:  # "index=IVF64,Flat": the comma belongs to the value
            pairs[-1][1] += "," + part.strip()
        else:
            raise CbirError(f"configuration {text!r}: {part!r} is not key=value; write e.g. index=HNSW32")
    out = {}
    for key, value in pairs:
        if key not in allowed:
            raise CbirError(f"configuration {text!r}: unknown key {key!r}; this version knows "
                            f"{', '.join(allowed)} (the dataset, model and k are set once for all)")
        if key in out:
            raise CbirError(f"configuration {text!r}: {key!r} is given twice")
        out[key] = _convert(value)
    return out


def evaluate_kwargs(config: dict) -> dict:
    """A parsed configuration as evaluate() arguments: method keys gathered into ``methods``."""
    from .stages import Methods

    names = set(method_keys())
    methods = {key: value for key, value in config.items() if key in names}
    kwargs = {key: value for key, value in config.items() if key not in names}
    if methods:
        kwargs["methods"] = Methods(**methods)
        kwargs["methods"].check()
    return kwargs


def compare(configs, dataset="demo", labels=None, **shared) -> list:
    """Run :func:`~cbir_kit.pipeline.job.evaluate` once per configuration; returns the results.

    ``shared`` holds the arguments common to every run (model, k, and a ``runtime`` or its options).  Each
    result's ``config["label"]`` is its configuration string (or ``labels[i]``).
    """
    from .job import evaluate

    configs = list(configs)
    if not configs:
        raise CbirError("compare needs at least one configuration in configs=, e.g. 'exact' and 'index=HNSW32'")
    unknown = set(shared) - set(SHARED)
    if unknown:
        raise CbirError(f"compare: {sorted(unknown)} belong in a configuration string, not in the shared arguments")
    parsed = [evaluate_kwargs(parse_config(c)) for c in configs]  # all checked before the first (slow) run
    labels = list(labels) if labels is not None else [c.strip() or "exact" for c in configs]
    results = []
    for kwargs, label in zip(parsed, labels):
        result = evaluate(dataset=dataset, **shared, **kwargs)
        result.config["label"] = label
        results.append(result)
    seed = runtime_of(shared.get("runtime"), {k: v for k, v in shared.items() if k in RUNTIME_OPTIONS}).seed
    for result in results[1:]:
        add_difference_from_first(results[0], result, seed)
    return results


def add_difference_from_first(first, result, seed: int = 0) -> None:
    """``result.config["vs_first"]``: its mAP minus the first configuration's, with a paired bootstrap
    interval over the queries (:func:`cbir_kit.evaluation.bootstrap.paired_difference`), when both
    ran on the same queries (a head's hold-out may leave some out: then nothing is added); and its
    F1 minus the first's when both were thresholded (over the same evaluation queries)."""
    a, b = first.per_query_ap, result.per_query_ap
    if a is None or b is None or a.shape != b.shape:
        return
    result.config["vs_first"] = {"mAP": paired_difference(a, b, seed=seed)}
    fa, fb = first.per_query_f1, result.per_query_f1
    if fa is not None and fb is not None and np.array_equal(fa[0], fb[0]):   # thresholded, same split
        result.config["vs_first"]["f1"] = paired_difference(fa[1], fb[1], seed=seed)
