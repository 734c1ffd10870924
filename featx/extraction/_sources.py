"""What ``--data`` names, as an image source: :func:`open_source`."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ._folder import discover_images, loose_files
from ._image_source import ImageSource

__all__ = ["open_source"]


def open_source(data: str | os.PathLike | ImageSource | Sequence[str | os.PathLike]) -> ImageSource:
    """The image source that *data* names.

    Parameters
    ----------
    data : path, sequence of paths, or ImageSource
        A class-folder tree (labels and splits from the folder names), image
        files and folders (unlabelled, under their common folder), or a source
        as it is.

    Raises
    ------
    DataError
        Nothing usable is there.
    """
    if isinstance(data, ImageSource):
        return data
    if isinstance(data, (str, os.PathLike)):
        return discover_images(data)
    return loose_files(data)
