"""`cbir evaluate` end to end: the JSON contract, the cache, the Corel-1K reference, folder: layouts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from fixture_server import online
from PIL import Image
from sklearn.metrics import average_precision_score

from cbir_kit.pipeline.job import evaluate
from cbir_kit.features.models import (
    imagenet_preprocess,
    load_efficientnet_lite0_weights,
)

CONTRACT_METRICS = {"mAP", "P@1", "P@5", "P@10", "R@10", "precision", "recall", "f1"}
CONTRACT_TIMINGS = {"extract_s", "images_per_s", "index_build_s", "search_ms_per_query", "total_s"}


def _cbir(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "cbir_kit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_default_run_on_demo_writes_the_json_contract(tmp_path):
    out = tmp_path / "r.json"
    proc = _cbir("evaluate", "--no-progress", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "mAP" in proc.stdout and "search_ms_per_query" in proc.stdout
    result = json.loads(out.read_text())
    assert {"dataset", "model", "n_queries", "n_gallery", "k", "metrics", "timings", "cache"} <= set(result)
    assert result["dataset"] == "demo" and result["model"] == "efficientnet_lite0" and result["k"] == 10
    assert result["n_queries"] == 54 and result["n_gallery"] == 72
    assert CONTRACT_METRICS <= set(result["metrics"]) and CONTRACT_TIMINGS <= set(result["timings"])
    assert isinstance(result["cache"]["hit"], bool)
    assert result["metrics"]["mAP"] > 0.9  # near-duplicates of real photos with real ImageNet weights
    assert result["config"]["seed"] == 0


def test_second_run_hits_the_cache_without_building_the_model(demo_features, monkeypatch):
    import cbir_kit.features.extractor as extractor_module

    first = evaluate("demo", progress=False)
    monkeypatch.setattr(extractor_module, "build_backbone",
                        lambda *a, **k: pytest.fail("model built on a cache hit"))
    second = evaluate("demo", progress=False)
    assert second.cache["hit"] is True
    assert second.metrics == first.metrics


def test_corel1k_matches_the_reference_figure(corel_features, corel_csv):
    result = evaluate(f"csv:{corel_csv}", progress=False)
    assert result.n_queries == 100 and result.n_gallery == 900
    assert result.metrics["mAP"] == pytest.approx(0.80, abs=0.02)
    assert result.metrics["P@10"] == pytest.approx(0.916, abs=0.02)
    assert result.metrics["P@1"] == pytest.approx(0.95, abs=0.02)


def _independent_loo_map(paths, labels):
    """Naive per-image loop (timm + the shipped weights), cosine similarity, sklearn AP."""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    load_efficientnet_lite0_weights(model)
    model.reset_classifier(0)
    model.eval()
    preprocess = imagenet_preprocess()
    with torch.no_grad():
        feats = np.stack([model(preprocess(Image.open(p).convert("RGB"))[None])[0].numpy() for p in paths])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    sim = feats @ feats.T
    labels = np.asarray(labels)
    aps = []
    for i in range(len(paths)):
        others = np.arange(len(paths)) != i
        aps.append(average_precision_score(labels[others] == labels[i], sim[i, others]))
    return float(np.mean(aps))


def test_folder_layout_matches_an_independent_computation(tmp_path, shared_data):
    import csv

    rows = list(csv.DictReader(open(shared_data / "corel1k" / "labels.csv")))
    paths, labels = [], []
    for cls in sorted({r["label"] for r in rows})[:4]:
        for r in [r for r in rows if r["label"] == cls][:6]:
            dst = tmp_path / "photos" / cls / os.path.basename(r["path"])
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(shared_data / "corel1k" / r["path"])
            paths.append(dst)
            labels.append(cls)
    result = evaluate(f"folder:{tmp_path / 'photos'}", progress=False, k=5)
    assert result.n_queries == result.n_gallery == 24
    order = sorted(range(len(paths)), key=lambda i: str(paths[i]))
    expected = _independent_loo_map([paths[i] for i in order], [labels[i] for i in order])
    assert result.metrics["mAP"] == pytest.approx(expected, abs=0.01)


def test_bad_dataset_is_one_clear_line_not_a_traceback(tmp_path):
    proc = _cbir("evaluate", "--dataset", f"csv:{tmp_path / 'missing.csv'}", "--no-progress")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "missing.csv does not exist" in proc.stderr



@pytest.mark.skipif(online("huggingface.co"), reason="network is reachable; this checks offline behaviour")
def test_clip_hub_model_offline_fails_fast_naming_the_offline_model(tmp_path):
    proc = _cbir("evaluate", "--model", "clip:ViT-B-32:laion2b_s34b_b79k", "--no-progress",
                 env={"HF_HOME": str(tmp_path / "hf")}, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "network" in proc.stderr and "--model efficientnet_lite0" in proc.stderr
