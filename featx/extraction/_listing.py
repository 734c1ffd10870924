"""What every listing of images gives its source: sorted unique ids, labels from class names, checked splits.

A manifest's rows, a tar archive's samples and a bucket's keys are listed in
whatever order they come; an :class:`~featx.extraction.ImageSource` holds them
sorted by id, each id once, with labels as indices into the sorted class names.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import DataError, message
from ..store import SPLIT_NAMES

__all__ = ["sorted_order", "in_order", "splits_in_order", "check_unique", "class_labels", "check_splits", "describe_listing"]

_INTEGER = re.compile(r"^-?\d+$")


def sorted_order(ids: Sequence[str]) -> list[int]:
    """The positions of *ids* in sorted id order (stable)."""
    return sorted(range(len(ids)), key=ids.__getitem__)


def in_order(values: Sequence[str], order: Sequence[int]) -> tuple[str, ...]:
    """*values* taken in *order* (positions), as a tuple: one C-level take, not a Python loop per row."""
    taken = np.empty(len(values), dtype=object)
    taken[:] = values
    return tuple(taken[np.asarray(order, dtype=np.intp)]) if len(order) else ()


def splits_in_order(values: Sequence[str], order: Sequence[int]) -> tuple[str, ...]:
    """Checked split names (:func:`check_splits`) taken in *order*, as a tuple of the few split strings."""
    names = ("", *SPLIT_NAMES)
    code = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((code[v] for v in values), dtype=np.int8, count=len(values))
    return tuple(np.array(names, dtype=object)[codes[np.asarray(order, dtype=np.intp)]]) if len(order) else ()


def check_unique(ids: Sequence[str], *, what: str, hint: str) -> None:
    """Refuse an id listed twice, naming the first few (in sorted order).

    Parameters
    ----------
    ids : sequence of str
    what : str
        The listing, as the message names it (``"manifest 'list.csv'"``).
    hint : str

    Raises
    ------
    DataError
    """
    if len(set(ids)) == len(ids):
        return
    twice = sorted(image_id for image_id, count in Counter(ids).items() if count > 1)
    more = f", ... ({len(twice)} in all)" if len(twice) > 5 else ""
    raise DataError(
        message(
            f"the {what} lists the same image more than once: " + ", ".join(f"'{s}'" for s in twice[:5]) + more,
            hint=hint,
        )
    )


def class_labels(names: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels from class names: indices into the sorted names, ``-1`` for ``''`` (unlabelled).

    Class names that are all integers (``'0'``, ``'2'``, ``'10'``) are sorted
    by their value, so that an integer label column keeps its order.

    Returns
    -------
    labels : ndarray of int32, (len(names),)
    classes : tuple of str
    """
    present = set(names)
    present.discard("")
    if present and all(_INTEGER.match(name) for name in present):
        classes = tuple(sorted(present, key=int))
    else:
        classes = tuple(sorted(present))
    index = {name: i for i, name in enumerate(classes)}
    index[""] = -1
    return np.fromiter((index[name] for name in names), dtype=np.int32, count=len(names)), classes


def check_splits(values: Sequence[str], *, what: str) -> None:
    """Refuse a split other than ``train``, ``val``, ``test`` or ``''`` (none).

    Raises
    ------
    DataError
        Naming the first few values that are no split.
    """
    wrong = sorted(set(values) - {"", *SPLIT_NAMES})
    if wrong:
        raise DataError(
            message(
                f"the splits of the {what} must be {', '.join(SPLIT_NAMES)} or empty; got "
                + ", ".join(repr(v) for v in wrong[:5])
                + (", ..." if len(wrong) > 5 else ""),
                hint="write each image's split as train, val or test (lower case), or leave it empty",
            )
        )


def describe_listing(
    where: str, labels: np.ndarray, classes: Sequence[str], splits: Sequence[str], meta: Mapping[str, object] = {}
) -> str:
    """What a listing found, in one line: images, splits, classes, unlabelled images, metadata kept."""
    counts = Counter(splits)
    text = f"found {len(splits):,} image{'s' if len(splits) != 1 else ''} in {where}: "
    if any(splits):
        text += "splits " + ", ".join(f"{s} ({counts[s]:,})" for s in SPLIT_NAMES if counts[s])
    else:
        text += "no splits"
    if classes:
        shown = ", ".join(classes[:6]) + (f", ... (+{len(classes) - 6})" if len(classes) > 6 else "")
        text += f"; {len(classes)} class{'es' if len(classes) != 1 else ''} ({shown})"
        unlabelled = int((np.asarray(labels) < 0).sum())
        if unlabelled:
            text += f"; {unlabelled:,} unlabelled image(s)"
    else:
        text += "; no labels"
    if meta:
        text += f"; kept as sample metadata: {', '.join(meta)}"
    return text
