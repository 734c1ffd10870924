"""What a classification run depends on, checked once when it is made.

:class:`ClassifyConfig` refuses every value that is wrong whatever the data
and the machine (an unknown classifier or normalisation, a parameter out of
range, a test size outside (0, 1), fewer than 2 folds, a device name that is
not one) when it is constructed, asking nothing of the machine.  What depends
on the machine (the memory budget, whether the device asked for is there) is
worked out by :meth:`ClassifyConfig.resolve`, the first thing
:func:`~featx.classification.run_classification` does, before any store is
read.  What can only be judged against the data (a class too small for the
folds, more PCA components than rows) is checked by :mod:`._evaluation` once
the stores are joined, still before anything is fitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import devices
from ..errors import ConfigError, message, option
from ._join import check_feature_specs
from ._pipeline import NORMALIZERS
from ._registry import check_gpu_libraries, parse_models, protocol, resolve_params, unknown_name

__all__ = ["ClassifyConfig", "ClassifyResources", "parse_memory", "available_memory"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_MEMORY_ALLOWED = "a number of bytes, optionally with a unit K, M, G or T (e.g. 512M, 4G)"


def available_memory() -> int:
    """Bytes of RAM available now (``SC_AVPHYS_PAGES``): the default memory budget."""
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def parse_memory(value: Any) -> int:
    """``"4G"``, ``"512M"``, ``"1.5g"``, ``2_000_000`` -> bytes (binary units).

    Raises
    ------
    ConfigError
        Text that is not a positive size.
    """
    if _is_int(value) and value > 0:
        return int(value)
    text = str(value).strip().upper().removesuffix("IB").removesuffix("B") if isinstance(value, str) else None
    try:
        unit = text[-1] if text and text[-1] in _UNITS else ""
        number = float(text[: len(text) - len(unit)])
        size = int(number * _UNITS[unit])
    except (TypeError, ValueError, IndexError):
        size = 0
    if size < 1:
        raise ConfigError(message(option("memory"), allowed=_MEMORY_ALLOWED, got=value))
    return size


# What scikit-learn and numpy accept as a random_state seed.
_MAX_SEED = 2**32 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClassifyResources:
    """What this machine gives a classification run: :meth:`ClassifyConfig.resolve`.

    Attributes
    ----------
    memory : int
        The memory budget in bytes: ``ClassifyConfig.memory``, else the RAM
        available when the configuration was resolved.
    device : str
        ``ClassifyConfig.device`` resolved: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    """

    memory: int
    device: str


@dataclass(frozen=True)
class ClassifyConfig:
    """Everything a classification run depends on.  See ``featx classify --help``.

    Constructing it checks every value and asks nothing of the machine;
    :meth:`resolve` reads what the machine has.

    Parameters
    ----------
    features : tuple of str
        ``STORE[:LAYER]`` specs, joined on sample id; one str or path is one input.
    models : tuple of str
        Classifier families (:data:`featx.classification.FAMILIES`); a
        comma-separated string is accepted.
    normalize : {'standard', 'l2', 'none'}
        Normalisation of each input block (:data:`NORMALIZERS`), fitted on training rows.
    pca : int, optional
        Number of principal components kept after normalisation.
    test_size : float
        Fraction held out when the stores have no train/val|test split.
    cv : int, optional
        k-fold cross-validation over all labelled samples instead.
    seed : int
        Seed of the splits and of every estimator.
    search : bool
        Cross-validated grid search over each family's main parameters.
    out : path, optional
        Run folder; by default a new ``runs_dir/<timestamp>/``.  It must be
        new or empty (a run is never mixed with another).
    overwrite : bool
        Write into an *out* that holds files: featx's own files there
        (results, predictions, plots, classifiers) are replaced when the run
        is complete, any other file is kept.
    params : mapping
        Hyper-parameters, e.g. ``{"C": 1.0, "kernel": "linear"}``: each applies
        to the chosen families that declare it.  Values may be text, as from
        the command line; they are recorded as given.
    runs_dir : path
        Parent of the default run folders.
    plots : bool
        Draw pictures: the confusion-matrix PNGs, and thumbnails of the
        misclassified images in ``report.html`` (false: neither, and no image is read).
    memory : int or str, optional
        Memory budget in bytes (text such as ``"4G"`` is read into bytes); by
        default the RAM available when the run starts (:meth:`resolve`).  A
        training matrix larger than it is fitted by streaming it from the
        stores in blocks.
    device : {'auto', 'cpu', 'cuda', 'cuda:N'}
        Where the families that can use a GPU fit (svm and logreg through
        torch, xgboost): ``auto`` is the GPU when the CUDA driver sees one.
        On the CPU no torch is imported.
    protocol : {'linear-probe'}, optional
        How the protocol's family chooses its regularisation (the registry's
        ``PROTOCOLS``): ``linear-probe`` fits logreg with ``C`` chosen among
        45 log-spaced values on a validation split, then refitted.

    Raises
    ------
    ConfigError
        A value that is not allowed, named with what is allowed.
    DeviceError
        A device that is not a device name.

    Examples
    --------
    >>> config = ClassifyConfig(features=("features/digits/resnet18.h5",), models="svm,logreg", params={"C": "0.5"})
    >>> config.model_params["logreg"]
    {'C': 0.5, 'max_iter': 1000}
    """

    features: tuple[str, ...]
    models: tuple[str, ...] = ("svm",)
    normalize: str = "standard"
    pca: int | None = None
    test_size: float = 0.25
    cv: int | None = None
    seed: int = 0
    search: bool = False
    out: Path | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    runs_dir: Path = Path("runs")
    plots: bool = True
    memory: int | str | None = None
    device: str = "auto"
    protocol: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        # Checks only, and the given values in the types the fields declare (models, features, memory).
        object.__setattr__(self, "models", parse_models(self.models))
        object.__setattr__(self, "features", check_feature_specs(self.features))
        object.__setattr__(self, "params", dict(self.params))
        if self.normalize not in NORMALIZERS:
            raise unknown_name(option("normalize"), self.normalize, NORMALIZERS)
        if self.pca is not None and not (_is_int(self.pca) and self.pca >= 1):
            raise ConfigError(
                message(option("pca"), allowed="a positive integer (the number of components kept)", got=self.pca)
            )
        if not (isinstance(self.test_size, (int, float)) and not isinstance(self.test_size, bool)
                and 0 < self.test_size < 1):
            raise ConfigError(
                message(option("test_size"), allowed="a fraction between 0 and 1 (exclusive)", got=self.test_size)
            )
        if self.cv is not None and not (_is_int(self.cv) and self.cv >= 2):
            raise ConfigError(message(option("cv"), allowed="an integer of at least 2 (the folds)", got=self.cv))
        if not (_is_int(self.seed) and 0 <= self.seed <= _MAX_SEED):
            raise ConfigError(
                message(option("seed"), allowed=f"an integer in the range [0, {_MAX_SEED}]", got=self.seed)
            )
        if self.memory is not None:
            object.__setattr__(self, "memory", parse_memory(self.memory))
        resolve_params(self.models, self.params)  # the one check of the classifiers' parameters
        chosen = protocol(self.protocol, self.models)
        if chosen is not None and self.search:
            raise ConfigError(message(f"{option('protocol', self.protocol)} and {option('search')} both choose the "
                                      "regularisation", hint="use one of them"))
        devices.parse_device(self.device)

    @property
    def model_params(self) -> dict[str, dict[str, Any]]:
        """Each chosen family's full parameter set: its defaults, with *params* applied where it declares them."""
        return resolve_params(self.models, self.params)

    def resolve(self) -> ClassifyResources:
        """What this machine gives the run: the memory budget, and the device resolved.

        Returns
        -------
        ClassifyResources

        Raises
        ------
        DeviceError
            A GPU this machine does not have, or one asked for by name that a
            chosen family cannot use here (no torch built with CUDA for svm
            and logreg).
        """
        device = devices.resolve_device(self.device)
        if self.device != "auto":  # auto fits such families on the CPU
            check_gpu_libraries(self.models, self.model_params, device, self.device)
        return ClassifyResources(memory=available_memory() if self.memory is None else self.memory, device=device)
