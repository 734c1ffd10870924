"""Extraction: models and weights, layer names, images, and the batch engine.

The only package that runs a network.  It writes through :mod:`featx.store`
and never imports :mod:`featx.classification`.

Names are loaded on first use (PEP 562): ``from featx.extraction import POOLS``
does not import torch, so the command line can build its choices from the
registries (:data:`POOLS`, :data:`PRECISIONS`, :data:`STORAGE_DTYPES`,
:data:`COMPRESSIONS`), nor does :class:`ExtractConfig` or :func:`format_extraction`; ``from featx.extraction import extract_features`` does.

Modules: ``_config`` (configuration, checks, result, its summary), ``_engine``
(the run and its writer thread), ``_network`` (layer plan, truncated graph),
``_loader`` (decoding workers, batch joining), ``_device``, ``_models`` and
``_weights`` (models, weights and their labels), ``_layers`` (names, aliases,
listing), ``_images``, ``_pooling``, ``_onednn`` and ``_allocator``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it
_EXPORTS = {
    # _config: what an extraction is asked and what it did (no torch)
    "PRECISIONS": "_config",
    "PRECISION_NAMES": "_config",
    "STORAGE_DTYPES": "_config",
    "COMPRESSIONS": "_config",
    "ExtractConfig": "_config",
    "ExtractResult": "_config",
    "default_store_path": "_config",
    "format_extraction": "_config",
    # _engine: the run
    "extract_features": "_engine",
    # _device
    "autocast": "_device",
    "resolve_device": "_device",
    # _network: layer plan, truncated graph
    "CPU_FORWARD_BYTES": "_network",
    "LayerPlan": "_network",
    "FeatureExtractor": "_network",
    "probe_layers": "_network",
    "build_extractor": "_network",
    "prepare_extractor": "_network",
    # _loader: the input pipeline
    "WORKER_NICENESS": "_loader",
    "BatchJoiner": "_loader",
    "ImageLoader": "_loader",
    "default_workers": "_loader",
    # _allocator, _onednn: CPU tuning
    "reuse_freed_memory": "_allocator",
    "BlockedConv2d": "_onednn",
    "blocked_layout": "_onednn",
    # _images
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
    # _layers
    "LayerIndex": "_layers",
    "LayerInfo": "_layers",
    "LayerListing": "_layers",
    "list_layers": "_layers",
    "format_layers": "_layers",
    # _models, _weights
    "LoadedModel": "_models",
    "Preprocessing": "_models",
    "check_model_name": "_models",
    "list_model_names": "_models",
    "load_model": "_models",
    "weights_cache_path": "_models",
    "weights_label": "_models",
    "sha256_file": "_models",
    # _pooling (no torch)
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
