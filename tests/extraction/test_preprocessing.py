"""Preprocessing control: --resize/--crop/--mean/--std/--interpolation, sidecars, Caffe's mode; recorded, part of the identity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from featx import open_store
from featx.errors import ConfigError, StoreMismatchError, WeightsError
from featx.extraction import ExtractConfig, extract_features, load_model
from featx.extraction._config import default_store_path
from featx.extraction._preprocessing import CAFFE_PREPROCESSING, Preprocessing, PreprocessingOptions, sidecar_path


def _config(data, out, **options):
    return ExtractConfig.from_options(
        data=data, out=out, model="resnet18", layers=("penultimate",), weights="none", batch_size=4, workers=0,
        device="cpu", progress=False, precision="fp32", **options,
    )


def test_flags_replace_the_weights_preprocessing_and_are_recorded(run_cli, tiny_dataset, tmp_path):
    out = tmp_path / "p.h5"
    code, _, err = run_cli(
        "extract", "--data", tiny_dataset, "--model", "resnet18", "--weights", "none", "--out", out,
        "--precision", "fp32",  # compared with torchvision's fp32 computation
        "--resize", "40", "--crop", "32", "--mean", "0.5", "--std", "0.25,0.25,0.25", "--interpolation", "bicubic",
        "--workers", "0", "--no-progress",
    )
    assert code == 0, err
    with open_store(out) as store:
        meta, ids, got = store.meta, list(store.ids), store.features("penultimate")
    assert (meta["resize"], meta["crop"], meta["interpolation"]) == (40, 32, "bicubic")
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.25, 0.25, 0.25]
    assert "channel_order" not in meta  # RGB in [0, 1]: the default, not written
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    model.fc = torch.nn.Identity()
    pixels = []
    for image_id in ids:
        image = Image.open(tiny_dataset / image_id).convert("RGB")
        image = F.center_crop(F.resize(image, [40], interpolation=InterpolationMode.BICUBIC), [32])
        pixels.append(F.normalize(F.to_tensor(image), [0.5] * 3, [0.25] * 3))
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.stack(pixels)).numpy(), rtol=1e-4, atol=1e-5)
    # Part of the store's identity: another mean is another store.
    with pytest.raises(StoreMismatchError, match="mean"):
        extract_features(_config(tiny_dataset, out, resize=40, crop=32, mean=(0.4,), std=(0.25,), interpolation="bicubic"))


def test_bad_values_are_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"^mean must be comma-separated numbers, e.g. 0.485,0.456,0.406; got 'a,b'$"):
        _config(tmp_path, None, mean="a,b")
    with pytest.raises(ConfigError, match=r"^std must be positive numbers"):
        _config(tmp_path, None, std=(0.2, 0.0, 0.2))
    with pytest.raises(ConfigError, match=r"^mean must be 1 or 3 numbers"):
        _config(tmp_path, None, mean=(0.1, 0.2))
    with pytest.raises(ConfigError, match=r"^interpolation must be one of nearest, .*bicubic.*; got 'cubic'$"):
        _config(tmp_path, None, interpolation="cubic")
    with pytest.raises(ConfigError, match=r"^image_size is the crop size; it cannot differ from crop: \(64, 32\);"):
        _config(tmp_path, None, image_size=64, crop=32)
    assert _config(tmp_path, None, image_size=32, crop=32, resize=40).recipe.preprocessing.given() == {"resize": 40, "crop": 32}


def test_a_sidecar_brings_the_preprocessing_of_a_weights_file(saved_weights, tmp_path):
    weights = tmp_path / "finetuned.pt"
    shutil.copy(saved_weights("resnet18"), weights)
    assert sidecar_path(weights) == tmp_path / "finetuned.pt.json"
    sidecar_path(weights).write_text(json.dumps({"resize": 72, "crop": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}))
    loaded = load_model("resnet18", weights_file=weights)
    assert loaded.preprocessing == Preprocessing(resize=72, crop=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    # Flags win over the sidecar; --image-size scales the sidecar's resize and crop.
    flagged = load_model("resnet18", weights_file=weights, image_size=32, preprocessing=PreprocessingOptions(std=(1.0,)))
    assert (flagged.preprocessing.resize, flagged.preprocessing.crop) == (36, 32)
    assert flagged.preprocessing.std == (1.0, 1.0, 1.0) and flagged.preprocessing.mean == (0.5,) * 3
    sidecar_path(weights).write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "scale": 2}))
    with pytest.raises(WeightsError, match=r"sidecar '.*finetuned.pt.json' must be a JSON object with the keys resize, .*got \['scale'\]"):
        load_model("resnet18", weights_file=weights)


def test_the_default_store_path_names_changed_preprocessing(tmp_path):
    plain = default_store_path(_config(tmp_path / "data", None, features_dir=tmp_path))
    changed = default_store_path(_config(tmp_path / "data", None, features_dir=tmp_path, mean=(0.5,)))
    other = default_store_path(_config(tmp_path / "data", None, features_dir=tmp_path, mean=(0.4,)))
    assert plain.name == "resnet18-none.h5"
    assert changed.name.startswith("resnet18-none-p") and changed != other


def test_caffe_mode_is_exact_bgr_mean_subtraction_without_scaling():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    caffe = Preprocessing(resize=6, crop=6, interpolation="nearest", **CAFFE_PREPROCESSING)
    got = caffe(Image.fromarray(pixels)).numpy()
    expected = (pixels[:, :, ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], dtype=np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert caffe.attrs()["channel_order"] == "BGR" and caffe.attrs()["pixel_range"] == 255


def _torchvision_tail(recipe: Preprocessing, image: Image.Image) -> torch.Tensor:
    """The float32 path the table replaces, as featx computed it before: ToTensor, flip, Normalize."""
    size = [recipe.resize, recipe.resize] if recipe.resize_mode == "squash" else [recipe.resize]
    image = F.center_crop(F.resize(image, size, interpolation=InterpolationMode(recipe.interpolation)), [recipe.crop])
    pixels = F.pil_to_tensor(image)
    pixels = pixels.to(torch.float) if recipe.pixel_range == 255 else F.convert_image_dtype(pixels, torch.float)
    if recipe.channel_order == "BGR":
        pixels = pixels.flip(0)
    return F.normalize(pixels, mean=list(recipe.mean), std=list(recipe.std))


@pytest.mark.parametrize(
    "recipe",
    [
        Preprocessing(resize=256, crop=224),
        Preprocessing(resize=235, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"),
        Preprocessing(resize=224, crop=224, resize_mode="squash", **CAFFE_PREPROCESSING),
    ],
    ids=["imagenet", "timm-bicubic", "caffe-squash"],
)
def test_the_lookup_table_gives_the_bits_of_the_float32_operations(recipe, tiny_dataset):
    # Every 8-bit value in every channel (a 256 x 256 image holds each value in each channel 256 times) ...
    rng = np.random.default_rng(0)
    every_value = np.stack([rng.permutation(np.repeat(np.arange(256, dtype=np.uint8), 256)) for _ in range(3)], -1)
    images = [Image.fromarray(every_value.reshape(256, 256, 3))]
    # ... and real JPEGs of other sizes and aspect ratios.
    images += [Image.open(path).convert("RGB") for path in sorted(tiny_dataset.rglob("*.jpg"))]
    for image in images:
        got, expected = recipe(image), _torchvision_tail(recipe, image)
        assert got.dtype == torch.float32 and got.shape == expected.shape == (3, recipe.crop, recipe.crop)
        assert torch.equal(got, expected)
