"""Is this HDF5 file a well-formed featx store (format 1)?  Checked once, when a reader opens it.

A store can come from anywhere: another featx version, a tool that wrote HDF5
by hand, a file damaged or edited on purpose.  Without this check a
malformed one fails deep inside whatever reads it first (an ``IndexError``
in a join, a ``KeyError`` in ``info``, a ``UnicodeDecodeError`` while
printing), or worse, gives wrong results silently (features with fewer rows
than samples).  :func:`validate_store` checks what every reader relies on,
in this order, and raises :class:`~featx.errors.MalformedStoreError` naming
the first problem:

1. ``featx_format``: an integer from 1 to :data:`~._schema.FORMAT_VERSION`;
2. every root attribute readable, text as UTF-8; the known ones of the right
   type (text, counts, ``complete`` a boolean, ``mean``/``std`` numbers,
   ``recipe`` a JSON object);
3. ``/samples/id``, ``/samples/label``, ``/samples/split``, ``/classes``
   (and ``/failed/*``, ``/samples/meta/*`` when present): datasets of one
   dimension, text or integers as the format says, ``N`` rows each;
4. the sample table itself: UTF-8 text, distinct ids (a duplicate is named),
   distinct class names, labels from -1 to ``C - 1``, splits from
   ``train``/``val``/``test``/``''``;
5. each feature dataset: 2-D, numeric, ``N`` rows, its text attributes UTF-8.

Only attributes, shapes and the sample table are read (the reader reads the
table anyway, and gets it from here): never a feature row, so opening a
10^6-row store stays cheap.  Feature *values* are covered by the checksums
(:mod:`._checksums`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import MalformedStoreError, StoreError, message
from ..formatting import printable
from ._checksums import CHECKSUM_ROWS, CHECKSUMS
from ._schema import FORMAT_VERSION, SPLIT_NAMES, attr_value, is_layer

__all__ = ["SampleArrays", "validate_store"]

# Root attributes that must be text, counts, or numbers when present.
_TEXT_ATTRS = (
    "model", "weights", "weights_sha256", "data_root", "data_fingerprint", "created_utc", "modified_utc",
    "featx_version", "recipe", "interpolation", "resize_mode",
)
_COUNT_ATTRS = ("rows", "candidates_done", "candidates")
_NUMBER_ATTRS = ("mean", "std")
_LAYER_TEXT_ATTRS = ("node", "pool", "requested", "precision", "dtype")
# Ids named in a message.
_SHOWN = 3
_HINT = "the file was not written by featx, or was damaged or edited since; extract the store again"


@dataclass
class SampleArrays:
    """The sample table of a valid store, as read while validating it (the reader keeps it)."""

    meta: dict[str, Any]
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    classes: list[str]
    sample_meta: dict[str, np.ndarray]


class _Checker:
    def __init__(self, f: h5py.File, path: Path) -> None:
        self.f = f
        self.path = path

    def fail(self, problem: str) -> MalformedStoreError:
        return MalformedStoreError(message(f"malformed feature store '{self.path}': {problem}", hint=_HINT))

    # --- attributes ---------------------------------------------------------------------------------
    def attrs(self, obj: h5py.HLObject, where: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        try:
            keys = list(obj.attrs)
        except (OSError, RuntimeError, UnicodeDecodeError) as exc:
            raise self.fail(f"the attributes of {where} cannot be read ({type(exc).__name__})") from None
        for key in keys:
            try:
                values[key] = attr_value(obj.attrs[key])
            except UnicodeDecodeError:
                raise self.fail(f"attribute '{printable(key)}' of {where} is not UTF-8 text") from None
            except (OSError, RuntimeError, TypeError, ValueError) as exc:
                raise self.fail(
                    f"attribute '{printable(key)}' of {where} cannot be read ({type(exc).__name__})"
                ) from None
        return values

    def format_version(self) -> None:
        try:
            fmt = self.f.attrs.get("featx_format")
        except (OSError, RuntimeError, TypeError, ValueError, UnicodeDecodeError):
            fmt = "(unreadable)"
        if fmt is None:
            raise StoreError(message("HDF5 file is not a featx store (no 'featx_format' attribute)", got=self.path))
        value = attr_value(fmt)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"featx_format must be an integer; got {printable(repr(value))}")
        if value > FORMAT_VERSION:
            raise StoreError(
                message(
                    f"the featx store format of '{self.path}'",
                    allowed=f"{FORMAT_VERSION} or older",
                    got=value,
                    hint="upgrade featx to read it",
                )
            )
        if value < 1:
            raise self.fail(f"featx_format must be from 1 to {FORMAT_VERSION}; got {value}")

    def root_attrs(self) -> dict[str, Any]:
        meta = self.attrs(self.f, "the root")
        for key in _TEXT_ATTRS:
            if key in meta and not isinstance(meta[key], str):
                raise self.fail(f"root attribute '{key}' must be text; got {printable(repr(meta[key]))[:60]}")
        for key in _COUNT_ATTRS:
            value = meta.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise self.fail(
                    f"root attribute '{key}' must be a count (an integer >= 0); got {printable(repr(value))[:60]}"
                )
        if "complete" in meta and not (isinstance(meta["complete"], bool) or meta["complete"] in (0, 1)):
            got = printable(repr(meta["complete"]))[:60]
            raise self.fail(f"root attribute 'complete' must be true or false; got {got}")
        for key in _NUMBER_ATTRS:
            if key in meta:
                values = meta[key] if isinstance(meta[key], list) else [meta[key]]
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    raise self.fail(f"root attribute '{key}' must be numbers; got {printable(repr(meta[key]))[:60]}")
        if "recipe" in meta:
            try:
                recipe = json.loads(meta["recipe"])
            except ValueError:
                recipe = None
            if not isinstance(recipe, dict):
                raise self.fail("root attribute 'recipe' must be a JSON object")
        return meta

    # --- datasets -----------------------------------------------------------------------------------
    def dataset(self, name: str, kind: str, rows: int | None, against: str = "/samples/id") -> h5py.Dataset:
        """``/name``: a 1-D dataset of text (*kind* ``'text'``) or integers (``'int'``), of *rows* rows if given."""
        obj = self.f.get(name)
        if obj is None:
            raise self.fail(f"it has no '/{name}'")
        if not isinstance(obj, h5py.Dataset):
            raise self.fail(f"'/{name}' must be a dataset, not a group")
        if obj.ndim != 1:
            raise self.fail(f"'/{name}' must have one dimension; got shape {obj.shape}")
        if kind == "text" and h5py.check_string_dtype(obj.dtype) is None:
            raise self.fail(f"'/{name}' must hold text; got {obj.dtype}")
        if kind == "int" and (obj.dtype.kind not in "iu"):
            raise self.fail(f"'/{name}' must hold integers; got {obj.dtype}")
        if rows is not None and obj.shape[0] != rows:
            raise self.fail(f"'/{name}' has {obj.shape[0]:,} rows, '{against}' {rows:,}")
        return obj

    def strings(self, name: str, rows: int | None) -> np.ndarray:
        dataset = self.dataset(name, "text", rows)
        try:
            return dataset.asstr()[()] if dataset.shape[0] else np.array([], dtype=object)
        except UnicodeDecodeError:
            raise self.fail(f"'/{name}' holds text that is not UTF-8") from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise self.fail(f"'/{name}' cannot be read ({type(exc).__name__})") from None

    def group(self, name: str, *, required: bool) -> h5py.Group | None:
        obj = self.f.get(name)
        if obj is None and required:
            raise self.fail(f"it has no '/{name}'")
        if obj is not None and not isinstance(obj, h5py.Group):
            raise self.fail(f"'/{name}' must be a group, not a dataset")
        return obj

    def samples(self, meta: dict[str, Any]) -> SampleArrays:
        self.group("samples", required=True)
        ids = self.strings("samples/id", None)
        n = len(ids)
        labels_ds = self.dataset("samples/label", "int", n)
        try:
            labels = labels_ds[()] if n else np.empty(0, dtype=np.int32)
        except (OSError, RuntimeError) as exc:
            raise self.fail(f"'/samples/label' cannot be read ({type(exc).__name__})") from None
        splits = self.strings("samples/split", n)
        classes = list(self.strings("classes", None))
        sample_meta: dict[str, np.ndarray] = {}
        if self.group("samples/meta", required=False) is not None:
            for column in self.f["samples/meta"]:
                sample_meta[column] = self.strings(f"samples/meta/{column}", n)
        if self.group("failed", required=False) is not None:
            failed = self.dataset("failed/id", "text", None).shape[0]
            self.dataset("failed/reason", "text", failed, against="/failed/id")

        self.distinct_ids(ids)
        if len(set(classes)) != len(classes):
            twice = sorted({c for c in classes if classes.count(c) > 1})
            raise self.fail(f"'/classes' names a class twice: {', '.join(repr(printable(c)) for c in twice[:_SHOWN])}")
        bad = np.flatnonzero((labels < -1) | (labels >= len(classes)))
        if bad.size:
            row = int(bad[0])
            raise self.fail(
                f"sample '{printable(ids[row])}' has label {int(labels[row])}, and labels must be -1 (unlabelled) "
                f"or 0 to {len(classes) - 1} (the store has {len(classes)} classes); {bad.size:,} such row(s)"
            )
        allowed = {"", *SPLIT_NAMES}
        unknown = set(splits.tolist()) - allowed
        if unknown:
            raise self.fail(
                f"'/samples/split' holds {', '.join(repr(printable(s)) for s in sorted(unknown)[:_SHOWN])}; "
                f"a split is one of {', '.join(SPLIT_NAMES)} or ''"
            )
        labels = labels.astype(np.int32, copy=False)  # in range, so exact
        return SampleArrays(meta=meta, ids=ids, labels=labels, splits=splits, classes=classes, sample_meta=sample_meta)

    def distinct_ids(self, ids: np.ndarray) -> None:
        # featx writes ids sorted, so strictly increasing ids are distinct without a set; a store
        # written in another order (tools, tests) is still accepted when its ids are distinct.
        if ids.size < 2 or bool((ids[1:] > ids[:-1]).all()):
            return
        seen: set[str] = set()
        twice: list[str] = []
        for image_id in ids.tolist():
            if image_id in seen:
                twice.append(image_id)
            seen.add(image_id)
        if twice:
            shown = ", ".join(f"'{printable(i)}'" for i in twice[:_SHOWN]) + (", ..." if len(twice) > _SHOWN else "")
            raise self.fail(
                f"{len(twice):,} sample id(s) appear more than once in '/samples/id' ({shown}); "
                "each row must be a distinct sample"
            )

    def features(self, n: int) -> None:
        group = self.group("features", required=True)
        for name in group:
            obj = group.get(name)
            if not is_layer(obj):
                continue  # dimension scales, and anything else that is not a feature dataset
            where = f"feature dataset '/features/{printable(name)}'"
            if obj.ndim != 2:
                raise self.fail(f"{where} must have two dimensions (rows, columns); got shape {obj.shape}")
            if obj.dtype.kind not in "fiu":
                raise self.fail(f"{where} must hold numbers; got {obj.dtype}")
            if obj.shape[0] != n:
                raise self.fail(f"{where} has {obj.shape[0]:,} rows for {n:,} samples")
            layer_attrs = self.attrs(obj, where)
            for key in _LAYER_TEXT_ATTRS:
                if key in layer_attrs and not isinstance(layer_attrs[key], str):
                    raise self.fail(f"attribute '{key}' of {where} must be text")
            if CHECKSUMS in layer_attrs or CHECKSUM_ROWS in layer_attrs:
                rows, crcs = layer_attrs.get(CHECKSUM_ROWS), layer_attrs.get(CHECKSUMS)
                crcs = crcs if isinstance(crcs, list) else [crcs]
                if (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1
                        or not all(isinstance(c, int) and not isinstance(c, bool) for c in crcs)
                        or len(crcs) != -(-n // rows)):
                    raise self.fail(f"the checksums of {where} do not cover its {n:,} rows")


def validate_store(f: h5py.File, path: Path) -> SampleArrays:
    """Check that the open file *f* is a well-formed featx store, and return its sample table.

    Parameters
    ----------
    f : h5py.File
        Open for reading.
    path : Path
        Its path, for messages.

    Returns
    -------
    SampleArrays
        Root attributes, ids, labels, splits, classes and sample metadata, already read.

    Raises
    ------
    StoreError
        Not a featx store (no ``featx_format``), or of a newer format.
    MalformedStoreError
        The first way in which the file breaks format 1 (see the module docstring).
    """
    checker = _Checker(f, path)
    checker.format_version()
    meta = checker.root_attrs()
    table = checker.samples(meta)
    rows = meta.get("rows")
    if rows is not None and rows != len(table.ids):
        raise checker.fail(f"its 'rows' attribute says {rows:,} rows, '/samples/id' has {len(table.ids):,}")
    checker.features(len(table.ids))
    return table

