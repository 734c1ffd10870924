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
decode ceiling
    featx's loader alone (:class:`~featx.extraction.ImageLoader`: decode,
    resize, crop, to tensor, collate, hand-over to the main process and the
    join of each batch's chunks), on the same images, with the same batch size
    and decoding workers as ``extract``, no network; images/s from the loader's
    start, as ``extract`` counts them.
combined ceiling
    ``1 / (1 / limit + 1 / decode)``: what a perfect pipeline reaches when
    decoding and the network share the same cores (each image costs its
    forward time plus its decoding time on the whole machine).

The table gives featx over the limit and over the combined ceiling: on 2
cores a network faster than the decoder (AlexNet) cannot reach 0.9 of the
limit, which counts no decoding.  ``--profile`` prints where one image's
decoding time goes, stage by stage, in one process.

The images are the first ``--images`` JPEGs (sorted ids) of the data folder.
The machine's load average is printed before and after: other work on the
machine changes the figures, which is why the three are interleaved.  It also
measures how much the configuration changes the features (``--differences``).

Usage::

    .venv/bin/python benchmarks/autotune_cpu.py                       # the three cases, 3 repeats
    .venv/bin/python benchmarks/autotune_cpu.py --case resnet50:penultimate --repeats 5
    .venv/bin/python benchmarks/autotune_cpu.py --differences-only
    .venv/bin/python benchmarks/autotune_cpu.py --profile --case alexnet:fc7
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
    from featx.extraction._folder import discover_images

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

    from featx.extraction import FeatureRecipe
    from featx.extraction._network import build_network, prepare_extractor

    network = build_network(FeatureRecipe.request(model, layer, weights="none", precision="fp32"))
    loaded = network.loaded
    extractor = network.truncated([layer], network.plan.max_images)
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


def decode_ceiling(model: str, data: Path, batch_size: int = 64) -> float:
    """images/s of featx's loader alone over the JPEGs of *data*: ``extract``'s workers, batches and joins, no network."""
    import torch

    from featx.extraction import load_model
    from featx.extraction._folder import discover_images
    from featx.extraction._loader import BatchJoiner, ImageLoader, default_workers

    cpu = torch.device("cpu")
    collection = discover_images(data)
    preprocessing = load_model(model, weights="none").preprocessing
    loader = ImageLoader(
        collection, preprocessing, indices=range(len(collection)), batch_size=batch_size,
        workers=default_workers(cpu), device=cpu,
    )
    joiner = BatchJoiner(cpu)
    images, start = 0, time.perf_counter()
    for chunks in loader:
        joiner([chunk.pixels for chunk in chunks if chunk.pixels is not None])
        images += sum(len(chunk.indices) for chunk in chunks)
    return images / (time.perf_counter() - start)


def input_profile(model: str, data: Path, count: int) -> None:
    """Milliseconds per image of each stage of the CPU input path, in this process, on one core."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    from featx.extraction import load_model
    from featx.extraction._folder import discover_images
    from featx.extraction._images import collate_images, load_image
    from featx.extraction._loader import BatchJoiner

    torch.set_num_threads(1)  # as in a decoding worker
    recipe = load_model(model, weights="none").preprocessing
    collection = discover_images(data)
    paths = [collection.path(i) for i in range(min(count, len(collection)))]
    stages: dict[str, float] = {}

    def timed(name, function, *args):
        start = time.perf_counter()
        value = function(*args)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
        return value

    def float32_operations(crop):  # what Preprocessing computed per image before its lookup table
        pixels = F.convert_image_dtype(F.pil_to_tensor(crop), torch.float)
        return F.normalize(pixels, mean=list(recipe.mean), std=list(recipe.std))

    on_crops = dataclasses.replace(recipe, resize=recipe.crop)
    tensors = []
    for path in paths:
        timed("read the file", Path(path).read_bytes)
        image = timed("decode (PIL, load_image)", load_image, path)
        resized = timed("resize (PIL)", F.resize, image, [recipe.resize], InterpolationMode(recipe.interpolation))
        crop = timed("centre crop", F.center_crop, resized, [recipe.crop])
        timed("to float32 + normalise: torchvision ops (before)", float32_operations, crop)
        # The recipe on the crop itself (its resize and crop change nothing then): the lookup table.
        tensors.append(timed("to float32 + normalise: lookup table (now)", on_crops, crop))
    items = [(i, x, None) for i, x in enumerate(tensors)]
    joiner = BatchJoiner(torch.device("cpu"))  # one for the run, as in extract: its buffer is reused
    for start in range(0, len(items), 64):
        batch = timed("collate (stack a batch)", collate_images, items[start : start + 64])
        halves = [batch.pixels[: len(batch.pixels) // 2], batch.pixels[len(batch.pixels) // 2 :]]
        timed("join 2 chunks (main process)", joiner, halves)
    print(f"\n{model}: input path per image ({len(paths)} JPEGs, {recipe.describe()}), one thread")
    for name, seconds in stages.items():
        print(f"  {name:<48} {1000 * seconds / len(paths):7.3f} ms")
    total = sum(v for k, v in stages.items() if "(before)" not in k and "read" not in k)
    print(f"  {'total now (decode .. join)':<48} {1000 * total / len(paths):7.3f} ms "
          f"-> {len(paths) / total:.0f} images/s per core")


def featx_run(model: str, layer: str, data: Path, out: Path, env: dict, *extra: str) -> tuple[float, str]:
    """images/s of one ``extract`` in a fresh process, and its 'forward pass:' line."""
    command = [
        sys.executable, str(REPO / "run_pipeline.py"), "extract", "--data", str(data), "--model", model,
        "--layer", layer, "--weights", "none", "--batch-size", "64", "--out", str(out), "--overwrite",
        "--no-progress", "--device", "cpu", "--precision", "fp32", *extra,  # this benchmark's figures are fp32's
    ]
    process = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if process.returncode != 0:
        raise SystemExit(f"extract failed ({process.returncode}):\n{process.stdout}\n{process.stderr}")
    speed = re.search(r"\(([\d.,]+) images/s\)", process.stdout)
    forward = next((line for line in process.stderr.splitlines() if line.startswith("forward pass:")), "")
    out.unlink(missing_ok=True)
    return float(speed.group(1).replace(",", "")), forward


def _listed(values: list[float], digits: int = 1) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"


def _short(forward_line: str) -> str:
    """``forward pass: 64 images per pass, channels_last (autotuned in 3.8 s: ...)`` -> ``64/channels_last (3.8 s)``."""
    found = re.match(r"forward pass: (\d+) images? per pass, (\w+)(?: \((?:autotuned in ([\d.]+) s)?)?", forward_line)
    if not found:
        return forward_line
    size, layout, seconds = found.groups()
    return f"{size}/{layout}" + (f" (tuned {seconds} s)" if seconds else "")


def differences(images: int, cases: tuple[str, ...] = ("resnet50:penultimate", "alexnet:fc7")) -> None:
    """How much the forward configuration changes the features, on real JPEGs (weights: ``$FEATX_BENCH_WEIGHTS``)."""
    import numpy as np
    import torch

    from featx.extraction import FeatureRecipe
    from featx.extraction._folder import discover_images
    from featx.extraction._images import ImageDataset
    from featx.extraction._network import build_network, prepare_extractor

    weights = os.environ.get("FEATX_BENCH_WEIGHTS", "none")
    collection = discover_images(DATA)
    for case in cases:
        model, layer = case.split(":")
        network = build_network(FeatureRecipe.request(model, layer, weights=weights))
        loaded = network.loaded
        extractor = network.truncated([layer], network.plan.max_images)
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
    parser.add_argument("--profile", action="store_true", help="only the input path's time per stage")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.differences_only:
        differences(args.difference_images)
        return 0
    if args.profile:
        for case in args.case or CASES[:1]:
            input_profile(case.split(":")[0], args.data, args.images)
        return 0
    before = load_average()
    print(f"load average before: {before} ({os.cpu_count()} CPUs)")
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
            limit, decode, auto, default, best, loads = [], [], [], [], "", []
            for _ in range(args.repeats):
                loads.append(os.getloadavg()[0])
                value, best, figures = forward_limit(model, layer, args.limit_seconds)
                limit.append(value)
                decode.append(decode_ceiling(model, data))
                auto.append(featx_run(model, layer, data, tmp / "auto.h5", env)[0])
                default.append(featx_run(model, layer, data, tmp / "default.h5", env, "--no-autotune")[0])
            row = {
                "case": case, "limit": statistics.median(limit), "best": best, "decode": statistics.median(decode),
                "featx": statistics.median(auto), "default": statistics.median(default), "chosen": _short(chosen),
            }
            row["combined"] = 1 / (1 / row["limit"] + 1 / row["decode"])
            results.append(row)
            print("  limit per configuration (last repeat): " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
            print(f"  limit {_listed(limit)}  decode {_listed(decode)}  featx {_listed(auto)}  "
                  f"featx --no-autotune {_listed(default)}  (1-min load at each repeat: {_listed(loads, 2)})")
    print(f"\nimages/s, medians of {args.repeats} interleaved runs of each; {args.images} JPEGs per run, --batch-size 64, "
          f"--weights none, {os.cpu_count()} CPUs")
    header = ("case", "limit", "(best)", "decode", "combined", "featx", "/limit", "/comb", "no-autotune", "/limit",
              "/comb", "featx/no-at", "chosen by the autotuner")
    widths = (-21, 7, 16, 7, 9, 7, 7, 6, 12, 7, 6, 12, -40)
    print(" ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in results:
        print(
            f"{r['case']:<21} {r['limit']:7.1f} {r['best']:>16} {r['decode']:7.1f} {r['combined']:9.1f} "
            f"{r['featx']:7.1f} {r['featx'] / r['limit']:7.2f} {r['featx'] / r['combined']:6.2f} "
            f"{r['default']:12.1f} {r['default'] / r['limit']:7.2f} {r['default'] / r['combined']:6.2f} "
            f"{r['featx'] / r['default']:12.2f} {r['chosen']}"
        )
    print(f"\nload average before: {before}; after: {load_average()}; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
