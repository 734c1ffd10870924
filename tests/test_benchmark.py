"""benchmarks/extract_throughput.py runs and writes consistent figures (not a timing test)."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

import pytest
import torch

from featx.extraction import open_source

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "extract_throughput.py"


def load_benchmark():
    """The benchmark script as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("extract_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory, hymenoptera):
    """One tiny run: SqueezeNet at 64x64 on 8 of the 12 real JPEGs of a small folder."""
    import shutil

    from conftest import real_jpegs

    root = tmp_path_factory.mktemp("bench-data")
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            for src in real_jpegs(hymenoptera / split / cls, 3):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, root / split / cls / src.name)
    out = tmp_path_factory.mktemp("bench-out") / "figures.json"
    code = bench.main([
        "--case", "squeezenet1_1:features.3:features.0", "--data", str(root), "--image-size", "64",
        "--batch-size", "4", "--repeats", "1", "--images", "8", "--baseline-images", "3", "--decode-images", "6",
        "--memory-sizes", "4,10", "--device", "cpu", "--json", str(out),
    ])
    assert code == 0
    return json.loads(out.read_text()), root


def test_report_describes_the_machine(report):
    figures, _ = report
    machine = figures["machine"]
    assert machine["cores"] == len(os.sched_getaffinity(0))
    assert machine["torch"] == torch.__version__
    assert machine["device"] == "cpu"
    assert figures["settings"]["cases"] == ["squeezenet1_1:features.3:features.0"]


def test_limits_follow_their_definitions(report):
    case = report[0]["cases"][0]
    assert len(case["forward_batch_seconds"]) == 1
    assert case["forward_images_per_second"] == pytest.approx(4 / statistics.median(case["forward_batch_seconds"]))
    assert case["decode_images_per_second"] == pytest.approx(12 / statistics.median(case["decode_pass_seconds"]))
    per_image = 1 / case["forward_images_per_second"] + case["decode_core_seconds_per_image"] / case["decode_workers"]
    assert case["combined_images_per_second"] == pytest.approx(1 / per_image)
    assert case["featx_ratio_to_combined"] == pytest.approx(
        case["featx_images_per_second"] / case["combined_images_per_second"]
    )


def test_featx_runs_extract_every_timed_image(report):
    case = report[0]["cases"][0]
    assert case["images_timed"] == 8
    (run,) = case["featx_runs"]
    assert (run["images"], run["rows"], run["failed"]) == (8, 8, 0)
    assert run["images_per_second"] == pytest.approx(8 / run["seconds"])
    assert run["peak_rss_bytes"] > 50 * 2**20  # torch alone is more than that
    assert case["featx_images_per_second"] == run["images_per_second"]


def test_baseline_features_equal_featx_rows(report):
    case = report[0]["cases"][0]
    assert case["baseline_images"] == 3
    assert case["speedup_over_baseline"] == pytest.approx(
        case["featx_images_per_second"] / case["baseline_images_per_second"]
    )
    # The per-image loop and featx compute the same features (batching aside).
    assert case["baseline_max_abs_difference"] < 1e-5


def test_several_layers_and_memory_runs(report):
    case = report[0]["cases"][0]
    assert case["several_layers"] == ["features.0", "features.3"]
    assert case["several_ratio"] == pytest.approx(case["several_seconds"] / case["alone_seconds"])
    assert sorted(case["memory"]) == ["10", "4"]
    assert case["memory_growth"] == pytest.approx(
        case["memory"]["10"]["peak_rss_bytes"] / case["memory"]["4"]["peak_rss_bytes"]
    )
    assert case["cuda_peak_bytes"] is None


def test_view_folder_cycles_through_the_images(bench, report, tmp_path):
    _, root = report
    collection = open_source(root)
    view = open_source(bench.view_folder(collection, 15, tmp_path / "view"))
    assert len(view) == 15
    assert sum(Path(i).stem.endswith("~1") for i in view.ids) == 3
    assert view.classes == collection.classes
    assert sorted(set(view.splits)) == ["train", "val"]


@pytest.mark.parametrize("text", ["resnet50", ":fc7", "a:b:c:d"])
def test_malformed_case_is_refused(bench, text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.build_parser().parse_args(["--case", text])
    assert exit_info.value.code == 2
    assert f"--case must be MODEL:LAYER[,LAYER...][:EXTRA,...], got '{text}'" in capsys.readouterr().err


def test_waiting_for_an_idle_machine(bench, monkeypatch):
    # Two busy half-seconds (50% idle), then idle ones (95%): the wait ends after 1 s of idle CPUs.
    readings = iter([(0, 0), (50, 100), (100, 200), (195, 300), (290, 400), (385, 500)])
    clock = [0.0]
    monkeypatch.setattr(bench, "_cpu_times", lambda: next(readings))
    monkeypatch.setattr(bench.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(bench.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    assert bench.wait_until_idle(1.0) == 2.0
    assert bench.wait_until_idle(0) == 0.0
