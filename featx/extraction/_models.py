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

from ..errors import (
    UnknownModelError,
    WeightsError,
    choices,
    close_matches,
    message,
    option,
)
from ..store import file_weights_label, parse_weights_label
from ._preprocessing import Preprocessing, PreprocessingOptions, read_sidecar

__all__ = [
    "Preprocessing",
    "LoadedModel",
    "list_model_names",
    "check_model_name",
    "load_model",
    "weights_cache_path",
    "weights_label",
    "sha256_file",
    "read_state_dict",
    "check_state_dict",
    "weights_only_loading",
]

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
    from ._timm import check_timm_name, is_timm_model

    if is_timm_model(name):
        return check_timm_name(name, parameter=parameter)
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
    untrained : tuple of str
        Module paths the weights file had no weights for (a Keras ``_notop``
        file's classifier): layers they compute are refused.
    """

    name: str
    module: nn.Module
    weights: str
    preprocessing: Preprocessing
    weights_sha256: str | None = None
    seed: int | None = None
    untrained: tuple[str, ...] = ()

    def provenance(self) -> dict[str, Any]:
        """Versions that made the features, beyond torch's and torchvision's (recorded, not compared)."""
        from ._timm import import_timm, is_timm_model

        return {"timm_version": import_timm().__version__} if is_timm_model(self.name) else {}


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
def weights_only_loading() -> Iterator[None]:
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
        with weights_only_loading(), contextlib.redirect_stdout(sys.stderr):
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


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict in a ``--weights-file``: ``torch.load(weights_only=True)``, or safetensors by suffix.

    A checkpoint that wraps the state dict (``{'state_dict': ...}``, ``'model'``)
    is unwrapped, and nn.DataParallel's ``module.`` prefix removed.

    Raises
    ------
    WeightsError
        The file is missing, cannot be read safely, or holds no state dict.
    """
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise WeightsError(message(f"weights file not found: '{path}' {problem}", hint=f"check {option('weights_file')}"))
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(
                message(f"'{path}' is a safetensors file, and the safetensors package is not installed",
                        hint="pip install safetensors (timm installs it)")
            ) from None
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ...
            raise WeightsError(message(f"'{path}' could not be loaded as a safetensors file ({_first_line(exc)})")) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        raise WeightsError(
            message(
                f"'{path}' could not be loaded with torch.load(weights_only=True) ({_first_line(exc)})",
                hint="it must be a state dict saved with torch.save(model.state_dict(), path)",
            )
        ) from None
    return _unwrap_checkpoint(state, path)


def check_state_dict(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: Path, name: str) -> None:
    """Raise a one-line :class:`WeightsError` unless *state* fits a model whose state dict is *own*.

    Compared before loading: ``load_state_dict`` raises a multi-line RuntimeError on shapes.
    """
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


def _build_from_file(name: str, path: Path, seed: int) -> nn.Module:
    state = read_state_dict(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
        final = _final_linear(model)
        if final is not None:
            weight = state.get(f"{final[0]}.weight")
            if weight is not None and weight.ndim == 2 and weight.shape[0] != final[1].out_features:
                # A fine-tuned checkpoint: the architecture follows its number of classes.
                model = torchvision.models.get_model(name, weights=None, num_classes=int(weight.shape[0]))
    check_state_dict(model.state_dict(), state, path, name)
    model.load_state_dict(state)
    return model


def load_model(
    name: str,
    *,
    weights: str = "DEFAULT",
    weights_file: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int | None = None,
    preprocessing: PreprocessingOptions | None = None,
) -> LoadedModel:
    """Build a torchvision classification model (or a ``timm/`` one) with its weights and preprocessing.

    Parameters
    ----------
    name : str
        A torchvision classification model name, e.g. ``'resnet50'``, or
        ``'timm/<architecture>'`` (:mod:`featx.extraction._timm`).
    weights : str
        ``'DEFAULT'``, a weights name such as ``'IMAGENET1K_V1'``, or ``'none'``
        for a random initialisation seeded with *seed*.
    weights_file : path, optional
        A state dict to load instead (``torch.load(weights_only=True)``).
    seed : int
        Seed of the random initialisation (``weights='none'``).
    image_size : int, optional
        Crop size to use instead of the weights' own; the resize keeps the
        weights' resize/crop ratio (timm: ``floor(size / crop_pct)``).
    preprocessing : PreprocessingOptions, optional
        Changes to the weights' preprocessing (``--resize``, ``--crop``,
        ``--mean``, ...); they win over a weights file's JSON sidecar
        (:func:`~featx.extraction.read_sidecar`), which wins over the weights' own.

    Notes
    -----
    A Keras applications HDF5 file for VGG16/VGG19 as *weights_file* is
    converted (:mod:`featx.extraction._keras`) and brings Keras' ``caffe``
    preprocessing with it.
    """
    from ._keras import is_keras_weights_file, load_keras_vgg
    from ._timm import is_timm_model, load_timm_model

    label = weights_label(name, weights=weights, weights_file=weights_file)
    kind, _ = parse_weights_label(label)
    path = Path(weights_file).expanduser() if kind == "file" else None
    sha = None
    used_seed = None
    untrained: tuple[str, ...] = ()
    if kind == "file":
        sha = sha256_file(path) if path.is_file() else None
    if is_timm_model(name):
        if path is not None and is_keras_weights_file(path):
            raise WeightsError(
                message(
                    f"'{path}' is a Keras weights file; those are read for torchvision's vgg16 and vgg19 only",
                    hint=f"pass {option('model', 'vgg16')} or {option('model', 'vgg19')}",
                )
            )
        module, label, base, used_seed = load_timm_model(
            name, weights=weights, weights_file=weights_file, seed=seed, image_size=image_size
        )
        return _with_options(
            LoadedModel(name=name, module=module, weights=label, preprocessing=base, weights_sha256=sha, seed=used_seed),
            path, preprocessing, rescale=image_size, rescaled=True,
        )
    enum = _weights_enum(name)
    default = enum.DEFAULT if enum is not None and hasattr(enum, "DEFAULT") else None
    if kind == "file" and is_keras_weights_file(path):
        module, base, untrained = load_keras_vgg(name, path, Preprocessing.of_weights(default))
    elif kind == "file":
        module = _build_from_file(name, path, seed)
        base = Preprocessing.of_weights(default)
    elif kind == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = torchvision.models.get_model(name, weights=None)
        used_seed = seed
        base = Preprocessing.of_weights(default)
    else:
        resolved = enum[label]
        module = _build_pretrained(name, resolved)
        base = Preprocessing.of_weights(resolved)
    module.eval()
    loaded = LoadedModel(
        name=name, module=module, weights=label, preprocessing=base, weights_sha256=sha, seed=used_seed, untrained=untrained
    )
    return _with_options(loaded, path, preprocessing, rescale=image_size, rescaled=False)


def _with_options(
    loaded: LoadedModel,
    weights_file: Path | None,
    options: PreprocessingOptions | None,
    *,
    rescale: int | None,
    rescaled: bool,
) -> LoadedModel:
    """*loaded* with a weights file's sidecar, then --image-size (*rescale*), then the options applied.

    *rescaled*: the model was built at *rescale* already (timm, with its own
    resize rule); it is rescaled again only when the sidecar sets a resize or crop.
    """
    sidecar = read_sidecar(weights_file) if weights_file is not None else PreprocessingOptions()
    preprocessing = sidecar.apply(loaded.preprocessing)
    if rescale is not None and (not rescaled or sidecar.resize is not None or sidecar.crop is not None):
        preprocessing = preprocessing.with_image_size(rescale)
    loaded.preprocessing = (options or PreprocessingOptions()).apply(preprocessing)
    return loaded


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
    from ._timm import is_timm_model, timm_weights_label

    if is_timm_model(model):
        return timm_weights_label(model, weights=weights)  # timm's pretrained tag, DEFAULT resolved
    return _resolve_weights(model, weights).name
