"""Wrong-but-plausible answers to the course's exercises, as students write them from the released text.

``WRONG[notebook][solution cell] = (code, test cell, what the feedback must say)``.  Each is a
mistake students make (several were found by trying the course as students would); the grader
must take that exercise's points (and only those: no answer here feeds a later exercise) and its
feedback must name the mistake: the visible test's message when a visible test catches it, else the
misconception catalogue's sentence (``notebooks/misconceptions.toml``).  ``LIBRARY`` holds one-line calls of the cbir_kit function
the exercise asks students to write; hidden tests make the library unavailable while they run.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

CATALOGUE = tomllib.loads((Path(__file__).resolve().parents[1] / "notebooks" / "misconceptions.toml").read_text())
SAYS = CATALOGUE["misconceptions"]

WRONG = {
    "01_features": {
        "l2_normalize": ('def l2_normalize(X):\n    X = np.asarray(X, dtype=np.float64)\n'
                         '    return X / np.linalg.norm(X, axis=1, keepdims=True)\n',
                         "test_l2_normalize", "an all-zero row must stay zero"),
        "gem_pool": ('def gem_pool(fmaps, p=3.0, eps=1e-6):\n    x = np.clip(np.asarray(fmaps, dtype=np.float64), 1e-6, None)\n'
                     '    return np.power(np.power(x, p).mean(axis=(-2, -1)), 1.0 / p)\n',
                     "test_gem_pool", SAYS["gem-eps-argument"]),
    },
    "02_search": {
        "knn_search": ('def knn_search(queries, gallery, k):\n    S = np.asarray(queries) @ np.asarray(gallery).T\n'
                       '    ids = np.argpartition(-S, k - 1, axis=1)[:, :k]\n'
                       '    return np.take_along_axis(S, ids, axis=1), ids\n',
                       "test_knn_search", "sorted best first"),
        "squared_l2": ('def squared_l2_distances(Q, G):\n    Q, G = np.asarray(Q, dtype=np.float64), np.asarray(G, dtype=np.float64)\n'
                       '    return (Q ** 2).sum(1)[:, None] - 2 * Q @ G.T + (G ** 2).sum(1)[None, :]\n',
                       "test_squared_l2", "clip the tiny negative values"),
        "recall_vs_exact": ('def recall_vs_exact(ann_ids, exact_ids):\n    ann_ids, exact_ids = np.asarray(ann_ids), np.asarray(exact_ids)\n'
                            '    k = exact_ids.shape[1]\n'
                            '    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) for a, e in zip(ann_ids, exact_ids)]) / k)\n',
                            "test_recall_vs_exact", SAYS["recall-counts-missing"]),
        # "more than min_score is a copy": a hit scoring exactly min_score stays
        "drop_near_duplicates": ('def drop_near_duplicates(hits, min_score=0.95):\n    kept = []\n    for hit in hits:\n'
                                 '        if hit.score > min_score:\n            continue\n'
                                 '        kept.append((len(kept) + 1, hit.path, hit.score))\n    return kept\n',
                                 "test_drop_near_duplicates", SAYS["near-dup-boundary"]),
    },
    "03_evaluation": {
        "percentile": ('def percentile_nearest_rank(values, q):\n    ordered = np.sort(np.asarray(values, dtype=np.float64))\n'
                       '    return float(ordered[max(round(q / 100 * len(ordered)), 1) - 1])\n',
                       "test_percentile", "holds 3, got 2"),
    },
    "04_hashing": {
        "ahp_for_query": ('def ahp_for_query(gains, gallery_sims, k):\n'
                          '    got = np.cumsum(np.asarray(gains, dtype=float)[:k])\n'
                          '    ideal = np.cumsum(np.asarray(gallery_sims, dtype=float)[:k])\n'
                          '    return float(np.mean(got / ideal))\n',
                          "test_ahp_for_query", SAYS["ahp-ideal-sorted"]),
    },
    "05_thresholds": {
        "dynamic_thresholds": ('def dynamic_thresholds(dist, T, w, n, mu=None):\n'
                               '    mu_rows = np.sort(np.asarray(dist, dtype=np.float64), axis=1)[:, :n].mean(axis=1)\n'
                               '    return T + w * (mu_rows - mu_rows.mean())\n',
                               "test_dynamic_thresholds", "a given mu replaces the mean"),
    },
    "06_expansion": {
        "alpha_query_expansion": ('def alpha_query_expansion(queries, gallery, n, alpha):\n'
                                  '    sims = queries @ gallery.T\n    top = np.argsort(-sims, axis=1)[:, :n]\n'
                                  '    weights = np.take_along_axis(sims, top, axis=1) ** alpha\n'
                                  '    expanded = queries + (weights[:, :, None] * gallery[top]).sum(axis=1)\n'
                                  '    return expanded / np.linalg.norm(expanded, axis=1, keepdims=True)\n',
                                  "test_alpha_query_expansion", SAYS["alpha-qe-clamp"]),
        "augment_database": ('def augment_database(gallery, n, alpha=0.0):\n    sims = gallery @ gallery.T\n'
                             '    np.fill_diagonal(sims, -np.inf)\n    top = np.argsort(-sims, axis=1)[:, :n]\n'
                             '    weights = np.maximum(np.take_along_axis(sims, top, axis=1), 0) ** alpha\n'
                             '    gallery += (weights[:, :, None] * gallery[top]).sum(axis=1)\n'
                             '    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)\n    return gallery\n',
                             "test_augment_database", SAYS["dba-modifies-input"]),
        "average_query_expansion": ('def average_query_expansion(queries, gallery, n):\n'
                                    '    top = np.argsort(-(queries @ gallery.T), axis=1)[:, :n]\n'
                                    '    expanded = gallery[top].sum(axis=1)\n'
                                    '    return expanded / np.linalg.norm(expanded, axis=1, keepdims=True)\n',
                                    "test_average_query_expansion", "normalise(q + G[2])"),
    },
    "07_reranking": {
        "jaccard_distance": ('def jaccard_distance(V_query, V_gallery):\n'
                             '    A = (np.asarray(V_query) > 0).astype(float)\n'
                             '    B = (np.asarray(V_gallery) > 0).astype(float)\n    shared = A @ B.T\n'
                             '    union = A.sum(axis=1)[:, None] + B.sum(axis=1)[None, :] - shared\n'
                             '    return 1.0 - shared / union\n',
                             "test_jaccard_distance", SAYS["jaccard-weights"]),
    },
    "08_finetuning": {
        "train_step": ('def train_step(head, optimizer, x_batch, y_batch, margin=0.1):\n    head.train()\n'
                       '    loss = batch_hard_triplet_loss(head(x_batch), y_batch, margin)\n    loss.backward()\n'
                       '    optimizer.step()\n    return float(loss)\n',
                       "test_train_step", SAYS["train-step-zero-grad"]),
        "heldout_map": ('def heldout_map(transform, q_feats, q_labels, g_feats, g_labels):\n'
                        '    q, g = np.asarray(transform(q_feats)), np.asarray(g_feats)\n'
                        '    order = np.argsort(-(q @ g.T), axis=1, kind="stable")\n'
                        '    rel = M.relevance_matrix(order, np.asarray(q_labels), np.asarray(g_labels))\n'
                        '    n_rel = (np.asarray(q_labels)[:, None] == np.asarray(g_labels)[None, :]).sum(axis=1)\n'
                        '    return float(M.mean_average_precision(rel, n_rel))\n',
                        "test_heldout_map", "transform queries *and* gallery"),
    },
    "09_assignment": {
        "grade_answer": ('def grade_answer(answer, query_labels, gallery_labels):\n'
                         '    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)\n'
                         '    rows = []\n    for qi, row in enumerate(answer):\n'
                         '        rel = gallery_labels[np.asarray(row, dtype=int)] == query_labels[qi] if len(row) else np.zeros(0, bool)\n'
                         '        n_rel = int((gallery_labels == query_labels[qi]).sum())\n'
                         '        hits = int(rel.sum())\n'
                         '        ap = float((np.cumsum(rel) / np.arange(1, len(rel) + 1))[rel].sum() / n_rel) if len(rel) else 0.0\n'
                         '        rows.append((hits / len(rel) if len(rel) else 0.0, hits / n_rel, ap))\n'
                         '    p, r, m = np.mean(rows, axis=0)\n'
                         '    return {"precision": float(p), "recall": float(r), "f1": float(2 * p * r / (p + r)) if p + r else 0.0, "mAP": float(m)}\n',
                         "test_grade_answer", "macro F1 = mean of the per-query F1"),
    },
}

LIBRARY = {
    "04_hashing": {
        "ahp_for_query": ('def ahp_for_query(gains, gallery_sims, k):\n'
                          '    return float(M.ahp_at_k(np.asarray(gains)[None], -np.sort(-np.asarray(gallery_sims))[None], k)[0])\n',
                          "test_ahp_for_query", SAYS["library-call"]),
    },
    "03_evaluation": {
        "percentile": ('from cbir_kit.bench.harness import percentile_nearest_rank as library_percentile\n\n\n'
                       'def percentile_nearest_rank(values, q):\n    return library_percentile(values, q)\n',
                       "test_percentile", SAYS["library-call"]),
    },
    "05_thresholds": {
        "threshold_prf": ('def threshold_prf(dist, relevant, T):\n    return retrieval_metrics(np.asarray(dist) < T, relevant)\n',
                          "test_threshold_prf", SAYS["library-call"]),
        "dynamic_thresholds": ('def dynamic_thresholds(dist, T, w, n, mu=None):\n'
                               '    return DynamicThreshold(T, w, n, mu=mu).thresholds(dist)[:, 0]\n',
                               "test_dynamic_thresholds", SAYS["library-call"]),
    },
    "06_expansion": {
        "alpha_query_expansion": ('def alpha_query_expansion(queries, gallery, n, alpha):\n'
                                  '    return query_expansion(queries, gallery, n=n, alpha=alpha)\n',
                                  "test_alpha_query_expansion", SAYS["library-call"]),
        "augment_database": ('def augment_database(gallery, n, alpha=0.0):\n'
                             '    return database_augmentation(gallery, n=n, alpha=alpha)\n',
                             "test_augment_database", SAYS["library-call"]),
        "average_query_expansion": ('def average_query_expansion(queries, gallery, n):\n'
                                    '    return query_expansion(queries, gallery, n=n, alpha=0.0)\n',
                                    "test_average_query_expansion", SAYS["library-call"]),
    },
    "07_reranking": {
        "k_reciprocal_set": ('from cbir_kit.rerank import reciprocal_neighbours\n\n\n'
                             'def k_reciprocal_set(ranks, i, k):\n'
                             '    return np.sort(reciprocal_neighbours(np.asarray(ranks), i, k))\n',
                             "test_k_reciprocal_set", SAYS["library-call"]),
    },
}
