"""The built-in dataset: scikit-learn's digits written once as a PNG image folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from featx import cli
from featx.digits import MARKER, digit_pixels, digits_split, materialise_digits
from featx.errors import DataError
from featx.extraction import open_source


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    return materialise_digits(tmp_path_factory.mktemp("data") / "digits")


def test_pixels_scale_0_16_to_0_255_exactly():
    levels = digit_pixels(np.arange(17, dtype=np.float64))
    assert levels.dtype == np.uint8
    assert levels[0] == 0 and levels[16] == 255
    assert levels.tolist() == [round(v * 255 / 16) for v in range(17)]  # 8 -> 127.5 -> 128
    assert np.all(np.diff(levels.astype(int)) > 0)


def test_every_png_holds_its_digit(digits_root: Path, digits):
    expected = digit_pixels(digits.images)
    files = sorted(digits_root.rglob("*.png"))
    assert len(files) == 1797
    for path in files:
        index = int(path.stem)
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (8, 8)
            assert np.array_equal(np.asarray(image), expected[index])
        assert int(path.parent.name) == digits.target[index]


def test_split_is_stratified_seeded_and_disjoint(digits_root: Path, digits):
    is_test = digits_split(digits.target)
    assert np.array_equal(is_test, digits_split(digits.target))  # same on every call
    for cls in range(10):
        n = int(np.count_nonzero(digits.target == cls))
        assert np.count_nonzero(is_test & (digits.target == cls)) == round(0.25 * n)
    on_disk = {split: sorted(int(p.stem) for p in (digits_root / split).rglob("*.png")) for split in ("train", "test")}
    assert on_disk["test"] == np.flatnonzero(is_test).tolist()
    assert on_disk["train"] == np.flatnonzero(~is_test).tolist()


def test_folder_reads_as_a_labelled_split_image_folder(digits_root: Path, digits):
    collection = open_source(digits_root)
    assert collection.classes == tuple(str(c) for c in range(10))
    assert len(collection) == 1797
    assert set(collection.splits) == {"train", "test"}
    index = np.array([int(Path(i).stem) for i in collection.ids])
    assert np.array_equal(collection.labels, digits.target[index])
    # Zero-padded names: within a class folder, sorted ids follow the load_digits() index.
    first_test_zero = np.flatnonzero(digits_split(digits.target) & (digits.target == 0))[0]
    assert collection.ids[0] == f"test/0/{first_test_zero:04d}.png"
    for split in ("train", "test"):
        rows = [k for k, s in enumerate(collection.splits) if s == split and collection.labels[k] == 1]
        assert index[rows].tolist() == sorted(index[rows].tolist())


def test_second_call_reuses_the_folder(digits_root: Path):
    before = {p: p.stat().st_mtime_ns for p in digits_root.rglob("*")}
    assert materialise_digits(digits_root) == digits_root
    assert {p: p.stat().st_mtime_ns for p in digits_root.rglob("*")} == before


def test_half_written_folder_is_redone(tmp_path: Path):
    root = materialise_digits(tmp_path / "digits", per_class=2)
    assert len(list(root.rglob("*.png"))) == 40
    (root / MARKER).unlink()  # as if the run had been killed before the marker was written
    for path in list(root.rglob("*.png"))[:15]:
        path.unlink()
    materialise_digits(root, per_class=2)
    assert len(list(root.rglob("*.png"))) == 40
    assert json.loads((root / MARKER).read_text())["images"] == 40
    assert not list(tmp_path.glob(".digits.tmp-*"))


def test_other_size_rebuilds(tmp_path: Path):
    root = materialise_digits(tmp_path / "digits", per_class=1)
    assert len(list(root.rglob("*.png"))) == 20
    materialise_digits(root, per_class=3)
    assert len(list(root.rglob("*.png"))) == 60


def test_foreign_folder_is_refused_not_deleted(tmp_path: Path):
    root = tmp_path / "digits"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "tom.jpg").write_bytes(b"not ours")
    with pytest.raises(DataError, match=r"'.*digits' exists but is not featx's built-in digits folder .*--data DIR"):
        materialise_digits(root)
    assert (root / "cats" / "tom.jpg").read_bytes() == b"not ours"


def test_bad_per_class():
    with pytest.raises(DataError, match=r"per_class must be a positive integer or None, got 0"):
        materialise_digits(Path("unused"), per_class=0)


def test_cli_default_data_is_the_digits(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = cli._data_folder(argparse.Namespace(data=None))
    assert folder == Path("data/digits")
    assert len(open_source(folder)) == 1797
    assert cli._data_folder(argparse.Namespace(data=Path("mine"))) == Path("mine")
