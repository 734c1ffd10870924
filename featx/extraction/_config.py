"""What an extraction is asked to do and what it did: the configuration, its checks, the result.

An :class:`ExtractConfig` is a :class:`~featx.extraction.FeatureRecipe` (how
the features are made) plus the options of one run (where the images are,
where the store goes, how the work is spread).  Its values are checked when it
is made; what needs the file system (can the store be written where it goes?)
is checked by :meth:`ExtractConfig.store_path`, the first thing an extraction does.

Imports no torch: the command line builds its choices from the registries here
(:data:`PRECISIONS`, :data:`STORAGE_DTYPES`, :data:`COMPRESSIONS`, and
:data:`~featx.extraction.POOLS`), and a configuration is checked before
anything heavy is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, choices, message, option
from ..paths import check_writable_file
from ..store import parse_weights_label
from ._images import MAX_IMAGE_PIXELS
from ._preprocessing import JPEG_DECODES
from ._recipe import PRECISION_REQUESTS, PRECISIONS, STORAGE_DTYPES, FeatureRecipe

__all__ = [
    "PRECISIONS",
    "PRECISION_REQUESTS",
    "COMPILE_MODES",
    "JPEG_DECODES",
    "STORAGE_DTYPES",
    "COMPRESSIONS",
    "MODEL_SOURCES",
    "DECODERS",
    "ENGINES",
    "RECIPE_OPTIONS",
    "ExtractConfig",
    "ExtractResult",
    "WorkerThroughput",
    "default_store_path",
    "format_extraction",
]

# HDF5 filters h5py ships with (no plugin needed to read the store elsewhere).
COMPRESSIONS = ("gzip", "lzf")
# Where models come from (`featx models --source`): torchvision's names, timm's as timm/<name>.
MODEL_SOURCES = ("torchvision", "timm")
# Where JPEGs are decoded: auto (on the GPU when the network runs on CUDA), cpu, gpu.
DECODERS = ("auto", "cpu", "gpu")
# --compile: auto (when the run is long enough to pay for compiling, extraction._compile), on, off.
COMPILE_MODES = ("auto", "on", "off")
# Engine name -> what runs the network (featx.extraction._engine's registry builds them).
ENGINES = {"local": "this process", "ray": "Ray actors, on this machine or a Ray cluster"}
# The options only the Ray engine reads.
_RAY_OPTIONS = ("ray_address", "ray_workers", "gpus_per_worker")
#: The options of ``extract`` that make the recipe (FeatureRecipe.request's keywords); the others are the run's.
RECIPE_OPTIONS = (
    "model", "layers", "weights", "weights_file", "seed", "image_size", "pool", "precision", "dtype",
    "resize", "crop", "mean", "std", "interpolation", "jpeg",
    "views", "views_reduce",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class ExtractConfig:
    """An extraction: the recipe of its features and the options of the run.  See ``featx extract --help``.

    Every value is checked when the configuration is made
    (:class:`~featx.errors.ConfigError`), before any image or model is
    loaded; :meth:`from_options` makes one from the command's options.

    Parameters
    ----------
    recipe : FeatureRecipe
        Model, weights, preprocessing, layers, pooling, precision, storage dtype.
    data : path or ImageSource
        Image folder (class subfolders, optionally under train/val/test), or
        an :class:`~featx.extraction.ImageSource`.
    out : path, optional
        Store path; by default :func:`default_store_path`.
    features_dir : path
        Parent folder of default store paths.
    overwrite : bool
        Replace a store made with another configuration.
    force : bool
        Start even when the free space where the store goes looks too small
        for what is left to write (the estimate is an upper bound).
    checkpoint_seconds : float
        Save progress at least this often (0: after every batch).
    compression : str, optional
        One of :data:`COMPRESSIONS`.
    batch_size : int
        Images per forward pass.
    workers : int, optional
        Decoding processes (0: decode in this process); by default
        one per core (at most 16).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    decode : str
        Where JPEGs are decoded, one of :data:`DECODERS`: ``gpu`` (needs a
        CUDA device), ``cpu``, or ``auto`` (the GPU when the network runs on one).
    autotune : bool
        Time a few micro-batch sizes and memory layouts of the network before
        the run and use the fastest (cached per model and machine); a store
        keeps the choice of the run that started it.
    max_pixels : int
        Images with more pixels are refused as decompression bombs.
    progress : bool
        Show a progress bar.
    compile : str
        One of :data:`COMPILE_MODES`: run the network through ``torch.compile``
        (``on``), eagerly (``off``), or compiled when the images still to do
        are enough to pay for compiling (``auto``; see :mod:`featx.extraction._compile`).
    engine : str
        One of :data:`ENGINES`: ``local`` (this process) or ``ray`` (Ray
        actors; needs ``pip install 'featx[ray]'``).  The store is the same bit
        for bit on the CPU.
    ray_address : str, optional
        With ``engine='ray'``: the cluster to join (``HOST:PORT`` of ``ray
        start --head``, ``ray://HOST:PORT``, or ``auto``); by default a local
        Ray instance over this machine's cores and GPUs is started.
    ray_workers : int, optional
        With ``engine='ray'``: Ray actors that run the network; by default one
        per GPU (per *gpus_per_worker* GPUs), or on the CPU one per as many
        cores as this process runs threads.
    gpus_per_worker : float, optional
        With ``engine='ray'``: GPUs of each worker (fractions share a GPU); by
        default 1 when the cluster has GPUs (and *device* is not ``cpu``), else 0.
    """

    recipe: FeatureRecipe = field(default_factory=FeatureRecipe.request)
    data: Any = Path("data")
    out: Path | None = None
    features_dir: Path = Path("features")
    overwrite: bool = False
    force: bool = False
    checkpoint_seconds: float = 10.0
    compression: str | None = None
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    decode: str = "auto"
    autotune: bool = True
    max_pixels: int = MAX_IMAGE_PIXELS
    progress: bool = True
    compile: str = "auto"
    engine: str = "local"
    ray_address: str | None = None
    ray_workers: int | None = None
    gpus_per_worker: float | None = None

    @classmethod
    def from_options(cls, **options: Any) -> ExtractConfig:
        """A configuration from ``extract``'s options, by their Python names.

        The recipe's options (:data:`RECIPE_OPTIONS`: ``model``, ``layers``,
        ``weights``, ``image_size``, ``pool``, ...) make the
        :class:`~featx.extraction.FeatureRecipe`; the others are the run's.

        Raises
        ------
        ConfigError
            An unknown option, or a value that is not allowed.
        """
        allowed = [*RECIPE_OPTIONS, *(f for f in cls.__dataclass_fields__ if f != "recipe")]
        unknown = [name for name in options if name not in allowed]
        if unknown:
            from ..errors import close_matches

            raise ConfigError(
                message("an unknown option of extract", got=unknown[0], hint=close_matches(unknown[0], allowed).strip() or None)
            )
        recipe = FeatureRecipe.request(**{k: v for k, v in options.items() if k in RECIPE_OPTIONS})
        run = {k: v for k, v in options.items() if k not in RECIPE_OPTIONS}
        if isinstance(run.get("out"), (str, os.PathLike)):
            run["out"] = Path(run["out"])
        return cls(recipe=recipe, **run)

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, FeatureRecipe):
            raise ConfigError(message("recipe", allowed="a FeatureRecipe", got=type(self.recipe).__name__))
        if self.decode not in DECODERS:
            raise ConfigError(message(option("decode"), allowed=choices(DECODERS), got=self.decode))
        if self.compile not in COMPILE_MODES:
            raise ConfigError(message(option("compile"), allowed=choices(COMPILE_MODES), got=self.compile))
        if self.decode == "gpu" and self.recipe.preprocessing.jpeg == "draft":
            raise ConfigError(
                message(
                    f"{option('jpeg', 'draft')} decodes on the CPU (libjpeg's DCT scaling)",
                    hint=f"leave out {option('decode', 'gpu')} or {option('jpeg', 'draft')}",
                )
            )
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise ConfigError(
                message(option("compression"), allowed=f"{choices(COMPRESSIONS)} or None", got=self.compression)
            )
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(message(option("batch_size"), allowed="a positive integer", got=self.batch_size))
        if self.workers is not None and (not _is_int(self.workers) or self.workers < 0):
            raise ConfigError(
                message(option("workers"), allowed="0 or a positive integer (0: decode in this process)", got=self.workers)
            )
        seconds = self.checkpoint_seconds
        if not isinstance(seconds, numbers.Real) or isinstance(seconds, bool) or not seconds >= 0 or math.isinf(seconds):
            raise ConfigError(
                message(option("checkpoint_seconds"), allowed="a number of seconds >= 0 (0: after every batch)", got=seconds)
            )
        if not isinstance(self.autotune, bool):
            raise ConfigError(message(option("autotune"), allowed="True or False", got=self.autotune))
        if not _is_int(self.max_pixels) or self.max_pixels < 1:
            raise ConfigError(message(option("max_pixels"), allowed="a positive integer", got=self.max_pixels))
        self._check_engine()

    def store_path(self) -> Path:
        """Where the store goes, checked to be writable: ``out``, else :func:`default_store_path`.

        Raises
        ------
        OutputPathError
            It cannot be written (nothing is created).
        UnknownModelError, WeightsError
            The default path needs the model's and weights' names, which are unknown.
        """
        path = Path(self.out) if self.out is not None else default_store_path(self)
        return check_writable_file(path, "out")

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(message(option("engine"), allowed=choices(ENGINES), got=self.engine))
        if self.engine != "ray":
            given = [name for name in _RAY_OPTIONS if getattr(self, name) is not None]
            if given:
                raise ConfigError(
                    message(f"{option(given[0])} is an option of the Ray engine", hint=f"add {option('engine', 'ray')}")
                )
            return
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(
                message(
                    f"{option('device')} with {option('engine', 'ray')}", allowed="auto, cpu or cuda", got=self.device,
                    hint=f"Ray gives each worker its GPUs ({option('gpus_per_worker')})",
                )
            )
        if self.decode == "gpu":
            raise ConfigError(
                message(
                    f"{option('decode', 'gpu')} does not work with {option('engine', 'ray')}",
                    hint=f"Ray workers decode on their CPUs; leave out {option('decode')}",
                )
            )
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise ConfigError(
                message(option("ray_address"), allowed="HOST:PORT, ray://HOST:PORT or auto", got=self.ray_address)
            )
        if self.ray_workers is not None and (not _is_int(self.ray_workers) or self.ray_workers < 1):
            raise ConfigError(message(option("ray_workers"), allowed="a positive integer", got=self.ray_workers))
        gpus = self.gpus_per_worker
        if gpus is not None:
            if not isinstance(gpus, numbers.Real) or isinstance(gpus, bool) or not 0 <= gpus < math.inf:
                raise ConfigError(
                    message(option("gpus_per_worker"), allowed="a number >= 0 (fractions share a GPU)", got=gpus)
                )
            if gpus > 0 and self.device == "cpu":
                raise ConfigError(
                    message(
                        f"{option('gpus_per_worker', gpus)} contradicts {option('device', 'cpu')}",
                        hint="leave out one of them",
                    )
                )
            if gpus == 0 and self.device == "cuda":
                raise ConfigError(
                    message(
                        f"{option('gpus_per_worker', gpus)} contradicts {option('device', 'cuda')}",
                        hint="leave out one of them",
                    )
                )


def default_store_path(config: ExtractConfig) -> Path:
    """``features/<dataset>/<model>-<weights>[-s<seed>][-<size>][-p<hash>].h5``, deterministic from the configuration.

    A timm model's ``timm/`` becomes ``timm-`` (one file, no subfolder);
    ``-p<hash>`` stands for preprocessing options (``resize``, ``mean``, ...) when any is given.

    Worked out without loading the model or reading an image, so that it can be
    checked before any work starts.

    Raises
    ------
    UnknownModelError, WeightsError
        The model or weights name is unknown.
    """
    from ._models import (
        weights_label,  # torchvision resolves DEFAULT to the weights' own name
    )

    recipe = config.recipe
    dataset = _dataset_name(config.data)
    label = weights_label(recipe.model, weights=recipe.weights, weights_file=recipe.weights_file)
    kind, name = parse_weights_label(label)
    parts = [recipe.model.replace("/", "-"), f"file-{name.rsplit('.', 1)[0]}" if kind == "file" else label]
    if kind == "none" and recipe.seed:
        parts.append(f"s{recipe.seed}")
    if recipe.image_size is not None:
        parts.append(str(recipe.image_size))
    given = recipe.preprocessing.given()
    if given:
        digest = hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()
        parts.append(f"p{digest[:8]}")
    if recipe.views != "none":  # a store of views is another store: its own default name
        parts.append(recipe.views.replace(":", "-") + ("-all" if recipe.views_reduce == "none" else ""))
    return Path(config.features_dir) / dataset / ("-".join(parts) + ".h5")


def _dataset_name(data: Any) -> str:
    """The folder name a default store path is filed under: the data folder's (or file's stem, or URL's last part).

    A shard pattern's braces are left out: ``train-{000..127}.tar`` is filed under ``train``.
    """
    location = getattr(data, "location", None)
    path = Path(location if isinstance(location, str) else data).expanduser()
    if path.suffix and not path.is_dir():
        path = path.with_suffix("")
    name = re.sub(r"\{[^{}]*\}", "", path.resolve().name).strip("-_. ")
    return name or "data"


@dataclass(frozen=True)
class WorkerThroughput:
    """What one worker of the Ray engine did in an extraction.

    Attributes
    ----------
    name : str
        The worker and where it ran (node, process, device).
    images : int
        Images it extracted.
    seconds : float
        Time it spent on them (decoding and the network).
    """

    name: str
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ExtractResult:
    """What an extraction did.

    Attributes
    ----------
    path : Path
        The store.
    rows : int
        Images in the store.
    layers : dict of str -> int
        Layers written (or already present) and their widths D.
    failed : list of (id, reason)
        Images that could not be used in this run.
    up_to_date : bool
        The store already held every requested layer; nothing was computed.
    seconds : float
        Wall time from the network and its forward configuration ready to the
        finished store (the Ray engine's workers, whatever they still need
        then, included).
    images : int
        Images processed by this run.
    added, removed : int
        Images new to the store, and images of the store no longer in the data
        folder, when the run updated a complete store incrementally.
    updated : bool
        The run was an incremental update.
    workers : list of WorkerThroughput
        With the Ray engine: what each worker did.
    retried_shards : int
        With the Ray engine: shards handed out again after a worker failed on them.
    recipe : FeatureRecipe or None
        The recipe resolved: how every feature of the run was made.
    precision_reason : str
        Why the run computed in its precision (``auto: this CPU has amx_bf16``).
    """

    path: Path
    rows: int
    layers: dict[str, int]
    failed: list[tuple[str, str]] = field(default_factory=list)
    up_to_date: bool = False
    seconds: float = 0.0
    images: int = 0
    added: int = 0
    removed: int = 0
    updated: bool = False
    workers: list[WorkerThroughput] = field(default_factory=list)
    retried_shards: int = 0
    recipe: FeatureRecipe | None = None
    precision_reason: str = ""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def format_extraction(result: ExtractResult) -> str:
    """The summary of an extraction that ``featx extract`` prints.

    Parameters
    ----------
    result : ExtractResult

    Returns
    -------
    str
        One line for a store that was already up to date; otherwise the store,
        the speed of this run and every image that could not be used.
    """
    layers = ", ".join(f"{name} ({dim:,})" for name, dim in result.layers.items())
    precision = _precision_text(result)
    if result.up_to_date:
        computed = f"; {result.recipe.layers[0].precision}" if precision else ""
        return f"up to date: {result.path} ({result.rows:,} images; {layers}{computed})"
    lines = [f"wrote {result.path}: {result.rows:,} images; layers {layers}"]
    if result.updated:
        lines[0] = f"updated {result.path} (+{result.added:,} / -{result.removed:,} images): {result.rows:,} images; layers {layers}"
    if result.images:
        lines.append(f"  {result.images:,} images in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s)")
    for worker in result.workers:
        lines.append(f"    {worker.name}: {worker.images:,} images, {worker.images_per_second:.1f} images/s")
    if result.retried_shards:
        lines.append(f"  {result.retried_shards} shard(s) handed out again after a Ray worker failed on them")
    if result.failed:
        lines.append(f"  {len(result.failed)} image(s) could not be used (listed in /failed):")
        lines += [f"    {image_id}: {reason}" for image_id, reason in result.failed]
    if precision:  # last, so that the lines above keep their places
        lines.append(f"  {precision}")
    return "\n".join(lines)


def _precision_text(result: ExtractResult) -> str:
    """``computed in bf16 (auto: this CPU has amx_bf16), stored as float32``; empty without a recipe."""
    if result.recipe is None or not result.recipe.layers:
        return ""
    layer = result.recipe.layers[0]
    why = f" ({result.precision_reason})" if result.precision_reason else ""
    return f"computed in {layer.precision}{why}, stored as {layer.dtype}"
