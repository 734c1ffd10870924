"""What an extraction is asked to do and what it did: the configuration, its checks, the result.

Imports no torch: the command line builds its choices from the registries here
(:data:`PRECISIONS`, :data:`STORAGE_DTYPES`, :data:`COMPRESSIONS`, and
:data:`~featx.extraction.POOLS`), and a configuration is checked before
anything heavy is loaded.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, choices, message, option
from ..paths import check_writable_file
from ..store import parse_weights_label
from ._images import MAX_IMAGE_PIXELS
from ._pooling import POOLS

__all__ = [
    "PRECISIONS",
    "PRECISION_NAMES",
    "STORAGE_DTYPES",
    "COMPRESSIONS",
    "ExtractConfig",
    "ExtractResult",
    "default_store_path",
    "format_extraction",
]

# Compute precision -> the torch dtype autocast runs in (by name, so that this
# registry needs no torch); fp32 runs without autocast.
PRECISIONS: dict[str, str | None] = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}
PRECISION_NAMES = tuple(PRECISIONS)
# numpy dtypes a feature dataset may be stored in.
STORAGE_DTYPES = ("float32", "float16")
# HDF5 filters h5py ships with (no plugin needed to read the store elsewhere).
COMPRESSIONS = ("gzip", "lzf")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything an extraction depends on.  See ``run_pipeline.py extract --help``.

    Every value is checked when the configuration is made
    (:class:`~featx.errors.ConfigError`), before any image or model is loaded.

    Parameters
    ----------
    data : path
        Image folder (class subfolders, optionally under train/val/test).
    model : str
        torchvision classification model name.
    layers : tuple of str
        Graph nodes, module paths or aliases (``penultimate``, ``conv5``, ...).
    weights : str
        ``DEFAULT``, a weights name, or ``none`` (seeded random init).
    weights_file : path, optional
        State dict to load instead of torchvision's weights.
    seed : int
        Seed of the random initialisation with ``weights='none'``.
    image_size : int, optional
        Crop size instead of the weights' own.
    pool : str
        Pooling of 4-D/3-D outputs: one of :data:`~featx.extraction.POOLS`.
    batch_size : int
        Images per forward pass.
    workers : int, optional
        Decoding processes (0: decode in this process); by default
        :func:`~featx.extraction.default_workers`.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    precision : str
        Compute precision, one of :data:`PRECISIONS`.
    dtype : str
        Storage dtype, one of :data:`STORAGE_DTYPES`.
    compression : str, optional
        One of :data:`COMPRESSIONS`.
    out : path, optional
        Store path, checked to be writable; by default :func:`default_store_path`.
    features_dir : path
        Parent folder of default store paths.
    overwrite : bool
        Replace a store made with another configuration.
    checkpoint_seconds : float
        Save progress at least this often (0: after every batch).
    progress : bool
        Show a progress bar.
    max_pixels : int
        Images with more pixels are refused as decompression bombs.
    """

    data: Path = Path("data")
    model: str = "resnet50"
    layers: tuple[str, ...] = ("penultimate",)
    weights: str = "DEFAULT"
    weights_file: Path | None = None
    seed: int = 0
    image_size: int | None = None
    pool: str = "avg"
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    dtype: str = "float32"
    compression: str | None = None
    out: Path | None = None
    features_dir: Path = Path("features")
    overwrite: bool = False
    checkpoint_seconds: float = 10.0
    progress: bool = True
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError(
                message("no layer requested", hint=f"pass at least one layer name, e.g. {option('layers', ('penultimate',))}")
            )
        repeated = [name for i, name in enumerate(self.layers) if name in self.layers[:i]]
        if repeated:
            raise ConfigError(message("a layer is requested twice", got=repeated[0], hint="ask for each layer once"))
        for name, registry in (("pool", POOLS), ("precision", PRECISIONS), ("dtype", STORAGE_DTYPES)):
            if getattr(self, name) not in registry:
                raise ConfigError(message(option(name), allowed=choices(registry), got=getattr(self, name)))
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
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            raise ConfigError(
                message(option("image_size"), allowed="a positive integer (the crop size in pixels)", got=self.image_size)
            )
        seconds = self.checkpoint_seconds
        if not isinstance(seconds, numbers.Real) or isinstance(seconds, bool) or not seconds >= 0 or math.isinf(seconds):
            raise ConfigError(
                message(option("checkpoint_seconds"), allowed="a number of seconds >= 0 (0: after every batch)", got=seconds)
            )
        if not _is_int(self.max_pixels) or self.max_pixels < 1:
            raise ConfigError(message(option("max_pixels"), allowed="a positive integer", got=self.max_pixels))
        if self.out is not None:
            # The default path needs the weights' name: extract_features checks it.
            check_writable_file(self.out, "out")


def default_store_path(config: ExtractConfig) -> Path:
    """``features/<dataset>/<model>-<weights>[-s<seed>][-<size>].h5``, deterministic from the configuration.

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

    dataset = Path(config.data).expanduser().resolve().name or "data"
    label = weights_label(config.model, weights=config.weights, weights_file=config.weights_file)
    kind, name = parse_weights_label(label)
    parts = [config.model, f"file-{name.rsplit('.', 1)[0]}" if kind == "file" else label]
    if kind == "none" and config.seed:
        parts.append(f"s{config.seed}")
    if config.image_size is not None:
        parts.append(str(config.image_size))
    return Path(config.features_dir) / dataset / ("-".join(parts) + ".h5")


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
        Wall time from the first image to the finished store.
    images : int
        Images processed by this run.
    """

    path: Path
    rows: int
    layers: dict[str, int]
    failed: list[tuple[str, str]] = field(default_factory=list)
    up_to_date: bool = False
    seconds: float = 0.0
    images: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def format_extraction(result: ExtractResult) -> str:
    """The summary of an extraction that ``run_pipeline.py extract`` prints.

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
    if result.up_to_date:
        return f"up to date: {result.path} ({result.rows:,} images; {layers})"
    lines = [f"wrote {result.path}: {result.rows:,} images; layers {layers}"]
    if result.images:
        lines.append(f"  {result.images:,} images in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s)")
    if result.failed:
        lines.append(f"  {len(result.failed)} image(s) could not be used (listed in /failed):")
        lines += [f"    {image_id}: {reason}" for image_id, reason in result.failed]
    return "\n".join(lines)
