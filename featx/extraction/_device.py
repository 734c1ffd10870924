"""Where and in what precision the network runs: device names and autocast."""

from __future__ import annotations

import torch

from .. import devices
from ._config import PRECISIONS

__all__ = ["resolve_device", "autocast", "native_precision", "resolve_precision"]


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


def native_precision(device: torch.device) -> tuple[str, str]:
    """The precision ``auto`` resolves to on *device*, and why (:func:`featx.devices.native_precision`).

    bf16 on a CPU needs oneDNN too (torch's bf16 convolutions run through it).
    """
    if device.type == "cuda":
        return devices.native_precision("cuda", capability=tuple(torch.cuda.get_device_capability(device)))
    if device.type == "cpu":
        precision, reason = devices.native_precision("cpu")
        if precision == "bf16" and not torch.backends.mkldnn.is_available():
            return "fp32", f"{reason}, but this torch has no oneDNN"
        return precision, reason
    return "fp32", f"{device.type} runs fp32"


def resolve_precision(requested: str, device: torch.device, recorded: str | None = None) -> tuple[str, str]:
    """A requested precision made concrete for *device*: ``(precision, why)``.

    Parameters
    ----------
    requested : str
        ``auto`` or one of :data:`PRECISIONS` (returned as it is).
    device : torch.device
    recorded : str, optional
        The precision a store already records: ``auto`` resumes, updates and
        reuses it (a store's rows are all computed in one precision).
    """
    if requested != "auto":
        return requested, "asked for"
    if recorded is not None:
        return recorded, "auto: the store's"
    precision, reason = native_precision(device)
    return precision, f"auto: {reason}"


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
