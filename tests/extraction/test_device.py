"""Where the network runs (featx.extraction._device): torch's view of the GPUs, one error text with classify."""

from __future__ import annotations

import re

import pytest
import torch

from featx.errors import DeviceError
from featx.extraction._device import resolve_device


def test_a_wrong_name_and_the_cpu():
    with pytest.raises(DeviceError, match=r"^device must be auto, cpu, cuda or cuda:N; got 'tpu'$"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_extraction_asks_torch_for_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=re.escape("this machine has 2 CUDA GPU(s), cuda:0 to cuda:1")):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="^" + re.escape(
        f"device 'cuda' is not available; no CUDA GPU is visible to torch (torch {torch.__version__}); "
        "use device='cpu' or device='auto'"
    ) + "$"):
        resolve_device("cuda")


