"""What can be extracted: the models of torchvision and timm, as ``run_pipeline.py models`` lists them.

One row per architecture: its weights (default first), the default input
size, the parameter count, the width of its ``penultimate`` layer, and which
weights are in the local cache (so usable offline).  Models are built on
torch's ``meta`` device, which allocates no memory and initialises nothing, so
that counting the parameters of dozens of models takes seconds.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from ..errors import ConfigError, choices, message, option
from ..formatting import format_table
from ._config import MODEL_SOURCES
from ._models import list_model_names, weights_cache_path
from ._timm import (
    TIMM_PREFIX,
    import_timm,
    list_timm_architectures,
    timm_cached_weights,
    timm_weights_tags,
)

__all__ = ["MODEL_SOURCES", "ModelCatalog", "ModelEntry", "format_models", "list_models"]

log = logging.getLogger("featx")

# Past this many rows the listing takes long enough to say so.
_MANY = 200


@dataclass(frozen=True)
class ModelEntry:
    """One architecture.

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
class ModelCatalog:
    """The models of one source, as listed by :func:`list_models`.

    Attributes
    ----------
    source : str
        One of :data:`MODEL_SOURCES`.
    filter : str or None
    entries : tuple of ModelEntry
    """

    source: str
    filter: str | None
    entries: tuple[ModelEntry, ...]


def _matches(names: tuple[str, ...], text: str | None) -> list[str]:
    """Names containing *text* (case-insensitive), or matching it as a wildcard pattern (``convnext*``)."""
    if not text:
        return list(names)
    pattern = text.lower() if any(c in text for c in "*?[") else f"*{text.lower()}*"
    return [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern)]


def _penultimate_width(model: nn.Module) -> int | None:
    """Input width of the final Linear, or of the final convolution of all-convolutional nets (SqueezeNet)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].in_features
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].in_channels if convs else None


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _torchvision_entry(name: str) -> ModelEntry:
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    weights = (default.name, *(w.name for w in enum if w is not default))
    return ModelEntry(
        name=name,
        weights=weights,
        input_size=int(default.transforms().crop_size[0]),
        params=_count(model),
        penultimate=_penultimate_width(model),
        cached=tuple(w for w in weights if weights_cache_path(enum[w]).is_file()),
    )


def _timm_entry(architecture: str) -> ModelEntry:
    timm = import_timm()
    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False)
    tags = timm_weights_tags(architecture)
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    return ModelEntry(
        name=TIMM_PREFIX + architecture,
        weights=tags,
        input_size=int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]),
        params=_count(model),
        penultimate=int(width) if width else None,
        cached=tuple(t for t in tags if timm_cached_weights(architecture, t)[0] is not None),
    )


def list_models(*, source: str = "torchvision", filter: str | None = None) -> ModelCatalog:
    """The models of *source* whose names match *filter*, with weights, input size, size and cache state.

    Parameters
    ----------
    source : {'torchvision', 'timm'}
    filter : str, optional
        Part of the name (case-insensitive), or a wildcard pattern (``convnext*``).

    Returns
    -------
    ModelCatalog
        Print it with :func:`format_models`.

    Examples
    --------
    >>> catalog = list_models(source="timm", filter="convnext_atto")  # doctest: +SKIP
    >>> catalog.entries[0].name, catalog.entries[0].penultimate  # doctest: +SKIP
    ('timm/convnext_atto', 320)
    """
    if source not in MODEL_SOURCES:
        raise ConfigError(message(option("source"), allowed=choices(MODEL_SOURCES), got=source))
    if source == "timm":
        names, make = _matches(list_timm_architectures(), filter), _timm_entry
    else:
        names, make = _matches(list_model_names(), filter), _torchvision_entry
    if len(names) > _MANY:
        log.info(f"counting the parameters of {len(names):,} {source} models (about a minute per 300); --filter TEXT narrows the list")
    return ModelCatalog(source=source, filter=filter, entries=tuple(make(n) for n in names))


def _weights_cell(weights: tuple[str, ...], shown: int = 3) -> str:
    """The first few weights names (the default first) and how many more there are."""
    if not weights:
        return "none (random init only)"
    more = f" (+{len(weights) - shown} more)" if len(weights) > shown else ""
    return ", ".join(weights[:shown]) + more


def format_models(catalog: ModelCatalog) -> str:
    """The table ``run_pipeline.py models`` prints."""
    matching = f" matching '{catalog.filter}'" if catalog.filter else ""
    if not catalog.entries:
        return f"no {catalog.source} model{matching}; `run_pipeline.py models --source {catalog.source}` lists them all"
    how = "--model NAME --weights TAG (default: the first)" if catalog.source == "timm" else "--model NAME --weights NAME"
    title = f"{len(catalog.entries)} {catalog.source} models{matching}; extract with {how}"
    rows = [
        (
            e.name,
            _weights_cell(e.weights),
            str(e.input_size),
            f"{e.params / 1e6:,.1f}M",
            f"{e.penultimate:,}" if e.penultimate else "-",
            ", ".join(e.cached) if e.cached else "-",
        )
        for e in catalog.entries
    ]
    table = format_table(("model", "weights", "input", "params", "penultimate", "cached"), rows, align="<<>>><")
    return f"{title}\n{table}"
