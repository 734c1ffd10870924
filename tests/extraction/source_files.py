"""The same real images as a folder, a manifest, a tar of the tree and WebDataset shards (helpers of the source tests)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from featx.store import open_store


def image_ids(root: Path) -> list[str]:
    """The images of a folder tree, as sorted ids (paths relative to it)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def split_and_class(image_id: str) -> tuple[str, str]:
    """``train/ants/1.jpg`` -> ``('train', 'ants')``."""
    split, cls = image_id.split("/")[:2]
    return split, cls


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    """A CSV or Parquet manifest of *rows* (by *path*'s ending)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def tree_manifest(root: Path, path: Path, *, prefix: str = "") -> Path:
    """A manifest of every image of the tree at *root*: ``path`` = *prefix* + id, label and split from its folders."""
    rows = []
    for image_id in image_ids(root):
        split, cls = split_and_class(image_id)
        rows.append({"path": prefix + image_id, "label": cls, "split": split, "photographer": f"p{len(rows) % 3}"})
    return write_manifest(path, rows)


def tar_tree(root: Path, path: Path) -> Path:
    """An uncompressed tar of the tree at *root* (members are its ids)."""
    with tarfile.open(path, "w") as tar:
        for image_id in image_ids(root):
            tar.add(root / image_id, arcname=image_id)
    return path


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def webdataset_shards(root: Path, folder: Path, shards: int = 2) -> dict[str, str]:
    """The images of *root* as WebDataset shards ``folder/wds-00000N.tar``, ``KEY.jpg`` + ``.cls`` + ``.json``.

    Returns the store id of each image (``wds-000000.tar/000003``) -> its id in the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ids = image_ids(root)
    where = {}
    for number in range(shards):
        name = f"wds-{number:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for key, image_id in enumerate(ids):
                if key % shards != number:
                    continue
                split, cls = split_and_class(image_id)
                add_member(tar, f"{key:06d}.jpg", (root / image_id).read_bytes())
                add_member(tar, f"{key:06d}.cls", cls.encode())
                add_member(tar, f"{key:06d}.json", json.dumps({"split": split, "source": "test"}).encode())
                where[f"{name}/{key:06d}"] = image_id
    return where


def store_by_folder_id(path: Path, folder_id) -> dict:
    """A store's rows in the folder's id order (*folder_id*: store id -> folder id), with its classes."""
    with open_store(path) as store:
        ids = [folder_id(i) for i in store.ids]
        order = np.argsort(np.array(ids, dtype=object))
        return {
            "ids": [ids[i] for i in order],
            "labels": store.labels[order],
            "splits": store.splits[order].tolist(),
            "classes": store.classes,
            "features": {name: store.features(name)[order] for name in store.layers},
            "failed": len(store.failed),
        }


def assert_same_store(got: dict, expected: dict) -> None:
    """Features, labels, splits and classes equal bit for bit, row for row."""
    assert got["ids"] == expected["ids"]
    np.testing.assert_array_equal(got["labels"], expected["labels"])
    assert got["splits"] == expected["splits"]
    assert got["classes"] == expected["classes"]
    assert got["failed"] == expected["failed"] == 0
    assert set(got["features"]) == set(expected["features"])
    for name, values in expected["features"].items():
        assert got["features"][name].tobytes() == values.tobytes(), name
