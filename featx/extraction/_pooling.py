"""Pooling of layer outputs into one feature vector per image.

Convolutional outputs are ``(N, C, H, W)``; transformer token outputs are
``(N, L, D)``.  ``avg`` and ``max`` reduce the spatial (or token) axes, ``flatten``
keeps everything, ``avgmax`` concatenates ``avg`` and ``max``.  Outputs that are
already ``(N, D)`` are stored as they are (pool ``'none'``).

The registry imports no torch: the functions use the methods of the tensors
they are given, so the command line can list the names without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["POOLS", "pool_features", "effective_pool"]


def _reduce_axes(x: torch.Tensor) -> tuple[int, ...]:
    # (N, C, H, W): spatial axes; (N, L, D): the token axis.
    return tuple(range(2, x.ndim)) if x.ndim == 4 else (1,)


def _avg(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=_reduce_axes(x))


def _max(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=_reduce_axes(x))


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def _avgmax(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.cat([_avg(x), _max(x)], dim=1)


POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "avg": _avg,
    "max": _max,
    "flatten": _flatten,
    "avgmax": _avgmax,
}


def effective_pool(pool: str, ndim: int) -> str:
    """The pooling actually applied to an output with *ndim* dims (batch included).

    Parameters
    ----------
    pool : str
        The pooling asked for, one of :data:`POOLS`.
    ndim : int
        Dimensions of the layer's output, the batch one included.

    Returns
    -------
    str
        *pool* for outputs with spatial or token axes, ``'none'`` for ``(N, D)`` outputs.
    """
    return pool if ndim > 2 else "none"


def pool_features(x: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool a batch of layer outputs to ``(N, D)`` float32.

    Parameters
    ----------
    x : Tensor, (N, ...)
        A layer's output for a batch.
    pool : str
        One of :data:`POOLS`, or ``'none'``; see :func:`effective_pool`.
    """
    x = x.float()  # pool in float32 even when the network ran in bf16/fp16
    if effective_pool(pool, x.ndim) == "none":
        return x.reshape(x.shape[0], -1)
    return POOLS[pool](x)
