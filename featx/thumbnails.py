"""Thumbnails of the images a store was made from, for the HTML reports (both sides).

The classification side never reads images: its report
(:func:`featx.classification.write_report`) takes a callback ``ids -> {id:
JPEG bytes}``.  This module makes one from what ``--data`` names or from a
store's recorded ``data_root``.  A thumbnail is decoration: an image that
cannot be read (moved, corrupt, too large) is simply left out of the grid.

A report shows at most a few dozen images, so a callback costs that many
reads, whatever the number of images: a store gives its ``data_root`` from
its root attributes alone (not its sample table), and a local folder's image
is the file ``root / id`` (ids are the paths relative to it), opened without
listing the folder.  Other sources (a manifest, archives, a URL) are listed
when the callback is called (a report calls it once), and each id is found in
the sorted listing by bisection.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .errors import FeatxError

__all__ = ["THUMBNAIL_SIZE", "image_thumbnails", "store_thumbnails"]

log = logging.getLogger("featx")

#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 96

Thumbnails = Callable[[Sequence[str]], Mapping[str, bytes]]


def _thumbnail(open_image: Callable[[], BinaryIO], size: int) -> bytes | None:
    """The JPEG thumbnail of the image *open_image* opens; ``None`` when it cannot be read."""
    from PIL import Image

    try:
        with open_image() as file, Image.open(file) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            thumbnail = image.convert("RGB")
        thumbnail.thumbnail((size, size))
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError, FeatxError):
        return None
    return buffer.getvalue()


def _local_folder(data: Any) -> Path | None:
    """The folder *data* names when it is one on this machine (alone, or the one item of a sequence), else ``None``."""
    if isinstance(data, Sequence) and not isinstance(data, str) and len(data) == 1:
        data = data[0]
    if not isinstance(data, (str, os.PathLike)):
        return None
    text = os.fspath(data)
    if not isinstance(text, str) or "://" in text:
        return None
    folder = Path(text).expanduser()
    return folder if folder.is_dir() else None


def _member_path(root: Path, image_id: str) -> Path | None:
    """The file of *image_id* under *root*; ``None`` for an id that is not a path inside it.

    Ids are relative paths with ``/`` separators; one that is absolute, empty,
    holds ``..`` or ``.``, a backslash or a NUL character could name a file
    outside the folder (ids come from files anyone can make), so it has no file.
    """
    parts = image_id.split("/")
    if not image_id or "\\" in image_id or "\0" in image_id or any(p in ("", ".", "..") for p in parts):
        return None
    return root.joinpath(*parts)


def _folder_thumbnails(root: Path, ids: Sequence[str], size: int) -> dict[str, bytes]:
    images: dict[str, bytes] = {}
    for image_id in ids:
        path = _member_path(root, image_id)
        if path is None:
            continue
        jpeg = _thumbnail(lambda path=path: open(path, "rb"), size)
        if jpeg is not None:
            images[image_id] = jpeg
    return images


def _source_thumbnails(data: Any, ids: Sequence[str], size: int) -> dict[str, bytes]:
    from .extraction import open_source

    try:
        source = open_source(data)
    except FeatxError as exc:
        log.info(f"report: no thumbnails ({exc})")
        return {}
    listed = source.ids  # sorted: each id is found by bisection, without a dict of every id
    images: dict[str, bytes] = {}
    for image_id in ids:
        k = bisect.bisect_left(listed, image_id)
        if k == len(listed) or listed[k] != image_id:
            continue
        jpeg = _thumbnail(lambda k=k: source.open(k), size)
        if jpeg is not None:
            images[image_id] = jpeg
    return images


def image_thumbnails(data: Any, *, size: int = THUMBNAIL_SIZE) -> Thumbnails:
    """A callback ``ids -> {id: JPEG bytes}`` reading the images of *data* (a folder, manifest, archive, URL).

    A local folder's images are read by path, the folder never listed (an id
    that is not a path inside it gets no thumbnail); any other source is
    listed on each call, so that a report without misclassified images lists
    nothing.
    """

    def read(ids: Sequence[str]) -> dict[str, bytes]:
        if not ids:
            return {}
        folder = _local_folder(data)
        if folder is not None:
            return _folder_thumbnails(folder, ids, size)
        return _source_thumbnails(data, ids, size)

    return read


def _store_path(spec: str) -> Path:
    """The store of a ``STORE[:LAYER]`` input."""
    path = Path(spec)
    if path.exists() or ":" not in spec:
        return path
    return Path(spec.rpartition(":")[0])


def store_thumbnails(features: Sequence[str | os.PathLike], *, size: int = THUMBNAIL_SIZE) -> Thumbnails:
    """A callback reading the images of the first input's ``data_root`` (where its store was extracted from).

    Only the store's root attributes are read, not its sample table.
    """

    def read(ids: Sequence[str]) -> Mapping[str, bytes]:
        from .store import recorded_attrs

        if not ids:
            return {}
        root = recorded_attrs(_store_path(os.fspath(features[0])), ["data_root"]).get("data_root")
        if not isinstance(root, str) or not root:
            return {}
        return image_thumbnails(root, size=size)(ids)

    return read
