"""Stage 2, features: text queries through a CLIP model's text tower, in the image features' space (notebook 02).

CLIP (Radford et al., 2021) trains an image tower f and a text tower g together so that an
image and its caption have a high cosine similarity.  A text query t is embedded as

    e(t) = g(tokenize(t)) / ||g(tokenize(t))||_2,

the same L2 normalisation as the image features (:mod:`.extractor`), so e(t) . f_i is the cosine
similarity of the text and image i and the text searches the same index as an image query.
Only CLIP models have a text tower; the image-only models (EfficientNet, ResNet, fine-tuned
networks) refuse text with an error naming a CLIP model to use instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CbirError
from .specs import parse_model

EXAMPLE_CLIP = "clip:ViT-B-32:laion2b_s34b_b79k"


def check_text_model(spec: str) -> None:
    """Raise a clear error unless ``spec`` is a CLIP model (the only ones with a text tower)."""
    if parse_model(spec).kind != "clip":
        raise CbirError(f"text search needs a CLIP model, and {spec!r} embeds images only; build a collection "
                        f"with a CLIP model, such as {EXAMPLE_CLIP!r} (or 'clip:ViT-B-32:none', random weights, "
                        "offline)")


def text_identity(spec: str) -> dict:
    """What determines a text embedding besides the text: the model and its tokenizer (stored with a collection)."""
    check_text_model(spec)
    import open_clip

    arch = parse_model(spec).arch
    tokenizer = open_clip.get_tokenizer(arch)
    return {"model": spec, "tokenizer": type(tokenizer).__name__,
            "context_length": int(getattr(tokenizer, "context_length", 77))}


def embed_text(extractor, texts: Sequence[str]) -> np.ndarray:
    """(len(texts), D) float32 rows e(t) (module docstring) from the CLIP model ``extractor`` runs."""
    check_text_model(extractor.spec)
    texts = [texts] if isinstance(texts, str) else list(texts)
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if not texts or empty:
        raise CbirError(f"text= needs non-empty strings; got {texts!r}")
    import open_clip

    clip = extractor.backbone.model.clip
    tokens = open_clip.get_tokenizer(parse_model(extractor.spec).arch)(texts).to(extractor.device)
    with torch.inference_mode():
        emb = F.normalize(clip.encode_text(tokens).float(), dim=-1)
    return emb.cpu().numpy().astype(np.float32)
