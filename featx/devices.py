"""Compute devices: the names ``--device`` takes (``auto``, ``cpu``, ``cuda``, ``cuda:N``), and the GPUs present.

Both sides use it: extraction turns the name it resolves into a
``torch.device`` and asks torch how many GPUs it sees; classification asks the
CUDA driver (:func:`cuda_device_count`) and whether an installed torch was
built with CUDA (:func:`torch_has_cuda`), both without importing torch, which
would cost seconds and tie the classification side to the extraction side's
dependencies.  This module imports nothing heavy.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from .errors import DeviceError, message, option

__all__ = [
    "DEVICE_NAMES",
    "parse_device",
    "resolve_device",
    "cuda_device_count",
    "torch_has_cuda",
    "BF16_CPU_FLAGS",
    "cpu_flags",
    "native_precision",
]

#: What ``--device`` accepts, in words.
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(?::(\d+))?")
_NO_GPU = "the CUDA driver sees no GPU on this machine"


def parse_device(name: Any) -> tuple[str, int | None]:
    """``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` -> ``(kind, index)``, asking nothing of the machine.

    Returns
    -------
    kind : {'auto', 'cpu', 'cuda'}
    index : int or None
        ``N`` of ``cuda:N``.

    Raises
    ------
    DeviceError
        Not one of the names.
    """
    if name in ("auto", "cpu"):
        return name, None
    match = _CUDA.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise DeviceError(message(option("device"), allowed=DEVICE_NAMES, got=name))
    return "cuda", None if match.group(1) is None else int(match.group(1))


def resolve_device(name: Any, *, gpus: Callable[[], int] | None = None, no_gpu: str = _NO_GPU) -> str:
    """The device *name* means on this machine: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.

    ``auto`` is ``'cuda'`` when a GPU is present, else ``'cpu'``; a GPU the
    machine lacks is refused.

    Parameters
    ----------
    name : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    gpus : callable, optional
        ``() -> int``: the GPUs present, asked only when *name* is not ``cpu``;
        by default the CUDA driver's count (:func:`cuda_device_count`).
    no_gpu : str
        Why no GPU is present, in words: the start of the hint when one is asked for.

    Raises
    ------
    DeviceError
        Not a device name, or a GPU this machine does not have.
    """
    kind, index = parse_device(name)
    if kind == "cpu":
        return "cpu"
    count = (gpus or cuda_device_count)()
    if kind == "auto":
        return "cuda" if count > 0 else "cpu"
    if count == 0:
        raise DeviceError(
            message(
                f"device '{name}' is not available",
                hint=f"{no_gpu}; use {option('device', 'cpu')} or {option('device', 'auto')}",
            )
        )
    if index is not None and index >= count:
        raise DeviceError(
            message(
                f"device '{name}' is not available",
                hint=f"this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}",
            )
        )
    return name


@functools.cache
def cuda_device_count() -> int:
    """The GPUs the CUDA driver sees (``cuDeviceGetCount``, as ``torch.cuda`` asks); 0 without an NVIDIA driver."""
    import ctypes
    import sys

    try:
        driver = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:  # no NVIDIA driver on this machine
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@functools.cache
def torch_has_cuda() -> bool:
    """An installed torch built with CUDA, read from its ``torch/version.py`` without importing torch."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return False
    return re.search(r"^cuda\b[^=\n]*=\s*['\"]", text, flags=re.MULTILINE) is not None


#: ``/proc/cpuinfo`` flags of a CPU that computes bf16 natively: AMX tiles
#: (Sapphire Rapids and later) or AVX-512 BF16 (Cooper Lake, Zen 4 and later);
#: oneDNN runs bf16 convolutions and matrix products on them.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``'s ``flags``); empty where there is no such file (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_precision(
    kind: str, *, flags: frozenset[str] | set[str] | None = None, capability: tuple[int, int] | None = None
) -> tuple[str, str]:
    """The fastest compute precision *kind* (``cpu`` or ``cuda``) runs natively, and why.

    The policy of ``--precision auto``: ``bf16`` on a CPU with one of
    :data:`BF16_CPU_FLAGS` and on CUDA devices of compute capability 8.0 or
    more (Ampere and later: bf16 tensor cores); ``fp16`` on older CUDA devices
    (fp16 tensor cores from 7.0, fp16 arithmetic before); ``fp32`` on every
    other CPU, where bf16 is emulated and slower than fp32.

    Parameters
    ----------
    kind : str
        ``cpu`` or ``cuda``.
    flags : set of str, optional
        The CPU's flags (default: :func:`cpu_flags`).
    capability : (int, int), optional
        The CUDA device's compute capability (needed for ``cuda``).

    Returns
    -------
    (precision, reason)
        ``('bf16', 'this CPU has amx_bf16')``, ``('fp16', 'CUDA capability 7.5 has no bf16')``, ...
    """
    if kind == "cuda":
        major, minor = capability if capability is not None else (0, 0)
        if (major, minor) >= (8, 0):
            return "bf16", f"CUDA capability {major}.{minor} computes bf16"
        return "fp16", f"CUDA capability {major}.{minor} has no bf16"
    have = cpu_flags() if flags is None else flags
    found = [flag for flag in BF16_CPU_FLAGS if flag in have]
    if found:
        return "bf16", f"this CPU has {found[0]}"
    return "fp32", "this CPU has no bf16 instructions"
