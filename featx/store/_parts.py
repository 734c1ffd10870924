"""Part files: the rows of an unfinished extraction, in ``<store>.parts/part-NNNNNN.h5``.

A part holds the rows of a contiguous range of candidate images
``[start, stop)``: their feature rows, their candidate indices, their sample
rows and the images of the range that failed.  It is written under a
temporary name and renamed when complete, so a part either exists whole or
not at all, and a resumed run continues after the last part of an unbroken
sequence from candidate 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreMismatchError, message, option
from ._atomic import replace_durably, temporary_path
from ._schema import (
    LayerSpec,
    SampleTable,
    read_strings,
    rows_per_chunk,
    set_attrs,
    write_strings,
)

__all__ = [
    "Part",
    "OpenPart",
    "create_part",
    "commit_part",
    "discard_part",
    "load_parts",
    "remove_finished_parts",
    "read_samples",
]

_PART_NAME = re.compile(r"^part-(\d{6})\.h5$")
# Chunk of the candidate-index dataset, which grows by a batch at a time.
_INDEX_CHUNK = 4096


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

    def append(self, layers: Sequence[LayerSpec], indices: Sequence[int], features: Mapping[str, np.ndarray]) -> None:
        """Append rows: *indices* are their candidate indices, ``features[name]`` their values."""
        n = len(indices)
        if not n:
            return
        index = self.file["samples/index"]
        index.resize((self.rows + n,))
        index[self.rows :] = np.asarray(indices, dtype=np.int64)
        for spec in layers:
            values = np.asarray(features[spec.name], dtype=spec.dtype)
            ds = self.file["features"][spec.name]
            ds.resize((self.rows + n, spec.dim))
            ds[self.rows :] = values
            self.bytes += values.nbytes
        self.rows += n


def create_part(folder: Path, number: int, start: int, meta: Mapping[str, Any], layers: Sequence[LayerSpec]) -> OpenPart:
    """Start part *number* of *folder*, covering candidates from *start*, with empty appendable datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{number:06d}.h5"
    f = h5py.File(temporary_path(final), "w")
    set_attrs(f, meta)
    f.attrs["start"] = start
    f.create_dataset("samples/index", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(_INDEX_CHUNK,))
    for spec in layers:
        dtype = np.dtype(spec.dtype)
        ds = f.create_dataset(
            f"features/{spec.name}",
            shape=(0, spec.dim),
            maxshape=(None, spec.dim),
            dtype=dtype,
            chunks=(rows_per_chunk(spec.dim, dtype.itemsize), spec.dim),
        )
        set_attrs(ds, spec.attrs())
    return OpenPart(path=final, file=f, start=start, stop=start)


def commit_part(part: OpenPart, samples: Any) -> Part:
    """Write the sample rows of *part*, close it and rename it to its final name.

    Parameters
    ----------
    part : OpenPart
    samples : ImageCollection-like
        ``ids``, ``labels`` and ``splits`` of every candidate, indexed by candidate index.
    """
    f = part.file
    f.attrs["stop"] = part.stop
    ids = samples.ids
    rows = f["samples/index"][()]
    write_strings(f, "samples/id", [ids[i] for i in rows])
    f.create_dataset("samples/label", data=np.asarray(samples.labels, dtype=np.int32)[rows])
    write_strings(f, "samples/split", [samples.splits[i] for i in rows])
    write_strings(f, "failed/id", [ids[i] for i, _ in part.failed])
    write_strings(f, "failed/reason", [r for _, r in part.failed])
    f.attrs["failed_index"] = np.asarray([i for i, _ in part.failed], dtype=np.int64)
    tmp = Path(f.filename)
    f.close()
    replace_durably(tmp, part.path)
    return Part(part.path, part.start, part.stop, part.rows)


def discard_part(part: OpenPart) -> None:
    """Close and delete a part that will not be committed."""
    tmp = Path(part.file.filename)
    part.file.close()
    tmp.unlink(missing_ok=True)


def _part_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _PART_NAME.match(p.name))


def load_parts(folder: Path, layers: Sequence[LayerSpec], check_identity: Callable[[Mapping[str, Any]], None]) -> list[Part]:
    """The committed parts of *folder* that a run extracting *layers* can continue from.

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
        The unbroken sequence of parts from candidate 0; parts after a gap are
        left to be redone.  A part being written when the last run was killed
        is deleted.

    Raises
    ------
    StoreMismatchError
        The parts hold other layers than *layers*, or another configuration.
    """
    if not folder.is_dir():
        return []
    for leftover in folder.glob(".*.tmp-*"):
        leftover.unlink()  # a part being written when the last run was killed
    wanted = sorted(spec.name for spec in layers)
    committed: list[Part] = []
    expected_start = 0
    for path in _part_files(folder):
        with h5py.File(path, "r") as f:
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
            start, stop = int(f.attrs["start"]), int(f.attrs["stop"])
            rows = int(f["samples/index"].shape[0])
        if start != expected_start:
            break  # parts after a gap cannot be used; they are redone
        committed.append(Part(path, start, stop, rows))
        expected_start = stop
    return committed


def remove_finished_parts(folder: Path, existing: Sequence[str]) -> None:
    """Delete the parts whose layers are all in the complete store (*existing*).

    They are left when a run is killed after its final file replaced the
    index but before the parts were deleted.
    """
    if not folder.is_dir():
        return
    for path in _part_files(folder):
        with h5py.File(path, "r") as f:
            finished = set(f["features"]) <= set(existing)
        if finished:
            path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


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
    if labels:
        table.labels = np.concatenate(labels).astype(np.int32)
    return table
