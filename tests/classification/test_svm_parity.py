"""svm means LinearSVC: within 0.5 points of scikit-learn's LinearSVC on the same standardised features.

Two shapes: fewer training rows than columns (liblinear itself runs), and more
rows than columns (the minibatch squared hinge finished by L-BFGS), in memory
and streamed from the store in blocks.  The features are CNN-like (ReLU of a
low-rank class signal plus noise), overlapping enough that the solvers'
differences would show (about 75% accuracy).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from classify_data import config_for, parity_store
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from featx.classification import run_classification
from featx.classification._linear import MinibatchLinearClassifier


def linear_svc_accuracy(X_train, y_train, X_test, y_test) -> float:
    scaler = StandardScaler().fit(X_train)
    model = LinearSVC(C=1.0, max_iter=10_000).fit(scaler.transform(X_train), y_train)
    return float(model.score(scaler.transform(X_test), y_test))


@pytest.mark.parametrize("memory", [None, "800K"], ids=["in-memory", "streamed"])
def test_more_rows_than_columns_the_minibatch_svm_reaches_linear_svc(tmp_path, memory):
    store, X_train, y_train, X_test, y_test = parity_store(tmp_path, 3_000, 2_000, 48, 5, seed=0, sep=0.4)
    expected = linear_svc_accuracy(X_train, y_train, X_test, y_test)
    run = run_classification(config_for(tmp_path, [store], models="svm", memory=memory))
    result = run.results[0]
    assert (result.solver, result.method) == ("MinibatchLinearClassifier", "minibatch squared hinge + L-BFGS")
    assert run.fit.path == ("streaming" if memory else "in-memory")
    assert 0.6 < expected < 0.9  # the classes overlap: solvers' differences would show
    assert abs(result.accuracy - expected) <= 0.005, (result.accuracy, expected)


def test_without_the_l_bfgs_finish_the_minibatch_svm_stops_short(tmp_path):
    """Why the finish is there: the minibatch fit alone stops above LinearSVC's objective."""
    _, X_train, y_train, _, _ = parity_store(tmp_path, 3_000, 10, 48, 5, seed=0, sep=0.4)
    X = StandardScaler().fit_transform(X_train).astype(np.float32)

    def objective(coef, intercept):  # LinearSVC's (its bias penalised as a weight), divided by C n
        scores = X.astype(np.float64) @ coef.T.astype(np.float64) + intercept
        target = -np.ones_like(scores)
        target[np.arange(len(y_train)), y_train] = 1
        penalty = (coef.astype(float) ** 2).sum() + (intercept.astype(float) ** 2).sum()
        return (np.maximum(0, 1 - target * scores) ** 2).sum() / len(X) + 0.5 / len(X) * penalty

    reference = LinearSVC(C=1.0, max_iter=10_000, tol=1e-6).fit(X, y_train)
    alone = MinibatchLinearClassifier(alpha=1 / len(X), max_iter=1_000, random_state=0).fit(X, y_train)
    finished = MinibatchLinearClassifier(alpha=1 / len(X), max_iter=1_000, random_state=0, polish=50).fit(X, y_train)
    best = objective(reference.coef_, reference.intercept_)
    assert objective(alone.coef_, alone.intercept_) > best * 1.002
    assert objective(finished.coef_, finished.intercept_) <= best * 1.0001
    assert finished.objective_ == pytest.approx(objective(finished.coef_, finished.intercept_), rel=1e-5)


def test_fewer_rows_than_columns_runs_linear_svc(tmp_path, run_cli):
    store, X_train, y_train, X_test, y_test = parity_store(tmp_path, 200, 400, 300, 4, seed=1, sep=0.45)
    expected = linear_svc_accuracy(X_train, y_train, X_test, y_test)
    code, out, err = run_cli("classify", "--features", str(store), "--model", "svm", "--out", str(tmp_path / "run"),
                             "--no-plots")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "results.json").read_text())["results"][0]
    assert (result["solver"], result["method"]) == ("LinearSVC", "liblinear")
    assert 0.6 < expected < 0.95
    assert abs(result["accuracy"] - expected) <= 0.005, (result["accuracy"], expected)
    assert any(line.startswith("svm (liblinear) ") for line in out.splitlines())


def test_fewer_rows_than_columns_the_minibatch_svm_reaches_linear_svc(tmp_path):
    """The wide fit a streamed run makes: the minibatch objective penalises the intercepts as liblinear does (at this
    shape that is points of accuracy), and its L-BFGS finish reaches LinearSVC's optimum."""
    from featx.classification import FAMILIES, ClassifyConfig

    _, X_train, y_train, X_test, y_test = parity_store(tmp_path, 200, 400, 300, 4, seed=1, sep=0.45)
    scaler = StandardScaler().fit(X_train)
    train, test = scaler.transform(X_train).astype(np.float32), scaler.transform(X_test).astype(np.float32)
    params = ClassifyConfig(features="x.h5", models="svm").model_params["svm"]
    model = FAMILIES["svm"].build(params, 0, rows=200, features=300, streaming=True)
    assert (type(model).__name__, model.polish) == ("MinibatchLinearClassifier", 300)
    accuracy = model.fit(train, y_train).score(test, y_test)
    assert abs(accuracy - linear_svc_accuracy(X_train, y_train, X_test, y_test)) <= 0.005
