"""Features without a store: :class:`FeatureExtractor`, a scikit-learn transformer.

``fit`` resolves the recipe (loads the network, probes its layers);
``transform`` runs images through it, in memory, with the same stream the
store-writing engine runs (:class:`~featx.extraction._stream.FeatureStream`):
its rows equal a store's rows for the same images, recipe, forward
configuration and batch size, bit for bit on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ..errors import DataError, message
from ._autotune import default_forward_config, network_layouts
from ._device import resolve_device
from ._images import MAX_IMAGE_PIXELS
from ._loader import default_workers
from ._network import build_network, prepare_extractor
from ._recipe import FeatureRecipe
from ._folder import loose_files
from ._image_source import ImageSource, InMemorySource
from ._stream import FeatureStream

__all__ = ["FeatureExtractor", "SourceFeatures"]


@dataclass
class SourceFeatures:
    """The features of the images of a source.

    Attributes
    ----------
    source : ImageSource
    indices : ndarray of int64, (n_rows,)
        Source indices of the rows, increasing.
    features : dict of layer name -> ndarray (n_rows, D)
        In the recipe's layer order.
    failed : list of (int, str)
        Source index and reason of each image that could not be used.
    """

    source: ImageSource
    indices: np.ndarray
    features: dict[str, np.ndarray]
    failed: list[tuple[int, str]]


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Layer activations of a pretrained CNN as a scikit-learn transformer: images in, float32 rows out.

    Parameters
    ----------
    model : str
        A torchvision classification model name, or ``timm/<architecture>``.
    layer : str or sequence of str
        Graph nodes, module paths or aliases (``penultimate``, ``conv5``,
        ``block2_pool``, ...); several layers are concatenated, in this order.
    weights : str
        ``DEFAULT``, a weights name, or ``none`` (seeded random initialisation).
    weights_file : path, optional
        A state dict to load instead.
    seed : int
        Seed of the random initialisation.
    image_size : int, optional
        Crop size instead of the weights' own.
    pool : str
        Pooling of 4-D/3-D outputs, one of :data:`~featx.extraction.POOLS`.
    precision : str
        ``auto`` (the device's native precision: bf16 on CPUs with AMX or
        AVX-512 BF16 and on CUDA GPUs of capability 8.0+) or one of
        :data:`~featx.extraction.PRECISIONS`.
    resize, crop, mean, std, interpolation : optional
        Changes to the weights' preprocessing, as ``extract``'s options.
    views, views_reduce : str
        Augmented views and their reduction, as ``extract --views`` and ``--views-reduce``.
    recipe : FeatureRecipe, optional
        The whole recipe at once (a store's or a classifier's); when given,
        the parameters above are not read.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    batch_size : int
        Images per batch.
    workers : int, optional
        Decoding processes (0: decode in this process); by default one per core (at most 16).
    max_pixels : int
        Images with more pixels are refused as decompression bombs.
    progress : bool
        Unused in memory; kept for symmetry with ``extract``.

    Attributes
    ----------
    recipe_ : FeatureRecipe
        The recipe resolved by :meth:`fit`.
    n_features_out_ : int
        Columns of :meth:`transform`'s output.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> import featx
    >>> clf = make_pipeline(featx.FeatureExtractor(model="resnet18", weights="none", image_size=64),
    ...                     LogisticRegression(max_iter=1000))  # doctest: +SKIP
    >>> clf.fit(train_paths, train_labels).score(test_paths, test_labels)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str = "resnet50",
        layer: str | Sequence[str] = "penultimate",
        *,
        weights: str = "DEFAULT",
        weights_file: str | os.PathLike | None = None,
        seed: int = 0,
        image_size: int | None = None,
        pool: str = "avg",
        precision: str = "auto",
        resize: int | None = None,
        crop: int | None = None,
        mean: Any = None,
        std: Any = None,
        interpolation: str | None = None,
        views: str = "none",
        views_reduce: str = "mean",
        recipe: FeatureRecipe | None = None,
        device: str = "auto",
        batch_size: int = 64,
        workers: int | None = 0,
        max_pixels: int = MAX_IMAGE_PIXELS,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.layer = layer
        self.weights = weights
        self.weights_file = weights_file
        self.seed = seed
        self.image_size = image_size
        self.pool = pool
        self.precision = precision
        self.resize = resize
        self.crop = crop
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.views = views
        self.views_reduce = views_reduce
        self.recipe = recipe
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.max_pixels = max_pixels
        self.progress = progress

    def _requested_recipe(self) -> FeatureRecipe:
        if self.recipe is not None:
            return self.recipe
        return FeatureRecipe.request(
            self.model, self.layer, weights=self.weights, weights_file=self.weights_file, seed=self.seed,
            image_size=self.image_size, pool=self.pool, precision=self.precision, resize=self.resize,
            crop=self.crop, mean=self.mean, std=self.std, interpolation=self.interpolation,
            views=self.views, views_reduce=self.views_reduce,
        )

    def fit(self, X: Any = None, y: Any = None) -> FeatureExtractor:
        """Resolve the recipe: load the network and its weights, probe the layers.  *X* and *y* are not read.

        Raises
        ------
        FeatxError
            An unknown model, weights or layer, or a device this machine lacks.
        """
        from ..errors import ConfigError, option

        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ConfigError(message(option("batch_size"), allowed="a positive integer", got=self.batch_size))
        if self.workers is not None and (
            not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0
        ):
            raise ConfigError(message(option("workers"), allowed="0 or a positive integer", got=self.workers))
        device = resolve_device(self.device)
        network = build_network(self._requested_recipe(), device)
        layouts = network_layouts(network.loaded, device, network.precision)
        forward = default_forward_config(self.batch_size, network.plan.max_images, device, network.precision, layouts)
        names = network.recipe.layer_names
        truncated = network.truncated(names, forward.micro_batch)
        self._preprocessing = network.preprocessing
        self._precision = network.precision
        self._device = device
        self._network = prepare_extractor(truncated, device, network.precision, forward.layout)
        network.release()
        self.recipe_ = network.recipe
        self.forward_ = forward
        self.n_features_out_ = int(sum(network.plan.dims[name] for name in names))
        self._dims = {name: network.plan.dims[name] for name in names}
        return self

    def extract(self, source: ImageSource) -> SourceFeatures:
        """The features of every image of *source* that can be used, layer by layer, and the failures.

        Call :meth:`fit` first.
        """
        stream = FeatureStream(
            self._network,
            source,
            self._preprocessing,
            indices=range(len(source)),
            batch_size=self.batch_size,
            workers=self.workers if self.workers is not None else default_workers(self._device),
            device=self._device,
            precision=self._precision,
            max_pixels=self.max_pixels,
        )
        indices: list[int] = []
        failed: list[tuple[int, str]] = []
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self._dims}
        for batch in stream:
            indices += batch.indices
            failed += batch.failures
            for name, value in batch.features.items():
                parts[name].append(value)
        features = {
            name: np.concatenate(values) if values else np.empty((0, self._dims[name]), dtype=np.float32)
            for name, values in parts.items()
        }
        return SourceFeatures(source, np.asarray(indices, dtype=np.int64), features, failed)

    def transform(self, X: Any) -> np.ndarray:
        """Image paths, PIL images or an :class:`~featx.extraction.ImageSource` -> ``(n_images, n_features_out_)`` float32.

        Rows follow the order of *X* (of the source's ids for a source).

        Raises
        ------
        DataError
            An image cannot be used (the first few are named), or *X* is no list of images.
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "recipe_")
        source, order = _as_source(X)
        got = self.extract(source)
        if got.failed:
            shown = "; ".join(f"{source.display_name(i)}: {reason}" for i, reason in got.failed[:3])
            more = f" (and {len(got.failed) - 3} more)" if len(got.failed) > 3 else ""
            raise DataError(message(f"{len(got.failed)} image(s) could not be used: {shown}{more}"))
        rows = np.concatenate([got.features[name] for name in self._dims], axis=1)
        return rows if order is None else rows[order]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``<layer>_<column>`` for every output column."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "recipe_")
        return np.asarray([f"{name}_{i}" for name, dim in self._dims.items() for i in range(dim)], dtype=object)

    def __sklearn_tags__(self):
        # Its input is a list of images, not a 2-D array.
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags


def _as_source(X: Any) -> tuple[ImageSource, np.ndarray | None]:
    """*X* as an image source, and the rows of the source's order that give *X*'s order (None: the same)."""
    if isinstance(X, ImageSource):
        return X, None
    from PIL import Image

    if isinstance(X, (str, os.PathLike)) or isinstance(X, Image.Image):
        X = [X]
    try:
        items = list(X)
    except TypeError:
        raise DataError(message("X", allowed="image paths, PIL images or an ImageSource", got=type(X).__name__)) from None
    if not items:
        raise DataError(message("X", allowed="at least one image", got="an empty list"))
    if all(isinstance(item, Image.Image) for item in items):
        return InMemorySource.of_images(items), None
    if not all(isinstance(item, (str, os.PathLike)) for item in items):
        kinds = sorted({type(item).__name__ for item in items})
        raise DataError(message("X", allowed="image paths, or PIL images (not both)", got=", ".join(kinds)))
    folders = [str(item) for item in items if os.path.isdir(item)]
    if folders:
        raise DataError(
            message("X", allowed="image files, not folders", got=folders[0],
                    hint="pass featx.extraction.open_source(folder) for the images of a folder")
        )
    source = loose_files(items)
    position = {image_id: i for i, image_id in enumerate(source.ids)}
    order = np.asarray(
        [position[os.path.relpath(os.path.abspath(os.path.expanduser(p)), source.root).replace(os.sep, "/")] for p in items],
        dtype=np.int64,
    )
    return source, order
