"""Stage 2, features: the fine-tuned embedding network, backbone trunk -> GeM -> projection head (notebook 08).

Taught in notebook 08.  The network (the CLIP-retrieval project's recipe)::

    CNN (torchvision ResNet,    feature map (B, C, H, W) -> GeM -> ProjectionHead
    timm EfficientNet-Lite0):
    open_clip ViT:              patch tokens (B, N, W) after ln_post -> GeM over the N tokens
                                -> ProjectionHead

GeM with learnable p (initialised at 3): f_c = (mean_i max(x_ic, eps)^p)^(1/p).  ``cbir finetune``
trains it (:mod:`cbir_kit.train.backbone`); at query time it is a feature extractor like any other
(model spec ``finetuned:PATH``), which is why it lives here.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CbirError
from .heads import ProjectionHead
from .models import GeM, build_backbone


class TokenGeM(nn.Module):
    """GeM over the token axis of (B, N, W) tokens, via :class:`~cbir_kit.features.GeM`."""

    def __init__(self, p: float = 3.0):
        super().__init__()
        self.gem = GeM(p, learnable=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gem(tokens.transpose(1, 2).unsqueeze(-1))


class _TimmFeatureMap(nn.Module):
    """A timm CNN up to its last feature map (B, C, H, W), before timm's own pooling."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class EmbeddingNet(nn.Module):
    """Backbone trunk -> GeM -> :class:`ProjectionHead`; ``blocks`` lists the trunk's LLRD blocks."""

    def __init__(self, trunk: nn.Module, pool: nn.Module, blocks: list[nn.Module], width: int,
                 out_dim: int = 512, dropout: float = 0.1, tokens: bool = False):
        super().__init__()
        self.trunk, self.pool = trunk, pool
        self.blocks = blocks  # plain list: the modules are registered through ``trunk``
        self.tokens = tokens
        self.head = ProjectionHead(width, out_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.trunk(x)
        if self.tokens:
            feats = feats[1]  # (pooled, tokens) -> tokens
        return self.head(self.pool(feats))


def build_embedding_net(spec: str, out_dim: int = 512, dropout: float = 0.1, pretrained: bool = True,
                        image_size: int | None = None) -> EmbeddingNet:
    """An :class:`EmbeddingNet` for ``efficientnet_lite0``, ``resnet18``/``resnet50`` or ``clip:ARCH:PRETRAINED``.

    ``net.preprocess`` is the backbone's own evaluation transform (the one ``cbir evaluate``
    uses for ``spec``).  ``image_size`` (ViTs only) builds the open_clip model for that input
    size (random initialisation or interpolated position embeddings), e.g. small images for a
    CPU test.
    """
    if spec.startswith("clip:"):
        import open_clip

        if image_size is None:
            bb = build_backbone(spec, pretrained=pretrained)
            visual, preprocess = bb.model.clip.visual, bb.preprocess
        else:
            _, arch, tag = spec.split(":")
            tag = None if (not pretrained or tag.lower() in ("", "none", "random")) else tag
            visual = open_clip.create_model(arch, pretrained=tag, force_image_size=image_size).visual
            preprocess = open_clip.image_transform(image_size, is_train=False)
        if not hasattr(visual, "transformer"):
            raise CbirError(f"{spec} is not an open_clip ViT; full fine-tuning supports ResNets and ViTs")
        visual.output_tokens = True
        stem = [visual.conv1, visual.ln_pre]
        blocks = [nn.ModuleList(stem)] + list(visual.transformer.resblocks) + [visual.ln_post]
        net = EmbeddingNet(visual, TokenGeM(), blocks, visual.conv1.out_channels, out_dim, dropout, tokens=True)
        net.extra_stem_params = [visual.class_embedding, visual.positional_embedding]
    else:
        base = spec.removesuffix("-gem")
        if base not in ("efficientnet_lite0", "resnet18", "resnet50"):
            raise CbirError(f"full fine-tuning supports efficientnet_lite0, resnet18, resnet50 and "
                            f"clip:ARCH:PRETRAINED ViTs; got {spec!r}")
        bb = build_backbone(base, pretrained=pretrained)
        preprocess = bb.preprocess
        if base == "efficientnet_lite0":
            m = bb.model
            trunk = _TimmFeatureMap(m)
            blocks = [nn.ModuleList([m.conv_stem, m.bn1]), *m.blocks, nn.ModuleList([m.conv_head, m.bn2])]
        else:
            trunk = bb.model.body
            conv1, bn1, _, _, *stages = list(trunk.children())
            blocks = [nn.ModuleList([conv1, bn1])] + stages
        net = EmbeddingNet(trunk, GeM(learnable=True), blocks, bb.dim, out_dim, dropout)
        net.extra_stem_params = []
    net.preprocess = preprocess
    return net
