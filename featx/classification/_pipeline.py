"""The scikit-learn pipeline every classifier is fitted in: per-block normalisation -> optional PCA -> estimator.

One normaliser per input block (a ``ColumnTransformer``) keeps one wide
network from drowning another when stores are joined.  Every statistic is
fitted on training rows only, and the saved pipeline reproduces the whole
transformation on new images.  scikit-learn is imported when a pipeline is
built, not with this module, so :data:`NORMALIZERS` is cheap to read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: the join imports numpy and featx.store
    import numpy as np

    from ._join import FeatureBlock

__all__ = ["NORMALIZERS", "build_pipeline", "fit_normaliser", "transform_in_place", "fit_in_place"]

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


def fit_normaliser(normaliser: Any, blocks: Iterable[np.ndarray]) -> Any:
    """Fit the ``blocks`` step of a pipeline on row blocks of the training matrix, one block at a time.

    The first block fits the ``ColumnTransformer`` (so that it is a fitted
    scikit-learn object like any other); every later block adds its rows to
    the statistics of each ``StandardScaler`` by ``partial_fit``, which gives
    the means and variances of a fit on all the rows at once (Chan et al.'s
    pairwise update).  The l2 normaliser and passthrough learn nothing.
    """
    from sklearn.preprocessing import StandardScaler

    blocks = iter(blocks)
    normaliser.fit(next(blocks))
    scalers = [(t, cols) for _, t, cols in normaliser.transformers_ if isinstance(t, StandardScaler)]
    if not scalers:
        return normaliser
    for block in blocks:
        for scaler, cols in scalers:
            scaler.partial_fit(block[:, cols])
    return normaliser


def transform_in_place(pipeline: Any, X: np.ndarray, block_rows: int) -> np.ndarray:
    """Fit the steps before the estimator on ``X`` and apply them, normalising ``X`` in place.

    ``Pipeline.fit`` would hold three more copies of the training matrix (the
    normalised output of every block, their ``hstack``, and a solver's
    conversion).  Here the normaliser is fitted and applied block by block,
    each block written back into ``X``.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        From :func:`build_pipeline`, unfitted.
    X : ndarray of float32, (n_samples, n_features)
        The training matrix; it holds the normalised features afterwards.
    block_rows : int
        Rows normalised at a time (bounds the temporary copies).

    Returns
    -------
    ndarray of float32
        What the estimator learns from: ``X`` itself, or its PCA projection
        ``(n_samples, n_components)``.
    """
    spans = [slice(i, min(i + block_rows, len(X))) for i in range(0, len(X), block_rows)]
    normaliser = fit_normaliser(pipeline.named_steps["blocks"], (X[span] for span in spans))
    for span in spans:
        X[span] = normaliser.transform(X[span])
    if "pca" in pipeline.named_steps:  # PCA centres its own copy; its output is n_components wide
        return pipeline.named_steps["pca"].fit_transform(X)
    return X


def fit_in_place(pipeline: Any, X: np.ndarray, y: np.ndarray, block_rows: int) -> Any:
    """Fit *pipeline* on ``X``, normalised in place: no other copy of the training matrix is made.

    The estimator (float32 in: every solver used accepts it without
    converting) is fitted on ``X`` itself after :func:`transform_in_place`.
    The fitted pipeline is the same object a ``fit`` would give, so artifacts
    and ``predict`` do not change.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        From :func:`build_pipeline`, unfitted.
    X : ndarray of float32, (n_samples, n_features)
        The training matrix; it holds the normalised features afterwards.
    y : ndarray of int, (n_samples,)
    block_rows : int
        Rows normalised at a time.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Fitted.
    """
    pipeline.named_steps["clf"].fit(transform_in_place(pipeline, X, block_rows), y)
    return pipeline
