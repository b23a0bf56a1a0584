"""`cbir bench extract` in a reduced form (a handful of images): it runs and its numbers make sense."""
import json

import numpy as np
import torch

from cbir_kit.bench.extract import naive_features, sgemm_gflops
from cbir_kit.cli import main
from cbir_kit.features import create_extractor


def test_bench_extract_compares_naive_loop_and_pipeline_on_the_same_images(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "extract", "--dataset", "demo", "--limit", "6", "--block", "3", "--batch-size", "4",
                 "--no-progress", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["n_images"] == 6 and r["n_failed"] == 0 and r["precision"] == "fp32"
    assert r["max_abs_diff"] < 1e-4  # same features from both methods
    assert r["naive"]["images_per_s"] > 0 and r["pipeline"]["images_per_s"] > 0
    assert np.isclose(r["speedup"], r["pipeline"]["images_per_s"] / r["naive"]["images_per_s"])
    assert 0.3 < r["model_gflops"] < 1.0  # EfficientNet-Lite0: about 0.4 G multiply-adds at 224 x 224
    assert np.isclose(r["flop_bound_ratio"], r["model_gflops"] * r["pipeline"]["images_per_s"] / r["sgemm_gflops"])
    assert "speedup" in capsys.readouterr().out


def test_naive_loop_matches_pipeline_and_restores_channels_last(demo_dataset):
    ex = create_extractor(device="cpu", batch_size=3)
    images = demo_dataset.gallery[:3]
    naive = naive_features(ex, images)
    np.testing.assert_allclose(naive, ex.extract(images, progress=False).vectors, atol=1e-4)
    conv = next(m for m in ex.backbone.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_sgemm_rate_is_positive():
    assert sgemm_gflops(n=128, repeats=2) > 0
