"""classify --protocol linear-probe: C chosen on a validation split as an independent grid search chooses it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from classify_data import cnn_like, config_for
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, PredefinedSplit, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from stores import write_store
from featx.classification import ClassifyConfig, format_results, run_classification
import featx.classification._registry as _registry
from featx.classification._linear import MinibatchLinearClassifier
from featx.errors import ClassifyError, ConfigError

GRID = np.logspace(-6, 5, 45)


def split_store(folder, counts: dict[str, int], d: int = 24, classes: int = 3, seed: int = 0, sep: float = 0.5):
    """A store of cnn_like rows in the splits *counts*; returns it and ``{split: (X, y)}`` as drawn."""
    n = sum(counts.values())
    X, y = cnn_like(n, d, classes, seed, sep)
    split = np.repeat(list(counts), list(counts.values()))
    names = [f"c{c}" for c in range(classes)]
    rows = sorted((f"{s}/{names[c]}/{i:05d}.jpg", c, s, i) for i, (c, s) in enumerate(zip(y, split)))
    order = np.array([r[3] for r in rows])
    store = write_store(folder / "s.h5", [r[0] for r in rows], y[order], {"f": X[order]},
                        splits=[r[2] for r in rows], classes=tuple(names))
    # Rows in the store's (id) order, which is the order classify's join gives them.
    parts = {s: (X[order][split[order] == s], y[order][split[order] == s]) for s in counts}
    return store, parts


def grid_search(X_fit, y_fit, X_val, y_val):
    """scikit-learn's own choice: a grid search over C with the validation rows as its one test fold."""
    X = np.concatenate([X_fit, X_val])
    y = np.concatenate([y_fit, y_val])
    fold = PredefinedSplit(np.r_[np.full(len(y_fit), -1), np.zeros(len(y_val))])
    pipeline = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1_000))])
    return GridSearchCV(pipeline, {"clf__C": GRID}, cv=fold, refit=False).fit(X, y)


def test_the_chosen_c_is_an_independent_grid_search_s_on_a_carved_validation_split(tmp_path):
    store, parts = split_store(tmp_path, {"train": 240, "val": 150})
    run = run_classification(config_for(tmp_path, [store], models="logreg", protocol="linear-probe"))
    X_train, y_train = parts["train"]
    # The validation rows: a stratified 20% of the training rows drawn with the run's seed (0).
    fit_rows, val_rows = train_test_split(np.arange(240), test_size=0.2, stratify=y_train, random_state=0)
    fit_rows, val_rows = np.sort(fit_rows), np.sort(val_rows)
    search = grid_search(X_train[fit_rows], y_train[fit_rows], X_train[val_rows], y_train[val_rows])
    result = run.results[0]
    summary = result.protocol
    assert summary["chosen"] == search.best_params_["clf__C"]
    assert [p["C"] for p in summary["curve"]] == list(GRID)
    # The curve point by point; at the smallest C the three class scores nearly tie, and lbfgs's last digits
    # (float32 products in another order) may flip one of the 48 validation rows.
    differ = np.abs(np.array([p["accuracy"] for p in summary["curve"]]) - search.cv_results_["mean_test_score"])
    assert np.count_nonzero(differ) <= 2 and differ.max() <= 1 / 48 + 1e-12
    assert 0.5 < summary["validation_accuracy"] < 1 and summary["validation_rows"] == 48
    assert (summary["refit_rows"], summary["solver"], summary["warm_start"]) == (240, "lbfgs", False)
    # The refit: all 240 training rows with the chosen C, evaluated on val: top-1 and mean per-class accuracy.
    scaler = StandardScaler().fit(X_train)
    refit = LogisticRegression(C=summary["chosen"], max_iter=1_000).fit(scaler.transform(X_train), y_train)
    expected = refit.predict(scaler.transform(parts["val"][0]))
    got = pd.read_csv(result.predictions)["predicted"].map(lambda name: int(name[1:])).to_numpy()
    np.testing.assert_array_equal(got, expected)
    assert result.accuracy == np.mean(expected == parts["val"][1])
    assert result.params["C"] == summary["chosen"]
    saved = json.loads(run.results_json.read_text())
    assert saved["config"]["protocol"] == "linear-probe"
    assert saved["results"][0]["protocol"]["curve"] == summary["curve"]
    assert "balanced_accuracy" in saved["results"][0]["protocol"]["curve"][0]
    text = format_results(run)
    assert f"logreg: linear-probe protocol: C = {summary['chosen']:.3g} chosen on a stratified 20% of the training " \
           "rows (48 rows, seed 0); refitted on all 240 training rows" in text
    assert len([line for line in text.splitlines() if line.startswith("  1")]) >= 1
    assert "validation curve (C, accuracy):" in text


def test_the_stored_val_split_validates_when_the_evaluation_is_on_test(tmp_path):
    store, parts = split_store(tmp_path, {"test": 60, "train": 90, "val": 45}, seed=2)
    run = run_classification(config_for(tmp_path, [store], models="logreg", protocol="linear-probe"))
    search = grid_search(*parts["train"], *parts["val"])
    summary = run.results[0].protocol
    assert summary["chosen"] == search.best_params_["clf__C"]
    assert summary["validation"] == "the stored val split (45 rows); refitted on train + val (135 rows)"
    # Refitted on train + val, evaluated on test.
    X = np.concatenate([parts["train"][0], parts["val"][0]])
    y = np.concatenate([parts["train"][1], parts["val"][1]])
    scaler = StandardScaler().fit(X)
    refit = LogisticRegression(C=summary["chosen"], max_iter=1_000).fit(scaler.transform(X), y)
    assert run.results[0].accuracy == refit.score(scaler.transform(parts["test"][0]), parts["test"][1])
    assert run.results[0].n_test == 60


def test_with_cv_each_fold_carves_its_own(tmp_path):
    store, _ = split_store(tmp_path, {"": 90})
    run = run_classification(config_for(tmp_path, [store], models="logreg,bayes", protocol="linear-probe", cv=2))
    logreg, bayes = run.results
    assert logreg.protocol["validation_rows"] == 18 and logreg.protocol["refit_rows"] == 90  # the saved model's
    assert bayes.protocol is None and bayes.method == ""


def test_the_minibatch_model_walks_the_grid_with_warm_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(_registry, "LBFGS_MAX_VALUES", 1)  # as from 2^26 training values
    store, _ = split_store(tmp_path, {"train": 200, "val": 60})
    run = run_classification(config_for(tmp_path, [store], models="logreg", protocol="linear-probe",
                                        params={"max_iter": 50}))
    summary = run.results[0].protocol
    assert (summary["solver"], summary["warm_start"]) == ("minibatch log loss", True)
    assert len(summary["curve"]) == 45 and run.results[0].solver == "MinibatchLinearClassifier"
    assert summary["validation_accuracy"] > 0.5


def test_a_warm_start_starts_from_the_previous_coefficients():
    X, y = cnn_like(400, 16, 3, seed=1, sep=0.5)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    model = MinibatchLinearClassifier("log_loss", alpha=1e-3, random_state=0).fit(X, y)
    epochs, coef = model.n_iter_, model.coef_.copy()
    model.set_params(warm_start=True, max_iter=1)
    with pytest.warns(ConvergenceWarning):
        model.fit(X, y)
        cold = MinibatchLinearClassifier("log_loss", alpha=1e-3, random_state=0, max_iter=1).fit(X, y)
    assert epochs > 1
    # One epoch from the solution stays near it; one epoch from zero does not get there.
    assert np.linalg.norm(model.coef_ - coef) < 0.5 * np.linalg.norm(cold.coef_ - coef)


def test_what_the_protocol_refuses_before_any_work(tmp_path, run_cli):
    with pytest.raises(ConfigError, match=r"^protocol='linear-probe' fits logreg, which is not among the classifiers "
                                          r"chosen \(svm\); add it: models='svm,logreg'$"):
        ClassifyConfig(features="x.h5", models="svm", protocol="linear-probe")
    with pytest.raises(ConfigError, match=r"^protocol must be one of linear-probe; got 'probe'"):
        ClassifyConfig(features="x.h5", models="logreg", protocol="probe")
    with pytest.raises(ConfigError, match=r"both choose the regularisation; use one of them$"):
        ClassifyConfig(features="x.h5", models="logreg", protocol="linear-probe", search=True)
    store, _ = split_store(tmp_path, {"train": 60, "val": 30})
    with pytest.raises(ClassifyError, match=r"protocol='linear-probe' cannot be fitted by streaming blocks"):
        run_classification(config_for(tmp_path, [store], models="logreg", protocol="linear-probe", memory="8K"))
    # On the command line the protocol's family is the default classifier.
    code, out, err = run_cli("classify", "--features", store, "--protocol", "linear-probe", "--out",
                             tmp_path / "run", "--no-plots")
    assert code == 0, err
    assert "logreg: linear-probe protocol: C = " in out
    code, out, err = run_cli("classify", "--features", store, "--model", "svm", "--protocol", "linear-probe")
    assert (code, out) == (2, "")
    assert err == ("error: --protocol linear-probe fits logreg, which is not among the classifiers chosen (svm); "
                   "add it: --model svm,logreg\n")
