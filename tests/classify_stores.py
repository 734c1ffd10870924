"""Small feature stores written directly through featx.store.StoreWriter.

The classify tests need stores with known contents (features drawn around
one centre per class, rows in any order, some rows missing, NaNs); writing
them directly takes milliseconds, where running a network would take seconds.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from featx.store import LayerSpec, StoreWriter

META = {
    "featx_version": "test",
    "model": "resnet18",
    "weights": "none",
    "seed": 0,
    "image_size": 64,
    "resize": 73,
    "crop": 64,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
    "data_root": "/data/test",
    "data_fingerprint": "test",
    "created_utc": "2026-01-01T00:00:00+00:00",
}


def blobs(labels: np.ndarray, dim: int, seed: int, spread: float = 1.0) -> np.ndarray:
    """Features around one random centre per class: learnable, not trivially."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(int(labels.max()) + 1, dim))
    return (centres[labels] + rng.normal(scale=spread, size=(len(labels), dim))).astype(np.float32)


def write_store(
    path: Path,
    ids: list[str],
    labels: np.ndarray,
    features: dict[str, np.ndarray],
    *,
    splits: list[str] | None = None,
    classes: tuple[str, ...] = ("a", "b", "c"),
    finish: bool = True,
    **meta,
) -> Path:
    """Write a store whose row i is ``ids[i]`` (in the order given).

    With ``finish=False`` the rows are committed but the extraction is left
    unfinished, as after an interrupted run.
    """
    samples = SimpleNamespace(
        ids=tuple(ids),
        labels=np.asarray(labels, dtype=np.int32),
        splits=tuple(splits if splits is not None else [""] * len(ids)),
        classes=tuple(classes),
    )
    specs = [
        LayerSpec(name=name, node=name, pool="none", dim=values.shape[1], source_shape=(values.shape[1],))
        for name, values in features.items()
    ]
    writer = StoreWriter(path, meta={**META, **meta}, layers=specs, samples=samples, checkpoint_seconds=1e9)
    writer.add(stop=len(ids), indices=list(range(len(ids))), features=features)
    writer.finish() if finish else writer.commit()
    return path


def dataset(n_per_class: int = 12, classes: int = 3, split: bool = True) -> tuple[list[str], np.ndarray, list[str]]:
    """Sorted ids ``<split>/<class>/<i>.jpg`` with labels and splits (2/3 train, 1/3 val)."""
    rows = []
    for c in range(classes):
        for i in range(n_per_class):
            part = ("train" if i % 3 else "val") if split else ""
            rows.append((f"{part}/{'abc'[c]}/{i:03d}.jpg".lstrip("/"), c, part))
    rows.sort()
    ids, labels, splits = zip(*rows)
    return list(ids), np.array(labels), list(splits)
