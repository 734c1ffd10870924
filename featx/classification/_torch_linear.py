"""The minibatch linear models' Adam on torch tensors (:mod:`._linear`'s algorithm on a GPU), and the kNN top-k.

:class:`~._linear.MinibatchLinearClassifier` keeps the epochs, the step
halving, the averaging and the minibatch order; what it hands to its backend
is the optimiser's state and one Adam step.  :class:`TorchAdam` is that
backend on a torch device: the same arithmetic as ``_linear``'s numpy
backend, step for step, on float32 tensors, so that a fit on ``cuda`` follows
the CPU fit of the same seed (up to float32 rounding in another order).

The training matrix goes to the device once when it fits
:data:`DEVICE_SHARE` of the device memory free at the start of the fit (an
in-memory fit), else minibatch by minibatch; a streamed block
(``partial_fit``) is moved once.  Nothing waits for the device inside an
epoch: the loss is summed on the device and read once per epoch.

This is the only module of :mod:`featx.classification` that may import torch,
and only inside functions (``tests/test_architecture.py``): a fit on the CPU
never loads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEVICE_SHARE", "TorchAdam", "knn_device_matrix", "knn_top_k"]

#: Most of the free device memory the training matrix may take to be moved there whole: the rest is for the
#: minibatch products and for whatever else runs on the device.
DEVICE_SHARE = 0.5


class TorchAdam:
    """Adam's state of ``(coef, intercept)`` on a torch device, and its step (the numpy backend's, on tensors).

    Parameters
    ----------
    n_classes, n_features : int
    device : str
        A torch device: ``'cuda'``, ``'cuda:N'``, or ``'cpu'`` (torch's CPU
        kernels: what the tests compare with the numpy backend).
    betas : tuple of float
        Adam's ``beta1``, ``beta2``.
    eps : float
        Adam's epsilon.
    """

    def __init__(self, n_classes: int, n_features: int, device: str, betas: tuple[float, float], eps: float) -> None:
        import torch

        self.device = torch.device(device)
        self.betas, self.eps = betas, eps

        def zeros(*shape: int) -> Any:
            return torch.zeros(shape, dtype=torch.float32, device=self.device)

        self.coef, self.intercept = zeros(n_classes, n_features), zeros(n_classes)
        self.moments = [zeros(n_classes, n_features), zeros(n_classes, n_features), zeros(n_classes),
                        zeros(n_classes)]
        self.sums = [zeros(n_classes, n_features), zeros(n_classes)]  # of this epoch's iterates
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._on_device = False
        self._arange = torch.arange(0, device=self.device)

    def load(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Start from these coefficients (a warm start) instead of zeros."""
        import torch

        self.coef.copy_(torch.from_numpy(coef))
        self.intercept.copy_(torch.from_numpy(intercept))

    # ------------------------------------------------------------------ the rows

    def source(self, X: np.ndarray, labels: np.ndarray, *, whole: bool = False) -> tuple[Any, Any]:
        """What minibatches are taken from: *X* and *labels* on the device, or left as they are.

        On the device when *whole* (a streamed block) or when *X* as float32
        takes at most :data:`DEVICE_SHARE` of the free device memory; else
        :meth:`step` moves each minibatch.
        """
        import torch

        self._on_device = whole or self._fits_on_device(X.shape[0] * X.shape[1] * 4)
        if not self._on_device:
            return X, labels
        return self._tensor(X), torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)

    def _fits_on_device(self, nbytes: int) -> bool:
        """*nbytes* take at most :data:`DEVICE_SHARE` of the free device memory (on the CPU: no copy is made)."""
        import torch

        if self.device.type != "cuda":
            return True  # torch.from_numpy shares the array's memory
        free, _ = torch.cuda.mem_get_info(self.device)
        return nbytes <= DEVICE_SHARE * free

    def index(self, rows: np.ndarray) -> Any:
        """Row indices in the type :meth:`source` returned (a device tensor for rows on the device)."""
        import torch

        return torch.from_numpy(rows).to(self.device) if self._on_device else rows

    def _tensor(self, X: Any) -> Any:
        import torch

        if isinstance(X, torch.Tensor):
            return X
        return torch.from_numpy(np.asarray(X)).to(self.device, dtype=torch.float32, non_blocking=True)

    # ------------------------------------------------------------------ one step

    def step(self, X: Any, labels: Any, loss: str, alpha: float, step: float) -> None:
        """One Adam step of size *step* (bias-corrected) on the minibatch ``X`` with class indices *labels*."""
        import torch

        X = self._tensor(X)
        labels = torch.as_tensor(labels, device=self.device)
        n = X.shape[0]
        if self._arange.numel() < n:
            self._arange = torch.arange(n, device=self.device)
        rows = self._arange[:n]
        scores = torch.addmm(self.intercept, X, self.coef.T)
        if loss == "log_loss":
            scores -= scores.amax(dim=1, keepdim=True)
            scores.exp_()
            scores /= scores.sum(dim=1, keepdim=True)
            self.loss_sum -= scores[rows, labels].clamp_min(1e-30).log().sum()
            scores[rows, labels] -= 1.0
            grad_scores = scores
        else:  # one-vs-rest squared hinge: targets +1 for the row's class, -1 for the others
            scores[rows, labels] *= -1.0
            grad_scores = (scores + 1.0).clamp_min_(0.0)  # 1 - t s, with t s made -s above
            flat = grad_scores.ravel()
            self.loss_sum += torch.dot(flat, flat)
            grad_scores *= 2.0
            grad_scores[rows, labels] *= -1.0
        grad_scores /= n
        grad_coef = grad_scores.T @ X
        grad_coef.add_(self.coef, alpha=alpha)
        grad_intercept = grad_scores.sum(dim=0)
        if loss == "squared_hinge":  # the bias penalised as liblinear's (see _linear)
            grad_intercept.add_(self.intercept, alpha=alpha)
        beta1, beta2 = self.betas
        for param, grad, first, second in ((self.coef, grad_coef, *self.moments[:2]),
                                           (self.intercept, grad_intercept, *self.moments[2:])):
            first.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            param.addcdiv_(first, second.sqrt().add_(self.eps), value=-step)
        self.sums[0] += self.coef
        self.sums[1] += self.intercept

    # ------------------------------------------------------------------ the end of an epoch

    def take_loss(self) -> float:
        """The loss summed over the steps since the last call (one wait for the device), and reset it."""
        total = float(self.loss_sum)
        self.loss_sum.zero_()
        return total

    def squared_norm(self, intercept: bool = False) -> float:
        """``|coef|^2``, plus ``|intercept|^2`` when it is penalised."""
        import torch

        flat = self.coef.ravel()
        total = float(torch.dot(flat, flat))
        return total + (float(torch.dot(self.intercept, self.intercept)) if intercept else 0.0)

    def average(self, steps: int) -> None:
        """The coefficients become the mean of the iterates summed since :meth:`reset_sums`."""
        import torch

        torch.div(self.sums[0], steps, out=self.coef)
        torch.div(self.sums[1], steps, out=self.intercept)

    def reset_sums(self) -> None:
        for total in self.sums:
            total.zero_()

    def export(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Copy the coefficients into the estimator's float32 numpy ``coef_`` and ``intercept_``."""
        coef[...] = self.coef.cpu().numpy()
        intercept[...] = self.intercept.cpu().numpy()


def knn_device_matrix(train: np.ndarray, device: str) -> Any:
    """*train* as a tensor on *device* when it takes at most :data:`DEVICE_SHARE` of its free memory, else None."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and train.nbytes > DEVICE_SHARE * torch.cuda.mem_get_info(dev)[0]:
        return None
    return torch.from_numpy(train).to(dev)


def knn_top_k(queries: np.ndarray, train: Any, k: int, device: str, block_rows: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`._knn.top_k_numpy` on a torch device: the *k* highest ``queries @ train.T`` and their rows.

    The kNN probe's kernel (:mod:`._knn`), here because this is the package's
    one torch module.  *train* is a numpy matrix, moved block by block (at
    most *block_rows* rows on the device at a time beside the running top-k:
    device memory bounded as on the CPU), or already a device tensor
    (:func:`knn_device_matrix`).
    """
    import torch

    dev = torch.device(device)
    q = torch.from_numpy(queries).to(dev)
    best = torch.full((q.shape[0], 0), float("-inf"), device=dev)
    where = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=dev)
    for start in range(0, train.shape[0], block_rows):
        block = train[start : start + block_rows]
        block = block if isinstance(block, torch.Tensor) else torch.from_numpy(block).to(dev, non_blocking=True)
        sims = torch.cat([best, q @ block.T], dim=1)
        rows = torch.cat([where, torch.arange(start, start + block.shape[0], device=dev).expand(q.shape[0], -1)], 1)
        best, keep = sims.topk(min(k, sims.shape[1]), dim=1)
        where = rows.gather(1, keep)
    return best.cpu().numpy(), where.cpu().numpy()
