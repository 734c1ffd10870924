"""Exceptions raised for user mistakes.

Every error a user can cause (a wrong name, a missing folder, a store built with
another configuration) is a :class:`FeatxError`.  The CLI prints its message on
one line and exits with code 2; library users catch the built-in base class they
expect (``ValueError``, ``FileNotFoundError``, ...).

Messages follow one shape: what was wrong, the value received, what is allowed,
and what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "FeatxError",
    "UnknownModelError",
    "UnknownLayerError",
    "ImageSizeError",
    "WeightsError",
    "DataError",
    "DeviceError",
    "StoreError",
    "StoreMismatchError",
    "ClassifyError",
    "close_matches",
]


class FeatxError(Exception):
    """Base class of every error caused by input rather than by a bug."""


class UnknownModelError(FeatxError, ValueError):
    """The model name is not a torchvision classification model."""


class UnknownLayerError(FeatxError, ValueError):
    """The layer name is neither a graph node, a module path nor an alias."""


class ImageSizeError(FeatxError, ValueError):
    """The network cannot run on images of the requested size."""


class WeightsError(FeatxError, ValueError):
    """Weights could not be found, downloaded or loaded into the architecture."""


class DataError(FeatxError, ValueError):
    """The image folder is missing, empty or unusable."""


class DeviceError(FeatxError, ValueError):
    """The requested device does not exist on this machine."""


class StoreError(FeatxError, ValueError):
    """A feature store is missing, unreadable or lacks what was asked of it."""


class StoreMismatchError(StoreError):
    """An existing store was made with another configuration than the one requested."""


class ClassifyError(FeatxError, ValueError):
    """Features or labels cannot be used to train or evaluate a classifier."""


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> str:
    """Return a ``"did you mean a, b?"`` phrase for *name*, or an empty string."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return f"did you mean {', '.join(matches)}? " if matches else ""
