"""Training views: every view of the training images trains, each evaluation image is the mean over its views.

The stores are written directly with the layer attribute ``views`` = V (one
row per image, V x D columns, view after view), as an extraction with
training views leaves them.  Column 0 of every view is a fingerprint
``1000 x (image + 1) + view`` so that the rows a fit received can be read back
as (image, view) pairs.
"""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from classify_data import config_for
from sklearn.linear_model import LogisticRegression

from stores import dataset, write_store
from featx.classification import join_features, load_classifier, run_classification
from featx.errors import ClassifyError, StoreError

V, D = 3, 5


def views_store(path, ids, labels, splits, *, views=V, seed=0, layer="f"):
    """A store whose layer holds *views* views of D columns per image; returns it and the (n, views, D) features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(3, D))
    features = centres[labels][:, None, :] + rng.normal(size=(len(ids), views, D))
    features[:, :, 0] = 1000.0 * (np.arange(len(ids))[:, None] + 1) + np.arange(views)  # the fingerprint
    write_store(path, ids, labels, {layer: features.reshape(len(ids), views * D).astype(np.float32)}, splits=splits)
    with h5py.File(path, "a") as f:
        f[f"features/{layer}"].attrs["views"] = views
    return path, features.astype(np.float32)


def spy_fits(monkeypatch):
    """Record the (image, view) pairs and labels of every LogisticRegression fit."""
    seen = []
    fit = LogisticRegression.fit

    def spy(self, X, y, *args, **kwargs):
        fingerprint = np.rint(np.asarray(X)[:, 0]).astype(np.int64)
        seen.append((fingerprint // 1000 - 1, fingerprint % 1000, np.asarray(y)))
        return fit(self, X, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    return seen


def test_every_view_of_the_training_images_trains_and_no_view_of_an_evaluation_image(tmp_path, monkeypatch):
    ids, labels, splits = dataset()
    store, features = views_store(tmp_path / "s.h5", ids, labels, splits)
    seen = spy_fits(monkeypatch)
    run = run_classification(config_for(tmp_path, [store], models="logreg", normalize="none"))
    (images, views, y), = seen
    train = [i for i, s in enumerate(splits) if s == "train"]
    assert sorted(set(images.tolist())) == train  # the ids of the fit: training images only ...
    assert sorted(zip(images.tolist(), views.tolist())) == [(i, v) for i in train for v in range(V)]  # ... every view
    np.testing.assert_array_equal(y, labels[images])
    # Each val image: the mean over its views of the probabilities of a model fitted on the stacked training views.
    model = LogisticRegression(max_iter=1_000).fit(features[train].reshape(-1, D), np.repeat(labels[train], V))
    val = [i for i, s in enumerate(splits) if s == "val"]
    expected = model.predict_proba(features[val].reshape(-1, D)).reshape(len(val), V, 3).mean(axis=1)
    frame = pd.read_csv(run.results[0].predictions)
    assert list(frame["id"]) == [ids[i] for i in val]  # one row per image, not per view
    np.testing.assert_allclose(frame[["proba_a", "proba_b", "proba_c"]].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    assert list(frame["predicted"]) == list(np.array(["a", "b", "c"])[expected.argmax(axis=1)])
    assert run.results[0].n_test == len(val) and run.evaluation.folds[0][0].size == len(train)


@pytest.mark.parametrize("evaluation", [{"cv": 3}, {"test_size": 0.25}], ids=["cv", "holdout"])
def test_the_splits_and_folds_are_per_image(tmp_path, monkeypatch, evaluation):
    ids, labels, _ = dataset(split=False)
    store, _ = views_store(tmp_path / "s.h5", ids, labels, None)
    seen = spy_fits(monkeypatch)
    run = run_classification(config_for(tmp_path, [store], models="logreg", normalize="none", **evaluation))
    folds = run.evaluation.folds
    for (images, views, _), (train, test) in zip(seen, folds):
        assert sorted(set(images.tolist())) == sorted(train.tolist())
        assert not set(images.tolist()) & set(test.tolist())
        assert np.bincount(views).tolist() == [len(train)] * V
    frame = pd.read_csv(run.results[0].predictions)
    assert len(frame) == sum(len(test) for _, test in folds) and frame["id"].is_unique


def test_a_model_without_probabilities_averages_its_decision_function(tmp_path):
    ids, labels, splits = dataset()
    store, features = views_store(tmp_path / "s.h5", ids, labels, splits, seed=3)
    run = run_classification(config_for(tmp_path, [store], models="svm", normalize="none"))
    result = run.results[0]
    assert result.method == "minibatch squared hinge + L-BFGS"  # 72 view rows x 5 columns
    clf = load_classifier(result.artifact).pipeline.named_steps["clf"]
    val = [i for i, s in enumerate(splits) if s == "val"]
    scores = clf.decision_function(features[val].reshape(-1, D)).reshape(len(val), V, 3).mean(axis=1)
    assert list(pd.read_csv(result.predictions)["predicted"]) == list(np.array(["a", "b", "c"])[scores.argmax(1)])


def test_a_saved_classifier_averages_the_views_of_each_image(tmp_path):
    ids, labels, splits = dataset()
    store, features = views_store(tmp_path / "s.h5", ids, labels, splits)
    run = run_classification(config_for(tmp_path, [store], models="logreg"))
    loaded = load_classifier(run.results[0].artifact)
    assert (loaded.views, loaded.manifest["n_features"], loaded.blocks[0]["views"]) == (V, D, V)
    val = [i for i, s in enumerate(splits) if s == "val"]
    frame = pd.read_csv(run.results[0].predictions)
    per_image = features[val].reshape(len(val), V * D)  # as the store holds them: views one after the other
    np.testing.assert_allclose(loaded.predict_proba(per_image), frame[["proba_a", "proba_b", "proba_c"]].to_numpy(),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(loaded.predict(per_image), frame["predicted"].map("abc".index).to_numpy())
    # One row per view is the pipeline's own input.
    assert loaded.predict(features[val].reshape(-1, D)).shape == (len(val) * V,)


def test_joined_stores_with_views_read_view_by_view(tmp_path):
    ids, labels, splits = dataset()
    first, a = views_store(tmp_path / "a.h5", ids, labels, splits, seed=1)
    second, b = views_store(tmp_path / "b.h5", ids, labels, splits, seed=2, layer="g")
    joined = join_features([first, second])
    assert joined.views == V and joined.n_features == 2 * D
    rows = joined.view_rows(np.array([4, 0]))
    np.testing.assert_array_equal(rows, [12, 13, 14, 0, 1, 2])
    expected = np.concatenate([a[[4, 0]].reshape(-1, D), b[[4, 0]].reshape(-1, D)], axis=1)
    np.testing.assert_array_equal(joined.X[rows], expected)
    lazy = join_features([first, second], load=False)
    np.testing.assert_array_equal(lazy.rows(rows), expected)


def test_inputs_whose_views_differ_are_refused_in_one_line(tmp_path):
    ids, labels, splits = dataset()
    first, _ = views_store(tmp_path / "a.h5", ids, labels, splits)
    second, _ = views_store(tmp_path / "b.h5", ids, labels, splits, views=2)
    with pytest.raises(ClassifyError, match=r"^the feature inputs have different training views per image "
                                            rf"\('{first}:f' 3, '{second}:f' 2\); join stores extracted with the "
                                            r"same views$"):
        join_features([first, second])
    plain = write_store(tmp_path / "c.h5", ids, labels, {"f": np.ones((len(ids), 15), np.float32)}, splits=splits)
    with pytest.raises(ClassifyError, match=r"different training views per image"):
        join_features([first, plain])
    with h5py.File(plain, "a") as f:
        f["features/f"].attrs["views"] = 4
    with pytest.raises(StoreError, match=rf"^the 'views' attribute of layer 'f' in store '{plain}' must be a "
                                         r"positive integer that divides its 15 columns; got 4; re-extract the store$"):
        join_features([plain])


def test_streamed_fits_and_the_protocol_keep_evaluation_images_out_too(tmp_path, monkeypatch):
    from featx.classification._linear import MinibatchLinearClassifier

    ids, labels, splits = dataset()
    store, _ = views_store(tmp_path / "s.h5", ids, labels, splits)
    train = {i for i, s in enumerate(splits) if s == "train"}
    streamed = []
    partial_fit = MinibatchLinearClassifier.partial_fit

    def spy(self, X, y, classes=None):
        streamed.extend((np.rint(X[:, 0]).astype(np.int64) // 1000 - 1).tolist())
        return partial_fit(self, X, y, classes)

    monkeypatch.setattr(MinibatchLinearClassifier, "partial_fit", spy)
    run = run_classification(config_for(tmp_path / "a", [store], models="logreg", normalize="none", memory="1K"))
    assert run.fit.path == "streaming" and set(streamed) == train
    seen = spy_fits(monkeypatch)
    run = run_classification(config_for(tmp_path / "b", [store], models="logreg", normalize="none",
                                        protocol="linear-probe"))
    # 45 fits on the images left after carving the validation images, and the refit on all training images.
    carved = {tuple(sorted(set(images.tolist()))) for images, _, _ in seen[:-1]}
    assert len(carved) == 1 and set(next(iter(carved))) < train
    assert len(next(iter(carved))) == len(train) - run.results[0].protocol["validation_rows"]
    assert set(seen[-1][0].tolist()) == train
