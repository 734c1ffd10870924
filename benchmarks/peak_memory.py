#!/usr/bin/env python
"""Peak memory of an extraction, at two numbers of images (acceptance 7 of issue 2).

By default: flattened VGG16 ``block2_pool`` (128 x 56 x 56 = 401,408 floats per
image at 224 x 224) of 100 and of all (~400) hymenoptera images, with the CLI's
defaults otherwise (batch size 64, decoding workers, ``--weights none``).  Each
extraction runs in a fresh process, as a user runs it, and the script prints:

peak RSS
    The extraction process's own peak resident memory (``ru_maxrss`` from
    ``wait4``), which holds the model, the batches in flight and the writer.
tree peak
    The largest sum of resident memory of the process and its decoding workers,
    sampled every 10 ms (shared pages are counted once per process, so this
    overstates what the machine actually used).
features
    rows x D x 4 bytes: what the store holds, and what an engine that kept the
    feature matrix in memory would need on top of the model.

Memory bounded by a few batches shows as a peak that does not grow with the
number of images.  Usage::

    python benchmarks/peak_memory.py
    python benchmarks/peak_memory.py --image-size 256 --counts 100 398
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
LIMIT = 2 << 30


def _image_subset(data: Path, count: int, folder: Path) -> int:
    """Symlink the first *count* images of *data* (sorted) into *folder*, keeping the layout."""
    from featx.extraction._folder import discover_images

    collection = discover_images(data)
    chosen = collection.ids[:count]
    for image_id in chosen:
        link = folder / image_id
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(data.resolve() / image_id)
    return len(chosen)


class _TreeSampler(threading.Thread):
    """Largest summed RSS of a process and its descendants, sampled until stopped."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            total = 0
            try:
                for proc in [self.process, *self.process.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            time.sleep(self.interval)


def measure(args: argparse.Namespace, count: int) -> dict:
    """Run one extraction of *count* images in a fresh process; return its figures."""
    with tempfile.TemporaryDirectory(prefix="featx-peak-memory-") as tmp:
        tmp = Path(tmp)
        n = _image_subset(args.data, count, tmp / "images")
        out = tmp / "store.h5"
        command = [
            sys.executable, str(REPO / "run_pipeline.py"), "-q", "extract", "--data", str(tmp / "images"),
            "--model", args.model, "--layer", args.layer, "--pool", args.pool, "--weights", "none",
            "--batch-size", str(args.batch_size), "--out", str(out), "--no-progress", "--device", "cpu",
        ]
        if args.image_size:
            command += ["--image-size", str(args.image_size)]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO)
        sampler = _TreeSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            sys.exit(f"the extraction of {n} images failed with exit code {process.returncode}")

        from featx.store import open_store

        with open_store(out) as store:
            rows, dim = store.layer_info(args.layer)["shape"]
            size = store.size_on_disk()
        return {
            "images": n,
            "rows": rows,
            "dim": dim,
            "feature_bytes": rows * dim * 4,
            "store_bytes": size,
            "peak_rss": usage.ru_maxrss * 1024,  # KiB on Linux
            "tree_peak": sampler.peak,
            "seconds": seconds,
        }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image folder (default: hymenoptera)")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--layer", default="block2_pool")
    parser.add_argument("--pool", default="flatten")
    parser.add_argument("--image-size", type=int, help="crop size (default: the model's, 224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help="decoding workers (default: the CLI's)")
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 400], help="numbers of images (default: 100 400)")
    args = parser.parse_args(argv)

    print(
        f"{args.model} {args.layer}, pool {args.pool}, image size {args.image_size or 'default'}, "
        f"batch size {args.batch_size}, {os.cpu_count()} cores"
    )
    header = f"{'images':>7} {'D':>9} {'features':>11} {'store':>11} {'peak RSS':>11} {'tree peak':>11} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    results = []
    for count in args.counts:
        r = measure(args, count)
        results.append(r)
        print(
            f"{r['images']:>7} {r['dim']:>9,} {_mib(r['feature_bytes']):>11} {_mib(r['store_bytes']):>11} "
            f"{_mib(r['peak_rss']):>11} {_mib(r['tree_peak']):>11} {r['seconds']:>8.1f}"
        )
    worst = max(r["peak_rss"] for r in results)
    verdict = "under" if worst < LIMIT else "OVER"
    print(f"largest peak RSS of the extraction process: {_mib(worst)}, {verdict} the 2 GiB limit")
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(
            f"from {first['images']} to {last['images']} images the features grow by "
            f"{_mib(last['feature_bytes'] - first['feature_bytes'])}, the peak RSS by "
            f"{_mib(last['peak_rss'] - first['peak_rss'])}"
        )
    return 0 if worst < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
