"""Crash safety (featx.store._writer, _parts, _index, _assembly), acceptance 4: an extraction killed at any point resumes to the same store as an uninterrupted run.

The extraction runs in a subprocess (``run_pipeline.py extract``) that is killed
with SIGKILL (and once interrupted with SIGINT, as Ctrl-C does) at several
points; each time the store must open with the rows so far, and the resumed
store must equal, exactly, the one an uninterrupted run writes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import real_jpegs

from featx.extraction import ExtractConfig, extract_features
from featx.store import open_store, parts_dir

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("conv5", "fc7")

# Runs the CLI with the final write paused after its first layer, so that a kill
# lands inside it: the half-written final file exists and the index is still in place.
# The pause is the test's: it wraps the private function that copies a layer into
# the final file, in this child process only.
PAUSE_IN_FINAL_WRITE = """
import runpy, sys, time
from featx.store import _assembly

marker = sys.argv.pop(1)
copy_layer = _assembly.copy_layer

def copy_then_pause(*args, **kwargs):
    copy_layer(*args, **kwargs)
    open(marker, "w").close()  # tell the test we are inside the final write
    time.sleep(120)

_assembly.copy_layer = copy_then_pause
sys.argv = ["run_pipeline.py", *sys.argv[1:]]
runpy.run_path("run_pipeline.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory, hymenoptera) -> Path:
    """40 real JPEGs (train/val x ants/bees) and one empty file, which must end up in /failed."""
    root = tmp_path_factory.mktemp("resume-images")
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for src in real_jpegs(hymenoptera / split / cls, 10):
                shutil.copy(src, root / split / cls / src.name)
    (root / "train" / "bees" / "empty.jpg").write_bytes(b"")
    return root


def _args(images: Path, out: Path) -> list[str]:
    return [
        "extract", "--data", str(images), "--model", "alexnet", "--layer", LAYERS[0], "--layer", LAYERS[1],
        "--weights", "none", "--out", str(out), "--batch-size", "2", "--checkpoint-seconds", "0", "--no-progress",
    ]


class Extraction:
    """One extraction subprocess, in its own process group (the DataLoader workers die with it)."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.log = log
        with open(log, "w") as sink:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the extraction ended (code {self.process.returncode}) before {what}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.002)

    def signal(self, signum: int) -> int:
        os.killpg(self.process.pid, signum)
        return self.process.wait(timeout=60)

    def kill(self) -> int:
        return self.signal(signal.SIGKILL)


def _parts(out: Path) -> int:
    return len(list(parts_dir(out).glob("part-*.h5")))


def _assert_prefix_of(out: Path, expected: dict) -> int:
    """The interrupted store opens, is incomplete, and holds the first rows of the uninterrupted run."""
    with open_store(out) as store:
        assert not store.complete
        n = len(store)
        assert store.ids.tolist() == expected["ids"][:n]
        for layer in LAYERS:
            np.testing.assert_array_equal(store.features(layer), expected[layer][:n])
    with h5py.File(out, "r") as f:  # plain h5py sees the same rows
        assert f["samples/id"].asstr()[()].tolist() == expected["ids"][:n]
        np.testing.assert_array_equal(f["features/fc7"][()], expected["fc7"][:n])
    return n


def test_killed_and_interrupted_runs_resume_to_an_identical_store(images, tmp_path):
    baseline = extract_features(
        ExtractConfig.from_options(
            data=images, model="alexnet", layers=LAYERS, weights="none", out=tmp_path / "baseline.h5",
            batch_size=2, checkpoint_seconds=0, workers=0, device="cpu", progress=False,
        )
    )
    with open_store(baseline.path) as store:
        expected = {"ids": store.ids.tolist(), **{layer: store.features(layer) for layer in LAYERS}}
        expected_failed = store.failed
    assert len(expected["ids"]) == 40 and expected_failed["id"].tolist() == ["train/bees/empty.jpg"]

    out = tmp_path / "store" / "alexnet.h5"
    command = [sys.executable, "run_pipeline.py", *_args(images, out)]

    # 1. SIGKILL once the first part is committed and indexed.
    run = Extraction(command, tmp_path / "run1.log")
    run.wait_for(lambda: out.exists() and _parts(out) >= 1, "the first part")
    assert run.kill() == -signal.SIGKILL
    rows_1 = _assert_prefix_of(out, expected)
    parts_1 = _parts(out)

    # 2. Ctrl-C (SIGINT to the process group, as a terminal sends it) a few parts later.
    run = Extraction(command, tmp_path / "run2.log")
    run.wait_for(lambda: _parts(out) >= parts_1 + 3, "three more parts")
    assert run.signal(signal.SIGINT) == 130
    log = run.log.read_text()
    assert "interrupted: progress so far is saved; run the same command again to resume" in log
    assert f"resuming {out}: " in log
    assert "Traceback" not in log
    rows_2 = _assert_prefix_of(out, expected)
    assert rows_2 >= rows_1 + 3 * 2 - 1  # three parts of 2 images (one image may be the empty file)

    # 3. SIGKILL in the middle of the final write.
    marker = tmp_path / "in-final-write"
    run = Extraction([sys.executable, "-c", PAUSE_IN_FINAL_WRITE, str(marker), *_args(images, out)], tmp_path / "run3.log")
    run.wait_for(marker.exists, "the final write")
    half_written = list(out.parent.glob(f".{out.name}.tmp-*"))
    assert len(half_written) == 1
    assert run.kill() == -signal.SIGKILL
    assert _assert_prefix_of(out, expected) == 40  # every row is in the index, the store is not complete yet

    # 4. The same command finishes the store.
    run = Extraction(command, tmp_path / "run4.log")
    assert run.process.wait(timeout=120) == 0, run.log.read_text()
    with open_store(out) as store:
        assert store.complete
        assert store.ids.tolist() == expected["ids"]
        for layer in LAYERS:
            np.testing.assert_array_equal(store.features(layer), expected[layer])
        assert store.failed.equals(expected_failed)
    assert not parts_dir(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left behind
