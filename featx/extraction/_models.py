"""Model registry, weights and preprocessing.

Models are torchvision's classification models, by the names of
``torchvision.models.list_models(module=torchvision.models)``.  Weights come
from torchvision's weights API and cache (``TORCH_HOME``), from a state-dict
file, or are a seeded random initialisation.  Preprocessing is the weights' own
(resize, centre crop, normalisation) and is recorded with every store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from ..errors import (
    UnknownModelError,
    WeightsError,
    choices,
    close_matches,
    message,
    option,
)
from ..store import file_weights_label, parse_weights_label

__all__ = [
    "Preprocessing",
    "LoadedModel",
    "list_model_names",
    "check_model_name",
    "load_model",
    "weights_cache_path",
    "weights_label",
    "sha256_file",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def list_model_names() -> tuple[str, ...]:
    """Names of torchvision's image classification models."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_model_name(name: str, *, parameter: str = "model") -> str:
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


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise.

    The same operations, in the same order, as torchvision's
    ``ImageClassification`` preset that the weights' ``transforms()`` return, so
    features equal a direct torchvision computation.  Picklable, so that
    DataLoader workers can use it.
    """

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, image: Any) -> torch.Tensor:
        image = F.resize(image, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)
        image = F.center_crop(image, [self.crop])
        if not isinstance(image, torch.Tensor):
            image = F.pil_to_tensor(image)
        image = F.convert_image_dtype(image, torch.float)
        return F.normalize(image, mean=list(self.mean), std=list(self.std))

    @classmethod
    def of_weights(cls, weights: Any) -> "Preprocessing":
        """The preprocessing of torchvision weights (their ``transforms()``); ImageNet's for ``None``."""
        if weights is None:
            return cls(resize=256, crop=224)
        preset = weights.transforms()
        return cls(
            resize=int(preset.resize_size[0]),
            crop=int(preset.crop_size[0]),
            mean=tuple(float(m) for m in preset.mean),
            std=tuple(float(s) for s in preset.std),
            interpolation=preset.interpolation.value,
        )

    def attrs(self) -> dict[str, Any]:
        return {
            "image_size": self.crop,
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    def with_image_size(self, size: int) -> "Preprocessing":
        """The same preprocessing at another crop size, keeping the resize/crop ratio."""
        return Preprocessing(
            resize=round(size * self.resize / self.crop),
            crop=size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )


@dataclass
class LoadedModel:
    """A model ready for feature extraction, with what is needed to describe it.

    Attributes
    ----------
    name : str
        torchvision model name.
    module : nn.Module
        The network, in eval mode, on the CPU.
    weights : str
        ``'IMAGENET1K_V1'``-style name, ``'none'`` or ``'file:<name>'``.
    preprocessing : Preprocessing
    weights_sha256 : str or None
        Hash of a ``--weights-file``.
    seed : int or None
        Seed of the random initialisation when ``weights == 'none'``.
    """

    name: str
    module: nn.Module
    weights: str
    preprocessing: Preprocessing
    weights_sha256: str | None = None
    seed: int | None = None

    def attrs(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "seed": self.seed,
            **self.preprocessing.attrs(),
        }


def _weights_enum(name: str):
    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _resolve_weights(model: str, weights: str):
    enum = _weights_enum(model)
    names = ["DEFAULT", *(w.name for w in enum)] if enum is not None else []
    if enum is None or weights not in names:
        raise WeightsError(
            message(
                option("weights"),
                allowed=f"{choices([*names, 'none'])} for {model}",
                got=weights,
                hint=f"or pass a state dict with {option('weights_file', 'PATH')}",
            )
        )
    return enum[weights]


def weights_cache_path(weights: Any) -> Path:
    """Where torch's hub cache keeps (or will keep) the file of torchvision weights.

    The folder is ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``
    by default): the same place torchvision itself reads and downloads to.
    """
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


@contextlib.contextmanager
def _weights_only_loading() -> Iterator[None]:
    """Make every ``torch.load`` in the block use ``weights_only=True``.

    torchvision's builders read their checkpoints through
    ``torch.hub.load_state_dict_from_url``, whose default is
    ``weights_only=False``; this documented torch switch makes that read refuse
    arbitrary pickled code, without re-implementing each builder's quirks.
    """
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def _first_line(exc: BaseException) -> str:
    """Why ``torch.load`` failed, in one line (torch's messages run over many)."""
    lines = str(exc).strip().splitlines()
    if lines and lines[0].startswith("Weights only load failed"):
        # torch's text here is a page of advice with terminal escapes; this is its gist.
        return "it holds pickled Python objects other than tensors, which are refused as they could run code"
    detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if isinstance(exc, (pickle.UnpicklingError, KeyError, EOFError)):
        # What torch.load's pickle reader says about a file that torch.save did not write.
        return f"not a file written by torch.save: {detail}"
    return detail


def _build_pretrained(name: str, weights: Any) -> nn.Module:
    cached = weights_cache_path(weights)
    try:
        # torch.hub announces a download on stdout; stdout is for results (tables, paths).
        with _weights_only_loading(), contextlib.redirect_stdout(sys.stderr):
            return torchvision.models.get_model(name, weights=weights)
    # URLError is an OSError; a file holding pickled code fails with UnpicklingError.
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        if cached.exists():
            raise WeightsError(
                message(
                    f"the cached weights file '{cached}' for {name} ({weights}) could not be loaded with "
                    f"torch.load(weights_only=True) ({_first_line(exc)})",
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


def _unwrap_checkpoint(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            message(
                f"'{path}' does not hold a state dict (a mapping of parameter names to tensors)",
                hint="save one with torch.save(model.state_dict(), path)",
            )
        )
    # Checkpoints saved from nn.DataParallel prefix every key with 'module.'.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _build_from_file(name: str, path: Path, seed: int) -> nn.Module:
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise WeightsError(message(f"weights file not found: '{path}' {problem}", hint=f"check {option('weights_file')}"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        raise WeightsError(
            message(
                f"'{path}' could not be loaded with torch.load(weights_only=True) ({_first_line(exc)})",
                hint="it must be a state dict saved with torch.save(model.state_dict(), path)",
            )
        ) from None
    state = _unwrap_checkpoint(state, path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
        final = _final_linear(model)
        if final is not None:
            weight = state.get(f"{final[0]}.weight")
            if weight is not None and weight.ndim == 2 and weight.shape[0] != final[1].out_features:
                # A fine-tuned checkpoint: the architecture follows its number of classes.
                model = torchvision.models.get_model(name, weights=None, num_classes=int(weight.shape[0]))
    # Compared before loading: load_state_dict raises a multi-line RuntimeError on shapes.
    own = model.state_dict()
    # Old checkpoints lack BatchNorm's num_batches_tracked; torch fills it in, so do we.
    missing = [key for key in own if key not in state and not key.endswith(".num_batches_tracked")]
    unexpected = [key for key in state if key not in own]
    shape_errors = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and own[key].shape != value.shape
    ]
    if missing or unexpected or shape_errors:
        details = []
        if missing:
            details.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shape_errors:
            details.append(f"shape mismatches: {', '.join(shape_errors[:3])}")
        raise WeightsError(
            message(
                f"'{path}' does not match the {name} architecture: {'; '.join(details)}",
                hint=f"pass the {option('model')} the checkpoint was trained with",
            )
        )
    model.load_state_dict(state)
    return model


def load_model(
    name: str,
    *,
    weights: str = "DEFAULT",
    weights_file: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> LoadedModel:
    """Build a torchvision classification model with its weights and preprocessing.

    Parameters
    ----------
    name : str
        A torchvision classification model name, e.g. ``'resnet50'``.
    weights : str
        ``'DEFAULT'``, a weights name such as ``'IMAGENET1K_V1'``, or ``'none'``
        for a random initialisation seeded with *seed*.
    weights_file : path, optional
        A state dict to load instead (``torch.load(weights_only=True)``).
    seed : int
        Seed of the random initialisation (``weights='none'``).
    image_size : int, optional
        Crop size to use instead of the weights' own; the resize keeps the
        weights' resize/crop ratio.
    """
    label = weights_label(name, weights=weights, weights_file=weights_file)
    kind, _ = parse_weights_label(label)
    enum = _weights_enum(name)
    default = enum.DEFAULT if enum is not None and hasattr(enum, "DEFAULT") else None
    sha = None
    used_seed = None
    if kind == "file":
        path = Path(weights_file).expanduser()
        module = _build_from_file(name, path, seed)
        sha = sha256_file(path)
        preprocessing = Preprocessing.of_weights(default)
    elif kind == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = torchvision.models.get_model(name, weights=None)
        used_seed = seed
        preprocessing = Preprocessing.of_weights(default)
    else:
        resolved = enum[label]
        module = _build_pretrained(name, resolved)
        preprocessing = Preprocessing.of_weights(resolved)
    if image_size is not None:
        preprocessing = preprocessing.with_image_size(image_size)
    module.eval()
    return LoadedModel(
        name=name,
        module=module,
        weights=label,
        preprocessing=preprocessing,
        weights_sha256=sha,
        seed=used_seed,
    )


def weights_label(
    model: str, *, weights: str = "DEFAULT", weights_file: str | os.PathLike | None = None
) -> str:
    """The label a store records for a weights choice, worked out without loading the model.

    Parameters
    ----------
    model : str
        torchvision model name (checked).
    weights : str
        ``'DEFAULT'``, a weights name, or ``'none'``.
    weights_file : path, optional
        A state dict; wins over *weights*.

    Returns
    -------
    str
        ``'file:<file name>'``, ``'none'``, or the weights' own name with
        ``DEFAULT`` resolved (``'IMAGENET1K_V1'``); read it back with
        :func:`parse_weights_label`.

    Raises
    ------
    UnknownModelError, WeightsError
    """
    check_model_name(model)
    if weights_file is not None:
        return file_weights_label(Path(weights_file).expanduser())
    if weights.lower() == "none":
        return "none"
    return _resolve_weights(model, weights).name
