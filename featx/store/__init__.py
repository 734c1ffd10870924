"""Feature stores: the HDF5 schema (format 1), reading, crash-safe writing, export and description.

This package is the only one that imports h5py; it never imports torch, so
tools that only read stores start fast.

Modules (private; their public names are exported here):

==============  ================================================================
``_schema``     format version, identity keys, :class:`LayerSpec`, attribute and string helpers
``_identity``   :func:`identity_differences`, the one comparison of configurations
``_reader``     :class:`FeatureStore`, :func:`open_store`
``_writer``     :class:`StoreWriter`: planning and identity checks, add, commit, finish
``_parts``      part files of an unfinished extraction
``_index``      the store file while a run goes: virtual datasets over the parts
``_assembly``   the final, contiguous store file
``_atomic``     files that appear whole or not at all
``_netcdf``     dimension scales, so that xarray and netCDF label the axes
``_export``     npz, Parquet and CSV
``_info``       the text of ``info``
==============  ================================================================
"""

from ._export import EXPORT_FORMATS, ExportResult, export_store, format_export
from ._identity import IDENTITY_RTOL, identity_differences
from ._info import describe_store, format_store_info
from ._reader import FeatureStore, open_store
from ._schema import (
    FORMAT_VERSION,
    IDENTITY_KEYS,
    LAYER_IDENTITY_KEYS,
    SPLIT_NAMES,
    LayerSpec,
    parts_dir,
)
from ._weights import WEIGHTS_KINDS, file_weights_label, parse_weights_label
from ._writer import StoreWriter

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
    "identity_differences",
    "IDENTITY_RTOL",
    "EXPORT_FORMATS",
    "ExportResult",
    "export_store",
    "format_export",
    "describe_store",
    "format_store_info",
    "WEIGHTS_KINDS",
    "file_weights_label",
    "parse_weights_label",
]
