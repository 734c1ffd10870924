"""Stores and configurations shared by the classification tests (imported, not collected).

The stores are written directly (tests/stores.py) so that their rows, labels
and features are known exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stores import blobs, dataset, write_store
from featx.classification import ClassifyConfig

FAMILIES = ("svm", "logreg", "bayes", "xgboost", "mlp")


def write_two_stores(folder: Path) -> tuple[Path, Path]:
    """An 'alexnet' store (layers fc7, conv5) and a 'resnet' store (penultimate), rows in sorted order.

    36 samples of 3 classes, 24 in the train split and 12 in val.
    """
    ids, labels, splits = dataset()
    alexnet = write_store(
        folder / "alexnet.h5", ids, labels,
        {"fc7": blobs(labels, 6, seed=1), "conv5": blobs(labels, 3, seed=2)}, splits=splits, model="alexnet",
    )
    resnet = write_store(folder / "resnet.h5", ids, labels, {"penultimate": blobs(labels, 4, seed=3)}, splits=splits)
    return alexnet, resnet


def config_for(folder: Path, features, **kwargs) -> ClassifyConfig:
    """A configuration with its run folder in *folder* (``run``) and no plots, unless told otherwise."""
    kwargs.setdefault("out", folder / "run")
    kwargs.setdefault("plots", False)
    return ClassifyConfig(features=tuple(str(f) for f in features), **kwargs)


def cnn_like(n: int, d: int, classes: int, seed: int, sep: float) -> tuple[np.ndarray, np.ndarray]:
    """CNN-like features: ReLU of a low-rank class signal plus noise; *sep* sets how much the classes overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 32)) * sep
    mixing = rng.normal(size=(32, d)) / np.sqrt(32)
    y = rng.permutation(np.arange(n) % classes)
    X = np.maximum((centres[y] + rng.normal(size=(n, 32))) @ mixing + 0.5 * rng.normal(size=(n, d)), 0)
    return X.astype(np.float32), y


def parity_store(folder, n_train: int, n_test: int, d: int, classes: int, seed: int, sep: float):
    """A store of cnn_like rows, the first *n_train* in the train split and the others in val; returns the store
    and the rows as drawn: ``(store, X_train, y_train, X_test, y_test)``."""
    X, y = cnn_like(n_train + n_test, d, classes, seed, sep)
    split = np.array(["train"] * n_train + ["val"] * n_test)
    names = [f"c{c}" for c in range(classes)]
    rows = sorted((f"{s}/{names[c]}/{i:05d}.jpg", c, s, i) for i, (c, s) in enumerate(zip(y, split)))
    order = [r[3] for r in rows]
    store = write_store(folder / "s.h5", [r[0] for r in rows], y[order], {"f": X[order]},
                        splits=[r[2] for r in rows], classes=tuple(names))
    return store, X[:n_train], y[:n_train], X[n_train:], y[n_train:]
