"""Saved classifiers: exact round trips without pickle, manifests, refused files."""

from __future__ import annotations

import json
import os
import re
import zipfile

import numpy as np
import pytest
import skops.io as sio
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from stores import blobs, dataset, write_store
from featx import __version__
from featx.classification import (
    FAMILIES,
    ClassifyConfig,
    build_pipeline,
    join_features,
    load_classifier,
    run_classification,
    save_classifier,
)
from featx.errors import ClassifyError


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A run of every family on one store; returns (run, joined features)."""
    folder = tmp_path_factory.mktemp("artifact")
    ids, labels, splits = dataset()
    store = write_store(folder / "s.h5", ids, labels, {"fc7": blobs(labels, 5, seed=4)}, splits=splits, model="alexnet")
    config = ClassifyConfig(
        features=(f"{store}:fc7",), models=("svm", "logreg", "bayes", "xgboost", "mlp"), out=folder / "run",
        plots=False, normalize="l2", pca=3, params={"max_iter": 2000},
    )
    return run_classification(config), join_features([f"{store}:fc7"])


def _rewrite(src, dst, manifest=None, drop=(), add=None):
    """Copy an artifact, replacing its manifest, dropping or adding members."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for item in old.infolist():
            if item.filename in drop:
                continue
            data = old.read(item)
            if item.filename == "manifest.json" and manifest is not None:
                data = json.dumps(manifest(json.loads(data))).encode()
            new.writestr(item, data)
        for name, data in (add or {}).items():
            new.writestr(name, data)
    return dst


def test_xgboost_is_stored_in_its_own_format_and_nothing_is_pickled(fitted):
    run, _ = fitted
    with zipfile.ZipFile(run.results[3].artifact) as archive:
        names = sorted(archive.namelist())
        assert names == ["booster.ubj", "manifest.json", "pipeline.skops"]
        for name in names:
            data = archive.read(name)
            assert b"\x80\x04\x95" not in data[:64]  # no pickle protocol-4 stream anywhere
    with zipfile.ZipFile(run.results[0].artifact) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "pipeline.skops"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_then_load_is_exact(tmp_path, fitted, family):
    """The in-memory pipeline and the reloaded one agree bit for bit, probabilities included."""
    _, joined = fitted
    params = {"max_iter": 2000} if family in ("svm", "logreg", "mlp") else {}
    config = ClassifyConfig(features="x.h5", models=family, params=params)
    estimator = FAMILIES[family].build(config.model_params[family], 0)
    pipeline = build_pipeline(joined.blocks, "standard", 2, estimator).fit(joined.X, joined.labels)
    manifest = {"classes": joined.classes, "classifier": {"family": family}}
    loaded = load_classifier(save_classifier(tmp_path / "c.zip", pipeline, manifest))
    assert loaded.family == family
    assert type(loaded.pipeline.steps[-1][1]) is type(estimator)
    np.testing.assert_array_equal(loaded.predict(joined.X), pipeline.predict(joined.X))
    assert loaded.has_proba == (family != "svm")
    if loaded.has_proba:
        np.testing.assert_array_equal(loaded.predict_proba(joined.X), pipeline.predict_proba(joined.X))


def test_manifest_records_how_the_features_were_made(fitted):
    run, joined = fitted
    manifest = load_classifier(run.results[1].artifact).manifest
    assert manifest["format"] == "featx-classifier"
    assert manifest["format_version"] == 1
    assert manifest["versions"]["featx"] == __version__
    assert manifest["classes"] == ["a", "b", "c"]
    assert (manifest["normalize"], manifest["pca"], manifest["n_features"]) == ("l2", 3, 5)
    assert manifest["classifier"]["family"] == "logreg"
    assert manifest["classifier"]["params"] == {"C": 1.0, "max_iter": 2000}
    (block,) = manifest["inputs"]
    assert (block["layer"], block["dim"], block["start"]) == ("fc7", 5, 0)
    assert block["provenance"]["model"] == "alexnet"
    assert block["provenance"]["weights"] == "none"
    assert block["provenance"]["crop"] == 64 and block["provenance"]["resize"] == 73
    assert block["provenance"]["mean"] == [0.485, 0.456, 0.406]
    assert block["layer_info"] == {"node": "fc7", "pool": "none", "requested": "fc7", "precision": "fp32", "dtype": "float32"}


def test_an_artifact_from_an_incompatible_version(tmp_path, fitted):
    run, _ = fitted

    def future(manifest):
        manifest["format_version"] = 2
        manifest["versions"]["featx"] = "9.0.0"
        return manifest

    path = _rewrite(run.results[1].artifact, tmp_path / "future.zip", manifest=future)
    with pytest.raises(ClassifyError, match=re.escape(
        f"classifier '{path}' has featx classifier format 2 (written by featx 9.0.0); this featx {__version__} "
        "reads format 1 only: re-run `featx classify` with this featx, or use featx 9.0.0 to predict"
    )):
        load_classifier(path)


def test_untrusted_types_are_refused(tmp_path, fitted):
    run, _ = fitted
    evil = sio.dumps(Pipeline([("f", FunctionTransformer(os.system))]).fit(np.zeros((2, 2))))
    path = _rewrite(run.results[1].artifact, tmp_path / "evil.zip", drop=("pipeline.skops",), add={"pipeline.skops": evil})
    with pytest.raises(ClassifyError, match=re.escape(
        f"'{path}' holds types featx does not trust (posix.system); it was not written by `featx classify`, "
        "refusing to load it"
    )):
        load_classifier(path)


def test_files_that_are_not_classifiers(tmp_path, fitted):
    run, _ = fitted
    missing = tmp_path / "nope.zip"
    with pytest.raises(ClassifyError, match="^" + re.escape(
        f"classifier not found: '{missing}' is not a file; pass a classifier-<model>.zip from a `featx classify` run "
        "folder"
    ) + "$"):
        load_classifier(missing)
    text = tmp_path / "text.zip"
    text.write_text("hello")
    with pytest.raises(ClassifyError, match=re.escape(f"'{text}' is not a featx classifier (not a zip file)")):
        load_classifier(text)
    other = _rewrite(run.results[1].artifact, tmp_path / "other.zip", manifest=lambda m: {"format": "something"})
    with pytest.raises(ClassifyError, match=re.escape(
        f"'{other}' is not a featx classifier (its manifest has no format 'featx-classifier')"
    )):
        load_classifier(other)
    partial = _rewrite(run.results[3].artifact, tmp_path / "partial.zip", drop=("booster.ubj",))
    with pytest.raises(ClassifyError, match=re.escape(
        f"'{partial}' is not a complete featx classifier: it lacks 'booster.ubj'; re-run `featx classify` to make a "
        "new one"
    )):
        load_classifier(partial)
