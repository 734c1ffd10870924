#!/usr/bin/env python
"""Classification at scale: fit and predict time, peak RSS and accuracy per family, featx vs scikit-learn defaults.

For each ``--case ROWSxDIMxCLASSES`` a synthetic format-1 store is written
through :class:`featx.store.StoreWriter`: class centres in a 64-dimensional
latent space, projected to D columns through a random matrix, rectified, plus
noise (correlated, CNN-like columns), 80 % ``train`` / 20 % ``test`` split,
float32.  ``--store STORE[:LAYER]`` adds a real store (its stored split, or
featx's stratified hold-out).  Every measurement runs in a FRESH subprocess;
its peak RSS is the whole process's (``ru_maxrss`` of that child, from
``os.wait4``): imports, join, fit, evaluation and the written run folder.

featx
    ``featx.classify(store, models=family, memory=...)``: what the command runs.
subsample
    featx's in-memory fit on ``--subsample`` random training rows (300,000 by
    default), evaluated on the same evaluation rows: the reference accuracy
    of a streaming fit too large for memory.
sklearn
    The same train and evaluation rows (featx's join and split), read whole,
    ``StandardScaler`` then the estimator with its defaults (``LinearSVC``,
    ``LogisticRegression``, ``GaussianNB``, ``XGBClassifier``, ``MLPClassifier``),
    as a user would write it.

Usage::

    python benchmarks/classify_scale.py --case 1088x4608x17 --repeats 3
    python benchmarks/classify_scale.py --case 50000x512x10 --families svm,logreg --repeats 3
    python benchmarks/classify_scale.py --case 300000x2048x100 --families bayes,logreg,svm --tools featx --repeats 1
    python benchmarks/classify_scale.py --store features/digits/resnet18.h5 --families xgboost
    python benchmarks/classify_scale.py --case 1000000x2048x100 --families bayes,logreg,svm --tools featx,subsample \\
        --memory 3G --repeats 1 --keep --workdir /tmp/cs   # streaming at 1M vs in memory on 300k of its rows

The pairs are interleaved (featx, sklearn, featx, ...), since the machine may
be shared.  Prints a table (medians over ``--repeats``) and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
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


def write_store(path: Path, rows: int, dim: int, classes: int, seed: int = 0, block: int = 65536) -> Path:
    """A synthetic store of *rows* x *dim* float32 features of *classes* classes, written block by block."""
    from featx.store import AttributeIdentity, LayerSpec, StoreWriter

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    names = [f"c{c:03d}" for c in range(classes)]
    split = np.where(rng.random(rows) < 0.8, "train", "test")
    ids = [f"{split[i]}/{names[labels[i]]}/{i:07d}.jpg" for i in range(rows)]
    order = np.argsort(ids)  # format 1: rows in sorted id order
    ids, labels, split = [ids[i] for i in order], labels[order], split[order]
    samples = SimpleNamespace(ids=tuple(ids), labels=labels, splits=tuple(split), classes=tuple(names))
    spec = LayerSpec(name="f", node="f", pool="none", dim=dim, source_shape=(dim,))
    identity = AttributeIdentity(_META, ("model",))
    writer = StoreWriter(path, meta=_META, identity=identity, layers=[spec], samples=samples, checkpoint_seconds=1e9)
    writer.open()
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


def child(args: argparse.Namespace) -> dict:
    """One measurement, in this (fresh) process."""

    if args.tool == "featx":
        import featx

        from featx.classification import FAMILIES

        options = {"memory": args.memory} if args.memory else {}
        # --param values apply to the families that declare them (max_iter caps a memory-only measurement).
        params = dict(p.split("=", 1) for p in args.param)
        params = {k: v for k, v in params.items() if k in FAMILIES[args.family].params}
        _preload()
        started = time.perf_counter()
        run = featx.classify(args.store_path, models=args.family, out=args.out, plots=False, params=params, **options)
        total = time.perf_counter() - started
        r = run.results[0]
        return {"fit_s": r.fit_seconds, "predict_s": r.predict_seconds, "total_s": total, "accuracy": r.accuracy,
                "converged": not r.warnings, "path": run.fit.path, "fit_input": r.fit_input}
    if args.tool == "subsample":
        return _subsample_child(args)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    from featx.classification import join_features, plan_evaluation

    started = time.perf_counter()
    joined = join_features([args.store_path])
    train, test = plan_evaluation(joined, cv=None, test_size=0.25, seed=0).folds[0]
    X, y = joined.X, joined.labels
    estimator = _sklearn_default(args.family)
    scaler = StandardScaler().fit(X[train])
    Xtr, Xte = scaler.transform(X[train]), scaler.transform(X[test])
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(Xtr, y[train])
    fit = time.perf_counter() - t
    t = time.perf_counter()
    accuracy = float(np.mean(estimator.predict(Xte) == y[test]))
    return {"fit_s": fit, "predict_s": time.perf_counter() - t, "total_s": time.perf_counter() - started,
            "accuracy": accuracy, "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
            "path": "in-memory", "fit_input": "matrix"}


def _subsample_child(args: argparse.Namespace) -> dict:
    """featx's in-memory fit on ``--subsample`` random training rows, evaluated on all of featx's evaluation rows.

    The reference of the 1M-row streaming target: the accuracy a fit of the
    whole matrix in memory would reach, on a subsample that fits in memory.
    It builds what ``classify`` builds in memory (the family's estimator for
    that shape, the standard normaliser) from featx's public pieces.
    """
    from featx.classification import FAMILIES, ClassifyConfig, build_pipeline, fit_in_place, join_features, plan_evaluation

    config = ClassifyConfig(features=(args.store_path,), models=args.family, out=args.out, plots=False)
    family, params = FAMILIES[args.family], config.model_params[args.family]
    joined = join_features(config.features, load=False)
    train, test = plan_evaluation(joined, cv=None, test_size=config.test_size, seed=config.seed).folds[0]
    rows = np.sort(np.random.default_rng(0).choice(train, min(args.subsample, train.size), replace=False))
    _preload()
    started = time.perf_counter()
    estimator = family.build(params, config.seed, rows=rows.size, features=joined.n_features)
    pipeline = build_pipeline(joined.blocks, config.normalize, None, estimator, config.seed)
    block = 16_384
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_in_place(pipeline, joined.rows(rows), joined.labels[rows], block)
    fit = time.perf_counter() - started
    t = time.perf_counter()
    test = np.sort(test)
    predicted = np.concatenate([pipeline.predict(joined.rows(test[i : i + block])) for i in range(0, test.size, block)])
    return {"fit_s": fit, "predict_s": time.perf_counter() - t, "total_s": time.perf_counter() - started,
            "accuracy": float(np.mean(predicted == joined.labels[test])),
            "converged": not any("converge" in str(w.message).lower() for w in caught),
            "path": f"in-memory, {rows.size:,} training rows", "fit_input": "matrix"}


def _preload() -> None:
    """Import what the featx fit imports lazily, so that both tools' fit times exclude imports."""
    import importlib

    for module in ("sklearn.compose", "sklearn.linear_model", "sklearn.naive_bayes", "sklearn.neural_network",
                   "sklearn.preprocessing", "sklearn.svm", "xgboost"):
        importlib.import_module(module)


def _sklearn_default(family: str):
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC
    from xgboost import XGBClassifier

    return {"svm": LinearSVC, "logreg": LogisticRegression, "bayes": GaussianNB, "xgboost": XGBClassifier,
            "mlp": MLPClassifier}[family]()


def measure(store: Path, tool: str, family: str, memory: str | None, timeout: float, folder: Path,
            params: list[str], subsample: int) -> dict:
    """One measurement in a fresh child process; its peak RSS from the kernel's accounting of that child."""
    command = [sys.executable, __file__, "--child", "--tool", tool, "--family", family, "--store-path", str(store),
               "--out", str(folder / f"{tool}-{family}-{time.monotonic_ns()}"), "--subsample", str(subsample)]
    if memory:
        command += ["--memory", memory]
    for param in params:
        command += ["--param", param]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        child_process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, cwd=REPO)
        timer = threading.Timer(timeout, child_process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child_process.pid, 0)
        finally:
            timer.cancel()
        child_process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if child_process.returncode != 0:
        if child_process.returncode == -9:
            return {"error": f"killed after {timeout:.0f} s"}
        return {"error": (err.strip().splitlines() or ["?"])[-1]}
    # ru_maxrss is in KiB on Linux: the peak resident set of the whole child process.  Its CPU seconds
    # (every thread, imports included) say more than wall seconds on a machine that others load.
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss": usage.ru_maxrss * 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def _median(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    keys = ("fit_s", "predict_s", "total_s", "cpu_s", "accuracy", "peak_rss")
    out = {k: statistics.median(r[k] for r in good) for k in keys}
    out.update(converged=all(r["converged"] for r in good), path=good[0]["path"], fit_input=good[0]["fit_input"],
               repeats=len(good))
    return out


def _case(text: str) -> tuple[int, int, int]:
    try:
        rows, dim, classes = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a case is ROWSxDIMxCLASSES, e.g. 1088x4608x17; got {text!r}") from None
    return rows, dim, classes


def _store_shape(spec: str) -> tuple[int, int, int]:
    from featx.classification import join_features

    joined = join_features([spec], load=False)
    return len(joined.ids), joined.n_features, len(joined.classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=_case, action="append", help="ROWSxDIMxCLASSES of a synthetic store (repeatable)")
    parser.add_argument("--store", dest="stores", action="append", default=[], help="a real STORE[:LAYER] (repeatable)")
    parser.add_argument("--families", default="svm,logreg,bayes,xgboost")
    parser.add_argument("--tools", default="featx,sklearn",
                        help="featx, sklearn, and/or subsample (featx in memory on --subsample training rows)")
    parser.add_argument("--subsample", type=int, default=300_000, help="training rows of the subsample tool")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", help="featx's --memory (default: the RAM available)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a featx classifier parameter, for the families that declare it (repeatable)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds before one measurement is abandoned")
    parser.add_argument("--workdir", type=Path, help="where the synthetic stores go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the synthetic stores in --workdir, and reuse those already there")
    parser.add_argument("--json", type=Path, default=Path("classify_scale.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--store-path", dest="store_path", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    cases = args.case or ([] if args.stores else [(1088, 4608, 17)])
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        inputs = [(spec, *_store_shape(spec)) for spec in args.stores]
        for rows, dim, classes in cases:
            name = f"synthetic-{rows}x{dim}x{classes}.h5"
            kept = args.keep and args.workdir is not None and (args.workdir / name).exists()
            if kept:
                store = args.workdir / name
                print(f"reusing {store}", flush=True)
            else:
                started = time.perf_counter()
                store = write_store((args.workdir if args.keep and args.workdir else folder) / name, rows, dim, classes)
                print(f"wrote {store.name} in {time.perf_counter() - started:.0f} s", flush=True)
            inputs.append((str(store), rows, dim, classes))
        for store, rows, dim, classes in inputs:
            for family in args.families.split(","):
                tools = args.tools.split(",")
                runs: dict[str, list[dict]] = {tool: [] for tool in tools}
                for _ in range(args.repeats):  # interleaved: featx, sklearn, featx, ...
                    for tool in tools:
                        memory = args.memory if tool == "featx" else None
                        params = args.param if tool == "featx" else []
                        runs[tool].append(
                            measure(store, tool, family, memory, args.timeout, folder, params, args.subsample)
                        )
                for tool in tools:
                    row = {"store": Path(store).name, "rows": rows, "dim": dim, "classes": classes, "family": family,
                           "tool": tool, "matrix_bytes": rows * dim * 4, **_median(runs[tool]), "runs": runs[tool]}
                    results.append(row)
                    print(_line(row), flush=True)
            if Path(store).parent == folder:
                Path(store).unlink()  # the large synthetic stores go as soon as they are measured
    args.json.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "results": results}, indent=2) + "\n")
    print(_table(results))
    return 0


def _table(results: list[dict]) -> str:
    """The tools side by side (featx, sklearn, subsample: those run): one line per case and family (medians)."""
    tools_run = [tool for tool in ("featx", "sklearn", "subsample") if any(r["tool"] == tool for r in results)]
    head = "| rows x dim, classes | family | " + " | ".join(
        f"{tool} fit s | predict s | process CPU s | peak RSS (x matrix) | acc | conv" for tool in tools_run) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    keyed = {}
    for r in results:
        keyed.setdefault((r["rows"], r["dim"], r["classes"], r["family"]), {})[r["tool"]] = r
    for (rows, dim, classes, family), tools in keyed.items():
        cells = [f"{rows:,} x {dim:,}, {classes}", family]
        for tool in tools_run:
            r = tools.get(tool)
            if r is None or "error" in r:
                cells += [r["error"] if r else "-", "", "", "", "", ""]
                continue
            rss = f"{r['peak_rss'] / 2**30:.2f} GiB ({r['peak_rss'] / r['matrix_bytes']:.2f}x)"
            cells += [f"{r['fit_s']:.2f}", f"{r['predict_s']:.2f}", f"{r['cpu_s']:.1f}", rss, f"{r['accuracy']:.3f}",
                      "yes" if r["converged"] else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _line(row: dict) -> str:
    head = f"{row['rows']:>9,} x {row['dim']:<5,} C={row['classes']:<3} {row['family']:<8} {row['tool']:<9}"
    if "error" in row:
        return f"{head} {row['error']}"
    return (f"{head} fit {row['fit_s']:8.2f}s  predict {row['predict_s']:6.2f}s  total {row['total_s']:8.2f}s  "
            f"cpu {row['cpu_s']:7.1f}s  acc {row['accuracy']:.3f}  converged {str(row['converged']):<5}  peak RSS "
            f"{row['peak_rss'] / 2**30:5.2f} GiB ({row['peak_rss'] / row['matrix_bytes']:.2f}x matrix)  {row['path']} "
            f"({row['fit_input']})")


if __name__ == "__main__":
    sys.exit(main())
