"""Part files: the rows of an unfinished extraction, in ``<store>.parts/part-NNNNNN.h5``.

A part holds the rows of a contiguous range of candidate images
``[start, stop)``: their feature rows, their candidate indices, their sample
rows and the images of the range that failed.  It is written under a
temporary name and renamed when complete, so a part either exists whole or
not at all, and a resumed run continues after the last part of an unbroken
sequence from candidate 0.

A rename does not protect against what happens to a file later (a disk that
flips a bit, a copy that stops short), so each part carries a SHA-256 of its
content (attribute ``checksum``), hashed as the rows are written.  A resumed
run reads every part back and recomputes the rows of a part that no longer
matches, or no longer opens, instead of trusting it.

The candidates a run extracts need not be all of them: an incremental update
extracts only the images new to a store.  A part's ``[start, stop)`` then
means "every candidate of the update below *stop* is accounted for".
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError, StoreMismatchError, message, option
from ._atomic import discard_file, replace_durably, temporary_path
from ._schema import (
    FORMAT_VERSION,
    LayerSpec,
    SampleTable,
    attr_value,
    read_meta,
    read_strings,
    rows_per_chunk,
    samples_meta,
    set_attrs,
    write_meta,
    write_strings,
)

__all__ = [
    "OpenPart",
    "Part",
    "commit_part",
    "create_part",
    "discard_part",
    "load_parts",
    "part_indices",
    "read_samples",
    "remove_finished_parts",
    "remove_parts",
]

log = logging.getLogger("featx")

_PART_NAME = re.compile(r"^part-(\d{6})\.h5$")
# Chunk of the candidate-index dataset, which grows by a batch at a time.
_INDEX_CHUNK = 4096
# Chunks of a part's features: a part's last chunk is allocated whole, and
# HDF5 rewrites a whole chunk for each batch written into it (no chunk cache),
# so they are smaller than the final store's 1 MiB: a batch of rows, within
# these bounds.
_PART_CHUNK_BYTES = (64 << 10, 256 << 10)
# Bytes of a layer read at once when a part's checksum is verified.
_VERIFY_BYTES = 64 << 20


@dataclass
class Part:
    """A committed part file."""

    path: Path
    start: int  # first candidate index covered
    stop: int  # one past the last candidate index covered
    rows: int  # good rows it holds


@dataclass
class OpenPart:
    """The part being written, under its temporary name."""

    path: Path  # the name it gets when committed
    file: h5py.File
    start: int
    stop: int
    rows: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    bytes: int = 0
    # SHA-256 of the index and of each layer's rows, fed as they are written.
    hashes: dict[str, Any] = field(default_factory=dict)

    def append(self, layers: Sequence[LayerSpec], indices: Sequence[int], features: Mapping[str, np.ndarray]) -> None:
        """Append rows: *indices* are their candidate indices, ``features[name]`` their values."""
        n = len(indices)
        if not n:
            return
        index = self.file["samples/index"]
        index.resize((self.rows + n,))
        rows = np.asarray(indices, dtype=np.int64)
        index[self.rows :] = rows
        self.hashes.setdefault("samples/index", hashlib.sha256()).update(rows.tobytes())
        for spec in layers:
            values = np.ascontiguousarray(features[spec.name], dtype=spec.dtype)
            ds = self.file["features"][spec.name]
            ds.resize((self.rows + n, spec.dim))
            ds[self.rows :] = values
            self.hashes.setdefault(spec.name, hashlib.sha256()).update(values.tobytes())
            self.bytes += values.nbytes
        self.rows += n


def _checksum(hashes: Mapping[str, Any], names: Sequence[str], f: h5py.File) -> str:
    """The checksum of a part: its index and layer hashes (*names*, in order), its bounds, samples and failures."""
    total = hashlib.sha256()
    for name in ["samples/index", *names]:
        total.update(name.encode() + b"\0" + (hashes[name].digest() if name in hashes else hashlib.sha256().digest()))
    total.update(f"{int(f.attrs['start'])}:{int(f.attrs['stop'])}".encode())
    total.update(np.asarray(f.attrs["failed_index"], dtype=np.int64).tobytes())
    total.update(f["samples/label"][()].astype(np.int32).tobytes())
    for key in ("samples/id", "samples/split", "failed/id", "failed/reason"):
        total.update(("\0".join(read_strings(f[key])) + "\n").encode())
    for name, values in sorted(read_meta(f["samples"]).items()):
        total.update((f"meta/{name}\0" + "\0".join(values) + "\n").encode())
    return "sha256:" + total.hexdigest()


def _part_chunk_rows(spec: LayerSpec, batch_rows: int) -> int:
    row = spec.dim * np.dtype(spec.dtype).itemsize
    low, high = (max(1, bound // row) for bound in _PART_CHUNK_BYTES)
    return min(max(batch_rows, low), high, rows_per_chunk(spec.dim, np.dtype(spec.dtype).itemsize))


def create_part(
    folder: Path, number: int, start: int, meta: Mapping[str, Any], layers: Sequence[LayerSpec], batch_rows: int = 1
) -> OpenPart:
    """Start part *number* of *folder*, covering candidates from *start*, with empty appendable datasets.

    *batch_rows*, the rows of the first batch, sizes the chunks.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{number:06d}.h5"
    tmp = temporary_path(final)
    try:
        f = h5py.File(tmp, "w", rdcc_nbytes=0)  # no chunk cache: see _atomic.discard_file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        _fill_new_part(f, start, meta, layers, batch_rows)
    except BaseException:
        discard_file(f, tmp)
        raise
    return OpenPart(path=final, file=f, start=start, stop=start)


def _fill_new_part(f: h5py.File, start: int, meta: Mapping[str, Any], layers: Sequence[LayerSpec], batch_rows: int) -> None:
    set_attrs(f, meta)
    f.attrs["featx_format"] = FORMAT_VERSION
    f.attrs["start"] = start
    f.create_dataset("samples/index", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(_INDEX_CHUNK,))
    for spec in layers:
        dtype = np.dtype(spec.dtype)
        ds = f.create_dataset(
            f"features/{spec.name}",
            shape=(0, spec.dim),
            maxshape=(None, spec.dim),
            dtype=dtype,
            chunks=(_part_chunk_rows(spec, batch_rows), spec.dim),
        )
        set_attrs(ds, spec.attrs())


def commit_part(part: OpenPart, samples: Any) -> Part:
    """Write the sample rows of *part*, close it and rename it to its final name.

    Parameters
    ----------
    part : OpenPart
    samples : ImageCollection-like
        ``ids``, ``labels`` and ``splits`` of every candidate, indexed by candidate index.
    """
    f = part.file
    tmp = Path(f.filename)
    try:
        f.attrs["stop"] = part.stop
        ids = samples.ids
        rows = f["samples/index"][()]
        write_strings(f, "samples/id", [ids[i] for i in rows])
        f.create_dataset("samples/label", data=np.asarray(samples.labels, dtype=np.int32)[rows])
        write_strings(f, "samples/split", [samples.splits[i] for i in rows])
        write_meta(f["samples"], samples_meta(samples, rows))
        write_strings(f, "failed/id", [ids[i] for i, _ in part.failed])
        write_strings(f, "failed/reason", [r for _, r in part.failed])
        f.attrs["failed_index"] = np.asarray([i for i, _ in part.failed], dtype=np.int64)
        f.attrs["checksum"] = _checksum(part.hashes, sorted(f["features"]), f)
        f.close()
    except BaseException:
        discard_file(f, tmp)
        raise
    try:
        replace_durably(tmp, part.path)
    finally:
        tmp.unlink(missing_ok=True)
    return Part(part.path, part.start, part.stop, part.rows)


def discard_part(part: OpenPart) -> None:
    """Close and delete a part that will not be committed (safely, also after a failed write)."""
    discard_file(part.file, Path(part.file.filename))


def _damage(f: h5py.File) -> str | None:
    """Why the content of part *f* does not match its checksum, or None when it does."""
    recorded = f.attrs.get("checksum")
    if recorded is None:
        return "it has no checksum (written by an older featx)"
    hashes: dict[str, Any] = {"samples/index": hashlib.sha256(f["samples/index"][()].astype(np.int64).tobytes())}
    names = sorted(f["features"])
    for name in names:
        ds = f["features"][name]
        digest = hashes[name] = hashlib.sha256()
        block = max(1, _VERIFY_BYTES // max(1, ds.shape[1] * ds.dtype.itemsize))
        for a in range(0, ds.shape[0], block):
            digest.update(np.ascontiguousarray(ds[a : a + block]).tobytes())
    if _checksum(hashes, names, f) != attr_value(recorded):
        return "its content does not match its checksum"
    return None


def _part_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _PART_NAME.match(p.name))


def load_parts(folder: Path, layers: Sequence[LayerSpec], check_identity: Callable[[Mapping[str, Any]], None]) -> list[Part]:
    """The committed parts of *folder* that a run extracting *layers* can continue from, each verified.

    Parameters
    ----------
    folder : Path
        The parts folder (it may not exist).
    layers : sequence of LayerSpec
        The layers the run extracts; the parts must hold exactly these.
    check_identity : callable
        Called with each part's root attributes; raises if they are of another configuration.

    Returns
    -------
    list of Part
        The unbroken sequence of parts from candidate 0 whose content matches
        its checksum.  The first part that is damaged (truncated, bit-flipped,
        unreadable) and every part after it or after a gap are deleted: their
        images are extracted again.  A part being written when the last run
        was killed is deleted.

    Raises
    ------
    StoreMismatchError
        The parts hold other layers than *layers*, or another configuration.
    StoreError
        A part was written by a newer featx (a newer store format).
    """
    if not folder.is_dir():
        return []
    for leftover in folder.glob(".*.tmp-*"):
        leftover.unlink()  # a part being written when the last run was killed
    wanted = sorted(spec.name for spec in layers)
    committed: list[Part] = []
    files = _part_files(folder)
    for number, path in enumerate(files):
        try:
            part, damage = _load_part(path, wanted, folder, check_identity)
        except (OSError, RuntimeError, KeyError) as exc:  # HDF5 metadata that no longer parses
            part, damage = None, f"it cannot be read ({type(exc).__name__})"
        if part is not None and part.start != (committed[-1].stop if committed else 0):
            damage = None  # a gap: the parts after it cannot be used; they are redone
        elif part is not None and damage is None:
            committed.append(part)
            continue
        if damage is not None:
            log.warning(f"{path.name} of '{folder}' is damaged ({damage}): its images are extracted again")
        for later in files[number:]:
            later.unlink(missing_ok=True)
        break
    return committed


def _load_part(
    path: Path, wanted: list[str], folder: Path, check_identity: Callable[[Mapping[str, Any]], None]
) -> tuple[Part | None, str | None]:
    """Part *path* and why it is damaged (None when its checksum matches)."""
    if not h5py.is_hdf5(path):
        return None, "not an HDF5 file any more: truncated or overwritten"
    with h5py.File(path, "r") as f:
        fmt = int(f.attrs.get("featx_format", FORMAT_VERSION))
        if fmt > FORMAT_VERSION:
            raise StoreError(
                message(
                    f"the unfinished extraction in '{folder}' was written by a newer featx (store format {fmt}; "
                    f"this featx writes format {FORMAT_VERSION})",
                    hint=f"upgrade featx to finish it, or use {option('overwrite', True)} to start again",
                )
            )
        check_identity(f.attrs)
        part_layers = sorted(f["features"].keys())
        if part_layers != wanted:
            raise StoreMismatchError(
                message(
                    f"an unfinished extraction of layers {', '.join(part_layers)} is in '{folder}', "
                    f"this command asks for {', '.join(wanted)}",
                    hint=f"ask for the same layers to finish it first, or use {option('overwrite', True)} to start again",
                )
            )
        part = Part(path, int(f.attrs["start"]), int(f.attrs["stop"]), int(f["samples/index"].shape[0]))
        return part, _damage(f)


def remove_parts(folder: Path, obsolete: Callable[[Mapping[str, Any], set[str]], bool]) -> None:
    """Delete the parts of *folder* for which ``obsolete(root attributes, layer names)`` is true, and unreadable ones."""
    if not folder.is_dir():
        return
    for path in _part_files(folder):
        try:
            with h5py.File(path, "r") as f:
                remove = obsolete(f.attrs, set(f["features"]))
        except (OSError, RuntimeError, KeyError):
            remove = True  # damaged: nothing to continue from
        if remove:
            path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def remove_finished_parts(folder: Path, existing: Sequence[str]) -> None:
    """Delete the parts whose layers are all in the complete store (*existing*).

    They are left when a run is killed after its final file replaced the
    index but before the parts were deleted, or by an incremental update that
    is no longer wanted (the data folder is the store's again).
    """
    remove_parts(folder, lambda attrs, names: names <= set(existing))


def part_indices(parts: Sequence[Part]) -> list[np.ndarray]:
    """The candidate index of each row of each part, one int64 array per part."""
    indices = []
    for part in parts:
        with h5py.File(part.path, "r") as f:
            indices.append(f["samples/index"][()].astype(np.int64))
    return indices


def read_samples(parts: Sequence[Part]) -> SampleTable:
    """The sample and failure rows of *parts*, concatenated in order."""
    table = SampleTable()
    labels = []
    for part in parts:
        with h5py.File(part.path, "r") as f:
            table.ids.extend(read_strings(f["samples/id"]))
            labels.append(f["samples/label"][()])
            table.splits.extend(read_strings(f["samples/split"]))
            table.failed_ids.extend(read_strings(f["failed/id"]))
            table.failed_reasons.extend(read_strings(f["failed/reason"]))
            for name, values in read_meta(f["samples"]).items():
                table.meta.setdefault(name, []).extend(values)
    if labels:
        table.labels = np.concatenate(labels).astype(np.int32)
    return table
