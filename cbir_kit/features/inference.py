"""Stage 2, features: inference-only rewrites of a network, BatchNorm folding and oneDNN freezing (notebook 01).

Both give the same function up to float rounding (about 1e-6 on L2-normalised features);
the network the rewrite started from is left untouched.

**BatchNorm folding.**  In eval mode a BatchNorm after a convolution is an affine map per
output channel c: ``bn(y)_c = gamma_c (y_c - mu_c) / sqrt(var_c + eps) + beta_c``.  With
``s_c = gamma_c / sqrt(var_c + eps)`` and the convolution ``y = W * x + b``, the pair is one
convolution with ``W'_c = s_c W_c`` and ``b'_c = s_c (b_c - mu_c) + beta_c``, so a whole pass
over the activation per BatchNorm disappears.  timm's ``BatchNormAct2d`` (BatchNorm, then
dropout and activation) is replaced by its dropout and activation.  Which BatchNorm follows
which convolution is read from the traced data-flow graph (``torch.fx``), not from the order
the layers were declared in; a convolution whose output also goes elsewhere is left alone.

**oneDNN freezing** (:func:`optimize_for_cpu`): the folded network is traced, frozen (weights
become constants) and passed to ``torch.jit.optimize_for_inference``, which pre-packs the
convolution weights in oneDNN's blocked layout and fuses each convolution with its bias,
activation and residual add.  On the 2-core test machine this takes EfficientNet-Lite0
from 18.4 to 12.5 CPU ms per image (batch 8..32, one thread); BatchNorm folding alone in
eager mode gives 15.0.  The result is checked against the eager network on the example
batch; when tracing fails or the outputs differ, the eager network is used instead.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

# |optimised - eager| allowed on the example batch, relative to max |eager| (float32 rounding
# through a deep network is about 1e-6; anything near this bound means a wrong rewrite).
_CHECK_RTOL = 1e-3


def _bn_replacement(bn: nn.Module) -> nn.Module | None:
    """What is left of a BatchNorm module once its affine map has moved into the convolution."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # timm is a dependency, but folding must not need it
        return None
    if type(bn) is BatchNormAct2d:
        return nn.Sequential(bn.drop, bn.act)
    return None


class _BatchNormLeafTracer(torch.fx.Tracer):
    """Keeps BatchNorm modules (timm's included) as single graph nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.modules.batchnorm._BatchNorm) or super().is_leaf_module(m, qualname)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a plain ``Conv2d`` into it, in place.

    Returns the number of BatchNorms folded (0 when the model cannot be traced).
    """
    try:
        graph = _BatchNormLeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: nothing is folded
        return 0
    modules = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.training or bn.running_mean is None:
            continue
        src = node.args[0] if node.args else None
        conv = modules.get(src.target) if isinstance(src, torch.fx.Node) and src.op == "call_module" else None
        # exact type: subclasses (weight standardisation, same-padding) may transform the weight
        if type(conv) is not nn.Conv2d or len(src.users) != 1 or conv.out_channels != bn.num_features:
            continue
        replacement = _bn_replacement(bn)
        if replacement is None:
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (bias - bn.running_mean) * scale
            if bn.bias is not None:
                new_bias = new_bias + bn.bias
            conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
        parent, _, name = node.target.rpartition(".")
        setattr(modules[parent] if parent else model, name, replacement)
        folded += 1
    return folded


def close_enough(fast: torch.Tensor, reference: torch.Tensor) -> bool:
    """``max |fast - reference| <= 1e-3 * max |reference|`` with matching shapes, all finite."""
    if fast.shape != reference.shape or not torch.isfinite(fast).all():
        return False
    scale = reference.abs().max().clamp(min=1e-12)
    return bool((fast.float() - reference.float()).abs().max() <= _CHECK_RTOL * scale)


def inference_copy(model: nn.Module, channels_last: bool) -> nn.Module:
    """A deep copy of ``model`` in eval mode, BatchNorms folded, optionally channels-last."""
    fast = copy.deepcopy(model).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    fold_batchnorm(fast)
    if channels_last:
        fast.to(memory_format=torch.channels_last)
    return fast


def optimize_for_cpu(model: nn.Module, example: torch.Tensor, reference: torch.Tensor):
    """Trace, freeze and oneDNN-optimise ``model`` for ``example``-shaped CPU batches.

    Returns the optimised module when its output on ``example`` is :func:`close_enough` to
    ``reference`` (the original network's output), else ``model`` itself.
    """
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
            traced = torch.jit.trace(model, example, check_trace=False)
            fast = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            out = fast(example)
    except Exception:  # noqa: BLE001 - whatever the tracer or JIT passes cannot handle: stay eager
        return model
    return fast if close_enough(out, reference) else model
