"""The pipeline of every classifier: per-block normalisation and PCA, fitted on training rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from classify_data import config_for, write_two_stores
from featx.classification import join_features, load_classifier, run_classification


@pytest.fixture
def two_stores(tmp_path):
    """The two stores of :func:`classify_data.write_two_stores`."""
    return write_two_stores(tmp_path)


def test_block_normalisation_and_pca_are_fitted_on_training_rows(tmp_path, two_stores):
    alexnet, resnet = two_stores
    run = run_classification(config_for(tmp_path, [f"{alexnet}:fc7", resnet], models=("logreg",), pca=5))
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
    run = run_classification(config_for(tmp_path, [f"{alexnet}:fc7", resnet], models=("bayes",), normalize="l2"))
    blocks = load_classifier(run.results[0].artifact).pipeline.named_steps["blocks"]
    out = blocks.transform(join_features([f"{alexnet}:fc7", resnet]).X)
    np.testing.assert_allclose(np.linalg.norm(out[:, :6], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, 6:], axis=1), 1, rtol=1e-5)
