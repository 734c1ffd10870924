"""Checksums of a finished store's features: a CRC-32 per block of rows, kept in the layer's attributes.

Part files carry a SHA-256 each (:mod:`._parts`), checked when an extraction
resumes; once the parts are copied into the finished store they are gone, and
a bit that flips in the store afterwards (a disk, a copy, an edit) would go
unnoticed: the features are floats, any bits make a number.  So the finished
store records, on each ``/features/<name>``::

    checksum_rows   int     rows per block (the last block may be shorter)
    checksums       uint32  (n_blocks,) CRC-32 of each block's bytes, C order, as stored (float32 or float16)

CRC-32 detects every error burst up to 32 bits and costs about a quarter of
a second per GiB (zlib), less than reading the rows: ``classify`` checks every
block as its finite check reads it, and ``info --verify`` (``describe_store(verify=True)``)
reads every layer to check all.  It is a guard against damage, not against
someone who edits the file on purpose (who can write new checksums too).
Blocks are about 4 MiB, and at most :data:`_MAX_BLOCKS` per layer (the
attribute stays under 32 KiB; larger layers get larger blocks).  Stores
written before this have none, and read as before.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import StoreChecksumError, message

__all__ = [
    "CHECKSUMS",
    "CHECKSUM_ROWS",
    "BlockChecksums",
    "ChecksumReport",
    "checksum_rows",
    "iter_verified",
    "recorded",
    "store_where",
    "verifier",
    "verify_dataset",
]

CHECKSUMS = "checksums"
CHECKSUM_ROWS = "checksum_rows"
_BLOCK_BYTES = 4 << 20
_MAX_BLOCKS = 8192


def checksum_rows(n_rows: int, dim: int, itemsize: int) -> int:
    """Rows per checksum block of an ``(n_rows, dim)`` layer: about 4 MiB, and at most 8,192 blocks."""
    rows = max(1, _BLOCK_BYTES // max(1, dim * itemsize))
    return max(rows, -(-n_rows // _MAX_BLOCKS))


@dataclass
class BlockChecksums:
    """The CRC-32 of consecutive blocks of *rows* rows, fed the rows in order, in pieces of any size.

    Given the recorded checksums (*expected*), :meth:`update` checks each
    block as soon as it is complete and raises at the first that differs.
    """

    rows: int
    expected: np.ndarray | None = None
    where: str = ""
    crcs: list[int] = field(default_factory=list)
    _crc: int = 0
    _filled: int = 0
    _row: int = 0

    def update(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values)
        position = 0
        while position < len(values):
            take = min(len(values) - position, self.rows - self._filled)
            self._crc = zlib.crc32(values[position : position + take], self._crc)
            self._filled += take
            position += take
            if self._filled == self.rows:
                self._close_block()

    def finish(self) -> np.ndarray:
        """The checksums of every block (the last one shorter when the rows do not fill it)."""
        if self._filled:
            self._close_block()
        return np.asarray(self.crcs, dtype=np.uint32)

    def _close_block(self) -> None:
        number = len(self.crcs)
        self.crcs.append(self._crc)
        first, self._row = self._row, self._row + self._filled
        self._crc, self._filled = 0, 0
        if self.expected is not None and (number >= len(self.expected) or int(self.expected[number]) != self.crcs[-1]):
            raise StoreChecksumError(
                message(
                    f"{self.where}: rows {first:,} to {self._row - 1:,} do not match the checksum recorded when the "
                    "store was written (the file was damaged since: a disk, a copy, an edit)",
                    hint="extract the store again, or restore it from a copy",
                )
            )

    def attrs(self) -> dict[str, object]:
        """The attributes that record these checksums on a feature dataset."""
        return {CHECKSUM_ROWS: np.int64(self.rows), CHECKSUMS: self.finish()}


def recorded(dataset: h5py.Dataset) -> tuple[int, np.ndarray] | None:
    """``(rows per block, checksums)`` recorded on a feature dataset, or None (an older store, an unfinished one)."""
    if CHECKSUMS not in dataset.attrs or CHECKSUM_ROWS not in dataset.attrs:
        return None
    rows = int(dataset.attrs[CHECKSUM_ROWS])
    crcs = np.asarray(dataset.attrs[CHECKSUMS], dtype=np.uint32).ravel()
    return (rows, crcs) if rows > 0 else None


def verifier(dataset: h5py.Dataset, where: str) -> BlockChecksums | None:
    """A :class:`BlockChecksums` that checks the rows of *dataset* fed in order, or None when none are recorded."""
    found = recorded(dataset)
    if found is None:
        return None
    rows, crcs = found
    n_blocks = -(-dataset.shape[0] // rows)
    if n_blocks != len(crcs):
        raise StoreChecksumError(
            message(f"{where}: {len(crcs):,} checksums recorded for {n_blocks:,} blocks of {rows:,} rows",
                    hint="extract the store again, or restore it from a copy")
        )
    return BlockChecksums(rows, expected=crcs, where=where)


@dataclass(frozen=True)
class ChecksumReport:
    """What ``info --verify`` found: per layer, the blocks checked, or None when it has no checksums."""

    blocks: dict[str, int | None]

    def describe(self) -> str:
        checked = {name: n for name, n in self.blocks.items() if n is not None}
        missing = [name for name, n in self.blocks.items() if n is None]
        if not self.blocks:
            return "no layers to verify"
        if not checked:
            return "no checksums recorded (a store written by an older featx, or unfinished): nothing verified"
        text = f"verified: {sum(checked.values()):,} blocks of {len(checked)} layer(s) match their checksums"
        return text + (f"; no checksums recorded for {', '.join(missing)}" if missing else "")


def iter_verified(dataset: h5py.Dataset, where: str, batch_rows: int) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, block)`` over *dataset* in row order, each block checked against the checksums as it is read."""
    check = verifier(dataset, where)
    n = dataset.shape[0]
    for start in range(0, n, batch_rows):
        rows = slice(start, min(start + batch_rows, n))
        block = dataset[rows]
        if check is not None:
            check.update(block)
        yield rows, block
    if check is not None:
        check.finish()


def verify_dataset(dataset: h5py.Dataset, where: str) -> int | None:
    """Read *dataset* whole, block by block, and check it; the number of blocks checked, or None without checksums."""
    found = recorded(dataset)
    if found is None:
        return None
    rows = found[0]
    for _ in iter_verified(dataset, where, rows):
        pass
    return -(-dataset.shape[0] // rows)


def store_where(path: Path, name: str) -> str:
    """How a layer is named in a checksum message."""
    return f"store '{path}' layer '{name}'"
