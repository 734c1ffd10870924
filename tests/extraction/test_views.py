"""Augmented views at extraction (``--views``, ``--views-reduce``): equal to independent torchvision computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import copy_real_images, quick_extract
from PIL import Image
from torchvision import transforms as T

from featx.errors import ConfigError, StoreMismatchError
from featx.extraction import FeatureExtractor, FeatureRecipe, LayerRecipe
from featx.extraction._preprocessing import Preprocessing
from featx.extraction._views import ViewSpec
from featx.store import open_store

# Every exactness test computes in fp32 whatever extract's default precision is.
SETTINGS = dict(layers=("penultimate",), resize=73, crop=64, precision="fp32", batch_size=4, autotune=False)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def data(tmp_path_factory, hymenoptera):
    """8 real JPEGs of different sizes: train/val x ants/bees, 2 each."""
    return copy_real_images(hymenoptera, tmp_path_factory.mktemp("views") / "data", per_class=2)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A seeded ResNet-18 state dict, and the same network built by torchvision alone (its penultimate layer)."""
    torch.manual_seed(7)
    model = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("views-weights") / "r18.pt"
    torch.save(model.state_dict(), path)
    model.fc = torch.nn.Identity()
    return path, model.eval()


def _extract(data, out, weights, **options):
    result = quick_extract(data, out, weights_file=weights[0], **{**SETTINGS, **options})
    with open_store(result.path) as store:
        return store.ids.tolist(), store.features("penultimate"), store.layer_info("penultimate")


def _base(data, image_id, side):
    """The image resized (shorter side 73) and centre-cropped to *side*, as torchvision's transforms make it."""
    image = Image.open(data / image_id).convert("RGB")
    return T.Compose([T.Resize(73), T.CenterCrop(side), T.ToTensor(), T.Normalize(MEAN, STD)])(image)


def _forward(model, pixels):
    with torch.inference_mode():
        return model(pixels).numpy()


def test_flip_is_the_mean_of_the_image_and_its_mirror(data, weights, tmp_path):
    ids, rows, info = _extract(data, tmp_path / "flip.h5", weights, views="flip")
    assert rows.shape == (8, 512) and "views" not in info
    base = torch.stack([_base(data, i, 64) for i in ids])
    expected = (_forward(weights[1], base) + _forward(weights[1], torch.flip(base, dims=[-1]))) / 2
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)


def test_tencrop_equals_torchvision_tencrop_of_the_central_square(data, weights, tmp_path):
    ids, rows, _ = _extract(data, tmp_path / "ten.h5", weights, views="tencrop")
    # TenCrop(64) of the 73x73 central square of the resized image: 4 corners, centre, then those of its mirror.
    crops = torch.stack([torch.stack(T.TenCrop(64)(_base(data, i, 73))) for i in ids])  # (8, 10, 3, 64, 64)
    per_view = _forward(weights[1], crops.reshape(-1, 3, 64, 64)).reshape(8, 10, 512)
    np.testing.assert_allclose(rows, per_view.mean(axis=1), rtol=1e-5, atol=1e-6)

    # Every view kept: one row per image, 10 x 512 columns, view-major, and the dataset says views = 10.
    ids_all, rows_all, info = _extract(data, tmp_path / "ten-all.h5", weights, views="tencrop", views_reduce="none")
    assert ids_all == ids and rows_all.shape == (8, 10 * 512) and info["views"] == 10
    for v in range(10):
        np.testing.assert_allclose(rows_all[:, v * 512 : (v + 1) * 512], per_view[:, v], rtol=1e-5, atol=1e-6)
    with open_store(tmp_path / "ten-all.h5") as store:
        assert [store.classes[k] for k in store.labels] == [i.split("/")[1] for i in ids]
        assert store.splits.tolist() == [i.split("/")[0] for i in ids]
    from featx.store import describe_store

    assert "\nviews:          tencrop, every view kept (views x columns per layer, view-major)\n" in describe_store(
        tmp_path / "ten-all.h5"
    )


def test_multiscale_is_three_zooms_of_the_central_square(data, weights, tmp_path):
    ids, rows, info = _extract(data, tmp_path / "ms.h5", weights, views="multiscale", views_reduce="none")
    assert rows.shape == (8, 3 * 512) and info["views"] == 3
    square = torch.stack([_base(data, i, 73) for i in ids])
    bilinear = T.InterpolationMode.BILINEAR
    for v, side in enumerate((64, 73, round(73 * 73 / 64))):
        view = T.CenterCrop(64)(T.functional.resize(square, [side, side], interpolation=bilinear, antialias=True))
        np.testing.assert_allclose(rows[:, v * 512 : (v + 1) * 512], _forward(weights[1], view), rtol=1e-5, atol=1e-6)


def test_random_views_are_seeded_by_image_id(data, weights, tmp_path, hymenoptera):
    ids, first, info = _extract(data, tmp_path / "r1.h5", weights, views="random:3", views_reduce="none")
    assert first.shape == (8, 3 * 512) and info["views"] == 3
    _, again, _ = _extract(data, tmp_path / "r2.h5", weights, views="random:3", views_reduce="none", batch_size=3)
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)  # another batching: the same views
    # An image's views depend on its id, not on the other images: a folder of a subset gives its rows.
    subset = copy_real_images(hymenoptera, tmp_path / "subset", per_class=1)
    sub_ids, sub_rows, _ = _extract(subset, tmp_path / "r4.h5", weights, views="random:3", views_reduce="none")
    np.testing.assert_allclose(sub_rows, first[[ids.index(i) for i in sub_ids]], rtol=1e-5, atol=1e-6)
    _, other_seed, _ = _extract(data, tmp_path / "r3.h5", weights, views="random:3:1", views_reduce="none")
    assert not np.allclose(other_seed, first)
    views = first.reshape(8, 3, 512)
    assert not np.allclose(views[:, 0], views[:, 1])  # the views differ from one another
    with open_store(tmp_path / "r1.h5") as store:
        assert '"views":"random:3:0"' in store.meta["recipe"]


def test_a_store_of_views_is_another_store(data, weights, tmp_path):
    out = tmp_path / "s.h5"
    _extract(data, out, weights, views="flip")
    with pytest.raises(StoreMismatchError, match=r"views is 'flip' there, None here"):
        _extract(data, out, weights)
    with pytest.raises(StoreMismatchError, match=r"views is 'flip' there, 'tencrop' here"):
        _extract(data, out, weights, views="tencrop")
    _, rows, _ = _extract(data, out, weights, views="flip")  # the same recipe: the store is reused
    assert rows.shape == (8, 512)


def _resolved(recipe):
    return recipe.resolved(
        weights="none", weights_sha256=None, seed=0, preprocessing=Preprocessing(resize=73, crop=64),
        layers=[LayerRecipe("penultimate", node="flatten", pool="none")],
    )


def test_the_default_store_name_says_the_views(tmp_path):
    from featx.extraction import ExtractConfig
    from featx.extraction._config import default_store_path

    def name(**views):
        config = ExtractConfig.from_options(data=tmp_path / "photos", model="resnet18", weights="none", **views)
        return default_store_path(config).name

    assert name() == "resnet18-none.h5"
    assert name(views="tencrop") == "resnet18-none-tencrop.h5"
    assert name(views="random:8", views_reduce="none") == "resnet18-none-random-8-0-all.h5"


def test_no_views_is_the_recipe_of_before():
    recipe = _resolved(FeatureRecipe.request("resnet18", weights="none"))
    assert "views" not in recipe.to_json() and "views" not in recipe.attrs()
    assert FeatureRecipe.from_json(recipe.to_json()) == recipe
    viewed = _resolved(FeatureRecipe.request("resnet18", weights="none", views="Random:4", views_reduce="none"))
    assert viewed.views == "random:4:0" and FeatureRecipe.from_json(viewed.to_json()) == viewed
    assert viewed.attrs()["views"] == "random:4:0" and viewed.attrs()["views_reduce"] == "none"
    assert viewed.differences(recipe.attrs() | {"recipe": recipe.to_json()}) == [
        ("views", None, "random:4:0"), ("views_reduce", None, "none")
    ]


@pytest.mark.parametrize("views", ["flop", "random:0", "random:65", "random:4:x", "tencrop:2"])
def test_a_bad_spec_is_one_line(run_cli, data, tmp_path, views):
    code, out, err = run_cli(
        "extract", "--data", data, "--model", "resnet18", "--weights", "none", "--views", views, "--out", tmp_path / "x.h5",
    )
    allowed = "none, flip, tencrop, multiscale or random:N[:SEED] (N from 1 to 64)"
    assert code == 2 and err.strip() == f"error: --views must be {allowed}; got '{views}'"
    assert not (tmp_path / "x.h5").exists()


def test_a_bad_reduction_is_one_line():
    with pytest.raises(ConfigError, match=r"^views_reduce must be mean or none; got 'max'$"):
        FeatureRecipe.request("resnet18", views="flip", views_reduce="max")
    assert ViewSpec.parse(None, None) == ViewSpec("none", "mean")


def test_the_transformer_computes_the_stores_views(data, weights, tmp_path):
    _, rows, _ = _extract(data, tmp_path / "ten.h5", weights, views="tencrop", views_reduce="none", batch_size=4)
    extractor = FeatureExtractor(
        "resnet18", weights_file=weights[0], resize=73, crop=64, precision="fp32", views="tencrop",
        views_reduce="none", batch_size=4, device="cpu",
    ).fit()
    assert extractor.n_features_out_ == 10 * 512
    from featx.extraction import open_source

    np.testing.assert_array_equal(extractor.transform(open_source(data)), rows)


def test_a_grown_folder_updates_a_store_of_views_incrementally(data, weights, tmp_path, hymenoptera):
    import shutil

    folder = copy_real_images(hymenoptera, tmp_path / "grown", per_class=1)
    out = tmp_path / "views.h5"
    first_ids, first, _ = _extract(folder, out, weights, views="random:2", views_reduce="none")
    for image_id in ("train/ants", "val/bees"):  # one more image in two classes
        src = sorted((hymenoptera / image_id).glob("*.jpg"))[1]
        shutil.copy(src, folder / image_id / src.name)
    result = quick_extract(folder, out, weights_file=weights[0], **{**SETTINGS, "views": "random:2", "views_reduce": "none"})
    assert result.updated and result.added == 2
    ids, rows, info = _extract(folder, out, weights, views="random:2", views_reduce="none")  # up to date: read back
    assert len(ids) == len(first_ids) + 2 and info["views"] == 2 and rows.shape[1] == 2 * 512
    # Old rows kept; the new images' views are those of a fresh store (seeded by their ids).
    np.testing.assert_array_equal(rows[[ids.index(i) for i in first_ids]], first)
    fresh_ids, fresh, _ = _extract(folder, tmp_path / "fresh.h5", weights, views="random:2", views_reduce="none")
    assert fresh_ids == ids
    np.testing.assert_allclose(rows, fresh, rtol=1e-5, atol=1e-6)
