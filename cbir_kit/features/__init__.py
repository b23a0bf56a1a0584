"""Stage 2, features: images -> L2-normalised vectors (notebook 01).

One spec parser (:mod:`.specs`, torch-free), the backbones (:mod:`.models`), heads and
fine-tuned networks applied at query time (:mod:`.heads`, :mod:`.embedding_net`,
:mod:`.checkpoint`), batched extraction (:mod:`.extractor`), the on-disk cache
(:mod:`.cache`) and test-time augmentation as a wrapper (:mod:`.tta`).
"""
from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "Extractor": ".extractor", "Features": ".extractor", "build_backbone": ".extractor",
    "create_extractor": ".extractor", "resolve_device": ".extractor",
    "FeatureCache": ".cache", "default_cache_dir": ".cache",
    "MODELS": ".models", "GeM": ".models",
    "OFFLINE_MODEL": ".specs", "ModelSpec": ".specs", "parse_model": ".specs",
})
