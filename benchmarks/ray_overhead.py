#!/usr/bin/env python
"""Ray's overhead: ``extract --engine ray`` with 1 and 2 workers against ``--engine local``.

Each run is ``run_pipeline.py extract`` in a fresh process, as a user runs it,
into a new store; the runs of the engines alternate, in an order that rotates
from one round to the next (local, ray 1, ray 2; ray 1, ray 2, local; ...) and
with ``--pause`` seconds between runs (a Ray instance takes a few seconds to
go away), so that other work on the machine disturbs them alike; the figures
are medians over ``--repeats``.  Two speeds per run:

engine images/s
    What the command prints: images over the seconds from the moment the
    driver's network and forward configuration are ready to the finished
    store, the same instant for both engines (the call of the engine's run,
    after the model is loaded and truncated and the forward configuration
    chosen).  The local engine's seconds include preparing the network for
    its layout, starting its decoding processes and the first batch; Ray's
    include whatever its workers still need at that moment: each worker's
    process is started, with Ray, as soon as the store is locked, so that its
    start (a new Python process importing torch, several seconds) overlaps
    the driver's model loading; what is left of it, fetching the network from
    the object store and preparing it, is in the figure.  Starting Ray itself
    is not (it is in the end-to-end seconds).
end-to-end s
    The whole command, from process start to exit: imports, model, Ray's own
    start (a local instance here), the workers' start and the run.  This is
    what a user waits for; it is printed beside the engine figure, and an
    engine change that moves work out of the engine figure must not make it
    worse.

Every Ray store is compared with the local engine's, bit for bit (ids, labels,
splits and every feature dataset, through :func:`featx.open_store`).

Usage from a clone (``--weights none``: the figures do not depend on the weights)::

    .venv/bin/python benchmarks/ray_overhead.py                      # ResNet-50 penultimate, hymenoptera
    .venv/bin/python benchmarks/ray_overhead.py --model resnet18 --repeats 5 --engines local,ray:2
    .venv/bin/python benchmarks/ray_overhead.py --device cuda --engines local,ray:1   # on a GPU machine

Against another checkout of featx (``--baseline``; engines named ``base-local``,
``base-ray:K`` run from it, e.g. to check a change's end-to-end seconds)::

    git archive HEAD~1 | tar -x -C /tmp/featx-before
    .venv/bin/python benchmarks/ray_overhead.py --baseline /tmp/featx-before --engines local,ray:1,base-ray:1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
SPEED = re.compile(r"^\s+([\d,]+) images in ([\d.]+) s \(([\d.]+) images/s\)$", re.MULTILINE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help=f"image folder (default: {DATA})")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--layer", default="penultimate")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, help="crop size (default: the weights' own, 224)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--repeats", type=int, default=3, help="runs of each engine (default: 3)")
    p.add_argument(
        "--engines", default="local,ray:1,ray:2",
        help="comma-separated: local, or ray:K for K Ray workers (default: local,ray:1,ray:2)",
    )
    p.add_argument("--pause", type=float, default=10.0, help="seconds between runs (default: 10)")
    p.add_argument(
        "--baseline", type=Path,
        help="another featx checkout, for the engines named base-local, base-ray:K (its code, this Python)",
    )
    p.add_argument("--json", type=Path, help="also write every figure here")
    return p.parse_args(argv)


def checkout(args: argparse.Namespace, engine: str) -> tuple[Path, str]:
    """The featx checkout an engine runs from (``base-``: ``--baseline``) and the engine's own name."""
    if engine.startswith("base-"):
        if args.baseline is None:
            raise SystemExit(f"{engine} needs --baseline (another featx checkout)")
        return args.baseline.resolve(), engine[len("base-") :]
    return ROOT, engine


def command(args: argparse.Namespace, engine: str, out: Path) -> list[str]:
    root, engine = checkout(args, engine)
    cmd = [
        sys.executable, str(root / "run_pipeline.py"), "extract", "--data", str(args.data), "--out", str(out),
        "--model", args.model, "--layer", args.layer, "--weights", "none", "--batch-size", str(args.batch_size),
        "--device", args.device, "--no-autotune", "--no-progress", "--checkpoint-seconds", "10",
    ]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    if engine != "local":
        cmd += ["--engine", "ray", "--ray-workers", engine.split(":")[1]]
    return cmd


def run_once(args: argparse.Namespace, engine: str, out: Path) -> dict:
    root, _ = checkout(args, engine)
    # The checkout's featx first on the path, for the driver and the Ray workers it starts (they inherit it).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(command(args, engine, out), capture_output=True, text=True, cwd=root, check=False, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{engine} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    found = SPEED.search(done.stdout)
    if found is None:
        raise SystemExit(f"{engine}: no speed line in its output:\n{done.stdout}")
    return {
        "engine": engine,
        "images": int(found.group(1).replace(",", "")),
        "engine_seconds": float(found.group(2)),
        "engine_images_per_second": float(found.group(3)),
        "end_to_end_seconds": seconds,
        "load_average": os.getloadavg()[0],
        "workers": [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("worker ")],
    }


def same_store(a: Path, b: Path) -> bool:
    """Ids, labels, splits, failed images and every layer equal bit for bit."""
    from featx import open_store

    with open_store(a) as x, open_store(b) as y:
        if list(x.ids) != list(y.ids) or list(x.layers) != list(y.layers):
            return False
        if not (np.array_equal(x.labels, y.labels) and list(x.splits) == list(y.splits) and x.failed.equals(y.failed)):
            return False
        return all(x.features(name).tobytes() == y.features(name).tobytes() for name in x.layers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    engines = args.engines.split(",")
    runs: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ray-overhead") as folder:
        reference = Path(folder) / "reference.h5"
        for repeat in range(args.repeats):
            for engine in engines[repeat % len(engines):] + engines[: repeat % len(engines)]:
                time.sleep(args.pause)
                out = Path(folder) / f"{engine.replace(':', '')}-{repeat}.h5"
                result = run_once(args, engine, out)
                if engine == "local" and not reference.exists():
                    out.rename(reference)
                    out = reference
                result["identical_to_local"] = same_store(reference, out) if reference.exists() else None
                if out != reference:
                    out.unlink()
                runs.append(result)
                print(
                    f"run {repeat + 1}/{args.repeats} {engine:>10}: {result['engine_images_per_second']:6.1f} images/s, "
                    f"{result['end_to_end_seconds']:5.1f} s end to end, load {result['load_average']:.1f}, "
                    f"identical to local: {result['identical_to_local']}",
                    flush=True,
                )
    summary = {}
    for engine in engines:
        mine = [r for r in runs if r["engine"] == engine]
        summary[engine] = {
            "engine_images_per_second": statistics.median(r["engine_images_per_second"] for r in mine),
            "end_to_end_seconds": statistics.median(r["end_to_end_seconds"] for r in mine),
            "identical_to_local": all(r["identical_to_local"] is not False for r in mine),
        }
    local = summary.get("local")
    print(f"\n{args.model} {args.layer}, {args.device}, batch {args.batch_size}, medians of {args.repeats} interleaved runs")
    print(f"{'engine':>10} {'images/s':>9} {'ratio':>6} {'end-to-end s':>13} {'ratio':>6}  identical")
    for engine, s in summary.items():
        ratio = s["engine_images_per_second"] / local["engine_images_per_second"] if local else float("nan")
        ratio_e2e = local["end_to_end_seconds"] / s["end_to_end_seconds"] if local else float("nan")
        s["ratio_to_local"], s["end_to_end_ratio_to_local"] = ratio, ratio_e2e
        print(
            f"{engine:>10} {s['engine_images_per_second']:9.1f} {ratio:6.2f} {s['end_to_end_seconds']:13.1f} "
            f"{ratio_e2e:6.2f}  {s['identical_to_local']}"
        )
    loads = [r["load_average"] for r in runs]
    print(f"({time.perf_counter() - started:.0f} s in all; 1-minute load average {min(loads):.1f} to {max(loads):.1f} after the runs)")
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                         "runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
