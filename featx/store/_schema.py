"""Store format 1: its version, its identity keys, its layer description, and how values go in and out of HDF5.

A store is one HDF5 file (schema in DESIGN.md and the README)::

    /                 attrs: featx_format=1, model, weights, preprocessing, complete, ...
    /samples/id       (N,) UTF-8 str, sorted
    /samples/label    (N,) int32, index into /classes, -1 when unlabelled
    /samples/split    (N,) UTF-8 str
    /classes          (C,) UTF-8 str
    /features/<name>  (N, D) float32 (or float16), chunked along rows
    /failed/id, /failed/reason   (M,) UTF-8 str
    /samples/meta/<column>       (N,) UTF-8 str, optional: what the image listing said of each
                                 sample besides its path, label and split (a manifest's other columns)

Every other module of the package reads and writes attributes and string
datasets through the helpers here, so that a value is stored one way only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "DATA_FINGERPRINT",
    "FORMAT_VERSION",
    "SPLIT_NAMES",
    "BOOKKEEPING_ATTRS",
    "LAYER_IDENTITY_KEYS",
    "RECIPE_ATTR",
    "LayerSpec",
    "parts_dir",
    "attr_value",
    "set_attrs",
    "read_strings",
    "write_strings",
    "is_layer",
    "rows_per_chunk",
    "SampleTable",
    "store_attrs",
    "samples_meta",
    "write_meta",
    "read_meta",
    "write_samples",
]

FORMAT_VERSION = 1
# Values of /samples/split other than '' (no split folder).
SPLIT_NAMES = ("train", "val", "test")
# Root attribute that says which images a store was made from: another value on
# a complete store is an incremental update, not another configuration.
DATA_FINGERPRINT = "data_fingerprint"
# Root attribute that holds a StoreIdentity's text (JSON), when the writer was given one.
RECIPE_ATTR = "recipe"
# Per-layer attributes that define the same feature dataset.
LAYER_IDENTITY_KEYS = ("node", "pool", "precision", "dtype")

_STR = h5py.string_dtype("utf-8")
# HDF5's advice: chunks of 10 KiB to 1 MiB; rows of features are read together.
_CHUNK_BYTES = 1 << 20


def parts_dir(path: str | os.PathLike) -> Path:
    """Folder that holds the part files of an unfinished extraction into *path*.

    Parameters
    ----------
    path : path
        The store file.

    Returns
    -------
    Path
        ``<path>.parts`` beside the store.
    """
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
    views : int
        V when every augmented view of an image is kept (``extract --views-reduce
        none``): *dim* is ``V * D``, view-major, and the dataset has the attribute
        ``views = V``; 1 (no attribute) otherwise.
    """

    name: str
    node: str
    pool: str
    dim: int
    source_shape: tuple[int, ...]
    precision: str = "fp32"
    dtype: str = "float32"
    views: int = 1

    def attrs(self) -> dict[str, Any]:
        """The attributes of ``/features/<name>`` that describe this layer."""
        return {
            "node": self.node,
            "pool": self.pool,
            "source_shape": np.asarray(self.source_shape, dtype=np.int64),
            "requested": self.name,
            "precision": self.precision,
            "dtype": self.dtype,
            **({"views": int(self.views)} if self.views != 1 else {}),
        }


# Root attributes the store itself writes about the file (format, progress), not about the features.
BOOKKEEPING_ATTRS = ("featx_format", "complete", "rows", "candidates_done", "candidates", "modified_utc")


def store_attrs(meta: Mapping[str, Any], *, complete: bool, rows: int, candidates_done: int, candidates: int) -> dict[str, Any]:
    """The root attributes of a store file: *meta*, then the format and how far the extraction went.

    In this order: the file's bytes depend on the order attributes are written.
    """
    return {
        **meta,
        "featx_format": FORMAT_VERSION,
        "complete": complete,
        "rows": rows,
        "candidates_done": candidates_done,
        "candidates": candidates,
    }


def attr_value(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, int, float, bool or list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Write *attrs* on an HDF5 object; ``None`` values are left out."""
    for key, value in attrs.items():
        if value is None:
            continue
        # str subclasses (torch.__version__ is one) would be stored as fixed-width numpy text
        obj.attrs[key] = str(value) if isinstance(value, str) else value


def read_strings(dataset: h5py.Dataset) -> np.ndarray:
    """A UTF-8 string dataset as an object array of str (read in one block)."""
    return dataset.asstr()[()] if dataset.shape[0] else np.array([], dtype=object)


def write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    """Create the UTF-8 string dataset *name* in *group* holding *values*."""
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=_STR, shape=(len(values),))


def is_layer(obj: Any) -> bool:
    """Whether an object under ``/features`` is a feature dataset (not a dimension scale)."""
    return isinstance(obj, h5py.Dataset) and "node" in obj.attrs


def rows_per_chunk(dim: int, itemsize: int) -> int:
    """Rows of a ``(N, dim)`` feature dataset in one chunk of about 1 MiB."""
    return max(1, _CHUNK_BYTES // max(1, dim * itemsize))


@dataclass
class SampleTable:
    """The rows of ``/samples`` and ``/failed``, gathered from part files.

    Attributes
    ----------
    ids, splits : list of str, length N
    labels : ndarray of int32, shape (N,)
    failed_ids, failed_reasons : list of str, length M
    meta : dict of str -> list of str, each of length N
        ``/samples/meta/<name>``: further columns of the image listing.
    """

    ids: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    splits: list[str] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    failed_reasons: list[str] = field(default_factory=list)
    meta: dict[str, list[str]] = field(default_factory=dict)


def samples_meta(samples: Any, rows: Sequence[int]) -> dict[str, list[str]]:
    """The sample metadata of *rows* (candidate indices) of an image source (its ``meta``, if any)."""
    return {name: [values[i] for i in rows] for name, values in getattr(samples, "meta", {}).items()}


def write_meta(group: h5py.Group, meta: Mapping[str, Sequence[str]]) -> None:
    """Create ``meta/<name>`` in *group* (``/samples`` of a store or a part) for each column of *meta*."""
    for name, values in meta.items():
        write_strings(group.require_group("meta"), name, values)


def read_meta(group: h5py.Group) -> dict[str, np.ndarray]:
    """The ``meta/<name>`` datasets of *group* (``/samples``), by name; empty when it has none."""
    meta = group.get("meta")
    return {name: read_strings(meta[name]) for name in meta} if meta is not None else {}


def write_samples(f: h5py.File, table: SampleTable, classes: Sequence[str]) -> None:
    """Create ``/samples``, ``/classes`` and ``/failed`` of a store file."""
    write_strings(f, "samples/id", table.ids)
    f.create_dataset("samples/label", data=np.asarray(table.labels, dtype=np.int32), shape=(len(table.ids),))
    write_strings(f, "samples/split", table.splits)
    write_meta(f["samples"], table.meta)
    write_strings(f, "classes", list(classes))
    write_strings(f, "failed/id", table.failed_ids)
    write_strings(f, "failed/reason", table.failed_reasons)
