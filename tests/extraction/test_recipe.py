"""How a feature is made (featx.extraction FeatureRecipe): one value, its JSON, the store's identity.

A new store records its recipe as the root attribute ``recipe``; a format-1
store written before it (no ``recipe``) still resumes, updates, is extended
and predicts, compared through its legacy attributes.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import copy_real_images, quick_extract

from featx.classification import ClassifyConfig, run_classification
from featx.errors import ConfigError, StoreError, StoreMismatchError
from featx.extraction import FeatureRecipe, LayerRecipe
from featx.extraction._device import resolve_precision
from featx.extraction._network import TruncatedNetwork, build_network
from featx.prediction import predict_images
from featx.store import open_store

LAYERS = ("conv2", "penultimate")


def _extract(data, out, **overrides):
    return quick_extract(data, out, autotune=False, batch_size=2, **overrides)


def test_a_request_and_a_resolved_recipe_survive_json():
    request = FeatureRecipe.request("resnet18", ("conv5", "penultimate"), weights="none", image_size=64, mean="0.5")
    assert FeatureRecipe.from_json(request.to_json()) == request
    assert not request.is_resolved
    resolved = build_network(request).recipe
    assert resolved.is_resolved
    assert FeatureRecipe.from_json(resolved.to_json()) == resolved
    assert resolved.preprocessing_resolved.resize == 73 and resolved.preprocessing_resolved.crop == 64
    assert resolved.preprocessing.mean == (0.5, 0.5, 0.5)
    assert [(l.name, l.node, l.pool) for l in resolved.layers] == [
        ("conv5", "layer4.1.relu_1", "avg"), ("penultimate", "flatten", "none")
    ]
    # Resolving a resolved recipe gives it back: what predict replays.
    assert build_network(resolved).recipe == resolved
    # Equal recipes give equal text (the store's identity).
    assert json.loads(resolved.to_json())["layers"][1] == {
        "name": "penultimate", "node": "flatten", "pool": "none", "dtype": "float32",
        "precision": resolve_precision("auto", torch.device("cpu"))[0],  # auto, resolved for the CPU
    }


def test_a_weights_file_is_identified_by_its_hash_not_its_path(saved_weights, tmp_path):
    weights = saved_weights("resnet18")
    moved = tmp_path / "renamed.pt"
    shutil.copy(weights, moved)
    a = build_network(FeatureRecipe.request("resnet18", "conv2", weights_file=weights, image_size=64)).recipe
    b = build_network(FeatureRecipe.request("resnet18", "conv2", weights_file=moved, image_size=64)).recipe
    assert a.weights_sha256 == b.weights_sha256 and a.weights_file != b.weights_file
    assert "weights_file" not in a.to_dict()
    assert a.differences(b.attrs()) == []


@pytest.mark.parametrize(
    "text, error",
    [
        ("{", "the recipe is not JSON (JSONDecodeError: "),
        ("[1]", "a recipe must be a JSON object; got 'list'"),
        ('{"version": 9}', "the recipe's version must be 1; got 9; read it with the featx version that wrote it"),
        ('{"version": 1}', "the recipe cannot be read (KeyError: 'model')"),
    ],
)
def test_an_unreadable_recipe_is_one_line(text, error):
    with pytest.raises(StoreError) as raised:
        FeatureRecipe.from_json(text)
    assert str(raised.value).startswith(error)


def test_a_recipe_is_checked_when_made():
    with pytest.raises(ConfigError, match=r"^pool must be one of avg, max, flatten, avgmax; got 'median'$"):
        FeatureRecipe(model="resnet18", layers=(LayerRecipe("conv2", pool="median"),))
    with pytest.raises(ConfigError, match=r"^a layer is requested twice: 'conv2'; ask for each layer once$"):
        FeatureRecipe.request("resnet18", ("conv2", "conv2"))
    with pytest.raises(ConfigError, match=r"^no layer requested; "):
        FeatureRecipe.request("resnet18", ())


def test_a_new_store_records_its_recipe(small_dataset, tmp_path):
    result = _extract(small_dataset, tmp_path / "s.h5", layers=("penultimate",))
    with h5py.File(result.path, "r") as f:
        recorded = FeatureRecipe.from_json(f.attrs["recipe"])
    assert recorded == result.recipe
    # Extending the store adds the layer to the recorded recipe (layers by name).
    extended = _extract(small_dataset, tmp_path / "s.h5", layers=("conv2",))
    with h5py.File(extended.path, "r") as f:
        recorded = FeatureRecipe.from_json(f.attrs["recipe"])
    assert recorded.layer_names == ("conv2", "penultimate")
    assert recorded.network() == result.recipe.network()


def _legacy(monkeypatch) -> None:
    """Make the extraction write stores as featx did before the recipe attribute (format 1, no `recipe`)."""
    # The store leaves None attributes out.
    monkeypatch.setattr(FeatureRecipe, "to_json", lambda self: None)


def test_a_store_without_a_recipe_resumes_is_extended_and_updated(hymenoptera, tmp_path, monkeypatch):
    data = copy_real_images(hymenoptera, tmp_path / "data", per_class=2)
    fresh = _extract(data, tmp_path / "fresh.h5", layers=LAYERS).path
    out = tmp_path / "old.h5"
    with monkeypatch.context() as patch:
        _legacy(patch)
        forward = TruncatedNetwork.forward
        calls = []

        def interrupted_at_second_batch(self, pixels):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return forward(self, pixels)

        patch.setattr(TruncatedNetwork, "forward", interrupted_at_second_batch)
        with pytest.raises(KeyboardInterrupt):
            _extract(data, out, layers=LAYERS)
    with h5py.File(out, "r") as f:
        assert "recipe" not in f.attrs and "model" in f.attrs  # an unfinished store of the old kind
    resumed = _extract(data, out, layers=LAYERS)
    assert resumed.images == 8 - 2  # the first batch of 2 was kept
    with open_store(out) as a, open_store(fresh) as b:
        for layer in LAYERS:
            np.testing.assert_array_equal(a.features(layer), b.features(layer))
        assert FeatureRecipe.from_json(a.meta["recipe"]) == FeatureRecipe.from_json(b.meta["recipe"])

    # A complete store of the old kind: extended by a layer, then updated to a grown folder.
    old = tmp_path / "complete-old.h5"
    with monkeypatch.context() as patch:
        _legacy(patch)
        _extract(data, old, layers=("penultimate",))
    extended = _extract(data, old, layers=("conv2",))
    assert extended.layers == {"conv2": 64} and extended.images == 8
    shutil.copy(sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[-1], data / "val" / "ants" / "added.jpg")
    updated = _extract(data, old, layers=LAYERS)
    assert (updated.updated, updated.added, updated.images) == (True, 1, 1)
    # Another recipe aimed at it is still refused, through the legacy attributes.
    with pytest.raises(StoreMismatchError, match=r"seed is 0 there, 1 here"):
        _extract(data, old, layers=LAYERS, seed=1)


def test_a_classifier_of_a_store_without_a_recipe_predicts(hymenoptera, tmp_path, monkeypatch):
    data = copy_real_images(hymenoptera, tmp_path / "data", per_class=3)
    with monkeypatch.context() as patch:
        _legacy(patch)
        store = _extract(data, tmp_path / "old.h5", layers=("penultimate",)).path
    run = run_classification(
        ClassifyConfig(features=(f"{store}:penultimate",), models=("logreg",), out=tmp_path / "run", plots=False)
    )
    assert "recipe" not in run.inputs[0].provenance
    result = predict_images(run.results[0].artifact, [data / "val"], workers=0, progress=False, batch_size=2)
    expected = run.results[0]
    import pandas as pd

    frame = pd.read_csv(expected.predictions)
    assert list("val/" + result.predictions["id"]) == list(frame["id"])
    assert list(result.predictions["predicted"]) == list(frame["predicted"])
