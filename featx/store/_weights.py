"""Weights labels: how a store names the weights its features were computed with.

A label is one of

* a torchvision weights name (``'IMAGENET1K_V1'``), ``DEFAULT`` resolved;
* ``'none'``: a seeded random initialisation;
* ``'file:<file name>'``: a state dict given as ``weights_file``.

The label is part of the store format, so it is built and read here, where
both sides and the readers of stores (``info``, ``predict``) find it; the
label of a whole extraction configuration is
:func:`featx.extraction.weights_label`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, message

__all__ = ["WEIGHTS_KINDS", "file_weights_label", "parse_weights_label"]

# What a label can say: torchvision's weights, a random initialisation, a file.
WEIGHTS_KINDS = ("torchvision", "none", "file")
_FILE_PREFIX = "file:"


def file_weights_label(weights_file: str | os.PathLike) -> str:
    """``'file:<name>'``: the label of a state dict loaded from *weights_file*.

    Only the file's name is kept, not its folder: a store stays the same store
    when the checkpoint is moved (its sha256 is recorded beside the label).
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
