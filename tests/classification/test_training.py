"""run_classification: every family fitted and evaluated, parameters and search, the run folder."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from classify_data import FAMILIES, config_for, write_two_stores
from stores import blobs, dataset, write_store
from featx.classification import ClassifyConfig, format_results, join_features, load_classifier, run_classification


@pytest.fixture
def two_stores(tmp_path):
    """The two stores of :func:`classify_data.write_two_stores`."""
    return write_two_stores(tmp_path)


def test_every_classifier_reports_the_accuracy_of_its_predictions_file(tmp_path, two_stores):
    alexnet, resnet = two_stores
    run = run_classification(
        config_for(tmp_path, [f"{alexnet}:fc7", resnet], models=FAMILIES, plots=True, params={"max_iter": 2000})
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


def test_search_records_the_grid_and_the_best_parameters(tmp_path, two_stores):
    _, resnet = two_stores
    run = run_classification(config_for(tmp_path, [resnet], models=("logreg",), search=True))
    result = run.results[0]
    assert result.searched["grid"] == {"C": [0.001, 0.01, 0.1, 1.0, 10.0]}
    assert result.params["C"] == result.searched["best_params"]["C"]
    clf = load_classifier(result.artifact)
    assert clf.pipeline.named_steps["clf"].C == result.params["C"]
    assert clf.manifest["classifier"]["params"]["C"] == result.params["C"]


def test_parameters_reach_the_estimators(tmp_path, two_stores):
    _, resnet = two_stores
    run = run_classification(
        config_for(tmp_path, [resnet], models=("svm", "mlp"), params={"C": "0.5", "kernel": "rbf", "hidden": "8,4"})
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
        "classifier-bayes.zip", "predictions-bayes.csv", "report.html", "results.json",
    ]


def test_missing_ids_are_reported_and_listed(tmp_path, two_stores):
    alexnet, _ = two_stores
    ids, labels, splits = dataset()
    partial = write_store(tmp_path / "partial.h5", ids[2:], labels[2:], {"f": blobs(labels[2:], 3, 0)}, splits=splits[2:])
    run = run_classification(config_for(tmp_path, [f"{alexnet}:fc7", partial], models=("bayes",)))
    assert run.missing_ids == {f"{partial}:f": ids[:2]}
    listed = pd.read_csv(run.out_dir / "missing-ids.csv")
    assert list(listed["id"]) == ids[:2]
    assert "left out: 2 id(s) missing from an input (listed in missing-ids.csv)" in format_results(run)
