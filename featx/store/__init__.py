"""Feature stores: the HDF5 schema (format 1), reading, crash-safe writing, export and description.

This package is the only one that imports h5py; it never imports torch, so
tools that only read stores start fast.

Modules (private; their public names are exported here):

==============  ================================================================
``_schema``     format version, identity keys, :class:`LayerSpec`, attribute and string helpers
``_identity``   :func:`identity_differences`, the one comparison of configurations
``_reader``     :class:`FeatureStore`, :func:`open_store`
``_writer``     :class:`StoreWriter`: planning and identity checks, add, commit, finish
``_recorded``   :func:`recorded_attrs`: what an earlier run recorded (store file or parts)
``_parts``      part files of an unfinished extraction, each with a checksum
``_lock``       one writer per store: the advisory lock ``<store>.lock``
``_space``      free space before a run, one-line errors when a write fails
``_index``      the store file while a run goes: virtual datasets over the parts
``_assembly``   the final, contiguous store file
``_atomic``     files that appear whole or not at all
``_netcdf``     dimension scales, so that xarray and netCDF label the axes
``_export``     npz, Parquet and CSV
``_info``       the text of ``info``
``_keras_file`` Keras weights files (HDF5): their layers and arrays, for the extraction side
==============  ================================================================
"""

from ._export import EXPORT_FORMATS, ExportResult, export_store, format_export
from ._identity import IDENTITY_RTOL, identity_differences
from ._info import describe_store, format_store_info
from ._keras_file import KerasWeights, is_keras_weights_file, read_keras_weights
from ._lock import StoreLock, lock_path, lock_store
from ._reader import FeatureStore, open_store
from ._recorded import recorded_attrs
from ._schema import (
    FORMAT_VERSION,
    IDENTITY_KEYS,
    LAYER_IDENTITY_KEYS,
    SPLIT_NAMES,
    LayerSpec,
    parts_dir,
)
from ._weights import WEIGHTS_KINDS, describe_weights, file_weights_label, parse_weights_label, weights_identity
from ._writer import StoreUpdate, StoreWriter

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT_VERSION",
    "IDENTITY_KEYS",
    "IDENTITY_RTOL",
    "LAYER_IDENTITY_KEYS",
    "SPLIT_NAMES",
    "WEIGHTS_KINDS",
    "ExportResult",
    "FeatureStore",
    "KerasWeights",
    "LayerSpec",
    "StoreLock",
    "StoreUpdate",
    "StoreWriter",
    "describe_store",
    "describe_weights",
    "export_store",
    "file_weights_label",
    "format_export",
    "format_store_info",
    "identity_differences",
    "is_keras_weights_file",
    "lock_path",
    "lock_store",
    "open_store",
    "parse_weights_label",
    "parts_dir",
    "read_keras_weights",
    "recorded_attrs",
    "weights_identity",
]
