"""Shared fixtures: real JPEGs, tiny image folders, and a CLI runner.

Everything runs offline: models use ``--weights none`` or state dicts saved here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.cli import main

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The 397 real JPEGs (+1 GIF) of ../shared/data/hymenoptera_data (train/val, ants/bees)."""
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"real test images not found at {HYMENOPTERA}")
    return HYMENOPTERA


def real_jpegs(root: Path, n: int) -> list[Path]:
    """The first *n* JPEGs of a folder, in sorted order."""
    return sorted(root.rglob("*.jpg"))[:n]


@pytest.fixture
def small_dataset(tmp_path: Path, hymenoptera: Path) -> Path:
    """A train/val folder of 12 real JPEGs: 3 ants and 3 bees in each split."""
    root = tmp_path / "small"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            for src in real_jpegs(hymenoptera / split / cls, 3):
                dst = root / split / cls / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)
    return root


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    """A labelled folder of 10 small random RGB PNGs in 2 classes (no split)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "synthetic"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, size=(40 + 3 * i, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


@pytest.fixture
def run_cli(capsys):
    """Run ``run_pipeline.py`` in-process: returns ``(exit_code, stdout, stderr)``."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
