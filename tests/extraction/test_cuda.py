"""The CUDA path of the extraction engine: device choice, pinned memory, channels_last, autocast.

Every test here needs a CUDA GPU and is skipped without one.  On a GPU they
check that the engine runs there the way ``featx.extraction.prepare_extractor`` says it does, and
that its features agree with the CPU's (exactly what a GPU can promise: cuDNN
and TF32 sum in another order, bf16/fp16 round).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_benchmark import load_benchmark


from networks import build_extractor

from featx.extraction import ExtractConfig, extract_features, load_model
from featx.extraction._device import autocast, resolve_device
from featx.extraction._folder import discover_images
from featx.extraction._loader import BatchJoiner, ImageLoader, default_workers
from featx.extraction._network import prepare_extractor
from featx.store import open_store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")

CUDA = torch.device("cuda")


def _extract(data: Path, out: Path, **overrides):
    """ResNet-18 with random weights at 64x64: small enough for a test on any GPU."""
    settings = dict(
        data=data, out=out, model="resnet18", layers=("conv2", "penultimate"), weights="none",
        image_size=64, batch_size=4, workers=2, progress=False,
        precision="fp32",  # compared with the CPU's fp32 (the tests of --precision auto ask for it)
    )
    settings.update(overrides)
    return extract_features(ExtractConfig.from_options(**settings))


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def test_auto_device_is_the_gpu():
    assert resolve_device("auto") == CUDA
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_decoding_workers_default_to_every_core_up_to_16():
    cores = len(os.sched_getaffinity(0))
    assert default_workers(CUDA) == min(16, cores)


def test_extractor_runs_channels_last_with_cudnn_autotuning():
    loaded = load_model("resnet18", weights="none", image_size=64)
    extractor, _, _ = build_extractor(loaded, ("conv2",), "avg")
    extractor = prepare_extractor(extractor, CUDA)
    conv = extractor.body.conv1.weight
    assert conv.device.type == "cuda"
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark


def test_batches_come_pinned_and_reach_the_gpu_channels_last(small_dataset):
    collection = discover_images(small_dataset)
    preprocessing = load_model("resnet18", weights="none", image_size=64).preprocessing
    loader = ImageLoader(collection, preprocessing, indices=range(len(collection)), batch_size=5, workers=2, device=CUDA)
    batches = list(loader)
    # Each batch of 5 is decoded as chunks of 3 and 2 by the two workers.
    assert [[len(chunk.indices) for chunk in chunks] for chunks in batches] == [[3, 2], [3, 2], [2]]
    for chunks in batches:
        assert all(chunk.pixels.is_pinned() for chunk in chunks)
        on_gpu = BatchJoiner(CUDA)([chunk.pixels for chunk in chunks])
        torch.cuda.synchronize()
        assert on_gpu.is_cuda
        assert on_gpu.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(on_gpu.cpu(), torch.cat([chunk.pixels for chunk in chunks]))


def test_fp32_features_on_the_gpu_match_the_cpu(small_dataset, tmp_path):
    cpu = _extract(small_dataset, tmp_path / "cpu.h5", device="cpu")
    gpu = _extract(small_dataset, tmp_path / "gpu.h5", device="cuda")
    assert cpu.rows == gpu.rows == 12
    with open_store(cpu.path) as a, open_store(gpu.path) as b:
        assert list(a.ids) == list(b.ids)
        for layer in ("conv2", "penultimate"):
            assert b.features(layer).dtype == np.float32
            # TF32 convolutions (the default on Ampere and later) keep ~3 decimal digits.
            assert _relative_error(b.features(layer), a.features(layer)) < 1e-2, layer


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_autocast_is_close_and_recorded(precision, small_dataset, tmp_path):
    cpu = _extract(small_dataset, tmp_path / "cpu.h5", device="cpu")
    half = _extract(small_dataset, tmp_path / f"{precision}.h5", device="cuda", precision=precision)
    with open_store(cpu.path) as a, open_store(half.path) as b:
        for layer in ("conv2", "penultimate"):
            assert b.layer_info(layer)["precision"] == precision
            # Pooled in float32 and stored as float32 whatever the compute precision.
            assert b.features(layer).dtype == np.float32
            assert _relative_error(b.features(layer), a.features(layer)) < 5e-2, layer


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_computes_convolutions_in_half_precision(precision, dtype):
    conv = torch.nn.Conv2d(3, 8, 3).to(CUDA)
    with torch.inference_mode(), autocast(CUDA, precision):
        assert conv(torch.randn(1, 3, 8, 8, device=CUDA)).dtype == dtype
    with torch.inference_mode(), autocast(CUDA, "fp32"):
        assert conv(torch.randn(1, 3, 8, 8, device=CUDA)).dtype == torch.float32


def test_benchmark_reports_gpu_figures(small_dataset, tmp_path):
    bench = load_benchmark()
    out = tmp_path / "bench.json"
    code = bench.main([
        "--case", "resnet18:penultimate", "--data", str(small_dataset), "--image-size", "64", "--batch-size", "4",
        "--repeats", "1", "--images", "8", "--baseline-images", "2", "--decode-images", "4",
        "--memory-sizes", "4,8", "--device", "cuda", "--precision", "bf16", "--json", str(out),
    ])
    assert code == 0
    report = json.loads(out.read_text())
    case = report["cases"][0]
    assert report["machine"]["gpu"] == torch.cuda.get_device_name(0)
    assert case["combined_images_per_second"] == min(case["forward_images_per_second"], case["decode_images_per_second"])
    assert case["cuda_peak_bytes"] > 0
    assert all(m["cuda_peak_bytes"] > 0 for m in case["memory"].values())


def test_auto_precision_follows_the_gpus_capability_and_is_recorded(small_dataset, tmp_path):
    major, minor = torch.cuda.get_device_capability(CUDA)
    expected = "bf16" if (major, minor) >= (8, 0) else "fp16"
    result = _extract(small_dataset, tmp_path / "auto.h5", device="cuda", precision="auto")
    assert result.recipe.layers[0].precision == expected
    assert result.precision_reason.startswith(f"auto: CUDA capability {major}.{minor}")
    with open_store(result.path) as store:
        assert {store.layer_info(name)["precision"] for name in store.layers} == {expected}


def test_a_compiled_network_gives_the_eager_features_up_to_rounding(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    eager = _extract(small_dataset, tmp_path / "eager.h5", device="cuda", compile="off")
    compiled = _extract(small_dataset, tmp_path / "compiled.h5", device="cuda", compile="on")
    assert list((tmp_path / "cache" / "inductor").iterdir())  # the graph is cached on disk
    with open_store(eager.path) as a, open_store(compiled.path) as b:
        assert int(b.meta["forward_compiled"]) == 1 and "forward_compiled" not in a.meta
        for layer in ("conv2", "penultimate"):
            assert _relative_error(b.features(layer), a.features(layer)) < 1e-2, layer
