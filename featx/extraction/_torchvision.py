"""torchvision's classification models: the model source ``torchvision``.

Models are those of ``torchvision.models.list_models(module=torchvision.models)``.
Weights come from torchvision's weights API and cache (``TORCH_HOME``), or
are a seeded random initialisation; the preprocessing is the weights' own
(resize, centre crop, normalisation: their ``transforms()``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from ..errors import UnknownModelError, WeightsError, choices, close_matches, message, option
from ._preprocessing import Preprocessing
from ._model_sources import LoadedModel, ModelEntry, StateDict
from ._weights import load_failure, load_state_dict_into, weights_only_loading

__all__ = [
    "check_torchvision_name",
    "default_preprocessing",
    "describe_torchvision",
    "list_model_names",
    "load_torchvision",
    "torchvision_weights_label",
    "weights_cache_path",
]


@lru_cache(maxsize=1)
def list_model_names() -> tuple[str, ...]:
    """Names of torchvision's image classification models."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_torchvision_name(name: str, *, parameter: str = "model") -> str:
    """Return *name* if it is a torchvision classification model.

    Parameters
    ----------
    name : str
    parameter : str
        The option the name came from, for the message (``"model"``, the demo's ``"networks"``).

    Raises
    ------
    UnknownModelError
        With the closest names and where the full list comes from.
    """
    names = list_model_names()
    if name not in names:
        raise UnknownModelError(
            message(
                option(parameter, flag="network" if parameter == "networks" else None),
                allowed=f"one of torchvision's {len(names)} classification models ({', '.join(names[:6])}, ...; "
                "see torchvision.models.list_models(module=torchvision.models))",
                got=name,
                hint=close_matches(name, names).strip() or None,
            )
        )
    return name


def _weights_enum(name: str):
    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def default_preprocessing(name: str) -> Preprocessing:
    """The preprocessing of *name*'s default weights (ImageNet's for a model without weights)."""
    enum = _weights_enum(name)
    return Preprocessing.of_weights(enum.DEFAULT if enum is not None and hasattr(enum, "DEFAULT") else None)


def torchvision_weights_label(name: str, weights: str) -> str:
    """The name of torchvision's weights *weights* of *name*, ``DEFAULT`` resolved (``'IMAGENET1K_V1'``).

    Raises
    ------
    WeightsError
        *name* has no such weights.
    """
    enum = _weights_enum(name)
    names = ["DEFAULT", *(w.name for w in enum)] if enum is not None else []
    if enum is None or weights not in names:
        raise WeightsError(
            message(
                option("weights"),
                allowed=f"{choices([*names, 'none'])} for {name}",
                got=weights,
                hint=f"or pass a state dict with {option('weights_file', 'PATH')}",
            )
        )
    return enum[weights].name


def weights_cache_path(weights: Any) -> Path:
    """Where torch's hub cache keeps (or will keep) the file of torchvision weights.

    The folder is ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``
    by default): the same place torchvision itself reads and downloads to.
    """
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _build_pretrained(name: str, weights: Any) -> nn.Module:
    cached = weights_cache_path(weights)
    try:
        # torch.hub announces a download on stdout; stdout is for results (tables, paths).
        with weights_only_loading(), contextlib.redirect_stdout(sys.stderr):
            return torchvision.models.get_model(name, weights=weights)
    # URLError is an OSError; a file holding pickled code fails with UnpicklingError.
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        if cached.exists():
            raise WeightsError(
                message(
                    f"the cached weights file '{cached}' for {name} ({weights}) could not be loaded with "
                    f"torch.load(weights_only=True) ({load_failure(exc)})",
                    hint=f"delete it so that it is downloaded again, or pass {option('weights_file', 'PATH')}",
                )
            ) from None
        raise WeightsError(
            message(
                f"pretrained weights {type(weights).__name__}.{weights.name} for {name} are not cached and "
                f"could not be downloaded ({getattr(exc, 'reason', exc)}): expected the file '{cached}' "
                "(set TORCH_HOME to use another cache folder)",
                hint=f"copy it there, or pass {option('weights_file', 'PATH')}, "
                f"or {option('weights', 'none')} for a seeded random initialisation",
            )
        ) from None


def _final_linear(module: nn.Module) -> tuple[str, nn.Module] | None:
    last = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            last = (name, child)
    return last


def load_torchvision(
    name: str,
    *,
    weights: str,
    seed: int,
    image_size: int | None,
    state: StateDict | None = None,
    origin: Path | None = None,
) -> LoadedModel:
    """A torchvision model with its weights and their preprocessing (the ``load`` of the model source ``torchvision``).

    Parameters
    ----------
    name : str
        A torchvision classification model.
    weights : str
        A weights name (``'IMAGENET1K_V1'``), ``'none'`` (a random
        initialisation seeded with *seed*), or the label of *state*'s file.
    seed : int
    image_size : int, optional
        Unused: torchvision's models take any input size, and the
        preprocessing is rescaled by :func:`~featx.extraction.load_model`.
    state : mapping of str -> Tensor, optional
        The tensors to load (a ``--weights-file``'s).
    origin : Path, optional
        The file *state* was read from, for messages.
    """
    used_seed = None
    if state is not None:
        module = load_state_dict_into(
            lambda **more: torchvision.models.get_model(name, weights=None, **more), _final_linear, state, origin, name, seed
        )
        preprocessing = default_preprocessing(name)
    elif weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = torchvision.models.get_model(name, weights=None)
        used_seed = seed
        preprocessing = default_preprocessing(name)
    else:
        resolved = torchvision.models.get_model_weights(name)[weights]
        module = _build_pretrained(name, resolved)
        preprocessing = Preprocessing.of_weights(resolved)
    module.eval()
    return LoadedModel(name=name, module=module, weights=weights, preprocessing=preprocessing, seed=used_seed)


def _penultimate_width(model: nn.Module) -> int | None:
    """Input width of the final Linear, or of the final convolution of all-convolutional nets (SqueezeNet)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].in_features
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].in_channels if convs else None


def describe_torchvision(name: str) -> ModelEntry:
    """The ``featx models`` row of a torchvision model (built on the meta device: no memory, no initialisation)."""
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    weights = (default.name, *(w.name for w in enum if w is not default))
    return ModelEntry(
        name=name,
        weights=weights,
        input_size=int(default.transforms().crop_size[0]),
        params=sum(p.numel() for p in model.parameters()),
        penultimate=_penultimate_width(model),
        cached=tuple(w for w in weights if weights_cache_path(enum[w]).is_file()),
    )
