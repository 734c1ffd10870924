"""Image discovery and decoding.

A data folder is an image folder in the torchvision/Keras sense::

    root/<class>/<image>                  labelled, no split
    root/{train,val,test}/<class>/<image> labelled, with a split
    root/<image>                          unlabelled (label -1)

Split folders are recognised in any case and by their usual synonyms
(:data:`SPLIT_FOLDERS`: ``Train/``, ``training/``, ``Validation/``, ``valid/``,
``TEST/``, ...); the split recorded is always the canonical ``'train'``,
``'val'`` or ``'test'``.  The layout found is described (info), and a class
folder whose name looks like a split (``train2017/``, ``val_set/``, or a split
folder inside a class folder) is a warning: it is most likely a layout featx
did not understand.  Both are logged by :meth:`ImageCollection.log_layout`,
which ``extract`` calls once its checks have passed (an error stays one line).

Sample ids are paths relative to ``root`` with ``/`` separators, sorted, so the
row order of a store never depends on the file system's listing order.  They
keep the folders' own spelling (``Train/ants/1.jpg``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, message, option
from ..store import SPLIT_NAMES

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "SPLIT_FOLDERS",
    "split_of_folder",
    "ImageCollection",
    "ImageDecodeError",
    "discover_images",
    "collect_images",
    "load_image",
    "ImageDataset",
    "ImageBatch",
    "collate_images",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# PIL's own default; images above it are refused before their pixels are decoded.
MAX_IMAGE_PIXELS = 89_478_485
# Folder names read as a split (compared case-insensitively) -> the split recorded
# in /samples/split, one of featx.store.SPLIT_NAMES.
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
# What else a split folder is called in the wild (COCO's train2017, val_set,
# TrainImages): a class folder named so is reported, not silently taken as a class.
_SPLIT_WORDS = "|".join(sorted(SPLIT_FOLDERS, key=len, reverse=True))  # longest first: 'training' before 'train'
_SPLIT_WORD = re.compile(rf"^(?:{_SPLIT_WORDS})(?:set|data|images?|imgs|split)?\d*$")

log = logging.getLogger("featx")


@dataclass(frozen=True)
class ImageCollection:
    """The images of a data folder, in sorted id order.

    Attributes
    ----------
    root : Path
        The data folder; ids are relative to it.
    ids : tuple of str, (n_images,)
        Relative paths with ``/`` separators, sorted.
    labels : ndarray of int32, (n_images,)
        Index into ``classes``, ``-1`` for unlabelled images.
    splits : tuple of str, (n_images,)
        ``'train'``, ``'val'``, ``'test'`` or ``''``.
    classes : tuple of str
        Class names, sorted.
    fingerprint : str
        Hash of the ids and file sizes: tells whether the folder changed.
    layout : tuple of (int, str)
        What discovery found, as ``(logging level, message)``: the layout
        (INFO) and folders that look misread (WARNING).
    """

    root: Path
    ids: tuple[str, ...]
    labels: np.ndarray
    splits: tuple[str, ...]
    classes: tuple[str, ...]
    fingerprint: str
    layout: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def log_layout(self) -> None:
        """Log the layout found and its warnings (the ``featx`` logger; the CLI shows INFO unless ``-q``)."""
        for level, text in self.layout:
            log.log(level, text)

    def path(self, index: int) -> Path:
        return self.root / self.ids[index]


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if _is_image_name(name):
                found.append((rel / name).as_posix())
    return sorted(found)


def _fingerprint(root: Path, ids: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for image_id in ids:
        try:
            size = os.stat(root / image_id).st_size
        except OSError:
            size = -1  # a broken link: still a sample, it fails at decoding
        digest.update(f"{image_id}\0{size}\n".encode())
    return digest.hexdigest()


def split_of_folder(name: str) -> str | None:
    """The split a top-level folder stands for, or None if it is no split folder.

    Examples
    --------
    >>> split_of_folder("Validation"), split_of_folder("TEST"), split_of_folder("ants")
    ('val', 'test', None)
    """
    return SPLIT_FOLDERS.get(name.casefold())


def _looks_like_split(name: str) -> bool:
    """Whether a folder name reads like a split folder's (``train2017``, ``Val_Set``, ``TrainImages``)."""
    folded = name.casefold()
    words = [w for w in re.split(r"[^0-9a-z]+", folded) if w]
    return any(_SPLIT_WORD.match(w) for w in [*words, "".join(words)])


def _some(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


def _layout_report(
    root: Path,
    ids: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[str | None],
    split_dirs: dict[str, str],
    class_dirs: dict[str, set[str]],
) -> tuple[tuple[int, str], ...]:
    """The layout found (INFO) and the folders that look like a layout misread (WARNING)."""
    classes = sorted({c for c in labels if c is not None})
    if split_dirs:
        counts = Counter(i.split("/", 1)[0] for i in ids)
        layout = "split folders " + ", ".join(
            f"{d}/ = {split_dirs[d]} ({counts[d]:,})" for d in sorted(split_dirs, key=str.casefold)
        )
    else:
        layout = "no split folders"
    described = "no class folders"
    if classes:
        described = f"{len(classes)} class{'es' if len(classes) != 1 else ''} ({_some(classes)})"
    extras = []
    unlabelled = sum(1 for c in labels if c is None)
    if unlabelled:
        extras.append(f"{unlabelled:,} unlabelled image(s) outside class folders")
    outside = sum(1 for s in splits if not s)
    if split_dirs and outside:
        extras.append(f"{outside:,} image(s) outside split folders")
    found = f"{len(splits):,} image{'s' if len(splits) != 1 else ''}"
    report = [(logging.INFO, f"found {found} in '{root}': {layout}; {described}" + "".join(f"; {e}" for e in extras))]

    named_like_splits = sorted(
        (d for d in class_dirs if _looks_like_split(d.rsplit("/", 1)[-1])), key=str.casefold
    )
    allowed = "split folders are named " + ", ".join(
        "/".join(n for n in SPLIT_FOLDERS if SPLIT_FOLDERS[n] == split) for split in SPLIT_NAMES
    ) + " (any case), at the top of the data folder"
    if named_like_splits:
        text = (
            f"class folder(s) named like a split folder: {_some([d + '/' for d in named_like_splits])}; they are read "
            f"as classes, not splits ({allowed}): rename them if they are splits"
        )
        report.append((logging.WARNING, text))
    holding_splits = sorted(
        (d for d, subfolders in class_dirs.items() if any(split_of_folder(f) for f in subfolders)), key=str.casefold
    )
    if holding_splits:
        held = [
            f"{d}/ ({', '.join(sorted((f + '/' for f in class_dirs[d] if split_of_folder(f)), key=str.casefold))})"
            for d in holding_splits
        ]
        text = (
            f"class folder(s) holding split folders: {_some(held)}; each is read as one class: pass the folder "
            f"that holds the split folders as {option('data')} (e.g. '{root / holding_splits[0]}')"
        )
        report.append((logging.WARNING, text))
    return tuple(report)


def discover_images(root: str | os.PathLike) -> ImageCollection:
    """List the images of a data folder with their labels and splits.

    Parameters
    ----------
    root : path
        The data folder (see the module docstring for the layouts understood).

    Raises
    ------
    DataError
        The folder does not exist, is not a folder, or holds no image.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(
            message(
                f"data folder not found: '{root}' does not exist",
                hint=f"pass {option('data', 'DIR')} with a folder of images, one subfolder per class "
                "(optionally under train/, val/, test/)",
            )
        )
    if not root.is_dir():
        raise DataError(message(option("data"), allowed="a folder", got=root, hint="give the folder that holds it"))
    ids = _walk_images(root)
    if not ids:
        raise DataError(
            message(
                f"no images found in '{root}': looked for files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}",
                hint="put images in one subfolder per class",
            )
        )
    # Top-level folders named like a split, in the user's spelling -> the split recorded.
    split_dirs = {d: split_of_folder(d) for d in {i.split("/", 1)[0] for i in ids if "/" in i}}
    split_dirs = {d: split for d, split in split_dirs.items() if split is not None}

    labels_by_id: list[str | None] = []
    splits: list[str] = []
    # Class folder (as a path under root) -> its subfolders, for the layout report.
    class_dirs: dict[str, set[str]] = {}
    for image_id in ids:
        parts = image_id.split("/")
        split, prefix = "", ""
        if len(parts) > 1 and parts[0] in split_dirs:
            split, prefix, parts = split_dirs[parts[0]], parts[0] + "/", parts[1:]
        labels_by_id.append(parts[0] if len(parts) > 1 else None)
        splits.append(split)
        if len(parts) > 1:
            class_dirs.setdefault(prefix + parts[0], set()).update(parts[1:2] if len(parts) > 2 else ())
    classes = tuple(sorted({c for c in labels_by_id if c is not None}))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] if c is not None else -1 for c in labels_by_id], dtype=np.int32)
    return ImageCollection(
        root=root,
        ids=tuple(ids),
        labels=labels,
        splits=tuple(splits),
        classes=classes,
        fingerprint=_fingerprint(root, ids),
        layout=_layout_report(root, ids, splits, labels_by_id, split_dirs, class_dirs),
    )


def collect_images(paths: Iterable[str | os.PathLike]) -> ImageCollection:
    """Build an unlabelled-or-labelled collection from folders and/or image files.

    A single folder is read with :func:`discover_images`.  Loose files (or several
    folders) become one collection rooted at their common parent, unlabelled.
    """
    paths = [Path(p).expanduser() for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        return discover_images(paths[0])
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(p / i for i in _walk_images(p))
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            raise DataError(message(f"image not found: '{p}' does not exist", hint="pass image files or folders"))
    if not files:
        raise DataError(message("no images found in", got=", ".join(map(str, paths))))
    absolute = [f.absolute() for f in files]
    root = Path(os.path.commonpath([f.parent for f in absolute]))
    ids = sorted({f.relative_to(root).as_posix() for f in absolute})
    return ImageCollection(
        root=root,
        ids=tuple(ids),
        labels=np.full(len(ids), -1, dtype=np.int32),
        splits=("",) * len(ids),
        classes=(),
        fingerprint=_fingerprint(root, ids),
    )


class ImageDecodeError(Exception):
    """An image file could not be turned into RGB pixels; the message is the reason."""


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    ``convert('RGB')`` saturates 16-bit and 32-bit integer images at 255, which turns
    most of a 16-bit photograph white; those are rescaled to 8 bits first.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if pixels.size and np.nanmax(pixels) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.nan_to_num(pixels * scale), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode one image file into an 8-bit RGB PIL image.

    Raises
    ------
    ImageDecodeError
        With a short reason: empty, unreadable, not an image, truncated, too large.
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        if os.path.islink(path):
            raise ImageDecodeError(
                f"broken symbolic link: it points to '{os.readlink(path)}', which cannot be read ({exc.strerror})"
            ) from None
        raise ImageDecodeError(f"unreadable: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                pixels = image.width * image.height
                if pixels > max_pixels:
                    raise ImageDecodeError(
                        f"decompression bomb refused: {image.width}x{image.height} = {pixels:,} pixels, "
                        f"more than the limit of {max_pixels:,}"
                    )
                image.load()
                return _to_rgb(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image: the file's content is no image format Pillow can read") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot decode: {exc}") from None
    except (ValueError, SyntaxError, MemoryError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode: {type(exc).__name__}: {exc}") from None


@dataclass
class ImageBatch:
    """What the DataLoader yields: decoded images of one batch and the ones that failed.

    Attributes
    ----------
    indices : list of int
        Collection indices of the images in ``pixels``, in order.
    pixels : torch.Tensor or None, (n_ok, 3, H, W)
        Preprocessed images; ``None`` when every image of the batch failed.
    failures : list of (int, str)
        Collection index and reason of each image that could not be used.
    """

    indices: list[int]
    pixels: object
    failures: list[tuple[int, str]]

    def pin_memory(self) -> "ImageBatch":
        # Called by the DataLoader's pinning thread when pin_memory=True.
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class ImageDataset:
    """Map-style dataset: collection index -> ``(index, pixels or None, reason or None)``.

    Decoding errors are returned, not raised, so that one bad file never stops a run.
    """

    def __init__(
        self,
        collection: ImageCollection,
        transform: Callable[[Image.Image], object],
        *,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.collection = collection
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.collection)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.collection.path(index), max_pixels=self.max_pixels)
            return index, self.transform(image), None
        except ImageDecodeError as exc:
            return index, None, str(exc)
        except Exception as exc:  # a transform failing on one odd image must not stop the run
            return index, None, f"cannot preprocess: {type(exc).__name__}: {exc}"


def collate_images(items) -> ImageBatch:
    """Stack the decoded images of a batch; keep failures aside with their reasons."""
    import torch

    ok = [(i, x) for i, x, reason in items if reason is None]
    failures = [(i, reason) for i, _, reason in items if reason is not None]
    pixels = None
    if ok:
        images = [x for _, x in ok]
        out = None
        if torch.utils.data.get_worker_info() is not None:
            # In a DataLoader worker, stack straight into shared memory, as
            # torch's default_collate does: sending the batch then copies nothing.
            storage = images[0].untyped_storage()._new_shared(sum(x.nbytes for x in images))
            out = images[0].new(storage).resize_(len(images), *images[0].shape)
        pixels = torch.stack(images, out=out)
    return ImageBatch(indices=[i for i, _ in ok], pixels=pixels, failures=failures)
