#!/usr/bin/env python
"""What a sweep costs against one extraction of its deepest layer.

For one network: (1) ``extract`` of ``penultimate`` alone into a fresh store,
(2) ``featx sweep`` with ``--layer auto`` (every stage and penultimate from one
forward pass into another fresh store, then every layer x classifier), and (3)
the same sweep again (stores reused: classification only).  Prints one JSON
object: the seconds of each, the extraction's own seconds inside the sweep,
and the sweep's table.

    .venv/bin/python benchmarks/sweep_cost.py --data ../shared/data/hymenoptera_data \\
        --network resnet18 --weights none --image-size 112 --classifiers logreg,svm,bayes

Stores and runs go to a temporary folder (``--work`` to keep them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from featx.extraction import ExtractConfig, extract_features
from featx.layer_sweep import SweepConfig, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--network", default="resnet18")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--weights-file", type=Path)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--classifiers", default="logreg,svm,bayes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--work", type=Path, help="keep stores and runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    options = {k: v for k, v in dict(weights=args.weights, weights_file=args.weights_file, image_size=args.image_size,
                                     batch_size=args.batch_size, workers=args.workers).items() if v is not None}
    with tempfile.TemporaryDirectory(prefix="featx-sweep-cost-") as temporary:
        work = args.work or Path(temporary)
        started = time.perf_counter()
        alone = extract_features(ExtractConfig.from_options(
            data=args.data, model=args.network, layers=("penultimate",), out=work / "alone.h5", progress=False,
            **options))
        alone_wall = time.perf_counter() - started

        config = SweepConfig(data=args.data, networks=(args.network,), classifiers=args.classifiers,
                             out=work / "sweep", features_dir=work / "features", progress=False, extract=options)
        started = time.perf_counter()
        sweep = run_sweep(config)
        sweep_wall = time.perf_counter() - started
        started = time.perf_counter()
        again = run_sweep(config)
        again_wall = time.perf_counter() - started

    (extraction,) = sweep.extractions
    print(json.dumps({
        "network": args.network, "weights": args.weights, "image_size": args.image_size, "images": alone.rows,
        "extract_penultimate": {"wall_s": round(alone_wall, 1), "pass_s": round(alone.seconds, 1)},
        "sweep": {"wall_s": round(sweep_wall, 1), "pass_s": round(extraction.seconds, 1),
                  "layers": list(extraction.layers), "extraction_phase_s": round(sweep.extract_seconds, 1),
                  "classification_phase_s": round(sweep.classify_seconds, 1), "cells": len(sweep.rows)},
        "sweep_rerun": {"wall_s": round(again_wall, 1),
                        "computed_images": sum(e.images for e in again.extractions)},
        "best": {k: v for k, v in sweep.best.to_json().items() if k != "run"},
        "rows": [{k: v for k, v in r.to_json().items() if k != "run"} for r in sweep.rows],
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
