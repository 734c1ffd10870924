#!/usr/bin/env python
"""Classification at scale: fit and predict time, peak RSS and accuracy per family, featx vs scikit-learn defaults.

For each ``--rows`` x ``--dim`` x ``--classes`` case a synthetic format-1
store is written through :class:`featx.store.StoreWriter`: class centres in a
64-dimensional latent space, projected to D columns through a random matrix,
rectified, plus noise (correlated, CNN-like columns), 80 % ``train`` / 20 %
``test`` split, float32.  Every measurement runs in a FRESH subprocess, which
reports its own peak RSS (``VmHWM`` of ``/proc/self/status``) for the whole
process: imports, join, fit, evaluation and the written run folder.

featx
    ``featx.classify(store, models=family, memory=...)``: what the command runs.
sklearn
    The same rows read with ``featx.open_store``, ``StandardScaler`` then the
    estimator with its defaults (``LinearSVC``, ``LogisticRegression``,
    ``GaussianNB``, ``XGBClassifier``), as a user would write it.

Usage::

    python benchmarks/classify_scale.py --rows 1088 --dim 4608 --classes 17
    python benchmarks/classify_scale.py --rows 50000 --dim 512 --classes 10 --families svm,logreg
    python benchmarks/classify_scale.py --rows 300000 --dim 2048 --classes 100 --families bayes --memory 3G

Prints a table (medians over ``--repeats``) and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LATENT = 64
_META = {
    "featx_version": "bench", "model": "synthetic", "weights": "none", "seed": 0, "image_size": 224,
    "resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear", "data_root": "/synthetic", "data_fingerprint": "synthetic",
    "created_utc": "2026-01-01T00:00:00+00:00",
}


def write_store(path: Path, rows: int, dim: int, classes: int, seed: int = 0, block: int = 8192) -> Path:
    """A synthetic store of *rows* x *dim* float32 features of *classes* classes, written block by block."""
    from featx.store import LayerSpec, StoreWriter

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    names = [f"c{c:03d}" for c in range(classes)]
    split = np.where(rng.random(rows) < 0.8, "train", "test")
    ids = [f"{split[i]}/{names[labels[i]]}/{i:07d}.jpg" for i in range(rows)]
    order = np.argsort(ids)  # format 1: rows in sorted id order
    ids, labels, split = [ids[i] for i in order], labels[order], split[order]
    samples = SimpleNamespace(ids=tuple(ids), labels=labels, splits=tuple(split), classes=tuple(names))
    spec = LayerSpec(name="f", node="f", pool="none", dim=dim, source_shape=(dim,))
    writer = StoreWriter(path, meta=_META, layers=[spec], samples=samples, checkpoint_seconds=1e9)
    project = rng.normal(size=(LATENT, dim)).astype(np.float32) / np.sqrt(LATENT)
    centres = rng.normal(size=(classes, LATENT)).astype(np.float32)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        z = centres[labels[start:stop]] + rng.normal(scale=3.0, size=(stop - start, LATENT)).astype(np.float32)
        x = np.maximum(z @ project, 0) + rng.normal(scale=0.5, size=(stop - start, dim)).astype(np.float32)
        writer.add(stop=stop, indices=list(range(start, stop)), features={"f": x.astype(np.float32)})
        writer.commit()
    writer.finish()
    return path


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> dict:
    """One measurement, in this (fresh) process."""
    import warnings

    if args.tool == "featx":
        import featx

        options = {"memory": args.memory} if args.memory else {}
        started = time.perf_counter()
        run = featx.classify(str(args.store), models=args.family, out=args.out, plots=False, **options)
        total = time.perf_counter() - started
        r = run.results[0]
        return {"fit_s": r.fit_seconds, "predict_s": r.predict_seconds, "total_s": total, "accuracy": r.accuracy,
                "converged": not r.warnings, "path": run.fit.path, "peak_rss": _peak_rss()}
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    from featx import open_store

    started = time.perf_counter()
    with open_store(args.store) as store:
        X, y, train = store.features("f"), store.labels, store.splits == "train"
    estimator = _sklearn_default(args.family)
    scaler = StandardScaler().fit(X[train])
    Xtr, Xte = scaler.transform(X[train]), scaler.transform(X[~train])
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(Xtr, y[train])
    fit = time.perf_counter() - t
    t = time.perf_counter()
    accuracy = float(np.mean(estimator.predict(Xte) == y[~train]))
    return {"fit_s": fit, "predict_s": time.perf_counter() - t, "total_s": time.perf_counter() - started,
            "accuracy": accuracy, "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
            "path": "in-memory", "peak_rss": _peak_rss()}


def _sklearn_default(family: str):
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.svm import LinearSVC
    from xgboost import XGBClassifier

    return {"svm": LinearSVC, "logreg": LogisticRegression, "bayes": GaussianNB, "xgboost": XGBClassifier}[family]()


def measure(store: Path, tool: str, family: str, memory: str | None, timeout: float, folder: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--tool", tool, "--family", family, "--store", str(store),
               "--out", str(folder / f"{tool}-{family}-{time.monotonic_ns()}")]
    if memory:
        command += ["--memory", memory]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    out = {k: statistics.median(r[k] for r in good) for k in ("fit_s", "predict_s", "total_s", "accuracy", "peak_rss")}
    out.update(converged=all(r["converged"] for r in good), path=good[0]["path"], repeats=len(good))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1088])
    parser.add_argument("--dim", type=int, default=4608)
    parser.add_argument("--classes", type=int, default=17)
    parser.add_argument("--families", default="svm,logreg,bayes,xgboost")
    parser.add_argument("--tools", default="featx,sklearn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", help="featx's --memory (default: the RAM available)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before one measurement is abandoned")
    parser.add_argument("--workdir", type=Path, help="where the stores go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=Path("classify_scale.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        results = []
        for rows in args.rows:
            store = write_store(folder / f"synthetic-{rows}x{args.dim}.h5", rows, args.dim, args.classes)
            matrix = rows * args.dim * 4
            for family in args.families.split(","):
                for tool in args.tools.split(","):
                    runs = [measure(store, tool, family, args.memory if tool == "featx" else None, args.timeout, folder)
                            for _ in range(args.repeats)]
                    row = {"rows": rows, "dim": args.dim, "classes": args.classes, "family": family, "tool": tool,
                           "matrix_bytes": matrix, **_median(runs), "runs": runs}
                    results.append(row)
                    print(_line(row), flush=True)
    args.json.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "results": results}, indent=2) + "\n")
    return 0


def _line(row: dict) -> str:
    head = f"{row['rows']:>9,} x {row['dim']:<5,} C={row['classes']:<3} {row['family']:<8} {row['tool']:<7}"
    if "error" in row:
        return f"{head} {row['error']}"
    return (f"{head} fit {row['fit_s']:8.2f}s  predict {row['predict_s']:6.2f}s  total {row['total_s']:8.2f}s  "
            f"acc {row['accuracy']:.3f}  converged {str(row['converged']):<5}  peak RSS "
            f"{row['peak_rss'] / 2**30:5.2f} GiB ({row['peak_rss'] / row['matrix_bytes']:.2f}x matrix)  {row['path']}")


if __name__ == "__main__":
    sys.exit(main())
