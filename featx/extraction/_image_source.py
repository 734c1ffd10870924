"""What an image source is: the :class:`ImageSource` seam, and the sources of files and of images in memory.

An image source lists its images once (sorted ids, labels, splits, classes and
a fingerprint that tells whether the listing changed) and opens any one of
them on request.  The engine, the decoding workers, the Ray workers and
:class:`~featx.extraction.FeatureExtractor` read images only through it, so
a new kind of source (a list of files, archives, object storage) is one class,
not a change to the engine.

Sources given here: files under a folder (:class:`FileSource`: a class-folder
tree, :func:`~featx.extraction._folder.discover_images`, or loose image files,
:func:`~featx.extraction._folder.loose_files`) and images already in memory
(:class:`InMemorySource`).  :func:`~featx.extraction._sources.open_source`
turns what a user names with ``--data`` into a source.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import DataError, message
from ._images import MAX_IMAGE_PIXELS, ImageDecodeError, decode_image, load_image

__all__ = ["ImageSource", "FileSource", "InMemorySource", "decode_bytes", "file_fingerprint", "file_fingerprints"]

log = logging.getLogger("featx")


@dataclass(frozen=True, kw_only=True)
class ImageSource:
    """The images an extraction reads, in sorted id order, and a way to open each.

    Attributes
    ----------
    ids : tuple of str, (n_images,)
        Sorted, unique: a store's ``/samples/id``.
    labels : ndarray of int32, (n_images,)
        Index into ``classes``, ``-1`` for unlabelled images.
    splits : tuple of str, (n_images,)
        ``'train'``, ``'val'``, ``'test'`` or ``''``.
    classes : tuple of str
        Class names, sorted.
    fingerprint : str
        Changes whenever the listing or an image's size changes (for files,
        its modification time too): a complete store whose fingerprint
        differs is updated incrementally.
    earlier_fingerprint : str, optional
        What an older featx recorded for the same listing (files: ids and
        sizes only), accepted as the same images in a store it made.
    layout : tuple of (int, str)
        What the listing found, as ``(logging level, message)``.
    meta : dict of str -> tuple of str, each (n_images,)
        What else the listing says of each image (a manifest's further
        columns), by name: a store's ``/samples/meta/<name>``.
    """

    ids: tuple[str, ...]
    labels: np.ndarray
    splits: tuple[str, ...]
    classes: tuple[str, ...]
    fingerprint: str
    layout: tuple[tuple[int, str], ...] = ()
    meta: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    earlier_fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def location(self) -> str:
        """Where the images are, as a store records it (``data_root``)."""
        raise NotImplementedError

    def open(self, index: int) -> BinaryIO:
        """The encoded bytes of image *index*, as a binary file object (close it).

        Raises
        ------
        OSError
            The image cannot be read.
        """
        raise NotImplementedError

    def load(self, index: int, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
        """Image *index* decoded into an 8-bit RGB PIL image.

        Raises
        ------
        ImageDecodeError
            With a short reason (unreadable, not an image, truncated, too large, ...).
        """
        return decode_image(lambda: self.open(index), max_pixels=max_pixels)

    def load_many(self, indices: Sequence[int], *, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Any]:
        """Images *indices* decoded, in order, each an RGB PIL image or the :class:`ImageDecodeError` it raised.

        A decoding worker asks for a batch's images at once: a source whose
        reads wait on a network overrides this to keep several in flight.
        """
        for index in indices:
            try:
                yield self.load(index, max_pixels=max_pixels)
            except ImageDecodeError as exc:
                yield exc

    def display_name(self, index: int) -> str:
        """How image *index* is shown to a user (a path, a URL): its id by default."""
        return self.ids[index]

    def portable(self) -> ImageSource:
        """This source as another process or node can open it (absolute paths)."""
        return self

    def check_available(self) -> None:
        """Raise :class:`~featx.errors.DataError` when this process cannot open the images (a Ray node)."""

    def log_layout(self) -> None:
        """Log the layout found and its warnings (the ``featx`` logger; the CLI shows INFO unless ``-q``)."""
        for level, text in self.layout:
            log.log(level, text)


def decode_bytes(read: Callable[[], bytes], *, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """Decode the bytes that *read* returns (an object's, an archive member's) into an RGB PIL image.

    Raises
    ------
    ImageDecodeError
        ``unreadable: <reason>`` when *read* raises :class:`OSError`, else as
        :func:`~featx.extraction._images.decode_image`.
    """
    try:
        data = read()
    except OSError as exc:
        raise ImageDecodeError(f"unreadable: {exc.strerror or exc}") from None
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    return decode_image(lambda: io.BytesIO(data), max_pixels=max_pixels)


def file_fingerprints(root: Path, ids: Sequence[str]) -> tuple[str, str]:
    """Hashes of the files ``root / id`` that tell whether a folder's images changed: ``(current, sizes only)``.

    The current one hashes each id with its size and modification time (ns):
    a file replaced in place by one of the same size (another photo, a
    re-encoded one) changes it, where sizes alone would not.  Times cost
    nothing more (the same stat), but change when a folder is copied without
    keeping them (``cp -r``, not ``cp -a``/``rsync -a``).  The second, of
    ids and sizes only, is what featx recorded before: a store made then is
    still recognised (:attr:`ImageSource.earlier_fingerprint`).
    """
    current, sizes = hashlib.sha1(b"featx-files-2\n"), hashlib.sha1()
    for image_id in ids:
        try:
            stat = os.stat(root / image_id)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1  # a broken link: still a sample, it fails at decoding
        sizes.update(f"{image_id}\0{size}\n".encode())
        current.update(f"{image_id}\0{size}\0{mtime}\n".encode())
    return current.hexdigest(), sizes.hexdigest()


def file_fingerprint(root: Path, ids: Sequence[str]) -> str:
    """Hash of the ids, sizes and modification times of the files ``root / id`` (see :func:`file_fingerprints`)."""
    return file_fingerprints(root, ids)[0]


@dataclass(frozen=True, kw_only=True)
class FileSource(ImageSource):
    """Image files under one folder, by their paths relative to it (a folder's walk, or loose files).

    Attributes
    ----------
    root : Path
        The folder; ids are paths relative to it with ``/`` separators.
    """

    root: Path

    @property
    def location(self) -> str:
        return str(self.root.resolve())

    def path(self, index: int) -> Path:
        """The file of image *index*."""
        return self.root / self.ids[index]

    def open(self, index: int) -> BinaryIO:
        return open(self.path(index), "rb")

    def load(self, index: int, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
        # By path: a broken link or an empty file gets its own reason.
        return load_image(self.path(index), max_pixels=max_pixels)

    def display_name(self, index: int) -> str:
        return str(self.path(index))

    def portable(self) -> FileSource:
        from dataclasses import replace

        return replace(self, root=self.root.resolve())

    def check_available(self) -> None:
        import socket

        if not self.root.is_dir():
            raise DataError(
                message(
                    f"the data folder is not at '{self.root}' on node {socket.gethostname()}",
                    hint="every Ray node must see the images at the same path (a shared file system)",
                )
            )


@dataclass(frozen=True, kw_only=True)
class InMemorySource(ImageSource):
    """Images already decoded (PIL images), unlabelled; ids are their positions, zero-padded so that they sort.

    Attributes
    ----------
    images : tuple of PIL.Image.Image
    """

    images: tuple[Any, ...] = field(repr=False)

    @property
    def location(self) -> str:
        return "<in memory>"

    @classmethod
    def of_images(cls, images: Sequence[Any]) -> InMemorySource:
        width = len(str(max(len(images) - 1, 0)))
        ids = tuple(f"{i:0{width}d}" for i in range(len(images)))
        digest = hashlib.sha1(f"{len(images)} images in memory {id(images)}".encode()).hexdigest()
        return cls(
            ids=ids,
            labels=np.full(len(ids), -1, dtype=np.int32),
            splits=("",) * len(ids),
            classes=(),
            fingerprint=digest,
            images=tuple(images),
        )

    def open(self, index: int) -> BinaryIO:
        buffer = io.BytesIO()
        self.images[index].save(buffer, format="PNG")
        buffer.seek(0)
        return buffer

    def load(self, index: int, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
        from ._images import ImageDecodeError, to_rgb

        image = self.images[index]
        if image.width * image.height > max_pixels:
            raise ImageDecodeError(
                f"decompression bomb refused: {image.width}x{image.height} = {image.width * image.height:,} pixels, "
                f"more than the limit of {max_pixels:,}"
            )
        return to_rgb(image)

    def display_name(self, index: int) -> str:
        return f"image {index}"
