"""Test-time augmentation and GeM pooling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cbir_kit.errors import CbirError
from cbir_kit.features import GeM, create_extractor
from cbir_kit.features.tta import TTAExtractor
from cbir_kit.method_specs import MULTI_SCALE, TTASpec, parse_method


def test_gem_p1_is_average_pooling():
    x = torch.rand(2, 5, 7, 6) + 0.01
    torch.testing.assert_close(GeM(p=1.0)(x), F.adaptive_avg_pool2d(x, 1).flatten(1))
    # p = 3 by hand
    torch.testing.assert_close(GeM(p=3.0)(x), (x ** 3).mean(dim=(-2, -1)) ** (1 / 3))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("tta")
    paths = []
    for i in range(3):  # 256 x 256: resize is the identity and the centre crop is symmetric
        arr = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        arr[:, :100] //= 3  # asymmetric, so the flip matters
        path = folder / f"im{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def test_flip_tta_is_the_normalised_mean_of_both_views(images):
    plain = create_extractor("resnet18", device="cpu", pretrained=False)
    tta = TTAExtractor("resnet18", device="cpu", pretrained=False, flip=True)
    tta._backbone = plain.backbone  # the same random weights
    batch = torch.stack([plain.backbone.preprocess(Image.open(p).convert("RGB")) for p in images])
    a = plain.embed_batch(batch)
    b = plain.embed_batch(torch.flip(batch, dims=[-1]))
    expected = F.normalize(a + b, dim=1)
    got = tta.extract(images, progress=False).vectors
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    # flip-averaged features do not change when the image itself is mirrored
    flipped = [Image.open(p).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in images]
    mirrored = torch.stack([plain.backbone.preprocess(im) for im in flipped])
    np.testing.assert_allclose(tta.embed_batch(mirrored).numpy(), got, atol=1e-4)
    assert tta.cache_identity() != plain.cache_identity()


def test_multi_scale_views_and_errors():
    views = parse_method("tta", "flip+ms")
    assert views == TTASpec(True, MULTI_SCALE)
    tta = TTAExtractor("resnet18", device="cpu", pretrained=False, flip=views.flip, scales=views.scales)
    views = tta.views(torch.zeros(1, 3, 224, 224))
    assert len(views) == 6 and {v.shape[-1] for v in views} == {158, 224, 316}
    with pytest.raises(CbirError, match=r"tta='rotate' must be flip, ms or flip\+ms"):
        parse_method("tta", "rotate")
    with pytest.raises(CbirError):
        TTAExtractor("resnet18", flip=False)


def test_tta_wraps_an_existing_extractor_without_building_its_network_again():
    plain = create_extractor("resnet18", device="cpu", pretrained=False, batch_size=3)
    network = plain.backbone
    tta = TTAExtractor(plain, flip=True)
    assert tta.backbone is network and tta.batch_size == 3
    assert tta.cache_identity() == {**plain.cache_identity(), "tta": {"flip": True, "scales": [1.0]}}
    with pytest.raises(CbirError, match="create_extractor"):
        TTAExtractor(plain, flip=True, batch_size=4)
