"""Full fine-tuning of a backbone with GeM pooling and a projection head (meant for a GPU).

The network (the CLIP-retrieval project's recipe)::

    CNN (torchvision ResNet,    feature map (B, C, H, W) -> GeM -> ProjectionHead
    timm EfficientNet-Lite0):
    open_clip ViT:              patch tokens (B, N, W) after ln_post -> GeM over the N tokens
                                -> ProjectionHead

GeM with learnable p (initialised at 3): f_c = (mean_i max(x_ic, eps)^p)^(1/p).

Layer-wise learning-rate decay: the trunk is cut into ordered blocks b = 0 .. L-1 (input
side first: stem, then ResNet stages, EfficientNet stages and head convolution, or ViT
residual blocks); block b trains with
lr * decay^(L - b), the GeM p and the head, which start untrained, with lr * head_lr_scale
(10 by default).  AdamW, weight decay ``weight_decay``
on matrices and convolution kernels, none on biases, norms and embeddings (1-d tensors).

One optimiser step per ``accumulation`` micro-batches: each micro-batch loss is divided by
``accumulation`` before ``backward`` so the gradients add up to the mean over the larger
batch; then the global gradient norm is clipped to ``clip_norm`` and the scheduler (linear
warm-up, then cosine, as in :mod:`.fit`) advances.  AMP: on CUDA the forward pass runs under
``torch.autocast`` (float16 with a gradient scaler, or bfloat16 without one); on the CPU
training is in float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CbirError
from ..features import GeM, build_backbone
from .fit import warmup_cosine
from .heads import ProjectionHead
from .losses import make_loss


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


def layerwise_param_groups(net: EmbeddingNet, lr: float, decay: float, weight_decay: float,
                           head_scale: float = 1.0) -> list[dict]:
    """AdamW parameter groups: lr * decay^(L - b) for trunk block b, lr * head_scale for GeM and the head."""
    n = len(net.blocks)
    groups, seen = [], set()

    def add(params, scale, name, decayed=True):
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        matrices = [p for p in params if p.ndim > 1 and decayed]
        vectors = [p for p in params if p.ndim <= 1 or not decayed]
        for ps, wd, kind in ((matrices, weight_decay, "w"), (vectors, 0.0, "b")):
            if ps:
                groups.append({"params": ps, "lr": lr * scale, "weight_decay": wd, "name": f"{name}.{kind}"})

    add(net.extra_stem_params, decay ** n, "stem-embeddings", decayed=False)
    for b, block in enumerate(net.blocks):
        add(block.parameters(), decay ** (n - b), f"block{b}")
    add(list(net.pool.parameters()) + list(net.head.parameters()), head_scale, "head")
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in seen]
    add(rest, decay ** n, "trunk-other")
    return groups


@dataclass
class FinetuneConfig:
    """Hyper-parameters of full fine-tuning (defaults: the CLIP-retrieval project's recipe)."""

    loss: str = "circle"
    lr: float = 1e-4
    layer_decay: float = 0.65
    head_lr_scale: float = 10.0   # the new layers (GeM p, head) start from scratch: they learn faster
    weight_decay: float = 0.05
    total_steps: int = 1000
    warmup_frac: float = 0.15
    accumulation: int = 1
    clip_norm: float = 1.0
    amp: bool = True              # used on CUDA only
    mining_after_step: int = 0    # optimiser steps before the miner is switched on


class Finetuner:
    """Holds the network, optimiser, scheduler and AMP scaler; ``step`` feeds one micro-batch."""

    def __init__(self, net: EmbeddingNet, config: FinetuneConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config = config or FinetuneConfig()
        if config.accumulation < 1:
            raise CbirError(f"accumulation must be at least 1; got {config.accumulation}")
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.loss_fn, self.miner = make_loss(config.loss)
        self.optimiser = torch.optim.AdamW(layerwise_param_groups(net, config.lr, config.layer_decay,
                                                                  config.weight_decay, config.head_lr_scale))
        warmup = round(config.warmup_frac * config.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimiser, lambda s: warmup_cosine(s, config.total_steps, warmup))
        cuda = self.device.type == "cuda"
        self.amp_dtype = None
        if cuda and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.micro_steps = 0
        self.optimiser_steps = 0

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """Forward/backward one micro-batch; every ``accumulation`` calls also steps the optimiser."""
        self.net.train()
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            emb = self.net(images)
        emb = emb.float()
        pairs = self.miner(emb, labels) if self.optimiser_steps >= self.config.mining_after_step else None
        loss = self.loss_fn(emb, labels, pairs)
        self.scaler.scale(loss / self.config.accumulation).backward()
        self.micro_steps += 1
        out = {"loss": float(loss.detach()), "stepped": False, "grad_norm": float("nan")}
        if self.micro_steps % self.config.accumulation == 0:
            self.scaler.unscale_(self.optimiser)
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.clip_norm))
            self.scaler.step(self.optimiser)
            self.scaler.update()
            self.optimiser.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.optimiser_steps += 1
            out["stepped"] = True
        return out
