"""Gaussian naive Bayes whose prediction is two matrix products instead of a loop over classes.

scikit-learn's ``GaussianNB._joint_log_likelihood`` loops over the classes
and, for each, builds ``(X - theta) ** 2 / var``: a temporary as large as
``X`` per class, in float64: at 10^5 rows x 2,048 features x 100 classes, a
hundred passes over gigabytes.  Expanding the square,

    sum_d (x_d - t_cd)^2 / v_cd = (x^2) . (1/v_c) - 2 x . (t_c / v_c) + sum_d t_cd^2 / v_cd,

gives the same log-likelihoods from two products of ``X`` (and ``X**2``)
with the ``(features, classes)`` matrices, computed here in float64 on row
chunks of bounded size.  Fitting is scikit-learn's own (``fit`` /
``partial_fit``, exact block by block); :meth:`GaussianNaiveBayes.fit_blocks`
learns from row blocks in one pass what ``fit`` learns from the whole matrix.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sklearn.naive_bayes import GaussianNB

__all__ = ["GaussianNaiveBayes"]

# Rows of X converted to float64 at a time: 4,096 x 2,048 features is 64 MiB.
_CHUNK_BYTES = 64 << 20


class GaussianNaiveBayes(GaussianNB):
    """:class:`sklearn.naive_bayes.GaussianNB`, with its joint log-likelihood computed by matrix products.

    Same parameters, fitted attributes and results (to rounding in the last
    bits of float64) as ``GaussianNB``; see the module docstring for why.
    """

    def fit_blocks(self, blocks: Iterable[tuple[np.ndarray, np.ndarray]], classes: np.ndarray) -> GaussianNaiveBayes:
        """``partial_fit`` over ``(X, y)`` row blocks, with the variance smoothing ``fit`` would use.

        ``fit`` on the whole matrix would make one more full copy of it
        (``np.var(X, axis=0)`` for its smoothing term); block by block, the
        per-class means and variances are exact (Chan et al.'s update), but
        ``partial_fit`` takes the smoothing term from the first block alone.
        The variance of every column over all rows follows from the per-class
        counts, means and variances (the law of total variance), so the term is
        set afterwards to ``var_smoothing`` times the largest of them: what ``fit`` computes.

        Parameters
        ----------
        blocks : iterable of (ndarray (n_rows, n_features), ndarray (n_rows,))
            Normalised features and class indices.
        classes : ndarray
            Every class, as ``partial_fit`` takes them.
        """
        for X, y in blocks:
            self.partial_fit(X, y, classes=classes)
        counts = self.class_count_[:, None]
        within = self.var_ - self.epsilon_
        mean = (counts * self.theta_).sum(axis=0) / counts.sum()
        total = (counts * (within + (self.theta_ - mean) ** 2)).sum(axis=0) / counts.sum()
        self.epsilon_ = self.var_smoothing * float(total.max())
        self.var_ = within + self.epsilon_
        return self

    def _joint_log_likelihood(self, X):
        # The fitted means and variances are float32 for float32 features: products in float64.
        theta, var = np.asarray(self.theta_, dtype=np.float64), np.asarray(self.var_, dtype=np.float64)
        precision = 1.0 / var  # (classes, features)
        scaled_means = theta * precision
        constant = (
            np.log(self.class_prior_)
            - 0.5 * np.sum(np.log(2.0 * np.pi * var), axis=1)
            - 0.5 * np.sum(theta * scaled_means, axis=1)
        )
        out = np.empty((X.shape[0], precision.shape[0]), dtype=np.float64)
        step = max(1, _CHUNK_BYTES // (8 * max(X.shape[1], 1)))
        for start in range(0, X.shape[0], step):
            chunk = np.asarray(X[start : start + step], dtype=np.float64)
            block = out[start : start + step]
            np.matmul(chunk, scaled_means.T, out=block)
            np.square(chunk, out=chunk)
            block -= 0.5 * (chunk @ precision.T)
            block += constant
        return out
