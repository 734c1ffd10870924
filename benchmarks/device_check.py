#!/usr/bin/env python
"""One-shot check of featx on a GPU: throughput from JPEG files, the ceilings, memory, classify, and the GPU tests.

Run from the repository root, in the project's environment, on a machine with
a CUDA GPU (it installs nothing and needs no network; ``--weights none``)::

    .venv/bin/python benchmarks/device_check.py            # about 6 minutes, at most 8
    python benchmarks/device_check.py --images 4096        # shorter
    python benchmarks/device_check.py --classify-only      # section 5 alone, at most 90 s

It prints, for ResNet-50 ``penultimate``:

1. the machine: GPU, torch, torchvision, nvJPEG, cores;
2. the forward-only ceiling: featx's truncated network (pooling included) on
   random tensors already on the GPU, in fp32, bf16 and fp16, in featx's
   autotuned configuration, images/s, and the peak device memory;
3. the decode ceilings: featx's input pipeline alone (files -> preprocessed
   batch on the GPU), with the JPEGs decoded on the CPU (PIL in one worker
   per core) and on the GPU (nvJPEG batches), images/s;
3b. issue 23: what ``--precision auto`` resolves to on this GPU, the forward
   ceiling of that precision compiled (``--compile on``: images/s against
   eager, and the compile time, the graph cache empty), and the CPU decode
   ceiling with ``--jpeg draft`` against exact (``--skip-compile`` leaves out
   the compile, about a minute);
4. featx end to end (``extract_features``, files -> finished store) for each
   precision with CPU and with GPU decoding: images/s, the ratio to the smaller
   of its forward and decode ceilings, and the peak device memory; against the
   targets of issue 13 (>= 5,000 images/s and >= 0.8 of that ceiling);
5. classify on the GPU: the minibatch linear svm and logreg
   (``MinibatchLinearClassifier``) through torch on ``cuda`` against the
   numpy CPU fit of the same seed on the same synthetic in-memory matrix
   (``--classify-shape``, 200,000 x 2,048 float32, 100 classes: fit seconds,
   epochs, held-out accuracy, agreement and coefficient difference), and
   xgboost (featx's settings) on ``cuda`` against the CPU on a smaller one,
   each fit stopped after ``--xgboost-seconds``;
6. the GPU tests of the suite (``tests/extraction/test_cuda.py``,
   ``test_gpu_decode.py`` and the CUDA tests of
   ``tests/classification/test_linear_torch.py``), with their pytest summary.

The JPEGs are the data folder's (``--data``; by default
``../shared/data/hymenoptera_data`` when it exists) or, where there is none,
synthetic photographs written once into a temporary folder; a folder of
symbolic links cycles through them up to ``--images``, read through its
manifest (a folder walk counts a file reached by several links once).  Each measurement is
bounded in time (``--seconds``, ``--xgboost-seconds``; the end-to-end runs stop
after 4.5 minutes, the classify section gets at most 90 s) so that the whole
script stays under 8 minutes (issue 13).  Each classify measurement is guarded: one that fails
prints its error and the next one runs.  Without a GPU it says so, runs the
(then skipped) GPU tests, and exits 0; ``--classify-only --classify-device cpu``
runs section 5 with torch's CPU kernels instead, to check the script itself.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a clone without installing
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
PRECISIONS = ("fp32", "bf16", "fp16")
MODEL, LAYER = "resnet50", "penultimate"
TARGET_IMAGES_PER_SECOND = 5000
TARGET_RATIO = 0.8
GPU_TESTS = (
    "tests/extraction/test_cuda.py", "tests/extraction/test_gpu_decode.py",
    "tests/classification/test_linear_torch.py::test_a_cuda_fit_is_the_numpy_fit",
    "tests/classification/test_linear_torch.py::test_a_cuda_classify_run_fits_the_linear_models_there",
)
CLASSIFY_SHAPE = "200000x2048x100"  # rows x columns x classes of the linear models' matrix
XGBOOST_SHAPE = "20000x256x10"
CLASSIFY_SECONDS = 90  # the most the classify section may take
END_TO_END_SECONDS = 270  # from the script's start: the end-to-end runs stop after it


def say(text: str = "") -> None:
    print(text, flush=True)


def synthetic_jpegs(root: Path, count: int) -> Path:
    """*count* photograph-like JPEGs (smooth colour fields plus noise, ImageNet-like sizes) in two class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(count):
        width, height = int(rng.integers(300, 640)), int(rng.integers(240, 500))
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = [np.sin(x / rng.uniform(20, 80) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(20, 80)) for _ in range(3)]
        pixels = np.stack(base, axis=-1) * 60 + 128 + rng.normal(0, 12, (height, width, 3))
        folder = root / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{k:05d}.jpg", quality=90)
    return root


def cycled_view(source: Path, count: int, root: Path) -> Path:
    """*count* symbolic links cycling through the JPEGs of *source*, keeping class folders, and their manifest.

    Returns the manifest (``root/list.csv``, one row per link): a folder walk
    counts a file reached by several links once, a manifest lists each path.
    """
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    rows = []
    for k in range(count):
        original = files[k % len(files)]
        relative = original.relative_to(source)
        target = root / relative.with_name(f"{relative.stem}~{k // len(files)}{relative.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(original.resolve())
        rows.append(target.relative_to(root).as_posix())
    (root / "list.csv").write_text("path\n" + "".join(f"{row}\n" for row in rows))
    return root / "list.csv"


def run_gpu_tests(timeout: float) -> None:
    say(f"\n== GPU tests: pytest {' '.join(GPU_TESTS)}")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *GPU_TESTS]
    try:
        process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
        lines = (process.stdout + process.stderr).strip().splitlines()
        say("\n".join(lines[-25:]))
        say(f"(exit code {process.returncode})")
    except subprocess.TimeoutExpired:
        say(f"the GPU tests did not finish within {timeout:.0f} s")


def _prepared_network(loaded, plan, device, precision: str, batch_size: int):
    """The autotuned forward configuration and the truncated network prepared in it, as ``extract`` runs it."""
    from featx.extraction._autotune import choose_forward_config
    from featx.extraction._network import TruncatedNetwork, prepare_extractor

    choice = choose_forward_config(
        loaded, plan, path=Path("/nonexistent/featx.h5"), overwrite=True, batch_size=batch_size,
        device=device, precision=precision, autotune=True,
    )
    # A copy: preparing converts the weights in place, and the next precision starts from the model as loaded.
    module = copy.deepcopy(loaded.module)
    extractor = TruncatedNetwork(module, plan.nodes, plan.pools, micro_batch=choice.config.micro_batch)
    return choice, prepare_extractor(extractor.eval(), device, precision, choice.config.layout)


def _images_per_second(
    extractor, device, precision: str, batch_size: int, crop: int, seconds: float, warm_up: int
) -> float:
    """Passes of random *crop* x *crop* tensors on the GPU for *seconds*, after *warm_up* passes: images/s."""
    import torch

    from featx.extraction._device import autocast

    pixels = torch.randn(batch_size, 3, crop, crop, device=device)
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(warm_up):
            extractor(pixels)
        torch.cuda.synchronize(device)
        passes, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            extractor(pixels)
            passes += 1
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    return passes * batch_size / elapsed


def forward_ceiling(loaded, plan, device, precision: str, batch_size: int, seconds: float) -> dict:
    """images/s of the autotuned truncated network on random tensors on the GPU, and its peak memory."""
    import torch

    choice, extractor = _prepared_network(loaded, plan, device, precision, batch_size)
    torch.cuda.reset_peak_memory_stats(device)
    return {
        "images_per_second": _images_per_second(
            extractor, device, precision, batch_size, loaded.preprocessing.crop, seconds, warm_up=3
        ),
        "config": choice.config.describe(),
        "peak_bytes": torch.cuda.max_memory_allocated(device),
    }


def compiled_ceiling(loaded, plan, device, precision: str, batch_size: int, seconds: float) -> dict:
    """The forward-only ceiling of the network compiled (``--compile on``): images/s and the compile time."""
    from featx.extraction._compile import compile_key, compile_network

    choice, extractor = _prepared_network(loaded, plan, device, precision, batch_size)
    crop = loaded.preprocessing.crop
    key = compile_key(MODEL, f"device-check-{LAYER}", (choice.config.micro_batch, 3, crop), precision, choice.config.layout)
    compile_seconds = compile_network(extractor, device=device, precision=precision, image_size=crop, key=key).seconds
    return {
        "images_per_second": _images_per_second(extractor, device, precision, batch_size, crop, seconds, warm_up=1),
        "compile_seconds": compile_seconds,
        "config": choice.config.describe(),
    }


def decode_ceiling(data: Path, preprocessing, device, decode: str, batch_size: int, seconds: float) -> float:
    """images/s of featx's input pipeline alone (files -> preprocessed batch on the GPU)."""
    import torch

    from featx.extraction import open_source
    from featx.extraction._loader import BatchJoiner, ImageLoader, default_workers

    collection = open_source(data)
    loader = ImageLoader(
        collection, preprocessing, indices=range(len(collection)), batch_size=batch_size,
        workers=default_workers(device), device=device, decode=decode,
    )
    joiner = BatchJoiner(device)
    images, start = 0, None
    for chunks in loader:
        pixels = [chunk.pixels for chunk in chunks if chunk.pixels is not None]
        joiner(pixels)
        if start is None:  # the first batch includes starting the workers
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            continue
        images += sum(len(chunk.indices) for chunk in chunks)
        if time.perf_counter() - start > seconds:
            break
    torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def end_to_end(data: Path, out: Path, device, precision: str, decode: str, batch_size: int) -> dict:
    import torch

    from featx.extraction import ExtractConfig, extract_features

    torch.cuda.reset_peak_memory_stats(device)
    result = extract_features(
        ExtractConfig.from_options(
            data=data, out=out, model=MODEL, layers=(LAYER,), weights="none", batch_size=batch_size,
            device=str(device), precision=precision, decode=decode, overwrite=True, progress=False,
        )
    )
    out.unlink(missing_ok=True)
    return {"images_per_second": result.images_per_second, "peak_bytes": torch.cuda.max_memory_allocated(device)}


def _shape(text: str) -> tuple[int, int, int]:
    rows, columns, classes = (int(part) for part in text.lower().split("x"))
    return rows, columns, classes


def synthetic_classes(rows: int, columns: int, classes: int, seed: int):
    """float32 rows around one random centre per class, the centres close enough that accuracy stays below 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    centres = rng.normal(scale=3.0 / np.sqrt(columns), size=(classes, columns)).astype(np.float32)
    X = rng.standard_normal((rows, columns), dtype=np.float32)
    X += centres[labels]
    return X, labels


def _guarded(what: str, measure) -> dict | None:
    """*measure()*, or its error printed in one line: one failing measurement does not end the script."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - a benchmark reports every failure and goes on
        say(f"{what}: FAILED ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
        return None


def time_linear(loss: str, X, y, X_test, y_test, device: str, backend: str | None) -> dict:
    """Seconds, epochs and held-out accuracy of classify's minibatch model (``alpha = 1 / n``, C = 1)."""
    import numpy as np

    from featx.classification import MinibatchLinearClassifier

    model = MinibatchLinearClassifier(loss, alpha=1.0 / len(y), max_iter=100, random_state=0, device=device,
                                      backend=backend)
    start = time.perf_counter()
    model.fit(X, y)  # returns once coef_ has been copied back from the device: no pending work
    seconds = time.perf_counter() - start
    return {"model": model, "seconds": seconds, "epochs": model.n_iter_, "converged": model.converged_,
            "accuracy": float(np.mean(model.predict(X_test) == y_test))}


def time_xgboost(X, y, X_test, y_test, device: str, cap: float) -> dict:
    """xgboost with featx's settings (hist, every core) on *device*, stopped after *cap* seconds of rounds."""
    import numpy as np
    import xgboost

    from featx.classification import FAMILIES, ClassifyConfig

    class TimeCap(xgboost.callback.TrainingCallback):
        def __init__(self) -> None:
            super().__init__()
            self.start = time.perf_counter()

        def after_iteration(self, model, epoch, evals_log) -> bool:
            return time.perf_counter() - self.start > cap

    params = ClassifyConfig(features="x.h5", models="xgboost", device="cpu").model_params["xgboost"]
    estimator = FAMILIES["xgboost"].build(params, 0, device=device)
    estimator.set_params(callbacks=[TimeCap()])
    start = time.perf_counter()
    estimator.fit(X, y)
    seconds = time.perf_counter() - start
    rounds = estimator.get_booster().num_boosted_rounds()
    return {"seconds": seconds, "rounds": rounds, "device": estimator.get_params()["device"],
            "accuracy": float(np.mean(estimator.predict(X_test) == y_test))}


def classify_section(device: str, shape: str, xgboost_shape: str, xgboost_seconds: float, budget: float) -> None:
    """Section 5: the linear models on *device* against the numpy CPU fit, then xgboost on *device* and the CPU."""
    import numpy as np

    started = time.perf_counter()
    rows, columns, classes = _shape(shape)
    say(f"\n== classify on {device}: minibatch linear models, {rows:,} x {columns:,} float32, {classes} classes "
        f"(+ {rows // 10:,} held-out rows)")
    data = _guarded("synthetic matrix", lambda: synthetic_classes(rows + rows // 10, columns, classes, seed=0))
    if data is not None:
        X, y = data
        X_train, y_train, X_test, y_test = X[:rows], y[:rows], X[rows:], y[rows:]
        backend = "torch"  # on 'cpu' too: then the torch code on torch's CPU kernels
        # The first fit on a device pays for its CUDA context and kernels: a small one first, not measured.
        _guarded("warm-up", lambda: time_linear("log_loss", X_train[:4096], y_train[:4096], X_test[:64],
                                               y_test[:64], device, backend))
        say(f"{'model':>6} {'fit on':>10} {'fit s':>8} {'epochs':>6} {'converged':>9} {'accuracy':>8}  "
            f"agreement, max |coef diff| / max |coef|")
        for family, loss in (("svm", "squared_hinge"), ("logreg", "log_loss")):
            if time.perf_counter() - started > 0.6 * budget:
                say(f"(stopping the linear fits: {0.6 * budget:.0f} s spent)")
                break
            fits = {}
            for where, on, engine in (("numpy cpu", "cpu", None), (f"torch {device}", device, backend)):
                fits[where] = _guarded(f"{family} {where}", lambda loss=loss, on=on, engine=engine: time_linear(
                    loss, X_train, y_train, X_test, y_test, on, engine))
                f = fits[where]
                if f is None:
                    continue
                line = (f"{family:>6} {where:>10} {f['seconds']:8.2f} {f['epochs']:6d} {f['converged']!s:>9} "
                        f"{f['accuracy']:8.4f}")
                reference = fits.get("numpy cpu")
                if reference is not None and f is not reference:
                    agree = float(np.mean(f["model"].predict(X_test) == reference["model"].predict(X_test)))
                    diff = np.abs(f["model"].coef_ - reference["model"].coef_).max()
                    line += f"  {agree:.4f}, {diff / np.abs(reference['model'].coef_).max():.1e}"
                    line += f"  ({reference['seconds'] / f['seconds']:.1f}x the CPU's speed)"
                say(line)
        del data, X, X_train, X_test
    rows, columns, classes = _shape(xgboost_shape)
    devices = list(dict.fromkeys((device, "cpu")))
    say(f"\n== xgboost on {' and '.join(devices)}: {rows:,} x {columns:,}, {classes} classes, featx's settings, "
        f"each stopped after {xgboost_seconds:.0f} s")
    data = _guarded("synthetic matrix", lambda: synthetic_classes(rows + rows // 10, columns, classes, seed=1))
    if data is None:
        return
    X, y = data
    say(f"{'fit on':>8} {'fit s':>8} {'rounds':>6} {'s/round':>8} {'accuracy':>8}")
    for where in devices:
        if time.perf_counter() - started > budget - xgboost_seconds:
            say(f"(stopping: {budget:.0f} s spent)")
            break
        f = _guarded(f"xgboost {where}", lambda where=where: time_xgboost(
            X[:rows], y[:rows], X[rows:], y[rows:], where, xgboost_seconds))
        if f is not None:
            say(f"{f['device']:>8} {f['seconds']:8.2f} {f['rounds']:6d} {f['seconds'] / max(f['rounds'], 1):8.3f} "
                f"{f['accuracy']:8.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    parser.add_argument("--images", type=int, default=16384, help="images per end-to-end run (default: 16384)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per ceiling measurement (default: 8)")
    parser.add_argument("--synthetic", type=int, default=1024, help="synthetic JPEGs to write when there is no --data")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-compile", action="store_true", help="no compiled network (it takes about a minute)")
    parser.add_argument("--classify-only", action="store_true", help="only the classify section")
    parser.add_argument("--skip-classify", action="store_true", help="no classify section")
    parser.add_argument("--classify-device", default="cuda",
                        help="torch device of the classify section (default: cuda; cpu checks the script)")
    parser.add_argument("--classify-shape", default=CLASSIFY_SHAPE, metavar="ROWSxCOLUMNSxCLASSES",
                        help=f"the linear models' matrix (default: {CLASSIFY_SHAPE})")
    parser.add_argument("--xgboost-shape", default=XGBOOST_SHAPE, metavar="ROWSxCOLUMNSxCLASSES",
                        help=f"xgboost's matrix (default: {XGBOOST_SHAPE})")
    parser.add_argument("--xgboost-seconds", type=float, default=20.0, help="time cap per xgboost fit (default: 20)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def classify() -> None:
        classify_section(args.classify_device, args.classify_shape, args.xgboost_shape, args.xgboost_seconds,
                         CLASSIFY_SECONDS)

    import torch
    import torchvision

    from featx.extraction import load_model
    from featx.extraction._gpu_decode import gpu_decoding_available
    from featx.extraction._network import probe_layers

    say("== machine")
    say(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {len(os.sched_getaffinity(0))} cores")
    if args.classify_only and (args.classify_device == "cpu" or torch.cuda.is_available()):
        classify()
        say(f"\ndone in {time.perf_counter() - started:.0f} s")
        return 0
    if not torch.cuda.is_available():
        say("no CUDA GPU visible to torch: nothing to measure here; the GPU figures need a machine with one.")
        if not args.skip_tests and not args.classify_only:
            run_gpu_tests(timeout=240)
        say(f"\ndone in {time.perf_counter() - started:.0f} s (no GPU)")
        return 0
    device = torch.device("cuda")
    properties = torch.cuda.get_device_properties(device)
    memory = properties.total_memory / 2**30
    say(f"GPU: {properties.name}, {memory:.0f} GiB; nvJPEG decoder: {gpu_decoding_available()}")
    os.environ.setdefault("FEATX_CACHE_DIR", tempfile.mkdtemp(prefix="featx-cache-"))

    with tempfile.TemporaryDirectory(prefix="featx-device-check-") as tmp:
        tmp = Path(tmp)
        source = args.data
        if source is None:
            say(f"\nno data folder: writing {args.synthetic} synthetic JPEGs ...")
            source = synthetic_jpegs(tmp / "synthetic", args.synthetic)
        data = cycled_view(source, args.images, tmp / "view")
        say(f"data: {args.images:,} JPEGs cycling through {source}; batch size {args.batch_size}")

        loaded = load_model(MODEL, weights="none")
        plan = probe_layers(loaded, (LAYER,), "avg")
        say(f"\n== forward-only ceiling ({MODEL} {LAYER}, random tensors on the GPU, autotuned configuration)")
        forward = {}
        for precision in PRECISIONS:
            forward[precision] = forward_ceiling(loaded, plan, device, precision, args.batch_size, args.seconds / 2)
            f = forward[precision]
            peak = f["peak_bytes"] / 2**30
            say(f"{precision}: {f['images_per_second']:9,.0f} images/s  ({f['config']}; peak {peak:.2f} GiB)")

        say("\n== decode ceilings (files -> preprocessed batch on the GPU, no network)")
        decode = {}
        for where in ("cpu", "gpu") if gpu_decoding_available() else ("cpu",):
            decode[where] = decode_ceiling(data, loaded.preprocessing, device, where, args.batch_size, args.seconds)
            say(f"{where} decode: {decode[where]:9,.0f} images/s")

        say("\n== issue 23: the precision policy, compiled against eager, draft decoding")
        import dataclasses

        from featx.extraction._device import resolve_precision

        policy, why = resolve_precision("auto", device)
        say(f"--precision auto resolves to {policy} ({why}); eager forward {forward[policy]['images_per_second']:,.0f} "
            f"images/s, fp32 {forward['fp32']['images_per_second']:,.0f}")
        if not args.skip_compile:
            try:
                compiled = compiled_ceiling(loaded, plan, device, policy, args.batch_size, args.seconds / 2)
                say(f"{policy} compiled: {compiled['images_per_second']:9,.0f} images/s ({compiled['config']}), "
                    f"{compiled['images_per_second'] / forward[policy]['images_per_second']:.2f}x eager; "
                    f"compiled in {compiled['compile_seconds']:.1f} s")
            except Exception as exc:  # the rest of the check still runs
                say(f"{policy} compiled: failed ({type(exc).__name__}: {exc})")
        draft = decode_ceiling(data, dataclasses.replace(loaded.preprocessing, jpeg="draft"), device, "cpu",
                               args.batch_size, args.seconds)
        say(f"cpu decode --jpeg draft: {draft:9,.0f} images/s, {draft / decode['cpu']:.2f}x exact")

        say(f"\n== featx end to end ({args.images:,} JPEG files -> finished store)")
        say(f"{'precision':>9} {'decode':>6} {'images/s':>10} {'ceiling':>9} {'ratio':>6} {'peak GiB':>9}  targets")
        for precision in PRECISIONS:
            for where in decode:
                if time.perf_counter() - started > END_TO_END_SECONDS:
                    say(f"(stopping the end-to-end runs: {END_TO_END_SECONDS:.0f} s spent)")
                    break
                run = end_to_end(data, tmp / "store.h5", device, precision, where, args.batch_size)
                ceiling = min(forward[precision]["images_per_second"], decode[where])
                ratio = run["images_per_second"] / ceiling
                met = run["images_per_second"] >= TARGET_IMAGES_PER_SECOND and ratio >= TARGET_RATIO
                say(
                    f"{precision:>9} {where:>6} {run['images_per_second']:10,.0f} {ceiling:9,.0f} {ratio:6.2f} "
                    f"{run['peak_bytes'] / 2**30:9.2f}  {'met' if met else 'NOT met'} "
                    f"(>= {TARGET_IMAGES_PER_SECOND:,}/s and >= {TARGET_RATIO} x ceiling)"
                )
    if not args.skip_classify:
        classify()
    if not args.skip_tests:
        run_gpu_tests(timeout=max(30.0, 8.5 * 60 - (time.perf_counter() - started)))
    say(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
