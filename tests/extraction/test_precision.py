"""The precision policy (--precision auto), --compile, and --jpeg draft (issue 23)."""

from __future__ import annotations

import copy
import io
import json

import h5py
import numpy as np
import pytest
import torch
from conftest import quick_extract
from PIL import Image

from featx import devices
from featx.errors import ConfigError
from featx.extraction import ExtractConfig, FeatureExtractor, FeatureRecipe
from featx.extraction._device import resolve_precision
from featx.extraction._compile import FIRST_COMPILE_SECONDS, decide_compile
from featx.extraction._images import decode_image, draft_decoding
from featx.store import open_store

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


# -- the policy ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"sse4_2", "avx512f", "amx_bf16", "amx_tile"}, ("bf16", "this CPU has amx_bf16")),
        ({"avx512f", "avx512_bf16"}, ("bf16", "this CPU has avx512_bf16")),
        ({"avx2", "avx512f"}, ("fp32", "this CPU has no bf16 instructions")),
        (set(), ("fp32", "this CPU has no bf16 instructions")),
    ],
)
def test_cpu_policy_reads_the_flags(flags, expected):
    assert devices.native_precision("cpu", flags=flags) == expected


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((9, 0), ("bf16", "CUDA capability 9.0 computes bf16")),
        ((8, 0), ("bf16", "CUDA capability 8.0 computes bf16")),
        ((7, 5), ("fp16", "CUDA capability 7.5 has no bf16")),
        ((6, 1), ("fp16", "CUDA capability 6.1 has no bf16")),
    ],
)
def test_cuda_policy_reads_the_capability(capability, expected):
    assert devices.native_precision("cuda", capability=capability) == expected


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    devices.cpu_flags.cache_clear()
    try:
        assert devices.cpu_flags() == frozenset({"fpu", "sse2", "avx512_bf16", "amx_tile"})
    finally:
        monkeypatch.undo()
        devices.cpu_flags.cache_clear()


@pytest.mark.parametrize(("capability", "expected"), [((8, 6), "bf16"), ((7, 0), "fp16")])
def test_auto_on_a_mocked_cuda_device(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", CUDA)[0] == expected
    # An explicit precision and a store's own win over the device's.
    assert resolve_precision("fp32", CUDA) == ("fp32", "asked for")
    assert resolve_precision("auto", CUDA, recorded="fp32") == ("fp32", "auto: the store's")


@pytest.mark.parametrize(("flags", "expected"), [(frozenset({"amx_bf16"}), "bf16"), (frozenset(), "fp32")])
def test_auto_on_a_mocked_cpu(monkeypatch, flags, expected):
    monkeypatch.setattr(devices, "cpu_flags", lambda: flags)
    assert resolve_precision("auto", CPU)[0] == expected
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert resolve_precision("auto", CPU)[0] == "fp32"  # bf16 convolutions need oneDNN


def test_auto_is_the_default_request_and_resolves_to_a_concrete_precision():
    request = FeatureRecipe.request("resnet18", "penultimate", weights="none")
    assert [layer.precision for layer in request.layers] == ["auto"]
    assert ExtractConfig.from_options(model="resnet18", weights="none").recipe.layers[0].precision == "auto"
    assert request.with_precision("bf16").layers[0].precision == "bf16"
    with pytest.raises(ConfigError, match=r"^--precision must be one of auto, fp32, bf16, fp16; got 'fp64'$|precision"):
        FeatureRecipe.request("resnet18", precision="fp64")


# -- stores -------------------------------------------------------------------


def _native(monkeypatch, precision):
    monkeypatch.setattr("featx.extraction._device.native_precision", lambda device: (precision, f"mocked {precision}"))


def test_an_fp32_store_resumes_updates_and_is_reused_in_fp32_under_auto(monkeypatch, synthetic_dataset, tmp_path):
    out = tmp_path / "s.h5"
    first = quick_extract(synthetic_dataset, out, precision="fp32")
    assert first.recipe.layers[0].precision == "fp32"
    _native(monkeypatch, "bf16")  # the machine now computes bf16 natively
    again = quick_extract(synthetic_dataset, out)
    assert again.up_to_date and again.recipe.layers[0].precision == "fp32"
    assert again.precision_reason == "auto: the store's"
    # An update to a grown folder computes the new rows in fp32 too.
    Image.fromarray(np.full((40, 50, 3), 7, np.uint8)).save(synthetic_dataset / "a" / "new.png")
    updated = quick_extract(synthetic_dataset, out)
    assert updated.updated and updated.recipe.layers[0].precision == "fp32"
    with open_store(out) as store:
        assert {store.layer_info(n)["precision"] for n in store.layers} == {"fp32"}
        assert {layer["precision"] for layer in json.loads(store.meta["recipe"])["layers"]} == {"fp32"}
    # A new store resolves to the machine's precision.
    fresh = quick_extract(synthetic_dataset, tmp_path / "t.h5")
    assert fresh.recipe.layers[0].precision == "bf16" and fresh.precision_reason == "auto: mocked bf16"


def test_precision_is_printed_by_extract_and_info(monkeypatch, run_cli, synthetic_dataset, tmp_path):
    _native(monkeypatch, "bf16")
    out = tmp_path / "p.h5"
    tiny = ("--model", "resnet18", "--weights", "none", "--image-size", "64", "--workers", "0", "--no-progress")
    code, stdout, err = run_cli("extract", "--data", synthetic_dataset, "--out", out, *tiny)
    assert code == 0, err
    assert stdout.splitlines()[-1] == "  computed in bf16 (auto: mocked bf16), stored as float32"
    code, stdout, err = run_cli("info", out)
    assert code == 0, err
    assert "\nprecision:      bf16\n" in stdout
    code, stdout, err = run_cli("extract", "--data", synthetic_dataset, "--out", out, *tiny)
    assert stdout == f"up to date: {out} (10 images; penultimate (512); bf16)\n"
    code, stdout, _ = run_cli("extract", "--data", synthetic_dataset, "--out", tmp_path / "q.h5", "--precision", "fp32", *tiny)
    assert stdout.splitlines()[-1] == "  computed in fp32 (asked for), stored as float32"


def test_bf16_features_are_within_cosine_0_99_of_fp32(tiny_dataset):
    """ResNet-50 penultimate on real photos, random weights: the default (bf16 here) against fp32."""
    paths = sorted(str(p) for p in tiny_dataset.rglob("*.jpg"))
    rows = {}
    for precision in ("fp32", "bf16"):
        extractor = FeatureExtractor("resnet50", weights="none", precision=precision, image_size=128, device="cpu")
        rows[precision] = extractor.fit().transform(paths)
        assert extractor.recipe_.layers[0].precision == precision
        assert rows[precision].dtype == np.float32  # pooled and stored in float32
    a, b = rows["fp32"], rows["bf16"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99, cosine
    assert not np.array_equal(a, b)  # bf16 did run


@pytest.mark.parametrize("model,layer", [("alexnet", "fc7"), ("resnet18", "penultimate")])
def test_weights_cast_once_give_autocasts_bits(model, layer, monkeypatch):
    """prepare_extractor casts convolution and linear weights to bf16 once; the features keep autocast's bits."""
    from featx.extraction._device import autocast
    from featx.extraction._network import build_network, prepare_extractor

    network = build_network(FeatureRecipe.request(model, layer, weights="none", precision="bf16", image_size=64))
    truncated = network.truncated([layer], 3)
    untouched = copy.deepcopy(truncated)  # prepare_extractor converts a network in place
    cpu = torch.device("cpu")
    cast = prepare_extractor(truncated, cpu, "bf16", "channels_last").eval()
    monkeypatch.setattr("featx.extraction._network._cast_autocast_weights", lambda extractor, dtype: None)
    plain = prepare_extractor(untouched, cpu, "bf16", "channels_last").eval()
    weighted = [m for m in cast.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert weighted and all(m.weight.dtype == torch.bfloat16 for m in weighted)
    assert all(m.weight.dtype == torch.float32 for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    batch_norms = [m for m in cast.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.weight.dtype == torch.float32 for m in batch_norms)  # left to autocast's choice
    pixels = torch.randn(5, 3, 64, 64)
    with torch.inference_mode(), autocast(cpu, "bf16"):
        expected, got = plain(pixels)[layer], cast(pixels)[layer]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got, expected)


# -- --compile and --jpeg -----------------------------------------------------


def test_compile_and_jpeg_options_are_checked_parsed_and_recorded(run_cli, synthetic_dataset, tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"^compile must be one of auto, on, off; got 'yes'$"):
        ExtractConfig.from_options(model="resnet18", weights="none", compile="yes")
    with pytest.raises(ConfigError, match=r"^jpeg must be one of exact, draft; got 'fast'$"):
        ExtractConfig.from_options(model="resnet18", weights="none", jpeg="fast")
    with pytest.raises(ConfigError, match=r"^jpeg='draft' decodes on the CPU \(libjpeg's DCT scaling\); leave out decode='gpu' or jpeg='draft'$"):
        ExtractConfig.from_options(model="resnet18", weights="none", jpeg="draft", decode="gpu")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("extract", "--data", synthetic_dataset, "--compile", "sometimes")
    assert exit_info.value.code == 2
    out = tmp_path / "d.h5"
    tiny = ("--model", "resnet18", "--weights", "none", "--image-size", "64", "--workers", "0", "--no-progress")
    code, _, err = run_cli("extract", "--data", tiny_dataset, "--out", out, "--jpeg", "draft", "--compile", "off", *tiny)
    assert code == 0, err
    assert "network: eager (--compile off)" in err
    with h5py.File(out, "r") as f:
        assert f.attrs["jpeg"] == "draft" and "forward_compiled" not in f.attrs  # eager
        assert json.loads(f.attrs["recipe"])["preprocessing"]["jpeg"] == "draft"
    code, stdout, _ = run_cli("info", out)
    assert ", JPEG draft decode\n" in stdout
    # The decode is the store's identity: exact pixels are another store.
    code, _, err = run_cli("extract", "--data", tiny_dataset, "--out", out, *tiny)
    assert code == 2 and "jpeg" in err and "draft" in err
    # An exact store's recipe has no jpeg key (recipes from before it existed read the same).
    exact = FeatureRecipe.request("resnet18", weights="none")
    assert "jpeg" not in exact.to_json()


def _jpeg(width, height):
    rng = np.random.default_rng(width)
    pixels = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((width, height), Image.BILINEAR).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("width", "height", "drafted"),
    # libjpeg scales by 1/2, 1/4 or 1/8: the most that keeps both sides at least the target (75).
    [(400, 300, (100, 75)), (800, 640, (100, 80)), (149, 300, None), (300, 150, (150, 75)), (120, 90, None)],
)
def test_draft_decodes_smaller_only_when_the_image_is_twice_the_target(width, height, drafted):
    data = _jpeg(width, height)
    exact = decode_image(lambda: io.BytesIO(data))
    with draft_decoding((75, 75)):
        draft = decode_image(lambda: io.BytesIO(data))
    assert exact.size == (width, height)
    if drafted is None:  # under 2x the target on a side: decoded exactly, the same pixels
        assert draft.size == exact.size and np.array_equal(np.asarray(draft), np.asarray(exact))
    else:
        assert draft.size == drafted and min(draft.size) >= 75
    # A PNG is never drafted.
    buffer = io.BytesIO()
    exact.save(buffer, format="PNG")
    with draft_decoding((75, 75)):
        png = decode_image(lambda: io.BytesIO(buffer.getvalue()))
    assert png.size == exact.size


def test_compile_auto_decides_by_the_images_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path))
    first = FIRST_COMPILE_SECONDS["cpu"]
    # 400 images at 60 images/s: ~2.5 s to save, not worth a first compile.
    small = decide_compile("auto", images=400, device=CPU, key="k", images_per_second=60.0)
    assert not small.compiled
    assert small.reason == (
        f"eager (compile auto: ~2 s saved on 400 images at 1.60x eager (assumed) <= ~{first:.0f} s to compile, "
        "not measured here yet)"
    )
    big = decide_compile("auto", images=100_000, device=CPU, key="k", images_per_second=60.0)
    assert big.compiled and big.reason.startswith("compiled (compile auto: ~625 s saved on 100,000 images at 1.60x ")
    assert decide_compile("on", images=1, device=CPU, key="k", images_per_second=None).compiled
    assert not decide_compile("off", images=10**6, device=CPU, key="k", images_per_second=None).compiled
    # A store's own choice wins under auto.
    assert decide_compile("auto", images=10**6, device=CPU, key="k", images_per_second=1.0, recorded=False).reason == (
        "eager (compile auto: as the store's rows were computed)"
    )
    # A compile time measured here (a warm cache) is the estimate; an earlier featx recorded seconds alone.
    (tmp_path / "inductor").mkdir()
    times = tmp_path / "inductor" / "compile-seconds.json"
    times.write_text(json.dumps({"k": 1.5}))
    assert decide_compile("auto", images=400, device=CPU, key="k", images_per_second=60.0).reason == (
        "compiled (compile auto: ~2 s saved on 400 images at 1.60x eager (assumed) > ~2 s to compile, measured here)"
    )
    # The compiled speed measured here replaces the assumed gain: 75 against 60 images/s is 1.25x.
    times.write_text(json.dumps({"k": {"seconds": 20.0, "images_per_second": 75.0}}))
    assert decide_compile("auto", images=6_600, device=CPU, key="k", images_per_second=60.0).reason == (
        "compiled (compile auto: ~22 s saved on 6,600 images at 1.25x eager (measured here) > ~20 s to compile, "
        "measured here)"
    )
    assert not decide_compile("auto", images=5_000, device=CPU, key="k", images_per_second=60.0).compiled
    # Where compiling did not make the network faster, auto runs it eagerly, however many images.
    times.write_text(json.dumps({"k": {"seconds": 20.0, "images_per_second": 58.0}}))
    assert decide_compile("auto", images=10**7, device=CPU, key="k", images_per_second=60.0).reason == (
        "eager (compile auto: compiled, the network ran at 58.0 images/s here, eager at 60.0)"
    )
    assert decide_compile("on", images=1, device=CPU, key="k", images_per_second=60.0).compiled


def test_compile_network_records_its_time_and_speed(monkeypatch, tmp_path):
    """A compile (here a tiny network's) records its seconds and the compiled pass's images/s for auto."""
    from featx.extraction._compile import compile_network

    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch, "compile", lambda body, **options: body)  # inductor's own work is not under test
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    extractor = torch.nn.Module()
    extractor.body, extractor.micro_batch = network, 2
    extractor.forward = lambda pixels: extractor.body(pixels)
    measured = compile_network(extractor, device=CPU, precision="fp32", image_size=16, key="tiny")
    assert measured.seconds > 0 and measured.images_per_second > 0
    recorded = json.loads((tmp_path / "inductor" / "compile-seconds.json").read_text())
    assert recorded == {"tiny": {"seconds": round(measured.seconds, 2), "images_per_second": round(measured.images_per_second, 2)}}


def test_a_cached_measurement_that_a_run_contradicts_is_dropped(tmp_path):
    from featx.extraction._autotune import ForwardChoice, review_cached_choice
    from featx.extraction._network import ForwardConfig

    config = ForwardConfig(4, "channels_last")
    cache = tmp_path / "m.json"
    cache.write_text("{}")
    choice = ForwardChoice(config, "cached", {config: 19.0}, cache_file=cache)
    assert review_cached_choice(choice, 18.0) is None and cache.exists()  # as measured
    assert review_cached_choice(choice, 6.0) is None and cache.exists()  # decoding bounds a run: not far below
    # The case: measured under load at 19 images/s, the run did 95.
    assert review_cached_choice(choice, 95.0) == (
        f"this run did 95.0 images/s against the 19.0 of the cached measurement ({cache}): "
        "dropped, measured again on the next run"
    )
    assert not cache.exists()
    cache.write_text("{}")
    assert review_cached_choice(choice, 4.0) is not None and not cache.exists()  # far below
    measured = ForwardChoice(config, "measured", {config: 19.0}, cache_file=cache)
    assert review_cached_choice(measured, 95.0) is None  # a measurement of this run stands
