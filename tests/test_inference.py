"""Inference rewrites (BatchNorm folding, oneDNN freezing) give the network's own outputs."""
from __future__ import annotations

import copy

import numpy as np
import torch
from PIL import Image
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from cbir_kit.features import create_extractor
from cbir_kit.features.inference import (
    close_enough,
    fold_batchnorm,
    inference_copy,
    optimize_for_cpu,
)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


class Branchy(nn.Module):
    """conv1 -> bn1 (foldable); conv2 feeds bn2 AND the residual (not foldable); bias conv -> bn3."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True), BatchNormAct2d(8, act_layer=nn.ReLU6)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        x = self.bn2(y) + y
        return self.bn3(self.conv3(x)).mean((2, 3))


class ScaledConv(nn.Conv2d):
    """A Conv2d subclass that transforms its weight (like weight standardisation): never folded."""

    def forward(self, x):
        return self._conv_forward(x, self.weight / self.weight.norm(), self.bias)


def test_fold_matches_unfolded_network_and_leaves_shared_outputs_alone():
    torch.manual_seed(0)
    model = _randomise_bn(Branchy())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    fast = inference_copy(model, channels_last=False)
    assert isinstance(model.bn1, nn.BatchNorm2d)  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref, rtol=1e-5, atol=1e-5)
    assert isinstance(fast.bn1, nn.Identity) and isinstance(fast.bn2, nn.BatchNorm2d)
    assert isinstance(fast.bn3, nn.Sequential) and isinstance(fast.bn3[1], nn.ReLU6)


def test_folded_weights_match_torch_fuse_conv_bn_eval():
    torch.manual_seed(1)
    model = _randomise_bn(nn.Sequential(nn.Conv2d(3, 5, 3, bias=True), nn.BatchNorm2d(5)))
    reference = fuse_conv_bn_eval(model[0], model[1])  # torch's own folding of the same pair
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 1 and isinstance(folded[1], nn.Identity)
    torch.testing.assert_close(folded[0].weight, reference.weight)
    torch.testing.assert_close(folded[0].bias, reference.bias)


def test_conv_subclasses_and_training_mode_are_not_folded():
    model = _randomise_bn(nn.Sequential(ScaledConv(3, 4, 3), nn.BatchNorm2d(4)))
    assert fold_batchnorm(model) == 0
    training = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    assert fold_batchnorm(training) == 0


def test_optimize_for_cpu_freezes_and_falls_back_when_tracing_fails():
    torch.manual_seed(2)
    model = inference_copy(_randomise_bn(Branchy()), channels_last=True)
    x = torch.randn(3, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_cpu(model, x, ref)
    assert isinstance(fast, torch.jit.ScriptModule)
    with torch.no_grad():
        assert close_enough(fast(x[:2]), ref[:2])  # another batch size through the same trace

    class DictOut(nn.Module):
        def forward(self, x):
            return {"f": x.mean((2, 3))}

    eager = DictOut()
    assert optimize_for_cpu(eager, x, x.mean((2, 3))) is eager
    assert not close_enough(ref + 1, ref) and not close_enough(ref[:1], ref)


def _pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)) for _ in range(n)]


def test_pipeline_features_match_the_network_as_built():
    """Two frozen streams, a partial last batch: the same features as the unmodified network."""
    images = _pictures(19)
    plain = create_extractor(device="cpu", batch_size=8, streams=1, optimize=False)
    fast = create_extractor(device="cpu", batch_size=8, streams=2, num_threads=2)
    fast._backbone = plain.backbone  # same weights, no second build
    fast._split = plain._split
    want = plain.extract(images, progress=False).vectors
    got = fast.extract(images, progress=False).vectors
    assert fast.network_kind() == "oneDNN-frozen" and plain.network_kind() == "as built"
    assert np.abs(got - want).max() < 1e-4
    # a short call (a resumed extraction's last batch) runs the very same network: bit-identical
    short = fast.extract(images[8:16], progress=False).vectors
    assert np.array_equal(short, got[8:16])
