"""Identity by content: a weights file is its sha256, never its name (resume, reuse, predict).

The store label ``file:<name>`` is for people; ``weights_sha256`` beside it is
what makes two weights the same (featx.store.weights_identity).  Stores and
classifiers written before this rule carry the same two attributes, so they
keep working.  Real JPEGs, ResNet-18 from a saved state dict, 64x64.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import copy_real_images

from featx.classification import ClassifyConfig, load_classifier, run_classification
from featx.errors import ClassifyError, StoreMismatchError
from featx.extraction import ExtractConfig, FeatureExtractor, extract_features
from featx.prediction import predict_images
from featx.store import StoreWriter, describe_weights, identity_differences, open_store, weights_identity

FAST = {"model": "resnet18", "image_size": 64, "workers": 0, "device": "cpu", "progress": False, "batch_size": 4}
KEYS = ("model", "weights", "weights_sha256")


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    """A CLI run of another test may have left a handler bound to a closed capsys stream."""
    logging.getLogger("featx").handlers.clear()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hymenoptera, saved_weights):
    """A store made with ``my-resnet18.pth`` (penultimate and stem) and a bayes classifier on each layer."""
    root = tmp_path_factory.mktemp("identity")
    data = copy_real_images(hymenoptera, root / "data", per_class=2)
    weights = root / "my-resnet18.pth"
    shutil.copy(saved_weights("resnet18"), weights)
    store = root / "store.h5"
    extract_features(ExtractConfig.from_options(data=data, layers=("penultimate", "stem"), weights_file=weights, out=store, **FAST))
    runs = {
        layer: run_classification(
            ClassifyConfig(features=(f"{store}:{layer}",), models=("bayes",), out=root / f"run-{layer}", plots=False)
        ).results[0]
        for layer in ("penultimate", "stem")
    }
    return data, weights, store, runs


def _moved(weights, tmp_path):
    """A byte-identical copy of *weights* under another name and folder."""
    moved = tmp_path / "elsewhere" / "moved-resnet18.pth"
    moved.parent.mkdir()
    shutil.copy(weights, moved)
    return moved


# --------------------------------------------------------------------------- the comparison


def test_a_weights_file_is_identified_by_its_sha256():
    sha, other = "9f86d081884c7d65" * 4, "60303ae22b998861" * 4
    assert weights_identity("file:my-resnet18.pth", sha) == weights_identity("file:moved-resnet18.pth", sha) == f"sha256:{sha}"
    assert weights_identity("IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert weights_identity("none") == "none"
    assert describe_weights("file:a.pt", sha) == "file:a.pt (sha256 9f86d081884c...)"

    renamed = identity_differences(
        {"model": "resnet18", "weights": "file:my-resnet18.pth", "weights_sha256": sha},
        {"model": "resnet18", "weights": "file:moved-resnet18.pth", "weights_sha256": sha},
        KEYS,
    )
    assert renamed == []
    same_name = identity_differences(
        {"weights": "file:resnet18.pth", "weights_sha256": sha}, {"weights": "file:resnet18.pth", "weights_sha256": other}, KEYS
    )
    # One difference, under 'weights', that shows which contents differ.
    assert same_name == [("weights", "file:resnet18.pth (sha256 9f86d081884c...)", "file:resnet18.pth (sha256 60303ae22b99...)")]
    assert identity_differences({"weights": "file:a.pt", "weights_sha256": sha}, {"weights": "IMAGENET1K_V1"}, KEYS) == [
        ("weights", "file:a.pt (sha256 9f86d081884c...)", "IMAGENET1K_V1")
    ]
    # Without a recorded hash, the name is all there is to compare.
    assert identity_differences({"weights": "file:a.pt"}, {"weights": "file:b.pt"}, KEYS) == [("weights", "file:a.pt", "file:b.pt")]


# --------------------------------------------------------------------------- resume and reuse


def test_a_store_is_reused_and_resumed_with_a_renamed_weights_file(trained, tmp_path, monkeypatch):
    data, weights, store, _ = trained
    moved = _moved(weights, tmp_path)
    copy = tmp_path / "store.h5"
    shutil.copy(store, copy)
    reused = extract_features(ExtractConfig.from_options(data=data, layers=("penultimate",), weights_file=moved, out=copy, **FAST))
    assert reused.up_to_date

    # Interrupted after the first batch with one name, resumed with the other.
    add, calls = StoreWriter.add, []

    def interrupted_at_second_batch(self, **batch):
        calls.append(len(batch["indices"]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return add(self, **batch)

    out = tmp_path / "resumed.h5"
    settings = dict(data=data, layers=("penultimate",), out=out, checkpoint_seconds=0, **FAST)
    monkeypatch.setattr(StoreWriter, "add", interrupted_at_second_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_features(ExtractConfig.from_options(weights_file=weights, **settings))
    monkeypatch.undo()
    resumed = extract_features(ExtractConfig.from_options(weights_file=moved, **settings))
    assert resumed.images == 4  # 8 images; the first batch of 4 is not redone
    with open_store(out) as again, open_store(store) as fresh:
        np.testing.assert_array_equal(again.features("penultimate"), fresh.features("penultimate"))
        assert again.meta["weights_sha256"] == fresh.meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_weights_file_of_other_content_under_the_same_name_is_refused(trained, tmp_path):
    import torch
    import torchvision

    data, weights, store, _ = trained
    impostor = tmp_path / weights.name  # same name, other (valid) resnet18 weights
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18().state_dict(), impostor)
    copy = tmp_path / "store.h5"
    shutil.copy(store, copy)
    sha, other = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (weights, impostor))
    with pytest.raises(StoreMismatchError, match=re.escape(
        f"(the command differs): weights is 'file:{weights.name} (sha256 {sha[:12]}...)' there, "
        f"'file:{weights.name} (sha256 {other[:12]}...)' here; use overwrite=True"
    )):
        extract_features(ExtractConfig.from_options(data=data, layers=("penultimate",), weights_file=impostor, out=copy, **FAST))


# --------------------------------------------------------------------------- predict


def test_predict_accepts_a_renamed_copy_of_the_weights_file(trained, tmp_path, monkeypatch):
    data, weights, _, runs = trained
    moved = _moved(weights, tmp_path)
    calls = []
    fit = FeatureExtractor.fit
    monkeypatch.setattr(FeatureExtractor, "fit", lambda self, *a: calls.append(self) or fit(self, *a))
    result = predict_images(runs["penultimate"].artifact, [data / "val"], weights_files=[moved], workers=0, progress=False)
    expected = pd.read_csv(runs["penultimate"].predictions)
    assert list("val/" + result.predictions["id"]) == list(expected["id"])
    assert list(result.predictions["predicted"]) == list(expected["predicted"])
    assert [c.recipe.weights_file for c in calls] == [moved]


def test_predict_refuses_a_wrong_weights_file_before_any_extraction(trained, tmp_path, monkeypatch):
    data, _, _, runs = trained
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"other weights")
    calls = []
    monkeypatch.setattr(FeatureExtractor, "fit", lambda self, *a: calls.append(self))
    with pytest.raises(ClassifyError, match=r"none of the files given \(weights_files\) is that file"):
        predict_images(runs["penultimate"].artifact, [data / "val"], weights_files=[wrong], workers=0, progress=False)
    assert calls == []


def test_predict_extracts_the_graph_node_recorded_at_training(trained, tmp_path):
    """A classifier of featx 0.1 on ResNet 'conv1' (then the node relu) still predicts what it learnt."""
    data, weights, _, runs = trained
    clf = load_classifier(runs["stem"].artifact)
    assert clf.blocks[0]["layer_info"]["node"] == "relu"
    clf.blocks[0]["layer"] = "conv1"  # the name featx 0.1 recorded; today conv1 is the bare convolution
    result = predict_images(clf, [data / "val"], weights_files=[weights], workers=0, progress=False)
    expected = pd.read_csv(runs["stem"].predictions)
    assert list("val/" + result.predictions["id"]) == list(expected["id"])
    np.testing.assert_allclose(
        result.predictions[["proba_ants", "proba_bees"]].to_numpy(), expected[["proba_ants", "proba_bees"]].to_numpy(),
        rtol=0, atol=1e-6,
    )


def test_features_that_still_differ_name_the_versions_not_the_weights(trained, tmp_path):
    """What only the extraction tells (how the weights want their pixels) is compared after it, with the right advice.

    The recorded resize, crop, mean, std and interpolation are passed on to the
    extraction, so only what the weights themselves imply can still differ: here a
    channel order, as an old torchvision's preset could give.
    """
    data, weights, _, runs = trained
    clf = load_classifier(runs["penultimate"].artifact)
    provenance = clf.blocks[0]["provenance"]
    # A classifier of a store made before the recipe was recorded: its preprocessing is asked for
    # by the attributes extract could be given, and the rest comes from the weights.
    provenance["recipe"] = None
    provenance.update(channel_order="BGR", torchvision_version="0.1.0")
    moved = _moved(weights, tmp_path)
    with pytest.raises(ClassifyError) as info:
        predict_images(clf, [data / "val"], weights_files=[moved], workers=0, progress=False)
    text = str(info.value)
    assert re.search(r"features of the new images would not match the classifier's: channel_order is None now, "
                     r"'BGR' at training; the training features were made with torchvision 0\.1\.0 \(this run: "
                     r"[^)]+\): predict with those versions$", text), text
    assert "weights" not in text  # the renamed weights file is the same weights
