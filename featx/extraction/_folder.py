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

The last warning is a wrapper folder (``data/insects/{ants,bees}``: one class
``insects``): it names the ``--data`` that was probably meant.
:func:`read_tree` reads labels and splits from any list of such paths: the
members of a tar archive and the keys under a bucket's prefix are read like a
folder's files.

The walk (:func:`walk_images`) follows symbolic links and reads each real
folder and file once, by device and inode: a link loop is a warning naming the
link, never a hang, and a file reached by two paths is one sample.

Sample ids are paths relative to ``root`` with ``/`` separators, sorted, so the
row order of a store never depends on the file system's listing order.  They
keep the folders' own spelling (``Train/ants/1.jpg``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, message, option
from ..store import SPLIT_NAMES
from ._images import IMAGE_EXTENSIONS
from ._image_source import FileSource, file_fingerprints

__all__ = [
    "SPLIT_FOLDERS",
    "split_of_folder",
    "FolderWalk",
    "walk_images",
    "ClassTree",
    "read_tree",
    "discover_images",
    "loose_files",
]

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


@dataclass(frozen=True)
class FolderWalk:
    """The image files under a folder, each real file once, and what the walk had to skip.

    Attributes
    ----------
    ids : list of str
        Sorted paths relative to the folder, ``/`` separators.
    warnings : list of str
        Symbolic links not followed (loops), folders and files reached twice.
    """

    ids: list[str]
    warnings: list[str]


def walk_images(root: Path) -> FolderWalk:
    """The image files under *root*, following symbolic links, each real folder and file once.

    The real tree is read first, then the folders that symbolic links lead to:
    a file keeps the path it has in the real tree, not a link's.  A link back
    to a folder above it (a loop) is not followed; a link to a folder read
    already, and a second path to a file (hard or symbolic link), add nothing.
    Each is a warning, never a hang.  A broken link with an image's name is
    listed (its decoding fails with the reason).
    """
    top = os.stat(root)
    # (device, inode) of every real folder read -> its path under root ('' for root)
    folders: dict[tuple[int, int], str] = {(top.st_dev, top.st_ino): ""}
    files: dict[tuple[int, int], str] = {}
    found: list[str] = []
    # Folders still to read, depth first in name order: (path, relative path, the folders above it).
    pending: list[tuple[str, str, tuple[tuple[int, int], ...]]] = [(str(root), "", ((top.st_dev, top.st_ino),))]
    folder_links: list[tuple[str, str, tuple[tuple[int, int], ...]]] = []
    file_links: list[tuple[str, tuple[int, int]]] = []
    loops: list[str] = []
    again: list[str] = []
    twice: list[str] = []

    def link_text(path: str, rel: str) -> str:
        try:
            return f"{rel} -> {os.readlink(path)}"
        except OSError:
            return rel

    def read(path: str, rel: str, above: tuple[tuple[int, int], ...], device: int) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return  # unreadable folder: skipped, as os.walk does
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_symlink():
                    try:
                        target = os.stat(entry.path)
                    except OSError:
                        if _is_image_name(entry.name):
                            found.append(child)  # a broken link: still a sample, it fails at decoding
                        continue
                    if stat.S_ISDIR(target.st_mode):
                        folder_links.append((entry.path, child, above))
                    elif _is_image_name(entry.name):
                        file_links.append((child, (target.st_dev, target.st_ino)))
                elif entry.is_dir(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    key = (info.st_dev, info.st_ino)
                    if key not in folders:  # a bind mount may show a folder twice
                        folders[key] = child
                        subfolders.append((entry.path, child, (*above, key)))
                elif _is_image_name(entry.name):
                    key = (device, entry.inode())
                    if key in files:
                        twice.append(f"{child} (= {files[key]})")
                    else:
                        files[key] = child
                        found.append(child)
            except OSError:
                continue
        pending.extend(reversed(subfolders))  # popped in name order

    while pending or folder_links:
        if not pending:
            # Links only once the real tree is read, in the order they were met.
            path, rel, above = folder_links.pop(0)
            target = os.stat(path)
            key = (target.st_dev, target.st_ino)
            if key in above:
                loops.append(link_text(path, rel))
                continue
            if key in folders:
                again.append(f"{link_text(path, rel)} (= {folders[key] or '.'}/)")
                continue
            folders[key] = rel
            pending.append((path, rel, (*above, key)))
        path, rel, above = pending.pop()
        read(path, rel, above, os.stat(path).st_dev)
    for rel, key in file_links:
        if key in files:
            twice.append(f"{rel} (= {files[key]})")
        else:
            files[key] = rel
            found.append(rel)

    warnings = []
    if loops:
        warnings.append(
            f"symbolic link loop(s) not followed: {_some(loops)}: each leads back to a folder above it"
        )
    if again:
        warnings.append(
            f"symbolic link(s) to folders read already: {_some(again)}: their images are counted once, "
            "under their first path"
        )
    if twice:
        warnings.append(
            f"{len(twice):,} image file(s) reached by a second path (a hard or symbolic link), counted once: "
            f"{_some(twice)}"
        )
    return FolderWalk(sorted(found), warnings)


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


@dataclass(frozen=True)
class ClassTree:
    """What the paths of a class-folder tree say: each image's label and split, and the layout found.

    Attributes
    ----------
    labels : ndarray of int32, (n_images,)
        Index into ``classes``, ``-1`` outside class folders.
    splits : tuple of str, (n_images,)
    classes : tuple of str
        Sorted.
    layout : tuple of (int, str)
        The layout found (INFO) and the folders that look like a layout misread (WARNING).
    """

    labels: np.ndarray
    splits: tuple[str, ...]
    classes: tuple[str, ...]
    layout: tuple[tuple[int, str], ...]


def read_tree(paths: Sequence[str], *, where: str, data_for: Callable[[str], str] | None) -> ClassTree:
    """Labels and splits from paths laid out as a class-folder tree (a folder, a tar's members, a bucket's keys).

    Parameters
    ----------
    paths : sequence of str
        Image paths relative to the tree's top, ``/`` separators.
    where : str
        The tree, as the layout report names it.
    data_for : callable or None
        A folder of the tree (``'insects'``) -> what ``--data`` names it by,
        for the warnings' hints; None where no ``--data`` names a part of the
        tree (a tar archive).
    """
    # Top-level folders named like a split, in the user's spelling -> the split recorded.
    split_dirs = {d: split_of_folder(d) for d in {i.split("/", 1)[0] for i in paths if "/" in i}}
    split_dirs = {d: split for d, split in split_dirs.items() if split is not None}

    labels_by_id: list[str | None] = []
    splits: list[str] = []
    # Class folder (as a path under the top) -> its subfolders, for the layout report.
    class_dirs: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split("/")
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
    layout = _layout_report(where, paths, splits, labels_by_id, split_dirs, class_dirs, data_for)
    return ClassTree(labels=labels, splits=tuple(splits), classes=classes, layout=layout)


def _layout_report(
    where: str,
    ids: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[str | None],
    split_dirs: dict[str, str],
    class_dirs: dict[str, set[str]],
    data_for: Callable[[str], str] | None,
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
    report = [(logging.INFO, f"found {found} in '{where}': {layout}; {described}" + "".join(f"; {e}" for e in extras))]

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
        text = f"class folder(s) holding split folders: {_some(held)}; each is read as one class: " + _move_up_hint(
            "split folders", holding_splits[0], data_for
        )
        report.append((logging.WARNING, text))
    elif len(classes) == 1 and all(len(subfolders) > 1 for subfolders in class_dirs.values()):
        # A wrapper: data/insects/{ants,bees} read as the one class 'insects'.
        wrapper = sorted(class_dirs, key=str.casefold)[0]
        held = [f + "/" for f in sorted(class_dirs[wrapper], key=str.casefold)]
        text = (
            f"the only class folder, {wrapper}/, holds folders of images ({_some(held)}): it is read as "
            f"one class '{classes[0]}': " + _move_up_hint("class folders", wrapper if not split_dirs else None, data_for)
        )
        report.append((logging.WARNING, text))
    return tuple(report)


def _move_up_hint(what: str, folder: str | None, data_for: Callable[[str], str] | None) -> str:
    """What to pass instead when the tree's top is one folder too high."""
    if folder is not None and data_for is not None:
        return f"pass the folder that holds the {what} as {option('data')} (e.g. '{data_for(folder)}')"
    if data_for is None:
        return f"archive the folder that holds the {what} (tar -cf NAME.tar -C FOLDER .)"
    return f"move the {what} up, into the split folders"


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
    walk = walk_images(root)
    ids = walk.ids
    if not ids:
        raise DataError(
            message(
                f"no images found in '{root}': looked for files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}",
                hint="put images in one subfolder per class",
            )
        )
    tree = read_tree(ids, where=str(root), data_for=lambda folder: str(root / folder))
    found, *warnings = tree.layout
    return FileSource(
        root=root,
        ids=tuple(ids),
        labels=tree.labels,
        splits=tree.splits,
        classes=tree.classes,
        **_fingerprints(root, ids),
        layout=(found, *((logging.WARNING, w) for w in walk.warnings), *warnings),
    )


def _fingerprints(root: Path, ids) -> dict[str, str]:
    current, earlier = file_fingerprints(root, ids)
    return {"fingerprint": current, "earlier_fingerprint": earlier}


def loose_files(paths: Iterable[str | os.PathLike]) -> FileSource:
    """Image files (and the images of folders, walked), unlabelled, under their common folder.

    Raises
    ------
    DataError
        A path does not exist, or no image was found.
    """
    files: list[Path] = []
    warnings: list[str] = []
    given = [Path(p).expanduser() for p in paths]
    for p in given:
        if p.is_dir():
            walk = walk_images(p)
            files.extend(p / i for i in walk.ids)
            warnings.extend(walk.warnings)
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
        **_fingerprints(root, ids),
        layout=tuple((logging.WARNING, w) for w in warnings),
    )
