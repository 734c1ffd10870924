"""Autotuning of the forward pass (images per pass, memory layout): candidates, cache, recording in the store, reuse."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import quick_extract

from networks import build_extractor

from featx.cli import main
from featx.errors import ConfigError, DiskFullError, StoreMismatchError
from featx.extraction import ExtractConfig, load_model
from featx.extraction._autotune import cache_dir, candidate_configs, choose_forward_config, default_forward_config, measure_candidates, recorded_forward_config
from featx.extraction._network import ForwardConfig, LAYOUTS, TruncatedNetwork, prepare_extractor, probe_layers
from featx.store import open_store, parts_dir, recorded_attrs

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a device object only: nothing here runs on a GPU


@pytest.fixture
def autotuning(monkeypatch, tmp_path):
    """Autotuning on (the suite turns it off), with a cache folder of the test's own."""
    monkeypatch.setenv("FEATX_AUTOTUNE", "1")
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _cache_files(folder: Path) -> list[Path]:
    return sorted((folder / "autotune").glob("*.json"))


def _prefer(cache_file: Path, wanted: ForwardConfig) -> None:
    """Rewrite a cached measurement so that *wanted* is by far the fastest candidate."""
    content = json.loads(cache_file.read_text())
    for candidate in content["candidates"]:
        mine = (candidate["micro_batch"], candidate["layout"]) == (wanted.micro_batch, wanted.layout)
        candidate["images_per_second"] = 1000.0 if mine else 1.0
    cache_file.write_text(json.dumps(content))


def test_forward_config_checks_its_values():
    assert ForwardConfig(4, "channels_last").attrs(CPU) == {
        "forward_micro_batch": 4, "forward_layout": "channels_last", "forward_device": "cpu",
    }
    assert ForwardConfig(1, "blocked").describe() == "1 image per pass, blocked"
    with pytest.raises(ValueError, match="micro_batch must be a positive integer; got 0"):
        ForwardConfig(0, "blocked")
    with pytest.raises(ValueError, match="layout must be blocked, channels_last, contiguous; got 'nhwc'"):
        ForwardConfig(4, "nhwc")


def test_the_configuration_checks_autotune_and_decode(tmp_path):
    assert ExtractConfig.from_options(data=tmp_path).autotune is True and ExtractConfig.from_options(data=tmp_path).decode == "auto"
    with pytest.raises(ConfigError, match="decode must be one of auto, cpu, gpu; got 'tpu'"):
        ExtractConfig.from_options(data=tmp_path, decode="tpu")
    with pytest.raises(ConfigError, match="autotune must be True or False; got 'yes'"):
        ExtractConfig.from_options(data=tmp_path, autotune="yes")


def test_candidates_are_the_default_first_then_every_size_up_to_it_in_each_layout():
    # ResNet-like cap of 13 images per pass on the CPU: 64 -> 5 slices of 13.
    configs = candidate_configs(64, 13, CPU, "fp32")
    assert configs[0] == default_forward_config(64, 13, CPU, "fp32") == ForwardConfig(13, "blocked")
    assert sorted((c.layout, c.micro_batch) for c in configs) == [
        ("blocked", 1), ("blocked", 4), ("blocked", 13),
        ("channels_last", 1), ("channels_last", 4), ("channels_last", 13),
    ]
    # bf16 on the CPU: no blocked layout (oneDNN's blocked chains are fp32 only), so the plain one is tried.
    assert {c.layout for c in candidate_configs(8, 100, CPU, "bf16")} == {"contiguous", "channels_last"}
    assert candidate_configs(8, 100, CPU, "bf16")[0] == ForwardConfig(8, "channels_last")  # bf16's default on the CPU
    # CUDA: the whole batch by default, channels_last first; no memory cap.
    gpu = candidate_configs(256, 1, CUDA, "fp16")
    assert gpu[0] == ForwardConfig(256, "channels_last")
    assert sorted({c.micro_batch for c in gpu}) == [1, 4, 16, 64, 256]
    assert {c.layout for c in gpu} == {"channels_last", "contiguous"}


def test_cache_folder_follows_featx_cache_dir_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FEATX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "featx"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative paths are ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "featx"


def test_prepared_layouts_give_the_same_features_up_to_rounding():
    loaded = load_model("resnet18", weights="none", image_size=32)
    extractor, _, _ = build_extractor(loaded, ("conv2", "penultimate"), "avg")
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for layout in ("blocked", "channels_last", "contiguous"):
        # A copy each: channels_last converts the weights in place.
        fresh = TruncatedNetwork(copy.deepcopy(loaded.module), extractor.nodes, extractor.pools, micro_batch=2)
        prepared = prepare_extractor(fresh, CPU, "fp32", layout)
        if layout == "channels_last":
            assert prepared.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            outputs[layout] = {k: v.clone() for k, v in prepared(pixels).items()}
    for layout in ("channels_last", "contiguous"):
        for name in ("conv2", "penultimate"):
            np.testing.assert_allclose(outputs[layout][name], outputs["blocked"][name], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layout must be channels_last, contiguous on cuda in fp32; got 'blocked'"):
        prepare_extractor(extractor, CUDA, "fp32", "blocked")


def test_autotuning_measures_once_then_uses_the_cache(autotuning):
    loaded = load_model("resnet18", weights="none", image_size=32)
    plan = probe_layers(loaded, ("penultimate",), "avg")
    settings = dict(
        path=autotuning / "none.h5", overwrite=False, batch_size=4, device=CPU, precision="fp32", autotune=True
    )
    first = choose_forward_config(loaded, plan, **settings)
    assert first.source == "measured" and first.seconds > 0
    assert set(first.images_per_second) == set(candidate_configs(4, plan.max_images, CPU, "fp32"))
    assert all(speed > 0 for speed in first.images_per_second.values())
    assert first.config in first.images_per_second
    [cache_file] = _cache_files(autotuning)
    assert first.cache_file == cache_file
    content = json.loads(cache_file.read_text())
    assert content["key"]["model"] == "resnet18" and content["key"]["image_size"] == 32
    assert content["key"]["threads"] == torch.get_num_threads() and content["key"]["precision"] == "fp32"
    assert content["chosen"] == {"micro_batch": first.config.micro_batch, "layout": first.config.layout}

    _prefer(cache_file, ForwardConfig(1, "channels_last"))
    again = choose_forward_config(loaded, plan, **settings)
    assert again.source == "cached" and again.config == ForwardConfig(1, "channels_last")
    assert "autotuned earlier" in again.describe()
    # Another batch size is another measurement.
    assert choose_forward_config(loaded, plan, **{**settings, "batch_size": 2}).source == "measured"
    assert len(_cache_files(autotuning)) == 2
    # Out of time, a measurement keeps what it measured: the default comes first, so it always is.
    base = TruncatedNetwork(loaded.module, plan.nodes, plan.pools).eval()
    configs = candidate_configs(4, plan.max_images, CPU, "fp32")
    rushed = measure_candidates(
        base, configs, image_size=32, batch_size=4, device=CPU, precision="fp32", budget_seconds=0.0
    )
    assert list(rushed) == [configs[0]] and rushed[configs[0]] > 0


def test_the_default_stays_unless_a_candidate_is_clearly_faster(autotuning):
    loaded = load_model("resnet18", weights="none", image_size=32)
    plan = probe_layers(loaded, ("penultimate",), "avg")
    settings = dict(
        path=autotuning / "none.h5", overwrite=False, batch_size=4, device=CPU, precision="fp32", autotune=True
    )
    choose_forward_config(loaded, plan, **settings)
    [cache_file] = _cache_files(autotuning)
    default = default_forward_config(4, plan.max_images, CPU, "fp32")
    content = json.loads(cache_file.read_text())
    for candidate in content["candidates"]:
        is_default = (candidate["micro_batch"], candidate["layout"]) == (default.micro_batch, default.layout)
        candidate["images_per_second"] = 100.0 if is_default else 102.0  # 2%: within the noise
    cache_file.write_text(json.dumps(content))
    assert choose_forward_config(loaded, plan, **settings).config == default
    content["candidates"][-1]["images_per_second"] = 110.0
    cache_file.write_text(json.dumps(content))
    last = content["candidates"][-1]
    assert choose_forward_config(loaded, plan, **settings).config == ForwardConfig(last["micro_batch"], last["layout"])


def test_autotuning_off_gives_the_default_and_a_damaged_cache_is_measured_again(autotuning, monkeypatch):
    loaded = load_model("resnet18", weights="none", image_size=32)
    plan = probe_layers(loaded, ("penultimate",), "avg")
    settings = dict(path=autotuning / "none.h5", overwrite=False, batch_size=4, device=CPU, precision="fp32")
    off = choose_forward_config(loaded, plan, **settings, autotune=False)
    assert off.source == "default" and off.config == ForwardConfig(4, "blocked")
    assert not _cache_files(autotuning)
    monkeypatch.setenv("FEATX_AUTOTUNE", "0")
    assert choose_forward_config(loaded, plan, **settings, autotune=True).source == "default"
    monkeypatch.setenv("FEATX_AUTOTUNE", "1")
    choose_forward_config(loaded, plan, **settings, autotune=True)
    [cache_file] = _cache_files(autotuning)
    cache_file.write_text("{not json")
    assert choose_forward_config(loaded, plan, **settings, autotune=True).source == "measured"


def test_the_choice_is_recorded_in_the_store_and_reused_when_the_run_resumes(
    autotuning, synthetic_dataset, tmp_path, monkeypatch
):
    first_choice, second_choice = ForwardConfig(1, "channels_last"), ForwardConfig(4, "blocked")
    # fp32: the cached measurement below is fp32's (precision is part of its key).
    settings = dict(layers=("penultimate",), batch_size=4, checkpoint_seconds=0, image_size=32, precision="fp32")
    # A measurement as the engine makes it; the cache is then made to prefer first_choice.
    loaded = load_model("resnet18", weights="none", image_size=32)
    choose_forward_config(
        loaded, probe_layers(loaded, ("penultimate",), "avg"), path=tmp_path / "none.h5", overwrite=False,
        batch_size=4, device=CPU, precision="fp32", autotune=True,
    )
    [cache_file] = _cache_files(autotuning)
    _prefer(cache_file, first_choice)
    whole = quick_extract(synthetic_dataset, tmp_path / "whole.h5", **settings)
    assert recorded_attrs(whole.path, ForwardConfig.ATTRS) == first_choice.attrs(CPU)

    forward = TruncatedNetwork.forward
    calls = []

    def interrupted_at_second_batch(self, pixels):
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(self, pixels)

    path = tmp_path / "resumed.h5"
    monkeypatch.setattr(TruncatedNetwork, "forward", interrupted_at_second_batch)
    with pytest.raises(KeyboardInterrupt):
        quick_extract(synthetic_dataset, path, **settings)
    monkeypatch.undo()
    monkeypatch.setenv("FEATX_AUTOTUNE", "1")
    monkeypatch.setenv("FEATX_CACHE_DIR", str(autotuning))
    # The unfinished store (an index over its parts) says how its rows were computed ...
    assert recorded_forward_config(path, CPU, "fp32") == first_choice
    with open_store(path) as unfinished:
        assert not unfinished.complete and unfinished.meta["forward_layout"] == "channels_last"
    # ... and so does a part file alone (a run killed before it wrote the index).
    moved = tmp_path / "moved.h5"
    parts_dir(path).rename(parts_dir(moved))
    assert recorded_forward_config(moved, CPU, "fp32") == first_choice
    parts_dir(moved).rename(parts_dir(path))
    # The machine now prefers another configuration: the resumed run keeps the store's.
    _prefer(cache_file, second_choice)
    resumed = quick_extract(synthetic_dataset, path, **settings)
    assert resumed.images == whole.images - 4  # the first batch was kept
    with open_store(path) as a, open_store(whole.path) as b:
        assert a.meta["forward_micro_batch"] == 1 and a.meta["forward_layout"] == "channels_last"
        np.testing.assert_array_equal(a.features("penultimate"), b.features("penultimate"))
    # Overwriting a store forgets what it recorded: the machine's current choice is used.
    quick_extract(synthetic_dataset, path, **settings, overwrite=True)
    assert recorded_attrs(path, ForwardConfig.ATTRS) == second_choice.attrs(CPU)


def test_no_autotune_on_the_command_line_records_the_default_and_old_stores_run_it(
    autotuning, synthetic_dataset, tmp_path, capsys
):
    out = tmp_path / "cli.h5"
    code = main([
        "extract", "--data", str(synthetic_dataset), "--model", "resnet18", "--image-size", "32", "--weights", "none",
        "--layer", "penultimate", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(out),
        "--no-progress", "--no-autotune", "--decode", "cpu", "--precision", "fp32",  # fp32's default: blocked
    ])
    assert code == 0
    assert "forward pass: 4 images per pass, blocked (default; autotuning off)" in capsys.readouterr().err
    assert recorded_attrs(out, ForwardConfig.ATTRS) == ForwardConfig(4, "blocked").attrs(CPU)
    assert not _cache_files(autotuning)
    # Reused on the same kind of device only, and only where its layout runs.
    assert recorded_forward_config(out, CPU, "fp32") == ForwardConfig(4, "blocked")
    assert recorded_forward_config(out, CUDA, "fp32") is None
    assert recorded_forward_config(out, CPU, "bf16") is None  # blocked runs in fp32 only
    # A store from before the choice was recorded: nothing to reuse, the engine runs the default.
    with h5py.File(out, "r+") as f:
        for key in ForwardConfig.ATTRS:
            del f.attrs[key]
    assert recorded_attrs(out, ForwardConfig.ATTRS) == {}
    assert recorded_forward_config(out, CPU, "fp32") is None
    loaded = load_model("resnet18", weights="none", image_size=32)
    plan = probe_layers(loaded, ("penultimate",), "avg")
    settings = dict(batch_size=4, device=CPU, precision="fp32", autotune=True)
    legacy = choose_forward_config(loaded, plan, path=out, overwrite=False, **settings)
    assert legacy.source == "unrecorded" and legacy.config == ForwardConfig(4, "blocked")
    assert not _cache_files(autotuning)
    assert choose_forward_config(loaded, plan, path=out, overwrite=True, **settings).source == "measured"
    assert recorded_forward_config(tmp_path / "missing.h5", CPU, "fp32") is None
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert recorded_attrs(tmp_path / "junk.h5", ForwardConfig.ATTRS) == {}


def test_decode_gpu_without_a_gpu_is_refused_before_any_work(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "never.h5"
    code = main([
        "extract", "--data", str(synthetic_dataset), "--model", "resnet18", "--weights", "none", "--device", "cpu",
        "--decode", "gpu", "--out", str(out), "--no-progress",
    ])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: --decode gpu needs a CUDA device with nvJPEG; the network runs on cpu" in err
    assert "use --decode cpu" in err
    assert not out.exists() and not parts_dir(out).exists()
    assert "channels_last" in LAYOUTS


def test_a_timm_model_is_offered_and_records_no_blocked_layout(autotuning, synthetic_dataset, tmp_path):
    """timm bodies are no FX graphs: oneDNN's blocked rewrite does not apply, they run plain NCHW."""
    pytest.importorskip("timm")
    loaded = load_model("timm/test_resnet", weights="none", image_size=32)
    plan = probe_layers(loaded, ("penultimate",), "avg")
    settings = {"batch_size": 4, "device": CPU, "precision": "fp32"}
    choice = choose_forward_config(loaded, plan, path=tmp_path / "none.h5", overwrite=False, autotune=True, **settings)
    assert choice.source == "measured" and choice.default == ForwardConfig(4, "contiguous")
    assert {c.layout for c in choice.images_per_second} == {"contiguous", "channels_last"}
    assert choice.config.layout in ("contiguous", "channels_last")
    run = {"model": "timm/test_resnet", "layers": ("penultimate",), "batch_size": 4, "image_size": 32, "precision": "fp32"}
    tuned = quick_extract(synthetic_dataset, tmp_path / "tuned.h5", **run)
    assert recorded_attrs(tuned.path, ForwardConfig.ATTRS)["forward_layout"] in ("contiguous", "channels_last")
    default = quick_extract(synthetic_dataset, tmp_path / "default.h5", **run, autotune=False)
    assert recorded_attrs(default.path, ForwardConfig.ATTRS) == ForwardConfig(4, "contiguous").attrs(CPU)
    # A store recorded as 'blocked' by an earlier featx ran contiguous: it is resumed so.
    with h5py.File(default.path, "r+") as f:
        f.attrs["forward_layout"] = "blocked"
    layouts = ("channels_last", "contiguous")
    assert recorded_forward_config(default.path, CPU, "fp32", layouts) == ForwardConfig(4, "contiguous")
    again = choose_forward_config(loaded, plan, path=default.path, overwrite=False, autotune=True, **settings)
    assert (again.source, again.config) == ("recorded", ForwardConfig(4, "contiguous"))
    # A torchvision network still runs (and records) blocked.
    assert recorded_forward_config(default.path, CPU, "fp32") == ForwardConfig(4, "blocked")


def test_a_run_the_store_writer_refuses_is_refused_before_autotuning(
    autotuning, synthetic_dataset, tmp_path, monkeypatch
):
    """The autotuner runs only once the writer has accepted the store: a refusal costs no measurement."""
    run = {"layers": ("penultimate",), "image_size": 32}
    path = tmp_path / "seed0.h5"
    monkeypatch.setenv("FEATX_AUTOTUNE", "0")
    quick_extract(synthetic_dataset, path, **run, seed=0)
    monkeypatch.setenv("FEATX_AUTOTUNE", "1")
    timed = []

    def no_measurement(self, pixels):
        timed.append(len(pixels))
        raise AssertionError("the autotuner ran")

    monkeypatch.setattr(TruncatedNetwork, "forward", no_measurement)
    with pytest.raises(StoreMismatchError, match=r"was made with another configuration .*seed"):
        quick_extract(synthetic_dataset, path, **run, seed=1)
    # A new store (nothing recorded: this one would be measured) on a disk too full for it.
    fresh = tmp_path / "fresh.h5"
    with monkeypatch.context() as full:
        full.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1000))
        with pytest.raises(DiskFullError, match="not enough free space"):
            quick_extract(synthetic_dataset, fresh, **run)
    assert timed == [] and not _cache_files(autotuning)
    assert not fresh.exists() and not parts_dir(fresh).exists()
    # With room, the same run autotunes (the patched forward is what it times), and a failed
    # measurement leaves the store's lock free for the next run.
    with pytest.raises(AssertionError, match="the autotuner ran"):
        quick_extract(synthetic_dataset, fresh, **run)
    assert timed and not fresh.exists()
    monkeypatch.undo()  # the real forward again, and the suite's FEATX_AUTOTUNE=0
    assert quick_extract(synthetic_dataset, fresh, **run).rows == 10
