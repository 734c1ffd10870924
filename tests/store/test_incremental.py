"""Stores that follow the data (featx.store._writer, _assembly; the engine), issue 11 item 5.

When images are added to or removed from the data folder of a complete store,
the same ``extract`` command updates the store: only the new images are
computed, the removed ones are dropped, rows stay in sorted-id order, and the
result equals a fresh extraction bit for bit.  Measured before: adding one image
made the store unusable without ``--overwrite`` (a data fingerprint mismatch),
and everything was recomputed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_real_images, quick_extract, real_jpegs

from featx.errors import StoreMismatchError
from featx.store import open_store, parts_dir

LAYERS = ("conv2", "penultimate")


def _extract(data: Path, out: Path, **overrides):
    return quick_extract(data, out, autotune=False, batch_size=2, **overrides)


def _assert_same_store(path: Path, fresh: Path) -> None:
    """Everything a user reads from the two stores is equal, bit for bit."""
    with open_store(path) as a, open_store(fresh) as b:
        assert a.complete and b.complete
        assert a.ids.tolist() == b.ids.tolist() == sorted(b.ids.tolist())
        assert a.labels.tolist() == b.labels.tolist()
        assert a.splits.tolist() == b.splits.tolist()
        assert a.classes == b.classes
        assert a.failed.equals(b.failed)
        assert a.meta["data_fingerprint"] == b.meta["data_fingerprint"]
        assert a.meta["rows"] == b.meta["rows"] and a.meta["candidates"] == b.meta["candidates"]
        for layer in LAYERS:
            np.testing.assert_array_equal(a.features(layer), b.features(layer))
        # Both carry checksums of every layer (issue 24), and the updated store's match its rows.
        assert set(a.verify().blocks) == set(LAYERS) and all(a.verify().blocks.values())


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, hymenoptera) -> tuple[Path, Path]:
    """8 real JPEGs (train/val x ants/bees) and one empty file (which fails), and their complete store."""
    root = tmp_path_factory.mktemp("incremental")
    data = copy_real_images(hymenoptera, root / "data", per_class=2)
    (data / "train" / "bees" / "empty.jpg").write_bytes(b"")
    return data, _extract(data, root / "s.h5").path


@pytest.fixture
def store(extracted, tmp_path) -> tuple[Path, Path]:
    """A copy of the folder and of its complete store, to change."""
    data, path = extracted
    shutil.copytree(data, tmp_path / "data")
    shutil.copy(path, tmp_path / "s.h5")
    return tmp_path / "data", tmp_path / "s.h5"


def test_a_changed_folder_updates_the_store_to_a_fresh_extraction(store, tmp_path, hymenoptera):
    """Two images added, one removed, a new class sorted first (every label shifts), a failed file repaired."""
    folder, out = store
    for src in real_jpegs(hymenoptera / "val" / "ants", 5)[3:5]:
        shutil.copy(src, folder / "val" / "ants" / ("new-" + src.name))
    min((folder / "train" / "ants").glob("*.jpg")).unlink()
    (folder / "train" / "aphids").mkdir()
    shutil.copy(real_jpegs(hymenoptera / "train" / "ants", 4)[3], folder / "train" / "aphids" / "a.jpg")
    shutil.copy(real_jpegs(hymenoptera / "train" / "bees", 4)[3], folder / "train" / "bees" / "empty.jpg")

    result = _extract(folder, out)
    assert result.updated and (result.added, result.removed) == (3, 1)
    assert result.images == 4  # the three new images and the repaired one: nothing else ran
    assert result.rows == 11 and result.failed == []
    with open_store(out) as updated:
        assert updated.classes == ["ants", "aphids", "bees"] and len(updated.failed) == 0
    _assert_same_store(out, _extract(folder, tmp_path / "fresh.h5").path)
    assert not parts_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "fresh.h5", "s.h5"]


def test_the_command_line_says_what_changed(store, run_cli):
    folder, out = store
    min((folder / "val" / "bees").glob("*.jpg")).unlink()
    args = [
        "extract", "--data", folder, "--model", "resnet18", "--layer", "conv2", "--layer", "penultimate",
        "--weights", "none", "--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
        "--no-progress", "--no-autotune", "--out", out,
    ]
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert stdout.splitlines()[0] == f"updated {out} (+0 / -1 images): 7 images; layers conv2 (64), penultimate (512)"
    assert "+0 new images, -1 removed; 7 rows kept, 1 that failed last time tried again" in stderr
    code, stdout, _ = run_cli(*args)
    assert code == 0 and stdout.startswith(f"up to date: {out} (7 images;")


def test_an_update_that_also_adds_layers_is_refused(store):
    folder, out = store
    min((folder / "val" / "bees").glob("*.jpg")).unlink()
    with pytest.raises(
        StoreMismatchError,
        match=r"layers it does not hold are asked for \(conv5\); first update it with its own layers \(conv2, penultimate\)",
    ):
        _extract(folder, out, layers=("penultimate", "conv5"))


def test_images_changed_in_place_are_not_guessed(store):
    folder, out = store
    image = min((folder / "val" / "bees").glob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")  # same name, other size
    with pytest.raises(StoreMismatchError, match=r"changed in place: the same file names, but other file sizes or modification times .* use overwrite=True"):
        _extract(folder, out)
    with open_store(out) as untouched:
        assert untouched.complete and len(untouched) == 8


def test_an_image_replaced_by_one_of_the_same_size_is_detected(store):
    """Issue 24: a file replaced in place by another of the same size was kept stale ("nothing to do")."""
    import os

    folder, out = store
    image = min((folder / "val" / "bees").glob("*.jpg"))
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # another image, byte for byte the same size
    stat = image.stat()
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert image.stat().st_size == stat.st_size
    with pytest.raises(StoreMismatchError, match=r"changed in place: the same file names, but other file sizes or "
                                                 r"modification times \(a file replaced by another"):
        _extract(folder, out)


def test_a_store_fingerprinted_by_sizes_alone_is_still_up_to_date(store, run_cli):
    """A store made before modification times were fingerprinted is recognised, not refused nor recomputed."""
    import h5py

    from featx.extraction import open_source

    folder, out = store
    source = open_source(folder)
    assert source.earlier_fingerprint is not None and source.earlier_fingerprint != source.fingerprint
    with h5py.File(out, "r+") as f:
        f.attrs["data_fingerprint"] = source.earlier_fingerprint
    before = out.read_bytes()
    code, stdout, stderr = run_cli(
        "extract", "--data", folder, "--model", "resnet18", "--layer", "conv2", "--layer", "penultimate",
        "--weights", "none", "--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
        "--no-progress", "--no-autotune", "--out", out,
    )
    assert code == 0 and stdout.startswith(f"up to date: {out} (8 images;"), (stdout, stderr)
    assert out.read_bytes() == before
