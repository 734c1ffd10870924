"""Streaming fits: a memory budget smaller than the feature matrix gives the in-memory results, block by block."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.naive_bayes import GaussianNB

from classify_data import config_for
from stores import blobs, write_store
from featx.classification import (
    FAMILIES, ClassifyConfig, build_pipeline, fit_in_place, join_features, load_classifier, run_classification,
)
from featx.errors import ClassifyError, ConfigError


def _store(folder, n_per_class=60, dim=6, seed=0):
    """A store of 3 well-separated classes, 2/3 train and 1/3 val, rows in id order."""
    rows = sorted(
        (f"{'train' if i % 3 else 'val'}/{'abc'[c]}/{i:03d}.jpg", c, "train" if i % 3 else "val")
        for c in range(3) for i in range(n_per_class)
    )
    ids, labels, splits = (list(x) for x in zip(*rows))
    labels = np.array(labels)
    return write_store(folder / "s.h5", ids, labels, {"f": blobs(labels, dim, seed=seed)}, splits=splits)


# 6 float32 columns x 4 copies = 96 bytes a row: 2,000 bytes is a block of 20 of the 180 rows.
_TINY = 2_000


def _both(tmp_path, store, models, **kwargs):
    memory = run_classification(config_for(tmp_path, [store], models=models, out=tmp_path / "mem", **kwargs))
    streamed = run_classification(
        config_for(tmp_path, [store], models=models, out=tmp_path / "stream", memory=_TINY, **kwargs)
    )
    return memory, streamed


# Boosting rounds of the xgboost tests: enough for these blobs, few enough to stay quick.
_ROUNDS = {"n_estimators": 10}


def test_streamed_naive_bayes_equals_the_in_memory_fit(tmp_path):
    store = _store(tmp_path)
    memory, streamed = _both(tmp_path, store, ("bayes",))
    assert (memory.fit.path, streamed.fit.path, streamed.fit.block_rows) == ("in-memory", "streaming", 20)
    a, b = (load_classifier(r.results[0].artifact).pipeline for r in (memory, streamed))
    # Chan et al.'s pairwise update of means and variances: equal to float32 rounding.
    for step in ("blocks",):
        sa, sb = a.named_steps[step].named_transformers_["block0"], b.named_steps[step].named_transformers_["block0"]
        np.testing.assert_allclose(sb.mean_, sa.mean_, rtol=1e-6)
        np.testing.assert_allclose(sb.var_, sa.var_, rtol=1e-5)
    np.testing.assert_allclose(b.named_steps["clf"].theta_, a.named_steps["clf"].theta_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.named_steps["clf"].var_, a.named_steps["clf"].var_, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(
        pd.read_csv(memory.results[0].predictions).drop(columns=[c for c in ["proba_a", "proba_b", "proba_c"]]),
        pd.read_csv(streamed.results[0].predictions).drop(columns=["proba_a", "proba_b", "proba_c"]),
    )


@pytest.mark.parametrize("model", ["logreg", "svm"])
def test_streamed_linear_models_reach_the_in_memory_accuracy(tmp_path, model):
    store = _store(tmp_path, dim=4, seed=3)
    memory, streamed = _both(tmp_path, store, (model,))
    # Minibatch epochs over 20-row blocks until the objective settles, against the in-memory solver
    # (lbfgs; for the svm on these 120 x 4 rows the same minibatch fit): within 0.05 on 60 evaluation rows.
    assert streamed.results[0].accuracy >= memory.results[0].accuracy - 0.05
    streamed_clf = load_classifier(streamed.results[0].artifact).pipeline.named_steps["clf"]
    assert type(streamed_clf).__name__ == "MinibatchLinearClassifier" and streamed_clf.converged_
    assert streamed.results[0].warnings == []


def test_streamed_mlp_reaches_the_in_memory_accuracy(tmp_path):
    store = _store(tmp_path, dim=4, seed=3)
    memory, streamed = _both(tmp_path, store, ("mlp",))
    # Adam over 5 shuffled passes of 20-row blocks against 200 epochs in memory: within 0.1 on 60 rows.
    assert memory.results[0].accuracy > 0.8
    assert streamed.results[0].accuracy >= memory.results[0].accuracy - 0.1


@pytest.mark.parametrize("model", ["bayes", "logreg", "svm", "xgboost", "mlp"])
def test_a_streamed_artifact_predicts_what_classify_predicted(tmp_path, model):
    store = _store(tmp_path)
    params = _ROUNDS if model == "xgboost" else {}
    run = run_classification(config_for(tmp_path, [store], models=(model,), memory=_TINY, params=params))
    saved = json.loads(run.results_json.read_text())
    assert saved["fit"]["path"] == "streaming" and saved["fit"]["block_rows"] == 20
    assert saved["fit"]["memory_budget"] == _TINY and "exceeds" in saved["fit"]["reason"]
    # xgboost's quantised 108 x 6 bytes exceed a quarter of 2,000 bytes: paged to disk.
    assert saved["results"][0]["fit_input"] == ("ExtMemQuantileDMatrix" if model == "xgboost" else "blocks")
    frame = pd.read_csv(run.results[0].predictions)
    assert run.results[0].accuracy > 0.8

    joined = join_features([store])
    val = np.flatnonzero(joined.splits == "val")
    clf = load_classifier(run.results[0].artifact)
    np.testing.assert_array_equal(np.array(clf.classes)[clf.predict(joined.X[val])], frame["predicted"])
    proba = ["proba_a", "proba_b", "proba_c"]
    if model == "svm":  # the hinge loss has no probabilities
        assert clf.predict_proba(joined.X[val]) is None and not set(proba) & set(frame.columns)
    else:
        np.testing.assert_allclose(clf.predict_proba(joined.X[val]), frame[proba], rtol=1e-6)


def test_streamed_and_in_memory_xgboost_agree(tmp_path):
    store = _store(tmp_path)
    memory, streamed = _both(tmp_path, store, ("xgboost",), params=_ROUNDS)
    assert [r.results[0].fit_input for r in (memory, streamed)] == ["QuantileDMatrix", "ExtMemQuantileDMatrix"]
    # The same quantiles and trees from the same blocks, in memory or paged to disk.
    pd.testing.assert_frame_equal(pd.read_csv(memory.results[0].predictions), pd.read_csv(streamed.results[0].predictions),
                                  atol=1e-6)


def test_a_long_boosting_run_says_where_it_is(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("featx.classification._boosting.PROGRESS_SECONDS", 0.0)  # every round counts as long
    store = _store(tmp_path)
    with caplog.at_level(logging.INFO, logger="featx"):
        run = run_classification(config_for(tmp_path, [store], models=("xgboost",), params={"n_estimators": 3}))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("xgboost: round")]
    assert [line.split(",")[0] for line in lines] == [f"xgboost: round {k} of at most 3" for k in (1, 2, 3)]
    assert all(re.search(r", held-out loss [\d.e-]+, [\d.]+ s per round, at most \d+ min left$", line) for line in lines)
    assert run.results[0].accuracy > 0.8


@pytest.mark.parametrize("model", ["logreg", "svm", "mlp"])
def test_in_memory_solvers_learn_from_the_float32_matrix_itself(tmp_path, model):
    store = _store(tmp_path)
    joined = join_features([store])
    train = np.flatnonzero(joined.splits == "train")
    X = joined.X[train].copy()
    raw = X.copy()
    pipeline = build_pipeline(joined.blocks, "standard", None, FAMILIES[model].build(
        ClassifyConfig(features="x.h5", models=model).model_params[model], 0))
    seen = []
    clf = pipeline.named_steps["clf"]
    fit = clf.fit

    def spy(data, y):
        seen.append(data)
        return fit(data, y)

    clf.fit = spy
    fit_in_place(pipeline, X, joined.labels[train], block_rows=7)
    # Normalised in place (7-row blocks) and handed over as is: no copy, no float64 conversion.
    assert seen[0] is X and X.dtype == np.float32
    np.testing.assert_allclose(X, pipeline.named_steps["blocks"].transform(raw), rtol=1e-5, atol=1e-6)
    weights = clf.coefs_[0] if model == "mlp" else clf.coef_
    assert weights.dtype == np.float32


def test_in_memory_naive_bayes_by_blocks_equals_its_fit(tmp_path):
    store = _store(tmp_path)
    run = run_classification(config_for(tmp_path, [store], models=("bayes",)))
    fitted = load_classifier(run.results[0].artifact).pipeline
    joined = join_features([store])
    train = np.flatnonzero(joined.splits == "train")
    X = fitted.named_steps["blocks"].transform(joined.X[train])
    reference = GaussianNB().fit(X, joined.labels[train])
    # partial_fit block by block (no np.var copy of X), then fit()'s smoothing from the law of total variance.
    nb = fitted.named_steps["clf"]
    assert nb.theta_.dtype == np.float32
    np.testing.assert_allclose(nb.theta_, reference.theta_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nb.var_, reference.var_, rtol=1e-5)
    assert nb.epsilon_ == pytest.approx(reference.epsilon_, rel=1e-5)


def test_a_budget_too_small_for_one_block(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(ClassifyError, match=re.escape(
        "the memory budget (500 bytes) is too small for one block of 8 rows x 6 features, which needs 768 bytes; "
        "pass memory=768 or more"
    )):
        run_classification(config_for(tmp_path, [store], models=("bayes",), memory=500))


def test_nan_rows_are_refused_when_streaming(tmp_path):
    rows = [f"a/{i:03d}.jpg" for i in range(30)] + [f"b/{i:03d}.jpg" for i in range(30)]
    labels = np.array([0] * 30 + [1] * 30)
    values = blobs(labels, 6, seed=0)
    values[[4, 40], 2] = np.nan
    store = write_store(tmp_path / "nan.h5", rows, labels, {"f": values}, classes=("a", "b"))
    with pytest.raises(ClassifyError, match=re.escape(
        f"store '{store}' layer 'f' holds NaN or infinite features in 2 of 60 rows (e.g. '{rows[4]}', '{rows[40]}')"
    )):
        run_classification(config_for(tmp_path, [store], models=("bayes",), memory=_TINY))


def test_memory_text_is_parsed_or_refused():
    assert ClassifyConfig(features="x.h5", memory="512M").memory == 512 * 2**20
    assert ClassifyConfig(features="x.h5", memory="512M").resolve().memory == 512 * 2**20
    assert ClassifyConfig(features="x.h5").memory is None
    assert ClassifyConfig(features="x.h5").resolve().memory > 0  # the RAM available
    with pytest.raises(ConfigError, match=re.escape(
        "memory must be a number of bytes, optionally with a unit K, M, G or T (e.g. 512M, 4G); got 'lots'"
    )):
        ClassifyConfig(features="x.h5", memory="lots")


def test_what_cannot_stream_is_refused_naming_the_budget(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(ClassifyError, match=re.escape(
        "the 4.2 KiB feature matrix does not fit the 2.0 KiB memory budget, and svm, search cannot be fitted by "
        "streaming blocks; raise memory, or use svm (linear), logreg, bayes, xgboost or mlp without search and pca"
    )):
        run_classification(config_for(tmp_path, [store], models=("svm",), params={"kernel": "rbf"}, memory=_TINY,
                                      search=True))


def test_every_streamed_block_holds_every_class(tmp_path, monkeypatch):
    # 12 classes of 60 rows in id order (so grouped by class); blocks of 60 of the 480 training rows.
    rows = sorted((f"{'train' if i % 3 else 'val'}/{c:02d}/{i:03d}.jpg", c) for c in range(12) for i in range(60))
    labels = np.array([c for _, c in rows])
    store = write_store(tmp_path / "s.h5", [r for r, _ in rows], labels, {"f": blobs(labels, 6, seed=4)},
                        splits=[r.split("/")[0] for r, _ in rows], classes=tuple(f"{c:02d}" for c in range(12)))
    from featx.classification import MinibatchLinearClassifier

    seen = []
    fit = MinibatchLinearClassifier.partial_fit

    def spy(self, X, y, classes=None):
        seen.append(np.unique(y))
        return fit(self, X, y, classes=classes)

    monkeypatch.setattr(MinibatchLinearClassifier, "partial_fit", spy)
    run = run_classification(config_for(tmp_path, [store], models=("logreg",), memory=60 * 6 * 4 * 4))
    assert run.fit.block_rows == 60 and len(seen) >= 6
    # Runs of consecutive rows dealt one per block from each stretch: no class is left out of a block.
    assert all(np.array_equal(classes, np.arange(12)) for classes in seen)
    assert run.results[0].accuracy > 0.8
