"""Small feature stores for the info, export and interop tests (imported, not collected)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from featx import ExtractConfig, extract_features
from featx.extraction import discover_images
from featx.store import LayerSpec, StoreWriter

# resnet18 at 64 px: a real network, a few seconds for a dozen images on 2 cores.
MODEL = "resnet18"
IMAGE_SIZE = 64


def real_images(hymenoptera: Path, root: Path, per_class: int = 3) -> Path:
    """A train/val x ants/bees folder of the first *per_class* real JPEGs of each (module-scoped use)."""
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((hymenoptera / split / cls).glob("*.jpg"))[:per_class]:
                shutil.copy(src, root / split / cls / src.name)
    return root


def extract_store(data: Path, out: Path, layers: tuple[str, ...] = ("conv5", "penultimate"), **options) -> Path:
    """Extract *layers* of a seeded random-init resnet18 from *data* into *out*."""
    config = ExtractConfig(
        data=data, model=MODEL, layers=layers, weights="none", image_size=IMAGE_SIZE, out=out,
        workers=0, progress=False, **options,
    )
    return extract_features(config).path


def interrupted_store(data: Path, out: Path, *, stop: int, failed: tuple[int, ...] = ()) -> tuple[Path, np.ndarray]:
    """A store whose extraction stopped after the first *stop* images (``finish()`` never called).

    Rows are random features of width 4 for candidates ``0..stop-1`` except *failed*.
    Returns the store path and the feature rows written.
    """
    collection = discover_images(data)
    meta = {
        "model": MODEL, "weights": "none", "seed": 0, "image_size": IMAGE_SIZE, "resize": 73, "crop": IMAGE_SIZE,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear",
        "data_root": str(data), "data_fingerprint": collection.fingerprint,
    }
    spec = LayerSpec(name="penultimate", node="flatten", pool="none", dim=4, source_shape=(4,))
    writer = StoreWriter(out, meta=meta, layers=[spec], samples=collection, checkpoint_seconds=0)
    rng = np.random.default_rng(0)
    good = [i for i in range(stop) if i not in failed]
    values = rng.standard_normal((len(good), 4)).astype(np.float32)
    # Two parts, as two checkpoints of a run would leave them.
    half = stop // 2
    for lo, hi in ((0, half), (half, stop)):
        rows = [k for k, i in enumerate(good) if lo <= i < hi]
        writer.add(
            stop=hi,
            indices=[good[k] for k in rows],
            features={"penultimate": values[rows]},
            failures=[(i, "not an image: test") for i in failed if lo <= i < hi],
        )
    return out, values
