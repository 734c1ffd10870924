"""The kNN probe of self-supervised and foundation-model features: DINO's weighted vote.

Rule (Caron et al. 2021, DINO's ``eval_knn.py``; DINOv2 the same): the
training and query rows are L2-normalised, a query's ``k`` nearest training
rows are those of highest cosine similarity ``s`` (a dot product of unit
rows), each votes for its class with weight ``exp(s / T)``, and a class's
score is the sum of its votes.  :meth:`KNNVote.predict_proba` is the scores
normalised to sum to one, :meth:`KNNVote.predict` the class of the highest.
(The weights are computed as ``exp((s - s_max) / T)``, which the normalisation
leaves unchanged and which cannot overflow for a small ``T``.)

Exact, never approximate: on the CPU the training matrix is visited in blocks
of :data:`TRAIN_BLOCK_ROWS` rows, and a running top-k per query is merged with
each block's similarities, so a prediction holds ``queries x block`` similarities
at a time whatever the training rows (10^6 rows cost the same memory as
10^4).  On a GPU (``device='cuda'``) the same blocks go through torch
(:func:`~._torch_linear.knn_top_k`, the package's one torch module).

The fitted estimator holds the normalised training matrix (float32) and the
class index of every training row: a saved classifier stores them as numpy
arrays (``.npy`` members of skops' file), never pickled.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["KNNVote", "TRAIN_BLOCK_ROWS", "QUERY_BLOCK_ROWS", "l2_normalise", "top_k_numpy"]

#: Training rows compared with the queries at a time.
TRAIN_BLOCK_ROWS = 8_192
#: Queries compared at a time: with TRAIN_BLOCK_ROWS, 32 MiB of float32 similarities (and 64 MiB of the int64
#: indices that partition them), whatever the training rows.
QUERY_BLOCK_ROWS = 1_024


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows of *X* divided by their L2 norm, in place (a zero row stays zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)).astype(X.dtype)
    norms[norms == 0] = 1
    X /= norms[:, None]
    return X


def top_k_numpy(queries: np.ndarray, train: np.ndarray, k: int, block_rows: int = TRAIN_BLOCK_ROWS
                ) -> tuple[np.ndarray, np.ndarray]:
    """The *k* highest similarities ``queries @ train.T`` of each query and their training rows (``k <= len(train)``).

    A running top-k over blocks of *block_rows* training rows: each block's
    similarities (``len(queries) x block_rows``) are reduced to their own
    top k, which are merged with the running ones; nothing larger than one
    block's similarities and their partition indices is held.

    Returns
    -------
    similarities : ndarray of float32, (n_queries, k)
    rows : ndarray of int64, (n_queries, k)
        Not sorted within a query (the vote does not depend on the order).
    """
    n = queries.shape[0]
    best = np.full((n, k), -np.inf, dtype=np.float32)
    where = np.zeros((n, k), dtype=np.int64)
    for start in range(0, train.shape[0], block_rows):
        sims = queries @ train[start : start + block_rows].T
        width = sims.shape[1]
        if width > k:  # the block's own top k: the last k after partitioning at width - k
            picked = np.argpartition(sims, width - k, axis=1)[:, width - k :]
            top = np.take_along_axis(sims, picked, axis=1)
        else:
            picked, top = np.broadcast_to(np.arange(width), (n, width)), sims
        del sims
        merged = np.concatenate([best, top], axis=1)
        rows = np.concatenate([where, picked + start], axis=1)
        keep = np.argpartition(merged, merged.shape[1] - k, axis=1)[:, merged.shape[1] - k :]
        best, where = np.take_along_axis(merged, keep, axis=1), np.take_along_axis(rows, keep, axis=1)
    return best, where


def vote(similarities: np.ndarray, neighbours: np.ndarray, n_classes: int, temperature: float) -> np.ndarray:
    """DINO's weighted vote: per class, the sum of ``exp(s / T)`` of its neighbours, normalised to sum to one.

    Parameters
    ----------
    similarities : ndarray (n_queries, k)
    neighbours : ndarray of int (n_queries, k)
        The class index of each neighbour.
    """
    s = similarities.astype(np.float64)
    weights = np.exp((s - s.max(axis=1, keepdims=True)) / temperature)
    votes = np.zeros((s.shape[0], n_classes), dtype=np.float64)
    np.add.at(votes, (np.arange(s.shape[0])[:, None], neighbours), weights)
    votes /= votes.sum(axis=1, keepdims=True)
    return votes


class KNNVote(ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine similarity, votes weighted by ``exp(similarity / T)``; see the module docstring.

    Parameters
    ----------
    k : int
        Neighbours per query (at most the training rows).
    temperature : float
        ``T`` of the vote weights.
    device : str
        ``'cpu'``, or a torch CUDA device that computes the similarities and
        the top-k (the CPU when this machine has no such device).
    copy : bool
        ``False``: :meth:`fit` normalises a float32 training matrix in place
        and keeps it (the run's own matrix: no second copy of it).

    Attributes
    ----------
    train_ : ndarray of float32, (n_train, n_features)
        The training rows, L2-normalised.
    train_labels_ : ndarray of int64, (n_train,)
        Index into :attr:`classes_` of each training row.
    classes_ : ndarray
    """

    def __init__(self, k: int = 20, temperature: float = 0.07, *, device: str = "cpu", copy: bool = True) -> None:
        self.k = k
        self.temperature = temperature
        self.device = device
        self.copy = copy

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNNVote:
        X = np.asarray(X)
        if self.copy or X.dtype != np.float32 or not X.flags.c_contiguous or not X.flags.writeable:
            X = np.array(X, dtype=np.float32, order="C")
        self.classes_, labels = np.unique(np.asarray(y), return_inverse=True)
        self.train_ = l2_normalise(X)
        self.train_labels_ = labels.astype(np.int64)
        self.n_features_in_ = X.shape[1]
        return self

    def _neighbours(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queries = l2_normalise(np.array(X, dtype=np.float32, order="C"))
        k = min(int(self.k), self.train_.shape[0])
        if self._on_gpu():
            from ._torch_linear import knn_device_matrix, knn_top_k

            if getattr(self, "_device_train", None) is None:  # moved once for every block predicted
                self._device_train = knn_device_matrix(self.train_, self.device)
            train = self.train_ if self._device_train is None else self._device_train
            sims, rows = knn_top_k(queries, train, k, self.device, TRAIN_BLOCK_ROWS)
        else:
            parts = [top_k_numpy(queries[i : i + QUERY_BLOCK_ROWS], self.train_, k)
                     for i in range(0, queries.shape[0], QUERY_BLOCK_ROWS)]
            sims = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.float32)
            rows = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), np.int64)
        return sims, rows

    def _on_gpu(self) -> bool:
        """A CUDA device was asked for and this machine's torch can use it (a saved classifier moves)."""
        if str(self.device) == "cpu":
            return False
        from .. import devices

        return devices.torch_has_cuda() and devices.cuda_device_count() > 0

    def __getstate__(self) -> dict:
        # What predicts, never a device tensor (an artifact holds numpy arrays only).
        return {k: v for k, v in super().__getstate__().items() if k != "_device_train"}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The normalised votes ``(n_queries, n_classes)``, float64."""
        check_is_fitted(self)
        sims, rows = self._neighbours(X)
        return vote(sims, self.train_labels_[rows], self.classes_.size, float(self.temperature))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
