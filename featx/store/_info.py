"""What a feature store holds, as text: the ``info`` command.

Reads a store through :func:`featx.store.open_store` only, so it describes a
finished store and an unfinished one (an index over ``<store>.parts/``) alike.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..formatting import format_bytes, format_table, printable
from ._reader import FeatureStore, open_store
from ._schema import SPLIT_NAMES, parts_dir
from ._weights import parse_weights_label

__all__ = ["describe_store"]

# Failed images listed by name; the rest are counted.
_MAX_FAILED_SHOWN = 10


def _status(store: FeatureStore, meta: dict[str, Any]) -> str:
    rows = len(store)
    candidates = meta.get("candidates")
    if store.complete:
        total = f" of {candidates:,} images" if candidates is not None else ""
        return f"complete: {rows:,} rows{total}"
    done = meta.get("candidates_done", rows)
    of = f"{done:,} of {candidates:,}" if candidates is not None else f"{done:,}"
    return (
        f"INCOMPLETE: {of} images processed, {rows:,} rows; the extraction was interrupted, "
        f"run the same extract command to resume (progress is in {printable(parts_dir(store.path))})"
    )


def _weights(meta: dict[str, Any]) -> str:
    weights = str(meta.get("weights", "?"))
    kind, name = parse_weights_label(weights)
    if kind == "none":
        return (
            f"none: RANDOM INITIALISATION (seed {meta.get('seed', '?')}), not pretrained; "
            "these features carry no ImageNet knowledge"
        )
    if kind == "file":
        sha = meta.get("weights_sha256")
        return f"{name} (a weights file{f', sha256 {sha[:16]}...' if sha else ''})"
    source = "timm" if str(meta.get("model", "")).startswith("timm/") else "torchvision"
    return f"{weights} ({source}, pretrained)"


def _preprocessing(meta: dict[str, Any]) -> str:
    def floats(values: Any) -> str:
        return "(" + ", ".join(f"{v:.3f}" for v in np.atleast_1d(values)) + ")"

    return (
        f"resize {'both sides' if meta.get('resize_mode') == 'squash' else 'shorter side'} to {meta.get('resize')} "
        f"({meta.get('interpolation', 'bilinear')}), "
        f"centre crop {meta.get('crop')}x{meta.get('crop')}, normalise mean {floats(meta.get('mean'))} "
        f"std {floats(meta.get('std'))}"
        # Written only when not RGB in [0, 1] (Keras' caffe mode).
        + (f", {meta['channel_order']} channels" if "channel_order" in meta else "")
        + (f", pixels in [0, {meta['pixel_range']}] (not scaled)" if "pixel_range" in meta else "")
        + (f", JPEG {meta['jpeg']} decode" if "jpeg" in meta else "")
    )


def _precision(store: FeatureStore) -> str:
    """The compute precision of the layers (``bf16``; ``fp32 (conv5), bf16 (fc7)`` when they differ)."""
    found = {name: str(store.layer_info(name).get("precision") or "fp32") for name in store.layers}
    if len(set(found.values())) <= 1:
        return next(iter(found.values()), "fp32")
    return ", ".join(f"{precision} ({name})" for name, precision in found.items())


def _layers_table(store: FeatureStore) -> str:
    rows = []
    for name in store.layers:
        info = store.layer_info(name)
        source = "x".join(str(s) for s in np.atleast_1d(info.get("source_shape", [])))
        rows.append(
            (printable(name), printable(info.get("node", "?")), source, printable(info.get("pool", "?")),
             f"{info['shape'][1]:,}", str(info.get("stored_dtype")))
        )
    if not rows:
        return "  (no layers)"
    table = format_table(("layer", "graph node", "node output", "pool", "columns", "dtype"), rows, align="<<><><")
    return "\n".join("  " + line for line in table.splitlines())


def _samples_table(store: FeatureStore) -> str:
    """Rows per class (lines) and split (columns), with totals."""
    import pandas as pd

    samples = store.samples()
    samples["class"] = samples["class"].replace("", "(unlabelled)")
    samples["split"] = samples["split"].replace("", "(no split)")
    counts = pd.crosstab(samples["class"], samples["split"], margins=True, margins_name="total")
    class_order = [c for c in [*store.classes, "(unlabelled)", "total"] if c in counts.index]
    split_order = [s for s in (*SPLIT_NAMES, "(no split)") if s in counts.columns]
    columns = [*split_order, "total"] if len(split_order) > 1 else ["total"]
    counts = counts.loc[class_order, columns]
    rows = [
        (printable(name), *(f"{int(v):,}" for v in values)) for name, values in zip(counts.index, counts.to_numpy())
    ]
    table = format_table(("class", *(columns if len(columns) > 1 else ["rows"])), rows)
    return "\n".join("  " + line for line in table.splitlines())


def _failed(store: FeatureStore) -> list[str]:
    failed = store.failed
    if failed.empty:
        return ["failed: none"]
    lines = [f"failed: {len(failed):,} image(s) could not be used (in /failed):"]
    lines += [f"  {printable(row.id)}: {printable(row.reason)}" for row in failed.head(_MAX_FAILED_SHOWN).itertuples()]
    if len(failed) > _MAX_FAILED_SHOWN:
        lines.append(f"  ... and {len(failed) - _MAX_FAILED_SHOWN:,} more (featx.open_store(path).failed lists them all)")
    return lines


def _format_store_info(store: FeatureStore, checksums: str | None = None) -> str:
    """Describe an open store: status, model, weights, preprocessing, layers, samples, failures, size."""
    # Every text attribute is shown with the characters a terminal acts on escaped: the file may come from anyone.
    meta = {key: printable(value) if isinstance(value, str) else value for key, value in store.meta.items()}
    versions = ", ".join(
        f"{name} {meta[key]}" for name, key in (("featx", "featx_version"), ("torch", "torch_version"),
                                                ("torchvision", "torchvision_version")) if key in meta
    )
    lines = [
        f"store:          {printable(store.path)}",
        f"status:         {_status(store, meta)}",
        f"size on disk:   {format_bytes(store.size_on_disk())}",
        f"model:          {meta.get('model', '?')}",
        f"weights:        {_weights(meta)}",
        f"preprocessing:  {_preprocessing(meta)}",
        f"precision:      {_precision(store)}",
        *([f"views:          {meta['views']}, " + (
            "every view kept (views x columns per layer, view-major)" if meta.get("views_reduce") == "none"
            else "the mean of each image's views")] if meta.get("views") else []),
        f"data:           {meta.get('data_root', '?')}",
        f"created:        {meta.get('created_utc', '?')}" + (f" with {versions}" if versions else ""),
        f"format:         featx store format {meta.get('featx_format', '?')}",
        "",
        f"layers ({len(store.layers)}):",
        _layers_table(store),
        "",
        f"samples: {len(store):,} rows, {len(store.classes)} classes",
        _samples_table(store),
        "",
        *_failed(store),
    ]
    if checksums is not None:
        lines += ["", f"checksums: {checksums}"]
    return "\n".join(lines)


def describe_store(path: str | os.PathLike, *, verify: bool = False) -> str:
    """What the store at *path* holds, as the text ``featx info`` prints.

    Parameters
    ----------
    path : path
        The store.
    verify : bool
        Also read every feature and check it against the checksums recorded
        when the store was finished (``info --verify``); the text then ends
        with what was checked.

    Raises
    ------
    StoreError
        The file does not exist or is not a featx store (or a malformed one).
    StoreChecksumError
        With *verify*: the first block of rows that no longer matches its checksum.
    """
    with open_store(path) as store:
        return _format_store_info(store, store.verify().describe() if verify else None)
