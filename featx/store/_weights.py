"""Weights labels: how a store names the weights its features were computed with.

A label is one of

* a torchvision weights name (``'IMAGENET1K_V1'``), ``DEFAULT`` resolved;
* ``'none'``: a seeded random initialisation;
* ``'file:<file name>'``: a state dict given as ``weights_file``; its sha256
  is recorded beside the label (the ``weights_sha256`` attribute).

The label is for people.  What makes two weights the same is
:func:`weights_identity`: a weights file is identified by its content, so a
renamed or moved copy of a checkpoint is the same weights everywhere (resuming
and reusing a store, predicting with a classifier), and two files of one name
but different content are not.

The label is part of the store format, so it is built and read here, where
both sides and the readers of stores (``info``, ``predict``) find it; the
label of a whole extraction configuration is
:func:`featx.extraction.weights_label`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ConfigError, message

__all__ = [
    "WEIGHTS_KINDS", "describe_weights", "file_weights_label", "parse_weights_label", "sha256_file", "weights_identity",
]

# What a label can say: torchvision's weights, a random initialisation, a file.
WEIGHTS_KINDS = ("torchvision", "none", "file")
_FILE_PREFIX = "file:"


def file_weights_label(weights_file: str | os.PathLike) -> str:
    """``'file:<name>'``: the label of a state dict loaded from *weights_file*.

    Only the file's name is kept, for people; the file is identified by its
    sha256, recorded beside the label (see :func:`weights_identity`).
    """
    return _FILE_PREFIX + Path(weights_file).name


def parse_weights_label(label: str) -> tuple[str, str]:
    """Split a weights label into its kind and name.

    Parameters
    ----------
    label : str
        The ``weights`` attribute of a store.

    Returns
    -------
    kind : {'torchvision', 'none', 'file'}
    name : str
        The weights name, ``'none'``, or the weights file's name.

    Examples
    --------
    >>> parse_weights_label("file:resnet18.pt")
    ('file', 'resnet18.pt')
    >>> parse_weights_label("IMAGENET1K_V1")
    ('torchvision', 'IMAGENET1K_V1')
    >>> parse_weights_label("none")
    ('none', 'none')
    """
    if not isinstance(label, str) or not label:
        raise ConfigError(message("weights label", allowed="a non-empty string", got=label))
    if label.startswith(_FILE_PREFIX):
        return "file", label[len(_FILE_PREFIX) :]
    if label.lower() == "none":
        return "none", "none"
    return "torchvision", label


def weights_identity(label: str, sha256: str | None = None) -> str:
    """What two weights must share to be the same weights: a file's content, else the label.

    Parameters
    ----------
    label : str
        A weights label (the ``weights`` attribute).
    sha256 : str, optional
        The ``weights_sha256`` attribute recorded beside a ``'file:'`` label.

    Returns
    -------
    str
        ``'sha256:<hex digest>'`` for weights recorded with the hash of their
        file (a weights file, whatever its name; weights a package ships); the
        label itself for torchvision weights and ``'none'``, and for a file
        label without a recorded hash (then the name is all there is).

    Examples
    --------
    >>> weights_identity("file:my-resnet18.pth", "9f86d0") == weights_identity("file:moved.pth", "9f86d0")
    True
    >>> weights_identity("IMAGENET1K_V1")
    'IMAGENET1K_V1'
    """
    kind, _ = parse_weights_label(label)
    # Any weights recorded with a hash are their file's content: a --weights-file, or
    # weights a package ships (extract --weights lite0-imagenet), whatever the label.
    return f"sha256:{sha256}" if kind != "none" and sha256 else label


def describe_weights(label: str, sha256: str | None = None) -> str:
    """A weights label for a message: a file's name with the start of its sha256.

    Examples
    --------
    >>> describe_weights("file:resnet18.pt", "9f86d081884c7d659a2feaa0c55ad015")
    'file:resnet18.pt (sha256 9f86d081884c...)'
    >>> describe_weights("IMAGENET1K_V1")
    'IMAGENET1K_V1'
    """
    kind, _ = parse_weights_label(label)
    return f"{label} (sha256 {sha256[:12]}...)" if kind == "file" and sha256 else label


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's content, read in blocks: a weights file's identity."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
