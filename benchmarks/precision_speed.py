#!/usr/bin/env python
"""featx's default precision (``--precision auto``) against fp32, the bf16 ceiling, compile and draft decoding (issue 23).

Every figure is images/s; featx runs are ``run_pipeline.py extract`` in a fresh
process, as a user runs it (``--weights none``, ``--batch-size 64``, the CPU),
from the JPEG files to the finished store, autotuned (one measurement per
precision is made before the pairs, into a cache folder of the benchmark's
own, as a user's first run makes it once).  The runs of a table row are
interleaved (default, fp32, default, fp32, ...) and repeated ``--repeats``
times; the table gives medians.

ResNet-50 penultimate (the issue's targets)
    default / fp32 end to end (target >= 2.2x), and the default over the
    bf16 combined ceiling ``1 / (1 / limit + 1 / decode)`` (as
    ``benchmarks/autotune_cpu.py`` defines it: the bf16 forward-only limit,
    the best of 1, 4, 16 and 64 images per pass in channels_last under
    autocast on random tensors, and featx's decoding loader alone, sharing the
    cores; target >= 0.9).
VGG16 block2_pool, AlexNet fc7
    default / fp32 (target: never below 1).
decode
    featx's loader alone, exact against ``--jpeg draft`` (libjpeg's DCT
    scaling), on the test images of 500 px and more on the shorter side
    (17-flowers-sized photos, cycled to 640 files; target >= 2x).  A decode
    ceiling is the loader's rate from its first batch on.
``--images N`` (e.g. 20000)
    One run of N images (copies cycling through the test images: a folder walk
    counts a file reached by several links once) with ``--compile on`` (the
    compile time included, the graph cache empty), with ``--compile on --jpeg
    draft``, and fp32 eager (``--compile off``; target: 3x fp32; 3.5x with draft).

Usage::

    .venv/bin/python benchmarks/precision_speed.py --quick        # a few minutes: 64 images, 1 repeat, ResNet-50 only
    .venv/bin/python benchmarks/precision_speed.py                # the 398 images, 3 repeats, three networks
    .venv/bin/python benchmarks/precision_speed.py --images 20000 --skip-pairs

The machine's load average is printed before and after: other work on the
machine changes the figures, which is why the runs are interleaved.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's featx, in-process as in the runs it starts
DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
CASES = ("resnet50:penultimate", "vgg16:block2_pool", "alexnet:fc7")
SIZES = (1, 4, 16, 64)
LARGE_COPIES = 640


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def image_folder(data: Path, count: int | None, root: Path, *, min_side: int = 0, copies: bool = False) -> tuple[Path, int]:
    """A class folder of the JPEGs of *data* (at least *min_side* px on the shorter side), *count* of them.

    Links to the originals; with *copies* (more images than there are), the
    images cycle and each one after the first round is a copy.
    """
    from PIL import Image

    from featx.extraction._folder import discover_images

    collection = discover_images(data)
    ids = [i for i in collection.ids if i.lower().endswith((".jpg", ".jpeg"))]
    if min_side:
        ids = [i for i in ids if min(Image.open(collection.root / i).size) >= min_side]
    count = len(ids) if count is None else count
    if not copies:
        ids = ids[:count]
    for k in range(count if copies else len(ids)):
        image_id = ids[k % len(ids)]
        original = (collection.root / image_id).resolve()
        relative = Path(image_id)
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if k >= len(ids):
            shutil.copyfile(original, target.with_name(f"{relative.stem}~{k // len(ids)}{relative.suffix}"))
        else:
            target.symlink_to(original)
    return root, (count if copies else len(ids))


def featx_run(model: str, layer: str, data: Path, out: Path, env: dict, *extra: str) -> tuple[float, float, str]:
    """One ``extract`` in a fresh process: (images/s of the run, wall seconds of the process, its log)."""
    command = [
        sys.executable, str(REPO / "run_pipeline.py"), "extract", "--data", str(data), "--model", model,
        "--layer", layer, "--weights", "none", "--batch-size", "64", "--out", str(out), "--overwrite",
        "--no-progress", "--device", "cpu", *extra,
    ]
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"extract failed ({process.returncode}):\n{process.stdout}\n{process.stderr}")
    speed = re.search(r"\(([\d.,]+) images/s\)", process.stdout)
    out.unlink(missing_ok=True)
    return float(speed.group(1).replace(",", "")), wall, process.stderr + process.stdout


def forward_limit(model: str, layer: str, precision: str, seconds: float) -> tuple[float, str]:
    """Best images/s of the truncated network on random tensors (channels_last; autocast in *precision*)."""
    import torch

    from featx.extraction import FeatureRecipe
    from featx.extraction._device import autocast
    from featx.extraction._network import build_network, prepare_extractor

    cpu = torch.device("cpu")
    network = build_network(FeatureRecipe.request(model, layer, weights="none", precision=precision))
    extractor = network.truncated([layer], network.plan.max_images)
    crop = network.loaded.preprocessing.crop
    figures = {}
    with torch.inference_mode(), autocast(cpu, precision):
        prepared = prepare_extractor(copy.deepcopy(extractor), cpu, precision, "channels_last").eval()
        for size in SIZES:
            prepared.micro_batch = None
            pixels = torch.randn(size, 3, crop, crop)
            prepared(pixels)
            passes, start = 0, time.perf_counter()
            while passes < 2 or time.perf_counter() - start < seconds:
                prepared(pixels)
                passes += 1
            figures[size] = passes * size / (time.perf_counter() - start)
    best = max(figures, key=figures.__getitem__)
    return figures[best], f"{best}/channels_last"


def decode_ceiling(model: str, data: Path, jpeg: str = "exact", batch_size: int = 64) -> float:
    """images/s of featx's loader alone (``extract``'s decoding workers, batches and joins), no network."""
    import dataclasses

    import torch

    from featx.extraction import load_model
    from featx.extraction._folder import discover_images
    from featx.extraction._loader import BatchJoiner, ImageLoader, default_workers

    cpu = torch.device("cpu")
    collection = discover_images(data)
    preprocessing = dataclasses.replace(load_model(model, weights="none").preprocessing, jpeg=jpeg)
    loader = ImageLoader(
        collection, preprocessing, indices=range(len(collection)), batch_size=batch_size,
        workers=default_workers(cpu), device=cpu,
    )
    joiner = BatchJoiner(cpu)
    # Timed from the first batch on: the workers' start is a run's, not the decoder's, cost.
    images, start = 0, None
    for chunks in loader:
        joiner([chunk.pixels for chunk in chunks if chunk.pixels is not None])
        if start is None:
            start = time.perf_counter()
        else:
            images += sum(len(chunk.indices) for chunk in chunks)
    return images / (time.perf_counter() - start)


def _listed(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _line(log: str, prefix: str) -> str:
    return next((line for line in log.splitlines() if line.startswith(prefix)), "")


def pairs(args, data: Path, tmp: Path, env: dict) -> list[dict]:
    rows = []
    cases = args.case or (CASES[:1] if args.quick else CASES)
    for case in cases:
        model, layer = case.split(":")
        # The autotuner's measurement of each precision, cached for the pairs (a user's first run pays it once).
        for extra in ((), ("--precision", "fp32")):
            _, wall, log = featx_run(model, layer, data, tmp / "warm.h5", env, *extra)
            print(f"{case} first run{' ' + ' '.join(extra) if extra else ''}: {wall:.0f} s; "
                  f"{_line(log, 'computing in')}; {_line(log, 'forward pass:')}", flush=True)
        default, fp32, limit, decode = [], [], [], []
        for _ in range(args.repeats):
            default.append(featx_run(model, layer, data, tmp / "d.h5", env)[0])
            fp32.append(featx_run(model, layer, data, tmp / "f.h5", env, "--precision", "fp32")[0])
            if model == "resnet50":
                value, best = forward_limit(model, layer, "bf16", args.limit_seconds)
                limit.append(value)
                decode.append(decode_ceiling(model, data))
        row = {"case": case, "default": statistics.median(default), "fp32": statistics.median(fp32)}
        print(f"  default {_listed(default)}  fp32 {_listed(fp32)}", flush=True)
        if limit:
            row["limit"], row["decode"] = statistics.median(limit), statistics.median(decode)
            row["combined"] = 1 / (1 / row["limit"] + 1 / row["decode"])
            row["best"] = best
            print(f"  bf16 limit {_listed(limit)} ({best})  decode {_listed(decode)}", flush=True)
        rows.append(row)
    return rows


def draft_decode(args, tmp: Path) -> tuple[float, float, int]:
    # The large JPEGs cycled to LARGE_COPIES files: enough batches for a steady rate.
    data, count = image_folder(args.data, LARGE_COPIES, tmp / "large", min_side=500, copies=True)
    exact, draft = [], []
    for _ in range(args.repeats):
        exact.append(decode_ceiling("resnet50", data, "exact"))
        draft.append(decode_ceiling("resnet50", data, "draft"))
    print(f"decode on {count} JPEGs of 500 px and more: exact {_listed(exact)}  draft {_listed(draft)}", flush=True)
    return statistics.median(exact), statistics.median(draft), count


def long_run(args, tmp: Path, env: dict) -> list[tuple[str, float, float, str]]:
    data, count = image_folder(args.data, args.images, tmp / "many", copies=True)
    model, layer = "resnet50", "penultimate"
    # Compiled with an empty graph cache: the compile time is part of the run.
    cold = {**env, "FEATX_CACHE_DIR": str(tmp / "compile-cache")}
    if (tmp / "cache").is_dir():  # the autotuner's measurements only
        shutil.copytree(tmp / "cache", tmp / "compile-cache", dirs_exist_ok=True)
    results = []
    for label, extra, environment in (
        ("default --compile on", ("--compile", "on"), cold),
        ("default --compile on --jpeg draft", ("--compile", "on", "--jpeg", "draft"), env),
        # fp32 eager, as before issue 23: under --compile auto a 20,000-image fp32 run compiles too.
        ("--precision fp32 --compile off", ("--precision", "fp32", "--compile", "off"), env),
    ):
        speed, wall, log = featx_run(model, layer, data, tmp / "long.h5", environment, *extra)
        compiled = _line(log, "compiled the network in")
        results.append((label, speed, wall, compiled))
        print(f"{count:,} images, {label}: {speed:.1f} images/s ({wall:.0f} s in all){'; ' + compiled if compiled else ''}",
              flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", help=f"MODEL:LAYER (repeatable; default: {', '.join(CASES)})")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-seconds", type=float, default=0.6)
    parser.add_argument("--quick", action="store_true", help="64 images, 1 repeat, ResNet-50 only (a few minutes)")
    parser.add_argument("--images", type=int, help="also one run of this many images with --compile on (e.g. 20000)")
    parser.add_argument("--skip-pairs", action="store_true", help="only the --images run")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.limit_seconds = 1, 0.3
    started = time.perf_counter()
    before = load_average()
    print(f"load average before: {before} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="featx-precision-bench-") as tmp:
        tmp = Path(tmp)
        data, count = image_folder(args.data, 64 if args.quick else None, tmp / "data")
        env = {**os.environ, "FEATX_CACHE_DIR": str(tmp / "cache"), "FEATX_AUTOTUNE": "1"}
        rows, decode, long = [], None, []
        if not args.skip_pairs:
            rows = pairs(args, data, tmp, env)
            decode = draft_decode(args, tmp)
        if args.images:
            long = long_run(args, tmp, env)
    print(f"\nimages/s, medians of {args.repeats} interleaved runs; {count} JPEGs per run, --batch-size 64, "
          f"--weights none, {os.cpu_count()} CPUs (a shared machine: other work changes the figures)")
    for r in rows:
        text = f"{r['case']:<22} default {r['default']:6.1f}  fp32 {r['fp32']:6.1f}  default/fp32 {r['default'] / r['fp32']:.2f}"
        if "combined" in r:
            text += (f"  bf16 limit {r['limit']:.1f} ({r['best']}), decode {r['decode']:.1f}, combined "
                     f"{r['combined']:.1f}: default/combined {r['default'] / r['combined']:.2f}")
        print(text)
    if decode is not None:
        exact, draft, n = decode
        print(f"decode ceiling on {n} JPEGs >= 500 px: exact {exact:.1f}, draft {draft:.1f}: draft/exact {draft / exact:.2f}")
    if long:
        fp32_wall = next(wall for label, _, wall, _ in long if label.startswith("--precision fp32"))
        for label, speed, wall, compiled in long:
            print(f"{args.images:,} images, {label:<34} {speed:6.1f} images/s, {wall:6.0f} s wall "
                  f"(process included): {fp32_wall / wall:.2f}x fp32's wall time{'; ' + compiled if compiled else ''}")
    print(f"\nload average before: {before}; after: {load_average()}; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
