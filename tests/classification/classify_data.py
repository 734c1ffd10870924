"""Stores and configurations shared by the classification tests (imported, not collected).

The stores are written directly (tests/stores.py) so that their rows, labels
and features are known exactly.
"""

from __future__ import annotations

from pathlib import Path

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
