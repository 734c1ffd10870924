"""Fits for training matrices larger than the memory budget: blocks read from the stores, ``partial_fit``.

:func:`plan_fit` decides, before any feature is read, whether the joined
float32 matrix fits ``ClassifyConfig.memory``; when it does not, the run
streams.  :func:`stream_fit` then reads the training rows in blocks
(:meth:`JoinedFeatures.rows`) and uses scikit-learn's own incremental fits:

- the per-block ``StandardScaler``\\ s by ``partial_fit`` (the same means and
  variances as a fit on the whole matrix);
- a family that learns in one pass (``Family.learns``, ONE_PASS: naive
  Bayes) by its estimator's ``fit_blocks``, exact;
- the others by ``partial_fit`` per block, blocks and rows shuffled: epochs
  until the objective settles for an estimator that says so (``end_epoch``:
  the minibatch linear models of :mod:`._linear`), else :data:`EPOCHS`
  passes (the MLP's Adam);
- a boosting family from an ``xgboost.DataIter`` (:mod:`._boosting`), on either path.

Which families can stream, and with which parameters, is the registry's
(``Family.can_stream``).

The fitted objects are the same scikit-learn pipeline as in memory (the
normaliser, then the estimator), so artifacts and ``predict`` do not change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ClassifyError, message, option
from ..formatting import format_bytes
from ._join import JoinedFeatures
from ._pipeline import fit_normaliser
from ._registry import FAMILIES, ONE_PASS, streaming_families

__all__ = ["FitPlan", "plan_fit", "stream_fit", "stream_predict", "row_blocks", "EPOCHS", "MIN_BLOCK_ROWS"]

log = logging.getLogger("featx")

#: Passes over the training rows of a streamed estimator that does not say when it has settled (the MLP).
EPOCHS = 5
#: Fewest rows a block may have; a budget smaller than such a block is refused.
MIN_BLOCK_ROWS = 8
#: Most rows a block has: larger blocks save no time, they only cost memory.
MAX_BLOCK_ROWS = 65_536
# A block is held a few times at once: as read, normalised, shuffled, and
# the solver's own per-class or minibatch views of it.
_BLOCK_COPIES = 4
#: Bytes of the blocks an in-memory fit normalises and predicts at a time.
IN_MEMORY_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class FitPlan:
    """Which fit a run uses, and why: the ``fit`` entry of ``results.json``.

    Attributes
    ----------
    path : {'in-memory', 'streaming'}
    reason : str
    memory_budget : int
        Bytes.
    matrix_bytes : int
        Size of the joined float32 matrix.
    block_rows : int
        Rows per block: of a streaming fit, or (in memory) normalised and
        predicted at a time, and handed to xgboost at a time.
    """

    path: str
    reason: str
    memory_budget: int
    matrix_bytes: int
    block_rows: int

    @property
    def streaming(self) -> bool:
        return self.path == "streaming"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "reason": self.reason,
            "memory_budget": self.memory_budget,
            "matrix_bytes": self.matrix_bytes,
            "block_rows": self.block_rows,
        }


def plan_fit(n_rows: int, n_features: int, memory: int, *, models: tuple[str, ...], params: dict, search: bool,
             pca: int | None, protocol: str | None = None) -> FitPlan:
    """In memory when ``n_rows x n_features x 4`` bytes fit *memory*, else streaming.

    Parameters
    ----------
    n_rows, n_features : int
        Shape of the joined matrix.
    memory : int
        Budget in bytes (``ClassifyConfig.memory``).
    models : tuple of str
        Families to fit; each must be able to stream when streaming (``Family.can_stream``).
    params : dict
        Each family's parameters.
    search : bool
        Grid search, which has no streaming fit.
    pca : int, optional
        PCA, which has no streaming fit here.
    protocol : str, optional
        The linear-probe protocol, which has none either.

    Returns
    -------
    FitPlan

    Raises
    ------
    ClassifyError
        Streaming is needed but *memory* cannot hold one block of
        :data:`MIN_BLOCK_ROWS` rows, or a chosen option has no streaming fit.
    """
    matrix = n_rows * n_features * 4
    if matrix <= memory:
        reason = f"the {format_bytes(matrix)} feature matrix fits the {format_bytes(memory)} memory budget"
        block = max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, IN_MEMORY_BLOCK_BYTES // (n_features * 4)))
        return FitPlan("in-memory", reason, memory, matrix, int(block))
    row_bytes = n_features * 4 * _BLOCK_COPIES
    block_rows = min(MAX_BLOCK_ROWS, memory // row_bytes)
    if block_rows < MIN_BLOCK_ROWS:
        need = MIN_BLOCK_ROWS * row_bytes
        raise ClassifyError(
            message(
                f"the memory budget ({memory:,} bytes) is too small for one block of {MIN_BLOCK_ROWS} rows x "
                f"{n_features:,} features, which needs {need:,} bytes",
                hint=f"pass {option('memory', need)} or more",
            )
        )
    unable = [m for m in models if not FAMILIES[m].can_stream(params[m])]
    refused = [option("search")] if search else []
    refused += [option("pca")] if pca is not None else []
    refused += [option("protocol", protocol)] if protocol is not None else []  # 45 fits: each a pass per epoch
    if unable or refused:
        what = ", ".join(unable + refused)
        raise ClassifyError(
            message(
                f"the {format_bytes(matrix)} feature matrix does not fit the {format_bytes(memory)} memory budget, "
                f"and {what} cannot be fitted by streaming blocks",
                hint=f"raise {option('memory')}, or use {streaming_families()} without {option('search')} and "
                f"{option('pca')}",
            )
        )
    reason = f"the {format_bytes(matrix)} feature matrix exceeds the {format_bytes(memory)} memory budget"
    return FitPlan("streaming", reason, memory, matrix, int(block_rows))


def row_blocks(rows: np.ndarray, block_rows: int) -> list[np.ndarray]:
    """*rows* cut into consecutive blocks of at most *block_rows*."""
    return [rows[i : i + block_rows] for i in range(0, rows.size, block_rows)]


def _mixed_blocks(rows: np.ndarray, block_rows: int, n_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """SGD blocks for one epoch: each made of short contiguous runs of rows drawn from the whole store.

    Rows are in id order, i.e. grouped by class folder: a contiguous block
    would hold one class.  A block of every n-th row would hold them all but
    touch every HDF5 chunk of the store, so that each epoch read the store once
    per block.  The rows are cut into runs of at most 256 rows, ``block_rows // 8``
    and ``block_rows // (2 n_classes)`` (so that a class of an even share has
    two runs per block), and each stretch of as many consecutive runs as there
    are blocks is dealt, shuffled, one run to every block: every block then
    holds every class in about its share of the rows, while an epoch reads
    each chunk about once.  Runs dealt at random would leave a class out of
    many blocks in a row, which a minibatch fit does not recover from.
    """
    run = max(1, min(256, block_rows // 8, block_rows // (2 * max(n_classes, 1))))
    runs = row_blocks(rows, run)
    per_block = max(1, block_rows // run)
    n_blocks = -(-len(runs) // per_block)
    stretches = -(-len(runs) // n_blocks)
    owner = np.concatenate([rng.permutation(n_blocks) for _ in range(stretches)])[: len(runs)]
    blocks = (np.flatnonzero(owner == b) for b in rng.permutation(n_blocks))
    return [np.sort(np.concatenate([runs[i] for i in members])) for members in blocks if members.size]


def stream_fit(name: str, learns: str, joined: JoinedFeatures, rows: np.ndarray, pipeline: Any, block_rows: int,
               seed: int) -> Any:
    """Fit *pipeline* (normaliser -> streaming estimator, unfitted) on *rows*, read in blocks.

    Parameters
    ----------
    name : str
        Family name, for the log.
    learns : str
        How the family learns (``Family.learns``): in one pass, or by epochs of ``partial_fit``.
    joined : JoinedFeatures
        Joined with ``load=False``.
    rows : ndarray of int
        Increasing training rows.
    pipeline : sklearn.pipeline.Pipeline
        ``blocks`` then ``clf``, built with the family's streaming estimator.
    block_rows : int
    seed : int
        Seed of the block and row shuffles.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Fitted.
    """
    rows = np.sort(rows)
    chunks = row_blocks(rows, block_rows)
    buffer = np.empty((min(block_rows, rows.size), joined.n_features), dtype=np.float32)
    normaliser, estimator = pipeline.named_steps["blocks"], pipeline.named_steps["clf"]
    fit_normaliser(normaliser, (joined.rows(chunk, buffer) for chunk in chunks))
    classes = np.arange(len(joined.classes))
    labels = joined.labels
    if learns == ONE_PASS:
        estimator.fit_blocks(((normaliser.transform(joined.rows(chunk, buffer)), labels[chunk]) for chunk in chunks),
                             classes)
        return pipeline
    rng = np.random.default_rng(seed)
    # The minibatch linear models say when an epoch has settled their objective (end_epoch); the MLP runs EPOCHS.
    settles = hasattr(estimator, "end_epoch")
    for _ in range(estimator.max_iter if settles else EPOCHS):
        for chunk in _mixed_blocks(rows, block_rows, len(classes), rng):
            X = normaliser.transform(joined.rows(chunk, buffer))
            # Minibatches need shuffled rows; the store order is sorted by class folder.
            order = rng.permutation(chunk.size)
            estimator.partial_fit(X[order], labels[chunk][order], classes=classes)
        if settles:
            done = estimator.end_epoch()
            # An epoch of 10^6 rows takes tens of seconds: say where the fit is.
            log.info(f"{name}: epoch {estimator.n_iter_}, objective {estimator.objective_:.5g}"
                     + (" (settled)" if done else ""))
            if done:
                break
    if getattr(estimator, "polish", 0):  # L-BFGS from the minibatch solution: one read of the rows per pass
        log.info(f"{name}: finishing by L-BFGS, at most {estimator.polish} passes over the training rows")
        estimator.polish_blocks(lambda: ((normaliser.transform(joined.rows(chunk, buffer)), labels[chunk])
                                         for chunk in chunks))
    return pipeline


def stream_predict(model: Any, joined: JoinedFeatures, rows: np.ndarray, block_rows: int,
                   proba: bool, *, scores: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (and probabilities when *proba*) of *rows*, read in blocks.

    The rows are visited in store order (each block one sweep over a few
    windows of the stores, wherever the evaluation rows lie); the results come
    back in the order of *rows*.  With *scores*, the decision function
    instead of the probabilities.
    """
    order = np.argsort(rows, kind="stable")
    predicted, probabilities = [], []
    buffer = np.empty((min(block_rows, max(rows.size, 1)), joined.n_features), dtype=np.float32)
    for chunk in row_blocks(rows[order], block_rows):
        block = joined.rows(chunk, buffer)
        predicted.append(np.asarray(model.predict(block), dtype=np.int64))
        if proba:
            probabilities.append(model.decision_function(block) if scores else model.predict_proba(block))
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    labels = np.concatenate(predicted)[back]
    return labels, np.concatenate(probabilities)[back] if proba else None
