"""Which rows train and which evaluate: cross-validation, the stored split, a hold-out; data refused."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from classify_data import config_for, write_two_stores
from stores import blobs, dataset, write_store
from featx.classification import load_classifier, run_classification
from featx.errors import ClassifyError


@pytest.fixture
def two_stores(tmp_path):
    """The two stores of :func:`classify_data.write_two_stores`."""
    return write_two_stores(tmp_path)


def test_cross_validation_predicts_every_labelled_sample_once(tmp_path, two_stores):
    _, resnet = two_stores
    run = run_classification(config_for(tmp_path, [resnet], models=("logreg",), cv=4))
    result = run.results[0]
    frame = pd.read_csv(result.predictions)
    assert len(frame) == 36 and frame["id"].is_unique
    assert sorted(frame["fold"].value_counts()) == [9, 9, 9, 9]
    assert result.accuracy == accuracy_score(frame["true"], frame["predicted"])
    assert len(result.fold_accuracies) == 4
    assert result.accuracy == pytest.approx(np.mean(result.fold_accuracies))  # equal-sized folds
    assert "the stored split is not used with cross-validation" in run.evaluation.description
    # The saved classifier is refitted on every labelled sample.
    assert load_classifier(result.artifact).manifest["trained_on"]["rows"] == 36


def test_holdout_is_stratified_and_seeded(tmp_path):
    ids, labels, _ = dataset(n_per_class=10, split=False)
    store = write_store(tmp_path / "flat.h5", ids, labels, {"f": blobs(labels, 4, seed=0)})
    runs = [
        run_classification(config_for(tmp_path, [store], models=("bayes",), test_size=0.3, seed=s, out=tmp_path / f"r{k}"))
        for k, s in enumerate((5, 5, 6))
    ]
    frames = [pd.read_csv(r.results[0].predictions) for r in runs]
    assert len(frames[0]) == math.ceil(0.3 * 30)
    assert sorted(frames[0]["true"].value_counts()) == [3, 3, 3]
    assert list(frames[0]["id"]) == list(frames[1]["id"])
    assert list(frames[0]["id"]) != list(frames[2]["id"])
    assert runs[0].evaluation.mode == "holdout"


def test_a_test_split_is_preferred_to_val(tmp_path):
    ids, labels, splits = dataset()
    splits = ["test" if s == "val" and i % 2 else s for i, s in enumerate(splits)]
    store = write_store(tmp_path / "tvt.h5", ids, labels, {"f": blobs(labels, 3, seed=0)}, splits=splits)
    run = run_classification(config_for(tmp_path, [store], models=("bayes",)))
    frame = pd.read_csv(run.results[0].predictions)
    assert set(frame["split"]) == {"test"}
    assert len(frame) == splits.count("test")
    assert run.evaluation.description == (
        f"stored split: train on train (24), evaluate on test ({splits.count('test')}); "
        f"{splits.count('val')} labelled samples of other splits unused"
    )


def test_store_without_labels(tmp_path):
    ids = [f"{i}.png" for i in range(8)]
    store = write_store(tmp_path / "unlabelled.h5", ids, np.full(8, -1), {"f": np.ones((8, 2), np.float32)}, classes=())
    with pytest.raises(ClassifyError, match=re.escape(
        f"no labels: the 8 samples of '{store}' are all unlabelled (label -1, the data folder had no class "
        "subfolders); classify needs labelled images, one subfolder per class (DATA/<class>/<image>): "
        "extract from such a folder"
    )):
        run_classification(config_for(tmp_path, [store]))


def test_one_class_only(tmp_path):
    ids = [f"a/{i}.png" for i in range(8)]
    store = write_store(tmp_path / "one.h5", ids, np.zeros(8), {"f": blobs(np.zeros(8, int), 2, 0)}, classes=("a",))
    with pytest.raises(ClassifyError, match=re.escape(
        "only one class ('a') among the 8 labelled samples; a classifier needs at least two: "
        "add a subfolder of images of another class and extract again"
    )):
        run_classification(config_for(tmp_path, [store]))


def test_a_class_smaller_than_the_folds(tmp_path, two_stores):
    _, resnet = two_stores
    with pytest.raises(ClassifyError, match=re.escape(
        "cv=13 needs at least 13 labelled samples of every class, but class 'a' has 12; use cv=12 or fewer"
    )):
        run_classification(config_for(tmp_path, [resnet], cv=13))


def test_a_class_with_one_sample_cannot_be_held_out(tmp_path):
    labels = np.array([0, 0, 0, 0, 1])
    ids = [f"{'ab'[k]}/{i}.png" for i, k in enumerate(labels)]
    store = write_store(tmp_path / "tiny.h5", ids, labels, {"f": blobs(labels, 2, 0)}, classes=("a", "b"))
    with pytest.raises(ClassifyError, match=re.escape(
        "class 'b' has 1 labelled sample; a stratified hold-out needs at least 2 per class: "
        "add images of it, or remove its folder"
    )):
        run_classification(config_for(tmp_path, [store]))


def test_train_split_without_a_class(tmp_path):
    ids, labels, splits = dataset()
    splits = ["val" if label == 2 else s for s, label in zip(splits, labels)]
    store = write_store(tmp_path / "s.h5", ids, labels, {"f": blobs(labels, 2, 0)}, splits=splits)
    with pytest.raises(ClassifyError, match=re.escape(
        "the train split has no sample of class 'c' (present in val); a classifier cannot learn a class "
        "it never sees: add training images of it"
    )):
        run_classification(config_for(tmp_path, [store]))


def test_too_many_pca_components(tmp_path, two_stores):
    alexnet, resnet = two_stores
    with pytest.raises(ClassifyError, match=re.escape(
        "pca must be at most min(training rows of a fit = 24, features = 10) = 10; got 11; "
        "choose pca=10 or fewer"
    )):
        run_classification(config_for(tmp_path, [f"{alexnet}:fc7", resnet], pca=11))
