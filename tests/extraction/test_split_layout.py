"""Split folders in any case and by their usual synonyms; the layout found is logged (featx.extraction._images)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from conftest import real_jpegs

from featx.extraction._folder import SPLIT_FOLDERS, discover_images, split_of_folder
from featx.store import SPLIT_NAMES, open_store


def _folder(root: Path, ids: list[str]) -> Path:
    """Files at *ids* under *root* (their content does not matter for discovery)."""
    for image_id in ids:
        path = root / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")
    return root


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    """A CLI run of another test may have left a handler bound to a closed capsys stream."""
    logging.getLogger("featx").handlers.clear()


@pytest.mark.parametrize(
    "folder, split",
    [
        ("train", "train"), ("Train", "train"), ("TRAINING", "train"), ("training", "train"),
        ("val", "val"), ("Val", "val"), ("valid", "val"), ("Validation", "val"), ("VALIDATION", "val"),
        ("test", "test"), ("TEST", "test"), ("Testing", "test"),
    ],
)
def test_split_folders_in_any_case_and_by_synonym(tmp_path, folder, split):
    root = _folder(tmp_path / "data", [f"{folder}/ants/1.jpg", f"{folder}/bees/2.jpg", "other/bees/3.jpg"])
    collection = discover_images(root)
    assert collection.classes == ("ants", "bees", "other")  # the split folder is no class
    assert dict(zip(collection.ids, collection.splits)) == {
        f"{folder}/ants/1.jpg": split, f"{folder}/bees/2.jpg": split, "other/bees/3.jpg": "",
    }
    assert split in SPLIT_NAMES  # the recorded values stay the documented ones


def test_every_split_folder_name_records_a_documented_split():
    assert set(SPLIT_FOLDERS.values()) == set(SPLIT_NAMES) == {"train", "val", "test"}
    assert [split_of_folder(n) for n in ("Training", "VALID", "Testing", "ants", "train2017")] == [
        "train", "val", "test", None, None,
    ]


def test_the_issue_layout_is_read_as_splits_with_canonical_values(tmp_path):
    root = _folder(
        tmp_path / "data",
        ["Train/ants/1.jpg", "Train/bees/2.jpg", "Validation/ants/3.jpg", "valid/bees/4.jpg", "TEST/ants/5.jpg"],
    )
    collection = discover_images(root)
    assert collection.classes == ("ants", "bees")
    assert collection.ids == (
        "TEST/ants/5.jpg", "Train/ants/1.jpg", "Train/bees/2.jpg", "Validation/ants/3.jpg", "valid/bees/4.jpg",
    )
    assert collection.splits == ("test", "train", "train", "val", "val")
    assert collection.labels.tolist() == [0, 0, 1, 0, 1]


def test_the_layout_found_is_described_and_logged(tmp_path, caplog):
    root = _folder(tmp_path / "data", ["Train/ants/1.jpg", "Train/bees/2.jpg", "Validation/ants/3.jpg", "loose.jpg"])
    collection = discover_images(root)
    assert caplog.records == []  # discovery only describes; extract logs it once its checks have passed
    with caplog.at_level(logging.INFO, logger="featx"):
        collection.log_layout()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "INFO",
            (
                f"found 4 images in '{root}': split folders Train/ = train (2), Validation/ = val (1); "
                "2 classes (ants, bees); 1 unlabelled image(s) outside class folders; 1 image(s) outside split folders"
            ),
        ),
    ]
    assert discover_images(_folder(tmp_path / "flat", ["a/1.jpg", "b/2.jpg", "c/3.jpg"])).layout == (
        (logging.INFO, f"found 3 images in '{tmp_path / 'flat'}': no split folders; 3 classes (a, b, c)"),
    )


@pytest.mark.parametrize(
    "ids, warning",
    [
        (
            ["train2017/1.jpg", "val2017/2.jpg"],
            (
                "class folder(s) named like a split folder: train2017/, val2017/; they are read as classes, not splits "
                "(split folders are named train/training, val/valid/validation, test/testing (any case), at the top "
                "of the data folder): rename them if they are splits"
            ),
        ),
        (
            ["train/ants/1.jpg", "train/Val_Set/2.jpg"],
            (
                "class folder(s) named like a split folder: train/Val_Set/; they are read as classes, not splits "
                "(split folders are named train/training, val/valid/validation, test/testing (any case), at the top "
                "of the data folder): rename them if they are splits"
            ),
        ),
    ],
)
def test_a_class_folder_named_like_a_split_is_a_warning(tmp_path, ids, warning):
    layout = discover_images(_folder(tmp_path / "data", ids)).layout
    assert [text for level, text in layout if level == logging.WARNING] == [warning]


def test_split_folders_inside_a_class_folder_are_a_warning(tmp_path):
    root = _folder(tmp_path / "data", ["hymenoptera/train/ants/1.jpg", "hymenoptera/Val/bees/2.jpg"])
    collection = discover_images(root)
    assert collection.classes == ("hymenoptera",)
    assert [text for level, text in collection.layout if level == logging.WARNING] == [
        (
            "class folder(s) holding split folders: hymenoptera/ (train/, Val/); each is read as one class: pass the "
            f"folder that holds the split folders as data (e.g. '{root / 'hymenoptera'}')"
        )
    ]


def test_ordinary_class_names_are_no_warning(tmp_path):
    names = ["contest", "interval", "Testudo", "trains", "valley", "ants"]
    collection = discover_images(_folder(tmp_path / "data", [f"{n}/1.jpg" for n in names]))
    assert collection.classes == tuple(sorted(names))
    assert [level for level, _ in collection.layout] == [logging.INFO]


def test_extract_records_canonical_splits_and_prints_the_layout(tmp_path, hymenoptera, run_cli):
    root = tmp_path / "data"
    for folder, split in (("Train", "train"), ("Validation", "val")):
        for cls in ("ants", "bees"):
            (root / folder / cls).mkdir(parents=True)
            for src in real_jpegs(hymenoptera / split / cls, 1):
                shutil.copy(src, root / folder / cls / src.name)
    out = tmp_path / "s.h5"
    code, _, stderr = run_cli(
        "extract", "--data", root, "--model", "resnet18", "--layer", "conv2", "--weights", "none",
        "--image-size", "32", "--workers", "0", "--no-progress", "--out", out,
    )
    assert code == 0, stderr
    assert (
        f"found 4 images in '{root}': split folders Train/ = train (2), Validation/ = val (2); 2 classes (ants, bees)"
        in stderr.splitlines()
    )
    with open_store(out) as store:
        assert store.classes == ["ants", "bees"]
        assert sorted(set(store.splits)) == ["train", "val"]
        assert [i.split("/")[0] for i in store.ids] == ["Train"] * 2 + ["Validation"] * 2  # ids keep the spelling
    # A user error found after discovery is still one line: the layout is logged once the checks have passed.
    code, _, stderr = run_cli(
        "extract", "--data", root, "--model", "resnet18", "--layer", "conv9", "--weights", "none",
        "--image-size", "32", "--workers", "0", "--no-progress", "--out", tmp_path / "other.h5",
    )
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: unknown layer 'conv9'")
