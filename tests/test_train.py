"""Fine-tuning: heads, losses, sampling, hashing retrieval, head files, and the Corel-1K protocol."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import pairwise_distances

from cbir_kit.datasets import Dataset
from cbir_kit.errors import CbirError
from cbir_kit.train import (HashHead, HeadConfig, ProjectionHead, TrainedHead, algo2_hash_search, algo2_search,
                            class_targets, cosine_target_loss, fit_head, unpacked_hamming_distances,
                            hamming_recall_at_k, leave_one_out_shortlist_recall, load_head, make_loss, pk_batches,
                            save_head, shortlist_recall_at_k, stratified_split)
from cbir_kit.train.fit import _hash_start, leave_one_out_map, warmup_cosine
from cbir_kit.train.losses import neighbour_code_loss, quantisation_loss

COREL_HIERARCHY = {"beaches": "landscape", "mountains_and_snow": "landscape", "flowers": "nature",
                   "elephants": "animals", "horses": "animals", "dinosaurs": "animals", "bus": "man-made",
                   "monuments": "man-made", "foods": "man-made", "people_and_villages_in_Africa": "people"}


def clustered(n_classes=6, per_class=20, dim=32, spread=1.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


# --- heads and losses ---------------------------------------------------------------

def test_projection_head_is_linear_bn_dropout_l2():
    torch.manual_seed(0)
    head = ProjectionHead(16, 8, dropout=0.1).eval()
    x = torch.randn(5, 16)
    bn = head.bn
    z = (x @ head.linear.weight.T + head.linear.bias - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    z = z * bn.weight + bn.bias
    expected = z / z.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), expected)


def test_hash_head_codes_threshold_sigmoid_at_half():
    torch.manual_seed(0)
    head = HashHead(16, n_bits=48, embed_dim=10)
    x = torch.randn(4, 16)
    h, e = head(x)
    assert h.shape == (4, 48) and e.shape == (4, 10)
    assert torch.equal(head.codes(x), torch.sigmoid(x @ head.hash.weight.T + head.hash.bias) > 0.5)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))


def test_circle_loss_matches_a_transcription_of_the_paper():
    """Sun et al. 2020, eq. (circle loss) with m = 0.4, gamma = 80, averaged over anchors."""
    torch.manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(8, 6), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, _ = make_loss("circle")
    m, gamma = 0.4, 80.0
    s = emb @ emb.T
    per_anchor = []
    for i in range(8):
        pos = [j for j in range(8) if j != i and y[j] == y[i]]
        neg = [j for j in range(8) if y[j] != y[i]]
        sp, sn = s[i, pos], s[i, neg]
        ap, an = torch.clamp(1 + m - sp, min=0), torch.clamp(sn + m, min=0)
        lp = torch.logsumexp(-gamma * ap * (sp - (1 - m)), 0)
        ln = torch.logsumexp(gamma * an * (sn - m), 0)
        per_anchor.append(torch.nn.functional.softplus(lp + ln))
    torch.testing.assert_close(loss(emb, y), torch.stack(per_anchor).mean(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["circle", "triplet", "multi_similarity", "contrastive"])
def test_every_loss_and_miner_runs(name):
    loss, miner = make_loss(name)
    emb = torch.nn.functional.normalize(torch.randn(12, 5, requires_grad=True), dim=1)
    y = torch.arange(12) // 3
    value = loss(emb, y, miner(emb, y))
    value.backward()
    assert torch.isfinite(value)


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(CbirError, match="loss='arcface' is not one of circle"):
        make_loss("arcface")


def test_class_targets_follow_the_hierarchy():
    t = class_targets(["a", "b", "c"], {"a": "x", "b": "x", "c": "y"})
    assert t.shape == (3, 5)
    sim = t @ t.T
    np.testing.assert_allclose(sim, [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], atol=1e-6)
    np.testing.assert_array_equal(class_targets(["a", "b"]), np.eye(2))
    with pytest.raises(CbirError, match="no coarse class for c"):
        class_targets(["a", "c"], {"a": "x"})


def test_cosine_target_loss_worked_example():
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = torch.tensor([[1.0, 0.0], [1.0, 1.0]]) / torch.tensor([[1.0], [math.sqrt(2)]])
    # cos = 1 for the first, 1/sqrt(2) for the second: L = ((1 - 1) + (1 - 0.7071)) / 2
    assert float(cosine_target_loss(emb, torch.tensor([0, 1]), targets)) == pytest.approx((1 - 2 ** -0.5) / 2)


def test_neighbour_code_loss_matches_a_direct_transcription():
    """p_ij = softmax_j((cos(x_i, x_j) + beta [y_i = y_j]) / tau_f), q_ij = softmax_j(u_i . u_j / tau_h), j != i."""
    torch.manual_seed(3)
    x, h = torch.randn(6, 5), torch.sigmoid(torch.randn(6, 8))
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    anchors = [1, 4]
    beta, tf, th = 0.3, 0.1, 2.0
    mask = torch.tensor(anchors)[:, None] == torch.arange(6)[None, :]
    got = neighbour_code_loss(h[anchors], h, x[anchors], x, y[anchors], y, mask, beta, tf, th)
    total = 0.0
    for i in anchors:
        others = [j for j in range(6) if j != i]
        cos = torch.stack([torch.dot(x[i], x[j]) / (x[i].norm() * x[j].norm()) + beta * float(y[i] == y[j])
                           for j in others])
        dot = torch.stack([torch.dot(2 * h[i] - 1, 2 * h[j] - 1) for j in others])
        p = torch.exp(cos / tf) / torch.exp(cos / tf).sum()
        q = torch.exp(dot / th) / torch.exp(dot / th).sum()
        total = total - (p * torch.log(q)).sum()
    torch.testing.assert_close(got, total / len(anchors))


def test_quantisation_loss_worked_example():
    # 1 - (2h - 1)^2 = 0, 0, 1, 0.75 for h = 0, 1, 0.5, 0.25
    assert float(quantisation_loss(torch.tensor([[0.0, 1.0], [0.5, 0.25]]))) == pytest.approx(1.75 / 4)


def test_hash_head_starts_at_the_itq_codes():
    from cbir_kit.index.hashing import ITQHasher

    x, _ = clustered(4, 30, 24)
    head = HashHead(24, n_bits=16, embed_dim=4)
    cfg = HeadConfig(kind="hash", n_bits=16, seed=2)
    _hash_start(head, torch.as_tensor(x), cfg)
    itq = ITQHasher(16, seed=2).fit(x)
    codes = head.codes(torch.as_tensor(x)).numpy().astype(np.uint8)
    np.testing.assert_array_equal(codes, itq.transform_bits(x))
    with pytest.raises(CbirError, match="multiple of 8"):
        _hash_start(HashHead(24, 12, 4), torch.as_tensor(x), HeadConfig(kind="hash", n_bits=12))


def test_shortlist_recalls_match_brute_force():
    rng = np.random.default_rng(4)
    feats, codes = rng.normal(size=(40, 6)), rng.integers(0, 2, (40, 16))
    rows = np.array([3, 17, 25])
    k = 3
    found = []
    for r in rows:
        others = [j for j in range(40) if j != r]
        dist = (codes[r] != codes).sum(axis=1)
        cos = feats @ feats[r] / (np.linalg.norm(feats, axis=1) * np.linalg.norm(feats[r]))
        shortlist = sorted(others, key=lambda j: (dist[j], j))[:2 * k]
        exact = sorted(others, key=lambda j: (-cos[j], j))[:k]
        found.append(len(set(shortlist) & set(exact)) / k)
    assert leave_one_out_shortlist_recall(codes, feats, rows, k=k) == pytest.approx(np.mean(found))
    # query/gallery form: the same recall with the queries outside the gallery
    gal = np.setdiff1d(np.arange(40), rows)
    expected = []
    for r in rows:
        dist = (codes[r] != codes[gal]).sum(axis=1)
        cos = feats[gal] @ feats[r]
        cos = cos / (np.linalg.norm(feats[gal], axis=1) * np.linalg.norm(feats[r]))
        shortlist = sorted(range(len(gal)), key=lambda j: (dist[j], j))[:2 * k]
        exact = sorted(range(len(gal)), key=lambda j: (-cos[j], j))[:k]
        expected.append(len(set(shortlist) & set(exact)) / k)
    got = shortlist_recall_at_k(codes[rows], codes[gal], feats[rows], feats[gal], k=k)
    assert got == pytest.approx(np.mean(expected))


# --- data, schedule -----------------------------------------------------------------

def test_stratified_split_is_per_class_disjoint_and_seeded():
    y = np.repeat(np.arange(4), [10, 10, 7, 2])
    a, b = stratified_split(y, 0.5, seed=3)
    assert set(a).isdisjoint(b) and len(a) + len(b) == len(y)
    assert [int((y[a] == c).sum()) for c in range(4)] == [5, 5, 4, 1]
    np.testing.assert_array_equal(a, stratified_split(y, 0.5, seed=3)[0])
    assert not np.array_equal(a, stratified_split(y, 0.5, seed=4)[0])


def test_pk_batches_hold_p_classes_of_k_items_and_are_seeded():
    y = np.repeat(np.arange(10), 9)
    batches = pk_batches(y, p=4, k=3, n_items=90, seed=7)
    assert len(batches) == 90 // 12
    for idx in batches:
        classes, counts = np.unique(y[idx], return_counts=True)
        assert len(classes) == 4 and (counts == 3).all()
    again = pk_batches(y, p=4, k=3, n_items=90, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_warmup_cosine_schedule_values():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_leave_one_out_map_matches_a_direct_computation():
    x, y = clustered(3, 5, 8, spread=2.0)
    rows = np.array([0, 6, 12])
    got = leave_one_out_map(x[rows], y[rows], x, y, rows)
    aps = []
    for r in rows:
        sim = x @ x[r]
        order = [j for j in np.argsort(-sim, kind="stable") if j != r]
        rel = y[order] == y[r]
        aps.append(np.sum(np.cumsum(rel)[rel] / (np.flatnonzero(rel) + 1)) / rel.sum())
    assert got == pytest.approx(np.mean(aps))


# --- training -----------------------------------------------------------------------

def test_fit_head_improves_validation_map_and_is_deterministic():
    x, y = clustered(6, 24, 32)
    tr, va = stratified_split(y, 0.75, seed=0)
    cfg = HeadConfig(out_dim=16, epochs=40, lr=3e-3, p=6, k=4, patience=40, seed=5)
    state = torch.random.get_rng_state()
    first = fit_head(x[tr], y[tr], x[va], y[va], cfg, progress=False)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    second = fit_head(x[tr], y[tr], x[va], y[va], cfg, progress=False)
    for (ka, a), (kb, b) in zip(first.head.state_dict().items(), second.head.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    frozen = leave_one_out_map(x[va], y[va], np.r_[x[tr], x[va]], np.r_[y[tr], y[va]],
                               np.arange(len(tr), len(tr) + len(va)))
    assert first.best_val_map > frozen
    assert first.history["val_mAP"][first.best_epoch - 1] == first.best_val_map


def test_fit_hash_head_needs_targets_and_trains():
    x, y = clustered(4, 20, 24)
    tr, va = stratified_split(y, 0.75, seed=0)
    with pytest.raises(CbirError, match="targets"):
        fit_head(x[tr], y[tr], x[va], y[va], HeadConfig(kind="hash", epochs=1), progress=False)
    res = fit_head(x[tr], y[tr], x[va], y[va], HeadConfig(kind="hash", n_bits=16, epochs=4, p=4),
                   targets=class_targets(range(4)), progress=False)
    assert isinstance(res.head, HashHead) and len(res.history["loss"]) >= 1


# --- hash retrieval -----------------------------------------------------------------

def test_hamming_distances_match_sklearn():
    rng = np.random.default_rng(0)
    q, g = rng.integers(0, 2, (7, 48)), rng.integers(0, 2, (11, 48))
    expected = np.rint(pairwise_distances(q.astype(bool), g.astype(bool), metric="hamming") * 48)
    np.testing.assert_array_equal(unpacked_hamming_distances(q, g), expected)


def test_algo2_and_algo2_with_hashes_match_brute_force():
    rng = np.random.default_rng(1)
    qe, ge = rng.normal(size=(5, 6)), rng.normal(size=(30, 6))
    qc, gc = rng.integers(0, 2, (5, 12)), rng.integers(0, 2, (30, 12))
    _, ids = algo2_search(qe, ge, 4)
    cos = (qe / np.linalg.norm(qe, axis=1, keepdims=True)) @ (ge / np.linalg.norm(ge, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(ids, np.argsort(-cos, axis=1, kind="stable")[:, :4])
    _, ids = algo2_hash_search(qc, gc, qe, ge, k=4)
    for i in range(5):
        dist = (qc[i] != gc).sum(axis=1)
        shortlist = sorted(range(30), key=lambda j: (dist[j], j))[:8]
        expected = sorted(shortlist, key=lambda j: (-cos[i, j], j))[:4]
        assert list(ids[i]) == expected
    with pytest.raises(CbirError, match="shortlist"):
        algo2_hash_search(qc, gc, qe, ge, k=4, shortlist=3)


def test_hamming_recall_is_the_average_over_tie_breaking_orders():
    """Worked example: all six gallery codes tie; R@2 averaged over every order = 2/6."""
    import itertools

    q = np.zeros((1, 4), int)
    g = np.array([[1, 0, 0, 0]] * 6)
    gl = np.array([0, 0, 1, 1, 1, 1])
    orders = list(itertools.permutations(range(6)))
    brute = np.mean([(gl[list(o[:2])] == 0).sum() / 2 for o in orders])
    assert hamming_recall_at_k(q, g, np.array([0]), gl, k=2) == pytest.approx(brute) == pytest.approx(1 / 3)


# --- head files and evaluation ------------------------------------------------------

class Ref:
    def __init__(self, key):
        self.cache_key = key
        self.name = key


def test_head_file_round_trip_and_held_out_evaluation(tmp_path):
    torch.manual_seed(0)
    head = ProjectionHead(8, 4).eval()
    base = {"model": "efficientnet_lite0", "dim": 8}
    path = save_head(tmp_path / "h.pt", head, base, {"a": 1}, {"mAP": 0.5},
                     {"trained_fingerprints": ["g1", "g2"]})
    th = load_head(path)
    x = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    np.testing.assert_allclose(th.apply(x), head(torch.as_tensor(x)).detach().numpy(), rtol=1e-6)
    ds = Dataset("toy", [Ref("q1"), Ref("g2")], [Ref(f"g{i}") for i in range(5)],
                 np.array([0, 1]), np.array([0, 0, 1, 1, 1]))
    ds2, q, g, info = th.prepare_evaluation("efficientnet_lite0", ds, x[:2], x[:5])
    assert (ds2.n_queries, ds2.n_gallery, q.shape, g.shape) == (1, 3, (1, 4), (3, 4))
    assert info["dropped_gallery"] == 2 and info["dropped_queries"] == 1
    with pytest.raises(CbirError, match="model='efficientnet_lite0'"):
        th.check_base("resnet18")
    with pytest.raises(CbirError, match="expects 8-d"):
        th.prepare_evaluation("efficientnet_lite0", ds, x[:2, :4], x[:5, :4])
    with pytest.raises(CbirError, match="only hash heads"):
        th.codes(x)
    (tmp_path / "bad.pt").write_bytes(b"not a head")
    with pytest.raises(CbirError, match="not a cbir_kit head file"):
        load_head(tmp_path / "bad.pt")
    with pytest.raises(CbirError, match="does not exist"):
        load_head(tmp_path / "missing.pt")
    assert isinstance(th, TrainedHead) and not list(tmp_path.glob(".*tmp"))


# --- Corel-1K: the checks of the issue ------------------------------------------------

@pytest.mark.shared_data
def test_corel_head_beats_frozen_and_evaluate_reproduces_it(corel_features, corel_csv, tmp_path):
    from cbir_kit.cli import main

    out, report = tmp_path / "head.pt", tmp_path / "train.json"
    assert main(["train", "--dataset", f"csv:{corel_csv}", "--device", "cpu", "--out", str(out),
                 "--json", str(report), "--epochs", "15", "--no-progress"]) == 0
    result = json.loads(report.read_text())
    frozen, trained = result["metrics"]["frozen"]["mAP"], result["metrics"]["head"]["mAP"]
    assert trained > frozen + 0.03
    assert result["protocol"]["n_test_gallery"] == 450 and result["protocol"]["n_test_queries"] == 100
    assert (tmp_path / "head.png").stat().st_size > 0
    evaluated = tmp_path / "eval.json"
    assert main(["evaluate", "--dataset", f"csv:{corel_csv}", "--device", "cpu", "--head", str(out),
                 "--json", str(evaluated), "--no-progress"]) == 0
    ev = json.loads(evaluated.read_text())
    assert ev["n_gallery"] == 450 and ev["n_queries"] == 100
    assert ev["metrics"]["mAP"] == pytest.approx(trained, abs=1e-6)


@pytest.mark.shared_data
def test_corel_learned_48_bit_hash_against_itq(corel_features, corel_csv, tmp_path):
    """Learned 48-bit codes vs ITQ (48 bits, fitted on the same training images) on the same test part.

    Measured (default config, 100 queries x 450 held-out gallery images), seeds 0 / 1 / 2:
    shortlist recall@10 of Algo 2's top 10, learned 0.736 / 0.744 / 0.738 vs ITQ 0.733 / 0.725 / 0.713
    (learned ahead at all 5 seeds tried, mean +0.023); of the frozen features' top 10 a tie,
    learned 0.795 / 0.783 / 0.804 vs ITQ 0.789 / 0.803 / 0.787.  Hamming R@10 by label, learned
    0.2044 +- 0.0015 vs ITQ 0.1998 +- 0.0009.  One seed's margins are within a query's worth of
    noise, so the wins are asserted on the mean over three seeds and the tie is held to 0.03.
    """
    from cbir_kit.train import train

    runs = [train(f"csv:{corel_csv}", config=HeadConfig(kind="hash", n_bits=48, seed=seed),
                  out=tmp_path / f"hash{seed}.pt", plot=False, hierarchy=COREL_HIERARCHY, device="cpu",
                  progress=False) for seed in (0, 1, 2)]
    for result in runs:
        h = result.hashing
        assert h["n_bits"] == 48
        assert result.protocol["n_test_gallery"] == 450 and result.protocol["n_test_queries"] == 100
        assert result.trained["mAP"] > result.frozen["mAP"] + 0.05
        assert set(h["algo2"]) == set(h["algo2_hashes"]) >= {"mAP@10", "mAHP@10"}

    def mean(key):
        return float(np.mean([r.hashing[key] for r in runs]))

    assert mean("shortlist_recall@10_algo2_learned") > mean("shortlist_recall@10_algo2_itq") + 0.005
    assert mean("hamming_R@10_learned") > mean("hamming_R@10_itq")
    assert mean("shortlist_recall@10_frozen_learned") >= mean("shortlist_recall@10_frozen_itq") - 0.03
    table = runs[0].table()
    assert "Algo 2's top 10" in table and "frozen features' top 10" in table
    assert "validation shortlist recall@10" in table


# --- full fine-tuning: one step of tiny random-initialised models on the CPU ------------

@pytest.mark.parametrize("spec,size", [("resnet18", 64), ("clip:ViT-S-32:none", 64)])
def test_backbone_finetuning_steps_with_accumulation(spec, size):
    from cbir_kit.features.embedding_net import build_embedding_net
    from cbir_kit.train.backbone import FinetuneConfig, Finetuner, layerwise_param_groups

    torch.manual_seed(0)
    net = build_embedding_net(spec, out_dim=16, pretrained=False, image_size=size if spec.startswith("clip") else None)
    groups = layerwise_param_groups(net, lr=1e-3, decay=0.5, weight_decay=0.05)
    n = len(net.blocks)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head.w"] == pytest.approx(1e-3)
    assert lrs[f"block{n - 1}.b"] == pytest.approx(1e-3 * 0.5)
    assert lrs["block0.w"] == pytest.approx(1e-3 * 0.5 ** n)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in net.parameters() if p.requires_grad)
    scaled = {g["name"]: g["lr"] for g in layerwise_param_groups(net, lr=1e-3, decay=0.5, weight_decay=0.05,
                                                                 head_scale=10.0)}
    assert scaled["head.w"] == pytest.approx(1e-2) and scaled["block0.w"] == pytest.approx(lrs["block0.w"])
    ft = Finetuner(net, FinetuneConfig(total_steps=4, warmup_frac=0.0, accumulation=2, clip_norm=1.0))
    before = net.head.linear.weight.detach().clone()
    x, y = torch.randn(8, 3, size, size), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    first = ft.step(x, y)
    assert not first["stepped"] and torch.equal(before, net.head.linear.weight)
    second = ft.step(x, y)
    assert second["stepped"] and math.isfinite(second["loss"]) and ft.optimiser_steps == 1
    assert not torch.equal(before, net.head.linear.weight)
