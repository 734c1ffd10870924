"""Features without a store (featx.FeatureExtractor): a scikit-learn transformer equal to a store's rows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import copy_real_images, quick_extract
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

import featx
from featx.errors import DataError
from featx.extraction import FeatureExtractor, open_source
from featx.store import open_store

SETTINGS = dict(model="resnet18", weights="none", image_size=64)


@pytest.fixture(scope="module")
def data(tmp_path_factory, hymenoptera):
    """16 real JPEGs: train/val x ants/bees, 4 each."""
    return copy_real_images(hymenoptera, tmp_path_factory.mktemp("transformer") / "data", per_class=4)


def test_a_pipeline_fits_and_predicts_on_image_paths(data):
    train = sorted((data / "train").rglob("*.jpg"))
    val = sorted((data / "val").rglob("*.jpg"))
    labels = [p.parent.name for p in train]
    pipeline = Pipeline([
        ("features", featx.FeatureExtractor(layer="penultimate", **SETTINGS)),
        ("classifier", LogisticRegression(max_iter=2000)),
    ])
    pipeline.fit([str(p) for p in train], labels)
    predicted = pipeline.predict(val)
    assert predicted.shape == (8,) and set(predicted) <= {"ants", "bees"}
    extractor = pipeline.named_steps["features"]
    assert extractor.n_features_out_ == 512
    assert extractor.recipe_.layers[0].node == "flatten"
    # The estimator's parameters are scikit-learn's: clone() makes an unfitted copy.
    assert clone(extractor).get_params()["image_size"] == 64


def test_rows_equal_the_rows_of_a_store_of_the_same_recipe(data, tmp_path):
    store = quick_extract(data, tmp_path / "s.h5", layers=("conv3", "penultimate"), autotune=False, batch_size=4)
    extractor = FeatureExtractor(layer=("conv3", "penultimate"), batch_size=4, device="cpu", **SETTINGS).fit()
    assert extractor.recipe_ == store.recipe
    with open_store(store.path) as s:
        ids = s.ids.tolist()
        expected = np.concatenate([s.features("conv3"), s.features("penultimate")], axis=1)
    # In another order than the store's: rows follow the paths given.
    paths = [data / image_id for image_id in reversed(ids)]
    got = extractor.transform(paths)
    assert got.dtype == np.float32 and got.shape == (16, 128 + 512)
    np.testing.assert_array_equal(got, expected[::-1])  # bit for bit
    # An image source gives the store's order; PIL images the same rows as their files.
    np.testing.assert_array_equal(extractor.transform(open_source(data)), expected)
    images = [Image.open(p) for p in paths[:3]]
    np.testing.assert_array_equal(extractor.transform(images), expected[::-1][:3])
    assert list(extractor.get_feature_names_out()[[0, 128]]) == ["conv3_0", "penultimate_0"]


def test_unusable_images_and_inputs_are_one_line_errors(data, tmp_path):
    extractor = FeatureExtractor(layer="conv2", **SETTINGS).fit()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    good = next((data / "train" / "ants").glob("*.jpg"))
    with pytest.raises(DataError) as raised:
        extractor.transform([good, broken])
    assert str(raised.value) == (
        f"1 image(s) could not be used: {broken}: not an image: the file's content is no image format Pillow can read"
    )
    with pytest.raises(DataError, match=r"^image not found: '.*nope.jpg' does not exist; pass image files or folders$"):
        extractor.transform([tmp_path / "nope.jpg"])
    with pytest.raises(DataError, match=r"^X must be image paths, or PIL images \(not both\); got 'PosixPath, int'$"):
        extractor.transform([good, 3])
    with pytest.raises(DataError, match=r"^X must be image files, not folders; got '.*data'; pass featx.extraction.open_source\(folder\) "):
        extractor.transform([data])
