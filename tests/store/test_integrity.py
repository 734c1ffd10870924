"""Integrity of stores and parts (featx.store._parts, _writer), issue 11 item 7.

Each part carries a checksum; a part that was truncated or had a bit flipped
after it was committed is detected when the extraction resumes, and its rows
are computed again instead of being trusted.  A store or a part written by a
newer featx (a newer format version) is a clear one-line error.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stores import attribute_identity

from featx.errors import StoreError
from featx.store import FORMAT_VERSION, LayerSpec, StoreWriter, open_store, parts_dir

SPEC = LayerSpec(name="f", node="n", pool="none", dim=8, source_shape=(8,))
META = {"model": "m", "weights": "none", "featx_version": "0", "data_fingerprint": "abc"}
N = 12


class _Samples:
    ids = tuple(f"{i:02d}.png" for i in range(N))
    labels = np.arange(N, dtype=np.int32) % 2
    splits = ("",) * N
    classes = ("x", "y")


def _rows(indices) -> np.ndarray:
    """The features a deterministic 'network' gives candidates *indices*."""
    return np.stack([np.random.default_rng(i).standard_normal(SPEC.dim).astype(np.float32) for i in indices])


def _writer(path: Path) -> StoreWriter:
    """An open writer of *path*."""
    writer = StoreWriter(
        path, meta=META, identity=attribute_identity(META), layers=[SPEC], samples=_Samples(), checkpoint_seconds=0,
    )
    writer.open()
    return writer


def _run(path: Path, stop_after: int | None = None) -> StoreWriter:
    """Add the remaining candidates in batches of 3; stop (as if killed) after *stop_after* candidates."""
    writer = _writer(path)
    remaining = list(writer.plan.remaining)
    for a in range(0, len(remaining), 3):
        batch = remaining[a : a + 3]
        if stop_after is not None and batch[0] >= stop_after:
            writer.lock.release()  # the kernel releases a killed process's lock
            return writer
        writer.add(stop=batch[-1] + 1, indices=batch, features={"f": _rows(batch)})
    writer.finish()
    return writer


def _assert_complete_and_right(path: Path) -> None:
    with open_store(path) as store:
        assert store.complete
        assert store.ids.tolist() == list(_Samples.ids)
        np.testing.assert_array_equal(store.features("f"), _rows(range(N)))


def _feature_offset(part: Path) -> int:
    """File offset of the first stored byte of the part's feature rows."""
    with h5py.File(part, "r") as f:
        ds = f["features/f"]
        return ds.id.get_chunk_info(0).byte_offset


def test_a_bit_flipped_part_is_detected_and_recomputed(tmp_path, caplog):
    path = tmp_path / "s.h5"
    _run(path, stop_after=9)  # parts of candidates 0-2, 3-5, 6-8
    parts = sorted(parts_dir(path).glob("part-*.h5"))
    assert len(parts) == 3
    with h5py.File(parts[1], "r") as f:
        assert f.attrs["checksum"].startswith("sha256:")
    offset = _feature_offset(parts[1])
    raw = bytearray(parts[1].read_bytes())
    raw[offset + 5] ^= 0x10  # one bit of one float of candidate 3
    parts[1].write_bytes(bytes(raw))

    writer = _writer(path)
    assert writer.plan.start == 3  # the damaged part and those after it are redone
    assert "part-000001.h5" in caplog.text and "does not match its checksum" in caplog.text
    writer.lock.release()
    _run(path)
    _assert_complete_and_right(path)


def test_a_truncated_part_is_detected_and_recomputed(tmp_path, caplog):
    path = tmp_path / "s.h5"
    _run(path, stop_after=9)
    last = max(parts_dir(path).glob("part-*.h5"))
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy that stopped short
    writer = _writer(path)
    assert writer.plan.start == 6
    assert "part-000002.h5" in caplog.text and "damaged" in caplog.text
    writer.lock.release()
    _run(path)
    _assert_complete_and_right(path)


def test_a_part_without_a_checksum_is_not_trusted(tmp_path):
    path = tmp_path / "s.h5"
    _run(path, stop_after=6)
    first = min(parts_dir(path).glob("part-*.h5"))
    with h5py.File(first, "a") as f:
        del f.attrs["checksum"]
    writer = _writer(path)
    assert writer.plan.start == 0
    writer.lock.release()


def test_a_store_of_a_newer_format_is_a_clear_error(tmp_path):
    path = tmp_path / "s.h5"
    _run(path)
    with h5py.File(path, "a") as f:
        f.attrs["featx_format"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match=rf"^'.*s\.h5' is a store of a newer featx \(store format {FORMAT_VERSION + 1}; "):
        _writer(path)
    with pytest.raises(StoreError, match="upgrade featx to read it"):
        open_store(path)


def test_a_part_of_a_newer_format_is_a_clear_error(tmp_path):
    path = tmp_path / "s.h5"
    _run(path, stop_after=3)
    path.unlink()  # killed before the first index was written: only the part is there
    with h5py.File(min(parts_dir(path).glob("part-*.h5")), "a") as f:
        f.attrs["featx_format"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match=r"was written by a newer featx \(store format 2; this featx writes format 1\)"):
        _writer(path)
