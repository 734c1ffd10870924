"""Feature stores: the HDF5 schema (format 1), reading, crash-safe writing, export and description.

This package is the only one that imports h5py; it never imports torch, so
tools that only read stores start fast.
"""

from ._export import EXPORT_FORMATS, ExportResult, export_store
from ._info import describe_store, format_store_info
from ._store import (
    FORMAT_VERSION,
    IDENTITY_KEYS,
    LAYER_IDENTITY_KEYS,
    SPLIT_NAMES,
    FeatureStore,
    LayerSpec,
    StoreWriter,
    open_store,
    parts_dir,
)

__all__ = [
    "FORMAT_VERSION",
    "IDENTITY_KEYS",
    "LAYER_IDENTITY_KEYS",
    "SPLIT_NAMES",
    "FeatureStore",
    "LayerSpec",
    "StoreWriter",
    "open_store",
    "parts_dir",
    "EXPORT_FORMATS",
    "ExportResult",
    "export_store",
    "describe_store",
    "format_store_info",
]
