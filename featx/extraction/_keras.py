"""Keras applications weights for torchvision's VGG: ``--model vgg16 --weights-file vgg16_weights_tf_dim_ordering_tf_kernels.h5``.

The transfer-learning tutorials featx's users come from use Keras'
``VGG16``/``VGG19``.  Their HDF5 weights files (read by
:func:`featx.store.read_keras_weights`) hold the same network as torchvision's
``vgg16``/``vgg19`` in another layout:

* convolution kernels are ``(H, W, in, out)``; torch wants ``(out, in, H, W)``;
* dense kernels are ``(in, out)``; torch wants ``(out, in)``;
* ``fc1`` follows Keras' ``Flatten`` of a channels-last ``7x7x512`` map
  (index ``(h * 7 + w) * 512 + c``), torch's flattens channels first
  (``c * 49 + h * 7 + w``): its rows are reordered;
* the network was trained on Keras' ``preprocess_input(mode='caffe')``: BGR
  channels, ImageNet's mean pixel subtracted, no scaling to [0, 1].  That
  preprocessing comes with the file and is recorded in the store.

A ``_notop`` file (``include_top=False``) has no ``fc1``, ``fc2``,
``predictions``: layers up to ``block5_pool`` can be extracted, later ones are
refused.  This is the weights format ``keras-vgg`` of
:data:`featx.extraction._models.WEIGHTS_FORMATS`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from ..errors import WeightsError, message, option
from ..store import file_weights_label, is_keras_weights_file, read_keras_weights
from ._preprocessing import CAFFE_PREPROCESSING, Preprocessing
from ._model_sources import LoadedModel, ModelSource
from ._torchvision import default_preprocessing, list_model_names

__all__ = [
    "is_keras_weights_file",
    "keras_conv_to_torch",
    "keras_dense_to_torch",
    "keras_layer_names",
    "keras_vgg_state_dict",
    "load_keras_file",
    "load_keras_vgg",
]

log = logging.getLogger("featx")

_TOP = ("fc1", "fc2", "predictions")


def keras_layer_names(model: torchvision.models.VGG) -> dict[str, str]:
    """Keras layer name -> torchvision module path, for the layers with weights.

    ``block<b>_conv<c>`` for the convolutions (a max-pool starts the next
    block), ``fc1``, ``fc2``, ``predictions`` for the classifier's Linear layers.
    """
    names, block, conv = {}, 1, 0
    for index, module in model.features.named_children():
        if isinstance(module, nn.Conv2d):
            conv += 1
            names[f"block{block}_conv{conv}"] = f"features.{index}"
        elif isinstance(module, nn.MaxPool2d):
            block, conv = block + 1, 0
    linears = [index for index, module in model.classifier.named_children() if isinstance(module, nn.Linear)]
    names.update({keras: f"classifier.{index}" for keras, index in zip(_TOP, linears)})
    return names


def keras_conv_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """A Keras Conv2D kernel ``(H, W, in, out)`` as a torch Conv2d weight ``(out, in, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def keras_dense_to_torch(kernel: np.ndarray, flattened: tuple[int, int, int] | None = None) -> torch.Tensor:
    """A Keras Dense kernel ``(in, out)`` as a torch Linear weight ``(out, in)``.

    Parameters
    ----------
    kernel : ndarray, shape (in, out)
    flattened : (channels, height, width), optional
        The shape of the feature map the layer's input was flattened from:
        Keras flattened it channels last, torch flattens it channels first,
        so the input rows are reordered.
    """
    if flattened is not None:
        channels, height, width = flattened
        kernel = kernel.reshape(height, width, channels, -1).transpose(2, 0, 1, 3).reshape(channels * height * width, -1)
    return torch.from_numpy(np.ascontiguousarray(kernel.T))


def _expected_shapes(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The Keras shapes of a torch layer's kernel and bias."""
    weight = module.weight
    if weight.ndim == 4:
        out, inp, h, w = weight.shape
        return (h, w, inp, out), (out,)
    return (weight.shape[1], weight.shape[0]), (weight.shape[0],)


def keras_vgg_state_dict(
    model: torchvision.models.VGG, layers: dict[str, tuple[np.ndarray, ...]], path: Path, name: str
) -> tuple[dict[str, torch.Tensor], bool]:
    """The torch state dict of *model* from a Keras file's arrays.

    Returns
    -------
    state : dict of str -> Tensor
        Weights and biases of every layer in the file (the classifier's too
        when the file has a top).
    has_top : bool
        Whether the file holds ``fc1``, ``fc2`` and ``predictions``.

    Raises
    ------
    WeightsError
        Naming the layers that are missing, unexpected, or misshapen.
    """
    names = keras_layer_names(model)
    modules = dict(model.named_modules())
    top_present = [t for t in _TOP if t in layers]
    has_top = len(top_present) == len(_TOP)
    expected = [k for k in names if has_top or k not in _TOP]
    missing = [k for k in expected if k not in layers]
    if top_present and not has_top:
        missing += [t for t in _TOP if t not in layers]
    unexpected = [k for k in layers if k not in names]
    misshapen = []
    for keras in expected:
        if keras not in layers:
            continue
        arrays = layers[keras]
        kernel_shape, bias_shape = _expected_shapes(modules[names[keras]])
        if keras == "predictions" and len(arrays) == 2 and arrays[0].shape[0] == kernel_shape[0]:
            kernel_shape, bias_shape = arrays[0].shape, (arrays[0].shape[1],)  # another number of classes: followed
        got = tuple(tuple(a.shape) for a in arrays)
        if got != (tuple(kernel_shape), tuple(bias_shape)):
            misshapen.append(f"{keras} {' + '.join(map(str, got))} (expected {kernel_shape} + {bias_shape})")
    if missing or unexpected or misshapen:
        details = []
        if missing:
            details.append(f"missing layers {', '.join(missing)}")
        if unexpected:
            details.append(f"unexpected layers {', '.join(unexpected)}")
        if misshapen:
            details.append(f"misshapen {'; '.join(misshapen)}")
        raise WeightsError(
            message(
                f"the Keras weights file '{path}' does not match {name}: {'; '.join(details)}",
                hint=f"pass the {option('model')} it was saved from (vgg16 or vgg19)",
            )
        )
    state = {}
    last_conv_channels = model.features[int(names[[k for k in names if k not in _TOP][-1]].split(".")[1])].out_channels
    pool = model.avgpool.output_size
    height, width = (pool, pool) if isinstance(pool, int) else pool
    for keras in expected:
        kernel, bias = layers[keras]
        path_ = names[keras]
        if kernel.ndim == 4:
            state[f"{path_}.weight"] = keras_conv_to_torch(kernel)
        else:
            flattened = (last_conv_channels, height, width) if keras == "fc1" else None
            state[f"{path_}.weight"] = keras_dense_to_torch(kernel, flattened)
        state[f"{path_}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return state, has_top


def load_keras_vgg(name: str, path: Path, base: Preprocessing) -> tuple[nn.Module, Preprocessing, tuple[str, ...]]:
    """torchvision's *name* (a VGG without batch norm) with the weights of a Keras HDF5 file.

    Parameters
    ----------
    name : str
        ``vgg16`` or ``vgg19`` (any torchvision VGG without batch norm).
    path : Path
        The Keras weights file.
    base : Preprocessing
        The torchvision weights' preprocessing: resize and crop are kept,
        the rest becomes Keras' ``caffe`` mode.

    Returns
    -------
    module : nn.Module
        In eval mode.
    preprocessing : Preprocessing
        Keras' ``caffe`` preprocessing: BGR, mean (103.939, 116.779, 123.68), no scaling.
    untrained : tuple of str
        Module paths the file has no weights for (``('classifier',)`` for a ``_notop`` file).
    """
    weights = read_keras_weights(path)
    predictions = weights.layers.get("predictions")
    classes = {"num_classes": int(predictions[0].shape[1])} if predictions is not None and predictions[0].ndim == 2 else {}
    # Built without memory or initialisation (VGG16's random init alone takes seconds): every weight comes from the file.
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, **classes)
    if not isinstance(model, torchvision.models.VGG) or any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise WeightsError(
            message(
                f"'{path}' is a Keras weights file; those are read for torchvision's VGGs without batch norm",
                got=name,
                hint=f"pass {option('model', 'vgg16')} or {option('model', 'vgg19')}",
            )
        )
    state, has_top = keras_vgg_state_dict(model, weights.layers, path, name)
    if not has_top:
        # A _notop file: the classifier is zeros, never run (its layers are refused, see LoadedModel.untrained).
        state.update({f"classifier.{k}": torch.zeros(v.shape) for k, v in model.classifier.state_dict().items()})
    model.load_state_dict(state, assign=True)
    log.info(
        f"{path.name}: Keras weights for {name}{'' if has_top else ' (no top: layers up to block5_pool)'}; "
        "Keras' caffe preprocessing (BGR, mean pixel subtracted, no scaling)"
    )
    return model.eval(), replace(base, **CAFFE_PREPROCESSING), () if has_top else ("classifier",)


def load_keras_file(model: str, path: Path, *, source: ModelSource, seed: int, image_size: int | None) -> LoadedModel:
    """*model* with the weights of a Keras applications HDF5 file (the ``load`` of the weights format ``keras-vgg``).

    Every weight comes from the file (*seed* initialises nothing); the
    preprocessing is Keras' ``caffe`` mode at the torchvision weights' resize
    and crop (*image_size* rescales them in :func:`~featx.extraction.load_model`).

    Raises
    ------
    WeightsError
        *model* is not one of torchvision's VGGs without batch norm, or the file does not match it.
    """
    if model not in list_model_names():
        raise WeightsError(
            message(
                f"'{path}' is a Keras weights file; those are read for torchvision's vgg16 and vgg19 only",
                hint=f"pass {option('model', 'vgg16')} or {option('model', 'vgg19')}",
            )
        )
    module, preprocessing, untrained = load_keras_vgg(model, path, default_preprocessing(model))
    return LoadedModel(
        name=model, module=module, weights=file_weights_label(path), preprocessing=preprocessing, untrained=untrained
    )
