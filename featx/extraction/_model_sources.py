"""Where models and weights come from: the records every source fills in.

A *model source* (torchvision, timm) names architectures, resolves its own
weights names and builds models; a *weights source* provides weights from
outside a model source's own catalogue (a ``--weights-file``); a *weights
format* reads one kind of weights file (a torch state dict, safetensors, a
Keras HDF5 file).  The registries of each are plain dicts in
:mod:`featx.extraction._models`; this module only declares what an entry is,
so that the sources import it and not the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._preprocessing import Preprocessing

__all__ = ["LoadedModel", "ModelEntry", "ModelSource", "StateDict", "WeightsFormat", "WeightsSource"]

#: The tensors of a state dict, by parameter name.
StateDict = Mapping[str, torch.Tensor]


@dataclass
class LoadedModel:
    """A model ready for feature extraction, with what is needed to describe it.

    Attributes
    ----------
    name : str
        What ``--model`` names (``resnet50``, ``timm/convnext_tiny``).
    module : nn.Module
        The network, in eval mode, on the CPU.
    weights : str
        ``'IMAGENET1K_V1'``-style name, ``'none'`` or ``'file:<name>'``.
    preprocessing : Preprocessing
    weights_sha256 : str or None
        Hash of a ``--weights-file``.
    seed : int or None
        Seed of the random initialisation when ``weights == 'none'``.
    untrained : tuple of str
        Module paths the weights file had no weights for (a Keras ``_notop``
        file's classifier): layers they compute are refused.
    provenance : dict
        Attributes recorded with the store that are not part of its identity
        (``timm_version``).
    """

    name: str
    module: nn.Module
    weights: str
    preprocessing: Preprocessing
    weights_sha256: str | None = None
    seed: int | None = None
    untrained: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """One architecture, as ``featx models`` lists it.

    Attributes
    ----------
    name : str
        What ``--model`` takes (``resnet50``, ``timm/convnext_tiny``).
    weights : tuple of str
        Pretrained weights (torchvision's names, timm's tags), the default first.
    input_size : int
        The default weights' crop size.
    params : int
    penultimate : int or None
        Width of the ``penultimate`` layer (the input of the classifier).
    cached : tuple of str
        The weights whose file is in the local cache.
    """

    name: str
    weights: tuple[str, ...]
    input_size: int
    params: int
    penultimate: int | None
    cached: tuple[str, ...]


@dataclass(frozen=True)
class ModelSource:
    """Where models come from: one entry of the model source registry.

    Attributes
    ----------
    claims : callable (name) -> bool
        Whether a ``--model`` name is one of this source's (``timm/...``).
    check : callable (name, *, parameter) -> str
        The name back if the source has it, else :class:`~featx.errors.UnknownModelError`
        naming *parameter* and the closest names.
    names : callable () -> tuple of str
        The names ``featx models --filter`` matches (timm's without the prefix).
    describe : callable (name) -> ModelEntry
        One row of ``featx models``, for a name of *names*.
    weights_label : callable (name, weights) -> str
        The label of one of the source's own weights, ``DEFAULT`` resolved,
        without loading anything (``'none'`` and files are not asked);
        :class:`~featx.errors.WeightsError` for a name it does not have.
    load : callable (name, *, weights, seed, image_size, state=None, origin=None) -> LoadedModel
        The model with the weights labelled *weights* (its own, or ``'none'``
        for a random initialisation seeded with *seed*), or with the tensors
        *state* read from the file *origin* (named in messages).  A source
        whose models are built for their input size builds them at
        *image_size*, and its preprocessing then crops *image_size*.
    usage : str
        How to extract one of its models, for the listing's title.
    """

    claims: Callable[[str], bool]
    check: Callable[..., str]
    names: Callable[[], tuple[str, ...]]
    describe: Callable[[str], ModelEntry]
    weights_label: Callable[[str, str], str]
    load: Callable[..., LoadedModel]
    usage: str


@dataclass(frozen=True)
class WeightsSource:
    """Weights from outside a model source's own catalogue: one entry of the weights source registry.

    Attributes
    ----------
    label : callable (model, weights, weights_file) -> str or None
        The store's label of the weights asked for when this source provides
        them, else None; worked out without reading any file.
    load : callable (model, weights, weights_file, *, source, seed, image_size) -> LoadedModel
        The model *model* of the model source *source* with these weights.
    """

    label: Callable[[str, str, Path | None], str | None]
    load: Callable[..., LoadedModel]


@dataclass(frozen=True)
class WeightsFormat:
    """One kind of weights file: one entry of the weights format registry.

    Attributes
    ----------
    matches : callable (path) -> bool
        Whether the file is of this format (by its name or its first bytes).
    load : callable (model, path, *, source, seed, image_size) -> LoadedModel
        The model *model* of the model source *source* with the file's weights.
    """

    matches: Callable[[Path], bool]
    load: Callable[..., LoadedModel]
