"""Images named by paths and URLs: a manifest's rows, or the keys under a bucket's prefix.

:class:`PathListSource` reads each image where its id says: a path relative
to the source's base (a local folder, or a URL prefix), an absolute path, or
a URL.  :func:`list_prefix` lists a URL prefix (``s3://bucket/data``) as a
class-folder tree, as :func:`~featx.extraction._folder.discover_images` lists
a local folder.  Remote reads go through :mod:`._remote`: retried a bounded
number of times, several in flight per decoding worker.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

from ..errors import DataError, message
from ._folder import read_tree
from ._image_source import ImageSource, decode_bytes
from ._images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, load_image
from ._remote import check_url, decode_ahead, filesystem, is_url, join_url, listing_errors, read_bytes

__all__ = ["PathListSource", "list_prefix"]


@dataclass(frozen=True, kw_only=True)
class PathListSource(ImageSource):
    """Images at paths or URLs: relative to :attr:`base`, absolute, or URLs.

    Attributes
    ----------
    base : str
        An absolute local folder, or a URL prefix: where relative ids are.
    listed : str
        What was listed (a manifest's path or URL, a URL prefix): the store's ``data_root``.
    """

    base: str
    listed: str

    @property
    def location(self) -> str:
        return self.listed

    def where(self, index: int) -> str:
        """The path or URL of image *index*."""
        image_id = self.ids[index]
        if is_url(image_id) or os.path.isabs(image_id):
            return image_id
        return join_url(self.base, image_id) if is_url(self.base) else os.path.join(self.base, image_id)

    def open(self, index: int) -> BinaryIO:
        where = self.where(index)
        return io.BytesIO(read_bytes(where)) if is_url(where) else open(where, "rb")

    def load(self, index: int, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
        where = self.where(index)
        if is_url(where):
            return decode_bytes(lambda: read_bytes(where), max_pixels=max_pixels)
        return load_image(where, max_pixels=max_pixels)

    def load_many(self, indices: Sequence[int], *, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Any]:
        wheres = [self.where(i) for i in indices]
        if not any(is_url(w) for w in wheres):
            yield from super().load_many(indices, max_pixels=max_pixels)
            return
        # The reads wait on the network: several in flight.
        yield from decode_ahead([partial(_read, w) for w in wheres], max_pixels=max_pixels)

    def display_name(self, index: int) -> str:
        return self.where(index)

    def check_available(self) -> None:
        relative = any(not (is_url(i) or os.path.isabs(i)) for i in self.ids)
        if relative and not is_url(self.base) and not os.path.isdir(self.base):
            raise DataError(
                message(
                    f"the images' folder is not at '{self.base}' on node {socket.gethostname()}",
                    hint="every Ray node must see the images at the same path (a shared file system), or read "
                    "them from object storage (s3://...)",
                )
            )


def _read(where: str) -> bytes:
    if is_url(where):
        return read_bytes(where)
    with open(where, "rb") as file:
        return file.read()


def list_prefix(url: str) -> PathListSource:
    """The images under a URL prefix, read as a class-folder tree (labels and splits from the key's folders).

    The fingerprint hashes each key with its size and ETag: a listing that
    changed is an incremental update of a complete store.

    Raises
    ------
    DataError
        The scheme has no backend, the bucket or prefix does not exist, access
        is refused, the endpoint cannot be reached, or no image is there.
    """
    check_url(url)
    base = url.rstrip("/")
    fs, path = filesystem(base, fresh=True)
    with listing_errors(url):
        found = fs.find(path, detail=True)
    keys: dict[str, dict[str, Any]] = {}
    for name, info in found.items():
        relative = name[len(path) :].lstrip("/") if name.startswith(path) else name
        parts = relative.split("/")
        if any(p.startswith(".") for p in parts) or os.path.splitext(parts[-1])[1].lower() not in IMAGE_EXTENSIONS:
            continue
        keys[relative] = info
    if not keys:
        raise DataError(
            message(
                f"no images found under '{url}': looked for keys ending in {', '.join(sorted(IMAGE_EXTENSIONS))}",
                hint="put images in one folder (prefix) per class",
            )
        )
    ids = sorted(keys)
    tree = read_tree(ids, where=url, data_for=lambda folder: join_url(base, folder))
    digest = hashlib.sha1()
    for image_id in ids:
        info = keys[image_id]
        digest.update(f"{image_id}\0{info.get('size')}\0{info.get('ETag', info.get('etag', ''))}\n".encode())
    return PathListSource(
        base=base,
        listed=url,
        ids=tuple(ids),
        labels=tree.labels,
        splits=tree.splits,
        classes=tree.classes,
        fingerprint=digest.hexdigest(),
        layout=tree.layout,
    )
