"""Small feature stores written directly through featx.store.StoreWriter (imported, not collected).

The classify tests need stores with known contents (features drawn around
one centre per class, rows in any order, some rows missing, NaNs), and the
info tests an interrupted one; writing them directly takes milliseconds, where
running a network would take seconds.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from conftest import IMAGE_SIZE, MODEL

from featx.store import AttributeIdentity, LayerSpec, StoreWriter

# The root attributes that make two test stores "made the same way" (the format-1
# attributes featx's recipe flattens to; the extraction's stores compare their recipe).
IDENTITY_KEYS = (
    "model", "weights", "weights_sha256", "seed", "image_size", "resize", "crop", "mean", "std", "interpolation",
)


def attribute_identity(meta) -> AttributeIdentity:
    """The identity of a test store: its :data:`IDENTITY_KEYS`."""
    return AttributeIdentity(meta, IDENTITY_KEYS)

META = {
    "featx_version": "test",
    "model": MODEL,
    "weights": "none",
    "seed": 0,
    "image_size": IMAGE_SIZE,
    "resize": 73,
    "crop": IMAGE_SIZE,
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
    meta = {**META, **meta}
    writer = StoreWriter(
        path, meta=meta, identity=attribute_identity(meta), layers=specs, samples=samples, checkpoint_seconds=1e9
    )
    writer.open()
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


def interrupted_store(data: Path, out: Path, *, stop: int, failed: tuple[int, ...] = ()) -> tuple[Path, np.ndarray]:
    """A store whose extraction stopped after the first *stop* images (``finish()`` never called).

    Rows are random features of width 4 for candidates ``0..stop-1`` except *failed*.
    Returns the store path and the feature rows written.
    """
    from featx.extraction import open_source

    collection = open_source(data)
    meta = {**META, "data_root": str(data), "data_fingerprint": collection.fingerprint}
    spec = LayerSpec(name="penultimate", node="flatten", pool="none", dim=4, source_shape=(4,))
    writer = StoreWriter(out, meta=meta, identity=attribute_identity(meta), layers=[spec], samples=collection, checkpoint_seconds=0)
    writer.open()
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
