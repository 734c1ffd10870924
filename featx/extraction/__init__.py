"""Extraction: how a feature is made, where images come from, models and layers, the engines.

The only package that runs a network.  It writes through :mod:`featx.store`
and never imports :mod:`featx.classification`.

Names are loaded on first use (PEP 562): ``from featx.extraction import POOLS``
does not import torch, so the command line can build its choices from the
registries, nor does :class:`ExtractConfig`, :class:`FeatureRecipe` or
:func:`format_extraction`; ``from featx.extraction import extract_features`` does.

Modules (private, as in scikit-learn; a test of one lives in ``tests/extraction``):

- what is asked: ``_recipe`` (:class:`FeatureRecipe`: network, weights,
  preprocessing, layers, precision; JSON; the store's identity), ``_config``
  (the recipe plus the run's options, the result and its summary),
  ``_preprocessing`` (the weights' preprocessing, ``--resize``/``--mean``/...,
  sidecars), ``_pooling``;
- images: ``_image_source`` (the :class:`ImageSource` seam, files and images
  in memory), ``_sources`` (:func:`open_source`: what ``--data`` names),
  ``_folder`` (a class-folder tree, the safe walk), ``_manifest`` (CSV and
  Parquet lists), ``_archive`` (tar archives, WebDataset shards),
  ``_pathlist`` (images at paths and URLs, a bucket's prefix), ``_remote``
  (fsspec: schemes, retried and pipelined reads), ``_listing`` (sorted ids,
  labels, splits of any listing), ``_images`` (decoding);
- networks: ``_models`` (the registries of model sources, weights sources and
  weights formats, and the functions that dispatch through them),
  ``_model_sources`` (what an entry of those registries is), ``_torchvision``,
  ``_timm``, ``_weights`` (state dict files), ``_keras`` (Keras applications
  VGG weights), ``_layers`` (the layer index: names, aliases, shapes),
  ``_catalog`` (the ``models`` and ``layers`` listings), ``_network`` (the
  recipe resolved against the network, the truncated graph), ``_onednn``,
  ``_allocator``, ``_device``;
- running: ``_job`` (the engine interface), ``_engine`` (the extraction and
  the local engine), ``_ray`` and ``_shards`` (the Ray engine), ``_stream``
  (images -> features, batch after batch), ``_loader`` (decoding workers,
  batch joining), ``_gpu_decode`` (nvJPEG batches), ``_autotune`` (images per
  pass and memory layout, chosen, cached, recorded), ``_transformer``
  (:class:`FeatureExtractor`: features in memory).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it
_EXPORTS = {
    # the run: configuration, extraction, result (no torch at import but for extract_features)
    "ExtractConfig": "_config",
    "ExtractResult": "_config",
    "extract_features": "_engine",
    "format_extraction": "_config",
    # how a feature is made
    "FeatureRecipe": "_recipe",
    "LayerRecipe": "_recipe",
    # features without a store: a scikit-learn transformer
    "FeatureExtractor": "_transformer",
    # where images come from
    "ImageSource": "_image_source",
    "open_source": "_sources",
    # models and their layers
    "list_models": "_catalog",
    "format_models": "_catalog",
    "check_model_name": "_models",
    "load_model": "_models",
    "weights_cache_path": "_torchvision",
    "list_layers": "_catalog",
    "format_layers": "_catalog",
    # the registries the command line builds its choices from (no torch)
    "POOLS": "_pooling",
    "PRECISIONS": "_recipe",
    "STORAGE_DTYPES": "_recipe",
    "COMPRESSIONS": "_config",
    "DECODERS": "_config",
    "ENGINES": "_config",
    "MODEL_SOURCES": "_config",
    "INTERPOLATIONS": "_preprocessing",
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
