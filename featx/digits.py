"""The built-in dataset: scikit-learn's handwritten digits as an image folder.

``sklearn.datasets.load_digits()`` ships 1,797 grey 8x8 images of the digits
0-9 inside scikit-learn, so featx has a real labelled dataset without any
download.  :func:`materialise_digits` writes them once as PNG files::

    data/digits/train/<class>/<index>.png
    data/digits/test/<class>/<index>.png

``<index>`` is the image's position in ``load_digits()``, zero-padded to four
digits so that sorted ids follow it.  The train/test split is stratified by
class and seeded, so it is the same on every machine.  Pixels 0..16 are scaled
to 0..255 by ``rint(v * 255 / 16)`` (0 -> 0, 16 -> 255; ink is white).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError

__all__ = ["DIGITS_SEED", "TEST_FRACTION", "MARKER", "digit_pixels", "digits_split", "materialise_digits"]

log = logging.getLogger("featx")

DIGITS_SEED = 0
TEST_FRACTION = 0.25
# Written last: a folder without it (or with other contents in it) is redone.
MARKER = ".featx-digits.json"
_FORMAT = 1


def digit_pixels(images: np.ndarray) -> np.ndarray:
    """Scale ``load_digits().images`` (values 0..16) to 8-bit grey levels 0..255.

    Parameters
    ----------
    images : ndarray, (n_images, 8, 8)

    Returns
    -------
    ndarray of uint8, (n_images, 8, 8)
    """
    return np.rint(np.asarray(images, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)


def digits_split(target: np.ndarray, *, test_fraction: float = TEST_FRACTION, seed: int = DIGITS_SEED) -> np.ndarray:
    """Seeded stratified split: a boolean mask, True for the test images.

    Each class contributes ``round(test_fraction * n_class)`` test images, drawn
    with ``numpy.random.default_rng(seed)`` (a generator whose stream numpy keeps
    stable across versions).
    """
    target = np.asarray(target)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(target), dtype=bool)
    for cls in np.unique(target):
        members = np.flatnonzero(target == cls)
        chosen = rng.permutation(members)[: round(test_fraction * len(members))]
        is_test[chosen] = True
    return is_test


def _expected_marker(n_images: int, per_class: int | None) -> dict:
    return {
        "source": "sklearn.datasets.load_digits",
        "format": _FORMAT,
        "images": n_images,
        "seed": DIGITS_SEED,
        "test_fraction": TEST_FRACTION,
        "per_class": per_class,
    }


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _looks_like_digits(root: Path) -> bool:
    """Whether *root* holds nothing but a (possibly half-written) digits folder."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        if len(rel) > 2 or (rel and rel[0] not in ("train", "test")):
            return False
        if len(rel) == 2 and not (rel[1].isdigit() and not dirnames):
            return False
        if any(not (name.endswith(".png") or name == MARKER) for name in filenames):
            return False
    return True


def _write_folder(tmp: Path, per_class: int | None) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digit_pixels(digits.images)
    target = np.asarray(digits.target)
    is_test = digits_split(target)
    written = 0
    for split, mask in (("train", ~is_test), ("test", is_test)):
        for cls in range(10):
            members = np.flatnonzero(mask & (target == cls))
            if per_class is not None:
                members = members[:per_class]
            folder = tmp / split / str(cls)
            folder.mkdir(parents=True, exist_ok=True)
            for index in members:
                Image.fromarray(pixels[index], mode="L").save(folder / f"{index:04d}.png")
                written += 1
    (tmp / MARKER).write_text(json.dumps(_expected_marker(written, per_class), indent=1) + "\n")
    return written


def materialise_digits(root: str | os.PathLike = Path("data/digits"), *, per_class: int | None = None) -> Path:
    """Write scikit-learn's digits under *root* once; return *root*.

    Idempotent: a folder whose marker file says it is complete is reused as it
    is.  The folder is built under a temporary name and renamed into place, so
    an interrupted run leaves no half-written dataset behind; a folder without
    the marker (from an older or interrupted run) is rebuilt.

    Parameters
    ----------
    root : path
        Target folder (default ``data/digits``).
    per_class : int, optional
        Keep only the first *per_class* images of each class in each split
        (for quick tests); the default keeps all 1,797.

    Raises
    ------
    DataError
        *root* exists and holds files that are not featx's digits.
    """
    root = Path(root)
    if per_class is not None and per_class < 1:
        raise DataError(f"per_class must be a positive integer or None, got {per_class!r}")
    marker = _read_marker(root)
    if marker is not None and marker.get("per_class") == per_class and marker.get("format") == _FORMAT:
        return root
    if root.exists() and not (root.is_dir() and _looks_like_digits(root)):
        raise DataError(
            f"'{root}' exists but is not featx's built-in digits folder (it holds other files); "
            "move it away, or pass --data DIR to use it as your own dataset"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info(f"writing scikit-learn's handwritten digits to {root} (once)")
    try:
        _write_folder(tmp, per_class)
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process finished first: its folder is as good as ours.
            if _read_marker(root) != _read_marker(tmp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
