"""classify: the join on sample id, evaluation, metrics and run folders, bad input.

Stores are written directly (tests/stores.py) so that their rows,
labels and features are known exactly.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from stores import blobs, dataset, write_store
from featx.classification import load_classifier
from featx.classification import ClassifyConfig, format_results, run_classification
from featx.errors import ClassifyError, StoreError
from featx.classification import join_features, parse_feature_spec

FAMILIES = ("svm", "logreg", "bayes", "xgboost", "mlp")


@pytest.fixture
def two_stores(tmp_path):
    """An 'alexnet' store (layers fc7, conv5) and a 'resnet' store (penultimate), rows in sorted order."""
    ids, labels, splits = dataset()
    alexnet = write_store(
        tmp_path / "alexnet.h5", ids, labels,
        {"fc7": blobs(labels, 6, seed=1), "conv5": blobs(labels, 3, seed=2)}, splits=splits, model="alexnet",
    )
    resnet = write_store(tmp_path / "resnet.h5", ids, labels, {"penultimate": blobs(labels, 4, seed=3)}, splits=splits)
    return alexnet, resnet


def _config(tmp_path, features, **kwargs) -> ClassifyConfig:
    kwargs.setdefault("out", tmp_path / "run")
    kwargs.setdefault("plots", False)
    return ClassifyConfig(features=tuple(str(f) for f in features), **kwargs)


# --------------------------------------------------------------------------- the join


def test_join_is_by_sample_id_not_row_position(tmp_path, two_stores):
    alexnet, resnet = two_stores
    reference = join_features([f"{alexnet}:fc7", f"{resnet}"])
    assert reference.X.shape == (36, 10)
    assert reference.missing == {}

    # The same data with rows shuffled, and 5 rows dropped from one store, 3 others from the other.
    with_alexnet = join_features([f"{alexnet}:fc7"])
    with_resnet = join_features([f"{resnet}"])
    rng = np.random.default_rng(7)
    order_a = rng.permutation(36)[:-5]
    order_r = rng.permutation(36)[:-3]
    ids = np.asarray(reference.ids)
    shuffled_a = write_store(
        tmp_path / "a-shuffled.h5", list(ids[order_a]), with_alexnet.labels[order_a],
        {"fc7": with_alexnet.X[order_a]}, splits=list(with_alexnet.splits[order_a]),
    )
    shuffled_r = write_store(
        tmp_path / "r-shuffled.h5", list(ids[order_r]), with_resnet.labels[order_r],
        {"penultimate": with_resnet.X[order_r]}, splits=list(with_resnet.splits[order_r]),
    )
    joined = join_features([f"{shuffled_a}:fc7", f"{shuffled_r}:penultimate"])

    common = sorted(set(ids[order_a]) & set(ids[order_r]))
    assert list(joined.ids) == common
    rows = np.searchsorted(ids, common)
    np.testing.assert_array_equal(joined.X, reference.X[rows])
    np.testing.assert_array_equal(joined.labels, reference.labels[rows])
    assert list(joined.splits) == list(reference.splits[rows])
    assert joined.missing == {
        f"{shuffled_a}:fc7": sorted(set(ids[order_r]) - set(ids[order_a])),
        f"{shuffled_r}:penultimate": sorted(set(ids[order_a]) - set(ids[order_r])),
    }
    assert [(b.layer, b.start, b.dim) for b in joined.blocks] == [("fc7", 0, 6), ("penultimate", 6, 4)]


def test_joined_classifier_sees_the_same_matrix_when_rows_are_shuffled(tmp_path, two_stores):
    alexnet, resnet = two_stores
    joined = join_features([f"{alexnet}:fc7", f"{resnet}"])
    order = np.random.default_rng(0).permutation(len(joined.ids))
    shuffled = write_store(
        tmp_path / "shuffled.h5", list(joined.ids[order]), joined.labels[order],
        {"penultimate": joined.X[order, 6:]}, splits=list(joined.splits[order]),
    )
    first = run_classification(_config(tmp_path, [f"{alexnet}:fc7", resnet], models=("logreg",), out=tmp_path / "r1"))
    second = run_classification(_config(tmp_path, [f"{alexnet}:fc7", shuffled], models=("logreg",), out=tmp_path / "r2"))
    a = pd.read_csv(first.results[0].predictions)
    b = pd.read_csv(second.results[0].predictions)
    pd.testing.assert_frame_equal(a, b)


def test_feature_spec_parsing(tmp_path):
    assert parse_feature_spec("features/x.h5:fc7") == (tmp_path.__class__("features/x.h5"), "fc7")
    assert parse_feature_spec("features/x.h5") == (tmp_path.__class__("features/x.h5"), None)
    odd = tmp_path / "a:b.h5"
    odd.touch()
    assert parse_feature_spec(str(odd)) == (odd, None)


def test_a_store_with_several_layers_needs_one_named(two_stores):
    alexnet, _ = two_stores
    with pytest.raises(StoreError, match=re.escape(
        f"store '{alexnet}' holds several layers (conv5, fc7): name one, e.g. --features {alexnet}:fc7"
    )):
        join_features([str(alexnet)])
    with pytest.raises(StoreError, match=re.escape(
        f"layer 'fc8' is not in store '{alexnet}'; it holds conv5, fc7: use --features {alexnet}:NAME"
    )):
        join_features([f"{alexnet}:fc8"])


def test_stores_of_different_datasets_share_no_id(tmp_path, two_stores):
    _, resnet = two_stores
    labels = np.array([0, 0, 1, 1])
    other = write_store(
        tmp_path / "other.h5", ["x/0.png", "x/1.png", "y/0.png", "y/1.png"], labels,
        {"penultimate": blobs(labels, 4, seed=0)}, classes=("x", "y"), data_root="/data/other",
    )
    message = (
        f"the feature inputs share no sample id, so they cannot be joined: '{resnet}' has 36 ids "
        f"(e.g. 'train/a/001.jpg') from /data/test; '{other}' has 4 ids (e.g. 'x/0.png') from /data/other; "
        "join stores extracted from the same data folder"
    )
    with pytest.raises(ClassifyError, match=re.escape(message)):
        run_classification(_config(tmp_path, [resnet, other]))


def test_stores_that_disagree_on_labels(tmp_path, two_stores):
    _, resnet = two_stores
    ids, labels, splits = dataset()
    relabelled = labels.copy()
    relabelled[[0, 5]] = (labels[[0, 5]] + 1) % 3
    other = write_store(tmp_path / "other.h5", ids, relabelled, {"f": blobs(labels, 2, seed=0)}, splits=splits)
    with pytest.raises(ClassifyError, match=re.escape(
        f"'{resnet}:penultimate' and '{other}:f' disagree on the class of 2 sample(s) "
        f"(e.g. '{ids[0]}', '{ids[5]}'); join stores extracted from the same labelled data folder"
    )):
        join_features([resnet, other])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_are_refused(tmp_path, bad):
    ids, labels, splits = dataset()
    values = blobs(labels, 4, seed=0)
    values[[3, 9], 1] = bad
    store = write_store(tmp_path / "nan.h5", ids, labels, {"fc7": values}, splits=splits)
    message = (
        f"store '{store}' layer 'fc7' holds NaN or infinite features in 2 of 36 rows "
        f"(e.g. '{ids[3]}', '{ids[9]}'); re-extract it with --precision fp32 --dtype float32 --overwrite, "
        "or use another layer"
    )
    with pytest.raises(ClassifyError, match=re.escape(message)):
        run_classification(_config(tmp_path, [store]))


# --------------------------------------------------------------------------- results


def test_every_classifier_reports_the_accuracy_of_its_predictions_file(tmp_path, two_stores):
    alexnet, resnet = two_stores
    run = run_classification(
        _config(tmp_path, [f"{alexnet}:fc7", resnet], models=FAMILIES, plots=True, params={"max_iter": 2000})
    )
    assert [r.name for r in run.results] == list(FAMILIES)
    joined = join_features([f"{alexnet}:fc7", resnet])
    val = np.flatnonzero(joined.splits == "val")
    for result in run.results:
        frame = pd.read_csv(result.predictions)
        assert list(frame["id"]) == list(joined.ids[val])  # evaluated on the stored val split, in id order
        assert list(frame["true"]) == [joined.classes[k] for k in joined.labels[val]]
        assert result.accuracy == accuracy_score(frame["true"], frame["predicted"])
        assert result.balanced_accuracy == balanced_accuracy_score(frame["true"], frame["predicted"])
        assert result.macro_f1 == pytest.approx(f1_score(frame["true"], frame["predicted"], average="macro"))
        assert result.accuracy > 0.6, result.name  # blobs are learnable: 3 classes, chance is 0.33
        assert (result.n_train, result.n_test) == (24, 12)
        assert result.confusion.stat().st_size > 0 and result.confusion.read_bytes()[:4] == b"\x89PNG"
        proba = [c for c in frame.columns if c.startswith("proba_")]
        assert proba == ([] if result.name == "svm" else ["proba_a", "proba_b", "proba_c"])

        # The saved classifier, reloaded, gives exactly these predictions.
        clf = load_classifier(result.artifact)
        np.testing.assert_array_equal(np.array(clf.classes)[clf.predict(joined.X[val])], frame["predicted"])
        if proba:
            np.testing.assert_array_equal(clf.predict_proba(joined.X[val]), frame[proba].to_numpy())

    saved = json.loads(run.results_json.read_text())
    assert [r["name"] for r in saved["results"]] == list(FAMILIES)
    assert [r["accuracy"] for r in saved["results"]] == [r.accuracy for r in run.results]
    assert saved["classes"] == ["a", "b", "c"]
    assert saved["evaluation"]["mode"] == "split"
    assert [i["spec"] for i in saved["inputs"]] == [f"{alexnet}:fc7", f"{resnet}:penultimate"]
    assert saved["results"][0]["per_class"]["a"]["support"] == 4
    assert saved["best"] == run.best.name


def test_format_results_prints_one_row_per_classifier(tmp_path, two_stores):
    alexnet, resnet = two_stores
    run = run_classification(_config(tmp_path, [f"{alexnet}:fc7", resnet], models=("logreg", "bayes")))
    text = format_results(run)
    lines = text.splitlines()
    assert lines[0] == f"features: {alexnet}:fc7 (6) + {resnet}:penultimate (4) = 10 columns; --normalize standard per input"
    assert lines[2] == "evaluation: stored split: train on train (24), evaluate on val (12)"
    header = lines.index("classifier  accuracy  balanced acc  macro F1  fit s  predict s")
    for line, result in zip(lines[header + 2 : header + 4], run.results):
        assert line.split()[0] == result.name
        assert line.split()[-5] == f"{result.accuracy:.3f}"
    assert f"run folder: {run.out_dir}" in text


def test_cross_validation_predicts_every_labelled_sample_once(tmp_path, two_stores):
    _, resnet = two_stores
    run = run_classification(_config(tmp_path, [resnet], models=("logreg",), cv=4))
    result = run.results[0]
    frame = pd.read_csv(result.predictions)
    assert len(frame) == 36 and frame["id"].is_unique
    assert sorted(frame["fold"].value_counts()) == [9, 9, 9, 9]
    assert result.accuracy == accuracy_score(frame["true"], frame["predicted"])
    assert len(result.fold_accuracies) == 4
    assert result.accuracy == pytest.approx(np.mean(result.fold_accuracies))  # equal-sized folds
    assert "the stored split is not used with --cv" in run.evaluation.description
    # The saved classifier is refitted on every labelled sample.
    assert load_classifier(result.artifact).manifest["trained_on"]["rows"] == 36


def test_holdout_is_stratified_and_seeded(tmp_path):
    ids, labels, _ = dataset(n_per_class=10, split=False)
    store = write_store(tmp_path / "flat.h5", ids, labels, {"f": blobs(labels, 4, seed=0)})
    runs = [
        run_classification(_config(tmp_path, [store], models=("bayes",), test_size=0.3, seed=s, out=tmp_path / f"r{k}"))
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
    run = run_classification(_config(tmp_path, [store], models=("bayes",)))
    frame = pd.read_csv(run.results[0].predictions)
    assert set(frame["split"]) == {"test"}
    assert len(frame) == splits.count("test")
    assert run.evaluation.description == (
        f"stored split: train on train (24), evaluate on test ({splits.count('test')}); "
        f"{splits.count('val')} labelled samples of other splits unused"
    )


def test_block_normalisation_and_pca_are_fitted_on_training_rows(tmp_path, two_stores):
    alexnet, resnet = two_stores
    run = run_classification(_config(tmp_path, [f"{alexnet}:fc7", resnet], models=("logreg",), pca=5))
    pipeline = load_classifier(run.results[0].artifact).pipeline
    joined = join_features([f"{alexnet}:fc7", resnet])
    train = joined.X[joined.splits == "train"]
    scalers = [pipeline.named_steps["blocks"].named_transformers_[f"block{i}"] for i in (0, 1)]
    np.testing.assert_allclose(scalers[0].mean_, train[:, :6].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(scalers[1].mean_, train[:, 6:].mean(axis=0), rtol=1e-5)
    standardised = np.hstack([StandardScaler().fit_transform(train[:, :6]), StandardScaler().fit_transform(train[:, 6:])])
    direct = PCA(n_components=5, random_state=0).fit(standardised)
    np.testing.assert_allclose(pipeline.named_steps["pca"].explained_variance_, direct.explained_variance_, rtol=1e-4)


def test_l2_normalisation_is_per_block(tmp_path, two_stores):
    alexnet, resnet = two_stores
    run = run_classification(_config(tmp_path, [f"{alexnet}:fc7", resnet], models=("bayes",), normalize="l2"))
    blocks = load_classifier(run.results[0].artifact).pipeline.named_steps["blocks"]
    out = blocks.transform(join_features([f"{alexnet}:fc7", resnet]).X)
    np.testing.assert_allclose(np.linalg.norm(out[:, :6], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, 6:], axis=1), 1, rtol=1e-5)


def test_search_records_the_grid_and_the_best_parameters(tmp_path, two_stores):
    _, resnet = two_stores
    run = run_classification(_config(tmp_path, [resnet], models=("logreg",), search=True))
    result = run.results[0]
    assert result.searched["grid"] == {"C": [0.001, 0.01, 0.1, 1.0, 10.0]}
    assert result.params["C"] == result.searched["best_params"]["C"]
    clf = load_classifier(result.artifact)
    assert clf.pipeline.named_steps["clf"].C == result.params["C"]
    assert clf.manifest["classifier"]["params"]["C"] == result.params["C"]


def test_parameters_reach_the_estimators(tmp_path, two_stores):
    _, resnet = two_stores
    run = run_classification(
        _config(tmp_path, [resnet], models=("svm", "mlp"), params={"C": "0.5", "kernel": "rbf", "hidden": "8,4"})
    )
    svm, mlp = (load_classifier(r.artifact).pipeline.named_steps["clf"] for r in run.results)
    assert (type(svm).__name__, svm.C, svm.kernel) == ("SVC", 0.5, "rbf")
    assert mlp.hidden_layer_sizes == (8, 4)


def test_default_run_folder_is_new_and_timestamped(tmp_path, two_stores):
    _, resnet = two_stores
    config = ClassifyConfig(features=(str(resnet),), models=("bayes",), runs_dir=tmp_path / "runs", plots=False)
    first, second = run_classification(config), run_classification(config)
    assert first.out_dir != second.out_dir
    assert first.out_dir.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", second.out_dir.name)
    assert sorted(p.name for p in first.out_dir.iterdir()) == [
        "classifier-bayes.zip", "predictions-bayes.csv", "results.json",
    ]


def test_missing_ids_are_reported_and_listed(tmp_path, two_stores):
    alexnet, _ = two_stores
    ids, labels, splits = dataset()
    partial = write_store(tmp_path / "partial.h5", ids[2:], labels[2:], {"f": blobs(labels[2:], 3, 0)}, splits=splits[2:])
    run = run_classification(_config(tmp_path, [f"{alexnet}:fc7", partial], models=("bayes",)))
    assert run.missing_ids == {f"{partial}:f": ids[:2]}
    listed = pd.read_csv(run.out_dir / "missing-ids.csv")
    assert list(listed["id"]) == ids[:2]
    assert "left out: 2 id(s) missing from an input (listed in missing-ids.csv)" in format_results(run)


# --------------------------------------------------------------------------- bad input


def test_an_unfinished_store(tmp_path):
    ids, labels, splits = dataset()
    store = write_store(tmp_path / "half.h5", ids, labels, {"f": blobs(labels, 2, 0)}, splits=splits, finish=False)
    with pytest.raises(StoreError, match=re.escape(
        f"store '{store}' is incomplete: its extraction stopped after 36 of 36 images; "
        "finish it by running the same extract command again"
    )):
        run_classification(_config(tmp_path, [store]))


def test_store_without_labels(tmp_path):
    ids = [f"{i}.png" for i in range(8)]
    store = write_store(tmp_path / "unlabelled.h5", ids, np.full(8, -1), {"f": np.ones((8, 2), np.float32)}, classes=())
    with pytest.raises(ClassifyError, match=re.escape(
        f"no labels: the 8 samples of '{store}' are all unlabelled (label -1, the data folder had no class "
        "subfolders); classify needs labelled images, one subfolder per class (DATA/<class>/<image>): "
        "extract from such a folder"
    )):
        run_classification(_config(tmp_path, [store]))


def test_one_class_only(tmp_path):
    ids = [f"a/{i}.png" for i in range(8)]
    store = write_store(tmp_path / "one.h5", ids, np.zeros(8), {"f": blobs(np.zeros(8, int), 2, 0)}, classes=("a",))
    with pytest.raises(ClassifyError, match=re.escape(
        "only one class ('a') among the 8 labelled samples; a classifier needs at least two: "
        "add a subfolder of images of another class and extract again"
    )):
        run_classification(_config(tmp_path, [store]))


def test_a_class_smaller_than_the_folds(tmp_path, two_stores):
    _, resnet = two_stores
    with pytest.raises(ClassifyError, match=re.escape(
        "--cv 13 needs at least 13 labelled samples of every class, but class 'a' has 12: use --cv 12 or fewer"
    )):
        run_classification(_config(tmp_path, [resnet], cv=13))


def test_a_class_with_one_sample_cannot_be_held_out(tmp_path):
    labels = np.array([0, 0, 0, 0, 1])
    ids = [f"{'ab'[k]}/{i}.png" for i, k in enumerate(labels)]
    store = write_store(tmp_path / "tiny.h5", ids, labels, {"f": blobs(labels, 2, 0)}, classes=("a", "b"))
    with pytest.raises(ClassifyError, match=re.escape(
        "class 'b' has 1 labelled sample; a stratified hold-out needs at least 2 per class: "
        "add images of it, or remove its folder"
    )):
        run_classification(_config(tmp_path, [store]))


def test_train_split_without_a_class(tmp_path):
    ids, labels, splits = dataset()
    splits = ["val" if label == 2 else s for s, label in zip(splits, labels)]
    store = write_store(tmp_path / "s.h5", ids, labels, {"f": blobs(labels, 2, 0)}, splits=splits)
    with pytest.raises(ClassifyError, match=re.escape(
        "the train split has no sample of class 'c' (present in val); a classifier cannot learn a class "
        "it never sees: add training images of it"
    )):
        run_classification(_config(tmp_path, [store]))


def test_too_many_pca_components(tmp_path, two_stores):
    alexnet, resnet = two_stores
    with pytest.raises(ClassifyError, match=re.escape(
        "--pca 11 is more components than the data allow: at most min(training rows of a fit = 24, "
        "features = 10) = 10; choose --pca 10 or fewer"
    )):
        run_classification(_config(tmp_path, [f"{alexnet}:fc7", resnet], pca=11))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ("svm", "forest")}, "unknown classifier 'forest': choose from svm, logreg, bayes, xgboost, mlp"),
        ({"models": ("sv",)}, "unknown classifier 'sv': did you mean svm? choose from"),
        ({"normalize": "minmax"}, "unknown normalisation 'minmax': choose one of standard, l2, none"),
        ({"params": {"C": "-1"}}, "the 'C' parameter of svm must be a float in the range (0, inf); got '-1' instead"),
        ({"params": {"hidden": "8,,4"}, "models": ("mlp",)}, "the 'hidden' parameter of mlp must be comma-separated"),
        ({"params": {"max_depth": 3}}, "parameter 'max_depth' is not used by svm; it applies to xgboost"),
        ({"params": {"gama": 1}}, (
            "unknown classifier parameter 'gama': did you mean gamma? choose from C, alpha, gamma, hidden, kernel, "
            "learning_rate, max_depth, max_iter, n_estimators, subsample, var_smoothing"
        )),
        ({"test_size": 1.5}, "--test-size must be a fraction between 0 and 1 (exclusive), got 1.5"),
        ({"cv": 1}, "--cv must be an integer of at least 2 folds, got 1"),
        ({"pca": 0}, "--pca must be a positive number of components, got 0"),
    ],
)
def test_bad_configuration(tmp_path, kwargs, message):
    with pytest.raises(ClassifyError, match=re.escape(message)):
        ClassifyConfig(features=("x.h5",), **kwargs)


# --------------------------------------------------------------------------- command line


def test_cli_prints_the_table_and_writes_the_run_folder(tmp_path, two_stores, run_cli):
    alexnet, resnet = two_stores
    out = tmp_path / "cli-run"
    code, stdout, stderr = run_cli(
        "classify", "--features", f"{alexnet}:fc7", "--features", resnet, "--model", "logreg,bayes",
        "--C", "0.1", "--out", out, "--no-plots",
    )
    assert code == 0, stderr
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["params"] == {"C": "0.1"}
    assert saved["results"][0]["params"]["C"] == 0.1
    for result in saved["results"]:
        row = next(line for line in stdout.splitlines() if line.split()[:1] == [result["name"]])
        assert f"{result['accuracy']:.3f}" in row
    assert "precision / recall per class:" in stdout


def test_cli_error_is_one_line(tmp_path, two_stores, run_cli):
    alexnet, _ = two_stores
    code, stdout, stderr = run_cli("classify", "--features", alexnet, "--out", tmp_path / "r")
    assert code == 2
    assert stderr == (
        f"error: store '{alexnet}' holds several layers (conv5, fc7): name one, e.g. --features {alexnet}:fc7\n"
    )
    code, _, stderr = run_cli("classify", "--features", f"{alexnet}:fc7", "--kernel", "poly")
    assert (code, stderr) == (2, "error: the 'kernel' parameter of svm must be one of 'linear', 'rbf'; got 'poly' instead\n")
