"""Extraction: models and weights, layer names, images, and the batch engine.

The only package that runs a network.  It writes through :mod:`featx.store`
and never imports :mod:`featx.classification`.

Names are loaded on first use (PEP 562): ``from featx.extraction import POOLS``
does not import torch, so the command line can build its choices from the
registries (:data:`POOLS`, :data:`PRECISIONS`, :data:`STORAGE_DTYPES`,
:data:`COMPRESSIONS`), nor does :class:`ExtractConfig` or :func:`format_extraction`; ``from featx.extraction import extract_features`` does.

Modules: ``_config`` (configuration, checks, result, its summary), ``_engine``
(the run and its writer thread), ``_ray`` and ``_shards`` (the Ray engine: the
cluster and the driver; shards and the worker that extracts them), ``_network`` (layer plan, truncated graph),
``_loader`` (decoding workers, batch joining), ``_autotune`` (images per pass
and memory layout, chosen, cached, recorded), ``_gpu_decode`` (nvJPEG batches), ``_device``, ``_models`` (the registries of model
sources, weights sources and weights formats, and the functions that dispatch
through them: models, weights and their labels), ``_model_sources`` (what an entry
of those registries is), ``_torchvision`` and ``_timm`` (the model sources),
``_weights`` (state dict files), ``_keras`` (Keras applications VGG weights),
``_layers`` (the layer index: names, aliases, shapes), ``_catalog`` (the
``models`` and ``layers`` listings), ``_images``, ``_pooling``, ``_onednn`` and
``_allocator``; ``_preprocessing`` (the weights' preprocessing,
``--resize``/``--mean``/..., sidecars).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it
_EXPORTS = {
    # _config: what an extraction is asked and what it did (no torch)
    "PRECISIONS": "_recipe",
    "PRECISION_NAMES": "_config",
    "STORAGE_DTYPES": "_recipe",
    "RECIPE_OPTIONS": "_config",
    # _recipe: how a feature is made
    "FeatureRecipe": "_recipe",
    "LayerRecipe": "_recipe",
    # _transformer: features without a store
    "FeatureExtractor": "_transformer",
    # _sources, _folder: where images come from
    "ImageSource": "_image_source",
    "FileSource": "_image_source",
    "InMemorySource": "_image_source",
    "open_source": "_sources",
    "COMPRESSIONS": "_config",
    "DECODERS": "_config",
    "ExtractConfig": "_config",
    "ExtractResult": "_config",
    "ENGINES": "_config",
    "WorkerThroughput": "_config",
    "default_store_path": "_config",
    "format_extraction": "_config",
    # _autotune: how the network runs (images per pass, memory layout)
    "ForwardChoice": "_autotune",
    "cache_dir": "_autotune",
    "candidate_configs": "_autotune",
    "choose_forward_config": "_autotune",
    "default_forward_config": "_autotune",
    "measure_candidates": "_autotune",
    "recorded_forward_config": "_autotune",
    # _gpu_decode: JPEGs decoded on the GPU, the CPU as the fallback
    "JpegHeader": "_gpu_decode",
    "read_jpeg_header": "_gpu_decode",
    "EncodedBatch": "_gpu_decode",
    "EncodedImageDataset": "_gpu_decode",
    "collate_encoded": "_gpu_decode",
    "GpuJpegDecoder": "_gpu_decode",
    "decode_jpegs_on_gpu": "_gpu_decode",
    "gpu_decoding_available": "_gpu_decode",
    "resolve_decode": "_gpu_decode",
    # _engine: the run
    "extract_features": "_engine",
    # _device
    "autocast": "_device",
    "resolve_device": "_device",
    # _network: layer plan, truncated graph
    "CPU_FORWARD_BYTES": "_network",
    "LAYOUTS": "_network",
    "ForwardConfig": "_network",
    "default_layout": "_network",
    "layouts_for": "_network",
    "LayerPlan": "_network",
    "TruncatedNetwork": "_network",
    "FeatureNetwork": "_network",
    "build_network": "_network",
    "probe_layers": "_network",
    "prepare_extractor": "_network",
    # _loader: the input pipeline
    "WORKER_NICENESS": "_loader",
    "BatchJoiner": "_loader",
    "ImageLoader": "_loader",
    "DecodePool": "_loader",
    "default_workers": "_loader",
    # _allocator, _onednn: CPU tuning
    "reuse_freed_memory": "_allocator",
    "BlockedConv2d": "_onednn",
    "blocked_layout": "_onednn",
    # _images
    "IMAGE_EXTENSIONS": "_images",
    "MAX_IMAGE_PIXELS": "_images",
    "SPLIT_FOLDERS": "_folder",
    "split_of_folder": "_folder",
    "ImageBatch": "_images",
    "ImageDataset": "_images",
    "ImageDecodeError": "_images",
    "collate_images": "_images",
    "discover_images": "_folder",
    "load_image": "_images",
    # _layers
    "LayerIndex": "_layers",
    "GraphLayerIndex": "_layers",
    "layer_index": "_layers",
    "LayerInfo": "_layers",
    "parameters_up_to": "_layers",
    # _models, _model_sources, _weights
    "LoadedModel": "_models",
    "read_torch_state_dict": "_weights",
    "read_safetensors": "_weights",
    "check_state_dict": "_weights",
    # _preprocessing: the weights' recipe and the user's changes to it (no torch)
    "Preprocessing": "_preprocessing",
    "PreprocessingOptions": "_preprocessing",
    "INTERPOLATIONS": "_preprocessing",
    "CHANNEL_ORDERS": "_preprocessing",
    "PIXEL_RANGES": "_preprocessing",
    "RESIZE_MODES": "_preprocessing",
    "CAFFE_PREPROCESSING": "_preprocessing",
    "read_sidecar": "_preprocessing",
    "sidecar_path": "_preprocessing",
    # _timm: timm/<architecture> models
    "TIMM_PREFIX": "_timm",
    "TimmNetwork": "_timm",
    "TimmLayerIndex": "_timm",
    "is_timm_model": "_timm",
    "list_timm_architectures": "_timm",
    "timm_preprocessing": "_timm",
    "hub_cache_dir": "_timm",
    # _keras: Keras applications VGG weights
    "keras_layer_names": "_keras",
    "keras_conv_to_torch": "_keras",
    "keras_dense_to_torch": "_keras",
    "keras_vgg_state_dict": "_keras",
    "load_keras_vgg": "_keras",
    # _catalog: the models and layers commands
    "MODEL_SOURCES": "_config",
    "ModelEntry": "_catalog",
    "ModelCatalog": "_catalog",
    "list_models": "_catalog",
    "format_models": "_catalog",
    "LayerListing": "_catalog",
    "list_layers": "_catalog",
    "format_layers": "_catalog",
    "check_model_name": "_models",
    "list_model_names": "_torchvision",
    "load_model": "_models",
    "weights_cache_path": "_torchvision",
    "weights_label": "_models",
    "sha256_file": "_weights",
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
