"""Tar archives as an image source: one ``.tar``, or WebDataset shards named by a brace pattern.

``--data data.tar`` or ``--data 'shards/train-{000000..000127}.tar'`` (brace
patterns as WebDataset writes them: ``{000000..000127}`` ranges, zero-padded,
and ``{a,b}`` lists), local or behind a URL (``s3://bucket/train-{0..3}.tar``).
An archive holds either

- WebDataset samples: ``KEY.jpg`` (or another image extension), with an
  optional ``KEY.cls`` holding the class name or index and an optional
  ``KEY.json`` with ``label`` and ``split``; or
- a class-folder tree: member paths are read as a folder's paths
  (``train/ants/1.jpg``), labels and splits from their folders.

It is read as WebDataset samples when any member is a ``.cls`` or ``.json``
beside an image, or when no image sits in a folder; else as a tree.  Sample
ids are ``SHARD/KEY``: the shard's file name, then the WebDataset key
(``train-000003.tar/000123``) or the member's path (``data.tar/train/ants/1.jpg``).

Nothing is unpacked: listing reads each shard's headers once (shards in
parallel) and keeps every image's offset and size; a decoding worker then
reads an image by its offset (a range request for a remote shard).  Only
uncompressed archives can be read so; a ``.tar.gz`` is refused.  The
fingerprint hashes the shard list with each shard's size (and ETag, remote):
a complete store made from fewer shards is updated incrementally.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import DataError, message, option
from ._folder import read_tree
from ._image_source import ImageSource, decode_bytes
from ._images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS
from ._listing import check_splits, check_unique, class_labels, describe_listing, sorted_order
from ._remote import check_url, decode_ahead, filesystem, is_url, listing_errors, read_bytes

__all__ = ["ArchiveSource", "is_archive", "expand_braces", "open_archive"]

_BRACES = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
# WebDataset's split of a member name: the key is everything up to the first dot of the file name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
# A sample's image when it has several: the first of these, else the first in the shard.
_PREFERRED = ("jpg", "jpeg", "png", "webp")
_COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")
# Magic bytes of the compressions a .tar may be wrapped in.
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
# Shards indexed at once (listing waits on reads).
_INDEX_THREADS = 8
# Read-ahead of a remote shard's listing.
_BLOCK_BYTES = 4 << 20


def is_archive(data: str) -> bool:
    """Whether *data* (a path or URL) names tar archives: a ``.tar`` (compressed or not) or a brace pattern."""
    name = data.rstrip("/").rsplit("/", 1)[-1].lower()
    return name.endswith((".tar", *_COMPRESSED_SUFFIXES)) or _BRACES.search(name) is not None


def expand_braces(pattern: str) -> list[str]:
    """The names a brace pattern stands for, in order.

    Examples
    --------
    >>> expand_braces("train-{000..002}.tar")
    ['train-000.tar', 'train-001.tar', 'train-002.tar']
    >>> expand_braces("{a,b}-{0..1}.tar")
    ['a-0.tar', 'a-1.tar', 'b-0.tar', 'b-1.tar']
    """
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numbers = _RANGE.match(body)
    if numbers:
        first, last = numbers.groups()
        width = max(len(first), len(last)) if first.startswith("0") or last.startswith("0") else 0
        options = [f"{n:0{width}d}" for n in range(int(first), int(last) + 1)]
    else:
        options = [o for o in body.split(",") if o]
    rest = expand_braces(pattern[match.end() :])
    return [pattern[: match.start()] + option_ + tail for option_ in options for tail in rest]


@dataclass
class _Shard:
    """What one shard's headers say: its images and the labels beside them."""

    where: str
    size: int
    etag: str
    images: list[tuple[str, int, int]] = field(default_factory=list)  # (member name, data offset, size)
    sidecars: dict[str, bytes] = field(default_factory=dict)  # member name -> bytes (.cls, .json)

    @property
    def name(self) -> str:
        return self.where.rstrip("/").rsplit("/", 1)[-1]


def _open_shard(where: str) -> tuple[BinaryIO, int, str]:
    if is_url(where):
        fs, path = filesystem(where)
        info = fs.info(path)
        handle = fs.open(path, "rb", block_size=_BLOCK_BYTES, cache_type="readahead")
        return handle, int(info.get("size") or 0), str(info.get("ETag") or info.get("etag") or "")
    return open(where, "rb"), os.stat(where).st_size, ""


def _index_shard(where: str) -> _Shard:
    """Read a shard's headers once: the offset and size of every image, the bytes of every .cls and .json."""
    handle, size, etag = _open_shard(where)
    shard = _Shard(where, size, etag)
    with handle:
        head = handle.read(6)
        for magic, compression in _MAGIC.items():
            if head.startswith(magic):
                raise DataError(
                    message(
                        f"'{where}' is compressed ({compression}): featx reads uncompressed tar archives, image by image",
                        hint="decompress it first (the images are compressed already)",
                    )
                )
        handle.seek(0)
        try:
            with tarfile.open(fileobj=handle, mode="r:") as tar:
                while (member := tar.next()) is not None:
                    tar.members.clear()  # the index keeps offsets, not the headers
                    if not member.isfile():
                        continue
                    name = member.name.removeprefix("./")
                    extension = os.path.splitext(name)[1].lower()
                    if any(p.startswith(".") for p in name.split("/")):
                        continue
                    if extension in IMAGE_EXTENSIONS:
                        shard.images.append((name, member.offset_data, member.size))
                    elif extension in (".cls", ".json"):
                        extracted = tar.extractfile(member)
                        shard.sidecars[name] = extracted.read() if extracted is not None else b""
        except tarfile.TarError as exc:
            raise DataError(message(f"'{where}' is not a readable tar archive ({exc})")) from None
    return shard


@dataclass(frozen=True, kw_only=True)
class ArchiveSource(ImageSource):
    """Images inside tar archives, read by their offsets.

    Attributes
    ----------
    pattern : str
        The archive or shard pattern (local ones absolute): the store's ``data_root``.
    shards : tuple of str
        Each shard's path or URL.
    shard_of : ndarray of int32, (n_images,)
        Index into ``shards`` of each image.
    offsets, sizes : ndarray of int64, (n_images,)
        Where each image's bytes are in its shard.
    """

    pattern: str
    shards: tuple[str, ...]
    shard_of: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    sizes: np.ndarray = field(repr=False)

    @property
    def location(self) -> str:
        return self.pattern

    def _read(self, index: int) -> bytes:
        where = self.shards[self.shard_of[index]]
        start, size = int(self.offsets[index]), int(self.sizes[index])
        if is_url(where):
            return read_bytes(where, start, start + size)
        with open(where, "rb") as file:
            file.seek(start)
            return file.read(size)

    def open(self, index: int) -> BinaryIO:
        return io.BytesIO(self._read(index))

    def load(self, index: int, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
        return decode_bytes(partial(self._read, index), max_pixels=max_pixels)

    def load_many(self, indices: Sequence[int], *, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Any]:
        if not any(is_url(self.shards[self.shard_of[i]]) for i in indices):
            yield from super().load_many(indices, max_pixels=max_pixels)
            return
        yield from decode_ahead([partial(self._read, i) for i in indices], max_pixels=max_pixels)

    def display_name(self, index: int) -> str:
        where = self.shards[self.shard_of[index]]
        return where + self.ids[index][self.ids[index].index("/") :]

    def check_available(self) -> None:
        missing = [s for s in self.shards if not is_url(s) and not os.path.isfile(s)]
        if missing:
            raise DataError(
                message(
                    f"the shard '{missing[0]}' is not on node {socket.gethostname()}",
                    hint="every Ray node must see the shards at the same path (a shared file system), or read "
                    "them from object storage (s3://...)",
                )
            )


def _shard_paths(pattern: str) -> list[str]:
    """The shards a pattern names, each checked to exist and to be uncompressed."""
    if pattern.lower().endswith(_COMPRESSED_SUFFIXES):
        raise DataError(
            message(
                f"'{pattern}' is a compressed tar archive: featx reads uncompressed tar archives, image by image",
                hint="decompress it first (the images are compressed already)",
            )
        )
    shards = expand_braces(pattern)
    if not shards:
        raise DataError(
            message(
                f"the shard pattern '{pattern}' names no shard",
                hint="write a range such as 'train-{000000..000127}.tar' (first <= last) or a list such as '{a,b}.tar'",
            )
        )
    names = [s.rsplit("/", 1)[-1] for s in shards]
    if len(set(names)) < len(names):
        raise DataError(message(f"the shards of '{pattern}' must have different file names (they are the ids' SHARD)"))
    if not is_url(pattern):
        shards = [str(Path(s).expanduser().absolute()) for s in shards]
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            what = "archive" if len(shards) == 1 else f"{len(missing)} of the {len(shards)} shards of '{pattern}'"
            raise DataError(message(f"{what} not found: '{missing[0]}' does not exist", hint=f"check {option('data')}"))
    return shards


def open_archive(pattern: str | os.PathLike) -> ArchiveSource:
    """The images of a tar archive or of the shards a brace pattern names (see the module docstring).

    Raises
    ------
    DataError
        The pattern names no shard, a shard is missing, compressed or no tar
        archive, the shards hold no image, a label or split is unreadable, or
        a remote shard cannot be reached.
    """
    pattern = os.fspath(pattern)
    if is_url(pattern):
        check_url(pattern)
        filesystem(pattern, fresh=True)  # each shard's size and ETag now
    shards = _shard_paths(pattern)
    with listing_errors(pattern), ThreadPoolExecutor(min(_INDEX_THREADS, len(shards))) as pool:
        indexed = list(pool.map(_index_shard, shards))
    shown = pattern if is_url(pattern) else str(Path(pattern).expanduser().absolute())
    webdataset = any(s.sidecars for s in indexed) or not any("/" in m[0] for s in indexed for m in s.images)
    rows = _webdataset_rows(indexed, shown) if webdataset else _tree_rows(indexed)
    if not rows:
        raise DataError(
            message(
                f"no images found in '{shown}': looked for members ending in {', '.join(sorted(IMAGE_EXTENSIONS))}",
                hint="write the images into the archive as KEY.jpg (WebDataset) or as a class-folder tree",
            )
        )
    order = sorted_order([r[0] for r in rows])
    rows = [rows[i] for i in order]
    ids = tuple(r[0] for r in rows)
    check_unique(ids, what=f"archive '{shown}'", hint="an archive holds each member once")
    layout: tuple[tuple[int, str], ...]
    if webdataset:
        labels, classes = class_labels([r[4] for r in rows])
        splits = tuple(r[5] for r in rows)
        check_splits(splits, what=f"archive '{shown}'")
        layout = ((logging.INFO, describe_listing(f"{len(indexed)} shard(s) '{shown}'", labels, classes, splits)),)
    else:
        tree = read_tree([r[4] for r in rows], where=shown, data_for=None)
        labels, classes, splits, layout = tree.labels, tree.classes, tree.splits, tree.layout
    digest = hashlib.sha1()
    for shard in indexed:
        digest.update(f"{shard.name}\0{shard.size}\0{shard.etag}\n".encode())
    return ArchiveSource(
        pattern=shown,
        shards=tuple(s.where for s in indexed),
        shard_of=np.array([r[1] for r in rows], dtype=np.int32),
        offsets=np.array([r[2] for r in rows], dtype=np.int64),
        sizes=np.array([r[3] for r in rows], dtype=np.int64),
        ids=ids,
        labels=labels,
        splits=splits,
        classes=classes,
        fingerprint=digest.hexdigest(),
        layout=layout,
    )


def _tree_rows(indexed: list[_Shard]) -> list[tuple]:
    """(id, shard, offset, size, member path) of each image of archives of a class-folder tree."""
    return [
        (f"{shard.name}/{name}", number, offset, size, name)
        for number, shard in enumerate(indexed)
        for name, offset, size in shard.images
    ]


def _webdataset_rows(indexed: list[_Shard], shown: str) -> list[tuple]:
    """(id, shard, offset, size, class name, split) of each WebDataset sample that has an image."""
    rows = []
    for number, shard in enumerate(indexed):
        chosen: dict[str, tuple[int, str, int, int]] = {}
        for name, offset, size in shard.images:
            match = _KEY_EXT.match(name)
            key, extension = (match.group(1), match.group(2).lower()) if match else (name, "")
            rank = _PREFERRED.index(extension) if extension in _PREFERRED else len(_PREFERRED)
            if key not in chosen or rank < chosen[key][0]:
                chosen[key] = (rank, name, offset, size)
        for key, (_, _, offset, size) in chosen.items():
            label, split = _sample_labels(shard, key, shown)
            rows.append((f"{shard.name}/{key}", number, offset, size, label, split))
    return rows


def _sample_labels(shard: _Shard, key: str, shown: str) -> tuple[str, str]:
    """A WebDataset sample's class name (``KEY.cls``, else ``label`` in ``KEY.json``) and split (``KEY.json``)."""
    label, split = "", ""
    described = shard.sidecars.get(f"{key}.json")
    if described is not None:
        try:
            record = json.loads(described or b"{}")
        except ValueError as exc:
            raise DataError(message(f"'{shard.where}': {key}.json is not JSON ({exc})")) from None
        if not isinstance(record, dict):
            record = {}
        label, split = _text(record.get("label"), shard, key, "label"), _text(record.get("split"), shard, key, "split")
    named = shard.sidecars.get(f"{key}.cls")
    if named is not None:
        try:
            label = named.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(message(f"'{shard.where}': {key}.cls is not UTF-8 text")) from None
    return label, split


def _text(value: Any, shard: _Shard, key: str, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(
            message(f"the {what} of '{key}' in '{shard.where}'", allowed="a string or an integer", got=json.dumps(value))
        )
    return str(value)
