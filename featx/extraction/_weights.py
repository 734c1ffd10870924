"""Weights in files: state dicts read safely, checked against a model, and the formats that hold them.

A ``--weights-file`` is read with ``torch.load(weights_only=True)`` (a torch
state dict, or a checkpoint wrapping one) or, by its suffix, as safetensors;
:func:`load_state_dict_into` builds the model a state dict fits (following a
fine-tuned checkpoint's number of classes) and loads it.  Every model source
uses these, so a checkpoint is read and checked the same way whichever
source's architecture it fits.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError, message, option
from ..store import file_weights_label
from ._model_sources import LoadedModel, ModelSource, StateDict

__all__ = [
    "check_state_dict",
    "load_failure",
    "load_safetensors_file",
    "load_state_dict_into",
    "load_torch_file",
    "read_safetensors",
    "read_torch_state_dict",
    "weights_only_loading",
]


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Make every ``torch.load`` in the block use ``weights_only=True``.

    torchvision's builders and timm's loaders read their checkpoints through
    ``torch.load`` with ``weights_only=False`` by default; this documented
    torch switch makes that read refuse arbitrary pickled code, without
    re-implementing each builder's quirks.
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


def load_failure(exc: BaseException) -> str:
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


def _require_file(path: Path) -> None:
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise WeightsError(message(f"weights file not found: '{path}' {problem}", hint=f"check {option('weights_file')}"))


def _unwrap_checkpoint(obj: Any, path: Path) -> StateDict:
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


def _legacy_format_error(path: Path, exc: BaseException) -> WeightsError | None:
    """The error for a file torch saved in a format before 1.6 (not a zip), which weights_only=True refuses, or None.

    torchvision's own old checkpoints (``resnet18-5c106cde.pth``) are such
    files: they *are* state dicts saved with ``torch.save``, so saying "it must
    be a state dict saved with torch.save" is wrong.  What helps is to convert
    the file once, knowingly: loading it without weights_only runs its pickle.
    """
    import zipfile

    text = str(exc)
    refused = "legacy .tar format" in text or text.lstrip().startswith("Weights only load failed")
    if not refused or zipfile.is_zipfile(path):
        return None
    target = path.with_suffix(".converted.pth")
    return WeightsError(
        message(
            f"'{path}' is in torch's legacy serialization format (before torch 1.6, not a zip), which "
            "torch.load(weights_only=True) refuses to read: its pickle could run code",
            hint="if you trust the file, convert it once: python -c \"import torch; "
            f"torch.save(torch.load('{path}', weights_only=False), '{target}')\" and pass {option('weights_file')} "
            f"'{target}'",
        )
    )


def read_torch_state_dict(path: Path) -> StateDict:
    """The state dict in a file written by ``torch.save``, read with ``torch.load(weights_only=True)``.

    A checkpoint that wraps the state dict (``{'state_dict': ...}``, ``'model'``)
    is unwrapped, and nn.DataParallel's ``module.`` prefix removed.

    Raises
    ------
    WeightsError
        The file is missing, cannot be read safely, or holds no state dict.
    """
    _require_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        legacy = _legacy_format_error(path, exc)
        if legacy is not None:
            raise legacy from None
        raise WeightsError(
            message(
                f"'{path}' could not be loaded with torch.load(weights_only=True) ({load_failure(exc)})",
                hint="it must be a state dict saved with torch.save(model.state_dict(), path)",
            )
        ) from None
    return _unwrap_checkpoint(state, path)


def read_safetensors(path: Path) -> StateDict:
    """The tensors of a safetensors file.

    Raises
    ------
    WeightsError
        The file is missing, the safetensors package is not installed, or the file cannot be read.
    """
    _require_file(path)
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
        raise WeightsError(message(f"'{path}' could not be loaded as a safetensors file ({load_failure(exc)})")) from None


def check_state_dict(own: StateDict, state: StateDict, path: Path, name: str) -> None:
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


def load_state_dict_into(
    build: Callable[..., nn.Module],
    classifier: Callable[[nn.Module], tuple[str, nn.Module] | None],
    state: StateDict,
    path: Path,
    name: str,
    seed: int,
) -> nn.Module:
    """The model *build* makes, with the tensors of *state*.

    Parameters
    ----------
    build : callable (**kwargs) -> nn.Module
        Builds the architecture with a random initialisation; called again
        with ``num_classes`` for a fine-tuned checkpoint.
    classifier : callable (model) -> (parameter prefix, module) or None
        The model's final classifier layer.
    state : mapping of str -> Tensor
    path : Path
        Where *state* was read from, for messages.
    name : str
        The model's name, for messages.
    seed : int
        Seed of the initialisation (every tensor is then replaced by the file's).

    Raises
    ------
    WeightsError
        *state* does not fit the architecture (:func:`check_state_dict`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        head = classifier(model)
        if head is not None:
            prefix, layer = head
            weight = state.get(f"{prefix}.weight")
            if isinstance(layer, nn.Linear) and weight is not None and weight.ndim == 2 and weight.shape[0] != layer.out_features:
                # A fine-tuned checkpoint: the architecture follows its number of classes.
                model = build(num_classes=int(weight.shape[0]))
    check_state_dict(model.state_dict(), state, path, name)
    model.load_state_dict(state)
    return model


def _load_state_file(
    read: Callable[[Path], StateDict], model: str, path: Path, source: ModelSource, seed: int, image_size: int | None
) -> LoadedModel:
    return source.load(
        model, weights=file_weights_label(path), seed=seed, image_size=image_size, state=read(path), origin=path
    )


def load_torch_file(model: str, path: Path, *, source: ModelSource, seed: int, image_size: int | None) -> LoadedModel:
    """*model* with the state dict of a ``torch.save`` file (the weights format ``torch``)."""
    return _load_state_file(read_torch_state_dict, model, path, source, seed, image_size)


def load_safetensors_file(
    model: str, path: Path, *, source: ModelSource, seed: int, image_size: int | None
) -> LoadedModel:
    """*model* with the tensors of a safetensors file (the weights format ``safetensors``)."""
    return _load_state_file(read_safetensors, model, path, source, seed, image_size)
