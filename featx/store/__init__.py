"""Feature stores: the HDF5 schema (format 1), reading, crash-safe writing, export and description.

This package is the only one that imports h5py; it never imports torch, so
tools that only read stores start fast.

Modules (private; their public names are exported here):

==============  ================================================================
``_schema``     format version, identity keys, :class:`LayerSpec`, attribute and string helpers
``_identity``   :func:`identity_differences`, the one comparison of configurations, and
                :class:`StoreIdentity`, what the writer asks about it
``_reader``     :class:`FeatureStore`, :func:`open_store`
``_plan``       :class:`StorePlan`: new store, resume, layers added, update, or nothing to do
``_writer``     :class:`StoreWriter`: open (lock, plan), add, commit, finish
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
``_weights``    weights labels and what makes two weights the same
``_keras_file`` Keras weights files (HDF5): their layers and arrays, for the extraction side
==============  ================================================================
"""

from ._export import EXPORT_FORMATS, ExportResult, export_store, format_export
from ._identity import AttributeIdentity, StoreIdentity, identity_differences
from ._info import describe_store
from ._keras_file import is_keras_weights_file, read_keras_weights
from ._lock import lock_store
from ._plan import StorePlan, StoreUpdate
from ._reader import FeatureStore, open_store
from ._recorded import recorded_attrs
from ._schema import (
    FORMAT_VERSION,
    LAYER_IDENTITY_KEYS,
    RECIPE_ATTR,
    SPLIT_NAMES,
    LayerSpec,
    parts_dir,
)
from ._weights import (
    WEIGHTS_KINDS,
    describe_weights,
    file_weights_label,
    parse_weights_label,
    sha256_file,
    weights_identity,
)
from ._writer import StoreWriter

__all__ = [
    "AttributeIdentity",
    # reading
    "open_store",
    "FeatureStore",
    "describe_store",
    "export_store",
    "format_export",
    "ExportResult",
    "EXPORT_FORMATS",
    # writing (the extraction side)
    "StoreWriter",
    "StorePlan",
    "StoreUpdate",
    "StoreIdentity",
    "RECIPE_ATTR",
    "LayerSpec",
    "lock_store",
    "recorded_attrs",
    "parts_dir",
    # what makes features the same
    "LAYER_IDENTITY_KEYS",
    "identity_differences",
    "WEIGHTS_KINDS",
    "describe_weights",
    "file_weights_label",
    "parse_weights_label",
    "sha256_file",
    "weights_identity",
    # Keras weights files, read for the extraction side
    "is_keras_weights_file",
    "read_keras_weights",
    # the format
    "FORMAT_VERSION",
    "SPLIT_NAMES",
]
