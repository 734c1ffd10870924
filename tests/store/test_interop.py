"""Other tools read a store: h5py alone, xarray (h5netcdf), pandas via featx, and h5dump.

Each route must find the same ids and feature values as :func:`featx.open_store`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import copy_real_images, quick_extract

from featx import open_store
from featx.errors import StoreError


@pytest.fixture(scope="module")
def store(tmp_path_factory, hymenoptera: Path) -> Path:
    """12 real JPEGs and one corrupt file; conv5 and penultimate, then conv2 added in a second run."""
    root = copy_real_images(hymenoptera, tmp_path_factory.mktemp("interop") / "images")
    (root / "train" / "ants" / "empty.jpg").write_bytes(b"")
    path = quick_extract(root, root.parent / "store.h5", layers=("conv5", "penultimate")).path
    # A second extraction adds a layer to the finished store (the file is rewritten with all three).
    return quick_extract(root, path, layers=("conv2",)).path


@pytest.fixture(scope="module")
def reference(store: Path) -> dict:
    with open_store(store) as s:
        return {
            "ids": list(s.ids), "labels": s.labels, "splits": list(s.splits), "classes": s.classes,
            "layers": s.layers, "features": {name: s.features(name) for name in s.layers},
            "failed": list(s.failed.id),
        }


def test_store_layers_are_only_feature_datasets(store: Path, reference: dict):
    assert reference["layers"] == ["conv2", "conv5", "penultimate"]
    with open_store(store) as s, pytest.raises(StoreError, match=r"layer 'id' is not in store"):
        s.features("id")  # /features/id is the sample axis, not a layer


# Runs in a fresh interpreter: reading needs nothing but h5py and numpy.
H5PY_ONLY = r"""
import json, sys
import h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    ids = f["samples/id"].asstr()[()].tolist()
    labels = f["samples/label"][()].tolist()
    classes = f["classes"].asstr()[()].tolist()
    layers = sorted(name for name, d in f["features"].items() if "node" in d.attrs)
    np.savez(sys.argv[2], **{name: f["features"][name][()] for name in layers})
    pool = dict(f["features/conv5"].attrs)["pool"]
print(json.dumps({"ids": ids, "labels": labels, "classes": classes, "layers": layers, "pool": pool,
                  "featx_imported": any(m.split(".")[0] == "featx" for m in sys.modules)}))
"""


def test_h5py_alone(store: Path, reference: dict, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-c", H5PY_ONLY, str(store), str(tmp_path / "x.npz")],
        capture_output=True, text=True, check=True,
    )
    seen = json.loads(done.stdout)
    assert seen["featx_imported"] is False
    assert seen["ids"] == reference["ids"]
    assert seen["labels"] == reference["labels"].tolist()
    assert seen["classes"] == reference["classes"]
    assert seen["layers"] == reference["layers"]
    assert seen["pool"] == "avg"
    with np.load(tmp_path / "x.npz") as data:
        for name in reference["layers"]:
            assert np.array_equal(data[name], reference["features"][name])


def test_xarray_features_are_labelled_by_sample_id(store: Path, reference: dict):
    with xr.open_dataset(store, engine="h5netcdf", group="features") as ds:
        assert sorted(ds.data_vars) == reference["layers"]
        assert ds["id"].values.tolist() == reference["ids"]
        for name in reference["layers"]:
            assert ds[name].dims == ("id", f"{name}_column")
            assert np.array_equal(ds[name].values, reference["features"][name])
        one = reference["ids"][4]
        assert np.array_equal(ds["penultimate"].sel(id=one).values, reference["features"]["penultimate"][4])


def test_xarray_samples_classes_and_failures(store: Path, reference: dict):
    with xr.open_dataset(store, engine="h5netcdf", group="samples") as ds:
        assert ds["id"].values.tolist() == reference["ids"]
        assert np.array_equal(ds["label"].values, reference["labels"])
        assert ds["split"].values.tolist() == reference["splits"]
    with xr.open_dataset(store, engine="h5netcdf") as root:
        assert root["classes"].values.tolist() == reference["classes"]
        assert root.attrs["model"] == "resnet18" and bool(root.attrs["complete"])
    with xr.open_dataset(store, engine="h5netcdf", group="failed") as ds:
        assert ds["id"].values.tolist() == reference["failed"] == ["train/ants/empty.jpg"]
        assert ds["reason"].values.tolist()[0].startswith("empty file")


def test_pandas_via_featx(store: Path, reference: dict):
    with open_store(store) as s:
        frame = s.to_dataframe("conv5")
        samples = s.samples()
    assert frame.index.tolist() == reference["ids"]
    assert frame["label"].tolist() == reference["labels"].tolist()
    assert np.array_equal(frame[[f"conv5_{j}" for j in range(512)]].to_numpy(), reference["features"]["conv5"])
    assert samples["class"].tolist() == [reference["classes"][i] for i in reference["labels"]]


# CI installs hdf5-tools (.ci/run): there, a missing h5dump is a failure, not a skip.
@pytest.mark.skipif(
    shutil.which("h5dump") is None and not os.environ.get("CI"),
    reason="h5dump not installed (Debian: apt-get install hdf5-tools)",
)
def test_h5dump(store: Path, reference: dict, tmp_path: Path):
    assert shutil.which("h5dump"), "CI must have h5dump: .ci/run installs hdf5-tools"
    text = subprocess.run(
        ["h5dump", "-d", "/samples/id", "-y", "-w", "0", str(store)], capture_output=True, text=True, check=True
    ).stdout
    data = text.split("DATA {", 1)[1].split("}", 1)[0]
    assert re.findall(r'"((?:[^"\\]|\\.)*)"', data) == reference["ids"]
    # Binary output is the float32 values themselves, row after row.
    subprocess.run(
        ["h5dump", "-d", "/features/penultimate", "-b", "LE", "-o", str(tmp_path / "p.bin"), str(store)],
        capture_output=True, check=True,
    )
    values = np.fromfile(tmp_path / "p.bin", dtype="<f4").reshape(len(reference["ids"]), -1)
    assert np.array_equal(values, reference["features"]["penultimate"])
    header = subprocess.run(["h5dump", "-A", str(store)], capture_output=True, text=True, check=True).stdout
    assert 'DATASET "penultimate"' in header and 'ATTRIBUTE "node"' in header
