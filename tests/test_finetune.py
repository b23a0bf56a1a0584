"""`cbir finetune`: full backbone fine-tuning end to end on the CPU (random weights, a few images)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from cbir_kit.cli import main
from cbir_kit.errors import CbirError
from cbir_kit.features import create_extractor
from cbir_kit.features.models import IMAGENET_MEAN, imagenet_preprocess
from cbir_kit.features.embedding_net import build_embedding_net
from cbir_kit.features.checkpoint import load_finetuned, read_finetuned, save_finetuned
from cbir_kit.train.finetune import finetune, training_transform


@pytest.fixture(scope="module")
def noisy_folder(tmp_path_factory):
    """3 classes x 8 noise images whose mean colour differs a little per class, less than between images.

    Random-weight networks rank them far from perfectly (mAP about 0.4), so a reproduced mAP means something.
    """
    root = tmp_path_factory.mktemp("ft") / "imgs"
    rng = np.random.default_rng(0)
    for c, base in enumerate([(134, 122, 122), (122, 134, 122), (122, 122, 134)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(8):
            colour = np.array(base) + rng.normal(0, 20, 3)
            pixels = np.clip(colour + rng.normal(0, 60, (72, 96, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def test_training_transform_keeps_the_backbones_size_and_normalisation():
    import open_clip

    for preprocess, size, mean in ((imagenet_preprocess(), 224, IMAGENET_MEAN),
                                   (open_clip.image_transform(64, is_train=False), 64, open_clip.OPENAI_DATASET_MEAN)):
        tf = training_transform(preprocess)
        steps = {type(t) for t in tf.transforms}
        assert {T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomGrayscale, T.RandomErasing} <= steps
        norm = next(t for t in tf.transforms if isinstance(t, T.Normalize))
        assert np.allclose(norm.mean, mean)
        out = tf(Image.new("RGB", (120, 90), (200, 30, 30)))
        assert out.shape == (3, size, size)
    with pytest.raises(CbirError, match="CenterCrop"):
        training_transform(T.Compose([T.ToTensor()]))


def test_efficientnet_lite0_embedding_net_has_ordered_blocks_and_the_offline_preprocessing():
    net = build_embedding_net("efficientnet_lite0", out_dim=16, pretrained=False)
    assert len(net.blocks) == 9  # stem, 7 stages, head convolution
    assert isinstance(net.preprocess.transforms[1], T.CenterCrop)
    net.eval()
    with torch.no_grad():
        emb = net(torch.randn(2, 3, 64, 64))
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_finetune_command_end_to_end_then_evaluate_reproduces_it(noisy_folder, tmp_path, capsys):
    out, report = tmp_path / "net.pt", tmp_path / "run.json"
    assert main(["finetune", "--dataset", f"folder:{noisy_folder}", "--model", "resnet18", "--random-weights",
                 "--epochs", "2", "--p", "3", "--per-class", "2", "--accumulation", "2", "--device", "cpu",
                 "--out", str(out), "--json", str(report), "--no-progress"]) == 0
    assert f"finetuned:{out}" in capsys.readouterr().out
    result = json.loads(report.read_text())
    proto, history = result["protocol"], result["history"]
    assert proto["n_train"] + proto["n_val"] == 12 and proto["n_test_gallery"] == 12
    assert 1 <= len(history["epoch"]) <= 2 and 1 <= result["best_epoch"] <= len(history["epoch"])
    assert all(np.isfinite(history["loss"]))
    assert history["lr"][0] > 0 and history["lr"][-1] <= history["lr"][0]  # the head's rate, after warm-up
    frozen, tuned = result["metrics"]["frozen"], result["metrics"]["finetuned"]
    assert set(frozen) == set(tuned) >= {"mAP", "P@1", "P@10"} and 0.0 < tuned["mAP"] < 0.95
    assert (tmp_path / "net.png").stat().st_size > 0

    payload = read_finetuned(out)
    assert payload["base"]["model"] == "resnet18" and len(payload["protocol"]["trained_fingerprints"]) == 12
    assert payload["config"]["accumulation"] == 2 and payload["config"]["total_steps"] >= 1
    assert load_finetuned(out).pool.p.item() != 3.0  # GeM's p starts at 3: the optimiser stepped

    evaluated = tmp_path / "eval.json"
    assert main(["evaluate", "--dataset", f"folder:{noisy_folder}", "--model", f"finetuned:{out}", "--device", "cpu",
                 "--json", str(evaluated), "--no-progress"]) == 0
    ev = json.loads(evaluated.read_text())
    assert ev["n_gallery"] == 12 and ev["n_queries"] == 12
    assert ev["config"]["held_out"]["dropped_gallery"] == 12
    assert ev["metrics"]["mAP"] == pytest.approx(tuned["mAP"], abs=1e-9)


def test_finetune_runs_an_open_clip_vit_at_a_small_input_size(noisy_folder, tmp_path):
    out = tmp_path / "vit.pt"
    result = finetune(f"folder:{noisy_folder}", model="clip:ViT-S-32:none", pretrained=False, image_size=64,
                      epochs=1, p=3, k=2, out=out, plot=False, progress=False, device="cpu")
    assert read_finetuned(out)["base"]["image_size"] == 64
    tuned = create_extractor(f"finetuned:{out}", device="cpu")
    assert tuned.backbone.preprocess.transforms[1].size == (64, 64) and tuned.dim == 512
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--dataset", f"folder:{noisy_folder}", "--model", f"finetuned:{out}", "--device", "cpu",
                 "--json", str(report), "--no-progress"]) == 0
    assert json.loads(report.read_text())["metrics"]["mAP"] == pytest.approx(result.trained["mAP"], abs=1e-9)


def test_finetuned_features_are_cached_by_file_content(tmp_path):
    out = tmp_path / "net.pt"
    net = build_embedding_net("resnet18", out_dim=8, pretrained=False)
    base = {"model": "resnet18", "pretrained": False, "out_dim": 8, "dropout": 0.1, "image_size": None}
    save_finetuned(out, net, base, {}, {}, {})
    first = create_extractor(f"finetuned:{out}", device="cpu").cache_identity()
    assert create_extractor(f"finetuned:{out}", device="cpu").cache_identity() == first
    with torch.no_grad():
        net.head.linear.bias += 1.0
    save_finetuned(out, net, base, {}, {}, {})
    assert create_extractor(f"finetuned:{out}", device="cpu").cache_identity() != first


def test_finetuned_model_spec_errors_name_the_file_and_the_fix(tmp_path, capsys):
    missing = tmp_path / "none.pt"
    assert main(["evaluate", "--model", f"finetuned:{missing}", "--no-progress"]) == 2
    assert "cbir finetune --out" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a network")
    with pytest.raises(CbirError, match="not a cbir_kit fine-tuned network"):
        load_finetuned(junk)
    head_like = tmp_path / "head.pt"
    torch.save({"format": 1, "state": {}}, head_like)
    with pytest.raises(CbirError, match="make one with `cbir finetune`"):
        read_finetuned(head_like)
