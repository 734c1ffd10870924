"""Thumbnails of the images a store was made from, for the HTML reports (both sides).

The classification side never reads images: its report
(:func:`featx.classification.write_report`) takes a callback ``ids -> {id:
JPEG bytes}``.  This module makes one from an image source (what ``--data``
names, through :func:`featx.extraction.open_source`) or from a store's
recorded ``data_root``.  A thumbnail is decoration: an image that cannot be
read (moved, corrupt, too large) is simply left out of the grid.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import FeatxError

__all__ = ["THUMBNAIL_SIZE", "image_thumbnails", "store_thumbnails"]

log = logging.getLogger("featx")

#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 96

Thumbnails = Callable[[Sequence[str]], Mapping[str, bytes]]


def image_thumbnails(data: Any, *, size: int = THUMBNAIL_SIZE) -> Thumbnails:
    """A callback ``ids -> {id: JPEG bytes}`` reading the images of *data* (a folder, manifest, archive, URL).

    The source is listed on the first call only, so that a report without
    misclassified images lists nothing.
    """

    def read(ids: Sequence[str]) -> dict[str, bytes]:
        from PIL import Image

        from .extraction import open_source

        try:
            source = open_source(data)
        except FeatxError as exc:
            log.info(f"report: no thumbnails ({exc})")
            return {}
        position = {image_id: k for k, image_id in enumerate(source.ids)}
        images: dict[str, bytes] = {}
        for image_id in ids:
            k = position.get(image_id)
            if k is None:
                continue
            try:
                with source.open(k) as file, Image.open(file) as image:
                    image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
                    thumbnail = image.convert("RGB")
                thumbnail.thumbnail((size, size))
                buffer = io.BytesIO()
                thumbnail.save(buffer, format="JPEG", quality=85)
            except (OSError, ValueError, Image.DecompressionBombError, FeatxError):
                continue
            images[image_id] = buffer.getvalue()
        return images

    return read


def _store_path(spec: str) -> Path:
    """The store of a ``STORE[:LAYER]`` input."""
    path = Path(spec)
    if path.exists() or ":" not in spec:
        return path
    return Path(spec.rpartition(":")[0])


def store_thumbnails(features: Sequence[str | os.PathLike], *, size: int = THUMBNAIL_SIZE) -> Thumbnails:
    """A callback reading the images of the first input's ``data_root`` (where its store was extracted from)."""

    def read(ids: Sequence[str]) -> Mapping[str, bytes]:
        from .store import open_store

        try:
            with open_store(_store_path(os.fspath(features[0]))) as store:
                root = store.provenance.get("data_root")
        except (FeatxError, OSError):
            return {}
        if not root:
            return {}
        return image_thumbnails(str(root), size=size)(ids)

    return read
