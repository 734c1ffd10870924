"""Export a feature store for tools that do not read HDF5: npz, Parquet, CSV.

Every format holds, row for row, the sample ids, labels, class names and
splits, and the features of the chosen layers.  Features are read and written
in row blocks of bounded size, so memory does not grow with the store.

==========  ==================================================================
npz         NumPy zip: ``id``, ``label``, ``split`` (N,), ``classes`` (C,),
            one ``(N, D)`` array per layer under its name, and ``meta``, a JSON
            string of the store's attributes.  Readable without pickle:
            ``numpy.load(path, allow_pickle=False)``.
parquet     One row per sample: ``id``, ``label``, ``class``, ``split``, then
            ``<layer>_0 .. <layer>_{D-1}`` (float32), one row group per block;
            the store's attributes as JSON under the ``featx`` schema key.
csv         The same columns as Parquet; floats printed with ``%.9g``, enough
            digits to read back every float32 value exactly.  A text cell (id,
            class, column name) that starts with ``=``, ``+``, ``-``, ``@``, a
            tab, a carriage return or a ``'`` is written with a ``'`` in front
            (:func:`featx.formatting.csv_text`), so that a spreadsheet shows it
            as text instead of running it as a formula (OWASP's advice against
            CSV injection: ids and class names come from file names anyone can
            choose).  npz and Parquet keep every value as it is.
==========  ==================================================================
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExportError, choices, message, option
from ..formatting import csv_text, csv_text_cells, format_bytes
from ..paths import check_writable_file, remove_stale_temporaries, temporary_path
from ._reader import FeatureStore, open_store

__all__ = ["EXPORT_FORMATS", "ExportResult", "export_store", "format_export"]

log = logging.getLogger("featx")

# Bytes of features held in memory at once (all exported layers together).
_BLOCK_BYTES = 32 << 20
_SAMPLE_COLUMNS = ("id", "label", "class", "split")
_NPZ_RESERVED = ("id", "label", "split", "classes", "meta")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes
    ----------
    path : Path
        The file written.
    format : str
        ``npz``, ``parquet`` or ``csv``.
    rows : int
        Samples exported.
    layers : dict of str -> int
        Layers exported and their widths D.
    seconds : float
        Wall time.
    """

    path: Path
    format: str
    rows: int
    layers: dict[str, int]
    seconds: float

    @property
    def bytes(self) -> int:
        """Size of the file written."""
        return self.path.stat().st_size


def format_export(result: ExportResult) -> str:
    """One line that says what an export wrote, as ``featx export`` prints it.

    Examples
    --------
    >>> format_export(result)  # doctest: +SKIP
    'wrote f.npz (npz, 2.1 MiB): 11 rows; layers conv5 (512), penultimate (512); 0.1 s'
    """
    layers = ", ".join(f"{name} ({dim:,})" for name, dim in result.layers.items())
    return (
        f"wrote {result.path} ({result.format}, {format_bytes(result.bytes)}): {result.rows:,} rows; "
        f"layers {layers}; {result.seconds:.1f} s"
    )


class _Source:
    """The rows of a store to export, read in blocks of all chosen layers at once."""

    def __init__(self, store: FeatureStore, layers: Sequence[str], block_rows: int | None) -> None:
        self.store = store
        self.layers = list(layers)
        self.dims = {name: store.layer_info(name)["shape"][1] for name in self.layers}
        width = max(1, sum(self.dims.values()))
        self.block_rows = block_rows or max(1, _BLOCK_BYTES // (4 * width))
        self.classes = np.array([*store.classes, ""], dtype=object)[store.labels]

    def __len__(self) -> int:
        return len(self.store)

    def blocks(self) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
        # One empty block for an empty store, so that headers are still written.
        for start in range(0, max(len(self), 1), self.block_rows):
            rows = slice(start, min(start + self.block_rows, len(self)))
            yield rows, {name: self.store.features(name, rows) for name in self.layers}

    def columns(self) -> list[str]:
        return [f"{name}_{j}" for name in self.layers for j in range(self.dims[name])]

    def meta_json(self) -> str:
        meta = dict(self.store.meta)
        meta["layers"] = {name: self.store.layer_info(name) for name in self.layers}
        return json.dumps(meta, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


# --------------------------------------------------------------------------- writers


def _npy_member(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fp:
        np.lib.format.write_array(fp, array, allow_pickle=False)


def _write_npz(source: _Source, path: Path) -> None:
    clash = sorted(set(source.layers) & set(_NPZ_RESERVED))
    if clash:
        raise ExportError(
            message(
                f"layer name(s) {', '.join(clash)} clash with the npz arrays {', '.join(_NPZ_RESERVED)}",
                hint="export those layers as parquet or csv",
            )
        )
    store = source.store
    # Fixed-width unicode, not object arrays: numpy.load then needs no pickle.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _npy_member(zf, "id", np.array(store.ids, dtype=str))
        _npy_member(zf, "label", np.asarray(store.labels, dtype=np.int32))
        _npy_member(zf, "split", np.array(store.splits, dtype=str))
        _npy_member(zf, "classes", np.array(store.classes, dtype=str))
        _npy_member(zf, "meta", np.array(source.meta_json()))
        for name in source.layers:
            dtype = np.dtype(store.layer_info(name)["stored_dtype"])
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": (len(source), source.dims[name]),
            }
            # The .npy header, then the rows as they come: the array is never whole in memory.
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fp:
                np.lib.format.write_array_header_1_0(fp, header)
                for _, block in store.iter_features(name, source.block_rows):
                    fp.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def _sample_arrays(source: _Source, rows: slice) -> list[np.ndarray]:
    store = source.store
    return [store.ids[rows], store.labels[rows], source.classes[rows], store.splits[rows]]


def _write_parquet(source: _Source, path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(
            message(
                f"{option('format', 'parquet')} needs the pyarrow package, which is not installed",
                hint="install it with `pip install pyarrow`, or export as npz or csv",
            )
        ) from None
    fields = [pa.field("id", pa.string()), pa.field("label", pa.int32()), pa.field("class", pa.string()),
              pa.field("split", pa.string())]
    fields += [pa.field(column, pa.float32()) for column in source.columns()]
    schema = pa.schema(fields, metadata={"featx": source.meta_json()})
    with pq.ParquetWriter(path, schema) as writer:
        for rows, features in source.blocks():
            arrays = [pa.array(a, type=f.type) for a, f in zip(_sample_arrays(source, rows), fields)]
            for name in source.layers:
                # Column j of the block is one Parquet column; a transposed copy makes each contiguous.
                arrays += [pa.array(column) for column in np.ascontiguousarray(features[name].T, dtype=np.float32)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


def _write_csv(source: _Source, path: Path) -> None:
    import pandas as pd

    columns = [csv_text(column) for column in source.columns()]
    with open(path, "w", newline="", encoding="utf-8") as f:
        for rows, features in source.blocks():
            values = np.hstack([features[name] for name in source.layers])
            frame = pd.DataFrame(values, columns=columns)
            for position, (name, array) in enumerate(zip(_SAMPLE_COLUMNS, _sample_arrays(source, rows))):
                frame.insert(position, name, csv_text_cells(array.tolist()) if array.dtype == object else array)
            frame.to_csv(f, header=rows.start == 0, index=False, float_format="%.9g", lineterminator="\n")


EXPORTERS: dict[str, Callable[[_Source, Path], None]] = {
    "npz": _write_npz,
    "parquet": _write_parquet,
    "csv": _write_csv,
}
EXPORT_FORMATS = tuple(EXPORTERS)


# --------------------------------------------------------------------------- entry point


def _format_of(format: str | None, out: Path) -> str:
    if format is None:
        if out.suffix.lstrip(".").lower() not in EXPORTERS:
            raise ExportError(
                message(
                    f"the suffix of '{out}'",
                    allowed=f"{choices(f'.{name}' for name in EXPORTERS)} to name the export format",
                    got=out.suffix,
                    hint=f"rename the file, or pass {option('format', '|'.join(EXPORTERS))}",
                )
            )
        format = out.suffix.lstrip(".").lower()
    if format not in EXPORTERS:
        raise ExportError(message("export format", allowed=choices(EXPORTERS), got=format))
    return format


def export_store(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str | None = None,
    layers: Sequence[str] | None = None,
    overwrite: bool = False,
    block_rows: int | None = None,
) -> ExportResult:
    """Write a store's samples and features as npz, Parquet or CSV.

    Parameters
    ----------
    store_path : path
        The feature store.
    out : path
        File to write; it appears complete or not at all.
    format : {'npz', 'parquet', 'csv'}, optional
        By default from the suffix of *out*.
    layers : sequence of str, optional
        Layers to export (all by default), in this order.
    overwrite : bool
        Replace *out* if it exists.
    block_rows : int, optional
        Rows read and written at once (by default about 32 MiB of features).

    Returns
    -------
    ExportResult
        What was written; :func:`format_export` says it in one line.

    Raises
    ------
    OutputPathError
        *out* cannot be written (a folder, inside a file, a read-only place), is not a
        regular file (``-``, ``/dev/stdout``, a FIFO, a symbolic link), or is the store itself.
    ExportError
        Unknown format, *out* exists, or a layer is requested twice.
    StoreError
        The store cannot be read, or lacks a requested layer.

    Every check is made before anything is read or written.

    Examples
    --------
    >>> result = export_store("features/ants.h5", "ants.parquet", layers=["fc7"])  # doctest: +SKIP
    >>> print(format_export(result))  # doctest: +SKIP
    wrote ants.parquet (parquet, 3.4 MiB): 244 rows; layers fc7 (4,096); 0.3 s
    """
    started = time.perf_counter()
    # Never onto the store itself (by device and inode: a link or another name of it included), nor a device or FIFO.
    out = check_writable_file(out, "out", inputs=[store_path])
    format = _format_of(format, out)
    if out.exists() and not overwrite:
        raise ExportError(
            message(
                "the output file already exists",
                got=out,
                hint=f"pass {option('overwrite', True)} to replace it, or choose another {option('out')}",
            )
        )
    if block_rows is not None and block_rows < 1:
        raise ExportError(message("block_rows", allowed="a positive integer", got=block_rows))
    with open_store(store_path) as store:
        chosen = list(layers) if layers else store.layers
        if not chosen:
            raise ExportError(
                message(f"store '{store.path}' holds no feature layer", hint="extract a layer into it first")
            )
        for name in chosen:
            store.layer_info(name)  # an unknown layer fails here, naming the ones there are
        if len(set(chosen)) != len(chosen):
            raise ExportError(message("layers", allowed="distinct names", got=chosen))
        if not store.complete:
            log.warning(
                f"'{store.path}' is incomplete (its extraction was interrupted): exporting the "
                f"{len(store):,} rows it holds so far"
            )
        source = _Source(store, chosen, block_rows)
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)  # a killed export's leftover (.<name>.tmp-<pid>)
        tmp = temporary_path(out)
        try:
            EXPORTERS[format](source, tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return ExportResult(
            path=out, format=format, rows=len(store), layers=dict(source.dims),
            seconds=time.perf_counter() - started,
        )
