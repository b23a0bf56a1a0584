"""Side branch, training: full fine-tuning of a backbone with GeM pooling and a projection head (notebook 08).

The network is :class:`cbir_kit.features.embedding_net.EmbeddingNet` (trunk -> GeM -> head).

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

from ..errors import CbirError
from ..features.embedding_net import EmbeddingNet
from .fit import warmup_cosine
from .losses import make_loss


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
            raise CbirError(f"accumulation={config.accumulation!r} must be at least 1")
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
