"""xgboost fitted from row blocks: an ``xgboost.DataIter`` feeding a ``QuantileDMatrix``.

xgboost's ``hist`` method learns from a quantised copy of the features (one
bin index per value, a byte each), never from the float matrix itself.  So
the training rows are read from the stores block by block
(:meth:`JoinedFeatures.rows`), normalised, and handed to xgboost's own
incremental constructor: no float copy of the training matrix is ever held,
whether the run is in memory or streaming.  When even the quantised copy
exceeds its share of the memory budget, :class:`xgboost.ExtMemQuantileDMatrix` keeps its
pages in a temporary folder on disk instead (``TMPDIR``).

Ctrl-C and SIGTERM never reach xgboost's C++ code: the ``DataIter`` callbacks
run inside ``XGDMatrixCreateFromCallback``, and a KeyboardInterrupt raised
there crosses a ctypes callback, which ignores it and hands C++ a half-built
batch (measured: ``Check failed: rbegin == Info().num_row_``, a segfault,
heap corruption).  While xgboost runs, the signals are only recorded
(:func:`_signals_deferred`); the iterator then raises an ordinary exception,
which xgboost carries out of its C call by design, and a boosting round's
callback stops training; the signal's own action (KeyboardInterrupt, or the
command line's SIGTERM handler) follows once xgboost has returned.

Boosting stops early when the log loss of a stratified tenth of the training
rows (:data:`XGBOOST_EARLY_STOP_FRACTION`) has not improved for
:data:`XGBOOST_EARLY_STOP_ROUNDS` rounds; the booster is then handed to the
pipeline's ``XGBClassifier`` (its own ``load_model``), so that artifacts and
``predict`` are those of any other family.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ._join import JoinedFeatures
from ._pipeline import fit_normaliser, transform_in_place
from ._streaming import row_blocks

__all__ = ["fit_xgboost", "early_stopping_split", "QUANTISED_BYTES_PER_VALUE"]

#: Fraction of the training rows xgboost holds out (stratified) for early stopping.
XGBOOST_EARLY_STOP_FRACTION = 0.1
#: Boosting rounds without improvement of the held-out log loss before xgboost stops.
XGBOOST_EARLY_STOP_ROUNDS = 10

#: Bytes per feature value of xgboost's quantised matrix (a uint8 bin index with max_bin <= 256).
QUANTISED_BYTES_PER_VALUE = 1
#: Share of the memory budget the quantised matrix may take in memory; xgboost also holds the
#: gradients, the histograms of every node being split, and the block being quantised.
QUANTISED_SHARE = 0.25
#: Seconds between two progress lines of a long boosting run.
PROGRESS_SECONDS = 30.0

log = logging.getLogger("featx")


def early_stopping_split(y: np.ndarray, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions of the rows boosted on and of the held-out rows (sorted), or ``(all, None)``.

    The held-out rows are training rows, never evaluation rows.  Too few rows
    to hold out one of each class, or a class with a single row: every row is
    boosted on and every round fitted.
    """
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(y))
    n_val = int(np.ceil(XGBOOST_EARLY_STOP_FRACTION * len(y)))
    counts = np.bincount(y, minlength=n_classes)
    if n_val < n_classes or counts[counts > 0].min() < 2:
        return everything, None
    fit, val = train_test_split(everything, test_size=n_val, stratify=y, random_state=seed)
    return np.sort(fit), np.sort(val)


class _Deferred(Exception):
    """Raised inside xgboost's callbacks when a signal is pending: an Exception, which xgboost re-raises once C++ returns."""


_pending: list[int] = []  # signals received while xgboost runs, in order


def _record(signum: int, frame: object) -> None:
    _pending.append(signum)


def _check_pending() -> None:
    """Stop xgboost's current call (from a callback) when a signal arrived."""
    if _pending:
        raise _Deferred()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Record SIGINT and SIGTERM while xgboost runs; act on them, as their handlers would, once it has returned."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals (and may set their handlers)
        return
    names = [signal.SIGINT, signal.SIGTERM]
    previous = {signum: signal.signal(signum, _record) for signum in names}
    _pending.clear()
    try:
        yield
    except _Deferred:
        pass  # the signal's own action follows
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        received, _pending[:] = list(_pending), []
    for signum in dict.fromkeys(received):
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)  # Python's default raises KeyboardInterrupt; the CLI's SIGTERM one, its own
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), signum)  # what the signal would have done (SIGTERM: end the process)


def _block_iterator(features: Callable[[np.ndarray], np.ndarray], labels: np.ndarray, chunks: Sequence[np.ndarray],
                    cache_prefix: str | None) -> Any:
    """An ``xgboost.DataIter`` over *chunks* of training positions: ``features(chunk)`` and ``labels[chunk]``."""
    import xgboost

    class RowBlocks(xgboost.DataIter):
        def __init__(self) -> None:
            self._next = 0
            super().__init__(cache_prefix=cache_prefix, release_data=True)

        def next(self, input_data: Any) -> bool:
            _check_pending()  # never let a KeyboardInterrupt into xgboost's C++ caller (see the module's doc)
            if self._next == len(chunks):
                return False
            chunk = chunks[self._next]
            self._next += 1
            # A fresh array per block: xgboost caches per-batch results keyed on the data object.
            input_data(data=features(chunk), label=labels[chunk])
            return True

        def reset(self) -> None:
            _check_pending()
            self._next = 0

    return RowBlocks()


def _progress(rounds: int) -> Any:
    """An xgboost callback that logs the round, the held-out loss and the time left, every :data:`PROGRESS_SECONDS`.

    At 10^6 rows x 2,048 columns of 100 classes a round takes minutes on a
    few cores; a run of seconds says nothing.
    """
    import xgboost

    class Progress(xgboost.callback.TrainingCallback):
        def before_training(self, model: Any) -> Any:
            self._started = self._said = time.perf_counter()
            return model

        def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
            _check_pending()  # a signal during the round: stop between rounds
            now = time.perf_counter()
            if now - self._said >= PROGRESS_SECONDS:
                self._said = now
                done = epoch + 1
                per_round = (now - self._started) / done
                losses = [values[-1] for metrics in evals_log.values() for values in metrics.values()]
                loss = f", held-out loss {losses[0]:.5g}" if losses else ""
                log.info(f"xgboost: round {done} of at most {rounds}{loss}, {per_round:.1f} s per round, "
                         f"at most {per_round * (rounds - done) / 60:.0f} min left")
            return False

    return Progress()


def _booster_params(estimator: Any, n_classes: int, seed: int) -> dict[str, Any]:
    """The native parameters of the pipeline's ``XGBClassifier``, for ``xgboost.train``."""
    settings = estimator.get_params()
    multi = n_classes > 2
    return {
        "objective": "multi:softprob" if multi else "binary:logistic",
        **({"num_class": n_classes} if multi else {}),
        "eval_metric": "mlogloss" if multi else "logloss",
        "tree_method": "hist",
        "device": settings["device"],  # where the registry put it (the run's device, if xgboost can use it)
        "nthread": settings["n_jobs"] or os.cpu_count(),
        "max_depth": settings["max_depth"],
        "max_bin": settings["max_bin"],
        "learning_rate": settings["learning_rate"],
        "subsample": settings["subsample"],
        "seed": seed,
    }


def fit_xgboost(pipeline: Any, joined: JoinedFeatures, rows: np.ndarray, *, block_rows: int, memory: int,
                seed: int) -> tuple[Any, str]:
    """Fit *pipeline* (normaliser -> ``XGBClassifier``) on *rows*, fed to xgboost block by block.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        From :func:`build_pipeline`, unfitted, ending in an ``XGBClassifier``.
    joined : JoinedFeatures
        The joined inputs (read block by block).
    rows : ndarray of int
        Training rows.
    block_rows : int
        Rows per block handed to xgboost.
    memory : int
        Budget in bytes: the quantised matrix stays in memory when it fits
        :data:`QUANTISED_SHARE` of it, else it is paged to disk
        (``ExtMemQuantileDMatrix``).
    seed : int
        Seed of the early-stopping split and of the booster.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        Fitted.
    matrix : str
        ``'QuantileDMatrix'`` or ``'ExtMemQuantileDMatrix'``: what xgboost learnt from.
    """
    import xgboost

    rows = np.sort(rows)
    labels = joined.labels[rows]
    n_classes = len(joined.classes)
    estimator = pipeline.named_steps["clf"]
    if "pca" in pipeline.named_steps:  # PCA needs every row at once: boost on its (narrow) projection
        projected = transform_in_place(pipeline, joined.rows(rows), block_rows)

        def features(positions: np.ndarray) -> np.ndarray:
            return projected[positions]
    else:
        normaliser = fit_normaliser(
            pipeline.named_steps["blocks"], (joined.rows(chunk) for chunk in row_blocks(rows, block_rows))
        )

        def features(positions: np.ndarray) -> np.ndarray:
            return normaliser.transform(joined.rows(rows[positions]))

    fit, val = early_stopping_split(labels, n_classes, seed)
    params = _booster_params(estimator, n_classes, seed)
    width = projected.shape[1] if "pca" in pipeline.named_steps else joined.n_features
    in_memory = len(fit) * width * QUANTISED_BYTES_PER_VALUE <= QUANTISED_SHARE * memory
    kind = "QuantileDMatrix" if in_memory else "ExtMemQuantileDMatrix"
    with tempfile.TemporaryDirectory(prefix="featx-xgboost-") as cache, _signals_deferred():
        train_iter = _block_iterator(
            features, labels, row_blocks(fit, block_rows), None if in_memory else os.path.join(cache, "train")
        )
        if in_memory:
            train = xgboost.QuantileDMatrix(train_iter, max_bin=params["max_bin"], nthread=params["nthread"])
        else:
            train = xgboost.ExtMemQuantileDMatrix(train_iter, max_bin=params["max_bin"], nthread=params["nthread"])
        evals: list[tuple[Any, str]] = []
        if val is not None:
            val_iter = _block_iterator(features, labels, row_blocks(val, block_rows), None)
            evals = [(xgboost.QuantileDMatrix(val_iter, ref=train, max_bin=params["max_bin"]), "heldout")]
        rounds = estimator.get_params()["n_estimators"]
        booster = xgboost.train(
            params, train, num_boost_round=rounds, evals=evals,
            early_stopping_rounds=XGBOOST_EARLY_STOP_ROUNDS if evals else None, verbose_eval=False,
            callbacks=[_progress(rounds)],
        )
        del train, evals
    # The sklearn wrapper reads the classes and the best iteration from the booster itself.
    with _signals_deferred():
        estimator.load_model(bytearray(booster.save_raw("ubj")))
    return pipeline, kind
