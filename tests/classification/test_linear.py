"""The minibatch linear models (featx.classification._linear) and the matrix-product naive Bayes (._bayes)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from classify_data import config_for
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from sklearn.naive_bayes import GaussianNB
from stores import blobs, write_store

from featx.classification import (
    FAMILIES,
    ClassifyConfig,
    GaussianNaiveBayes,
    MinibatchLinearClassifier,
    load_classifier,
    run_classification,
)

HALVINGS, ANNEAL_STEPS = MinibatchLinearClassifier.HALVINGS, MinibatchLinearClassifier.ANNEAL_STEPS


def for_rows(model, C, n_rows):
    """What classify sets before a fit: alpha = 1 / (C n)."""
    model.set_params(alpha=1.0 / (C * n_rows))


def _problem(n=600, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = (rng.normal(size=(n, d)) + 1.5 * np.eye(classes, d)[y]).astype(np.float32)
    return X, y


def _objective(loss, X, y, alpha):
    """The mean-loss objective of the module docstring, on float64, as a function of the flat (W, b)."""
    X = X.astype(np.float64)
    n, d = X.shape
    k = int(y.max()) + 1

    def value(theta):
        W, b = theta[: k * d].reshape(k, d), theta[k * d :]
        S = X @ W.T + b
        if loss == "log_loss":
            data = np.mean(logsumexp(S, axis=1) - S[np.arange(n), y])
        else:
            T = -np.ones_like(S)
            T[np.arange(n), y] = 1.0
            data = np.mean(np.sum(np.maximum(0.0, 1.0 - T * S) ** 2, axis=1))
            data += 0.5 * alpha * np.sum(b * b)  # the bias penalised as liblinear's
        return data + 0.5 * alpha * np.sum(W * W)

    return value, k * d + k


@pytest.mark.parametrize("loss", ["log_loss", "squared_hinge"])
def test_the_minibatch_fit_reaches_the_optimum_of_its_objective(loss):
    X, y = _problem()
    model = MinibatchLinearClassifier(loss, random_state=0)
    for_rows(model, C=1.0, n_rows=len(y))
    assert model.alpha == pytest.approx(1 / 600)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # converges with the defaults
        model.fit(X, y)
    assert model.converged_ and model.n_iter_ < 200
    value, size = _objective(loss, X, y, model.alpha)
    exact = minimize(value, np.zeros(size), method="L-BFGS-B", options={"maxiter": 10_000, "gtol": 1e-10})
    reached = value(np.concatenate([model.coef_.ravel(), model.intercept_]).astype(np.float64))
    # Within 1% of the exact minimum (L-BFGS on the same objective), with the exact solution's predictions.
    assert reached <= exact.fun * 1.01
    W, b = exact.x[: 15].reshape(3, 5), exact.x[15:]
    assert np.mean(model.predict(X) == np.argmax(X @ W.T + b, axis=1)) >= 0.98
    assert model.coef_.dtype == np.float32 and model.coef_.shape == (3, 5)


def test_log_loss_has_softmax_probabilities_and_the_hinge_has_none():
    X, y = _problem()
    soft = MinibatchLinearClassifier("log_loss", random_state=0).fit(X, y)
    proba = soft.predict_proba(X)
    scores = soft.decision_function(X).astype(np.float64)
    np.testing.assert_allclose(proba, np.exp(scores - logsumexp(scores, axis=1, keepdims=True)), rtol=1e-6)
    np.testing.assert_array_equal(np.argmax(proba, axis=1), soft.predict(X))
    assert not hasattr(MinibatchLinearClassifier("squared_hinge").fit(X, y), "predict_proba")


def test_too_few_epochs_warn_that_the_fit_did_not_converge():
    X, y = _problem()
    with pytest.warns(ConvergenceWarning, match="stopped after max_iter=2 epochs"):
        model = MinibatchLinearClassifier("squared_hinge", max_iter=2, random_state=0).fit(X, y)
    assert (model.n_iter_, model.converged_) == (2, False)


def test_blocks_with_end_epoch_fit_what_the_matrix_does():
    X, y = _problem()
    blocked = MinibatchLinearClassifier("log_loss", batch_size=32, random_state=0)
    rng = np.random.default_rng(1)
    while True:  # 3 shuffled blocks an epoch, as stream_fit feeds them
        order = rng.permutation(len(y))
        for block in np.array_split(order, 3):
            blocked.partial_fit(X[block], y[block], classes=np.arange(3))
        if blocked.end_epoch():
            break
    whole = MinibatchLinearClassifier("log_loss", batch_size=32, random_state=0).fit(X, y)
    value, _ = _objective("log_loss", X, y, whole.alpha)
    objectives = [value(np.concatenate([m.coef_.ravel(), m.intercept_]).astype(np.float64)) for m in (blocked, whole)]
    assert objectives[0] == pytest.approx(objectives[1], rel=0.01)
    assert np.mean(blocked.predict(X) == whole.predict(X)) >= 0.98


def test_the_first_partial_fit_needs_the_classes():
    X, y = _problem()
    with pytest.raises(ValueError, match="classes must be passed on the first call to partial_fit"):
        MinibatchLinearClassifier().partial_fit(X, y)


def test_a_saved_linear_model_keeps_what_predicts_and_not_the_optimiser(tmp_path):
    rows = sorted((f"{'train' if i % 3 else 'val'}/{'abc'[c]}/{i:03d}.jpg", c) for c in range(3) for i in range(40))
    labels = np.array([c for _, c in rows])
    store = write_store(tmp_path / "s.h5", [r for r, _ in rows], labels, {"f": blobs(labels, 16, seed=2)},
                        splits=[r.split("/")[0] for r, _ in rows])
    # 80 training rows x 16 columns: more rows than columns, so the svm is the minibatch model.
    run = run_classification(config_for(tmp_path, [store], models=("svm", "logreg")))
    svm = load_classifier(next(r.artifact for r in run.results if r.name == "svm"))
    clf = svm.pipeline.named_steps["clf"]
    assert type(clf).__name__ == "MinibatchLinearClassifier" and clf.loss == "squared_hinge"
    assert not hasattr(clf, "_moments") and clf.coef_.shape == (3, 16)
    assert all(r.warnings == [] for r in run.results)


def _chosen(model, n_rows, n_features, streaming=False):
    """The estimator classify fits for *model* on *n_rows* x *n_features* training values."""
    params = ClassifyConfig(features="x.h5", models=model).model_params[model]
    return FAMILIES[model].build(params, 0, rows=n_rows, features=n_features, streaming=streaming)


def test_few_rows_and_many_columns_fit_the_svm_by_liblinear():
    wide, tall, streamed = _chosen("svm", 100, 4_608), _chosen("svm", 10_000, 512), _chosen("svm", 100, 4_608, True)
    assert type(wide).__name__ == "LinearSVC" and (wide.C, wide.dual, wide.loss) == (1.0, True, "squared_hinge")
    assert type(tall).__name__ == "MinibatchLinearClassifier" and tall.alpha == pytest.approx(1 / 10_000)
    assert tall.polish == 100 and streamed.polish == 300  # finished by L-BFGS, longer on separable wide matrices
    assert type(streamed).__name__ == "MinibatchLinearClassifier"
    # liblinear copies the matrix twice (float64, its sparse rows): from 2^26 values, the minibatch model.
    assert type(_chosen("svm", 2_048, 32_768)).__name__ == "LinearSVC"
    assert type(_chosen("svm", 2_049, 32_768)).__name__ == "MinibatchLinearClassifier"


def test_a_large_in_memory_logreg_is_the_minibatch_softmax_model():
    # 2^26 training values is where lbfgs's hundreds of passes give way to the minibatch model's few.
    small, large, wide = _chosen("logreg", 50_000, 512), _chosen("logreg", 32_768, 2_048), _chosen("logreg", 2_048, 32_768)
    assert type(small).__name__ == type(wide).__name__ == "LogisticRegression"
    assert type(large).__name__ == "MinibatchLinearClassifier" and large.loss == "log_loss"
    assert large.alpha == pytest.approx(1 / 32_768) and large.max_iter == 1_000


def test_naive_bayes_by_matrix_products_equals_the_per_class_loop():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 20, 3_000)
    X = (rng.normal(size=(3_000, 64)) + 0.3 * y[:, None] * rng.normal(size=64)).astype(np.float32)
    ours, theirs = GaussianNaiveBayes().fit(X, y), GaussianNB().fit(X, y)
    np.testing.assert_array_equal(ours.theta_, theirs.theta_)
    # The reference: scikit-learn's formula, on float64 copies of the same fitted parameters.
    X64, theta, var = X.astype(np.float64), ours.theta_.astype(np.float64), ours.var_.astype(np.float64)
    reference = np.stack([
        np.log(ours.class_prior_[c]) - 0.5 * np.sum(np.log(2 * np.pi * var[c]))
        - 0.5 * np.sum((X64 - theta[c]) ** 2 / var[c], axis=1)
        for c in range(20)
    ], axis=1)
    np.testing.assert_allclose(ours._joint_log_likelihood(X), reference, rtol=1e-10, atol=1e-8)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-4)


def test_an_epoch_of_many_minibatches_halves_the_step_whatever_the_objective_did():
    X, y = _problem(n=ANNEAL_STEPS * 8)
    model = MinibatchLinearClassifier("log_loss", batch_size=8, random_state=0)
    for_rows(model, C=1.0, n_rows=len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(X, y)
    # Every epoch is ANNEAL_STEPS minibatches: HALVINGS epochs, and near the optimum still.
    assert (model.n_iter_, model.converged_) == (HALVINGS, True)
    value, size = _objective("log_loss", X, y, model.alpha)
    exact = minimize(value, np.zeros(size), method="L-BFGS-B", options={"maxiter": 10_000, "gtol": 1e-10})
    assert value(np.concatenate([model.coef_.ravel(), model.intercept_]).astype(np.float64)) <= exact.fun * 1.02
