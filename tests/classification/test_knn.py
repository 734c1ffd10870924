"""The knn family: DINO's weighted kNN vote, checked against an independent numpy implementation."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from classify_data import config_for

from stores import blobs, dataset, write_store
from featx.classification import FAMILIES, ClassifyConfig, load_classifier, run_classification
from featx.classification._knn import KNNVote, top_k_numpy
from featx.errors import ConfigError


def dino_knn(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, k: int, T: float, n_classes: int):
    """DINO's eval_knn rule, written out plainly: full similarity matrix, full sort."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = test.astype(np.float64) @ train.astype(np.float64).T
    order = np.argsort(-sims, axis=1)[:, :k]
    votes = np.zeros((len(test), n_classes))
    for i in range(len(test)):
        for j in order[i]:
            votes[i, train_labels[j]] += np.exp(sims[i, j] / T)
    return votes / votes.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("knn")
    ids, labels, splits = dataset(n_per_class=20)
    features = blobs(labels, 8, seed=5, spread=2.5)  # overlapping classes: the votes are not all unanimous
    return write_store(folder / "s.h5", ids, labels, {"fc7": features}, splits=splits), ids, labels, splits, features


@pytest.mark.parametrize("k, T", [(5, 0.07), (20, 0.07), (200, 0.5)])
def test_a_run_equals_the_independent_rule(store, tmp_path, k, T):
    """Predictions and probabilities of a classify run (normalize none: the raw rows) equal DINO's rule."""
    path, ids, labels, splits, features = store
    run = run_classification(config_for(tmp_path, [path], models="knn", normalize="none",
                                        params={"k": k, "temperature": T}))
    train = np.array([s == "train" for s in splits])
    expected = dino_knn(features[train], labels[train], features[~train], min(k, train.sum()), T, 3)
    got = pd.read_csv(run.results[0].predictions)
    assert list(got["id"]) == [i for i, s in zip(ids, splits) if s == "val"]
    np.testing.assert_allclose(got[["proba_a", "proba_b", "proba_c"]].to_numpy(), expected, rtol=1e-5, atol=1e-9)
    assert list(got["predicted"]) == list(np.array(["a", "b", "c"])[expected.argmax(axis=1)])
    assert 0.5 < run.results[0].accuracy < 1  # learnable, not trivially
    result = json.loads(run.results_json.read_text())["results"][0]
    assert (result["solver"], result["params"]) == ("KNNVote", {"k": k, "temperature": T})


def test_the_running_top_k_over_blocks_is_the_full_top_k():
    rng = np.random.default_rng(0)
    queries, train = rng.standard_normal((7, 5)).astype(np.float32), rng.standard_normal((103, 5)).astype(np.float32)
    full = queries @ train.T
    for block in (1, 10, 64, 1000):
        sims, rows = top_k_numpy(queries, train, 9, block_rows=block)
        expected = np.sort(np.argsort(-full, axis=1)[:, :9], axis=1)
        np.testing.assert_array_equal(np.sort(rows, axis=1), expected)
        np.testing.assert_allclose(sims, np.take_along_axis(full, rows, axis=1), rtol=1e-6)


def test_a_small_temperature_does_not_overflow():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((30, 4)), np.arange(30) % 3
    proba = KNNVote(k=10, temperature=1e-4).fit(X, y).predict_proba(X)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(proba.argmax(axis=1), y)  # its own row is the nearest, and dominates


def test_fit_leaves_its_input_alone_unless_told():
    X = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    before = X.copy()
    KNNVote(k=2).fit(X, [0, 1, 0, 1])
    np.testing.assert_array_equal(X, before)
    model = KNNVote(k=2, copy=False).fit(X, [0, 1, 0, 1])
    assert model.train_ is X  # the run's own matrix, normalised in place: no second copy
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, rtol=1e-6)


def test_the_artifact_holds_arrays_and_reloads_exactly(store, tmp_path):
    path, *_ = store
    run = run_classification(config_for(tmp_path, [path], models="knn", params={"k": 7}))
    artifact = run.results[0].artifact
    with zipfile.ZipFile(artifact) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "pipeline.skops"]
        with zipfile.ZipFile(archive.open("pipeline.skops")) as inner:
            members = inner.namelist()
    assert any(name.endswith(".npy") for name in members)  # the training matrix: numpy's format, not a pickle
    loaded = load_classifier(artifact)
    knn = loaded.pipeline.named_steps["clf"]
    assert type(knn) is KNNVote and knn.k == 7
    frame = pd.read_csv(run.results[0].predictions)
    from featx.classification import join_features

    joined = join_features([str(path)])
    rows = np.searchsorted(joined.ids, frame["id"].to_numpy())
    np.testing.assert_array_equal(loaded.predict_proba(joined.X[rows]),
                                  frame[["proba_a", "proba_b", "proba_c"]].to_numpy())


def test_parameters_are_checked_before_any_work():
    with pytest.raises(ConfigError, match=r"the 'k' parameter of knn must be an int in the range \[1, inf\)"):
        ClassifyConfig(features="x.h5", models="knn", params={"k": "0"})
    with pytest.raises(ConfigError, match=r"the 'temperature' parameter of knn must be a float in the range"):
        ClassifyConfig(features="x.h5", models="knn", params={"temperature": "-1"})
    assert ClassifyConfig(features="x.h5", models="knn").model_params["knn"] == {"k": 20, "temperature": 0.07}
    assert FAMILIES["knn"].grid({}) == {"k": [10, 20, 100, 200]}


def test_cli_options(store, tmp_path, run_cli):
    path, *_ = store
    code, out, err = run_cli("classify", "--features", str(path), "--model", "knn", "--k", "3", "--temperature",
                             "0.1", "--out", str(tmp_path / "run"), "--no-plots")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "results.json").read_text())["results"][0]
    assert result["params"] == {"k": 3, "temperature": 0.1}


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    logging.getLogger("featx").handlers.clear()


def test_predict_replays_the_extraction_and_the_vote(tmp_path, hymenoptera):
    """knn through `predict`: real JPEGs, a seeded ResNet-18, the reloaded classifier's predictions are the run's."""
    from featx.extraction import ExtractConfig, extract_features
    from featx.prediction import predict_images

    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (data / split / cls).mkdir(parents=True)
            for src in sorted((hymenoptera / split / cls).glob("*.jpg"))[:3]:
                shutil.copy(src, data / split / cls / src.name)
    store = tmp_path / "r18.h5"
    extract_features(ExtractConfig.from_options(data=data, model="resnet18", weights="none", out=store,
                                                image_size=64, workers=0, progress=False))
    run = run_classification(config_for(tmp_path, [store], models="knn", params={"k": 3}))
    result = predict_images(run.results[0].artifact, [data / "val"], workers=0, progress=False)
    expected = pd.read_csv(run.results[0].predictions)
    assert list("val/" + result.predictions["id"]) == list(expected["id"])
    assert list(result.predictions["predicted"]) == list(expected["predicted"])
    proba = ["proba_ants", "proba_bees"]
    np.testing.assert_allclose(result.predictions[proba].to_numpy(), expected[proba].to_numpy(), atol=1e-6)


def test_the_torch_kernel_is_the_numpy_one():
    """The GPU path's code, run on torch's CPU kernels: the same neighbours, blocks moved or the matrix there whole."""
    from featx.classification._torch_linear import knn_device_matrix, knn_top_k

    rng = np.random.default_rng(2)
    queries, train = rng.standard_normal((9, 6)).astype(np.float32), rng.standard_normal((70, 6)).astype(np.float32)
    sims, rows = top_k_numpy(queries, train, 5, block_rows=16)
    for matrix in (train, knn_device_matrix(train, "cpu")):
        got_sims, got_rows = knn_top_k(queries, matrix, 5, "cpu", 16)
        np.testing.assert_array_equal(np.sort(got_rows, axis=1), np.sort(rows, axis=1))
        np.testing.assert_allclose(np.sort(got_sims, axis=1), np.sort(sims, axis=1), rtol=1e-6)


def test_a_cuda_knn_predicts_on_the_cpu_where_there_is_no_gpu(monkeypatch):
    from featx import devices

    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((40, 4)), np.arange(40) % 2
    np.testing.assert_array_equal(KNNVote(k=5, device="cuda").fit(X, y).predict_proba(X),
                                  KNNVote(k=5).fit(X, y).predict_proba(X))
