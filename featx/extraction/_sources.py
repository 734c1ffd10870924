"""What ``--data`` names, as an image source: :func:`open_source`.

=================================================  =====================================================
``--data``                                         source (module)
=================================================  =====================================================
a folder                                           a class-folder tree (``_folder``)
``list.csv``, ``list.parquet``                     a manifest (``_manifest``)
``data.tar``, ``'shards/train-{000..127}.tar'``    tar archives: WebDataset samples or a tree (``_archive``)
``s3://bucket/prefix`` (``gs://``, ``az://``,      a tree under the prefix (``_pathlist``); a URL ending
``https://``, ...)                                 like a manifest or archive is read as one
=================================================  =====================================================

A new kind of source is one module and one line of :func:`_kind`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError, message, option
from ._archive import is_archive, open_archive
from ._folder import discover_images, loose_files
from ._image_source import ImageSource
from ._manifest import MANIFEST_SUFFIXES, is_manifest, read_manifest
from ._pathlist import list_prefix
from ._remote import check_url, is_url

__all__ = ["DATA_KINDS", "open_source"]

#: What ``--data`` may name, as its help and errors say.
DATA_KINDS = (
    "a folder, a manifest (" + ", ".join(MANIFEST_SUFFIXES) + "), a .tar archive or a shard pattern "
    "('train-{000000..000127}.tar'), or a URL (s3://bucket/prefix)"
)


def _kind(data: str) -> str:
    """``manifest``, ``archive``, ``url`` (a prefix), ``folder`` or ``other`` (files, or nothing there)."""
    if not is_url(data) and Path(data).expanduser().is_dir():
        return "folder"  # whatever its name: 'photos.csv/' or 'set-{a}/' is a folder that exists
    if is_manifest(data):
        return "manifest"
    if is_archive(data):
        return "archive"
    return "url" if is_url(data) else "other"


def _open_one(data: str) -> ImageSource:
    kind = _kind(data)
    if is_url(data):
        check_url(data)
    if kind == "manifest":
        return read_manifest(data)
    if kind == "archive":
        return open_archive(data)
    if kind == "url":
        return list_prefix(data)
    path = Path(data).expanduser()
    if path.is_file():
        raise DataError(message(option("data"), allowed=DATA_KINDS, got=path))
    return discover_images(path)


def open_source(data: str | os.PathLike | ImageSource | Sequence[str | os.PathLike]) -> ImageSource:
    """The image source that *data* names.

    Parameters
    ----------
    data : path, URL, sequence of paths, or ImageSource
        A class-folder tree (labels and splits from the folder names), a
        manifest (CSV or Parquet: ``path``, ``label``, ``split``, ...), a tar
        archive or a brace pattern of WebDataset shards, or a URL of any of
        these or of a prefix holding a class-folder tree; or a sequence: one
        of those alone, else image files and folders (unlabelled, under their
        common folder); or a source, as it is.

    Raises
    ------
    DataError
        Nothing usable is there, or it cannot be read (each in one line, before
        any image is decoded).
    """
    if isinstance(data, ImageSource):
        return data
    if isinstance(data, (str, os.PathLike)):
        return _open_one(os.fspath(data))
    items = [os.fspath(d) for d in data]
    if len(items) == 1 and _kind(items[0]) != "other":
        return _open_one(items[0])
    alone = [i for i in items if _kind(i) in ("manifest", "archive", "url")]
    if alone:
        raise DataError(
            message(
                f"{option('data')} '{alone[0]}' is a manifest, an archive or a URL, which must be given alone "
                f"(not with {len(items) - 1} other path(s))",
                hint="pass it alone, or image files and folders without it",
            )
        )
    return loose_files(items)
