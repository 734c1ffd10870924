"""The end of an extraction: the parts copied into one contiguous, chunked store file.

:func:`write_final_store` writes what a :class:`~._plan.StorePlan` asks for: a
new store, a complete store with layers added, or a complete store updated to
a grown or shrunk data folder.  The new file is written under a temporary name
and renamed over the index (:func:`._atomic.write_atomically`), so a run killed
during assembly leaves the index, and the same command assembles again.
Feature rows are copied in blocks of bounded size: memory does not grow with
the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreMismatchError, message, option
from ._atomic import write_atomically
from ._checksums import BlockChecksums, checksum_rows
from ._netcdf import DIMENSION_ATTRS, label_dimensions
from ._parts import Part, part_indices, read_samples
from ._plan import StorePlan
from ._schema import (
    RECIPE_ATTR,
    LayerSpec,
    SampleTable,
    attr_value,
    is_layer,
    read_strings,
    rows_per_chunk,
    samples_meta,
    set_attrs,
    store_attrs,
    write_samples,
)

__all__ = [
    "RowSources",
    "copy_layer",
    "fill_extended_store",
    "fill_new_store",
    "fill_updated_store",
    "write_final_store",
]

# Bytes of one layer's rows read from a part and written at once.
_COPY_BYTES = 64 << 20


def _create_layer(f: h5py.File, spec: LayerSpec, n_rows: int, compression: str | None) -> tuple[h5py.Dataset, int]:
    """The empty ``/features/<spec.name>`` of a final store, and the rows copied into it at once.

    The caller feeds every row it writes, in order, to a :func:`_checksums_for` and records them with
    :func:`_record_checksums`.
    """
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


def _checksums_for(ds: h5py.Dataset) -> BlockChecksums:
    return BlockChecksums(checksum_rows(ds.shape[0], ds.shape[1], ds.dtype.itemsize))


def _write_rows(ds: h5py.Dataset, rows: slice, values: np.ndarray, checksums: BlockChecksums) -> None:
    """Write *values* into *rows* of the layer, and hash them as stored (the rows come in order)."""
    values = np.ascontiguousarray(values, dtype=ds.dtype)
    ds[rows] = values
    checksums.update(values)


def _record_checksums(ds: h5py.Dataset, checksums: BlockChecksums) -> None:
    if ds.shape[0]:
        set_attrs(ds, checksums.attrs())


def copy_layer(f: h5py.File, spec: LayerSpec, parts: Sequence[Part], n_rows: int, compression: str | None) -> None:
    """Create ``/features/<spec.name>`` in *f* and copy the rows of *parts* into it, block by block, with checksums."""
    ds, block = _create_layer(f, spec, n_rows, compression)
    checksums = _checksums_for(ds)
    offset = 0
    for part in parts:
        with h5py.File(part.path, "r") as src:
            source = src["features"][spec.name]
            for a in range(0, part.rows, block):
                b = min(a + block, part.rows)
                _write_rows(ds, slice(offset + a, offset + b), source[a:b], checksums)
        offset += part.rows
    _record_checksums(ds, checksums)


def fill_new_store(
    f: h5py.File,
    *,
    parts: Sequence[Part],
    table: SampleTable,
    layers: Sequence[LayerSpec],
    root_attrs: Mapping[str, Any],
    classes: Sequence[str],
    compression: str | None,
) -> None:
    """Write a complete store of *layers* from *parts* into the new file *f*."""
    set_attrs(f, root_attrs)
    write_samples(f, table, classes)
    f.create_group("features")
    for spec in layers:
        copy_layer(f, spec, parts, len(table.ids), compression)
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
) -> None:
    """Write into *f* the complete store at *old_path* plus the new *layers* from *parts*.

    *recipe*, the extending run's record of every layer of the store (opaque
    here), replaces the old store's.
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
    for spec in layers:
        copy_layer(f, spec, parts, n_rows, compression)
    set_attrs(f, {"modified_utc": modified_utc, RECIPE_ATTR: recipe})
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
                checksums = _checksums_for(ds)
                for part, src_row, row, count in runs:  # in row order
                    source = sources_files[part + 1]["features"][spec.name]
                    for a in range(0, count, block):
                        b = min(a + block, count)
                        _write_rows(ds, slice(row + a, row + b), source[src_row + a : src_row + b], checksums)
                _record_checksums(ds, checksums)
        finally:
            for source_file in sources_files[1:]:
                source_file.close()
    label_dimensions(f)


def write_final_store(
    path: Path,
    *,
    plan: StorePlan,
    parts: Sequence[Part],
    samples: Any,
    meta: Mapping[str, Any],
    compression: str | None,
) -> None:
    """Replace the file at *path* by the finished store that *plan* asks for, from its committed *parts*.

    Parameters
    ----------
    path : Path
        The store file: the index of a new store, or the complete store that
        layers are added to or that is updated.
    plan : StorePlan
    parts : sequence of Part
        Every committed part of the run, in order.
    samples : ImageCollection-like
        ``ids``, ``labels``, ``splits`` and ``classes`` of every candidate.
    meta : mapping
        The root attributes of the run (``created_utc`` is the modification
        time of a store that layers are added to or that is updated).
    compression : {None, 'gzip', 'lzf'}

    Raises
    ------
    StoreMismatchError
        The new layers have other rows than the store they are added to.
    """
    done, candidates = (parts[-1].stop if parts else 0), len(samples.ids)
    if plan.update is not None:
        sources, table = _update_rows(plan, parts, samples)
        with h5py.File(path, "r") as f:
            created = attr_value(f.attrs.get("created_utc"))
        attrs = {
            **store_attrs(meta, complete=True, rows=len(table.ids), candidates_done=done, candidates=candidates),
            "created_utc": created,
            "modified_utc": meta.get("created_utc"),
        }
        write_atomically(
            path,
            lambda f: fill_updated_store(
                f, old_path=path, parts=parts, sources=sources, table=table, layers=plan.todo,
                root_attrs=attrs, classes=samples.classes, compression=compression,
            ),
        )
        return
    table = read_samples(parts)
    if plan.extends:
        with h5py.File(path, "r") as old:
            old_ids = list(read_strings(old["samples/id"]))
        if old_ids != table.ids:
            raise StoreMismatchError(
                message(
                    f"the new layers of '{path}' have {len(table.ids)} rows, the store has {len(old_ids)} "
                    "(images decoded differently this time)",
                    hint=f"use {option('overwrite', True)} to re-extract everything",
                )
            )
        write_atomically(
            path,
            lambda f: fill_extended_store(
                f, old_path=path, parts=parts, n_rows=len(table.ids), layers=plan.todo,
                modified_utc=meta.get("created_utc"), recipe=meta.get(RECIPE_ATTR), compression=compression,
            ),
        )
    else:
        attrs = store_attrs(meta, complete=True, rows=len(table.ids), candidates_done=done, candidates=candidates)
        write_atomically(
            path,
            lambda f: fill_new_store(
                f, parts=parts, table=table, layers=plan.todo, root_attrs=attrs, classes=samples.classes,
                compression=compression,
            ),
        )


def _update_rows(plan: StorePlan, parts: Sequence[Part], samples: Any) -> tuple[RowSources, SampleTable]:
    """The rows of the updated store in sorted-id order, where each comes from, and its sample table."""
    ids, labels, splits = samples.ids, np.asarray(samples.labels, dtype=np.int32), samples.splits
    in_part: dict[int, tuple[int, int]] = {}
    for number, indices in enumerate(part_indices(parts)):
        for row, candidate in enumerate(indices.tolist()):
            in_part[candidate] = (number, row)
    chosen, part_of, row_of = [], [], []
    for candidate, image_id in enumerate(ids):
        if image_id in plan.kept_rows:
            chosen.append(candidate)
            part_of.append(-1)
            row_of.append(plan.kept_rows[image_id])
        elif candidate in in_part:
            chosen.append(candidate)
            part_of.append(in_part[candidate][0])
            row_of.append(in_part[candidate][1])
    failures = read_samples(parts)
    table = SampleTable(
        ids=[ids[i] for i in chosen],
        labels=labels[np.asarray(chosen, dtype=np.int64)] if chosen else np.empty(0, dtype=np.int32),
        splits=[splits[i] for i in chosen],
        failed_ids=failures.failed_ids,
        failed_reasons=failures.failed_reasons,
        meta=samples_meta(samples, chosen),
    )
    return RowSources(np.asarray(part_of, dtype=np.int64), np.asarray(row_of, dtype=np.int64)), table
