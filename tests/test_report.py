"""Report, plots and `cbir compare` end to end on the demo dataset (features from the session cache)."""
from __future__ import annotations

import json
import re

import matplotlib
import numpy as np
import pytest

from cbir_kit.evaluation import metrics as M
from cbir_kit.report import document, plots
from cbir_kit.cli import main
from cbir_kit.pipeline.comparison import compare, config_keys, parse_config
from cbir_kit.errors import CbirError
from cbir_kit.pipeline.job import evaluate


@pytest.fixture(scope="module")
def demo_result(demo_features):
    return evaluate("demo", k=10, progress=False)


def test_plots_return_figures(demo_result):
    for fig in (plots.plot_pr_curve(demo_result), plots.plot_query_grid(demo_result, n_best=2, n_worst=2, k=4),
                plots.plot_methods(document.summary_table([demo_result])),
                plots.plot_f1_vs_threshold({"static": demo_result.curves["over_threshold"]}, chosen={"static": 0.5})):
        assert isinstance(fig, matplotlib.figure.Figure)
        matplotlib.pyplot.close(fig)


def test_query_grid_colours_follow_relevance(demo_result):
    best, worst = plots.pick_queries(demo_result.per_query_ap, 3, 3)
    ap = demo_result.per_query_ap
    assert ap[best[0]] == np.nanmax(ap) and ap[worst[0]] == np.nanmin(ap) and not set(best) & set(worst)
    q = worst[0]
    ids = demo_result.ranked_ids[q, :5]
    ds = demo_result.ds
    expect = [plots.RELEVANT if ds.gallery_labels[i] == ds.query_labels[q] else plots.NOT_RELEVANT for i in ids]
    assert plots.relevance_colours(demo_result, q, ids) == expect


def test_cli_evaluate_report_writes_markdown_and_pngs(demo_features, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["evaluate", "--no-progress", "--report", str(out), "--json", str(tmp_path / "r.json")]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["class_matrix.png", "f1_threshold.png", "methods.png", "per_class.png", "pr_curve.png",
                     "queries.png", "report.md"]
    text = (out / "report.md").read_text()
    for name in files[:-1]:
        assert f"]({name})" in text
    assert "| efficientnet_lite0 |" in text and "hit_rate@10" in text
    assert (out / "queries.png").stat().st_size > 10_000


def test_parse_config():
    assert parse_config("exact") == {} and parse_config("") == {}
    assert parse_config("hash=itq:64,shortlist=200") == {"hash": "itq:64", "shortlist": 200}
    assert parse_config("index=HNSW32, tta_gallery=true") == {"index": "HNSW32", "tta_gallery": True}
    assert parse_config("index=IVF64,Flat,nprobe=8") == {"index": "IVF64,Flat", "nprobe": 8}
    assert parse_config("ef-search=64") == {"ef_search": 64}
    with pytest.raises(CbirError, match="unknown key 'colour'"):
        parse_config("colour=blue")
    with pytest.raises(CbirError, match="not key=value"):
        parse_config("HNSW32")
    with pytest.raises(CbirError, match="given twice"):
        parse_config("index=a,index=b")


def test_config_keys_are_the_method_flags_and_evaluate_keywords():
    import dataclasses
    import inspect

    from cbir_kit.pipeline.stages import Methods

    keys = set(config_keys())
    own = set(inspect.signature(evaluate).parameters) - {"methods"}
    assert keys == {f.name for f in dataclasses.fields(Methods)} | (own & keys)
    assert "head" in keys and "model" not in keys and "dataset" not in keys and "methods" not in keys
    with pytest.raises(CbirError, match="dataset, model and k"):
        parse_config("model=resnet18")


def test_compare_runs_methods_beside_exact(demo_features):
    results = compare(["exact", "index=IVF8,Flat,nprobe=8", "hash=itq:16,shortlist=20"], dataset="demo", k=5,
                      progress=False)
    exact, ivf, hashed = results
    assert exact.config.get("exact_metrics") is None
    assert ivf.config["exact_metrics"]["mAP"] == pytest.approx(exact.metrics["mAP"])
    assert hashed.config["exact_metrics"]["mAP"] == pytest.approx(exact.metrics["mAP"])
    # nprobe = number of lists: IVF scans everything, so it returns the exact ranking's top 5
    assert ivf.metrics["P@5"] == pytest.approx(exact.metrics["P@5"])
    assert ivf.metrics["recall@5_vs_exact"] == pytest.approx(1.0)
    assert hashed.config["hash"] == {"codes": "itq:16", "shortlist": 20, "default_shortlist": False}
    assert 0 < hashed.metrics["shortlist_recall@5"] <= 1
    with pytest.raises(CbirError, match="shortlist= needs hash="):  # checked before any run
        compare(["exact", "shortlist=20"], dataset="demo")


def test_report_plots_ann_recall_against_query_latency(demo_features, tmp_path):
    results = compare(["exact", "index=HNSW32", "rerank=kreciprocal"], dataset="demo", k=5, progress=False)
    table = document.summary_table(results)
    exact, _, rerank = results
    # a query's latency includes its re-ranking, not only the index search
    assert table.loc["exact", "query_ms_per_query"] == exact.timings["search_ms_per_query"]
    expected = rerank.timings["search_ms_per_query"] + 1000 * rerank.timings["kreciprocal_s"] / rerank.n_queries
    assert table.loc["rerank=kreciprocal", "query_ms_per_query"] == pytest.approx(expected)
    rows = document._ann_or_hash_rows(results, table)
    assert list(rows.index) == ["exact", "index=HNSW32"]  # re-ranking is no ANN setting
    assert rows.loc["exact", "recall@5_vs_exact"] == 1.0
    path = document.write_report(results, tmp_path / "rep")
    assert (tmp_path / "rep" / "recall_vs_latency.png").stat().st_size > 10_000
    assert "recall_vs_latency.png" in path.read_text()


def test_compare_runs_each_config_and_reports(demo_features, tmp_path):
    results = compare(["exact", "exact"], dataset="demo", labels=["a", "b"], k=5, progress=False)
    table = document.summary_table(results)
    assert list(table.index) == ["a", "b"]
    assert table.loc["b", "cache_hit"]  # features extracted once, then loaded
    assert table.loc["a", "mAP"] == pytest.approx(table.loc["b", "mAP"])
    path = document.write_report(results, tmp_path / "cmp")
    assert "| a |" in path.read_text() and "| b |" in path.read_text()
    with pytest.raises(CbirError, match="unknown key"):
        compare(["exact", "nonsense=1"], dataset="demo")


def test_cli_compare_prints_one_table(demo_features, tmp_path, capsys):
    assert main(["compare", "--no-progress", "--configs", "exact", "--k", "5", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "ms/query" in out
    assert json.loads((tmp_path / "c.json").read_text())["runs"][0]["config"]["label"] == "exact"
    assert main(["compare", "--configs", "bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err


TEN_CONFIGS = ["exact", "index=HNSW32", "index=IVF8,Flat,nprobe=8", "index=IVF8,Flat,nprobe=2",
               "hash=itq:16,shortlist=20", "hash=lsh:16,shortlist=20", "rerank=kreciprocal", "qe=aqe:5", "dba=3",
               "threshold=static,calibration_fraction=0.4,index=IVF8,Flat,nprobe=3"]


def test_cli_compare_of_ten_configurations_fits_100_columns_and_warns_once(demo_features, capsys, one_faiss_thread):
    assert main(["compare", "--no-progress", "--k", "500", "--configs", *TEN_CONFIGS]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split() == ["method", "mAP", "P@10", "recall", "F1", "ms/query"]  # configurations are rows
    assert [line.split()[0] for line in lines[header + 1:header + 10]] == TEN_CONFIGS[:9]
    assert lines[header + 10].startswith("threshold=static,") and lines[header + 10].split()[0].endswith("...")
    n_gallery = demo_features[2].n_gallery
    warning = f"cbir compare: warning: --k 500 is larger than the gallery ({n_gallery} images); using {n_gallery}"
    assert captured.err.count(warning) == 1  # once, not once per configuration


def test_cli_compare_names_skipped_images_before_the_table(tmp_path, capsys):
    for cls, colour in (("red", (200, 30, 30)), ("green", (30, 200, 30))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            matplotlib.pyplot.imsave(tmp_path / cls / f"{i}.png", np.full((24, 24, 3), colour, np.uint8))
    (tmp_path / "red" / "notes.jpg").write_text("not a picture")
    assert main(["compare", "--no-progress", "--device", "cpu", "--dataset", f"folder:{tmp_path}",
                 "--configs", "exact", "dba=1"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped 1 image(s)") == 1 and out.count("notes.jpg") == 1
    assert out.index("notes.jpg") < out.index("method ")


def _plot_texts(fig) -> list[str]:
    return [text for ax in fig.axes for text in (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) if text]


def test_plot_labels_are_words_with_units_not_column_keys(demo_features):
    results = compare(["exact", "index=HNSW32"], dataset="demo", k=5, progress=False)
    table = document.summary_table(results)
    figs = [plots.plot_methods(table), plots.plot_pr_curve(results),
            plots.plot_recall_vs_latency(document._ann_or_hash_rows(results, table), recall="recall@5_vs_exact"),
            plots.plot_f1_vs_threshold({"static": results[0].curves["over_threshold"]})]
    texts = [text for fig in figs for text in _plot_texts(fig)]
    for fig in figs:
        matplotlib.pyplot.close(fig)
    assert not [t for t in texts if re.search(r"\w_\w", t)]  # no query_ms_per_query, recall@5_vs_exact ...
    assert "query time (ms per query)" in texts
    assert plots.column_words("recall@5_vs_exact") == "share of the exact top-5 found"
    assert plots.column_words("kreciprocal_s") == "kreciprocal (s)"


def test_query_grid_titles_name_the_class_of_the_query_and_the_rank_and_class_of_each_result(demo_result):
    k = 3
    fig = plots.plot_query_grid(demo_result, n_best=1, n_worst=1, k=k)
    titles = [ax.get_title() for ax in fig.axes]
    matplotlib.pyplot.close(fig)
    ds = demo_result.ds
    best, worst = plots.pick_queries(demo_result.per_query_ap, 1, 1)
    for row, (q, kind) in enumerate([(best[0], "best"), (worst[0], "worst")]):
        assert titles[row * (k + 1)] == f"query: {ds.query_labels[q]}\n{kind}, AP {demo_result.per_query_ap[q]:.2f}"
        for rank, gid in enumerate(demo_result.ranked_ids[q, :k], start=1):
            assert titles[row * (k + 1) + rank] == f"rank {rank}: {ds.gallery_labels[gid]}"


def test_hash_project_table_worked_example():
    # 4 gallery items of fine classes 0 0 1 2 (superclasses 0 0 0 1); queries = items 0 and 3
    gallery = np.array([[1, 0], [0.9, 0.1], [0.6, 0.8], [0, 1]], np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    g_labels = np.array([0, 0, 1, 2])
    coarse = np.array([0, 0, 1])  # fine label -> superclass
    queries = gallery[[0, 3]]
    table = document.hash_project_table({"Algo 2": document.exact_search(gallery, 2)}, queries, np.array([0, 2]),
                                      g_labels, coarse, ks=(1, 2))
    # query 0 ranks [0, 1]: both relevant -> AP@2/2 = (1 + 1) / 2 = 1; query 3 ranks [3, 2]: (1) / 2
    assert table.loc["Algo 2", "mAP@1"] == pytest.approx(1.0)
    assert table.loc["Algo 2", "mAP@2"] == pytest.approx((1.0 + 0.5) / 2)
    # query 3 (class 2, superclass 1): gains [1, 0] (item 2 is class 1, superclass 0); ideal [1, 0]
    # -> HP@1 = 1, HP@2 = 1/1 -> AHP@2 = 1; query 0: gains [1, 1], ideal [1, 1] -> 1
    assert table.loc["Algo 2", "mAHP@2"] == pytest.approx(1.0)
    assert table.loc["Algo 2", "retrieval_ms"] > 0


def test_threshold_f1_table():
    table = document.threshold_f1_table({"static": {"precision": 0.3, "recall": 0.4, "f1": 0.302},
                                       "dynamic": {"precision": 0.35, "recall": 0.4, "f1": 0.3394}})
    assert table.loc["dynamic", "f1"] == pytest.approx(0.3394)
    with pytest.raises(CbirError, match="has no f1"):
        document.threshold_f1_table({"x": object()})


def test_per_class_means_and_the_topk_class_matrix_against_direct_counts(demo_result):
    import pandas as pd

    ds = demo_result.ds
    per_class = M.per_class_means(demo_result.per_query_ap, ds.query_labels)
    grouped = pd.Series(demo_result.per_query_ap).groupby(np.asarray(ds.query_labels)).agg(["count", "mean"])
    assert {c: (int(n), pytest.approx(m)) for c, (n, m) in grouped.iterrows()} == per_class
    classes, matrix = M.topk_class_matrix(demo_result.ranked_ids, ds.query_labels, ds.gallery_labels)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    rel = M.relevance_matrix(demo_result.ranked_ids, ds.query_labels, ds.gallery_labels)
    for i, c in enumerate(classes):        # the diagonal is each class's precision@k
        assert matrix[i, i] == pytest.approx(rel[np.asarray(ds.query_labels) == c].mean())
    coarse = {c: "first half" if i < len(classes) // 2 else "second half" for i, c in enumerate(classes)}
    rolled, coarse_matrix = M.topk_class_matrix(demo_result.ranked_ids, [coarse[c] for c in ds.query_labels],
                                                [coarse[c] for c in ds.gallery_labels])
    assert rolled == ["first half", "second half"] and np.allclose(coarse_matrix.sum(axis=1), 1.0)


def test_per_class_section_rolls_the_matrix_up_to_superclasses_when_the_dataset_has_them(demo_result, tmp_path):
    import copy

    result = copy.copy(demo_result)
    result.ds = copy.copy(demo_result.ds)
    classes = sorted(set(result.ds.query_labels))
    result.ds.info = {**result.ds.info, "coarse_of": {c: c[0] for c in classes}}   # superclass = first letter
    lines = document.per_class_section(result, tmp_path)
    assert "## Per class" in lines and any("row = superclass of the query" in line for line in lines)
    assert (tmp_path / "class_matrix.png").stat().st_size > 5_000 and (tmp_path / "per_class.png").exists()


def test_evaluate_report_rolls_the_class_matrix_up_with_a_hierarchy_file(demo_features, tmp_path):
    hierarchy = tmp_path / "hierarchy.csv"
    classes = sorted(set(demo_features[2].query_labels))
    hierarchy.write_text("fine,coarse\n" + "".join(f"{c},{'first' if i % 2 else 'second'}\n" for i, c in enumerate(classes)))
    out = tmp_path / "rep"
    assert main(["evaluate", "--no-progress", "--report", str(out), "--hierarchy", str(hierarchy)]) == 0
    assert "row = superclass of the query" in (out / "report.md").read_text()
    assert main(["evaluate", "--no-progress", "--hierarchy", str(tmp_path / "none.csv")]) == 2
