"""Which labelled samples train and which evaluate a classifier.

In order of precedence: ``cv`` folds (stratified, over every labelled
sample); the stored split (train on ``train``, evaluate on ``test`` when the
stores have one, else on ``val``); a stratified, seeded hold-out.  Data no
classifier can learn from (no labels, one class, a class too small for the
split, more PCA components than a fit has rows) is refused here, before
anything is fitted.  The inner folds of a grid search are chosen here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ClassifyError, message, option
from ._join import JoinedFeatures

__all__ = ["SEARCH_FOLDS", "Evaluation", "plan_evaluation", "smallest_class", "search_folds", "check_components"]

#: Folds of the cross-validated grid search, at most (fewer when a class is smaller).
SEARCH_FOLDS = 5


@dataclass
class Evaluation:
    """How labelled samples are split for evaluation.

    Attributes
    ----------
    mode : {'split', 'holdout', 'cv'}
    description : str
        One line for the printed header.
    folds : list of (train rows, test rows)
        Row indices into the joined samples; one pair unless ``mode == 'cv'``.
    final_train : ndarray
        Rows the saved classifier is fitted on (all labelled rows with ``cv``).
    """

    mode: str
    description: str
    folds: list[tuple[np.ndarray, np.ndarray]]
    final_train: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """The ``evaluation`` entry of ``results.json``: mode, description and fold sizes."""
        return {
            "mode": self.mode,
            "description": self.description,
            "folds": len(self.folds),
            "n_train": [int(len(t)) for t, _ in self.folds],
            "n_test": [int(len(t)) for _, t in self.folds],
        }


def _check_labels(joined: JoinedFeatures) -> np.ndarray:
    """Rows with a label; refuse data a classifier cannot learn from."""
    labelled = np.flatnonzero(joined.labels >= 0)
    if labelled.size == 0:
        stores = ", ".join(f"'{b.store}'" for b in joined.blocks)
        raise ClassifyError(
            message(
                f"no labels: the {len(joined.ids):,} samples of {stores} are all unlabelled (label -1, the data "
                "folder had no class subfolders)",
                hint="classify needs labelled images, one subfolder per class (DATA/<class>/<image>): "
                "extract from such a folder",
            )
        )
    if len(joined.classes) < 2:
        raise ClassifyError(
            message(
                f"only one class ('{joined.classes[0]}') among the {labelled.size:,} labelled samples",
                hint="a classifier needs at least two: add a subfolder of images of another class and extract again",
            )
        )
    return labelled


def _class_counts(labels: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(classes))
    return {name: int(c) for name, c in zip(classes, counts)}


def smallest_class(labels: np.ndarray, classes: Sequence[str]) -> tuple[str, int]:
    """The class with the fewest of *labels* (class indices), and its count."""
    counts = _class_counts(labels, classes)
    name = min(counts, key=lambda c: counts[c])
    return name, counts[name]


def _stored_split(joined: JoinedFeatures, labelled: np.ndarray) -> Evaluation | None:
    splits = joined.splits[labelled]
    present = set(splits.tolist())
    test_split = "test" if "test" in present else "val" if "val" in present else None
    if "train" not in present or test_split is None:
        return None
    train, test = labelled[splits == "train"], labelled[splits == test_split]
    counts = _class_counts(joined.labels[train], joined.classes)
    absent = [name for name, c in counts.items() if c == 0]
    if absent:
        raise ClassifyError(
            message(
                f"the train split has no sample of class {', '.join(repr(a) for a in absent)} (present in "
                f"{', '.join(sorted(present - {'train'}))})",
                hint="a classifier cannot learn a class it never sees: add training images of it",
            )
        )
    unused = labelled.size - train.size - test.size
    note = f"; {unused:,} labelled samples of other splits unused" if unused else ""
    return Evaluation(
        mode="split",
        description=f"stored split: train on train ({train.size:,}), evaluate on {test_split} ({test.size:,}){note}",
        folds=[(train, test)],
        final_train=train,
    )


def _holdout(joined: JoinedFeatures, labelled: np.ndarray, test_size: float, seed: int) -> Evaluation:
    from sklearn.model_selection import train_test_split

    y = joined.labels[labelled]
    name, smallest = smallest_class(y, joined.classes)
    if smallest < 2:
        raise ClassifyError(
            message(
                f"class '{name}' has {smallest} labelled sample",
                hint="a stratified hold-out needs at least 2 per class: add images of it, or remove its folder",
            )
        )
    n_test = math.ceil(test_size * labelled.size)
    n_classes = len(joined.classes)
    if n_test < n_classes or labelled.size - n_test < n_classes:
        raise ClassifyError(
            message(
                f"{option('test_size', test_size)} holds out {n_test} of {labelled.size} samples, but a stratified "
                f"hold-out needs at least one sample of each of the {n_classes} classes on both sides",
                hint=f"choose another test size, or cross-validate with {option('cv', 5)}",
            )
        )
    train, test = train_test_split(labelled, test_size=test_size, stratify=y, random_state=seed)
    train, test = np.sort(train), np.sort(test)
    return Evaluation(
        mode="holdout",
        # Records (results.json, the printed table) say the same whoever made the run: no option names.
        description=f"stratified hold-out (no stored split): train {train.size:,}, test {test.size:,} "
        f"(test size {test_size}, seed {seed})",
        folds=[(train, test)],
        final_train=train,
    )


def _cross_validation(joined: JoinedFeatures, labelled: np.ndarray, k: int, seed: int) -> Evaluation:
    from sklearn.model_selection import StratifiedKFold

    y = joined.labels[labelled]
    name, smallest = smallest_class(y, joined.classes)
    if smallest < k:
        hint = f"use {option('cv', smallest)} or fewer" if smallest >= 2 else "add images of it, or remove its folder"
        raise ClassifyError(
            message(
                f"{option('cv', k)} needs at least {k} labelled samples of every class, "
                f"but class '{name}' has {smallest}",
                hint=hint,
            )
        )
    folds = [
        (labelled[a], labelled[b])
        for a, b in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(labelled, y)
    ]
    has_split = bool(set(joined.splits[labelled].tolist()) - {""})
    note = "; the stored split is not used with cross-validation" if has_split else ""
    return Evaluation(
        mode="cv",
        description=f"{k}-fold stratified cross-validation over {labelled.size:,} labelled samples (seed {seed}){note}",
        folds=folds,
        final_train=labelled,
    )


def plan_evaluation(joined: JoinedFeatures, *, cv: int | None, test_size: float, seed: int) -> Evaluation:
    """Choose the evaluation rows: ``cv`` folds, else the stored split, else a hold-out.

    Parameters
    ----------
    joined : JoinedFeatures
    cv : int, optional
        Stratified k-fold cross-validation over every labelled sample.
    test_size : float
        Fraction held out (stratified) when there is no stored split.
    seed : int
        Seed of the hold-out and of the fold assignment.

    Raises
    ------
    ClassifyError
        No labels, one class, or too few samples of a class for the split.
    """
    labelled = _check_labels(joined)
    if cv is not None:
        return _cross_validation(joined, labelled, cv, seed)
    stored = _stored_split(joined, labelled)
    if stored is not None:
        return stored
    return _holdout(joined, labelled, test_size, seed)


def search_folds(y: np.ndarray, classes: Sequence[str], seed: int) -> Any:
    """The stratified folds of a grid search over training rows with labels *y*.

    Returns
    -------
    sklearn.model_selection.StratifiedKFold
        :data:`SEARCH_FOLDS` folds, fewer when the smallest class has fewer samples.

    Raises
    ------
    ClassifyError
        A class has fewer than 2 training rows.
    """
    from sklearn.model_selection import StratifiedKFold

    name, smallest = smallest_class(y, classes)
    if smallest < 2:
        raise ClassifyError(
            message(
                f"{option('search')} cross-validates on the training rows and needs at least 2 of every class there, "
                f"but class '{name}' has {smallest}",
                hint=f"add images of it, or leave out {option('search')}",
            )
        )
    return StratifiedKFold(n_splits=min(SEARCH_FOLDS, smallest), shuffle=True, random_state=seed)


def check_components(pca: int | None, joined: JoinedFeatures, evaluation: Evaluation, *, search: bool) -> None:
    """Refuse more PCA components than the smallest fit has rows or the data have columns.

    Parameters
    ----------
    pca : int, optional
        Components asked for; nothing to check when None.
    joined : JoinedFeatures
    evaluation : Evaluation
        Its folds give the training rows of each fit.
    search : bool
        A grid search fits on the training rows less one inner fold.

    Raises
    ------
    ClassifyError
        With the largest number that works.
    """
    if pca is None:
        return
    rows = min(len(train) for train, _ in evaluation.folds)
    if search:
        _, smallest = smallest_class(joined.labels[evaluation.final_train], joined.classes)
        k = min(SEARCH_FOLDS, max(smallest, 2))
        rows = rows - math.ceil(rows / k)
    columns = joined.n_features
    limit = min(rows, columns)
    if pca > limit:
        raise ClassifyError(
            message(
                option("pca"),
                allowed=f"at most min(training rows of a fit = {rows}, features = {columns}) = {limit}",
                got=pca,
                hint=f"choose {option('pca', limit)} or fewer",
            )
        )
