"""Stage 7, report: plots of retrieval results, one call each, each a matplotlib Figure (notebooks 03, 05).

In a notebook::

    from cbir_kit import viz
    result = evaluate("demo")
    viz.plot_pr_curve(result)              # precision-recall over k
    viz.plot_query_grid(result, n_best=3)  # best and worst queries with their top-k

Functions take :class:`~cbir_kit.pipeline.job.EvalResult` objects (one or a list, labelled by
``labels`` or by ``result.config["label"]``, else the model name) or plain arrays.  The
report (:mod:`cbir_kit.report.document`) saves these same figures as PNG files.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt  # the backend is the caller's: inline in notebooks, Agg when headless
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ..errors import CbirError
from ..datasets.images import ImageLoadError, open_image

RELEVANT, NOT_RELEVANT, JUNK, QUERY = "#1a9641", "#d7191c", "#999999", "#2b83ba"
NOT_SCORED = "#dddddd"   # a search result without ground truth
MARKERS = ("o", "s", "^", "D", "v")

# table columns (cbir_kit.report.document.summary_table) in words, with their units
COLUMN_WORDS = {
    "mAP": "mAP (mean average precision)",
    "precision": "precision of the top-k set (macro)",
    "recall": "recall of the top-k set (macro)",
    "f1": "F1 of the top-k set (macro)",
    "query_ms_per_query": "query time (ms per query)",  # expansion + search + re-ranking
    "search_ms_per_query": "search time (ms per query)",
    "extract_s": "feature extraction time (s)",
    "images_per_s": "extraction speed (images per s)",
    "index_build_s": "index build time (s)",
    "total_s": "total time (s)",
}
UNIT_SUFFIXES = (("_ms_per_query", "ms per query"), ("_ms", "ms"), ("_s", "s"))


def column_words(column: str) -> str:
    """A table column's name in words with its unit, for plot labels: ``extract_s`` -> ``feature extraction time (s)``."""
    if column in COLUMN_WORDS:
        return COLUMN_WORDS[column]
    vs_exact = re.fullmatch(r"recall@(\d+)_vs_exact", column)
    if vs_exact:
        return f"share of the exact top-{vs_exact[1]} found"
    for suffix, unit in UNIT_SUFFIXES:
        if column.endswith(suffix):
            return f"{column[:-len(suffix)].replace('_', ' ')} ({unit})"
    return column.replace("_", " ")


def shorten(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters, ending in "..." when cut."""
    return text if len(text) <= width else text[:max(width - 3, 0)] + "..."


def _as_list(results) -> list:
    return list(results) if isinstance(results, (list, tuple)) else [results]


def result_label(result, i: int = 0) -> str:
    """A result's display name: ``config["label"]``, else model (+ index when not exact)."""
    config = getattr(result, "config", {}) or {}
    if config.get("label"):
        return str(config["label"])
    index = config.get("index", "Flat")
    return result.model if index == "Flat" else f"{result.model} {index}"


def result_labels(results, labels) -> list[str]:
    """One label per result: ``labels`` as given (one each), else each result's model and index."""
    if labels is None:
        return [result_label(r, i) for i, r in enumerate(results)]
    if len(labels) != len(results):
        raise CbirError(f"got {len(labels)} labels for {len(results)} results")
    return list(labels)


def plot_pr_curve(results, labels: Sequence[str] | None = None, marks=(1, 5, 10)) -> Figure:
    """Macro precision against macro recall of the top-k set as k grows (``curves["over_k"]``)."""
    results = _as_list(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    for result, label in zip(results, result_labels(results, labels)):
        curve = result.curves.get("over_k")
        if curve is None:
            raise CbirError(f"{label}: the result has no precision-recall curve (run it with evaluate())")
        line, = ax.plot(curve["recall"], curve["precision"], label=label, lw=2)
        for k, marker in zip(marks, MARKERS):
            i = np.searchsorted(curve["k"], k)
            if i < len(curve["k"]) and curve["k"][i] == k:
                ax.plot(curve["recall"][i], curve["precision"][i], marker, color=line.get_color(), ms=7,
                        mec="black", mew=0.8)
    for k, marker in zip(marks, MARKERS):  # one legend entry per cut-off, whatever the method
        ax.plot([], [], marker, color="white", mec="black", ms=7, label=f"k = {k}")
    ax.set(xlabel="recall (macro over queries)", ylabel="precision (macro over queries)",
           xlim=(0, 1.05), ylim=(0, 1.05), title="Precision-recall of the top-k set, k = 1 ... gallery size")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return fig


def plot_methods(frame, quality: str = "mAP", latency: str = "query_ms_per_query") -> Figure:
    """Two bar charts side by side: ``quality`` and ``latency`` per method (rows of ``frame``)."""
    names = [str(i) for i in frame.index]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.3 * len(names) + 5), 4.2), layout="constrained")
    for ax, column, colour, fmt in ((axes[0], quality, "#2b83ba", "{:.3f}"), (axes[1], latency, "#fdae61", "{:.3g}")):
        if column not in frame.columns:
            raise CbirError(f"no column {column!r} to plot; columns: {list(frame.columns)}")
        values = frame[column].astype(float).to_numpy()
        bars = ax.bar(range(len(names)), values, color=colour)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=9, padding=2)
        ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center")
        ax.set_ylabel(column_words(column))
        ax.set_ylim(0, max(np.nanmax(values) * 1.18, 1e-9))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("quality (higher is better)")
    axes[1].set_title("speed (lower is better)")
    return fig


def plot_recall_vs_latency(frame, recall: str = "recall@10_vs_exact", latency: str = "query_ms_per_query") -> Figure:
    """Each method (row) as a point: per-query latency (x, log scale) against a recall (y).

    The default recall is the share of the exact top-k an ANN or hash index returns, so exact
    search sits at 1 and every approximate setting shows what its speed costs.
    """
    fig, ax = plt.subplots(figsize=(9.0, 4.6), layout="constrained")
    x = frame[latency].astype(float).to_numpy()
    y = frame[recall].astype(float).to_numpy()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, xi, yi) in enumerate(zip(frame.index, x, y)):
        ax.scatter(xi, yi, s=60, color=colours[i % len(colours)], zorder=3, label=f"{name} ({yi:.3f}, {xi:.3g} ms)")
    ax.set_xscale("log")
    ax.set(xlabel=f"{column_words(latency)}, log scale (lower is better)",
           ylabel=f"{column_words(recall)} (higher is better)", title="What speed costs: recall against query time")
    ax.set_ylim(min(0.8, float(np.nanmin(y)) - 0.02), 1.01)
    ax.margins(x=0.3)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="method (recall, ms per query)")
    return fig


def plot_f1_vs_threshold(curves: dict, chosen: dict | None = None) -> Figure:
    """F1 (and precision, recall) against the threshold, one colour per curve.

    ``curves``: name -> dict with ``threshold``, ``f1`` (and optionally ``precision``,
    ``recall``), e.g. ``{"static": result.curves["over_threshold"]}``.  A dynamic
    threshold is plotted against its ``T_static`` offset.  ``chosen``: name -> the
    threshold selected (a dotted vertical line).
    """
    fig, ax = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, curve), colour in zip(curves.items(), colours):
        t = np.asarray(curve["threshold"])
        ax.plot(t, curve["f1"], color=colour, lw=2.2, label=f"{name}: F1 (best {np.nanmax(curve['f1']):.3f})")
        if "precision" in curve:
            ax.plot(t, curve["precision"], color=colour, lw=1, ls="--", label=f"{name}: precision")
        if "recall" in curve:
            ax.plot(t, curve["recall"], color=colour, lw=1, ls=":", label=f"{name}: recall")
        if chosen and name in chosen:
            ax.axvline(chosen[name], color=colour, ls="-.", lw=1)
    ax.set(xlabel="threshold on the similarity (retrieve score >= t)", ylabel="macro over queries",
           ylim=(0, 1.02), title="F1 against the threshold")
    ax.set_xlim(*_active_range(curves))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _active_range(curves: dict) -> tuple[float, float]:
    """The threshold range where some F1 changes (flat ends trimmed), with a margin."""
    lows, highs = [], []
    for curve in curves.values():
        t, f1 = np.asarray(curve["threshold"], float), np.nan_to_num(np.asarray(curve["f1"], float))
        moving = np.flatnonzero(np.abs(f1 - f1[0]) > 1e-3)
        lows.append(t[moving[0]] if len(moving) else t[0])
        nonzero = np.flatnonzero(f1 > 1e-3)
        highs.append(t[nonzero[-1]] if len(nonzero) else t[-1])
    lo, hi = min(lows), max(highs)
    margin = 0.1 * max(hi - lo, 1e-6)
    return lo - margin, hi + margin


def _thumb(ref, size: int) -> np.ndarray | None:
    try:
        img = open_image(ref, draft_size=(size, size))
    except ImageLoadError:
        return None
    img.thumbnail((size, size))
    square = Image.new("RGB", (size, size), "white")  # letterbox so every cell has the same shape
    square.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(square)


def _show(ax, ref, colour: str, title: str, size: int) -> None:
    pixels = _thumb(ref, size)
    if pixels is None:
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=8)
    else:
        ax.imshow(pixels)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(5)
    ax.set_title(title, fontsize=9, color="black" if colour in (QUERY, NOT_SCORED) else colour)


def relevance_colours(result, query: int, ids: np.ndarray) -> list[str]:
    """Border colour per retrieved id: green relevant, red not, grey revisitop junk (Medium)."""
    ds = result.ds
    if ds.gnd is not None:
        entry = ds.gnd[query]
        ok = set(np.concatenate([np.asarray(entry.get("easy", []), int), np.asarray(entry.get("hard", []), int)]).tolist())
        junk = set(np.asarray(entry.get("junk", []), int).tolist())
        return [RELEVANT if i in ok else JUNK if i in junk else NOT_RELEVANT for i in ids]
    return [RELEVANT if ds.gallery_labels[i] == ds.query_labels[query] else NOT_RELEVANT for i in ids]


def pick_queries(per_query_ap: np.ndarray, n_best: int, n_worst: int) -> tuple[list[int], list[int]]:
    """Indices of the ``n_best`` highest-AP and ``n_worst`` lowest-AP queries (NaN ignored, no overlap)."""
    ap = np.asarray(per_query_ap, float)
    valid = np.flatnonzero(np.isfinite(ap))
    order = valid[np.argsort(-ap[valid], kind="stable")]
    best = order[:n_best].tolist()
    worst = [q for q in order[::-1][:n_worst].tolist() if q not in best]
    return best, worst


def plot_query_grid(result, n_best: int = 3, n_worst: int = 3, k: int = 5, thumb: int = 160) -> Figure:
    """The best and worst queries by AP: the query, then its top-k with coloured borders.

    The query is titled with its class and AP, each result with its rank and class.  Green =
    relevant, red = not relevant (grey = junk on revisitop sets).  Needs a result from
    :func:`~cbir_kit.pipeline.job.evaluate` (it carries the dataset and the rankings).
    """
    if getattr(result, "ds", None) is None or result.ranked_ids is None or result.per_query_ap is None:
        raise CbirError("plot_query_grid needs an EvalResult from evaluate() (dataset, rankings and per-query AP)")
    k = min(k, result.ranked_ids.shape[1])
    best, worst = pick_queries(result.per_query_ap, n_best, n_worst)
    rows = [(q, "best") for q in best] + [(q, "worst") for q in worst]
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.75 * (k + 1), 1.95 * len(rows) + 0.5),
                             squeeze=False, layout="constrained")
    ds = result.ds
    for row, (q, kind) in enumerate(rows):
        ids = result.ranked_ids[q, :k]
        _show(axes[row, 0], ds.query[q], QUERY,
              f"query: {shorten(str(ds.query_labels[q]), 16)}\n{kind}, AP {result.per_query_ap[q]:.2f}", thumb)
        for col, (gid, colour) in enumerate(zip(ids, relevance_colours(result, q, ids)), start=1):
            if gid < 0:
                axes[row, col].axis("off")
                continue
            _show(axes[row, col], ds.gallery[gid], colour, f"rank {col}: {shorten(str(ds.gallery_labels[gid]), 16)}", thumb)
    fig.suptitle(f"{ds.name}: best and worst queries (blue = query, green = relevant, red = not relevant)",
                 fontsize=10)
    return fig


def plot_per_class(classes, values, what: str = "AP") -> Figure:
    """Mean ``what`` per class as horizontal bars, worst class at the top."""
    order = np.argsort(values)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.28 * len(classes)), layout="constrained")
    ax.barh(np.arange(len(classes)), np.asarray(values)[order])
    ax.set_yticks(np.arange(len(classes)), [shorten(str(classes[i]), 24) for i in order], fontsize=8)
    ax.set(xlim=(0, 1), xlabel=f"mean {what} of the class's queries", title=f"{what} per query class")
    ax.grid(alpha=0.3, axis="x")
    return fig


def plot_class_matrix(classes, matrix, k: int, what: str = "class") -> Figure:
    """Who fills the top k: row = class of the query, column = class of a result, shade = share."""
    n = len(classes)
    fig, ax = plt.subplots(figsize=(min(2 + 0.32 * n, 14), min(1.6 + 0.3 * n, 12)), layout="constrained")
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    if n <= 40:
        labels = [shorten(str(c), 18) for c in classes]
        ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(np.arange(n), labels, fontsize=7)
    ax.set(xlabel=f"{what} of a top-{k} result", ylabel=f"{what} of the query",
           title=f"Who fills the top {k}: share of each query {what}'s results")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_search_grid(results, queries: Sequence | None = None, k: int | None = None, thumb: int = 160) -> Figure:
    """Each query (image or text) and its results as thumbnails titled with rank, similarity and label.

    ``results``: the :class:`~cbir_kit.collection.QueryResult` list of ``Collection.search``;
    ``queries``: the query images to draw (default: each result's query when it is an image file,
    else its text).  ``k`` caps the results drawn per query (default: all, at most 10).
    """
    results = list(results)
    if not results:
        raise CbirError("plot_search_grid needs at least one query result")
    k = k or min(10, max(1, max(len(r.results) for r in results)))
    fig, axes = plt.subplots(len(results), k + 1, figsize=(1.75 * (k + 1), 2.0 * len(results) + 0.3),
                             squeeze=False, layout="constrained")
    for row, r in enumerate(results):
        ref = queries[row] if queries is not None else r.query
        query_ax = axes[row, 0]
        if isinstance(ref, str) and not Path(ref).is_file():          # a text query (or a missing file)
            query_ax.text(0.5, 0.5, shorten(ref, 60), ha="center", va="center", wrap=True, fontsize=9)
            query_ax.set_xticks([])
            query_ax.set_yticks([])
            query_ax.set_title("query" + (" (failed)" if r.error else ""), fontsize=9)
        else:
            _show(query_ax, ref, QUERY, "query" + (" (failed)" if r.error else ""), thumb)
        for col in range(1, k + 1):
            if col > len(r.results):
                axes[row, col].axis("off")
                continue
            hit = r.results[col - 1]
            label = f"\n{shorten(hit.label, 16)}" if hit.label else ""
            _show(axes[row, col], hit.path, NOT_SCORED, f"{hit.rank}. {hit.score:.2f}{label}", thumb)
    return fig
