"""The HDF5 store, format 1: reading API, plain-h5py layout, crash-safe writing (featx.store)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import quick_extract
from featx.extraction import discover_images
from featx.errors import StoreError, StoreMismatchError
from featx.store import LayerSpec, StoreWriter, open_store, parts_dir

ROOT_ATTRS = {
    "featx_format", "featx_version", "model", "weights", "image_size", "mean", "std", "resize", "crop",
    "data_root", "created_utc", "torch_version", "torchvision_version", "complete",
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """9 small PNGs: train/val splits, 2 classes, one unlabelled image at a split's top, one broken file."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("store-images")
    for rel in ["train/a/0.png", "train/a/1.png", "train/b/2.png", "train/b/3.png", "val/a/4.png",
                "val/b/5.png", "val/b/6.png", "val/7.png", "train/a/8.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30 + len(rel), 40, 3), dtype=np.uint8)).save(root / rel)
    (root / "train/b/broken.png").write_bytes(b"GIF89a but not really")
    return root


@pytest.fixture(scope="module")
def store_path(images, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "s.h5"
    quick_extract(images, path)
    return path


@pytest.fixture
def store(store_path):
    with open_store(store_path) as s:
        yield s


# --------------------------------------------------------------------------- reading


def test_samples_follow_the_folder(store, images):
    collection = discover_images(images)
    good = [i for i in collection.ids if i != "train/b/broken.png"]
    assert store.ids.tolist() == good
    assert store.classes == ["a", "b"]
    assert store.labels.dtype == np.int32
    assert store.ids.tolist()[5] == "val/7.png"  # "7.png" sorts before "a/"
    assert store.labels.tolist() == [0, 0, 0, 1, 1, -1, 0, 1, 1]
    assert store.splits.tolist() == ["train"] * 5 + ["val"] * 4
    assert len(store) == 9
    assert store.complete
    assert ROOT_ATTRS <= set(store.meta)
    assert store.meta["featx_format"] == 1
    assert store.meta["model"] == "resnet18" and store.meta["weights"] == "none"
    assert (store.meta["image_size"], store.meta["resize"], store.meta["crop"]) == (64, 73, 64)
    assert store.meta["data_root"] == str(images.resolve())
    assert store.failed.to_dict("list") == {
        "id": ["train/b/broken.png"],
        "reason": ["not an image: the file's content is no image format Pillow can read"],
    }


def test_layers_and_their_attributes(store):
    assert store.layers == ["conv2", "penultimate"]
    info = store.layer_info("conv2")
    assert info["node"] == "layer1.1.relu_1"
    assert info["pool"] == "avg"
    assert info["source_shape"] == [64, 16, 16]
    assert info["requested"] == "conv2"
    assert info["shape"] == (9, 64)
    assert info["stored_dtype"] == "float32"
    assert store.layer_info("penultimate")["pool"] == "none"
    assert store.features("penultimate").shape == (9, 512)
    with pytest.raises(StoreError, match=r"^layer 'fc7' is not in store '.*s\.h5'; it holds conv2, penultimate$"):
        store.features("fc7")


def test_rows_are_read_in_the_order_asked(store):
    full = store.features("conv2")
    assert full.dtype == np.float32 and np.isfinite(full).all()
    for rows in ([3, 0, 3, 8], np.array([8, 7, 6]), [-1, 0], [5]):
        np.testing.assert_array_equal(store.features("conv2", rows=rows), full[np.asarray(rows)])
    np.testing.assert_array_equal(store.features("conv2", rows=slice(2, 5)), full[2:5])
    assert store.features("conv2", rows=[]).shape == (0, 64)


def test_boolean_mask_selects_rows(store):
    train = store.splits == "train"
    np.testing.assert_array_equal(store.features("conv2", rows=train), store.features("conv2")[train])
    with pytest.raises(StoreError, match=r"^a boolean row mask must have one value per row \(9\), got shape \(2,\)$"):
        store.features("conv2", rows=[True, False])


def test_out_of_range_rows(store):
    with pytest.raises(StoreError, match=r"^row 9 is out of range: '.*s\.h5' has 9 rows \(0 to 8\)$"):
        store.features("conv2", rows=[0, 9])
    with pytest.raises(StoreError, match=r"^row -10 is out of range"):
        store.features("conv2", rows=[-10])


def test_iter_features_and_dataframes(store):
    blocks = list(store.iter_features("conv2", batch_rows=4))
    assert [rows for rows, _ in blocks] == [slice(0, 4), slice(4, 8), slice(8, 9)]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), store.features("conv2"))
    frame = store.to_dataframe("conv2")
    assert frame.index.name == "id" and frame.index.tolist() == store.ids.tolist()
    assert frame.columns[:4].tolist() == ["label", "split", "conv2_0", "conv2_1"]
    np.testing.assert_array_equal(frame.iloc[:, 2:].to_numpy(), store.features("conv2"))
    samples = store.samples()
    assert samples["class"].tolist() == ["a", "a", "a", "b", "b", "", "a", "b", "b"]


def test_plain_h5py_reads_the_public_schema(store_path, store):
    with h5py.File(store_path, "r") as f:
        assert f["samples/id"].asstr()[()].tolist() == store.ids.tolist()
        assert f["samples/label"].dtype == np.int32
        assert f["samples/split"].asstr()[()].tolist() == store.splits.tolist()
        assert f["classes"].asstr()[()].tolist() == ["a", "b"]
        assert f["failed/id"].asstr()[()].tolist() == ["train/b/broken.png"]
        ds = f["features/conv2"]
        assert ds.dtype == np.float32 and ds.shape == (9, 64)
        assert ds.chunks is not None and ds.chunks[1] == 64  # chunked along rows
        assert not ds.is_virtual
        assert ds.attrs["pool"] == "avg"
        assert bool(f.attrs["complete"]) is True
        np.testing.assert_array_equal(ds[()], store.features("conv2"))
    assert not parts_dir(store_path).exists()


def test_size_on_disk_and_repr(store_path, store):
    assert store.size_on_disk() == store_path.stat().st_size
    assert repr(store) == f"<FeatureStore '{store_path}' resnet18 9 rows, layers ['conv2', 'penultimate'], complete>"


def test_open_errors(tmp_path):
    with pytest.raises(
        StoreError, match=r"^feature store not found: '.*nope\.h5' does not exist; create it with `run_pipeline.py extract`"
    ):
        open_store(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match=r"^'.*text\.h5' is not a readable HDF5 feature store \("):
        open_store(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match=r"^'.*other\.h5' is an HDF5 file but not a featx store \(no 'featx_format' attribute\)$"):
        open_store(tmp_path / "other.h5")
    with h5py.File(tmp_path / "future.h5", "w") as f:
        f.attrs["featx_format"] = 2
    with pytest.raises(
        StoreError, match=r"^'.*future\.h5' uses featx store format 2, this featx reads format 1 and older; upgrade featx$"
    ):
        open_store(tmp_path / "future.h5")


def test_float16_and_compression(images, tmp_path, store):
    result = quick_extract(images, tmp_path / "half.h5", dtype="float16", compression="gzip")
    with open_store(result.path) as half, h5py.File(result.path, "r") as f:
        assert f["features/conv2"].dtype == np.float16
        assert f["features/conv2"].compression == "gzip"
        np.testing.assert_array_equal(half.features("conv2"), store.features("conv2").astype(np.float16))


# --------------------------------------------------------------------------- writing, crash safety

SPEC = LayerSpec(name="f", node="n", pool="none", dim=3, source_shape=(3,))
META = {"model": "m", "weights": "none", "featx_version": "0", "data_fingerprint": "abc"}


class _Samples:
    ids = tuple(f"{i}.png" for i in range(6))
    labels = np.array([0, 1, 0, 1, 0, 1], dtype=np.int32)
    splits = ("",) * 6
    classes = ("x", "y")


def _rows(start: int, stop: int) -> np.ndarray:
    return np.arange(start * 3, stop * 3, dtype=np.float32).reshape(-1, 3)


def _writer(path: Path, **kw) -> StoreWriter:
    return StoreWriter(path, meta=META, layers=[SPEC], samples=_Samples(), checkpoint_seconds=0, **kw)


def test_unfinished_store_opens_with_the_rows_so_far(tmp_path, monkeypatch):
    path = tmp_path / "w.h5"
    writer = _writer(path)
    writer.add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})
    writer.add(stop=4, indices=[3], features={"f": _rows(3, 4)}, failures=[(2, "empty file (0 bytes)")])
    # What a reader sees while the writer is stopped (or killed) here.
    monkeypatch.chdir(tmp_path.parent)  # the virtual datasets find their parts from anywhere
    with open_store(path) as store:
        assert not store.complete
        assert store.ids.tolist() == ["0.png", "1.png", "3.png"]
        assert store.labels.tolist() == [0, 1, 1]
        np.testing.assert_array_equal(store.features("f"), np.concatenate([_rows(0, 2), _rows(3, 4)]))
        assert store.failed.to_dict("list") == {"id": ["2.png"], "reason": ["empty file (0 bytes)"]}
        assert store.size_on_disk() > path.stat().st_size
    with h5py.File(path, "r") as f:
        assert f["features/f"].is_virtual
        assert f.attrs["candidates_done"] == 4 and f.attrs["candidates"] == 6
    # A new writer resumes after the committed parts.
    again = _writer(path)
    assert (again.start, again.rows_done, again.resuming) == (4, 3, True)
    again.add(stop=6, indices=[4, 5], features={"f": _rows(4, 6)})
    again.finish()
    with open_store(path) as store:
        assert store.complete
        assert store.ids.tolist() == ["0.png", "1.png", "3.png", "4.png", "5.png"]
        np.testing.assert_array_equal(store.features("f"), np.concatenate([_rows(0, 2), _rows(3, 6)]))
    assert not parts_dir(path).exists()


def test_a_part_being_written_is_dropped(tmp_path):
    path = tmp_path / "w.h5"
    writer = StoreWriter(path, meta=META, layers=[SPEC], samples=_Samples(), checkpoint_seconds=3600)
    writer.add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})
    writer.commit()
    writer.add(stop=4, indices=[2, 3], features={"f": _rows(2, 4)})  # still open: as if killed now
    leftover = list(parts_dir(path).glob(".*.tmp-*"))
    assert len(leftover) == 1
    writer._open.file.close()
    again = _writer(path)
    assert again.start == 2
    assert not leftover[0].exists()


def test_finish_refuses_missing_rows(tmp_path):
    writer = _writer(tmp_path / "w.h5")
    writer.add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})
    with pytest.raises(StoreError, match=r"^cannot finish '.*w\.h5': 2 of 6 images were processed$"):
        writer.finish()


def test_leftovers_of_a_run_killed_in_its_final_steps_are_cleaned(tmp_path):
    path = tmp_path / "w.h5"
    writer = _writer(path)
    writer.add(stop=6, indices=list(range(6)), features={"f": _rows(0, 6)})
    saved_parts = tmp_path / "saved-parts"
    shutil.copytree(parts_dir(path), saved_parts)
    writer.finish()
    finished = path.read_bytes()
    # Killed after the final file replaced the index, before the parts were deleted ...
    shutil.copytree(saved_parts, parts_dir(path))
    # ... or while a later final write was under way (its temporary file, of a dead process).
    stale = tmp_path / ".w.h5.tmp-999999999"
    stale.write_bytes(b"half written")
    again = _writer(path)
    assert again.up_to_date
    assert not parts_dir(path).exists()
    assert not stale.exists()
    assert path.read_bytes() == finished


def test_temporary_file_of_a_live_process_is_kept(tmp_path):
    live = tmp_path / f".w.h5.tmp-{os.getppid()}"
    live.write_bytes(b"being written")
    _writer(tmp_path / "w.h5")
    assert live.exists()


def test_different_layer_set_in_unfinished_parts(tmp_path):
    path = tmp_path / "w.h5"
    _writer(path).add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})
    other = LayerSpec(name="g", node="n2", pool="none", dim=3, source_shape=(3,))
    with pytest.raises(
        StoreMismatchError,
        match=re.escape(f"an unfinished extraction of layers f is in '{parts_dir(path)}', this command asks for g; "
                        "re-run it with the same --layer values to finish it first, or use --overwrite to start again"),
    ):
        StoreWriter(path, meta=META, layers=[other], samples=_Samples())
    assert StoreWriter(path, meta=META, layers=[other], samples=_Samples(), overwrite=True).start == 0
    assert not path.exists()


def test_existing_file_that_is_not_a_store(tmp_path):
    path = tmp_path / "x.h5"
    path.write_text("not hdf5")
    with pytest.raises(
        StoreError, match=r"^'.*x\.h5' exists but is not a readable HDF5 file \(.*\); move it away or use --overwrite$"
    ):
        _writer(path)
    with h5py.File(path, "w") as f:
        f["data"] = 1
    with pytest.raises(StoreError, match=r"^'.*x\.h5' exists and is not a featx store; choose another --out or use --overwrite$"):
        _writer(path)
