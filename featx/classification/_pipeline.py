"""The scikit-learn pipeline every classifier is fitted in: per-block normalisation -> optional PCA -> estimator.

One normaliser per input block (a ``ColumnTransformer``) keeps one wide
network from drowning another when stores are joined.  Every statistic is
fitted on training rows only, and the saved pipeline reproduces the whole
transformation on new images.  scikit-learn is imported when a pipeline is
built, not with this module, so :data:`NORMALIZERS` is cheap to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: the join imports numpy and featx.store
    from ._join import FeatureBlock

__all__ = ["NORMALIZERS", "build_pipeline"]

#: Names of the per-block normalisations, in the order the command line lists them.
NORMALIZERS = ("standard", "l2", "none")


def _normaliser(name: str) -> Any:
    from sklearn.preprocessing import Normalizer, StandardScaler

    return {"standard": StandardScaler(), "l2": Normalizer(norm="l2"), "none": "passthrough"}[name]


def build_pipeline(
    blocks: Sequence[FeatureBlock], normalize: str, pca: int | None, estimator: Any, seed: int = 0
) -> Any:
    """Per-block normalisation -> optional PCA -> *estimator*, as one sklearn ``Pipeline``.

    Parameters
    ----------
    blocks : sequence of FeatureBlock
        Column ranges of the inputs in the joined matrix ``(n_samples, n_features)``.
    normalize : {'standard', 'l2', 'none'}
        One of :data:`NORMALIZERS` (checked by :class:`~featx.classification.ClassifyConfig`).
    pca : int, optional
        Number of principal components kept after normalisation.
    estimator : sklearn estimator
        The last step, ``clf``.
    seed : int
        ``random_state`` of the PCA solver.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``blocks`` (one transformer ``block<i>`` per input), ``pca`` (if asked) and ``clf``.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline

    steps: list[tuple[str, Any]] = [
        ("blocks", ColumnTransformer([(f"block{i}", _normaliser(normalize), b.columns) for i, b in enumerate(blocks)]))
    ]
    if pca is not None:
        steps.append(("pca", PCA(n_components=pca, random_state=seed)))
    steps.append(("clf", estimator))
    return Pipeline(steps)
