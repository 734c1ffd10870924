"""Reading a feature store: :class:`FeatureStore` and :func:`open_store`.

Features are read lazily and in contiguous blocks: a layer is never read
unless asked for, and a row selection reads only those rows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError, StoreNotFoundError, message
from ._schema import BOOKKEEPING_ATTRS, attr_value, is_layer, parts_dir, read_strings
from ._checksums import CHECKSUM_ROWS, CHECKSUMS, ChecksumReport, iter_verified, store_where, verify_dataset
from ._validate import validate_store

__all__ = ["FeatureStore", "open_store", "open_hdf5"]

# Attributes of the dimension-scale API and of netCDF: structure, not layer metadata.
_STRUCTURE_ATTRS = ("DIMENSION_", "REFERENCE_", "CLASS", "NAME", "_Netcdf", CHECKSUMS, CHECKSUM_ROWS)


def open_hdf5(path: Path, *, hint: str) -> h5py.File:
    """Open an existing file read-only as HDF5, or say in one line why it cannot be.

    h5py's own text ("Unable to synchronously open file (file signature not
    found)") names neither the problem nor the fix, so the usual causes are
    told apart first.

    Parameters
    ----------
    path : Path
        A path that exists.
    hint : str
        What the user can do, ending every message.

    Raises
    ------
    StoreError
        *path* is a folder, cannot be read, is not HDF5, or is damaged.
    """
    if path.is_dir():
        raise StoreError(message("a feature store is a file, not a folder", got=path, hint=hint))
    if not os.access(path, os.R_OK):
        raise StoreError(message("no permission to read the file", got=path, hint=hint))
    if not h5py.is_hdf5(path):
        raise StoreError(message("not an HDF5 file, so not a feature store", got=path, hint=hint))
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        # An HDF5 signature but no readable file behind it: keep only HDF5's detail.
        detail = re.search(r"\(([^()]*)\)\s*$", str(exc))
        reason = f" ({detail.group(1)})" if detail else ""
        raise StoreError(message(f"HDF5 file is damaged or truncated{reason}", got=path, hint=hint)) from None


class FeatureStore:
    """Read access to a feature store.  Use :func:`open_store` to make one.

    Features are read lazily: ``features(name, rows)`` reads only the rows asked
    for, and nothing of the other layers.

    Attributes
    ----------
    path : Path
        The store file.
    meta : dict
        Root attributes (configuration, provenance, ``complete``).
    ids : ndarray of str, shape (N,)
        Sample ids, sorted.
    labels : ndarray of int32, shape (N,)
        Index into :attr:`classes`, ``-1`` when unlabelled.
    splits : ndarray of str, shape (N,)
        ``'train'``, ``'val'``, ``'test'`` or ``''``.
    classes : list of str
        Class names.
    sample_meta : dict of str -> ndarray of str, each (N,)
        What the image listing said of each sample besides its path, label and
        split (a manifest's other columns: ``/samples/meta/<column>``); empty
        for a folder of images.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreNotFoundError(
                message(
                    "feature store not found",
                    got=self.path,
                    hint="check the path, or create the store by extracting features into it",
                )
            )
        self._file = open_hdf5(self.path, hint="check the path")
        try:
            table = validate_store(self._file, self.path)
        except BaseException:
            self._file.close()
            raise
        self.meta: dict[str, Any] = table.meta
        self.ids: np.ndarray = table.ids
        self.labels: np.ndarray = table.labels
        self.splits: np.ndarray = table.splits
        self.classes: list[str] = table.classes
        self.sample_meta: dict[str, np.ndarray] = table.sample_meta

    # context manager ------------------------------------------------------------
    def close(self) -> None:
        """Close the file; arrays already read stay valid."""
        self._file.close()

    def __enter__(self) -> FeatureStore:
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
        """Whether the extraction finished (an interrupted one serves the rows so far)."""
        return bool(self.meta.get("complete", False))

    @property
    def provenance(self) -> dict[str, Any]:
        """How the features were made and from what: the root attributes, less the store's own bookkeeping.

        The ``recipe`` (when the store has one), the format-1 attributes it
        flattens to, ``data_root``, the versions, ...: what a classifier
        records of each of its inputs.
        """
        return {k: v for k, v in self.meta.items() if k not in BOOKKEEPING_ATTRS}

    @property
    def layers(self) -> list[str]:
        """Names of the feature datasets, sorted."""
        group = self._file["features"]
        return sorted(name for name in group if is_layer(group[name]))

    def layer_info(self, name: str) -> dict[str, Any]:
        """Attributes of one feature dataset plus its ``shape`` and ``stored_dtype``."""
        dataset = self._dataset(name)
        info = {k: attr_value(v) for k, v in dataset.attrs.items() if not k.startswith(_STRUCTURE_ATTRS)}
        info.update(shape=tuple(dataset.shape), stored_dtype=str(dataset.dtype))
        return info

    def _dataset(self, name: str) -> h5py.Dataset:
        if name not in self._file["features"] or not is_layer(self._file["features"][name]):
            raise StoreError(
                message(f"layer '{name}' is not in store '{self.path}'", hint=f"it holds {', '.join(self.layers) or 'no layers'}")
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

        Raises
        ------
        StoreError
            Unknown layer, a row out of range, or a mask of the wrong length.
        """
        dataset = self._dataset(name)
        if rows is None:
            return dataset[()]
        if isinstance(rows, slice):
            return dataset[rows]
        rows = self._row_indices(rows, dataset.shape[0])
        if rows.size == 0:
            return np.empty((0, dataset.shape[1]), dtype=dataset.dtype)
        if rows.size == 1 or (np.diff(rows) > 0).all():
            return dataset[rows]  # already increasing: read once, no reordered second copy
        # h5py wants increasing indices; read sorted unique rows, then reorder.
        unique, inverse = np.unique(rows, return_inverse=True)
        return dataset[unique][inverse]

    def _row_indices(self, rows: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            # Without this, a mask would be read as the indices 0 and 1.
            if rows.shape != (n,):
                raise StoreError(message("a boolean row mask", allowed=f"of shape ({n},), one value per row", got=rows.shape))
            return np.flatnonzero(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise StoreError(message("rows", allowed="integers or a boolean mask", got=rows.dtype))
        rows = rows.astype(np.int64).ravel()
        bad = rows[(rows < -n) | (rows >= n)]
        if bad.size:
            raise StoreError(
                message(f"row {bad[0]} is out of range", hint=f"'{self.path}' has {n} rows (0 to {n - 1}, or -{n} to -1)")
            )
        return np.where(rows < 0, rows + n, rows)

    def iter_features(
        self, name: str, batch_rows: int = 4096, *, verify: bool = False
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(row_slice, block)`` pairs covering a layer in row order, one contiguous read each.

        With *verify*, the rows are checked against the checksums the finished
        store recorded (if any) as they are read, at no extra read: a
        :class:`~featx.errors.StoreChecksumError` is raised at the first block
        of rows that differs, before the block that completes it is yielded.
        """
        dataset = self._dataset(name)
        if verify:
            yield from iter_verified(dataset, store_where(self.path, name), batch_rows)
            return
        for start in range(0, dataset.shape[0], batch_rows):
            rows = slice(start, min(start + batch_rows, dataset.shape[0]))
            yield rows, dataset[rows]

    def verify(self) -> ChecksumReport:
        """Read every layer and check it against the checksums recorded when the store was finished.

        Returns
        -------
        ChecksumReport
            Per layer, the blocks checked, or None where no checksums were
            recorded (a store of an older featx, or an unfinished one).

        Raises
        ------
        StoreChecksumError
            The first block of rows that does not match its checksum.
        """
        return ChecksumReport({name: verify_dataset(self._dataset(name), store_where(self.path, name))
                               for name in self.layers})

    @property
    def failed(self):
        """Images that could not be used: a DataFrame with columns ``id`` and ``reason``."""
        import pandas as pd

        group = self._file.get("failed")
        if group is None:
            return pd.DataFrame({"id": [], "reason": []}, dtype=object)
        return pd.DataFrame({"id": read_strings(group["id"]), "reason": read_strings(group["reason"])})

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

    Parameters
    ----------
    path : path
        The store file (finished, or the index of an unfinished extraction).

    Returns
    -------
    FeatureStore
        Use it as a context manager, so that the file is closed.

    Raises
    ------
    StoreNotFoundError
        Nothing exists at *path*.
    StoreError
        *path* is a folder, not HDF5, not a featx store, or of a newer format.

    Examples
    --------
    >>> with open_store("features/hymenoptera_data/alexnet-none.h5") as store:  # doctest: +SKIP
    ...     X = store.features("fc7")          # (N, 4096) float32
    ...     y = store.labels                   # (N,) int32
    """
    return FeatureStore(path)
