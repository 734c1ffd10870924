"""What an earlier run recorded in a store: root attributes read from the store file or its parts.

An extraction records settings that are not part of a store's identity but
that a resumed or extended run must reuse (how the network ran: images per
pass and memory layout change the last bits of the features).  An unfinished
extraction keeps them in its part files and in the store file, which is then a
readable index of the parts; a finished store keeps them in its root attributes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

from ._schema import attr_value, parts_dir

__all__ = ["recorded_attrs"]


def _featx_attrs(path: Path, keys: Sequence[str], layer_key: str | None = None) -> dict[str, Any] | None:
    """*keys* of the root attributes of a featx HDF5 file; ``None`` if it is none (or unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            if "featx_format" not in f.attrs and "start" not in f.attrs:
                return None
            found = {key: attr_value(f.attrs[key]) for key in keys if key in f.attrs}
            if layer_key is not None and isinstance(f.get("features"), h5py.Group):
                for name, dataset in f["features"].items():
                    if layer_key in dataset.attrs:
                        found[f"features/{name}"] = attr_value(dataset.attrs[layer_key])
            return found
    except OSError:
        return None


def recorded_attrs(path: str | os.PathLike, keys: Sequence[str], *, layer_key: str | None = None) -> dict[str, Any]:
    """The values of *keys* that an earlier extraction into *path* recorded.

    Read from the store file when it is a featx store (finished, or the index of
    an unfinished run), else from the first part file of an unfinished run
    (a run killed before it wrote its first index has parts only).

    Parameters
    ----------
    path : path
        The store file (it may not exist).
    keys : sequence of str
        Root attribute names.
    layer_key : str, optional
        Also the attribute of this name of each feature dataset, as
        ``features/<name>`` (a layer's ``precision``, which stores from before
        the ``recipe`` attribute record there only).

    Returns
    -------
    dict of str -> value
        The keys found (plain Python values); empty when nothing was recorded,
        when there is no store, or when what is there is no readable featx file
        (the store writer then says what is wrong).
    """
    path = Path(path)
    if path.is_file():
        found = _featx_attrs(path, keys, layer_key)
        if found is not None:
            return found
    folder = parts_dir(path)
    if folder.is_dir():
        # Committed parts only (part-NNNNNN.h5); one being written has a temporary name.
        for part in sorted(folder.glob("part-[0-9][0-9][0-9][0-9][0-9][0-9].h5")):
            found = _featx_attrs(part, keys, layer_key)
            if found is not None:
                return found
    return {}
