"""Keras weights files (HDF5): their layers and arrays, read with h5py.

Keras applications ship their weights as HDF5 files written by
``model.save_weights`` (``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5``)::

    /                      attrs: layer_names (every layer, in order), backend, keras_version
    /<layer>               attrs: weight_names (e.g. 'block1_conv1/kernel:0', 'block1_conv1/bias:0')
    /<layer>/<weight name> the array, in Keras' layout (conv kernels HWIO, dense kernels (in, out))

A whole saved model (``model.save('x.h5')``) has the same under
``/model_weights``.  (Keras 3's ``.weights.h5`` layout is not read.)  Keras reads the arrays of a layer by position, not by name (names changed
between Keras versions), and so does :func:`read_keras_weights`.  Turning them
into a torch model is the extraction side's job; this module only reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import WeightsError, message

__all__ = ["KerasWeights", "is_keras_weights_file", "read_keras_weights"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class KerasWeights:
    """The arrays of a Keras weights file, by layer.

    Attributes
    ----------
    layers : dict of str -> tuple of ndarray
        Layer name -> its arrays in Keras' order (kernel, bias), for the
        layers that have weights, in the file's layer order.
    weight_names : dict of str -> tuple of str
        Layer name -> the names of those arrays, as recorded.
    keras_version : str or None
    """

    layers: dict[str, tuple[np.ndarray, ...]]
    weight_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    keras_version: str | None = None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _weights_group(f: h5py.File) -> h5py.Group | None:
    """The group holding ``layer_names``: the root, or ``/model_weights`` of a whole saved model."""
    if "layer_names" in f.attrs:
        return f
    inner = f.get("model_weights")
    if isinstance(inner, h5py.Group) and "layer_names" in inner.attrs:
        return inner
    return None


def is_keras_weights_file(path: str | os.PathLike) -> bool:
    """Whether *path* is an HDF5 file in one of Keras' weights layouts (a cheap check: its header and root)."""
    try:
        with open(path, "rb") as raw:
            if raw.read(8) != _HDF5_SIGNATURE:
                return False
        with h5py.File(path, "r") as f:
            return _weights_group(f) is not None
    except OSError:
        return False


def read_keras_weights(path: str | os.PathLike) -> KerasWeights:
    """Read every layer's arrays from a Keras weights file.

    Raises
    ------
    WeightsError
        The file cannot be read, or is not in a Keras weights layout.
    """
    try:
        with h5py.File(path, "r") as f:
            group = _weights_group(f)
            if group is None:
                raise WeightsError(
                    message(
                        f"'{path}' is an HDF5 file but not a Keras weights file (no layer_names attribute)",
                        hint="pass a file written by Keras' model.save_weights, or a torch state dict",
                    )
                )
            version = f.attrs.get("keras_version")
            layers, names = {}, {}
            for layer in (_text(n) for n in group.attrs["layer_names"]):
                weight_names = [_text(n) for n in group[layer].attrs.get("weight_names", [])]
                if weight_names:
                    # By position, as Keras itself reads them: the names changed between Keras versions.
                    layers[layer] = tuple(np.asarray(group[layer][w]) for w in weight_names)
                    names[layer] = tuple(weight_names)
    except OSError as exc:
        raise WeightsError(message(f"'{path}' could not be read as an HDF5 file ({exc})")) from None
    return KerasWeights(layers=layers, weight_names=names, keras_version=_text(version) if version is not None else None)
