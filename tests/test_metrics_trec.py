"""Every metric under both rules for queries with no relevant item, ties included, against pytrec_eval.

trec_eval ranks by score, high first, and breaks ties by document name, the later name first; the
gallery ids are named so that this is cbir_kit's tie rule (the lower gallery id first).  A query with no
relevant item is given to trec_eval with all-zero judgements, which it scores 0 in every measure
(the ``zero`` rule); leaving it out of the qrels is the ``skip`` rule.
"""
from __future__ import annotations

import numpy as np
import pytest

from cbir_kit.evaluation import metrics as M

pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec-eval-terrier is in the test extra")

TREC = {"mAP": "map", "P@1": "P_1", "P@5": "P_5", "P@10": "P_10", "R@10": "recall_10", "MRR": "recip_rank",
        "R-precision": "Rprec", "nDCG@10": "ndcg_cut_10"}


def _case(seed: int, n_q: int = 40, n_g: int = 80):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 12, size=(n_q, n_g)).astype(float)       # many ties
    labels_g = rng.integers(0, 6, n_g)
    labels_q = rng.integers(0, 8, n_q)                                  # classes 6 and 7: no relevant item
    return scores, labels_q, labels_g


def _ours(scores, labels_q, labels_g, rule: str) -> dict[str, float]:
    order = np.argsort(-scores, axis=1, kind="stable")                 # ties: the lower gallery id first
    rel = M.relevance_matrix(order, labels_q, labels_g)
    n_relevant = (labels_q[:, None] == labels_g[None, :]).sum(axis=1)
    out = M.topk_metrics(rel, n_relevant, 10, rule)
    out.update({name: M.query_mean(v, n_relevant, rule) for name, v in M.ranking_extras(rel, n_relevant, 10).items()})
    return out


def _trec(scores, labels_q, labels_g, rule: str) -> dict[str, float]:
    n_g = scores.shape[1]
    doc = [f"d{n_g - 1 - i:05d}" for i in range(n_g)]                 # later name first = lower id first
    run = {f"q{q}": {doc[i]: float(scores[q, i]) for i in range(n_g)} for q in range(len(scores))}
    qrels = {}
    for q, label in enumerate(labels_q):
        judged = {doc[i]: int(labels_g[i] == label) for i in range(n_g)}
        if any(judged.values()) or rule == "zero":
            qrels[f"q{q}"] = judged
    per_query = pytrec_eval.RelevanceEvaluator(qrels, set(TREC.values())).evaluate(run)
    n_queries = len(per_query) if rule == "skip" else len(scores)
    return {ours: sum(m[trec] for m in per_query.values()) / n_queries for ours, trec in TREC.items()}


@pytest.mark.parametrize("rule", ["skip", "zero"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_equals_trec_eval_under_both_rules_with_ties(seed, rule):
    scores, labels_q, labels_g = _case(seed)
    assert (~np.isin(labels_q, labels_g)).sum() > 0                    # the case has unanswerable queries
    ours, trec = _ours(scores, labels_q, labels_g, rule), _trec(scores, labels_q, labels_g, rule)
    for name in TREC:
        assert ours[name] == pytest.approx(trec[name], abs=1e-4), (name, rule)


def test_the_rules_differ_only_by_the_share_of_unanswerable_queries():
    scores, labels_q, labels_g = _case(5)
    skip, zero = _ours(scores, labels_q, labels_g, "skip"), _ours(scores, labels_q, labels_g, "zero")
    answerable = np.isin(labels_q, labels_g).mean()
    for name in TREC:
        assert zero[name] == pytest.approx(skip[name] * answerable)
