"""Where and in what precision the network runs: device names and autocast."""

from __future__ import annotations

import torch

from ..errors import DeviceError, message, option
from ._config import PRECISIONS

__all__ = ["resolve_device", "autocast"]

_DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; refuse devices this machine lacks.

    Parameters
    ----------
    name : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    DeviceError
        The name is not a device, or this machine has no such GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(message(option("device"), allowed=_DEVICES, got=name)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                message(
                    f"device '{name}' is not available",
                    hint=f"no CUDA GPU is visible to torch (torch {torch.__version__}); "
                    f"use {option('device', 'cpu')} or {option('device', 'auto')}",
                )
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                message(
                    f"device '{name}' is not available",
                    hint=f"this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}",
                )
            )
    elif device.type != "cpu":
        raise DeviceError(message(option("device"), allowed=_DEVICES, got=name))
    return device


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
