"""Extraction: models and weights, layer names, images, and the batch engine.

The only package that runs a network.  It writes through :mod:`featx.store`
and never imports :mod:`featx.classification`.
"""

from ._engine import (
    CPU_FORWARD_BYTES,
    PRECISIONS,
    BatchJoiner,
    ExtractConfig,
    ExtractResult,
    FeatureExtractor,
    ImageLoader,
    autocast,
    default_workers,
    build_extractor,
    default_store_path,
    extract_features,
    prepare_extractor,
    resolve_device,
)
from ._images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ImageBatch,
    ImageCollection,
    ImageDataset,
    ImageDecodeError,
    collate_images,
    collect_images,
    discover_images,
    load_image,
)
from ._layers import LayerIndex, LayerInfo
from ._models import LoadedModel, Preprocessing, list_model_names, load_model, sha256_file, weights_cache_path, weights_label
from ._allocator import reuse_freed_memory
from ._onednn import BlockedConv2d, blocked_layout
from ._pooling import POOLS, effective_pool, pool_features

__all__ = [
    "CPU_FORWARD_BYTES",
    "PRECISIONS",
    "BatchJoiner",
    "ExtractConfig",
    "ExtractResult",
    "FeatureExtractor",
    "ImageLoader",
    "autocast",
    "default_workers",
    "reuse_freed_memory",
    "BlockedConv2d",
    "build_extractor",
    "default_store_path",
    "extract_features",
    "prepare_extractor",
    "resolve_device",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageBatch",
    "ImageCollection",
    "ImageDataset",
    "ImageDecodeError",
    "collate_images",
    "collect_images",
    "discover_images",
    "load_image",
    "LayerIndex",
    "LayerInfo",
    "LoadedModel",
    "Preprocessing",
    "list_model_names",
    "load_model",
    "weights_cache_path",
    "weights_label",
    "sha256_file",
    "blocked_layout",
    "POOLS",
    "effective_pool",
    "pool_features",
]
