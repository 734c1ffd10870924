"""Reading a store, format 1 (featx.store._reader): the reading API, the plain-h5py layout, bad paths."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import quick_extract
from PIL import Image

from featx.errors import StoreError, StoreNotFoundError
from featx.extraction import open_source
from featx.store import describe_store, open_store, parts_dir

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
    collection = open_source(images)
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
    with pytest.raises(StoreError, match=r"^a boolean row mask must be of shape \(9,\), one value per row; got \(2,\)$"):
        store.features("conv2", rows=[True, False])


def test_out_of_range_rows(store):
    with pytest.raises(StoreError, match=r"^row 9 is out of range; '.*s\.h5' has 9 rows \(0 to 8, or -9 to -1\)$"):
        store.features("conv2", rows=[0, 9])
    with pytest.raises(StoreError, match=r"^row -10 is out of range"):
        store.features("conv2", rows=[-10])
    with pytest.raises(StoreError, match=r"^rows must be integers or a boolean mask; got float64$"):
        store.features("conv2", rows=[0.5])


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
        StoreNotFoundError,
        match=r"^feature store not found: '.*nope\.h5'; check the path, or create the store by extracting features into it$",
    ):
        open_store(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match=r"^not an HDF5 file, so not a feature store: '.*text\.h5'; check the path$"):
        open_store(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match=r"^HDF5 file is not a featx store \(no 'featx_format' attribute\): '.*other\.h5'$"):
        open_store(tmp_path / "other.h5")
    with h5py.File(tmp_path / "future.h5", "w") as f:
        f.attrs["featx_format"] = 2
    with pytest.raises(
        StoreError, match=r"^the featx store format of '.*future\.h5' must be 1 or older; got 2; upgrade featx to read it$"
    ):
        open_store(tmp_path / "future.h5")


def test_a_folder_or_a_damaged_file_is_one_clear_line(tmp_path, store_path):
    """h5py's own text ("Unable to synchronously open file ...") never reaches the user."""
    folder = tmp_path / "features"
    folder.mkdir()
    for call in (open_store, describe_store):
        with pytest.raises(
            StoreError, match="^" + re.escape(f"a feature store is a file, not a folder: '{folder}'; check the path") + "$"
        ) as caught:
            call(folder)
        assert not isinstance(caught.value, StoreNotFoundError)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(store_path.read_bytes()[:4096])  # the HDF5 signature, then nothing
    with pytest.raises(
        StoreError,
        match=r"^HDF5 file is damaged or truncated \(truncated file: eof = 4096, [^()]*\): "
        + re.escape(f"'{truncated}'; check the path")
        + "$",
    ) as caught:
        open_store(truncated)
    assert "synchronously" not in str(caught.value)


def test_float16_and_compression(images, tmp_path, store):
    result = quick_extract(images, tmp_path / "half.h5", dtype="float16", compression="gzip")
    with open_store(result.path) as half, h5py.File(result.path, "r") as f:
        assert f["features/conv2"].dtype == np.float16
        assert f["features/conv2"].compression == "gzip"
        np.testing.assert_array_equal(half.features("conv2"), store.features("conv2").astype(np.float16))
