"""HDF5 feature stores, format 1: the only module that touches h5py.

A store is one HDF5 file (schema in DESIGN.md and the README)::

    /                 attrs: featx_format=1, model, weights, preprocessing, complete, ...
    /samples/id       (N,) UTF-8 str, sorted
    /samples/label    (N,) int32, index into /classes, -1 when unlabelled
    /samples/split    (N,) UTF-8 str
    /classes          (C,) UTF-8 str
    /features/<name>  (N, D) float32 (or float16), chunked along rows
    /failed/id, /failed/reason   (M,) UTF-8 str

Crash safety.  HDF5 files are not crash-consistent: a process killed while
HDF5 metadata is half written can leave a file that no longer opens.  So the
file at a store's path is only ever *replaced whole* (written under a temporary
name, flushed to disk, then renamed over the old one, which is atomic).  While an
extraction runs, rows go to *part files* in ``<store>.parts/``, each also
written under a temporary name and renamed when complete.  After each part the
store file is replaced by an index that holds the samples so far and, for
``/features/*``, HDF5 virtual datasets over the parts: at any moment the store
opens, says ``complete=False`` and serves the rows extracted so far.  When the
run ends the parts are copied into one contiguous, chunked file that replaces
the index, and the parts are deleted.  ``kill -9`` at any point therefore loses
at most the rows of the part being written, and the same command resumes after
the last complete part.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError, StoreMismatchError

__all__ = [
    "FORMAT_VERSION",
    "SPLIT_NAMES",
    "LAYER_IDENTITY_KEYS",
    "IDENTITY_KEYS",
    "LayerSpec",
    "FeatureStore",
    "open_store",
    "StoreWriter",
    "parts_dir",
]

FORMAT_VERSION = 1
# Values of /samples/split other than '' (no split folder).
SPLIT_NAMES = ("train", "val", "test")
STR = h5py.string_dtype("utf-8")
# Root attributes that define "the same configuration": a store made with other
# values cannot be resumed or extended, only replaced (--overwrite).
IDENTITY_KEYS = (
    "model",
    "weights",
    "weights_sha256",
    "seed",
    "image_size",
    "resize",
    "crop",
    "mean",
    "std",
    "interpolation",
    "data_fingerprint",
)
# Per-layer attributes that define the same feature dataset.
LAYER_IDENTITY_KEYS = ("node", "pool", "precision", "dtype")
_PART_NAME = re.compile(r"^part-(\d{6})\.h5$")
_CHUNK_BYTES = 1 << 20
_COPY_BYTES = 64 << 20
# Attributes of the HDF5 dimension-scale API (see _label_dimensions).
_DIMENSION_ATTRS = ("CLASS", "NAME", "REFERENCE_LIST", "DIMENSION_LIST")
# netCDF-4's mark of a dimension scale that has no values of its own.
_NOT_A_VARIABLE = "This is a netCDF dimension but not a netCDF variable."


def parts_dir(path: str | os.PathLike) -> Path:
    """Folder that holds the part files of an unfinished extraction into *path*."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


@dataclass(frozen=True)
class LayerSpec:
    """One feature dataset: what is computed and how it is stored.

    Attributes
    ----------
    name : str
        Dataset name under ``/features`` (the name the user asked for).
    node : str
        torchvision graph node it is read from.
    pool : str
        Pooling applied to the node's output (``'none'`` for 2-D outputs).
    dim : int
        Number of columns D after pooling.
    source_shape : tuple of int
        Shape of one sample's node output before pooling.
    precision : str
        Compute precision: ``fp32``, ``bf16`` or ``fp16``.
    dtype : str
        Storage dtype: ``float32`` or ``float16``.
    """

    name: str
    node: str
    pool: str
    dim: int
    source_shape: tuple[int, ...]
    precision: str = "fp32"
    dtype: str = "float32"

    def attrs(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "pool": self.pool,
            "source_shape": np.asarray(self.source_shape, dtype=np.int64),
            "requested": self.name,
            "precision": self.precision,
            "dtype": self.dtype,
        }


# --------------------------------------------------------------------------- reading


def _strings(dataset: h5py.Dataset) -> np.ndarray:
    return dataset.asstr()[()] if dataset.shape[0] else np.array([], dtype=object)


def _is_layer(obj: Any) -> bool:
    """Whether an object under ``/features`` is a feature dataset (not a dimension scale)."""
    return isinstance(obj, h5py.Dataset) and "node" in obj.attrs


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class FeatureStore:
    """Read access to a feature store.  Use :func:`open_store` to make one.

    Features are read lazily: ``features(name, rows)`` reads only the rows asked
    for, and nothing of the other layers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(
                f"feature store not found: '{self.path}' does not exist; "
                "create it with `run_pipeline.py extract` or check the path"
            )
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"'{self.path}' is not a readable HDF5 feature store ({exc})") from None
        fmt = self._file.attrs.get("featx_format")
        if fmt is None:
            self._file.close()
            raise StoreError(
                f"'{self.path}' is an HDF5 file but not a featx store (no 'featx_format' attribute)"
            )
        if int(fmt) > FORMAT_VERSION:
            self._file.close()
            raise StoreError(
                f"'{self.path}' uses featx store format {int(fmt)}, this featx reads format "
                f"{FORMAT_VERSION} and older; upgrade featx"
            )
        self.meta: dict[str, Any] = {k: _attr_value(v) for k, v in self._file.attrs.items()}
        self.ids: np.ndarray = _strings(self._file["samples/id"])
        self.labels: np.ndarray = self._file["samples/label"][()]
        self.splits: np.ndarray = _strings(self._file["samples/split"])
        self.classes: list[str] = list(_strings(self._file["classes"]))

    # context manager ------------------------------------------------------------
    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"<FeatureStore '{self.path}' {self.meta.get('model')} {len(self)} rows, layers {self.layers}, {state}>"

    # contents ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", False))

    @property
    def layers(self) -> list[str]:
        group = self._file["features"]
        return sorted(name for name in group if _is_layer(group[name]))

    def layer_info(self, name: str) -> dict[str, Any]:
        """Attributes of one feature dataset plus its ``shape`` and ``dtype``."""
        dataset = self._dataset(name)
        info = {k: _attr_value(v) for k, v in dataset.attrs.items() if not k.startswith(("DIMENSION_", "REFERENCE_", "CLASS", "NAME", "_Netcdf"))}
        info.update(shape=tuple(dataset.shape), stored_dtype=str(dataset.dtype))
        return info

    def _dataset(self, name: str) -> h5py.Dataset:
        if name not in self._file["features"] or not _is_layer(self._file["features"][name]):
            raise StoreError(
                f"layer '{name}' is not in store '{self.path}'; it holds {', '.join(self.layers) or 'no layers'}"
            )
        return self._file["features"][name]

    def features(self, name: str, rows: slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Feature matrix of one layer, shape ``(n_rows, D)``.

        Parameters
        ----------
        name : str
            Layer name, one of :attr:`layers`.
        rows : slice, sequence of int or boolean mask, optional
            Rows to read (all by default), in the order given; negative indices
            count from the end, a boolean mask of length N selects rows (e.g.
            ``store.splits == 'train'``).  Only those rows are read from disk.
        """
        dataset = self._dataset(name)
        if rows is None:
            return dataset[()]
        if isinstance(rows, slice):
            return dataset[rows]
        rows = self._row_indices(rows, dataset.shape[0])
        if rows.size == 0:
            return np.empty((0, dataset.shape[1]), dtype=dataset.dtype)
        # h5py wants increasing indices; read sorted unique rows, then reorder.
        unique, inverse = np.unique(rows, return_inverse=True)
        return dataset[unique][inverse]

    def _row_indices(self, rows: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            # Without this, a mask would be read as the indices 0 and 1.
            if rows.shape != (n,):
                raise StoreError(f"a boolean row mask must have one value per row ({n}), got shape {rows.shape}")
            return np.flatnonzero(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise StoreError(f"rows must be integers or a boolean mask, got {rows.dtype} values")
        rows = rows.astype(np.int64).ravel()
        bad = rows[(rows < -n) | (rows >= n)]
        if bad.size:
            raise StoreError(f"row {bad[0]} is out of range: '{self.path}' has {n} rows (0 to {n - 1})")
        return np.where(rows < 0, rows + n, rows)

    def iter_features(self, name: str, batch_rows: int = 4096) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(row_slice, block)`` pairs covering a layer in row order."""
        dataset = self._dataset(name)
        for start in range(0, dataset.shape[0], batch_rows):
            rows = slice(start, min(start + batch_rows, dataset.shape[0]))
            yield rows, dataset[rows]

    @property
    def failed(self):
        """Images that could not be used: a DataFrame with columns ``id`` and ``reason``."""
        import pandas as pd

        group = self._file.get("failed")
        if group is None:
            return pd.DataFrame({"id": [], "reason": []}, dtype=object)
        return pd.DataFrame({"id": _strings(group["id"]), "reason": _strings(group["reason"])})

    def samples(self):
        """Sample table: a DataFrame with ``id``, ``label``, ``class`` and ``split``."""
        import pandas as pd

        names = np.array(list(self.classes) + [""], dtype=object)
        return pd.DataFrame(
            {"id": self.ids, "label": self.labels, "class": names[self.labels], "split": self.splits}
        )

    def to_dataframe(self, name: str):
        """One layer as a DataFrame indexed by sample id.

        Columns are ``label``, ``split`` then ``<name>_0 .. <name>_{D-1}``.
        """
        import pandas as pd

        values = self.features(name)
        columns = [f"{name}_{j}" for j in range(values.shape[1])]
        frame = pd.DataFrame(values, index=pd.Index(self.ids, name="id"), columns=columns)
        frame.insert(0, "split", self.splits)
        frame.insert(0, "label", self.labels)
        return frame

    def size_on_disk(self) -> int:
        """Bytes used by the store file and, while unfinished, its part files."""
        total = self.path.stat().st_size
        parts = parts_dir(self.path)
        if parts.is_dir():
            total += sum(p.stat().st_size for p in parts.iterdir() if p.is_file())
        return total


def open_store(path: str | os.PathLike) -> FeatureStore:
    """Open a feature store for reading.

    Examples
    --------
    >>> with open_store("features/hymenoptera_data/alexnet-none.h5") as store:  # doctest: +SKIP
    ...     X = store.features("fc7")          # (N, 4096) float32
    ...     y = store.labels                   # (N,) int32
    """
    return FeatureStore(path)


# --------------------------------------------------------------------------- writing


def _write_atomically(path: Path, fill) -> None:
    """Create *path* through *fill(h5file)* so that it appears whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        with open(tmp, "rb+") as raw:
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        if value is None:
            continue
        # str subclasses (torch.__version__ is one) would be stored as fixed-width numpy text
        obj.attrs[key] = str(value) if isinstance(value, str) else value


def _str_dataset(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR, shape=(len(values),))


def _rows_per_chunk(dim: int, itemsize: int) -> int:
    return max(1, _CHUNK_BYTES // max(1, dim * itemsize))


@dataclass
class _Part:
    path: Path
    start: int  # first candidate index covered
    stop: int  # one past the last candidate index covered
    rows: int  # good rows it holds


@dataclass
class _OpenPart:
    path: Path
    file: h5py.File
    start: int
    stop: int
    rows: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    bytes: int = 0


class StoreWriter:
    """Writes an extraction into a store, resumably.  Used by :mod:`featx.extract`.

    Parameters
    ----------
    path : path
        The store file.
    meta : dict
        Root attributes (configuration and provenance); keys in
        :data:`IDENTITY_KEYS` must match an existing store.
    layers : list of LayerSpec
        The layers requested.
    samples : ImageCollection-like
        ``ids``, ``labels``, ``splits`` and ``classes`` of every candidate image.
    overwrite : bool
        Replace a store made with another configuration instead of refusing.
    checkpoint_seconds : float
        A part is committed once it is this old (or 1/20 of the run's age, if
        larger, so that long runs make a bounded number of parts), or holds more
        than ``checkpoint_bytes``.  ``0`` commits after every batch.
    compression : {None, 'gzip', 'lzf'}
        Compression of the final feature datasets.

    Attributes
    ----------
    start : int
        First candidate index still to extract (0 for a new store).
    todo : list of LayerSpec
        Layers that still have to be extracted; empty when the store is up to date.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        meta: Mapping[str, Any],
        layers: Sequence[LayerSpec],
        samples: Any,
        overwrite: bool = False,
        checkpoint_seconds: float = 10.0,
        checkpoint_bytes: int = 1 << 30,
        compression: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.parts = parts_dir(self.path)
        self.meta = dict(meta)
        self.samples = samples
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpoint_bytes = checkpoint_bytes
        self.compression = compression
        self._open: _OpenPart | None = None
        self._committed: list[_Part] = []
        self._started = time.monotonic()
        self._last_commit = self._started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        if overwrite:
            self._remove_all()
        self.existing_layers: dict[str, dict[str, Any]] = {}
        self.todo = self._plan(list(layers))
        self.start = self._committed[-1].stop if self._committed else 0

    # planning ---------------------------------------------------------------------
    def _remove_all(self) -> None:
        if self.parts.is_dir():
            for p in self.parts.iterdir():
                p.unlink()
            self.parts.rmdir()
        if self.path.exists():
            self.path.unlink()

    def _check_identity(self, attrs: Mapping[str, Any], what: str) -> None:
        diffs = []
        for key in IDENTITY_KEYS:
            have, want = _attr_value(attrs.get(key)), _attr_value(self.meta.get(key))
            if isinstance(have, list) or isinstance(want, list):
                same = have is not None and want is not None and np.allclose(have, want)
            else:
                same = have == want
            if not same:
                diffs.append(f"{key} is {have!r} there, {want!r} here")
        if diffs:
            hint = (
                "the data folder changed since then"
                if any(d.startswith("data_fingerprint") for d in diffs)
                else "the command differs"
            )
            raise StoreMismatchError(
                f"{what} '{self.path}' was made with another configuration ({hint}): "
                f"{'; '.join(diffs)}. Use --overwrite to replace it, or --out PATH to write a new store"
            )

    def _plan(self, layers: list[LayerSpec]) -> list[LayerSpec]:
        if self.path.exists():
            try:
                with h5py.File(self.path, "r") as f:
                    attrs = dict(f.attrs)
                    complete = bool(attrs.get("complete", False))
                    existing = {
                        name: {k: _attr_value(v) for k, v in f["features"][name].attrs.items()}
                        for name in f.get("features", {})
                        if _is_layer(f["features"][name])
                    }
            except OSError as exc:
                raise StoreError(
                    f"'{self.path}' exists but is not a readable HDF5 file ({exc}); "
                    "move it away or use --overwrite"
                ) from None
            if "featx_format" not in attrs:
                raise StoreError(
                    f"'{self.path}' exists and is not a featx store; choose another --out or use --overwrite"
                )
            self._check_identity(attrs, "store")
            if complete:
                self.existing_layers = existing
                for spec in layers:
                    old = existing.get(spec.name)
                    if old is None:
                        continue
                    want = spec.attrs()
                    diffs = [
                        f"{k} is {old.get(k)!r} there, {want[k]!r} here"
                        for k in LAYER_IDENTITY_KEYS
                        if old.get(k) != want[k]
                    ]
                    if diffs:
                        raise StoreMismatchError(
                            f"layer '{spec.name}' already exists in '{self.path}' with other settings: "
                            f"{'; '.join(diffs)}. Use --overwrite to re-extract the store, or --out PATH"
                        )
                self._remove_finished_parts(existing)
                layers = [spec for spec in layers if spec.name not in existing]
                if not layers:
                    return []
        self._load_parts(layers)
        return layers

    def _remove_stale_temporaries(self) -> None:
        """Delete the half-written final file of a run killed while writing it."""
        if os.name != "posix":
            return  # os.kill(pid, 0) below only probes a process on POSIX
        for tmp in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or not _process_exists(int(pid))):
                tmp.unlink(missing_ok=True)

    def _remove_finished_parts(self, existing: Mapping[str, Any]) -> None:
        """Delete parts whose layers are all in the complete store.

        They are left when a run is killed after its final file replaced the
        index but before the parts were deleted.
        """
        if not self.parts.is_dir():
            return
        for path in self.parts.iterdir():
            if _PART_NAME.match(path.name):
                with h5py.File(path, "r") as f:
                    finished = set(f["features"]) <= set(existing)
                if finished:
                    path.unlink()
        if not any(self.parts.iterdir()):
            self.parts.rmdir()

    def _load_parts(self, layers: list[LayerSpec]) -> None:
        if not self.parts.is_dir():
            return
        for leftover in self.parts.glob(".*.tmp-*"):
            leftover.unlink()  # a part being written when the last run was killed
        names = sorted(p.name for p in self.parts.iterdir() if _PART_NAME.match(p.name))
        wanted = sorted(spec.name for spec in layers)
        expected_start = 0
        for name in names:
            path = self.parts / name
            with h5py.File(path, "r") as f:
                self._check_identity(f.attrs, "unfinished extraction in")
                part_layers = sorted(f["features"].keys())
                if part_layers != wanted:
                    raise StoreMismatchError(
                        f"an unfinished extraction of layers {', '.join(part_layers)} is in '{self.parts}', "
                        f"this command asks for {', '.join(wanted)}; re-run it with the same --layer values "
                        "to finish it first, or use --overwrite to start again"
                    )
                start, stop = int(f.attrs["start"]), int(f.attrs["stop"])
                rows = int(f["samples/index"].shape[0])
            if start != expected_start:
                break  # parts after a gap cannot be used; they are redone
            self._committed.append(_Part(path, start, stop, rows))
            expected_start = stop

    @property
    def up_to_date(self) -> bool:
        return not self.todo

    @property
    def resuming(self) -> bool:
        return bool(self._committed)

    @property
    def rows_done(self) -> int:
        return sum(p.rows for p in self._committed)

    # appending -----------------------------------------------------------------
    def _new_part(self, start: int) -> _OpenPart:
        self.parts.mkdir(parents=True, exist_ok=True)
        number = len(self._committed)
        final = self.parts / f"part-{number:06d}.h5"
        tmp = self.parts / f".{final.name}.tmp-{os.getpid()}"
        f = h5py.File(tmp, "w")
        _set_attrs(f, self.meta)
        f.attrs["start"] = start
        f.create_dataset("samples/index", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        for spec in self.todo:
            dtype = np.dtype(spec.dtype)
            ds = f.create_dataset(
                f"features/{spec.name}",
                shape=(0, spec.dim),
                maxshape=(None, spec.dim),
                dtype=dtype,
                chunks=(_rows_per_chunk(spec.dim, dtype.itemsize), spec.dim),
            )
            _set_attrs(ds, spec.attrs())
        return _OpenPart(path=final, file=f, start=start, stop=start)

    def add(
        self,
        *,
        stop: int,
        indices: Sequence[int],
        features: Mapping[str, np.ndarray],
        failures: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Append the results of the candidates up to *stop* (exclusive).

        Parameters
        ----------
        stop : int
            Candidates before this index are all accounted for after this call.
        indices : sequence of int
            Candidate indices of the rows in *features*, increasing.
        features : dict of name -> ndarray (len(indices), D)
        failures : sequence of (candidate index, reason)
        """
        if self._open is None:
            self._open = self._new_part(self._committed[-1].stop if self._committed else 0)
        part = self._open
        n = len(indices)
        if n:
            index = part.file["samples/index"]
            index.resize((part.rows + n,))
            index[part.rows :] = np.asarray(indices, dtype=np.int64)
            for spec in self.todo:
                values = np.asarray(features[spec.name], dtype=spec.dtype)
                ds = part.file["features"][spec.name]
                ds.resize((part.rows + n, spec.dim))
                ds[part.rows :] = values
                part.bytes += values.nbytes
            part.rows += n
        part.failed.extend(failures)
        part.stop = stop
        now = time.monotonic()
        interval = max(self.checkpoint_seconds, (now - self._started) / 20)
        if now - self._last_commit >= interval or part.bytes >= self.checkpoint_bytes:
            self.commit()

    def commit(self) -> None:
        """Make the rows added so far durable and visible in the store file."""
        part, self._open = self._open, None
        if part is None:
            return
        f = part.file
        f.attrs["stop"] = part.stop
        ids = self.samples.ids
        rows = f["samples/index"][()]
        _str_dataset(f, "samples/id", [ids[i] for i in rows])
        f.create_dataset("samples/label", data=np.asarray(self.samples.labels, dtype=np.int32)[rows])
        _str_dataset(f, "samples/split", [self.samples.splits[i] for i in rows])
        _str_dataset(f, "failed/id", [ids[i] for i, _ in part.failed])
        _str_dataset(f, "failed/reason", [r for _, r in part.failed])
        f.attrs["failed_index"] = np.asarray([i for i, _ in part.failed], dtype=np.int64)
        tmp = Path(f.filename)
        f.close()
        with open(tmp, "rb+") as raw:
            os.fsync(raw.fileno())
        os.replace(tmp, part.path)
        self._committed.append(_Part(part.path, part.start, part.stop, part.rows))
        self._last_commit = time.monotonic()
        if not self.existing_layers:
            # A new store: keep the store file an up-to-date index of the parts.
            # (When layers are added to a complete store, that store stays as it is
            # until the new layers are finished.)
            _write_atomically(self.path, self._fill_index)

    def abort(self) -> None:
        """Drop the part being written (after an error); committed parts stay."""
        part, self._open = self._open, None
        if part is not None:
            tmp = Path(part.file.filename)
            part.file.close()
            tmp.unlink(missing_ok=True)

    # the store file --------------------------------------------------------------
    def _root_attrs(self, f: h5py.File, *, complete: bool, rows: int) -> None:
        _set_attrs(f, self.meta)
        f.attrs["featx_format"] = FORMAT_VERSION
        f.attrs["complete"] = complete
        f.attrs["rows"] = rows
        f.attrs["candidates_done"] = self._committed[-1].stop if self._committed else 0
        f.attrs["candidates"] = len(self.samples.ids)

    def _part_samples(self) -> tuple[list[str], np.ndarray, list[str], list[str], list[str]]:
        ids, labels, splits, failed_ids, failed_reasons = [], [], [], [], []
        for part in self._committed:
            with h5py.File(part.path, "r") as f:
                ids.extend(_strings(f["samples/id"]))
                labels.append(f["samples/label"][()])
                splits.extend(_strings(f["samples/split"]))
                failed_ids.extend(_strings(f["failed/id"]))
                failed_reasons.extend(_strings(f["failed/reason"]))
        label_array = np.concatenate(labels) if labels else np.empty(0, dtype=np.int32)
        return ids, label_array.astype(np.int32), splits, failed_ids, failed_reasons

    def _fill_samples(self, f: h5py.File, ids, labels, splits, failed_ids, failed_reasons) -> None:
        _str_dataset(f, "samples/id", ids)
        f.create_dataset("samples/label", data=np.asarray(labels, dtype=np.int32), shape=(len(ids),))
        _str_dataset(f, "samples/split", splits)
        _str_dataset(f, "classes", list(self.samples.classes))
        _str_dataset(f, "failed/id", failed_ids)
        _str_dataset(f, "failed/reason", failed_reasons)

    def _fill_index(self, f: h5py.File) -> None:
        ids, labels, splits, failed_ids, failed_reasons = self._part_samples()
        self._root_attrs(f, complete=False, rows=len(ids))
        self._fill_samples(f, ids, labels, splits, failed_ids, failed_reasons)
        features = f.create_group("features")
        for spec in self.todo:
            layout = h5py.VirtualLayout(shape=(len(ids), spec.dim), dtype=np.dtype(spec.dtype))
            offset = 0
            for part in self._committed:
                if part.rows:
                    # Relative to the store's folder, which is where HDF5 looks first.
                    source = os.path.join(self.parts.name, part.path.name)
                    layout[offset : offset + part.rows] = h5py.VirtualSource(
                        source, f"features/{spec.name}", shape=(part.rows, spec.dim)
                    )
                    offset += part.rows
            ds = features.create_virtual_dataset(spec.name, layout, fillvalue=np.nan)
            _set_attrs(ds, spec.attrs())

    def _copy_layer(self, f: h5py.File, spec: LayerSpec, n_rows: int) -> None:
        dtype = np.dtype(spec.dtype)
        ds = f.create_dataset(
            f"features/{spec.name}",
            shape=(n_rows, spec.dim),
            dtype=dtype,
            chunks=(min(max(n_rows, 1), _rows_per_chunk(spec.dim, dtype.itemsize)), spec.dim) if n_rows else None,
            compression=self.compression if n_rows else None,
        )
        _set_attrs(ds, spec.attrs())
        block = max(1, _COPY_BYTES // max(1, spec.dim * dtype.itemsize))
        offset = 0
        for part in self._committed:
            with h5py.File(part.path, "r") as src:
                source = src["features"][spec.name]
                for a in range(0, part.rows, block):
                    b = min(a + block, part.rows)
                    ds[offset + a : offset + b] = source[a:b]
            offset += part.rows

    def finish(self) -> None:
        """Assemble the parts into the final store and delete them."""
        self.commit()
        covered = self._committed[-1].stop if self._committed else 0
        if covered != len(self.samples.ids):
            raise StoreError(
                f"cannot finish '{self.path}': {covered} of {len(self.samples.ids)} images were processed"
            )
        ids, labels, splits, failed_ids, failed_reasons = self._part_samples()

        if self.existing_layers:
            with h5py.File(self.path, "r") as old:
                old_ids = list(_strings(old["samples/id"]))
            if old_ids != ids:
                raise StoreMismatchError(
                    f"the new layers of '{self.path}' have {len(ids)} rows, the store has {len(old_ids)}: "
                    "images decoded differently this time; use --overwrite to re-extract everything"
                )

            def fill(f: h5py.File) -> None:
                with h5py.File(self.path, "r") as old:
                    # Copied without the dimension-scale attributes: their object
                    # references point into the old file; _label_dimensions redoes them.
                    for key in ("samples", "classes", "failed"):
                        old.copy(old[key], f, name=key, without_attrs=True)
                    features = f.create_group("features")
                    for name, source in old["features"].items():
                        if _is_layer(source):
                            old.copy(source, features, name=name, without_attrs=True)
                            _set_attrs(features[name], {k: v for k, v in source.attrs.items() if k not in _DIMENSION_ATTRS})
                    _set_attrs(f, {k: v for k, v in old.attrs.items()})
                for spec in self.todo:
                    self._copy_layer(f, spec, len(ids))
                f.attrs["modified_utc"] = self.meta.get("created_utc")
                _label_dimensions(f)

        else:

            def fill(f: h5py.File) -> None:
                self._root_attrs(f, complete=True, rows=len(ids))
                self._fill_samples(f, ids, labels, splits, failed_ids, failed_reasons)
                f.create_group("features")
                for spec in self.todo:
                    self._copy_layer(f, spec, len(ids))
                _label_dimensions(f)

        _write_atomically(self.path, fill)
        for part in self._committed:
            part.path.unlink()
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()


def _label_dimensions(f: h5py.File) -> None:
    """Attach HDF5 dimension scales, the netCDF-4 way, to a finished store.

    With them, xarray (``engine="h5netcdf"``), netCDF libraries and MATLAB see
    ``/features/<layer>`` as an ``(id, <layer>_column)`` array labelled by sample
    id, and ``/samples`` and ``/failed`` as tables indexed by ``id``.  netCDF
    looks a variable's dimensions up in its own group and the group's
    ancestors only, so ``/features/id`` is a hard link to ``/samples/id`` (the
    same object, not a copy), and each layer gets a scale without values for
    its column axis (no storage is allocated for it).  Objects in ``/features``
    that are not layers carry no ``node`` attribute.
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
    layers = [name for name in features if _is_layer(features[name])]
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
