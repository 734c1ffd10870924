"""predict: new images through the same extraction as the training features.

Real JPEGs, a real (randomly initialised, seeded) ResNet-18 at 64x64, and
three feature inputs from two networks, so that the test covers several
extractions and the join as at training time.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from featx.classification import ClassifyConfig, run_classification
from featx.errors import ClassifyError
from featx.extraction import ExtractConfig, FeatureExtractor, extract_features
from featx.store import StoreWriter
from featx.prediction import predict_images

FAST = dict(image_size=64, workers=0, progress=False)


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    """The CLI binds its log handler to the sys.stderr of its run (a capsys stream that
    pytest closes after the test); library calls in a later test would log to it."""
    logging.getLogger("featx").handlers.clear()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hymenoptera):
    """12 real JPEGs (train/val x ants/bees), two stores, and a classify run on three inputs."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (data / split / cls).mkdir(parents=True)
            for src in sorted((hymenoptera / split / cls).glob("*.jpg"))[:3]:
                shutil.copy(src, data / split / cls / src.name)
    first = root / "resnet18-s0.h5"
    second = root / "resnet18-s1.h5"
    extract_features(ExtractConfig.from_options(data=data, model="resnet18", layers=("penultimate", "conv3"), weights="none", out=first, **FAST))
    extract_features(ExtractConfig.from_options(data=data, model="resnet18", layers=("conv4",), weights="none", seed=1, pool="max", out=second, **FAST))
    run = run_classification(
        ClassifyConfig(
            features=(f"{first}:penultimate", f"{first}:conv3", f"{second}:conv4"),
            models=("logreg", "svm"),
            out=root / "run",
            plots=False,
        )
    )
    return data, run


def _classify_predictions(run, name: str) -> pd.DataFrame:
    result = next(r for r in run.results if r.name == name)
    return pd.read_csv(result.predictions)


def test_predict_on_val_images_reproduces_the_classify_run(trained, monkeypatch, tmp_path):
    data, run = trained
    calls = []
    fit = FeatureExtractor.fit
    monkeypatch.setattr(FeatureExtractor, "fit", lambda self, *a: calls.append(self) or fit(self, *a))
    # No store and no symbolic link is written: the features stay in memory.
    monkeypatch.setattr(StoreWriter, "__init__", lambda *a, **k: pytest.fail("predict wrote a store"))
    monkeypatch.setattr(os, "symlink", lambda *a, **k: pytest.fail("predict made a symbolic link"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    artifact = next(r.artifact for r in run.results if r.name == "logreg")
    result = predict_images(artifact, [data / "val"], workers=0, progress=False)
    expected = _classify_predictions(run, "logreg")
    got = result.predictions
    assert list(got.columns) == ["id", "true", "predicted", "proba_ants", "proba_bees"]
    assert list("val/" + got["id"]) == list(expected["id"])
    assert list(got["predicted"]) == list(expected["predicted"])
    assert list(got["true"]) == list(expected["true"])
    proba = ["proba_ants", "proba_bees"]
    np.testing.assert_allclose(got[proba].to_numpy(), expected[proba].to_numpy(), rtol=0, atol=1e-6)
    assert result.accuracy == next(r.accuracy for r in run.results if r.name == "logreg")
    assert result.failed == []
    # One forward pass per network: the two inputs of the first store come from one extraction.
    # Layers are extracted by the graph node recorded at training (penultimate = flatten, conv3 = layer2).
    # The recorded preprocessing is passed on whole (ResNet-18's weights at 64 px: resize 73, crop 64).
    recipes = [c.recipe_ for c in calls]
    assert [
        (r.model, r.seed, tuple(l.node for l in r.layers), tuple(l.pool for l in r.layers),
         r.preprocessing.resize, r.preprocessing.crop)
        for r in recipes
    ] == [
        ("resnet18", 0, ("flatten", "layer2.1.relu_1"), ("none", "avg"), 73, 64),
        ("resnet18", 1, ("layer3.1.relu_1",), ("max",), 73, 64),
    ]
    assert list(tmp_path.iterdir()) == []  # nothing temporary either


def test_features_made_with_preprocessing_flags_are_predicted_with_the_same_preprocessing(trained, tmp_path):
    # A store made with --resize/--crop/--mean/--std/--interpolation: predict extracts the
    # new images with exactly that preprocessing (before, it passed only the crop size and
    # refused with a preprocessing mismatch), so it reproduces the classify run.
    data, _ = trained
    flags = dict(resize=80, crop=72, mean=(0.5,), std=(0.25,), interpolation="nearest", workers=0, progress=False)
    store = tmp_path / "flags.h5"
    extract_features(ExtractConfig.from_options(data=data, model="resnet18", layers=("penultimate",), weights="none", out=store, **flags))
    run = run_classification(
        ClassifyConfig(features=(f"{store}:penultimate",), models=("logreg",), out=tmp_path / "run", plots=False)
    )
    result = predict_images(run.results[0].artifact, [data / "val"], workers=0, progress=False)
    expected = _classify_predictions(run, "logreg")
    assert list("val/" + result.predictions["id"]) == list(expected["id"])
    assert list(result.predictions["predicted"]) == list(expected["predicted"])
    proba = ["proba_ants", "proba_bees"]
    np.testing.assert_allclose(result.predictions[proba].to_numpy(), expected[proba].to_numpy(), rtol=0, atol=1e-6)


def test_predict_loose_files_and_report_the_ones_that_fail(trained, tmp_path):
    data, run = trained
    images = sorted((data / "val").rglob("*.jpg"))[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    artifact = next(r.artifact for r in run.results if r.name == "logreg")
    result = predict_images(artifact, [*images, broken], workers=0, progress=False)
    frame = result.predictions
    assert list(frame.columns) == ["id", "predicted", "proba_ants", "proba_bees"]  # no labels for loose files
    assert list(frame["id"]) == [str(p.absolute()) for p in images]
    expected = _classify_predictions(run, "logreg").set_index("id")
    keys = ["val/" + p.relative_to(data / "val").as_posix() for p in images]
    assert list(frame["predicted"]) == list(expected.loc[keys, "predicted"])
    assert result.accuracy is None
    assert [(i, r.split(":")[0]) for i, r in result.failed] == [(str(broken.absolute()), "not an image")]

    with pytest.raises(ClassifyError, match=re.escape(
        f"none of the 1 images could be used ({broken.absolute()}: not an image: the file's content is no image "
        "format Pillow can read); pass image files"
    )):
        predict_images(artifact, [broken], workers=0, progress=False)


def test_cli_writes_the_predictions(trained, tmp_path, run_cli):
    data, run = trained
    artifact = next(r.artifact for r in run.results if r.name == "logreg")
    out = tmp_path / "p.csv"
    code, stdout, stderr = run_cli(
        "predict", "--classifier", artifact, "--data", data / "val", "--out", out, "--workers", "0", "--no-progress"
    )
    assert code == 0, stderr
    written = pd.read_csv(out)
    counts = written["predicted"].value_counts()
    accuracy = next(r.accuracy for r in run.results if r.name == "logreg")
    assert stdout.splitlines() == [
        f"6 images predicted by logreg ({artifact}): ants {counts.get('ants', 0)}, bees {counts.get('bees', 0)}",
        f"accuracy on the labelled images: {accuracy:.3f}",
        f"predictions written to {out}",
    ]
    # Without --out the CSV goes to standard output; svm has no probabilities.
    svm = next(r for r in run.results if r.name == "svm")
    code, stdout, _ = run_cli("predict", "--classifier", svm.artifact, "--data", data / "val", "--workers", "0", "--no-progress")
    assert code == 0
    printed = pd.read_csv(io.StringIO(stdout))
    expected = pd.read_csv(svm.predictions)
    assert list(printed.columns) == ["id", "true", "predicted"]
    assert list("val/" + printed["id"]) == list(expected["id"])
    assert list(printed["predicted"]) == list(expected["predicted"])


def test_features_made_with_a_weights_file_need_that_file(trained, tmp_path, run_cli, saved_weights):
    data, _ = trained
    weights = saved_weights("resnet18")
    store = tmp_path / "file.h5"
    extract_features(ExtractConfig.from_options(data=data, model="resnet18", weights_file=weights, out=store, **FAST))
    run = run_classification(ClassifyConfig(features=(str(store),), models=("bayes",), out=tmp_path / "run", plots=False))
    artifact = run.results[0].artifact
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert run.inputs[0].provenance["weights_sha256"] == sha

    code, _, stderr = run_cli("predict", "--classifier", artifact, "--data", data / "val", "--workers", "0")
    assert (code, stderr) == (
        2,
        f"error: the classifier's resnet18 features were computed with the weights file '{weights.name}' "
        f"(sha256 {sha}); pass that file with --weights-file\n",
    )

    other = tmp_path / weights.name  # same name, other content: found by content, not by name
    other.write_bytes(b"other weights")
    with pytest.raises(ClassifyError, match=re.escape(
        f"the classifier's resnet18 features were computed with the weights file '{weights.name}' (sha256 {sha}), "
        f"but none of the files given (weights_files) is that file: '{other}' has sha256 {hashlib.sha256(b'other weights').hexdigest()}; "
        "pass the file used at extraction"
    )):
        predict_images(artifact, [data / "val"], weights_files=[other], workers=0, progress=False)

    result = predict_images(artifact, [data / "val"], weights_files=[other, weights], workers=0, progress=False)
    expected = pd.read_csv(run.results[0].predictions)
    assert list("val/" + result.predictions["id"]) == list(expected["id"])
    assert list(result.predictions["predicted"]) == list(expected["predicted"])


def test_predictions_csv_quotes_ids_a_spreadsheet_would_run(trained, tmp_path, run_cli):
    data, run = trained
    # A manifest's paths are its ids: file names anyone can choose, formulas included.
    images = sorted((data / "val").rglob("*.jpg"))[:4]
    names = ["+cmd.jpg", "-2+3.jpg", "=cmd|' -C calc'!A0.jpg", "@SUM(1+1).jpg"]
    for name, src in zip(names, images):
        shutil.copy(src, tmp_path / name)
    pd.DataFrame({"path": names, "label": [p.parent.name for p in images]}).to_csv(tmp_path / "new.csv", index=False)
    artifact = next(r.artifact for r in run.results if r.name == "logreg")
    out = tmp_path / "p.csv"
    code, _, stderr = run_cli("predict", "--classifier", artifact, "--data", tmp_path / "new.csv", "--out", out,
                              "--workers", "0", "--no-progress")
    assert code == 0, stderr
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written["id"]) == ["'" + name for name in names]
    assert list(written["true"]) == [p.parent.name for p in images]
    # The API's frame keeps the ids as they are; standard output is the file's text.
    result = predict_images(artifact, [tmp_path / "new.csv"], workers=0, progress=False)
    assert list(result.predictions["id"]) == names
    code, stdout, _ = run_cli("predict", "--classifier", artifact, "--data", tmp_path / "new.csv", "--workers", "0",
                              "--no-progress")
    assert code == 0 and stdout == out.read_text()
