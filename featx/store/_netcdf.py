"""Dimension scales, the netCDF-4 way, so that xarray, netCDF libraries and MATLAB label a store's axes."""

from __future__ import annotations

import h5py
import numpy as np

from ._schema import is_layer

__all__ = ["DIMENSION_ATTRS", "label_dimensions"]

# Attributes of the HDF5 dimension-scale API.  They hold object references into
# their own file, so a dataset copied into another file is copied without them
# and labelled again.
DIMENSION_ATTRS = ("CLASS", "NAME", "REFERENCE_LIST", "DIMENSION_LIST")
# netCDF-4's mark of a dimension scale that has no values of its own.
_NOT_A_VARIABLE = "This is a netCDF dimension but not a netCDF variable."


def label_dimensions(f: h5py.File) -> None:
    """Attach HDF5 dimension scales, the netCDF-4 way, to a finished store.

    With them, xarray (``engine="h5netcdf"``), netCDF libraries and MATLAB see
    ``/features/<layer>`` as an ``(id, <layer>_column)`` array labelled by sample
    id, and ``/samples`` and ``/failed`` as tables indexed by ``id``.  netCDF
    looks a variable's dimensions up in its own group and the group's
    ancestors only, so ``/features/id`` is a hard link to ``/samples/id`` (the
    same object, not a copy), and each layer gets a scale without values for
    its column axis (no storage is allocated for it).  Objects in ``/features``
    that are not layers carry no ``node`` attribute.

    Parameters
    ----------
    f : h5py.File
        A store being written, with its samples, classes, failures and layers.
    """
    sample_id = f["samples/id"]
    sample_id.make_scale("id")
    for name in ("label", "split"):
        f["samples"][name].dims[0].attach_scale(sample_id)
    f["classes"].make_scale("classes")
    failed_id = f["failed/id"]
    failed_id.make_scale("id")
    f["failed/reason"].dims[0].attach_scale(failed_id)
    features = f["features"]
    layers = [name for name in features if is_layer(features[name])]
    if "id" in features:  # a layer named 'id': leave its axes unnamed rather than guess
        return
    features["id"] = sample_id
    for name in layers:
        dataset = features[name]
        column_name = f"{name}_column"
        if column_name in features:
            continue
        column = features.create_dataset(column_name, shape=(dataset.shape[1],), dtype=np.float32)
        # netCDF-C writes the length right-aligned in 10 characters after the mark.
        column.make_scale(f"{_NOT_A_VARIABLE}{dataset.shape[1]:10d}")
        dataset.dims[0].attach_scale(sample_id)
        dataset.dims[1].attach_scale(column)
