"""featx.devices: the device names both sides read, the GPUs present, and one error text for each mistake."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from featx import devices
from featx.classification import ClassifyConfig
from featx.errors import DeviceError

NOT_A_DEVICE = "device must be auto, cpu, cuda or cuda:N; got {!r}"


@pytest.mark.parametrize(
    ("name", "parsed"),
    [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)), ("cuda:0", ("cuda", 0)),
     ("cuda:12", ("cuda", 12))],
)
def test_device_names_are_parsed_without_asking_the_machine(monkeypatch, name, parsed):
    monkeypatch.setattr(devices, "cuda_device_count", lambda: pytest.fail("the driver was asked"))
    assert devices.parse_device(name) == parsed


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "CUDA", " cuda", 0, None])
def test_a_name_that_is_not_a_device(name):
    with pytest.raises(DeviceError, match=f"^{re.escape(NOT_A_DEVICE.format(name))}$"):
        devices.parse_device(name)
    with pytest.raises(DeviceError, match=f"^{re.escape(NOT_A_DEVICE.format(name))}$"):
        devices.resolve_device(name, gpus=lambda: 1)


@pytest.mark.parametrize(
    ("name", "gpus", "resolved"),
    [("auto", 0, "cpu"), ("auto", 2, "cuda"), ("cpu", 2, "cpu"), ("cuda", 1, "cuda"), ("cuda:1", 2, "cuda:1")],
)
def test_a_name_resolves_against_the_gpus_present(name, gpus, resolved):
    assert devices.resolve_device(name, gpus=lambda: gpus) == resolved


def test_the_gpus_are_counted_only_when_a_gpu_may_be_meant():
    assert devices.resolve_device("cpu", gpus=lambda: pytest.fail("counted for cpu")) == "cpu"


def test_a_gpu_the_machine_lacks():
    with pytest.raises(DeviceError, match="^" + re.escape(
        "device 'cuda' is not available; the CUDA driver sees no GPU on this machine; use device='cpu' or "
        "device='auto'"
    ) + "$"):
        devices.resolve_device("cuda", gpus=lambda: 0)
    with pytest.raises(DeviceError, match="^" + re.escape(
        "device 'cuda:0' is not available; no GPU here; use device='cpu' or device='auto'"
    ) + "$"):
        devices.resolve_device("cuda:0", gpus=lambda: 0, no_gpu="no GPU here")
    with pytest.raises(DeviceError, match="^" + re.escape(
        "device 'cuda:2' is not available; this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"
    ) + "$"):
        devices.resolve_device("cuda:2", gpus=lambda: 2)


def test_both_sides_refuse_a_wrong_name_with_one_text():
    pytest.importorskip("torch")
    from featx.extraction import FeatureExtractor

    with pytest.raises(DeviceError) as classification:
        ClassifyConfig(features="x.h5", device="tpu")
    with pytest.raises(DeviceError) as extraction:
        FeatureExtractor(model="resnet18", weights="none", device="tpu").fit()  # before any model is loaded
    assert str(classification.value) == str(extraction.value) == NOT_A_DEVICE.format("tpu")


def test_torch_has_cuda_is_read_from_its_version_file():
    torch = pytest.importorskip("torch")
    assert devices.torch_has_cuda() == (torch.version.cuda is not None)


def test_probing_imports_no_torch():
    script = (
        "import sys\nfrom featx import devices\n"
        "count, built = devices.cuda_device_count(), devices.torch_has_cuda()\n"
        "print(type(count).__name__, type(built).__name__, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["int", "bool", "False"]
