"""`info STORE`: what a store holds, for a finished and an interrupted extraction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_real_images, quick_extract
from stores import interrupted_store

from featx import open_store
from featx.formatting import format_bytes
from featx.store import describe_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory, hymenoptera: Path) -> Path:
    """12 real JPEGs (train/val x ants/bees) plus one corrupt file, resnet18 conv5 + penultimate."""
    root = copy_real_images(hymenoptera, tmp_path_factory.mktemp("info") / "images")
    (root / "val" / "bees" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return quick_extract(root, root.parent / "store.h5", layers=("conv5", "penultimate")).path


def _line(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(key))


def test_complete_store(store: Path):
    text = describe_store(store)
    assert _line(text, "status:") == "status:         complete: 12 rows of 13 images"
    assert _line(text, "model:") == "model:          resnet18"
    assert _line(text, "weights:").startswith("weights:        none: RANDOM INITIALISATION (seed 0), not pretrained")
    assert _line(text, "preprocessing:") == (
        "preprocessing:  resize shorter side to 73 (bilinear), centre crop 64x64, normalise "
        "mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)"
    )
    assert _line(text, "size on disk:") == f"size on disk:   {format_bytes(store.stat().st_size)}"
    assert "layers (2):" in text


def test_layers_with_node_shape_and_pool(store: Path):
    lines = describe_store(store).splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  conv5") or line.startswith("  penultimate")}
    # resnet18 at 64 px: conv5 is the output of layer4 (its last ReLU), 512x2x2, averaged to 512 columns; the penultimate is flat already.
    assert rows["conv5"] == ["conv5", "layer4.1.relu_1", "512x2x2", "avg", "512", "float32"]
    assert rows["penultimate"] == ["penultimate", "flatten", "512", "none", "512", "float32"]


def test_samples_per_class_and_split_and_failures(store: Path):
    text = describe_store(store)
    assert "samples: 12 rows, 2 classes" in text
    table = text.split("samples: 12 rows, 2 classes\n", 1)[1].splitlines()
    assert table[0].split() == ["class", "train", "val", "total"]
    assert table[2].split() == ["ants", "3", "3", "6"]
    assert table[3].split() == ["bees", "3", "3", "6"]
    assert table[4].split() == ["total", "6", "6", "12"]
    assert "failed: 1 image(s) could not be used (in /failed):" in text
    reason = open_store(store).failed.reason[0]
    assert f"  val/bees/broken.jpg: {reason}" in text


def test_interrupted_store_says_incomplete_with_its_rows(small_dataset: Path, tmp_path: Path):
    path, values = interrupted_store(small_dataset, tmp_path / "half.h5", stop=7, failed=(2,))
    with open_store(path) as store:
        assert not store.complete and len(store) == 6  # the index over the parts opens
    text = describe_store(path)
    assert _line(text, "status:") == (
        "status:         INCOMPLETE: 7 of 12 images processed, 6 rows; the extraction was interrupted, "
        f"run the same extract command to resume (progress is in {path}.parts)"
    )
    assert "failed: 1 image(s) could not be used" in text
    # The size counts the part files, where the rows are until the run finishes.
    parts = sum(p.stat().st_size for p in (tmp_path / "half.h5.parts").iterdir())
    assert _line(text, "size on disk:") == f"size on disk:   {format_bytes(path.stat().st_size + parts)}"


def test_store_killed_mid_run(hymenoptera: Path, tmp_path: Path):
    """SIGKILL an extraction of 398 images after its first checkpoint: info reports what it holds."""
    out = tmp_path / "killed.h5"
    command = [
        sys.executable, str(REPO / "run_pipeline.py"), "extract", "--data", str(hymenoptera), "--model", "resnet18",
        "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--checkpoint-seconds", "0", "--no-progress", "--out", str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    with open_store(out) as store:
        rows, done = len(store), store.meta["candidates_done"]
    assert 0 < rows <= done < 398
    assert _line(describe_store(out), "status:").startswith(
        f"status:         INCOMPLETE: {done} of 398 images processed, {rows} rows;"
    )


def test_cli_info(run_cli, store: Path):
    code, out, err = run_cli("info", store)
    assert (code, err) == (0, "")
    assert out == describe_store(store) + "\n"


def test_cli_info_missing_store(run_cli, tmp_path: Path):
    code, out, err = run_cli("info", tmp_path / "nope.h5")
    assert code == 2 and out == ""
    assert err == (
        f"error: feature store not found: '{tmp_path / 'nope.h5'}'; "
        "check the path, or create the store by extracting features into it\n"
    )


def test_cli_info_on_a_folder_or_a_text_file(run_cli, tmp_path: Path):
    code, out, err = run_cli("info", tmp_path)
    assert (code, out) == (2, "")
    assert err == f"error: a feature store is a file, not a folder: '{tmp_path}'; check the path\n"
    (tmp_path / "notes.txt").write_text("not a store")
    code, out, err = run_cli("info", tmp_path / "notes.txt")
    assert (code, out) == (2, "")
    assert err == f"error: not an HDF5 file, so not a feature store: '{tmp_path / 'notes.txt'}'; check the path\n"
