"""How a feature is made: :class:`FeatureRecipe`, one frozen value written once and read everywhere.

A recipe says which network (model, weights and their identity), which
preprocessing, which layers (their graph nodes and pooling) and in which
precision a feature is computed.  It is asked for by a user (``resnet18``,
weights ``DEFAULT``, layer ``conv5``, ``--image-size 64``) and *resolved*
against the network (:meth:`FeatureRecipe.resolved`): weights named by their
own label and hash, the preprocessing complete, every layer's graph node and
effective pooling known.  A resolved recipe is

- the store's identity: written as the root attribute ``recipe`` (JSON), and
  compared with the recipe of a run that wants to resume, extend or update the
  store (:meth:`FeatureRecipe.differences`; format-1 stores written before the
  attribute existed are compared through their legacy attributes);
- what a classifier records of its inputs, and what ``predict`` replays:
  a resolved recipe asked for again resolves to itself.

No torch here: a recipe is made and checked before anything heavy is loaded.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, choices, message, option
from ..store import identity_differences, parse_weights_label
from ._pooling import POOLS
from ._preprocessing import Preprocessing, PreprocessingOptions
from ._views import ViewSpec

__all__ = [
    "PRECISIONS",
    "PRECISION_REQUESTS",
    "STORAGE_DTYPES",
    "RECIPE_VERSION",
    "LayerRecipe",
    "FeatureRecipe",
]

# Compute precision -> the torch dtype autocast runs in (by name, so that no torch
# is needed to check one); fp32 runs without autocast.
PRECISIONS: dict[str, str | None] = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}
# What a request may ask for: a precision, or `auto` (the device's native one, or the one a
# store already records: extraction._device.resolve_precision), resolved before the network runs.
PRECISION_REQUESTS = ("auto", *PRECISIONS)
# numpy dtypes a feature dataset may be stored in.
STORAGE_DTYPES = ("float32", "float16")
# Version of the recipe's JSON form: a reader refuses a newer one rather than misread it.
RECIPE_VERSION = 1

# The root attributes that format-1 stores written before the `recipe` attribute
# record a recipe by (`FeatureRecipe.attrs`): still written, so that tools that
# read them keep working, and compared for stores that have no `recipe`.
_LEGACY_KEYS = (
    "model",
    "weights",
    "weights_sha256",
    "seed",
    "image_size",
    "resize",
    "crop",
    "mean",
    "std",
    "interpolation",
    "channel_order",
    "pixel_range",
    "resize_mode",
    "jpeg",
    "views",  # augmented views (extract --views): written only when there are some
    "views_reduce",
)
# The attributes of a feature dataset that describe its layer (LayerSpec.attrs).
_LAYER_KEYS = ("node", "pool", "precision", "dtype")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class LayerRecipe:
    """One requested layer: the dataset name, where it is read, how it is pooled and computed.

    Attributes
    ----------
    name : str
        The name asked for (``conv5``, ``penultimate``, a graph node): the
        dataset's name under ``/features``.
    node : str or None
        The graph node (a timm stage for timm models) it is read from; None
        until the recipe is resolved.
    pool : str
        One of :data:`~featx.extraction.POOLS`; resolved: ``'none'`` for
        outputs that are already ``(N, D)``.
    precision : str
        Compute precision, one of :data:`PRECISIONS`.
    dtype : str
        Storage dtype, one of :data:`STORAGE_DTYPES`.
    """

    name: str
    node: str | None = None
    pool: str = "avg"
    precision: str = "fp32"
    dtype: str = "float32"

    def check(self) -> None:
        """Raise :class:`~featx.errors.ConfigError` for a value that is not allowed."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(message("a layer name", allowed="a non-empty string", got=self.name))
        pools = (*POOLS, "none") if self.node is not None else POOLS
        # `auto` is a request: a resolved layer (with its node) has a concrete precision.
        precisions = PRECISIONS if self.node is not None else PRECISION_REQUESTS
        for name, registry in (("pool", pools), ("precision", precisions), ("dtype", STORAGE_DTYPES)):
            if getattr(self, name) not in registry:
                raise ConfigError(message(option(name), allowed=choices(registry), got=getattr(self, name)))

    def attrs(self) -> dict[str, Any]:
        """This layer as the attributes of its feature dataset record it."""
        return {key: getattr(self, key) for key in _LAYER_KEYS}

    @classmethod
    def from_attrs(cls, name: str, attrs: Mapping[str, Any]) -> LayerRecipe:
        """The layer recorded by a feature dataset's attributes (node, pool, precision, dtype)."""
        return cls(
            name=name,
            node=str(attrs.get("node") or name),
            pool=str(attrs.get("pool") or "none"),
            precision=str(attrs.get("precision") or "fp32"),
            dtype=str(attrs.get("dtype") or "float32"),
        )


@dataclass(frozen=True)
class FeatureRecipe:
    """How a feature is made: network, weights, preprocessing, layers, precision.

    Made by a user or the command line as a request, checked when made
    (:meth:`check` is called by ``__post_init__``: values only, nothing is read
    from disk), then resolved against the network (:meth:`resolved`).  Two
    resolved recipes that are equal make the same features.

    Parameters
    ----------
    model : str
        A torchvision classification model name, or ``timm/<architecture>``.
    layers : tuple of LayerRecipe
        Use :meth:`request` to make them from names.  Empty in the recipe of
        a network alone (:meth:`network`).
    weights : str
        ``DEFAULT``, a weights name (``IMAGENET1K_V1``, a timm pretrained tag),
        ``none`` (seeded random initialisation); resolved: the weights' own
        label, ``file:<name>`` for a weights file.
    weights_file : path, optional
        Where to read a state dict from.  Not part of the identity (a renamed
        copy is the same weights): its sha256 is, once resolved.
    weights_sha256 : str, optional
        The sha256 of the weights file (resolved recipes).
    seed : int
        Seed of the random initialisation with ``weights='none'``.
    image_size : int, optional
        Crop size instead of the weights' own, the resize scaled with it (a
        request only: resolved into *preprocessing*).
    preprocessing : PreprocessingOptions
        Changes to the weights' preprocessing (requests); every field set once resolved.
    views, views_reduce : str
        Augmented views of each image and what is stored of them
        (:mod:`~featx.extraction._views`): ``none`` (one view, as before views
        existed), ``flip``, ``tencrop``, ``multiscale``, ``random:N:SEED``;
        ``mean`` or ``none`` (every view, ``V * D`` columns).
    """

    model: str = "resnet50"
    layers: tuple[LayerRecipe, ...] = (LayerRecipe("penultimate"),)
    weights: str = "DEFAULT"
    weights_file: Path | None = field(default=None, compare=False)
    weights_sha256: str | None = None
    seed: int = 0
    image_size: int | None = None
    preprocessing: PreprocessingOptions = PreprocessingOptions()
    views: str = "none"
    views_reduce: str = "mean"

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def request(
        cls,
        model: str = "resnet50",
        layers: str | Sequence[str] = ("penultimate",),
        *,
        weights: str = "DEFAULT",
        weights_file: str | Path | None = None,
        seed: int = 0,
        image_size: int | None = None,
        pool: str = "avg",
        precision: str = "auto",
        dtype: str = "float32",
        resize: int | None = None,
        crop: int | None = None,
        mean: Any = None,
        std: Any = None,
        interpolation: str | None = None,
        jpeg: str | None = None,
        views: str | None = "none",
        views_reduce: str | None = "mean",
    ) -> FeatureRecipe:
        """A recipe as a user asks for it: layer names, one pooling, precision and dtype for all of them.

        The keyword arguments are the ``extract`` command's options.

        Raises
        ------
        ConfigError
            A value that is not allowed.
        """
        names = (layers,) if isinstance(layers, str) else tuple(layers)
        view_spec = ViewSpec.parse(views, views_reduce)
        if not names:
            raise ConfigError(
                message("no layer requested", hint=f"pass at least one layer name, e.g. {option('layers', ('penultimate',))}")
            )
        return cls(
            model=model,
            layers=tuple(LayerRecipe(name, pool=pool, precision=precision, dtype=dtype) for name in names),
            weights=weights,
            weights_file=Path(weights_file).expanduser() if weights_file is not None else None,
            seed=seed,
            image_size=image_size,
            preprocessing=PreprocessingOptions(
                resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation, jpeg=jpeg
            ),
            views=view_spec.views,
            views_reduce=view_spec.reduce,
        )

    def check(self) -> None:
        """Raise :class:`~featx.errors.ConfigError` for a value that is not allowed (nothing is read from disk)."""
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(message(option("model"), allowed="a model name", got=self.model))
        names = [layer.name for layer in self.layers]
        repeated = [name for i, name in enumerate(names) if name in names[:i]]
        if repeated:
            raise ConfigError(message("a layer is requested twice", got=repeated[0], hint="ask for each layer once"))
        for layer in self.layers:
            layer.check()
        if ViewSpec.parse(self.views, self.views_reduce).views != self.views:
            raise ConfigError(message(option("views"), allowed="a canonical spelling (FeatureRecipe.request makes it)", got=self.views))
        if not isinstance(self.weights, str) or not self.weights:
            raise ConfigError(message(option("weights"), allowed="DEFAULT, a weights name or none", got=self.weights))
        if not _is_int(self.seed):
            raise ConfigError(message(option("seed"), allowed="an integer", got=self.seed))
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            raise ConfigError(
                message(option("image_size"), allowed="a positive integer (the crop size in pixels)", got=self.image_size)
            )
        crop = self.preprocessing.crop
        if self.image_size is not None and crop is not None and crop != self.image_size:
            # image_size is the crop, with the resize scaled to it (an explicit resize wins).
            raise ConfigError(
                message(
                    f"{option('image_size')} is the crop size; it cannot differ from {option('crop')}",
                    got=(self.image_size, crop),
                    hint=f"pass one of them (with {option('resize')} for the resize)",
                )
            )

    # -- what a recipe is made of ------------------------------------------------

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The requested names, in the order asked."""
        return tuple(layer.name for layer in self.layers)

    @property
    def is_resolved(self) -> bool:
        """Whether every value is concrete (see :meth:`resolved`)."""
        return (
            self.image_size is None
            and all(layer.node is not None for layer in self.layers)
            and all(value is not None for value in _preprocessing_fields(self.preprocessing).values())
        )

    @property
    def view_spec(self) -> ViewSpec:
        """The views of each image and their reduction."""
        return ViewSpec(self.views, self.views_reduce)

    @property
    def preprocessing_resolved(self) -> Preprocessing:
        """The complete preprocessing of a resolved recipe."""
        return Preprocessing(**_preprocessing_fields(self.preprocessing))

    def resolved(
        self,
        *,
        weights: str,
        weights_sha256: str | None,
        seed: int | None,
        preprocessing: Preprocessing,
        layers: Sequence[LayerRecipe],
    ) -> FeatureRecipe:
        """This recipe with every value concrete: what the network made of the request.

        Parameters
        ----------
        weights : str
            The weights' own label (``DEFAULT`` resolved, ``file:<name>``, ``none``).
        weights_sha256 : str or None
            The sha256 of a weights file.
        seed : int or None
            The seed used (random initialisation only).
        preprocessing : Preprocessing
            The preprocessing applied (weights' own, sidecar, ``image_size`` and options).
        layers : sequence of LayerRecipe
            Every requested layer with its graph node and effective pooling.
        """
        return replace(
            self,
            weights=weights,
            weights_sha256=weights_sha256,
            seed=seed if seed is not None else 0,
            image_size=None,
            preprocessing=PreprocessingOptions(**_as_options(preprocessing)),
            layers=tuple(layers),
        )

    def with_layers(self, layers: Sequence[LayerRecipe]) -> FeatureRecipe:
        """The same network and preprocessing with other layers."""
        return replace(self, layers=tuple(layers))

    def with_precision(self, precision: str) -> FeatureRecipe:
        """The same recipe with every layer asked for in ``auto`` computed in *precision*."""
        return replace(self, layers=tuple(
            replace(layer, precision=precision) if layer.precision == "auto" else layer for layer in self.layers
        ))

    def with_weights_file(self, path: str | Path | None) -> FeatureRecipe:
        """The same recipe reading its weights from *path* (a file with the recorded sha256)."""
        return replace(self, weights_file=Path(path) if path is not None else None)

    def network(self) -> FeatureRecipe:
        """The recipe without its layers: what one forward pass of one network shares (see :meth:`differences`)."""
        return replace(self, layers=())

    # -- the store's root attributes --------------------------------------------

    def attrs(self) -> dict[str, Any]:
        """The format-1 root attributes that record this (resolved) recipe.

        ``model``, ``weights``, ``resize``, ``mean``, ...: what tools and
        older featx versions read (the store writer adds :meth:`to_json` as
        ``recipe``, the whole recipe).  ``channel_order``,
        ``pixel_range`` and ``resize_mode`` are written only when they are not
        the default (RGB, [0, 1], shorter side), as before the recipe existed.
        """
        preprocessing = self.preprocessing_resolved
        kind, _ = parse_weights_label(self.weights)
        return {
            "model": self.model,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "seed": self.seed if kind == "none" else None,
            **preprocessing.attrs(),
            **({"views": self.views, "views_reduce": self.views_reduce} if self.views != "none" else {}),
        }

    def differences(self, recorded: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """What makes a store's features other than this recipe's, layers aside.

        Parameters
        ----------
        recorded : mapping
            A store's root attributes (or a classifier's record of them): its
            ``recipe`` when it has one, else the format-1 attributes.

        Returns
        -------
        list of (key, recorded value, this recipe's value)
            Empty when the network, weights and preprocessing are the same.
            Keys are named as the format-1 attributes (``seed``, ``resize``,
            ``mean``, ...), so that a message reads the same for every store.

        Raises
        ------
        StoreError
            The ``recipe`` attribute cannot be read.
        """
        text = recorded.get("recipe")
        theirs = FeatureRecipe.from_json(text).attrs() if text else recorded
        return identity_differences(theirs, self.attrs(), _LEGACY_KEYS)

    # -- JSON ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """This recipe as plain JSON values (``weights_file``, a location, is left out)."""
        return {
            "version": RECIPE_VERSION,
            "model": self.model,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "seed": self.seed,
            "image_size": self.image_size,
            "preprocessing": {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in _preprocessing_fields(self.preprocessing).items()
                if key != "jpeg" or value not in (None, "exact")  # recorded only when not the default
            },
            "layers": [
                {"name": layer.name, "node": layer.node, "pool": layer.pool, "precision": layer.precision,
                 "dtype": layer.dtype}
                for layer in self.layers
            ],
            # Only with views: the JSON of a recipe without them is what it was before they existed.
            **({"views": self.views, "views_reduce": self.views_reduce} if self.views != "none" else {}),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text, keys sorted: equal recipes give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureRecipe:
        """The recipe of :meth:`to_dict`.

        Raises
        ------
        StoreError
            *data* is no recipe this featx can read.
        """
        from ..errors import StoreError

        try:
            version = data.get("version")
            if version != RECIPE_VERSION:
                raise StoreError(
                    message(
                        "the recipe's version", allowed=f"{RECIPE_VERSION}", got=version,
                        hint="read it with the featx version that wrote it",
                    )
                )
            preprocessing = {
                key: tuple(value) if isinstance(value, list) else value
                for key, value in dict(data.get("preprocessing") or {}).items()
            }
            return cls(
                model=str(data["model"]),
                weights=str(data["weights"]),
                weights_sha256=data.get("weights_sha256"),
                seed=int(data.get("seed") or 0),
                image_size=data.get("image_size"),
                preprocessing=PreprocessingOptions(**preprocessing),
                layers=tuple(LayerRecipe(**layer) for layer in data["layers"]),
                views=str(data.get("views", "none")),
                views_reduce=str(data.get("views_reduce", "mean")),
            )
        except StoreError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(message(f"the recipe cannot be read ({type(exc).__name__}: {exc})")) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureRecipe:
        """The recipe of :meth:`to_json`.

        Raises
        ------
        StoreError
            *text* is not a recipe's JSON.
        """
        from ..errors import StoreError

        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise StoreError(message(f"the recipe is not JSON ({type(exc).__name__}: {exc})")) from None
        if not isinstance(data, Mapping):
            raise StoreError(message("a recipe", allowed="a JSON object", got=type(data).__name__))
        return cls.from_dict(data)

    @classmethod
    def from_store_attrs(
        cls, attrs: Mapping[str, Any], layers: Mapping[str, Mapping[str, Any]] | None = None
    ) -> FeatureRecipe:
        """The recipe a store records, to replay: its ``recipe`` attribute, or, for older stores, a request.

        A store written before the ``recipe`` attribute records its resize,
        crop, normalisation and interpolation, which are asked for again; the
        rest (channel order, pixel range, resize mode) is the weights' own, as
        when the store was made.  :meth:`differences` then tells whether the
        network resolved the request to the recorded values.

        Parameters
        ----------
        attrs : mapping
            The store's root attributes (or a classifier's record of them).
        layers : mapping of name -> attributes, optional
            Feature datasets' attributes: the recipe's layers are these (in
            this order, each read from its recorded node) when given, else the
            ones the ``recipe`` attribute lists.

        Raises
        ------
        StoreError
            The ``recipe`` attribute cannot be read.
        """
        text = attrs.get("recipe")
        if text:
            recipe = cls.from_json(text)
        else:
            mean, std, resize = attrs.get("mean"), attrs.get("std"), attrs.get("resize")
            recipe = cls(
                model=str(attrs["model"]),
                weights=str(attrs["weights"]),
                weights_sha256=attrs.get("weights_sha256") or None,
                seed=int(attrs.get("seed") or 0),
                layers=(),
                preprocessing=PreprocessingOptions(
                    resize=int(resize) if resize is not None else None,
                    crop=int(attrs["crop"]),
                    mean=tuple(float(v) for v in mean) if mean is not None else None,
                    std=tuple(float(v) for v in std) if std is not None else None,
                    interpolation=str(attrs["interpolation"]) if attrs.get("interpolation") is not None else None,
                ),
            )
        if layers is not None:
            recipe = recipe.with_layers([LayerRecipe.from_attrs(name, info) for name, info in layers.items()])
        return recipe


def _preprocessing_fields(options: PreprocessingOptions) -> dict[str, Any]:
    values = {f.name: getattr(options, f.name) for f in fields(PreprocessingOptions)}
    if values.get("jpeg") is None and values.get("crop") is not None:
        values["jpeg"] = "exact"  # a resolved recipe from before `jpeg` existed (or one that left it out)
    return values


def _as_options(preprocessing: Preprocessing) -> dict[str, Any]:
    return {f.name: getattr(preprocessing, f.name) for f in fields(PreprocessingOptions)}
