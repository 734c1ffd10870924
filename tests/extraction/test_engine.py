"""The extraction engine (featx.extraction.extract_features): equality with torchvision, reuse, layers added, odd images."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from conftest import ODD_BAD, ODD_GOOD, quick_extract, real_jpegs
from PIL import Image
from torchvision.models.feature_extraction import create_feature_extractor

from networks import build_extractor

from featx.errors import StoreMismatchError
from featx.extraction import ExtractConfig, extract_features, load_model
from featx.extraction._network import TruncatedNetwork
from featx.store import open_store, parts_dir

# Layer names asked of featx -> the torchvision graph node they must be.  Shallow
# layers keep the test fast; one is a pooling layer, one a post-ReLU output.
DIRECT_LAYERS = {
    "alexnet": {"conv2": "features.4", "pool1": "features.2"},
    "vgg16": {"block1_conv2": "features.3", "block1_pool": "features.4"},
    # A node name means that node (conv1: the bare convolution); 'stem' is after BN and ReLU.
    "resnet18": {"conv1": "conv1", "stem": "relu", "conv2": "layer1.1.relu_1"},
}
DIRECT_POOLS = {
    "avg": lambda x: x.mean(dim=(2, 3)),
    "max": lambda x: x.amax(dim=(2, 3)),
    "flatten": lambda x: x.flatten(1),
}


@pytest.fixture(scope="module")
def four_jpegs(tmp_path_factory, hymenoptera) -> Path:
    """4 real JPEGs of different sizes, 2 classes."""
    root = tmp_path_factory.mktemp("four")
    for cls in ("ants", "bees"):
        (root / cls).mkdir()
        for src in real_jpegs(hymenoptera / "val" / cls, 2):
            shutil.copy(src, root / cls / src.name)
    return root


@pytest.fixture(scope="module")
def direct_outputs(four_jpegs, saved_weights):
    """Factory: the torchvision computation of a model's nodes on ``four_jpegs``, memoised."""
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def compute(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            model = torchvision.models.get_model(name, weights=None)
            model.load_state_dict(torch.load(saved_weights(name), weights_only=True))
            model.eval()
            transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            paths = sorted(four_jpegs.rglob("*.jpg"))
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
            cache[name] = {}
            with torch.inference_mode():
                for node in DIRECT_LAYERS[name].values():
                    # One extractor per node, so that no in-place op can touch another output.
                    cache[name][node] = create_feature_extractor(model, return_nodes=[node])(batch)[node]
        return cache[name]

    return compute


@pytest.mark.parametrize("pool", sorted(DIRECT_POOLS))
@pytest.mark.parametrize("name", sorted(DIRECT_LAYERS))
def test_features_equal_a_direct_torchvision_computation(name, pool, four_jpegs, saved_weights, direct_outputs, tmp_path):
    layers = DIRECT_LAYERS[name]
    result = extract_features(
        ExtractConfig.from_options(
            data=four_jpegs, model=name, layers=tuple(layers), weights_file=saved_weights(name), pool=pool,
            out=tmp_path / "s.h5", workers=0, device="cpu", progress=False,
            precision="fp32",  # compared with torchvision's fp32 computation
        )
    )
    expected = direct_outputs(name)
    with open_store(result.path) as store:
        assert store.ids.tolist() == sorted(p.relative_to(four_jpegs).as_posix() for p in four_jpegs.rglob("*.jpg"))
        assert store.meta["weights"] == f"file:{name}.pt"
        for layer, node in layers.items():
            assert store.layer_info(layer)["node"] == node
            assert store.layer_info(layer)["pool"] == pool
            want = DIRECT_POOLS[pool](expected[node]).numpy()
            got = store.features(layer)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))


def test_in_place_activations_do_not_change_shallower_outputs(four_jpegs, tmp_path):
    # AlexNet's ReLUs are in place: features.0 (a conv) must stay pre-activation when a deeper layer is asked too.
    result = extract_features(
        ExtractConfig.from_options(
            data=four_jpegs, model="alexnet", layers=("features.0", "conv1", "features.3"), weights="none",
            image_size=64, out=tmp_path / "s.h5", workers=0, device="cpu", progress=False,
            precision="fp32",  # compared with torchvision's fp32 computation
        )
    )
    loaded = load_model("alexnet", weights="none", image_size=64)
    paths = sorted(four_jpegs.rglob("*.jpg"))
    batch = torch.stack([loaded.preprocessing(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        conv = loaded.module.features[0](batch)
        expected = {"features.0": conv.mean(dim=(2, 3)), "conv1": torch.relu(conv).mean(dim=(2, 3))}
    with open_store(result.path) as store:
        for layer, want in expected.items():
            np.testing.assert_allclose(store.features(layer), want.numpy(), rtol=1e-5, atol=1e-6)
        assert (store.features("features.0") < 0).any()


def test_avgmax_pool_and_float16_storage(synthetic_dataset, tmp_path):
    plain = quick_extract(synthetic_dataset, tmp_path / "avg.h5", layers=("conv2",))
    both = quick_extract(synthetic_dataset, tmp_path / "avgmax.h5", layers=("conv2",), pool="avgmax", dtype="float16")
    maxed = quick_extract(synthetic_dataset, tmp_path / "max.h5", layers=("conv2",), pool="max")
    with open_store(plain.path) as a, open_store(both.path) as b, open_store(maxed.path) as m:
        assert b.features("conv2").dtype == np.float16
        expected = np.concatenate([a.features("conv2"), m.features("conv2")], axis=1).astype(np.float16)
        np.testing.assert_array_equal(b.features("conv2"), expected)
        assert b.layer_info("conv2")["pool"] == "avgmax"


# --------------------------------------------------------------------------- reuse, mismatch, added layers


def test_rerun_of_a_finished_extraction_is_a_no_op(synthetic_dataset, tmp_path):
    first = quick_extract(synthetic_dataset, tmp_path / "s.h5")
    assert (first.up_to_date, first.rows, first.images) == (False, 10, 10)
    before = (first.path.read_bytes(), first.path.stat().st_mtime_ns)
    again = quick_extract(synthetic_dataset, tmp_path / "s.h5", batch_size=3)  # batch size is not identity
    assert again.up_to_date and again.rows == 10 and again.images == 0
    assert again.layers == {"conv2": 64, "penultimate": 512}
    assert (first.path.read_bytes(), first.path.stat().st_mtime_ns) == before


def test_other_configuration_is_refused_unless_overwrite(synthetic_dataset, tmp_path):
    path = tmp_path / "s.h5"
    quick_extract(synthetic_dataset, path)
    with pytest.raises(StoreMismatchError) as info:
        quick_extract(synthetic_dataset, path, seed=1)
    assert str(info.value) == (
        f"store '{path}' was made with another configuration (the command differs): seed is 0 there, 1 here; "
        "use overwrite=True to replace it, or out='PATH' to write a new store"
    )
    with pytest.raises(
        StoreMismatchError, match=r"image_size is 64 there, 32 here; resize is 73 there, 37 here; crop is 64 there, 32 here; use overwrite=True"
    ):
        quick_extract(synthetic_dataset, path, image_size=32)
    with pytest.raises(
        StoreMismatchError,
        match=r"^layer 'conv2' already exists in '.*' with other settings: pool is 'avg' there, 'max' here; use overwrite=True to re-extract the store, or out='PATH'$",
    ):
        quick_extract(synthetic_dataset, path, pool="max")
    replaced = quick_extract(synthetic_dataset, path, seed=1, overwrite=True)
    assert not replaced.up_to_date
    with open_store(path) as store:
        assert store.meta["seed"] == 1


def test_unfinished_store_of_a_changed_data_folder_is_refused(synthetic_dataset, tmp_path, monkeypatch):
    # A complete store follows its folder (tests/store/test_incremental.py); the parts of
    # an unfinished one are rows of the old image list, so a changed folder is refused.
    path = tmp_path / "s.h5"
    forward = TruncatedNetwork.forward
    calls = []

    def interrupted_at_second_batch(self, pixels):
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(self, pixels)

    monkeypatch.setattr(TruncatedNetwork, "forward", interrupted_at_second_batch)
    with pytest.raises(KeyboardInterrupt):
        quick_extract(synthetic_dataset, path, batch_size=2, checkpoint_seconds=0)
    monkeypatch.undo()
    shutil.copy(synthetic_dataset / "a" / "0.png", synthetic_dataset / "a" / "new.png")
    with pytest.raises(
        StoreMismatchError,
        match=r"was made with another configuration \(the data folder changed since then\): "
        r"data_fingerprint is '[0-9a-f]+' there",
    ):
        quick_extract(synthetic_dataset, path, batch_size=2, checkpoint_seconds=0)


def test_adding_a_layer_keeps_the_old_ones_bit_identical(synthetic_dataset, tmp_path):
    path = tmp_path / "s.h5"
    quick_extract(synthetic_dataset, path, layers=("conv2",))
    with h5py.File(path, "r") as f:
        old_values = f["features/conv2"][()]
        old_attrs = dict(f["features/conv2"].attrs)
        old_ids = f["samples/id"].asstr()[()]
    result = quick_extract(synthetic_dataset, path, layers=("conv2", "conv3"))
    assert not result.up_to_date and result.layers == {"conv2": 64, "conv3": 128}
    separate = quick_extract(synthetic_dataset, tmp_path / "conv3.h5", layers=("conv3",))
    with h5py.File(path, "r") as f, open_store(separate.path) as fresh:
        assert sorted(name for name in f["features"] if "node" in f["features"][name].attrs) == ["conv2", "conv3"]
        assert f["features/conv2"][()].tobytes() == old_values.tobytes()
        for key in ("node", "pool", "requested", "precision", "dtype"):
            assert f["features/conv2"].attrs[key] == old_attrs[key]
        np.testing.assert_array_equal(f["features/conv2"].attrs["source_shape"], old_attrs["source_shape"])
        assert f["samples/id"].asstr()[()].tolist() == old_ids.tolist()
        assert bool(f.attrs["complete"])
        np.testing.assert_array_equal(f["features/conv3"][()], fresh.features("conv3"))
    assert quick_extract(synthetic_dataset, path, layers=("conv3",)).up_to_date


def test_interrupted_layer_addition_keeps_the_store_and_resumes(synthetic_dataset, tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    settings = dict(batch_size=2, checkpoint_seconds=0)
    quick_extract(synthetic_dataset, path, layers=("conv2",), **settings)
    before = path.read_bytes()
    forward = TruncatedNetwork.forward
    calls = []

    def interrupted_at_third_batch(self, pixels):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(self, pixels)

    monkeypatch.setattr(TruncatedNetwork, "forward", interrupted_at_third_batch)
    with pytest.raises(KeyboardInterrupt):
        quick_extract(synthetic_dataset, path, layers=("conv2", "conv3"), **settings)
    assert path.read_bytes() == before  # the finished store is untouched until the new layer is done
    assert len(list(parts_dir(path).glob("part-*.h5"))) == 2  # the two batches done are kept
    monkeypatch.undo()
    result = quick_extract(synthetic_dataset, path, layers=("conv2", "conv3"), **settings)
    assert result.images == 6  # the 4 images of the kept parts are not redone
    separate = quick_extract(synthetic_dataset, tmp_path / "conv3.h5", layers=("conv3",), **settings)
    with open_store(path) as store, open_store(separate.path) as fresh:
        assert store.layers == ["conv2", "conv3"]
        np.testing.assert_array_equal(store.features("conv3"), fresh.features("conv3"))
    assert not parts_dir(path).exists()


# --------------------------------------------------------------------------- odd images


def test_broken_and_odd_images(odd_images, tmp_path):
    result = quick_extract(odd_images, tmp_path / "odd.h5", layers=("conv2",), batch_size=3, precision="fp32")
    assert sorted(image_id for image_id, _ in result.failed) == sorted(ODD_BAD)
    with open_store(result.path) as store:
        assert store.ids.tolist() == sorted(ODD_GOOD)
        failed = dict(zip(store.failed["id"], store.failed["reason"]))
        assert sorted(failed) == sorted(ODD_BAD)
        for image_id, pattern in ODD_BAD.items():
            assert re.search(pattern, failed[image_id]), (image_id, failed[image_id])
        features = store.features("conv2")
        assert np.isfinite(features).all()
        rows = {image_id: i for i, image_id in enumerate(store.ids)}
        # Same pixels, same features: the 16-bit image and its 8-bit version.
        np.testing.assert_allclose(features[rows["good/gray16.png"]], features[rows["good/gray8.png"]], rtol=1e-6)
    # Each converted image gives the features of PIL's convert('RGB') of it.
    loaded = load_model("resnet18", weights="none", image_size=64)
    extractor, _, _ = build_extractor(loaded, ("conv2",), "avg")
    for image_id in ("good/cmyk.jpg", "good/rgba.png", "good/palette.png"):
        pixels = loaded.preprocessing(Image.open(odd_images / image_id).convert("RGB"))
        with torch.inference_mode():
            want = extractor(pixels[None])["conv2"][0].numpy()
        np.testing.assert_allclose(features[rows[image_id]], want, rtol=1e-5, atol=1e-6)


def test_all_images_broken(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jpg").write_bytes(b"")
    (tmp_path / "data" / "b.png").write_text("text")
    result = quick_extract(tmp_path / "data", tmp_path / "s.h5")
    assert result.rows == 0
    with open_store(result.path) as store:
        assert store.complete
        assert store.features("conv2").shape == (0, 64)
        assert store.failed["id"].tolist() == ["a.jpg", "b.png"]
