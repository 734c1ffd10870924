"""Extraction: models and weights, layer names, images, and the batch engine.

The only package that runs a network.  It writes through :mod:`featx.store`
and never imports :mod:`featx.classification`.

Names are loaded on first use (PEP 562): ``from featx.extraction import POOLS``
does not import torch, so the command line can build its choices from the
registries; ``from featx.extraction import extract_features`` does.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it
_EXPORTS = {
    "CPU_FORWARD_BYTES": "_engine",
    "PRECISIONS": "_engine",
    "BatchJoiner": "_engine",
    "ExtractConfig": "_engine",
    "ExtractResult": "_engine",
    "FeatureExtractor": "_engine",
    "ImageLoader": "_engine",
    "autocast": "_engine",
    "default_workers": "_engine",
    "reuse_freed_memory": "_allocator",
    "BlockedConv2d": "_onednn",
    "build_extractor": "_engine",
    "default_store_path": "_engine",
    "extract_features": "_engine",
    "prepare_extractor": "_engine",
    "resolve_device": "_engine",
    "IMAGE_EXTENSIONS": "_images",
    "MAX_IMAGE_PIXELS": "_images",
    "ImageBatch": "_images",
    "ImageCollection": "_images",
    "ImageDataset": "_images",
    "ImageDecodeError": "_images",
    "collate_images": "_images",
    "collect_images": "_images",
    "discover_images": "_images",
    "load_image": "_images",
    "LayerIndex": "_layers",
    "LayerInfo": "_layers",
    "LoadedModel": "_models",
    "Preprocessing": "_models",
    "list_model_names": "_models",
    "load_model": "_models",
    "weights_cache_path": "_models",
    "weights_label": "_models",
    "sha256_file": "_models",
    "blocked_layout": "_onednn",
    "POOLS": "_pooling",
    "effective_pool": "_pooling",
    "pool_features": "_pooling",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featx.extraction' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
