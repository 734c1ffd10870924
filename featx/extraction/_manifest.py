"""A manifest (a CSV or Parquet list of images) as an image source.

Columns:

``path`` (required)
    The image: relative to the manifest's folder, absolute, or a URL
    (``s3://bucket/a.jpg``).  The path as written is the sample's id.
``label`` (optional)
    The class name; empty for an unlabelled image.  Integers are class names
    too (``0``, ``1``, ...), sorted by their value.
``split`` (optional)
    ``train``, ``val``, ``test`` or empty.
any other column
    Kept as text, one value per image, in the store's sample metadata
    (``/samples/meta/<column>``).

The manifest is read in chunks of :data:`CHUNK_ROWS` rows (pandas for CSV,
pyarrow for Parquet), so that 10^6 rows are listed in seconds and a bounded
memory.  A path listed twice is an error; a missing or unreadable image is
listed in ``/failed`` with the reason, as any image that cannot be decoded.
The fingerprint is the hash of the manifest's bytes: a complete store made
from an earlier version of the manifest is updated incrementally (added rows
computed alone).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, message, option
from ._listing import (
    check_splits,
    check_unique,
    class_labels,
    describe_listing,
    in_order,
    sorted_order,
    splits_in_order,
)
from ._pathlist import PathListSource
from ._remote import check_url, filesystem, is_url, listing_errors

__all__ = ["MANIFEST_SUFFIXES", "CHUNK_ROWS", "is_manifest", "read_manifest"]

#: File name endings read as a manifest -> its format.
MANIFEST_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Rows read at a time.
CHUNK_ROWS = 100_000
# The columns featx reads; the others are the images' metadata.
_PATH, _LABEL, _SPLIT = "path", "label", "split"
_COLUMNS_HINT = "a manifest has a header row naming its columns: path (required), label, split, and any others"


def is_manifest(data: str) -> bool:
    """Whether *data* (a path or URL) names a manifest, by its ending."""
    return os.path.splitext(data.rstrip("/"))[1].lower() in MANIFEST_SUFFIXES


def _manifest_bytes(manifest: str) -> tuple[str, Any, str]:
    """Where relative paths are, what pandas/pyarrow read, and the hash of the manifest's bytes."""
    if is_url(manifest):
        check_url(manifest)
        fs, path = filesystem(manifest, fresh=True)
        with listing_errors(manifest):
            data = fs.cat_file(path)
        return manifest.rsplit("/", 1)[0], io.BytesIO(data), hashlib.sha256(data).hexdigest()
    path = Path(manifest).expanduser()
    if not path.exists():
        raise DataError(
            message(f"manifest not found: '{path}' does not exist", hint=f"pass {option('data')} with a CSV or Parquet file")
        )
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(message(f"cannot read the manifest '{path}': {exc.strerror or exc}")) from None
    return str(path.absolute().parent), path, digest.hexdigest()


def _chunks(source: Any, kind: str) -> Iterator[dict[str, list[str]]]:
    """The manifest's columns, chunk by chunk, as text ('' for a missing value)."""
    if kind == "csv":
        import pandas as pd

        # dtype=object: Python strings as they are (pandas' str dtype converts them twice)
        with pd.read_csv(source, dtype=object, keep_default_na=False, chunksize=CHUNK_ROWS) as reader:
            for chunk in reader:
                yield {str(name): chunk[name].tolist() for name in chunk.columns}
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(message("a Parquet manifest needs pyarrow", hint="pip install pyarrow")) from None
    for batch in pq.ParquetFile(source).iter_batches(batch_size=CHUNK_ROWS):
        yield {
            name: ["" if v is None else v for v in batch.column(i).cast(pa.string()).to_pylist()]
            for i, name in enumerate(batch.schema.names)
        }


def _read_columns(source: Any, kind: str, shown: str) -> dict[str, list[str]]:
    columns: dict[str, list[str]] = {}
    try:
        for chunk in _chunks(source, kind):
            if not columns and _PATH not in chunk:
                raise DataError(
                    message(
                        f"the manifest '{shown}' has no column '{_PATH}' (its columns: {', '.join(chunk) or 'none'})",
                        hint=_COLUMNS_HINT,
                    )
                )
            for name, values in chunk.items():
                columns.setdefault(name, []).extend(values)
    except DataError:
        raise
    except Exception as exc:  # pandas' and pyarrow's errors of a file that is no manifest
        text = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise DataError(
            message(f"cannot read the manifest '{shown}' as {kind.upper()}: {text}", hint=_COLUMNS_HINT)
        ) from None
    if not columns or not columns[_PATH]:
        raise DataError(message(f"the manifest '{shown}' lists no image", hint=_COLUMNS_HINT))
    return columns


def read_manifest(manifest: str | os.PathLike) -> PathListSource:
    """The images a CSV or Parquet manifest lists (see the module docstring for its columns).

    Raises
    ------
    DataError
        The manifest is missing or unreadable, has no ``path`` column, lists a
        path twice or an empty path, or a split that is not ``train``, ``val``,
        ``test`` or empty.
    """
    manifest = os.fspath(manifest)
    kind = MANIFEST_SUFFIXES[os.path.splitext(manifest)[1].lower()]
    base, source, fingerprint = _manifest_bytes(manifest)
    shown = manifest if is_url(manifest) else str(Path(manifest).expanduser())
    columns = _read_columns(source, kind, shown)
    paths = columns.pop(_PATH)
    empty = [row for row, p in enumerate(paths, start=1) if not p]
    if empty:
        raise DataError(
            message(
                f"{len(empty):,} row(s) of the manifest '{shown}' have an empty path (the first: data row {empty[0]})",
                hint="give every row the path or URL of its image",
            )
        )
    check_unique(paths, what=f"manifest '{shown}'", hint="list each image once")
    order = sorted_order(paths)
    ids = in_order(paths, order)
    # Labels and splits are read in the file's order and then reordered as small integers:
    # a Python string per row taken in sorted order costs a cache miss each.
    names = columns.pop(_LABEL, None)
    labels, classes = class_labels(names if names is not None else ("",) * len(ids))
    labels = labels[np.asarray(order, dtype=np.intp)]
    split_column = columns.pop(_SPLIT, None)
    splits = ("",) * len(ids)
    if split_column is not None:
        check_splits(split_column, what=f"manifest '{shown}'")
        splits = splits_in_order(split_column, order)
    meta = {name: in_order(values, order) for name, values in columns.items()}
    return PathListSource(
        base=base,
        listed=manifest if is_url(manifest) else str(Path(shown).absolute()),
        ids=ids,
        labels=labels,
        splits=splits,
        classes=classes,
        fingerprint=fingerprint,
        layout=((logging.INFO, describe_listing(f"the manifest '{shown}'", labels, classes, splits, meta)),),
        meta=meta,
    )
