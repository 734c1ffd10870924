"""A class-folder tree as an image source: the walk, labels and splits from folder names, the layout report.

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
did not understand.  Both are logged by :meth:`ImageSource.log_layout`,
which ``extract`` calls once its checks have passed (an error stays one line).

Sample ids are paths relative to ``root`` with ``/`` separators, sorted, so the
row order of a store never depends on the file system's listing order.  They
keep the folders' own spelling (``Train/ants/1.jpg``).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, message, option
from ..store import SPLIT_NAMES
from ._images import IMAGE_EXTENSIONS
from ._image_source import FileSource, file_fingerprint

__all__ = ["SPLIT_FOLDERS", "split_of_folder", "walk_images", "discover_images", "loose_files"]

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


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(root: Path) -> list[str]:
    """The image files under *root*, as sorted paths relative to it with ``/`` separators."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if _is_image_name(name):
                found.append((rel / name).as_posix())
    return sorted(found)


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


def discover_images(root: str | os.PathLike) -> FileSource:
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
    ids = walk_images(root)
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
    return FileSource(
        root=root,
        ids=tuple(ids),
        labels=labels,
        splits=tuple(splits),
        classes=classes,
        fingerprint=file_fingerprint(root, ids),
        layout=_layout_report(root, ids, splits, labels_by_id, split_dirs, class_dirs),
    )


def loose_files(paths: Iterable[str | os.PathLike]) -> FileSource:
    """Image files (and the images of folders, walked), unlabelled, under their common folder.

    Raises
    ------
    DataError
        A path does not exist, or no image was found.
    """
    files: list[Path] = []
    given = [Path(p).expanduser() for p in paths]
    for p in given:
        if p.is_dir():
            files.extend(p / i for i in walk_images(p))
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            raise DataError(message(f"image not found: '{p}' does not exist", hint="pass image files or folders"))
    if not files:
        raise DataError(message("no images found in", got=", ".join(map(str, given))))
    absolute = [f.absolute() for f in files]
    root = Path(os.path.commonpath([f.parent for f in absolute]))
    ids = tuple(sorted({f.relative_to(root).as_posix() for f in absolute}))
    return FileSource(
        root=root,
        ids=ids,
        labels=np.full(len(ids), -1, dtype=np.int32),
        splits=("",) * len(ids),
        classes=(),
        fingerprint=file_fingerprint(root, ids),
    )
