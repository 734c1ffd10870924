"""Where and in what precision the network runs: device names and autocast."""

from __future__ import annotations

import torch

from .. import devices
from ._config import PRECISIONS

__all__ = ["resolve_device", "autocast"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU; refuse devices this machine lacks.

    The name is read by :func:`featx.devices.resolve_device`, against the GPUs torch sees.

    Parameters
    ----------
    name : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    DeviceError
        The name is not a device, or this machine has no such GPU.
    """
    resolved = devices.resolve_device(
        name,
        gpus=lambda: torch.cuda.device_count() if torch.cuda.is_available() else 0,
        no_gpu=f"no CUDA GPU is visible to torch (torch {torch.__version__})",
    )
    return torch.device(resolved)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a precision (``fp32``: disabled).

    Parameters
    ----------
    device : torch.device
    precision : str
        One of :data:`~featx.extraction.PRECISIONS`.
    """
    dtype = PRECISIONS[precision]
    return torch.autocast(
        device.type, dtype=getattr(torch, dtype) if dtype is not None else None, enabled=dtype is not None
    )
