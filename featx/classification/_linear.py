"""Linear classifiers trained by minibatch Adam on BLAS matrix products: the linear SVM, and streamed logreg.

Why not ``SGDClassifier``: it updates the weights row by row and, for the
hinge loss, solves one binary problem per class, so an epoch over a million
rows of 100 classes is a hundred passes of scalar loops over the matrix.  Here
every class is updated at once from a minibatch of rows: two float32 matrix
products per step (``X_b @ W`` and ``X_b.T @ G``) at BLAS speed, and the
training matrix is never converted nor copied (minibatches are gathered rows).

The objective is scikit-learn's, divided by ``C n``: the mean loss over the
``n`` training rows plus ``alpha / 2 |W|^2`` with ``alpha = 1 / (C n)``
(the registry sets it from ``C`` and the training rows).  Losses:

``squared_hinge``
    one-vs-rest squared hinge, summed over classes: ``LinearSVC``'s default
    (the linear SVM of the CNN-features literature); no probabilities.  The
    intercepts are penalised like the weights, ``alpha / 2 |b|^2``, as
    liblinear penalises its bias (``intercept_scaling=1``): the objective is
    ``LinearSVC``'s exactly (it matters with fewer rows than columns).
``log_loss``
    multinomial (softmax) cross-entropy: ``LogisticRegression``'s model,
    with ``predict_proba``; intercepts unpenalised, as lbfgs leaves them.

Adam with a step of ``eta0`` halves the step after an epoch that improved the
objective by less than ``tol`` (relative), or that took at least
:data:`ANNEAL_STEPS` minibatches whatever it did; the fit has converged once
the step has been halved :data:`HALVINGS` times, and its coefficients are
then the mean of the last epoch's iterates (Polyak-Ruppert averaging);
``max_iter`` caps the epochs (then a ``ConvergenceWarning``, as
scikit-learn's solvers do).  Why the second rule: on a large training set an
epoch is many steps (and, when streaming, a read of the whole store), and a
few epochs with the step halved after each reach the accuracy that waiting for
the objective to settle reaches many epochs later.  The same object learns
from one in-memory matrix (:meth:`fit`) or from blocks read from the stores
(:meth:`partial_fit` per block, :meth:`end_epoch` after each pass), so
streamed and in-memory fits share their code and their artifacts.

The optimiser's state and its step are the backend's: :class:`NumpyAdam` here
(the default, ``device='cpu'``), or :class:`~._torch_linear.TorchAdam` on a
torch device (``device='cuda'``; ``backend='torch'`` with ``device='cpu'``
runs the torch code on the CPU).  The estimator keeps the rest (epochs,
halvings, averaging, minibatch order), so both backends fit the same
minibatches in the same order from the same seed, and ``coef_`` /
``intercept_`` are float32 numpy arrays after either.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

__all__ = ["BACKENDS", "HALVINGS", "LOSSES", "MinibatchLinearClassifier", "NumpyAdam"]

LOSSES = ("squared_hinge", "log_loss")
BACKENDS = ("numpy", "torch")
#: Times the step is halved on a plateau before the fit counts as converged.
HALVINGS = 4
#: Minibatches of an epoch after which the step halves, whatever the objective did.
ANNEAL_STEPS = 256
#: Values (rows x columns) of the in-memory matrix's slices in a polishing pass (64 MiB of float32).
POLISH_BLOCK_VALUES = 1 << 24
#: L-BFGS's ``ftol`` when polishing: the relative change of the objective at which it stops.
POLISH_TOL = 1e-9
#: Rows per minibatch: large enough for the matrix products to run at BLAS speed ...
MAX_BATCH = 1024
#: ... and at least this many steps per epoch on small training sets.
MIN_STEPS = 16
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
# Below this many multiply-adds per product, one BLAS thread is faster: threads cost more than they save.
_THREADED_PRODUCT = 1 << 24
_TRAINING_STATE = ("_adam", "_sums_from", "_t", "_epoch_start", "_step_size", "_halvings", "_best", "_seen")


class MinibatchLinearClassifier(LinearClassifierMixin, BaseEstimator):
    """A linear classifier (``coef_``, ``intercept_``) fitted by minibatch Adam; see the module docstring.

    Parameters
    ----------
    loss : {'squared_hinge', 'log_loss'}
    alpha : float
        L2 penalty of the mean-loss objective (``1 / (C n)``).
    max_iter : int
        Most epochs.
    tol : float
        Relative improvement of an epoch's objective below which the step halves.
    eta0 : float
        Adam's initial step.
    batch_size : int, optional
        Rows per minibatch; by default :data:`MAX_BATCH`, fewer when a fit
        has fewer than ``MAX_BATCH * MIN_STEPS`` rows (at least
        :data:`MIN_STEPS` steps per epoch).
    random_state : int, optional
        Seed of the minibatch order and of nothing else (the weights start at zero).
    device : str
        ``'cpu'``, or a torch CUDA device (``'cuda'``, ``'cuda:N'``) to fit on.
    backend : {'numpy', 'torch'}, optional
        The arrays the fit computes with: by default numpy on ``'cpu'`` and
        torch elsewhere; ``'torch'`` with ``device='cpu'`` runs the torch
        code on torch's CPU kernels.
    polish : int
        After the minibatch epochs, at most this many full-batch L-BFGS
        iterations on the same objective (:meth:`polish_blocks`); 0: none.
    warm_start : bool
        :meth:`fit` starts from the coefficients of the previous fit (same
        classes and columns) instead of zeros: what the linear-probe
        protocol does along its grid of ``C``.

    Attributes
    ----------
    coef_ : ndarray of shape (n_classes, n_features), float32
    intercept_ : ndarray of shape (n_classes,), float32
    classes_ : ndarray
    n_iter_ : int
        Epochs run.
    objective_ : float
        The objective over the last epoch (its minibatches' mean loss plus the penalty).
    converged_ : bool
    """

    #: See the module docstring (the same as the module's constants).
    HALVINGS = HALVINGS
    ANNEAL_STEPS = ANNEAL_STEPS

    def __init__(self, loss: str = "squared_hinge", *, alpha: float = 1e-4, max_iter: int = 100, tol: float = 1e-3,
                 eta0: float = 1e-2, batch_size: int | None = None, random_state: int | None = None,
                 device: str = "cpu", backend: str | None = None, polish: int = 0, warm_start: bool = False) -> None:
        self.loss = loss
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.eta0 = eta0
        self.batch_size = batch_size
        self.random_state = random_state
        self.device = device
        self.backend = backend
        self.polish = polish
        self.warm_start = warm_start

    # ------------------------------------------------------------------ fitting

    def fit(self, X: np.ndarray, y: np.ndarray) -> MinibatchLinearClassifier:
        """Epochs over the rows of *X* (float32, used as is) in a shuffled order, until converged or ``max_iter``."""
        X = self._rows(X)
        self._start(X.shape[1], np.unique(y))
        labels = np.searchsorted(self.classes_, y)
        rng = np.random.default_rng(self.random_state)
        size = self.batch_size or int(min(MAX_BATCH, max(32, X.shape[0] // MIN_STEPS)))
        rows, targets = self._adam.source(X, labels)
        with self._threads(size, X.shape[1]):
            while not self.converged_ and self.n_iter_ < self.max_iter:
                order = rng.permutation(X.shape[0])
                for start in range(0, order.size, size):
                    order[start : start + size].sort()  # sorted minibatches: each a gather in memory order
                order = self._adam.index(order)
                for start in range(0, X.shape[0], size):
                    batch = order[start : start + size]
                    self._step(rows[batch], targets[batch])
                self.end_epoch()
        del rows, targets
        if self.polish:
            step = max(1, POLISH_BLOCK_VALUES // max(X.shape[1], 1))
            self.polish_blocks(lambda: ((X[i : i + step], labels[i : i + step]) for i in range(0, X.shape[0], step)))
        return self

    def polish_blocks(self, blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> MinibatchLinearClassifier:
        """Finish the fit by full-batch L-BFGS from the minibatch solution, at most ``polish`` iterations.

        Why: the minibatch fit reaches the accuracy of the optimum's
        neighbourhood in a few epochs, but on the flat, ill-conditioned
        objectives of a small ``alpha`` its steps shrink before the optimum
        (its objective stays a few per cent above scikit-learn's, and its
        accuracy up to a point away).  L-BFGS on the exact objective, warm
        started there, reaches the optimum in tens of passes.  Each
        evaluation is one pass over *blocks* (``blocks()`` yields
        ``(rows, class indices)``: the in-memory matrix by slices, or blocks
        read and normalised from the stores), float32 products, float64 sums.
        """
        from scipy.optimize import minimize

        shape = self.coef_.shape
        size = self.coef_.size

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            coef = theta[:size].reshape(shape).astype(np.float32)
            intercept = theta[size:].astype(np.float32)
            value, grad_coef, grad_intercept, n = 0.0, np.zeros(shape), np.zeros(shape[0]), 0
            for X, labels in blocks():
                with _blas_threads(X.shape[0], shape[1], shape[0]):
                    part, g_coef, g_intercept = _batch_loss(np.asarray(X, dtype=np.float32), labels, coef, intercept,
                                                            self.loss)
                value += part
                grad_coef += g_coef
                grad_intercept += g_intercept
                n += X.shape[0]
            theta64 = theta[:size].reshape(shape)
            value = value / n + 0.5 * self.alpha * float(np.vdot(theta64, theta64))
            grad_coef = grad_coef / n + self.alpha * theta64
            grad_intercept /= n
            if self.loss == "squared_hinge":  # the intercept penalised as liblinear's bias (see the module docstring)
                value += 0.5 * self.alpha * float(np.vdot(theta[size:], theta[size:]))
                grad_intercept += self.alpha * theta[size:]
            return value, np.concatenate([grad_coef.ravel(), grad_intercept])

        start = np.concatenate([self.coef_.ravel(), self.intercept_]).astype(np.float64)
        result = minimize(objective, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": int(self.polish), "ftol": POLISH_TOL, "gtol": 0.0})
        self.coef_ = result.x[:size].reshape(shape).astype(np.float32)
        self.intercept_ = result.x[size:].astype(np.float32)
        self.objective_ = float(result.fun)
        self.polish_iter_ = int(result.nit)
        return self

    def partial_fit(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray | None = None) -> MinibatchLinearClassifier:
        """Minibatch steps over *X* in its order (shuffle it first); call :meth:`end_epoch` after each pass."""
        X = self._rows(X)
        if not hasattr(self, "coef_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self._start(X.shape[1], np.asarray(classes))
        labels = np.searchsorted(self.classes_, y)
        size = self.batch_size or MAX_BATCH
        rows, targets = self._adam.source(X, labels, whole=True)
        with self._threads(size, X.shape[1]):
            for start in range(0, X.shape[0], size):
                self._step(rows[start : start + size], targets[start : start + size])
        self._adam.export(self.coef_, self.intercept_)
        return self

    def end_epoch(self) -> bool:
        """Close a pass over the training rows: halve the step on a plateau; return whether the fit has converged."""
        if self._seen == 0:
            return self.converged_
        objective = (self._adam.take_loss() / self._seen
                     + 0.5 * self.alpha * self._adam.squared_norm(self.loss == "squared_hinge"))
        if self._t - self._epoch_start >= ANNEAL_STEPS or objective > self._best * (1.0 - self.tol):
            self._step_size /= 2.0
            self._halvings += 1
        self._best = min(self._best, objective)
        self._seen = 0
        self._epoch_start = self._t
        self.n_iter_ += 1
        self.objective_ = objective
        self.converged_ = self._halvings >= HALVINGS
        steps = self._t - self._sums_from
        if self.converged_ and steps:
            # The mean of the last epoch's iterates (Polyak-Ruppert averaging): less minibatch noise than the last one.
            self._adam.average(steps)
        self._adam.reset_sums()
        self._adam.export(self.coef_, self.intercept_)
        self._sums_from = self._t
        if not self.converged_ and self.n_iter_ >= self.max_iter:
            warnings.warn(
                f"stopped after max_iter={self.max_iter} epochs before the objective settled", ConvergenceWarning,
                stacklevel=2,
            )
        return self.converged_

    def _rows(self, X: Any) -> np.ndarray:
        X = np.asarray(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float32)
        return X

    def _start(self, n_features: int, classes: np.ndarray) -> None:
        shape = (classes.size, n_features)
        warm = (self.warm_start and hasattr(self, "coef_") and self.coef_.shape == shape
                and np.array_equal(self.classes_, classes))
        self.classes_ = classes
        self.n_features_in_ = n_features
        self.coef_ = np.array(self.coef_, dtype=np.float32) if warm else np.zeros(shape, dtype=np.float32)
        self.intercept_ = (np.array(self.intercept_, dtype=np.float32) if warm
                           else np.zeros(classes.size, dtype=np.float32))
        if self._backend() == "torch":
            from ._torch_linear import TorchAdam

            self._adam = TorchAdam(classes.size, n_features, self.device, (_BETA1, _BETA2), _EPS)
            if warm:
                self._adam.load(self.coef_, self.intercept_)
        else:
            self._adam = NumpyAdam(self.coef_, self.intercept_)
        self._t = 0
        self._epoch_start = 0
        self._sums_from = 0
        self._step_size = float(self.eta0)
        self._halvings = 0
        self._best = np.inf
        self._seen = 0
        self.n_iter_ = 0
        self.objective_ = float("nan")
        self.converged_ = False

    def _backend(self) -> str:
        """The backend the parameters name: see the class docstring."""
        backend = self.backend or ("numpy" if self.device == "cpu" else "torch")
        if backend not in BACKENDS:
            raise ValueError(f"The 'backend' parameter of {type(self).__name__} must be one of "
                             f"{', '.join(map(repr, BACKENDS))} or None. Got {backend!r} instead.")
        if backend == "numpy" and self.device != "cpu":
            raise ValueError(f"The 'device' parameter of {type(self).__name__} must be 'cpu' with the numpy "
                             f"backend. Got {self.device!r} instead.")
        return backend

    def _threads(self, batch: int, n_features: int) -> Any:
        """numpy's BLAS threads for the products (see :func:`_blas_threads`); torch chooses its own."""
        if isinstance(self._adam, NumpyAdam):
            return _blas_threads(batch, n_features, self.classes_.size)
        return contextlib.nullcontext()

    def _step(self, X: Any, labels: Any) -> None:
        """One Adam step on the minibatch ``X`` (rows) with class indices *labels*, by the backend."""
        n = X.shape[0]
        if n == 0:
            return
        self._seen += n
        self._t += 1
        correction = np.sqrt(1.0 - _BETA2**self._t) / (1.0 - _BETA1**self._t)
        self._adam.step(X, labels, self.loss, self.alpha, self._step_size * correction)

    def __getstate__(self) -> dict[str, Any]:
        # A saved classifier keeps what predicts, not the optimiser's state (four more copies of coef_, and on a
        # GPU torch tensors: a pickle or artifact of a torch fit holds numpy arrays only).
        return {k: v for k, v in super().__getstate__().items() if k not in _TRAINING_STATE}

    # ------------------------------------------------------------------ prediction

    def _has_proba(self) -> bool:
        return self.loss == "log_loss"

    @available_if(_has_proba)
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of the decision function (``log_loss`` only)."""
        check_is_fitted(self)
        scores = np.asarray(self.decision_function(X), dtype=np.float64)
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores


def _batch_loss(X: np.ndarray, labels: np.ndarray, coef: np.ndarray, intercept: np.ndarray, loss: str
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """Summed loss of rows *X* and its gradients in ``coef`` and ``intercept`` (float32 products, float64 sums)."""
    rows = np.arange(X.shape[0])
    scores = X @ coef.T
    scores += intercept
    if loss == "log_loss":
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        total = -float(np.log(np.maximum(scores[rows, labels], 1e-30)).sum(dtype=np.float64))
        scores[rows, labels] -= 1.0
        grad = scores
    else:  # the numpy backend's squared hinge
        scores[rows, labels] *= -1.0
        margin = np.maximum(scores + 1.0, 0.0)
        total = float(np.vdot(margin.astype(np.float64), margin))
        margin *= 2.0
        margin[rows, labels] *= -1.0
        grad = margin
    return total, (grad.T @ X).astype(np.float64), grad.sum(axis=0, dtype=np.float64)


class NumpyAdam:
    """Adam's state of ``(coef, intercept)`` in numpy arrays, and its step: the default backend.

    Parameters
    ----------
    coef : ndarray of shape (n_classes, n_features), float32
    intercept : ndarray of shape (n_classes,), float32
        The estimator's own ``coef_`` and ``intercept_``, updated in place
        (so :meth:`export` has nothing to copy).
    """

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.coef, self.intercept = coef, intercept
        self.moments = [np.zeros_like(coef), np.zeros_like(coef), np.zeros_like(intercept), np.zeros_like(intercept)]
        self.sums = [np.zeros_like(coef), np.zeros_like(intercept)]  # of this epoch's iterates
        self.loss_sum = 0.0

    def source(self, X: np.ndarray, labels: np.ndarray, *, whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """What minibatches are taken from: *X* and *labels* themselves (gathered rows, never a copy of *X*)."""
        return X, labels

    def index(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def step(self, X: np.ndarray, labels: np.ndarray, loss: str, alpha: float, step: float) -> None:
        """One Adam step of size *step* (bias-corrected) on the minibatch ``X`` with class indices *labels*."""
        n = X.shape[0]
        scores = X @ self.coef.T.astype(X.dtype, copy=False)
        scores += self.intercept
        rows = np.arange(n)
        if loss == "log_loss":
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
            self.loss_sum -= float(np.log(np.maximum(scores[rows, labels], 1e-30)).sum())
            scores[rows, labels] -= 1.0
            grad_scores = scores
        else:  # one-vs-rest squared hinge: targets +1 for the row's class, -1 for the others
            scores[rows, labels] *= -1.0
            margin = np.maximum(scores + 1.0, 0.0)  # 1 - t s, with t s made -s above
            self.loss_sum += float(np.vdot(margin, margin))
            margin *= 2.0
            margin[rows, labels] *= -1.0
            grad_scores = margin
        grad_scores /= n
        grad_coef = (grad_scores.T @ X).astype(np.float32, copy=False)
        grad_coef += np.float32(alpha) * self.coef
        grad_intercept = grad_scores.sum(axis=0, dtype=np.float32)
        if loss == "squared_hinge":  # liblinear's bias: a weight on a constant column of ones, penalised alike
            grad_intercept += np.float32(alpha) * self.intercept
        step = np.float32(step)
        for param, grad, first, second in ((self.coef, grad_coef, *self.moments[:2]),
                                           (self.intercept, grad_intercept, *self.moments[2:])):
            first *= _BETA1
            first += (1.0 - _BETA1) * grad
            second *= _BETA2
            np.square(grad, out=grad)
            second += (1.0 - _BETA2) * grad
            np.sqrt(second, out=grad)
            grad += _EPS
            np.divide(first, grad, out=grad)
            grad *= step
            param -= grad
        self.sums[0] += self.coef
        self.sums[1] += self.intercept

    def take_loss(self) -> float:
        """The loss summed over the steps since the last call, and reset it."""
        total, self.loss_sum = self.loss_sum, 0.0
        return total

    def squared_norm(self, intercept: bool = False) -> float:
        """``|coef|^2``, plus ``|intercept|^2`` when it is penalised."""
        return float(np.vdot(self.coef, self.coef)) + (float(np.vdot(self.intercept, self.intercept)) if intercept
                                                       else 0.0)

    def average(self, steps: int) -> None:
        """The coefficients become the mean of the iterates summed since :meth:`reset_sums`."""
        np.divide(self.sums[0], steps, out=self.coef)
        np.divide(self.sums[1], steps, out=self.intercept)

    def reset_sums(self) -> None:
        for total in self.sums:
            total[...] = 0.0

    def export(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Nothing to copy: *coef* and *intercept* are this backend's own arrays."""


def _blas_threads(batch: int, n_features: int, n_classes: int) -> Any:
    """One BLAS thread for small products (threads cost more than they save there), else the default."""
    return threadpool_limits(limits=1, user_api="blas") if batch * n_features * n_classes < _THREADED_PRODUCT \
        else threadpool_limits(limits=None)
