"""Every exception featx raises for a user's mistake, and the one formula of their messages.

Every error a user can cause (a wrong name, a missing folder, an unwritable
output, a store built with another configuration) is a :class:`FeatxError`.
Library code raises; only the command line prints (one line) and picks the exit
code (2).  Library users catch the built-in base class they expect:
configuration errors are ``ValueError`` subclasses, a missing file is also a
``FileNotFoundError``, an unwritable output also a ``PermissionError``.

Messages have one shape, built by :func:`message`::

    <what> must be <allowed>; got <value>[; <what to do>]
    <what>: <value>[; <what to do>]

for example ``batch_size must be a positive integer; got 0`` or
``unknown layer 'conv9' of resnet18: did you mean conv5? ...``.  Options are
named through :func:`option`, which says ``batch_size`` to a Python caller
and ``--batch-size`` on the command line.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from os import PathLike
from typing import Any

from .formatting import printable

__all__ = [
    "FeatxError",
    "ConfigError",
    "UnknownModelError",
    "UnknownLayerError",
    "ImageSizeError",
    "WeightsError",
    "DataError",
    "DeviceError",
    "OutputPathError",
    "StoreError",
    "StoreNotFoundError",
    "StoreMismatchError",
    "StoreLockedError",
    "MalformedStoreError",
    "StoreChecksumError",
    "StoreWriteError",
    "DiskFullError",
    "ClassifyError",
    "ExportError",
    "DemoError",
    "ClusterError",
    "message",
    "choices",
    "close_matches",
    "option",
    "cli_option_names",
]


class FeatxError(Exception):
    """Base class of every error caused by input rather than by a bug."""


class ConfigError(FeatxError, ValueError):
    """A parameter has a value that is not allowed (checked before any work starts)."""


class UnknownModelError(ConfigError):
    """The model name is not a torchvision classification model."""


class UnknownLayerError(ConfigError):
    """The layer name is neither a graph node, a module path nor an alias."""


class ImageSizeError(ConfigError):
    """The network cannot run on images of the requested size."""


class WeightsError(ConfigError):
    """Weights could not be found, downloaded or loaded into the architecture."""


class DataError(ConfigError):
    """The image folder is missing, empty or unusable."""


class DeviceError(ConfigError):
    """The requested device does not exist on this machine."""


class OutputPathError(ConfigError, PermissionError):
    """An output path cannot be written (checked before any work starts)."""


class StoreError(FeatxError, ValueError):
    """A feature store is missing, unreadable or lacks what was asked of it."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No feature store exists at the path given."""


class StoreMismatchError(StoreError):
    """An existing store was made with another configuration than the one requested."""


class StoreLockedError(StoreError):
    """Another process is writing the same store (one writer per store; readers are never blocked)."""


class MalformedStoreError(StoreError):
    """An HDF5 file claims to be a featx store but does not follow the format (a dataset missing, a wrong
    shape or type, a label out of range, an attribute that is not text): refused when it is opened."""


class StoreChecksumError(StoreError):
    """The features of a finished store no longer match the checksums recorded when it was written."""


class StoreWriteError(StoreError, OSError):
    """The file system failed while a store was written (an I/O error); the rows committed so far are kept."""


class DiskFullError(StoreWriteError):
    """The store does not fit, or did not fit, in the free space (or quota) where it is written."""


class ClassifyError(FeatxError, ValueError):
    """Features or labels cannot be used to train or evaluate a classifier."""


class ExportError(FeatxError, ValueError):
    """A store cannot be exported as asked (format, output path, layer names)."""


class DemoError(FeatxError, ValueError):
    """The demo cannot run as configured."""


class ClusterError(FeatxError, ValueError):
    """The Ray cluster cannot run the extraction as asked: unreachable, too few GPUs, a shard that keeps failing."""


_NOTHING = object()


def _shown(value: Any) -> str:
    if isinstance(value, (str, PathLike)):
        return f"'{value}'"
    return str(value)


def message(what: str, *, got: Any = _NOTHING, allowed: str | None = None, hint: str | None = None) -> str:
    """One error message: what was wrong, the value received, what is allowed, what to do.

    Parameters
    ----------
    what : str
        The subject (``"batch_size"``, ``"unknown layer"``), or the whole problem.
    got : object, optional
        The value received; strings and paths are shown quoted.
    allowed : str, optional
        What the subject must be (``"a positive integer"``).
    hint : str, optional
        What to do about it.

    Examples
    --------
    >>> message("batch_size", allowed="a positive integer", got=0)
    'batch_size must be a positive integer; got 0'
    >>> message("feature store not found", got="x.h5", hint="check the path")
    "feature store not found: 'x.h5'; check the path"
    """
    if allowed is not None:
        text = f"{what} must be {allowed}"
        if got is not _NOTHING:
            text += f"; got {_shown(got)}"
    else:
        text = what if got is _NOTHING else f"{what}: {_shown(got)}"
    # One line, whatever the values hold: names from files (ids, class names) may carry newlines or
    # terminal escapes, and the command line prints this as its single line of error.
    return printable(f"{text}; {hint}" if hint else text)


def choices(values: Iterable[Any]) -> str:
    """``"one of a, b, c"``: the *allowed* part of :func:`message` for a fixed set of names."""
    return "one of " + ", ".join(str(v) for v in values)


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Return a ``"did you mean a, b? "`` phrase (with its trailing space) for *name*, or ``""``."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f"did you mean {', '.join(matches)}? " if matches else ""


# How options are named in messages: as keyword arguments (the library), or
# as flags (the command line sets this while it runs a command).
_CLI_NAMES: ContextVar[bool] = ContextVar("featx_cli_option_names", default=False)


def option(name: str, value: Any = _NOTHING, *, flag: str | None = None) -> str:
    """An option as its user writes it.

    ``option("batch_size")`` is ``batch_size`` in Python and ``--batch-size``
    on the command line; ``option("batch_size", 8)`` is ``batch_size=8`` or
    ``--batch-size 8``; a switch, ``option("overwrite", True)``, is
    ``overwrite=True`` or ``--overwrite``.  *flag* names the command-line
    option where it differs from the keyword (``option("models", flag="model")``).
    """
    if _CLI_NAMES.get():
        dashed = "--" + (flag or name).replace("_", "-")
        # A switch is named by its flag alone, whichever value it sets (--offline: download=False).
        return dashed if value is _NOTHING or isinstance(value, bool) else f"{dashed} {value}"
    if value is _NOTHING:
        return name
    return f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"


@contextlib.contextmanager
def cli_option_names() -> Iterator[None]:
    """Within the block, :func:`option` names options as command-line flags."""
    token = _CLI_NAMES.set(True)
    try:
        yield
    finally:
        _CLI_NAMES.reset(token)
