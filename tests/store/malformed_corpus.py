"""A corpus of malformed feature stores: a good store, then one edit each (imported, not collected).

Each variant is ``(name, edit, expected)``: *edit* changes an open h5py file
the way a damaged file, another tool or an attacker would, and *expected* is
a fragment of the one-line error featx must give.  Used by
tests/store/test_malformed.py and benchmarks/hostile_files.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np

N = 12
CLASSES = ("ants", "bees", "wasps")
_STR = h5py.string_dtype("utf-8")
_META = {
    "featx_version": "test", "model": "resnet18", "weights": "none", "seed": 0, "image_size": 64, "resize": 73,
    "crop": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear",
    "data_root": "/data/test", "data_fingerprint": "test", "created_utc": "2026-01-01T00:00:00+00:00",
}


def good_store(path: Path) -> Path:
    """A finished, well-formed store of N samples, 3 classes, one layer ``f`` of width 4, written by featx."""
    from featx.store import AttributeIdentity, LayerSpec, StoreWriter

    ids = [f"{'val' if i < 3 else 'train'}/{CLASSES[i % 3]}/{i:03d}.jpg" for i in range(N)]
    order = np.argsort(ids)
    ids = [ids[i] for i in order]
    labels = np.array([i % 3 for i in range(N)], dtype=np.int32)[order]
    splits = [i.split("/")[0] for i in ids]
    samples = SimpleNamespace(ids=tuple(ids), labels=labels, splits=tuple(splits), classes=CLASSES)
    spec = LayerSpec(name="f", node="flatten", pool="none", dim=4, source_shape=(4,))
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(N, 4)) + labels[:, None] * 3).astype(np.float32)
    writer = StoreWriter(path, meta=_META, identity=AttributeIdentity(_META, ("model",)), layers=[spec],
                         samples=samples, checkpoint_seconds=1e9)
    writer.open()
    writer.add(stop=N, indices=list(range(N)), features={"f": features})
    writer.finish()
    return path


def _replace(f: h5py.File, name: str, data, **kwargs) -> h5py.Dataset:
    attrs = dict(f[name].attrs) if name in f else {}
    del f[name]
    ds = f.create_dataset(name, data=data, **kwargs)
    for key, value in attrs.items():
        if not key.startswith(("DIMENSION_", "REFERENCE_", "CLASS", "NAME")):
            ds.attrs[key] = value
    return ds


def _set(name: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f.attrs[name] = value

    return edit


def _label(value: int) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f["samples/label"][0] = value

    return edit


def _delete(name: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]

    return edit


def _features(data) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        _replace(f, "features/f", data)

    return edit


def _ids(f: h5py.File) -> None:
    ids = f["samples/id"].asstr()[()].tolist()
    ids[1] = ids[0]
    for key in ("samples/id",):
        _replace(f, key, np.array(ids, dtype=object), dtype=_STR)


def _bad_utf8_ids(f: h5py.File) -> None:
    ids = [i.encode() for i in f["samples/id"].asstr()[()].tolist()]
    ids[0] = b"\xff\xfe.jpg"
    _replace(f, "samples/id", np.array(ids, dtype=object), dtype=_STR)


def _node_not_utf8(f: h5py.File) -> None:
    f["features/f"].attrs["node"] = np.bytes_(b"\xc3\x28")


def _dataset_instead_of_group(name: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
        f.create_dataset(name, data=np.zeros(3))

    return edit


def _no_layer(f: h5py.File) -> None:
    for name in list(f["features"]):
        del f["features"][name]


def _classes_twice(f: h5py.File) -> None:
    _replace(f, "classes", np.array(["ants", "bees", "ants"], dtype=object), dtype=_STR)


def _split(values) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        _replace(f, "samples/split", np.array(values, dtype=object), dtype=_STR)

    return edit


def _failed_mismatch(f: h5py.File) -> None:
    _replace(f, "failed/reason", np.array(["x"], dtype=object), dtype=_STR)


def _meta_column_short(f: h5py.File) -> None:
    f.create_dataset("samples/meta/source", data=np.array(["a"] * 3, dtype=object), dtype=_STR)


#: (name, edit, fragment of the message); every edit is made on a copy of good_store().
VARIANTS: list[tuple[str, Callable[[h5py.File], None], str]] = [
    ("label -7", _label(-7), "has label -7, and labels must be -1 (unlabelled) or 0 to 2"),
    ("label beyond the classes", _label(3), "has label 3, and labels must be -1 (unlabelled) or 0 to 2"),
    ("/samples/label deleted", _delete("samples/label"), "it has no '/samples/label'"),
    ("/classes deleted", _delete("classes"), "it has no '/classes'"),
    ("/classes integers", lambda f: _replace(f, "classes", np.arange(3)), "'/classes' must hold text; got int64"),
    ("featx_format 'one'", _set("featx_format", "one"), "featx_format must be an integer; got 'one'"),
    ("featx_format 0", _set("featx_format", 0), "featx_format must be from 1 to 1; got 0"),
    ("model not UTF-8", _set("model", np.bytes_(b"res\xffnet")), "attribute 'model' of the root is not UTF-8 text"),
    ("model a number", _set("model", 18), "root attribute 'model' must be text; got 18"),
    ("features 100 rows for 398... here 5 for 12", _features(np.zeros((5, 4), np.float32)),
     "feature dataset '/features/f' has 5 rows for 12 samples"),
    ("string feature dataset", _features(np.array(["x"] * N, dtype=object)),
     "feature dataset '/features/f' must have two dimensions"),
    ("2-D string feature dataset", _features(np.array([["x"] * 4] * N, dtype="S1")),
     "feature dataset '/features/f' must hold numbers; got |S1"),
    ("3-D feature dataset", _features(np.zeros((N, 2, 2), np.float32)),
     "feature dataset '/features/f' must have two dimensions (rows, columns); got shape (12, 2, 2)"),
    ("/features deleted", _delete("features"), "it has no '/features'"),
    ("/features a dataset", _dataset_instead_of_group("features"), "'/features' must be a group, not a dataset"),
    ("/samples a dataset", _dataset_instead_of_group("samples"), "'/samples' must be a group, not a dataset"),
    ("duplicate sample id", _ids, "1 sample id(s) appear more than once in '/samples/id'"),
    ("sample id not UTF-8", _bad_utf8_ids, "'/samples/id' holds text that is not UTF-8"),
    ("labels as floats", lambda f: _replace(f, "samples/label", np.zeros(N)), "'/samples/label' must hold integers"),
    ("split rows mismatch", _split(["train"] * 5), "'/samples/split' has 5 rows, '/samples/id' 12"),
    ("unknown split", _split(["holdout"] * N), "'/samples/split' holds 'holdout'"),
    ("class named twice", _classes_twice, "'/classes' names a class twice: 'ants'"),
    ("complete 'yes'", _set("complete", "yes"), "root attribute 'complete' must be true or false"),
    ("rows attribute wrong", _set("rows", 100), "its 'rows' attribute says 100 rows, '/samples/id' has 12"),
    ("recipe not JSON", _set("recipe", "{not json"), "root attribute 'recipe' must be a JSON object"),
    ("mean text", _set("mean", "imagenet"), "root attribute 'mean' must be numbers"),
    ("layer node not UTF-8", _node_not_utf8, "attribute 'node' of feature dataset '/features/f' is not UTF-8 text"),
    ("failed id/reason mismatch", _failed_mismatch, "'/failed/reason' has 1 rows, '/failed/id' 0"),
    ("meta column short", _meta_column_short, "'/samples/meta/source' has 3 rows, '/samples/id' 12"),
]

#: Stores that are well-formed but that some commands cannot use: (name, edit, {command: fragment}).
UNUSABLE = [
    ("no feature layer", _no_layer, "holds no feature layer"),
]


def make_variant(good: Path, edit: Callable[[h5py.File], None], out: Path) -> Path:
    """A copy of the store *good* at *out*, changed by *edit*."""
    shutil.copyfile(good, out)
    with h5py.File(out, "r+") as f:
        edit(f)
    return out
