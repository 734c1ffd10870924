#!/usr/bin/env python
"""featx on the CPU against the best forward configuration the machine allows (issue 13's figures).

For each case (model and layer, ``--weights none``) it measures, in interleaved
triples repeated ``--repeats`` times, and prints medians:

limit
    The truncated network alone (featx's extractor, pooling included) on
    random tensors, at each of 1, 4, 16 and 64 images per pass in the blocked
    and the channels_last layout; the best of these, in images/s.
featx
    ``run_pipeline.py extract`` in a fresh process, as a user runs it, from the
    JPEG files to the finished store, autotuned (the measurement is made once,
    before the triples, into a cache folder of the benchmark's own; its time
    and choice are printed); images/s of the run (model building excluded).
featx --no-autotune
    The same in the default configuration (``--batch-size 64``, oneDNN's
    blocked layout), the figure before autotuning.

The images are the first ``--images`` JPEGs (sorted ids) of the data folder.
The machine's load average is printed before and after: other work on the
machine changes the figures, which is why the three are interleaved.  It also
measures how much the configuration changes the features (``--differences``).

Usage::

    .venv/bin/python benchmarks/autotune_cpu.py                       # the three cases, 3 repeats
    .venv/bin/python benchmarks/autotune_cpu.py --case resnet50:penultimate --repeats 5
    .venv/bin/python benchmarks/autotune_cpu.py --differences-only
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
CASES = ("alexnet:fc7", "resnet50:penultimate", "vgg16:block2_pool")
SIZES = (1, 4, 16, 64)
LAYOUTS = ("blocked", "channels_last")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def jpeg_subset(data: Path, count: int, root: Path) -> Path:
    """A folder of symlinks to the first *count* JPEGs of *data* (sorted ids), keeping the class folders."""
    from featx.extraction import discover_images

    collection = discover_images(data)
    jpegs = [i for i in collection.ids if i.lower().endswith((".jpg", ".jpeg"))][:count]
    for image_id in jpegs:
        target = root / image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((collection.root / image_id).resolve())
    return root


def forward_limit(model: str, layer: str, seconds: float) -> tuple[float, str, dict[str, float]]:
    """Best images/s of the truncated network on random tensors over SIZES x LAYOUTS, and each figure."""
    import torch

    from featx.extraction import build_extractor, load_model, prepare_extractor

    loaded = load_model(model, weights="none")
    extractor, _, _ = build_extractor(loaded, (layer,), "avg")
    crop = loaded.preprocessing.crop
    figures = {}
    with torch.inference_mode():
        for layout in LAYOUTS:
            prepared = prepare_extractor(copy.deepcopy(extractor), torch.device("cpu"), "fp32", layout).eval()
            for size in SIZES:
                prepared.micro_batch = None  # one pass of exactly *size* images
                pixels = torch.randn(size, 3, crop, crop)
                prepared(pixels)  # warm-up: oneDNN builds its kernels
                passes, start = 0, time.perf_counter()
                while passes < 2 or time.perf_counter() - start < seconds:
                    prepared(pixels)
                    passes += 1
                figures[f"{size}/{layout}"] = passes * size / (time.perf_counter() - start)
    best = max(figures, key=figures.__getitem__)
    return figures[best], best, figures


def featx_run(model: str, layer: str, data: Path, out: Path, env: dict, *extra: str) -> tuple[float, str]:
    """images/s of one ``extract`` in a fresh process, and its 'forward pass:' line."""
    command = [
        sys.executable, str(REPO / "run_pipeline.py"), "extract", "--data", str(data), "--model", model,
        "--layer", layer, "--weights", "none", "--batch-size", "64", "--out", str(out), "--overwrite",
        "--no-progress", "--device", "cpu", *extra,
    ]
    process = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if process.returncode != 0:
        raise SystemExit(f"extract failed ({process.returncode}):\n{process.stdout}\n{process.stderr}")
    speed = re.search(r"\(([\d.,]+) images/s\)", process.stdout)
    forward = next((line for line in process.stderr.splitlines() if line.startswith("forward pass:")), "")
    out.unlink(missing_ok=True)
    return float(speed.group(1).replace(",", "")), forward


def differences(images: int, cases: tuple[str, ...] = ("resnet50:penultimate", "alexnet:fc7")) -> None:
    """How much the forward configuration changes the features, on real JPEGs (weights: ``$FEATX_BENCH_WEIGHTS``)."""
    import numpy as np
    import torch

    from featx.extraction import ImageDataset, build_extractor, discover_images, load_model, prepare_extractor

    weights = os.environ.get("FEATX_BENCH_WEIGHTS", "none")
    collection = discover_images(DATA)
    for case in cases:
        model, layer = case.split(":")
        loaded = load_model(model, weights=weights)
        extractor, _, _ = build_extractor(loaded, (layer,), "avg")
        dataset = ImageDataset(collection, loaded.preprocessing)
        decoded = (dataset[i][1] for i in range(len(collection)))
        pixels = torch.stack([x for x in decoded if x is not None][:images])
        outputs = {}
        with torch.inference_mode():
            for layout in LAYOUTS:
                prepared = prepare_extractor(copy.deepcopy(extractor), torch.device("cpu"), "fp32", layout).eval()
                for size in (1, 4, 64):
                    prepared.micro_batch = size
                    outputs[size, layout] = prepared(pixels)[layer].numpy().copy()
        reference = outputs[64, "blocked"]
        scale = float(np.abs(reference).max())
        print(f"\n{model} {layer} ({weights} weights), {len(pixels)} JPEGs: differences from 64/blocked")
        print(f"{'configuration':>22}  {'max |diff|':>11}  {'max |diff| / max |x|':>21}  {'rows equal':>10}")
        for (size, layout), value in outputs.items():
            diff = np.abs(value - reference)
            equal = int((diff.max(axis=1) == 0).sum())
            print(f"{f'{size}/{layout}':>22}  {diff.max():11.3e}  {diff.max() / scale:21.3e}  {equal:>6}/{len(value)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", help=f"MODEL:LAYER (repeatable; default: {', '.join(CASES)})")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=128, help="JPEGs per run (default: 128, two batches of 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-seconds", type=float, default=0.6, help="seconds per limit configuration")
    parser.add_argument("--differences-only", action="store_true", help="only the feature differences")
    parser.add_argument("--difference-images", type=int, default=64)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.differences_only:
        differences(args.difference_images)
        return 0
    print(f"load average before: {load_average()} ({os.cpu_count()} CPUs)")
    results = []
    with tempfile.TemporaryDirectory(prefix="featx-autotune-bench-") as tmp:
        tmp = Path(tmp)
        data = jpeg_subset(args.data, args.images, tmp / "data")
        env = {**os.environ, "FEATX_CACHE_DIR": str(tmp / "cache"), "FEATX_AUTOTUNE": "1"}
        for case in args.case or CASES:
            model, layer = case.split(":")
            # The autotuner's one measurement, cached for the runs below (a user's first run pays it once).
            tune_started = time.perf_counter()
            _, chosen = featx_run(model, layer, data, tmp / "warm.h5", env)
            first = time.perf_counter() - tune_started
            print(f"\n{model} {layer}: first run (autotuning + extraction) {first:.0f} s; {chosen}")
            limit, auto, default, best = [], [], [], ""
            for _ in range(args.repeats):
                value, best, figures = forward_limit(model, layer, args.limit_seconds)
                limit.append(value)
                auto.append(featx_run(model, layer, data, tmp / "auto.h5", env)[0])
                default.append(featx_run(model, layer, data, tmp / "default.h5", env, "--no-autotune")[0])
            row = dict(
                case=case, limit=statistics.median(limit), best=best, featx=statistics.median(auto),
                default=statistics.median(default), limits=limit, autos=auto, defaults=default, figures=figures,
            )
            results.append(row)
            print("  limit per configuration (last repeat): " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
            print(f"  limit {limit}  featx {auto}  featx --no-autotune {default}")
    header = ("case", "limit img/s", "(best)", "featx", "ratio", "no-autotune", "ratio", "featx/no-autotune")
    widths = (-24, 12, 18, 8, 6, 12, 6, 18)
    print("\n" + " ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in results:
        print(
            f"{r['case']:<24} {r['limit']:12.1f} {r['best']:>18} {r['featx']:8.1f} {r['featx'] / r['limit']:6.2f} "
            f"{r['default']:12.1f} {r['default'] / r['limit']:6.2f} {r['featx'] / r['default']:18.2f}"
        )
    print(f"\nmedians of {args.repeats} interleaved triples; {args.images} JPEGs per run; "
          f"load average after: {load_average()}; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
