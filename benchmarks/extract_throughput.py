#!/usr/bin/env python
"""How fast featx extracts features, next to what the machine allows.

For each case (a model and layers) it measures, on the current device, medians
over ``--repeats``:

forward limit
    The truncated network alone (featx's extractor, pooling included) on random
    tensors already on the device, in images/s.
decode limit
    The input pipeline alone (featx's DataLoader: file bytes -> preprocessed
    batch) with one worker per core, in images/s; and the seconds one core
    spends per image (no workers, one thread).
combined limit
    On a GPU the smaller of the two.  On the CPU, where decoding and the forward
    pass share the cores: ``1 / (forward s/img + decode core-s/img / cores)``.
featx
    ``extract_features`` from the image files to a finished store, in a fresh
    process as a user runs it, in images/s and as a ratio to the combined limit.
per-image baseline
    What the seed articles do: load one image, run the whole network with a
    forward hook keeping the layer's output, pool it, repeat; and featx's
    speed-up over it.
several layers
    The case's layers plus shallower ones (``MODEL:LAYERS:EXTRA``) in one run,
    against the case's layers alone.
memory
    Peak resident memory of the extraction process (and of its largest
    decoding worker) at 100 and 400 images, and on CUDA the peak device memory.

It prints a table and writes every figure as JSON (``--json``; by default
``benchmarks/results/<host>-<time>.json``).  Use ``--weights none``
(the default): figures do not depend on the weights' values.

Usage from a clone (see benchmarks/README.md)::

    python benchmarks/extract_throughput.py                 # the three CPU target cases
    python benchmarks/extract_throughput.py --case resnet50:penultimate --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # runs from a clone without installing featx

DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
# The three CPU targets of issue 5; after the second colon, shallower layers for
# the several-layers check.
DEFAULT_CASES = ("alexnet:fc7:conv5,fc6", "resnet50:penultimate:conv4,conv5", "vgg16:block2_pool:block1_pool")
CHILD_FLAG = "--child-extract"


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One benchmark case: ``MODEL:LAYER[,LAYER...][:EXTRA[,EXTRA...]]``."""

    model: str
    layers: tuple[str, ...]
    extra: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Case":
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise argparse.ArgumentTypeError(
                f"--case must be MODEL:LAYER[,LAYER...][:EXTRA,...], got '{text}' "
                "(e.g. resnet50:penultimate or alexnet:fc7:conv5,fc6)"
            )
        split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
        return cls(parts[0], split(parts[1]), split(parts[2]) if len(parts) == 3 else ())

    @property
    def label(self) -> str:
        return f"{self.model} {','.join(self.layers)}"


# --------------------------------------------------------------------------- measuring


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_limit(extractor, loaded, args, device) -> list[float]:
    """Seconds per batch of the truncated network on random tensors already on the device."""
    import torch

    from featx.extraction._device import autocast

    crop = loaded.preprocessing.crop
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch_size, 3, crop, crop, generator=generator)
    pixels = pixels.to(device)
    if device.type == "cuda":
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(args.repeats + 1):  # the first call warms up caches and cuDNN
            synchronize(device)
            started = time.perf_counter()
            with autocast(device, args.precision):
                outputs = extractor(pixels)
            # featx hands every batch to the CPU: count that copy too.
            for value in outputs.values():
                value.cpu()
            synchronize(device)
            if i:
                times.append(time.perf_counter() - started)
    return times


def decode_limit(collection, loaded, args, device, workers: int) -> list[float]:
    """Seconds per pass of featx's input pipeline over every image, with *workers* workers.

    Each batch ends as the network takes it: one tensor, on the device.
    """
    from featx.extraction._loader import BatchJoiner, ImageLoader

    times = []
    for i in range(args.repeats + 1):  # the first pass warms the page cache
        loader = ImageLoader(
            collection,
            loaded.preprocessing,
            indices=range(len(collection)),
            batch_size=args.batch_size,
            workers=workers,
            device=device,
        )
        joiner = BatchJoiner(device)
        started = time.perf_counter()
        for chunks in loader:
            pixels = [chunk.pixels for chunk in chunks if chunk.pixels is not None]
            if pixels:
                joiner(pixels)
        synchronize(device)
        if i:
            times.append(time.perf_counter() - started)
    return times


def decode_per_core(collection, loaded, args, images: int) -> list[float]:
    """Seconds one core spends per image (file bytes -> preprocessed tensor, one thread)."""
    import torch

    from featx.extraction._images import ImageDataset, collate_images

    dataset = ImageDataset(collection, loaded.preprocessing)
    indices = list(range(min(images, len(collection))))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            for a in range(0, len(indices), args.batch_size):
                collate_images([dataset[i] for i in indices[a : a + args.batch_size]])
            times.append((time.perf_counter() - started) / len(indices))
        return times
    finally:
        torch.set_num_threads(threads)


def per_image_baseline(collection, case: Case, args, device, images: int) -> tuple[list[float], dict]:
    """Images/s of the seed articles' loop: one image at a time through the whole network.

    Returns the images/s of each pass and the features of the first pass
    (by image index), to check featx's rows against them.
    """
    import torch

    from featx.extraction import load_model
    from featx.extraction._device import autocast
    from featx.extraction._layers import layer_index
    from featx.extraction._pooling import pool_features

    loaded = load_model(case.model, weights=args.weights, seed=0, image_size=args.image_size)
    model = loaded.module.to(device).eval()
    index = layer_index(loaded.module, image_size=loaded.preprocessing.crop)
    nodes = [index.resolve(layer) for layer in case.layers]
    modules = dict(model.named_modules())
    kept: dict[int, list] = {}
    current: dict = {}
    hooks = []
    if all(node in modules for node in nodes):
        for node in nodes:
            # A copy: a later in-place ReLU would otherwise change the kept output.
            keep = lambda _m, _i, out, node=node: current.__setitem__(node, out.clone())  # noqa: E731
            hooks.append(modules[node].register_forward_hook(keep))
        run = model
    else:  # a functional node (ResNet's flatten): the whole graph, returning it too
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

        last = get_graph_node_names(model)[1][-1]
        graph = create_feature_extractor(model, return_nodes=[*nodes, last]).eval()

        def run(x):
            current.update(graph(x))

    # The weights' own transforms, on PIL images, as the articles do.
    transform = torchvision_transforms(case.model, loaded.preprocessing)
    from featx.extraction._images import load_image

    rates = []
    chosen = [i for i in range(len(collection)) if collection.ids[i].lower().endswith((".jpg", ".jpeg"))][:images]
    with torch.inference_mode():
        for rep in range(args.repeats + 1):  # the first pass warms up
            started = time.perf_counter()
            for i in chosen:
                current.clear()
                x = transform(load_image(collection.path(i))).unsqueeze(0).to(device)
                with autocast(device, args.precision):
                    run(x)
                kept[i] = [pool_features(current[node], args.pool).cpu().numpy() for node in nodes]
            synchronize(device)
            if rep:
                rates.append(len(chosen) / (time.perf_counter() - started))
    for hook in hooks:
        hook.remove()
    return rates, kept


def torchvision_transforms(model: str, preprocessing) -> Callable:
    """The weights' ``transforms()`` preset (at featx's crop size)."""
    import torchvision
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    weights = torchvision.models.get_model_weights(model).DEFAULT
    base = weights.transforms()
    return ImageClassification(
        crop_size=preprocessing.crop,
        resize_size=preprocessing.resize,
        mean=base.mean,
        std=base.std,
        interpolation=InterpolationMode(preprocessing.interpolation),
    )


# --------------------------------------------------------------------------- featx in a child process


def run_featx(data: Path, layers: Sequence[str], case: Case, args, out: Path) -> dict:
    """One ``extract_features`` run in a fresh process; its figures as a dict."""
    spec = {
        "data": str(data),
        "model": case.model,
        "layers": list(layers),
        "weights": args.weights,
        "image_size": args.image_size,
        "pool": args.pool,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": args.device,
        "precision": args.precision,
        "out": str(out),
        "overwrite": True,
        "progress": True,
    }
    command = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, json.dumps(spec)]
    # Nothing watches the child while it runs: on a small machine a sampler would
    # take CPU time from the run it measures.  The child reports its own peaks.
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"featx run failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program.

    Linux's VmHWM, not ``ru_maxrss``: the latter survives ``exec`` and so
    counts the benchmark process that this one was forked from.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_extract(spec_json: str) -> None:
    """The child side of :func:`run_featx`: extract, then print figures as one JSON line."""
    import torch

    from featx.extraction import ExtractConfig, extract_features

    spec = json.loads(spec_json)
    spec["data"] = Path(spec["data"])
    spec["out"] = Path(spec["out"])
    spec["layers"] = tuple(spec["layers"])
    started = time.perf_counter()
    result = extract_features(ExtractConfig.from_options(**spec))
    wall = time.perf_counter() - started
    figures = {
        "images": result.images,
        "rows": result.rows,
        "failed": len(result.failed),
        "seconds": result.seconds,
        "images_per_second": result.images / result.seconds,
        "wall_seconds": wall,
        "setup_seconds": wall - result.seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        # That of the largest decoding worker, most of whose pages are this
        # process's (ru_maxrss is in KiB on Linux).
        "worker_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }
    print(json.dumps(figures))


# --------------------------------------------------------------------------- image folders


def view_folder(collection, count: int, root: Path) -> Path:
    """A folder of *count* images: symlinks to the collection's images, cycling through them.

    Keeps the class folders, so the view is a labelled image folder like the
    original; images reused to reach *count* get a ``~k`` suffix and are
    copies (a folder walk counts a file reached by two links once).
    """
    root.mkdir(parents=True)
    for k in range(count):
        image_id = collection.ids[k % len(collection)]
        relative = Path(image_id)
        original = collection.path(k % len(collection)).resolve()
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if k >= len(collection):
            shutil.copyfile(original, target.with_name(f"{relative.stem}~{k // len(collection)}{relative.suffix}"))
        else:
            target.symlink_to(original)
    return root


def spread_subset(collection, count: int, root: Path) -> Path:
    """A view of *count* images taken evenly over the sorted ids (both splits, all classes)."""
    root.mkdir(parents=True)
    n = len(collection)
    for k in range(count):
        i = k * n // count
        target = root / collection.ids[i]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(collection.path(i).resolve())
    return root


# --------------------------------------------------------------------------- one case


def machine(device) -> dict:
    import torch
    import torchvision

    import featx

    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cores": cores(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "featx": featx.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + fields[4], sum(fields)


def wait_until_idle(seconds: float, *, idle: float = 0.9, timeout: float = 900.0) -> float:
    """Wait until the CPUs have been at least *idle* idle for *seconds* in a row.

    On a machine shared with other work, each measurement then starts when
    nothing else runs (it may still be disturbed while it runs).  Returns the
    seconds waited; gives up after *timeout*.
    """
    started = time.monotonic()
    before = _cpu_times() if seconds > 0 else None
    if before is None:
        return 0.0
    quiet_since = started
    while time.monotonic() - started < timeout:
        time.sleep(0.5)
        after = _cpu_times()
        busy = (after[1] - before[1]) - (after[0] - before[0])
        if busy > (1 - idle) * max(1, after[1] - before[1]):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= seconds:
            break
        before = after
    return time.monotonic() - started


def bench_case(case: Case, args, device, collection, work: Path, say: Callable[[str], None]) -> dict:
    from featx.extraction import FeatureRecipe
    from featx.extraction._network import build_network, prepare_extractor

    result: dict = {"model": case.model, "layers": list(case.layers), "extra_layers": list(case.extra)}
    result["load_before"] = load_average()
    recipe = FeatureRecipe.request(case.model, case.layers, weights=args.weights, image_size=args.image_size, pool=args.pool)
    network = build_network(recipe)
    loaded = network.loaded
    result["crop"] = loaded.preprocessing.crop

    say("forward limit ...")
    extractor = network.truncated(case.layers, network.plan.max_images)
    extractor = prepare_extractor(extractor, device, args.precision)
    forward = forward_limit(extractor, loaded, args, device)
    result["forward_batch_seconds"] = forward
    result["forward_images_per_second"] = args.batch_size / median(forward)

    say("decode limit ...")
    all_workers = cores()
    decode = decode_limit(collection, loaded, args, device, all_workers)
    result["decode_workers"] = all_workers
    result["decode_pass_seconds"] = decode
    result["decode_images_per_second"] = len(collection) / median(decode)
    per_core = decode_per_core(collection, loaded, args, images=args.decode_images)
    result["decode_core_seconds_per_image"] = median(per_core)

    forward_s = 1 / result["forward_images_per_second"]
    if device.type == "cuda":
        combined = min(result["forward_images_per_second"], result["decode_images_per_second"])
    else:
        combined = 1 / (forward_s + result["decode_core_seconds_per_image"] / all_workers)
    result["combined_images_per_second"] = combined

    # Enough images for a featx run of about --seconds-per-run, whole batches, at least two,
    # at most the folder; a number larger than the folder cycles through its images.
    if args.images == "auto":
        wanted = max(2 * args.batch_size, -(-int(combined * args.seconds_per_run) // args.batch_size) * args.batch_size)
        timed = min(len(collection), wanted)
    else:
        timed = int(args.images)
    if timed > len(collection):
        data = view_folder(collection, timed, work / f"cycled-{timed}")
    elif timed < len(collection):
        data = spread_subset(collection, timed, work / f"subset-{timed}")
    else:
        data = args.data
    result["images_timed"] = timed

    several = list(dict.fromkeys([*case.extra, *case.layers]))
    runs: list[dict] = []
    several_runs: list[dict] = []
    for r in range(args.repeats):
        say(f"featx run {r + 1}/{args.repeats} ({timed} images) ...")
        runs.append(run_featx(data, case.layers, case, args, work / "featx.h5"))
        if case.extra and "several" not in args.skip:
            say(f"featx run {r + 1}/{args.repeats} with {','.join(several)} ...")
            several_runs.append(run_featx(data, several, case, args, work / "several.h5"))
    result["featx_runs"] = runs
    result["featx_images_per_second"] = median([run["images_per_second"] for run in runs])
    result["featx_ratio_to_combined"] = result["featx_images_per_second"] / combined
    result["featx_peak_rss_bytes"] = max(run["peak_rss_bytes"] for run in runs)
    result["featx_worker_peak_rss_bytes"] = max(run["worker_peak_rss_bytes"] for run in runs)
    result["cuda_peak_bytes"] = _max_or_none([run["cuda_peak_bytes"] for run in runs])
    if several_runs:
        result["several_layers"] = several
        result["several_runs"] = several_runs
        result["several_seconds"] = median([run["seconds"] for run in several_runs])
        result["alone_seconds"] = median([run["seconds"] for run in runs])
        result["several_ratio"] = result["several_seconds"] / result["alone_seconds"]

    if "baseline" not in args.skip:
        say(f"per-image baseline ({args.baseline_images} images) ...")
        rates, kept = per_image_baseline(collection, case, args, device, args.baseline_images)
        result["baseline_images"] = len(kept)
        result["baseline_images_per_second_runs"] = rates
        result["baseline_images_per_second"] = median(rates)
        result["speedup_over_baseline"] = result["featx_images_per_second"] / result["baseline_images_per_second"]
        result["baseline_max_abs_difference"] = _compare_with_store(kept, collection, work / "featx.h5", case.layers)

    if "memory" not in args.skip:
        memory = {}
        for size in args.memory_sizes:
            say(f"memory at {size} images ...")
            folder = view_folder(collection, size, work / f"view-{size}")
            run = run_featx(folder, case.layers, case, args, work / f"memory-{size}.h5")
            memory[str(size)] = {
                "peak_rss_bytes": run["peak_rss_bytes"],
                "worker_peak_rss_bytes": run["worker_peak_rss_bytes"],
                "cuda_peak_bytes": run["cuda_peak_bytes"],
                "images_per_second": run["images_per_second"],
            }
            shutil.rmtree(folder)
        result["memory"] = memory
        sizes = [str(s) for s in args.memory_sizes]
        if len(sizes) >= 2:
            result["memory_growth"] = memory[sizes[-1]]["peak_rss_bytes"] / memory[sizes[0]]["peak_rss_bytes"]
    result["load_after"] = load_average()
    return result


def _max_or_none(values: Sequence) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _compare_with_store(kept: dict, collection, store_path: Path, layers: Sequence[str]) -> float | None:
    """Largest difference between featx's rows and the baseline's features (same images)."""
    import numpy as np

    from featx.store import open_store

    worst = 0.0
    with open_store(store_path) as store:
        rows = {image_id: row for row, image_id in enumerate(store.ids)}
        compared = 0
        for i, outputs in kept.items():
            row = rows.get(collection.ids[i])
            if row is None:
                continue  # not among the images of the timed subset
            for layer, value in zip(layers, outputs):
                worst = max(worst, float(np.abs(store.features(layer, rows=[row])[0] - value[0]).max()))
            compared += 1
    return worst if compared else None


# --------------------------------------------------------------------------- reporting


def _fixed(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def case_table(result: dict, args, device) -> str:
    r = result
    n_cores = cores()
    lines = [
        f"{r['model']} {','.join(r['layers'])}  (batch {args.batch_size}, pool {args.pool}, {args.precision}, "
        f"{device}, {n_cores} cores, {r['images_timed']} images timed, medians of {args.repeats})",
        f"  {'forward limit':<28}{r['forward_images_per_second']:>10.1f} img/s",
        f"  {'decode limit':<28}{r['decode_images_per_second']:>10.1f} img/s   "
        f"({r['decode_workers']} workers; {1000 * r['decode_core_seconds_per_image']:.2f} ms per image per core)",
        f"  {'combined limit':<28}{r['combined_images_per_second']:>10.1f} img/s   "
        + ("min(forward, decode)" if device.type == "cuda" else "1 / (forward s/img + decode core-s/img / cores)"),
        f"  {'featx extract':<28}{r['featx_images_per_second']:>10.1f} img/s   "
        f"{r['featx_ratio_to_combined']:.2f} x combined  (runs: "
        + ", ".join(f"{run['images_per_second']:.1f}" for run in r["featx_runs"])
        + ")",
    ]
    if "baseline_images_per_second" in r:
        diff = r["baseline_max_abs_difference"]
        lines.append(
            f"  {'per-image baseline':<28}{r['baseline_images_per_second']:>10.1f} img/s   "
            f"featx {r['speedup_over_baseline']:.2f} x faster  ({r['baseline_images']} images, whole network; "
            f"max |featx - baseline| {'-' if diff is None else format(diff, '.1e')})"
        )
    if "several_ratio" in r:
        lines.append(
            f"  {'several layers':<28}{r['several_ratio']:>10.2f} x    "
            f"{','.join(r['several_layers'])}: {r['several_seconds']:.2f} s vs {','.join(r['layers'])} alone: "
            f"{r['alone_seconds']:.2f} s"
        )
    lines.append(
        f"  {'peak RSS':<28}{_mib(r['featx_peak_rss_bytes']):>14}   "
        f"(largest decoding worker: {_mib(r['featx_worker_peak_rss_bytes'])}, mostly shared)"
    )
    if r.get("cuda_peak_bytes") is not None:
        lines.append(f"  {'peak CUDA memory':<28}{_mib(r['cuda_peak_bytes']):>14}")
    if "memory" in r:
        figures = ", ".join(
            f"{size} images: {_mib(m['peak_rss_bytes'])} (worker {_mib(m['worker_peak_rss_bytes'])})"
            for size, m in r["memory"].items()
        )
        growth = f"  growth {r['memory_growth']:.2f} x" if "memory_growth" in r else ""
        lines.append(f"  {'memory':<28}{figures}{growth}")
    lines.append(f"  load average before/after: {r['load_before']} / {r['load_after']}")
    return "\n".join(lines)


def summary_table(results: list[dict]) -> str:
    header = (
        f"{'case':<34}{'forward':>9}{'decode':>9}{'combined':>10}{'featx':>8}{'ratio':>7}"
        f"{'baseline':>10}{'speedup':>9}{'several':>9}{'peak RSS':>11}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        baseline = _fixed(r.get("baseline_images_per_second"), 1)
        speedup = _fixed(r.get("speedup_over_baseline"), 2)
        several = _fixed(r.get("several_ratio"), 2)
        rows.append(
            f"{r['model'] + ' ' + ','.join(r['layers']):<34}"
            f"{r['forward_images_per_second']:>9.1f}{r['decode_images_per_second']:>9.1f}"
            f"{r['combined_images_per_second']:>10.1f}{r['featx_images_per_second']:>8.1f}"
            f"{r['featx_ratio_to_combined']:>7.2f}{baseline:>10}{speedup:>9}{several:>9}"
            f"{_mib(r['featx_peak_rss_bytes']):>11}"
        )
    rows.append("(images/s; ratio = featx / combined limit; speedup = featx / per-image baseline; "
                "several = several layers / the case's layers alone, in time)")
    return "\n".join(rows)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--case", dest="cases", action="append", type=Case.parse, metavar="MODEL:LAYERS[:EXTRA]",
        help=f"model and comma-separated layers, optionally shallower layers for the several-layers check "
        f"(repeatable; default: {' '.join(DEFAULT_CASES)})",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"image folder (default: {DEFAULT_DATA})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pool", default="avg", help="featx pooling of convolutional outputs (default: avg)")
    p.add_argument("--weights", default="none", help="weights (default: none, a seeded random init; no download)")
    p.add_argument("--image-size", type=int, help="crop size (default: the weights' own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--workers", type=int, help="featx's decoding workers (default: featx's default)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (medians are reported)")
    p.add_argument(
        "--images", default="auto",
        help="images per featx timing run: a number (more than the folder holds cycles through its "
        "images), or 'auto' (default): enough for about --seconds-per-run at the combined limit, "
        "at least two batches, at most the whole folder",
    )
    p.add_argument("--seconds-per-run", type=float, default=20.0)
    p.add_argument("--decode-images", type=int, default=200, help="images for the per-core decode time")
    p.add_argument("--baseline-images", type=int, default=24, help="images per pass of the per-image baseline")
    p.add_argument(
        "--memory-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 400],
        help="image counts of the memory runs (default: 100,400)",
    )
    p.add_argument(
        "--wait-idle", type=float, default=0.0, metavar="SECONDS",
        help="start each measurement only once the CPUs have been 90%% idle for SECONDS in a row "
        "(for machines shared with other work; default 0: do not wait)",
    )
    p.add_argument("--skip", action="append", default=[], choices=["baseline", "several", "memory"])
    p.add_argument("--json", type=Path, help="where to write the figures (default: benchmarks/results/<host>-<time>.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [CHILD_FLAG]:
        child_extract(argv[1])
        return 0
    args = build_parser().parse_args(argv)
    from featx.extraction._device import resolve_device
    from featx.extraction._folder import discover_images

    device = resolve_device(args.device)
    cases = args.cases or [Case.parse(c) for c in DEFAULT_CASES]
    collection = discover_images(args.data)
    info = machine(device)
    started = datetime.now(timezone.utc)
    print(
        f"featx {info['featx']}, torch {info['torch']}, {info['processor']}, {info['cores']} cores, "
        f"device {device}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}; {len(collection)} images in {args.data}"
    )
    load = load_average()
    if load is not None and load > 0.5 * info["cores"]:
        print(f"warning: load average {load:.1f} on {info['cores']} cores: other work will disturb the figures")
    results = []
    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
        for n, case in enumerate(cases):
            work = Path(tmp) / f"case-{n}"
            work.mkdir()
            def say(text: str, label: str = case.label) -> None:
                """Announce a measurement; with --wait-idle, start it when the machine is idle."""
                print(f"[{label}] {text}", flush=True)
                waited = wait_until_idle(args.wait_idle)
                if waited >= args.wait_idle + 1:
                    print(f"[{label}]   (waited {waited:.0f} s for the other work on this machine)", flush=True)
            result = bench_case(case, args, device, collection, work, say)
            results.append(result)
            print()
            print(case_table(result, args, device))
            print(flush=True)
    print(summary_table(results))
    report = {
        "started_utc": started.isoformat(timespec="seconds"),
        "seconds": (datetime.now(timezone.utc) - started).total_seconds(),
        "machine": info,
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
            if key != "cases"
        }
        | {"cases": [f"{c.model}:{','.join(c.layers)}:{','.join(c.extra)}" for c in cases]},
        "cases": results,
    }
    path = args.json or REPO / "benchmarks" / "results" / f"{info['host']}-{started:%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
