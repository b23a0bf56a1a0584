"""Stage 7, report: tables (pandas) and the Markdown report of one or more evaluations (notebook 03).

* :func:`summary_table`: one row per method, quality and speed side by side.
* :func:`key_table`: its key columns as text that fits a terminal (what ``cbir compare`` prints).
* :func:`revisitop_table`: mAP and mP@k per revisitop setting (x100).
* :func:`write_report`: ``report.md`` with the tables and PNG plots from :mod:`cbir_kit.report.plots`
  (precision-recall, mAP and latency per method, recall against latency when ANN/hash
  settings are present, F1 against threshold when threshold curves are present, best and
  worst queries).  ``cbir evaluate --report DIR`` and ``cbir compare --report DIR`` call it.
* Reproductions of published tables: :func:`hash_project_table` (the CIFAR-100
  binary-hash project's mAP@k / mAHP@k layout) and :func:`threshold_f1_table` (static
  against dynamic threshold macro-F1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..evaluation import metrics as M
from .._io import atomic_path, write_text
from ..bench.harness import Bench
from ..errors import CbirError
from .plots import result_labels, shorten

QUALITY = ("mAP", "P@1", "P@5", "P@10", "R@10", "precision", "recall", "f1")
SPEED = ("extract_s", "images_per_s", "index_build_s", "search_ms_per_query", "query_ms_per_query", "total_s")
# summary_table column -> its heading in key_table
KEY_COLUMNS = {"mAP": "mAP", "P@10": "P@10", "recall": "recall", "f1": "F1", "query_ms_per_query": "ms/query"}


def summary_table(results, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method: the DESIGN.md metrics, every other metric, then every timing."""
    results = list(results) if isinstance(results, (list, tuple)) else [results]
    rows = []
    for result, label in zip(results, result_labels(results, labels)):
        row = {"method": label}
        row.update({key: result.metrics[key] for key in QUALITY if key in result.metrics})
        row.update({key: v for key, v in result.metrics.items()
                    if key not in QUALITY and not key.startswith(("mAP_", "mP@"))})
        row.update({key: result.timings[key] for key in SPEED if key in result.timings})
        # exact search: a query costs its search alone
        row.setdefault("query_ms_per_query", result.timings.get("search_ms_per_query"))
        row.update({key: v for key, v in result.timings.items() if key not in SPEED})
        row["cache_hit"] = bool(result.cache.get("hit"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def key_table(table: pd.DataFrame, width: int = 100, cell: int = 10) -> str:
    """The :data:`KEY_COLUMNS` of ``table`` (from :func:`summary_table`) as text at most ``width`` wide.

    One line per method; a method name longer than the room left is cut with "...".
    """
    columns = [c for c in KEY_COLUMNS if c in table.columns]
    label = table.index.name or "method"
    room = width - cell * len(columns)
    label_width = min(max(len(label), *(len(str(name)) for name in table.index)), room)
    lines = [label.ljust(label_width) + "".join(KEY_COLUMNS[c].rjust(cell) for c in columns)]
    for name, row in table[columns].iterrows():
        values = "".join(("-" if pd.isna(v) else f"{v:.4f}").rjust(cell) for v in row)
        lines.append(shorten(str(name), label_width).ljust(label_width) + values)
    return "\n".join(lines)


def revisitop_table(results, labels: Sequence[str] | None = None) -> pd.DataFrame | None:
    """mAP / mP@k per setting (x100) of the results that have them, else None."""
    results = list(results) if isinstance(results, (list, tuple)) else [results]
    rows = []
    for result, label in zip(results, result_labels(results, labels)):
        values = {k: v for k, v in result.metrics.items() if k.startswith(("mAP_", "mP@"))}
        if values:
            rows.append({"method": label, **values})
    return pd.DataFrame(rows).set_index("method") if rows else None


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(v) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            if np.isnan(v):
                return ""
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"
        return str(v)

    head = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index)] + [cell(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)


def difference_table(results) -> pd.DataFrame | None:
    """One row per configuration after the first and metric compared (mAP, and F1 when both were
    thresholded): the difference from the first, the paired bootstrap interval, the verdict and the
    per-query wins / ties / losses (None when there is none)."""
    rows = []
    for result, label in zip(results, result_labels(results, None)):
        for metric, diff in result.config.get("vs_first", {}).items():
            rows.append({"method": result.config.get("label", label), "metric": metric,
                         "difference": diff["difference"],
                         f"{100 * diff['confidence']:.0f}% interval": f"[{diff['low']:+.4f}, {diff['high']:+.4f}]",
                         "verdict": "distinguishable" if diff["distinguishable"] else "not distinguishable",
                         "wins / ties / losses": f"{diff['wins']} / {diff['ties']} / {diff['losses']}"})
    return pd.DataFrame(rows).set_index("method") if rows else None


def difference_lines(results, width: int = 100) -> list[str]:
    """:func:`difference_table` as terminal lines that fit ``width`` columns, one block per metric."""
    lines = []
    for metric in ("mAP", "f1"):
        rows = [(r.config.get("label", ""), r.config["vs_first"][metric]) for r in results[1:]
                if metric in r.config.get("vs_first", {})]
        if not rows:
            continue
        name = max(13, min(width - 66, max(len(label) for label, _ in rows)))
        first = shorten(results[0].config.get("label", "first"), 30)
        lines += ["" if lines else None, f"{metric} against the first configuration ({first}), paired bootstrap "
                  "over the queries:",
                  f"{'configuration':<{name}}  {metric + ' diff':>8}  {'95% interval':<20}  {'verdict':<19}  "
                  "wins/ties/losses"]
        for label, d in rows:
            verdict = "distinguishable" if d["distinguishable"] else "not distinguishable"
            interval = f"[{d['low']:+.4f}, {d['high']:+.4f}]"
            lines.append(f"{shorten(label, name):<{name}}  {d['difference']:+8.4f}  {interval:<20}  {verdict:<19}  "
                         f"{d['wins']}/{d['ties']}/{d['losses']}")
    return [line[:width] for line in lines if line is not None]


def per_class_section(result, out: Path, coarse_of: Mapping | None = None) -> list[str]:
    """``report.md`` lines for one result: mAP per query class (table and bar plot) and the
    class-to-class matrix of the top k, rolled up to superclasses when a hierarchy is known
    (``coarse_of``: fine -> coarse, e.g. a ``--hierarchy`` file, else the dataset's own, as
    CIFAR-100's ``ds.info["coarse_of"]``); the plots are written into ``out``."""
    from . import plots

    ds = result.ds
    if ds is None or ds.gnd is not None or result.per_query_ap is None or result.ranked_ids is None:
        return []
    per_class = M.per_class_means(result.per_query_ap, ds.query_labels)
    classes = list(per_class)
    frame = pd.DataFrame({"queries": [str(per_class[c][0]) for c in classes], "mAP": [per_class[c][1] for c in classes]},
                         index=pd.Index(classes, name="class")).sort_values("mAP")
    save_figure(plots.plot_per_class(list(frame.index), frame["mAP"].to_numpy(), "AP"), out / "per_class.png")
    coarse_of = coarse_of or ds.info.get("coarse_of")
    query_labels, gallery_labels, what = ds.query_labels, ds.gallery_labels, "class"
    if coarse_of:
        query_labels = np.array([coarse_of.get(str(c), str(c)) for c in query_labels])
        gallery_labels = np.array([coarse_of.get(str(c), str(c)) for c in gallery_labels])
        what = "superclass"
    names, matrix = M.topk_class_matrix(result.ranked_ids, query_labels, gallery_labels)
    save_figure(plots.plot_class_matrix(names, matrix, result.k, what), out / "class_matrix.png")
    return ["## Per class", "", f"mAP of the queries of each class, worst first ({result_labels([result], None)[0]}).",
            "", markdown_table(frame), "", "![mAP per class](per_class.png)", "",
            f"Who fills the top {result.k}: row = {what} of the query, column = {what} of a result; the diagonal "
            f"is each {what}'s precision@{result.k}.", "", f"![top-{result.k} {what} matrix](class_matrix.png)", ""]


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def _ann_or_hash_rows(results, table: pd.DataFrame) -> pd.DataFrame | None:
    """The exact and ANN / hash rows of ``table`` (exact has recall 1 against itself), or None."""
    column = f"recall@{results[0].k}_vs_exact"
    keep = []
    for result, name in zip(results, table.index):
        approximate = result.config.get("index", "Flat") != "Flat"
        others = any(key in result.config for key in ("qe", "dba", "rerank", "tta", "threshold"))
        if not others and (approximate or "exact_metrics" not in result.config):
            keep.append(name)
    rows = table.loc[keep].copy()
    if column not in rows.columns or rows[column].isna().all():
        return None
    rows[column] = rows[column].fillna(1.0)  # the exact rows
    return rows if len(rows) > 1 else None


def write_report(results, out_dir, labels: Sequence[str] | None = None, threshold_curves: Mapping | None = None,
                 grid_k: int = 5, n_best: int = 3, n_worst: int = 3, title: str | None = None,
                 coarse_of: Mapping | None = None) -> Path:
    """Write ``out_dir/report.md`` and its PNG plots; returns the Markdown file's path.

    ``results``: one :class:`~cbir_kit.pipeline.job.EvalResult` or several (methods on one
    dataset).  ``threshold_curves``: optional name -> curve dict for the F1-against-threshold
    plot (e.g. static and dynamic from the threshold module); the static curve of the first
    result is used when none is given.  The query grid shows the first result.
    """
    from . import plots

    results = list(results) if isinstance(results, (list, tuple)) else [results]
    if not results:
        raise CbirError("write_report needs at least one result")
    names = result_labels(results, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = results[0]
    table = summary_table(results, names)
    md = [f"# {title or 'Retrieval report'}: {first.dataset}", "",
          f"{first.n_queries} queries, {first.n_gallery} gallery images, k = {first.k}, "
          f"device {first.config.get('device', '?')}.", "",
          "Relevant = same label (revisitop: the ok/junk lists, Medium setting). mAP = AP over the full "
          "ranking / number of relevant items; precision, recall, F1 = macro over queries of the top-k set. "
          "Timings in seconds unless named otherwise.", "", "## Quality and speed", "", markdown_table(table), ""]
    rv = revisitop_table(results, names)
    if rv is not None:
        md += ["## Revisited Oxford/Paris protocol (x100)", "",
               "Easy: ok = easy, junk = junk + hard. Medium: ok = easy + hard. Hard: ok = hard, junk = junk + easy. "
               "Trapezoidal AP with junk removed; mP@k divides by min(k, position of the last positive).", "",
               markdown_table(rv, digits=2), ""]
    differences = difference_table(results)
    if differences is not None:
        md += ["## Differences from the first configuration", "",
               "mAP (and F1 when both were thresholded) of each configuration minus the first one's, with a "
               "paired bootstrap interval over the "
               "queries (the queries drawn with replacement, 10,000 times, seeded). An interval that contains 0 "
               "means the two cannot be told apart on these queries.", "", markdown_table(differences), ""]
    md += per_class_section(first, out, coarse_of)
    figures = [("pr_curve.png", "Precision-recall over k", lambda: plots.plot_pr_curve(results, names))]
    figures.append(("methods.png", "mAP and query latency (expansion + search + re-ranking) per method",
                    lambda: plots.plot_methods(table)))
    speed_table = _ann_or_hash_rows(results, table)
    if speed_table is not None:
        figures.append(("recall_vs_latency.png", "Recall of the exact top-k against latency (ANN / hash settings)",
                        lambda: plots.plot_recall_vs_latency(speed_table, recall=f"recall@{first.k}_vs_exact")))
    curves = dict(threshold_curves or {})
    if not curves and "over_threshold" in first.curves:
        curves = {"static": first.curves["over_threshold"]}
    if curves:
        figures.append(("f1_threshold.png", "F1 against the threshold", lambda: plots.plot_f1_vs_threshold(curves)))
    if first.ds is not None and first.ranked_ids is not None and first.per_query_ap is not None:
        figures.append(("queries.png", f"Best and worst queries ({names[0]}): green relevant, red not",
                        lambda: plots.plot_query_grid(first, n_best=n_best, n_worst=n_worst, k=grid_k)))
    md += ["## Plots", ""]
    for fname, caption, make in figures:
        save_figure(make(), out / fname)
        md += [f"### {caption}", "", f"![{caption}]({fname})", ""]
    if any(r.skipped for r in results):
        md += ["## Skipped images", ""] + [f"- {img}: {why}" for r in results for img, why in r.skipped] + [""]
    path = out / "report.md"
    write_text(path, "\n".join(md))
    return path


# --- reproductions of published tables ----------------------------------------------------

HASH_PROJECT_KS = (1, 5, 100, 250)


def hash_project_metrics(ranked_ids: np.ndarray, query_labels, gallery_labels, coarse_of,
                         ks=HASH_PROJECT_KS, exclude: np.ndarray | None = None) -> dict[str, float]:
    """The binary-hash project's mAP@k (AP@k divided by k) and mAHP@k at each k.

    ``ranked_ids`` (Q, >= max(ks)); ``coarse_of`` maps fine labels to superclasses (for
    CIFAR-100 ``dataset.info["coarse_of"]``); ``exclude[q]``: a gallery id left out of the
    ideal ordering (the query itself when it is not in its own ranking).
    """
    depth = max(ks)
    if ranked_ids.shape[1] < depth:
        raise CbirError(f"the rankings have depth {ranked_ids.shape[1]} but k = {depth} was asked for")
    ranked_ids = ranked_ids[:, :depth]
    rel = M.relevance_matrix(ranked_ids, query_labels, gallery_labels)
    gains, ideal = M.hierarchical_gains(ranked_ids, query_labels, gallery_labels, coarse_of, exclude=exclude)
    out = {f"mAP@{k}": M.map_at_k_over_k(rel, k) for k in ks}
    out.update({f"mAHP@{k}": M.mahp_at_k(gains, ideal, k) for k in ks})
    return out


def hash_project_table(methods: Mapping[str, Callable[[np.ndarray], np.ndarray]], queries: np.ndarray,
                       query_labels, gallery_labels, coarse_of, ks=HASH_PROJECT_KS,
                       inference_ms: Mapping[str, float] | None = None, warmup: int = 3) -> pd.DataFrame:
    """The binary-hash project's table: retrieval time and mAP@k / mAHP@k per method.

    ``methods``: name -> ``search(query (1, D)) -> ranked gallery ids (1, >= max(ks))``,
    e.g. ``{"Algo 2": exact_search(gallery, 250), "Algo 2 + hashes": ...}``.  Each query
    is searched on its own, as in the project, and timed with :class:`~cbir_kit.bench.harness.Bench`
    (``retrieval_ms`` = median ms per query).  ``inference_ms``: name -> feature-extraction
    ms per image, when measured.  Their protocol queries the test set against itself, so
    each query finds itself first (mAP@1 = 1).
    """
    rows = []
    queries = np.asarray(queries, np.float32)
    for name, search in methods.items():
        bench = Bench(warmup=warmup, repeats=1)
        ranked = bench.per_item("search", lambda q: np.asarray(search(q[None]))[0], list(queries))
        row = {"method": name, "inference_ms": (inference_ms or {}).get(name, np.nan),
               "retrieval_ms": bench.result()["search"].per_item_ms}
        row.update(hash_project_metrics(np.stack(ranked), query_labels, gallery_labels, coarse_of, ks))
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def exact_search(gallery: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """"Algo 2": cosine top-k over L2-normalised features (one matrix product); returns ids."""
    from ..index import ExactIndex

    index = ExactIndex("ip").fit(gallery)
    return lambda q: index.search(q, k)[1]


def threshold_f1_table(results: Mapping[str, object]) -> pd.DataFrame:
    """Static against dynamic threshold: macro precision, recall, F1 per method.

    ``results``: name -> a fitted threshold result exposing ``precision``, ``recall`` and
    ``f1`` (macro over queries), as attributes or dict keys, e.g.
    ``{"static": static_result, "dynamic": dynamic_result}``.  The dynamic threshold paper
    reports macro-F1 0.302 -> 0.3394 on ROxford Medium (SOURCES.md section 1).
    """
    rows = []
    for name, res in results.items():
        get = res.get if isinstance(res, Mapping) else lambda key, r=res: getattr(r, key, None)
        values = {key: get(key) for key in ("precision", "recall", "f1")}
        if values["f1"] is None:
            raise CbirError(f"threshold result {name!r} has no f1; pass the fitted result of a threshold method")
        rows.append({"method": name, **{k: float(v) for k, v in values.items() if v is not None}})
    return pd.DataFrame(rows).set_index("method")
