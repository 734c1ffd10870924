"""The end of an extraction: the parts copied into one contiguous, chunked store file.

The new file is written under a temporary name and renamed over the index
(:func:`._atomic.write_atomically`), so a run killed during assembly leaves the
index, and the same command assembles again.  Feature rows are copied in
blocks of bounded size: memory does not grow with the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._netcdf import DIMENSION_ATTRS, label_dimensions
from ._parts import Part
from ._schema import (
    LayerSpec,
    SampleTable,
    is_layer,
    rows_per_chunk,
    set_attrs,
    write_samples,
)

__all__ = ["RowSources", "copy_layer", "fill_extended_store", "fill_new_store", "fill_updated_store"]

# Bytes of one layer's rows read from a part and written at once.
_COPY_BYTES = 64 << 20
# Called after each layer is copied; see StoreWriter.on_final_layer.
LayerHook = Callable[[str], None] | None


def _create_layer(f: h5py.File, spec: LayerSpec, n_rows: int, compression: str | None) -> tuple[h5py.Dataset, int]:
    """The empty ``/features/<spec.name>`` of a final store, and the rows copied into it at once."""
    dtype = np.dtype(spec.dtype)
    ds = f.create_dataset(
        f"features/{spec.name}",
        shape=(n_rows, spec.dim),
        dtype=dtype,
        chunks=(min(max(n_rows, 1), rows_per_chunk(spec.dim, dtype.itemsize)), spec.dim) if n_rows else None,
        compression=compression if n_rows else None,
    )
    set_attrs(ds, spec.attrs())
    return ds, max(1, _COPY_BYTES // max(1, spec.dim * dtype.itemsize))


def copy_layer(f: h5py.File, spec: LayerSpec, parts: Sequence[Part], n_rows: int, compression: str | None) -> None:
    """Create ``/features/<spec.name>`` in *f* and copy the rows of *parts* into it, block by block."""
    ds, block = _create_layer(f, spec, n_rows, compression)
    offset = 0
    for part in parts:
        with h5py.File(part.path, "r") as src:
            source = src["features"][spec.name]
            for a in range(0, part.rows, block):
                b = min(a + block, part.rows)
                ds[offset + a : offset + b] = source[a:b]
        offset += part.rows


def _copy_layers(
    f: h5py.File, layers: Sequence[LayerSpec], parts: Sequence[Part], n_rows: int, compression: str | None, hook: LayerHook
) -> None:
    for spec in layers:
        copy_layer(f, spec, parts, n_rows, compression)
        if hook is not None:
            hook(spec.name)


def fill_new_store(
    f: h5py.File,
    *,
    parts: Sequence[Part],
    table: SampleTable,
    layers: Sequence[LayerSpec],
    root_attrs: Mapping[str, Any],
    classes: Sequence[str],
    compression: str | None,
    hook: LayerHook = None,
) -> None:
    """Write a complete store of *layers* from *parts* into the new file *f*."""
    set_attrs(f, root_attrs)
    write_samples(f, table, classes)
    f.create_group("features")
    _copy_layers(f, layers, parts, len(table.ids), compression, hook)
    label_dimensions(f)


def fill_extended_store(
    f: h5py.File,
    *,
    old_path: Path,
    parts: Sequence[Part],
    n_rows: int,
    layers: Sequence[LayerSpec],
    modified_utc: str | None,
    compression: str | None,
    recipe: str | None = None,
    hook: LayerHook = None,
) -> None:
    """Write into *f* the complete store at *old_path* plus the new *layers* from *parts*.

    *recipe*, the extending run's record of every layer (opaque here), replaces the old one.
    """
    with h5py.File(old_path, "r") as old:
        # Copied without the dimension-scale attributes: their object
        # references point into the old file; label_dimensions redoes them.
        for key in ("samples", "classes", "failed"):
            old.copy(old[key], f, name=key, without_attrs=True)
        features = f.create_group("features")
        for name, source in old["features"].items():
            if is_layer(source):
                old.copy(source, features, name=name, without_attrs=True)
                set_attrs(features[name], {k: v for k, v in source.attrs.items() if k not in DIMENSION_ATTRS})
        set_attrs(f, {k: v for k, v in old.attrs.items()})
    _copy_layers(f, layers, parts, n_rows, compression, hook)
    set_attrs(f, {"modified_utc": modified_utc, "recipe": recipe})
    label_dimensions(f)


@dataclass
class RowSources:
    """Where each row of an updated store comes from: the old store or a part.

    Attributes
    ----------
    part : ndarray of int64, (N,)
        ``-1`` for a row kept from the old store, else the number of the part that holds it.
    row : ndarray of int64, (N,)
        The row in the old store or in that part.
    """

    part: np.ndarray
    row: np.ndarray

    def runs(self) -> list[tuple[int, int, int, int]]:
        """``(part, first source row, first row, rows)`` of each run of consecutive rows from one source."""
        n = len(self.part)
        if not n:
            return []
        breaks = np.flatnonzero((self.part[1:] != self.part[:-1]) | (self.row[1:] != self.row[:-1] + 1)) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [n]])
        return [(int(self.part[a]), int(self.row[a]), int(a), int(b - a)) for a, b in zip(starts, stops)]


def fill_updated_store(
    f: h5py.File,
    *,
    old_path: Path,
    parts: Sequence[Part],
    sources: RowSources,
    table: SampleTable,
    layers: Sequence[LayerSpec],
    root_attrs: Mapping[str, Any],
    classes: Sequence[str],
    compression: str | None,
    hook: LayerHook = None,
) -> None:
    """Write into *f* the store at *old_path* updated to a grown or shrunk data folder.

    Rows of images still present are copied from the old store, rows of new
    images from *parts*, in the order *sources* gives (sorted ids), run by run
    and block by block: memory does not grow with the store.
    """
    set_attrs(f, root_attrs)
    write_samples(f, table, classes)
    f.create_group("features")
    runs = sources.runs()
    n_rows = len(table.ids)
    with h5py.File(old_path, "r") as old:
        sources_files = [old, *(h5py.File(part.path, "r") for part in parts)]
        try:
            for spec in layers:
                ds, block = _create_layer(f, spec, n_rows, compression)
                for part, src_row, row, count in runs:
                    source = sources_files[part + 1]["features"][spec.name]
                    for a in range(0, count, block):
                        b = min(a + block, count)
                        ds[row + a : row + b] = source[src_row + a : src_row + b]
                if hook is not None:
                    hook(spec.name)
        finally:
            for source_file in sources_files[1:]:
                source_file.close()
    label_dimensions(f)
