"""The store file while an extraction runs: an index over the committed parts.

After each committed part the store file is replaced (whole, see
:mod:`._atomic`) by an index that holds the samples so far and, for each
``/features/<name>``, an HDF5 virtual dataset stitched from the parts.  So at
any moment the store opens, says ``complete=False`` and serves the rows
extracted so far, to featx and to plain h5py alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._parts import Part
from ._schema import LayerSpec, SampleTable, set_attrs, write_samples

__all__ = ["fill_index"]


def fill_index(
    f: h5py.File,
    *,
    parts_folder: Path,
    parts: Sequence[Part],
    table: SampleTable,
    layers: Sequence[LayerSpec],
    root_attrs: Mapping[str, Any],
    classes: Sequence[str],
) -> None:
    """Write the index of *parts* into the new file *f*.

    Parameters
    ----------
    f : h5py.File
        The file that will replace the store.
    parts_folder : Path
        The folder of the parts, beside the store.
    parts : sequence of Part
        The committed parts, in order.
    table : SampleTable
        Their sample rows (:func:`._parts.read_samples`).
    layers : sequence of LayerSpec
        The layers being extracted.
    root_attrs : mapping
        Root attributes of the store (``complete=False``, ``rows``, ...).
    classes : sequence of str
        ``/classes``.
    """
    set_attrs(f, root_attrs)
    write_samples(f, table, classes)
    features = f.create_group("features")
    for spec in layers:
        layout = h5py.VirtualLayout(shape=(len(table.ids), spec.dim), dtype=np.dtype(spec.dtype))
        offset = 0
        for part in parts:
            if part.rows:
                # Relative to the store's folder, which is where HDF5 looks first.
                source = os.path.join(parts_folder.name, part.path.name)
                layout[offset : offset + part.rows] = h5py.VirtualSource(
                    source, f"features/{spec.name}", shape=(part.rows, spec.dim)
                )
                offset += part.rows
        ds = features.create_virtual_dataset(spec.name, layout, fillvalue=np.nan)
        set_attrs(ds, spec.attrs())
