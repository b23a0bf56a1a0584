"""Feature extraction: one factory, batched extraction, an on-disk cache, GeM pooling."""
from .cache import FeatureCache, default_cache_dir
from .extractor import Extractor, Features, create_extractor, resolve_device
from .models import MODELS, OFFLINE_MODEL, GeM, build_backbone

__all__ = ["Extractor", "FeatureCache", "Features", "GeM", "MODELS", "OFFLINE_MODEL", "build_backbone",
           "create_extractor", "default_cache_dir", "resolve_device"]
