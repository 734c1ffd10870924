"""The linear-probe protocol: the regularisation chosen on a validation split, then a refit.

Kornblith et al. 2019, CLIP, DINOv2 and ssl-transfer report linear probes so:
L-BFGS softmax regression on the frozen (standardised) features, ``C`` chosen
among ``np.logspace(-6, 5, 45)`` by the accuracy on a validation split carved
from the training rows, then the model refitted on all of them with that
``C``.  Here (``ClassifyConfig.protocol``, the registry's ``PROTOCOLS``):

- the validation rows are the stores' ``val`` split when the evaluation is on
  ``test`` (the refit then learns from train + val), else a stratified 20% of
  the training rows drawn with the run's seed (the refit learns from all the
  training rows); with ``cv`` each fold carves its own;
- the curve's fits share one normalised float32 matrix of the rows they learn
  from (the normaliser fitted on those rows); the validation rows are
  normalised by it;
- the estimator of each value is the family's for that shape and device
  (``Family.build``): ``LogisticRegression`` (lbfgs) on a small matrix, each
  value fitted from zero, so that the choice is the one an independent grid
  search makes; the minibatch softmax model of :mod:`._linear` from
  ``LBFGS_MAX_VALUES`` training values or on a GPU, each value warm-started
  from the previous one's coefficients (the grid increases ``C``, i.e.
  decreases the penalty, so each start is close to the next optimum);
- the value chosen is the first of the highest validation accuracy (the
  smallest ``C`` on ties, as scikit-learn's ``GridSearchCV`` would choose).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._join import JoinedFeatures
from ._pipeline import transform_in_place
from ._registry import Protocol, solver_words

__all__ = ["VALIDATION_FRACTION", "grid_values", "validation_rows", "choose"]

log = logging.getLogger("featx")

#: Share of the training rows carved out for validation when the stores have no val split beside test.
VALIDATION_FRACTION = 0.2


def grid_values(protocol: Protocol) -> np.ndarray:
    """The values the protocol tries: ``np.logspace(*protocol.grid)``."""
    start, stop, num = protocol.grid
    return np.logspace(start, stop, int(num))


def validation_rows(joined: JoinedFeatures, train: np.ndarray, test: np.ndarray, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Which rows the curve learns from, which validate it, and which the refit learns from.

    Parameters
    ----------
    train, test : ndarray of int
        A fold's training and evaluation rows.

    Returns
    -------
    fit_rows, val_rows, refit_rows : ndarray of int, sorted
    description : str
    """
    from sklearn.model_selection import train_test_split

    labelled = joined.labels >= 0
    evaluated = set(joined.splits[test].tolist())
    stored_val = np.flatnonzero(labelled & (joined.splits == "val"))
    if evaluated == {"test"} and stored_val.size and set(joined.splits[train].tolist()) == {"train"}:
        refit = np.union1d(train, stored_val)
        return (np.sort(train), stored_val, refit,
                f"the stored val split ({stored_val.size:,} rows); refitted on train + val ({refit.size:,} rows)")
    fit_rows, val_rows = train_test_split(train, test_size=VALIDATION_FRACTION, stratify=joined.labels[train],
                                          random_state=seed)
    return (np.sort(fit_rows), np.sort(val_rows), np.sort(train),
            f"a stratified {VALIDATION_FRACTION:.0%} of the training rows ({len(val_rows):,} rows, seed {seed}); "
            f"refitted on all {train.size:,} training rows")


def choose(protocol: Protocol, params: Mapping[str, Any], joined: JoinedFeatures, fit_rows: np.ndarray,
           val_rows: np.ndarray, make: Callable[[Mapping[str, Any], int], Any], block_rows: int,
           record: Callable[[list[warnings.WarningMessage]], None]) -> dict[str, Any]:
    """Fit every value of the grid on *fit_rows*, score it on *val_rows*; return the curve and the value chosen.

    Parameters
    ----------
    make : callable
        ``(params, n_rows) -> pipeline``: the family's pipeline, unfitted, for those parameters and rows.
    record : callable
        Takes the warnings caught during the fits (convergence).

    Returns
    -------
    dict
        ``protocol``, ``param``, ``chosen`` (the value), ``validation_accuracy``,
        ``curve`` (one ``{param, accuracy, balanced_accuracy}`` per value),
        ``solver`` and ``warm_start``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import balanced_accuracy_score

    values = grid_values(protocol)
    pipeline = make(params, len(fit_rows))
    X = joined.rows(fit_rows)
    features = transform_in_place(pipeline, X, block_rows)  # X normalised in place, the curve's one matrix
    y, y_val = joined.labels[fit_rows], joined.labels[val_rows]
    validation = pipeline[:-1].transform(joined.rows(val_rows))
    curve, estimator = [], None
    warm = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for value in values:
            fresh = make({**params, protocol.param: float(value)}, len(fit_rows)).named_steps["clf"]
            # The minibatch model starts from the previous value's coefficients; lbfgs from zero.
            warm = hasattr(fresh, "end_epoch")  # the minibatch models (MinibatchLinearClassifier.warm_start)
            if warm and estimator is not None:
                estimator.set_params(**{k: v for k, v in fresh.get_params().items() if k != "warm_start"},
                                     warm_start=True)
            else:
                estimator = fresh
            estimator.fit(features, y)
            predicted = estimator.predict(validation)
            curve.append({
                protocol.param: float(value),
                "accuracy": float(np.mean(predicted == y_val)),
                "balanced_accuracy": float(balanced_accuracy_score(y_val, predicted)),
            })
    record(caught)
    del X, features
    best = int(np.argmax([point["accuracy"] for point in curve]))  # the first of the best: the smallest C
    log.info(f"{protocol.name}: {protocol.param} = {curve[best][protocol.param]:.3g} chosen "
             f"(validation accuracy {curve[best]['accuracy']:.4f})")
    return {
        "protocol": protocol.name,
        "param": protocol.param,
        "chosen": curve[best][protocol.param],
        "validation_accuracy": curve[best]["accuracy"],
        "curve": curve,
        "solver": solver_words(estimator),
        "warm_start": warm,
    }
