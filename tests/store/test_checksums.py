"""Checksums of a finished store's features (issue 24, defect 9: a bit flip in a finished store went unnoticed).

Part files had checksums; the finished store had none, so a flipped bit in its
features was read as a valid number by ``info``, ``export`` and ``classify``.
"""

from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest
from malformed_corpus import good_store

import featx
from featx.errors import StoreChecksumError
from featx.store._checksums import BlockChecksums, checksum_rows


@pytest.fixture
def store(tmp_path):
    return good_store(tmp_path / "s.h5")


def _flip_a_bit_on_disk(path, layer="f", row=7, column=2):
    """Flip one bit of a stored feature in the file's bytes, as a disk or a copy would (not through HDF5)."""
    with h5py.File(path, "r") as f:
        ds = f["features"][layer]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
        position = offset + (row * ds.shape[1] + column) * ds.dtype.itemsize + 1
    with open(path, "r+b") as raw:
        raw.seek(position)
        byte = raw.read(1)
        raw.seek(position)
        raw.write(bytes([byte[0] ^ 0x04]))


def test_a_finished_store_records_the_crc32_of_its_rows(store):
    with h5py.File(store, "r") as f:
        ds = f["features/f"]
        values = ds[()]
        assert int(ds.attrs["checksum_rows"]) == checksum_rows(12, 4, 4) >= 12
        assert ds.attrs["checksums"].tolist() == [zlib.crc32(values.tobytes())]
    with featx.open_store(store) as opened:
        assert "checksums" not in opened.layer_info("f") and "checksum_rows" not in opened.layer_info("f")
        assert opened.verify().blocks == {"f": 1}


def test_blocks_are_hashed_the_same_whatever_pieces_the_rows_come_in():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(103, 5)).astype(np.float16)
    expected = [zlib.crc32(values[a : a + 10].tobytes()) for a in range(0, 103, 10)]
    hasher = BlockChecksums(10)
    for a, b in ((0, 1), (1, 27), (27, 30), (30, 99), (99, 103)):
        hasher.update(values[a:b])
    assert hasher.finish().tolist() == expected and len(expected) == 11


def test_info_verify_says_what_it_checked(store, run_cli):
    code, out, err = run_cli("info", "--verify", store)
    assert code == 0, err
    assert out.rstrip().endswith("checksums: verified: 1 blocks of 1 layer(s) match their checksums")
    code, out, _ = run_cli("info", store)
    assert code == 0 and "checksums:" not in out


def test_a_bit_flipped_on_disk_is_found_by_info_verify_and_by_classify(store, run_cli, tmp_path):
    with featx.open_store(store) as before:
        original = before.features("f")
    _flip_a_bit_on_disk(store)
    with featx.open_store(store) as after:
        changed = after.features("f")
    assert (changed != original).sum() == 1  # a valid-looking number: only the checksum tells
    expected = (f"store '{store}' layer 'f': rows 0 to 11 do not match the checksum recorded when the store was "
                "written (the file was damaged since: a disk, a copy, an edit); extract the store again, or restore "
                "it from a copy")
    code, _, err = run_cli("info", "--verify", store)
    assert code == 2 and err == f"error: {expected}\n"
    code, _, err = run_cli("classify", "--features", store, "--model", "bayes", "--out", tmp_path / "run")
    assert code == 2 and err == f"error: {expected}\n"
    with pytest.raises(StoreChecksumError, match="do not match the checksum"):
        featx.describe_store(store, verify=True)
    # Reading without verification still works: info describes it, the rows can be exported.
    assert run_cli("info", store)[0] == 0


def test_a_store_without_checksums_still_reads(store, run_cli, tmp_path):
    """A store finished by an older featx has no checksums: it is used as before, and --verify says so."""
    with h5py.File(store, "r+") as f:
        del f["features/f"].attrs["checksums"], f["features/f"].attrs["checksum_rows"]
    code, out, err = run_cli("info", "--verify", store)
    assert code == 0 and "checksums: no checksums recorded" in out, err
    code, _, err = run_cli("classify", "--features", store, "--model", "bayes", "--out", tmp_path / "run", "--no-plots")
    assert code == 0, err


def test_checksums_that_do_not_cover_the_rows_are_malformed(store):
    with h5py.File(store, "r+") as f:
        f["features/f"].attrs["checksums"] = np.array([1, 2], dtype=np.uint32)
    with pytest.raises(featx.errors.MalformedStoreError, match="the checksums of feature dataset '/features/f' do "
                                                              "not cover its 12 rows"):
        featx.open_store(store)
