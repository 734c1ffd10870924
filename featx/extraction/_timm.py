"""timm models: ``--model timm/<architecture>``, their weights, preprocessing and layers.

Everything goes through timm's own API, not guesses about module paths:

* the model: ``timm.create_model(architecture)``; the weights are timm's
  pretrained tags (``--weights a1_in1k``; ``DEFAULT`` is timm's default tag),
  read from the Hugging Face hub cache (``HF_HOME``), ``none`` (a seeded
  random initialisation) or a ``--weights-file``;
* the preprocessing: ``timm.data.resolve_data_config`` of the model, the
  values timm's ``create_transform`` uses (resize ``floor(size / crop_pct)``,
  centre crop, mean, std, interpolation);
* the layers: the stages of ``model.feature_info`` (computed with
  ``forward_intermediates``, which stops after the deepest one asked for),
  ``forward_features``, ``pre_logits`` (``forward_head(pre_logits=True)``) and
  ``logits``; aliases ``penultimate``, ``last_conv``, ``last_stage`` and
  ``stage0``.. (timm's feature indices, as in ``out_indices``).

timm is an optional dependency (``pip install 'featx[timm]'``); this module
imports it only when a timm model is asked for.  It is the model source
``timm`` of :data:`featx.extraction._models.MODEL_SOURCES`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import (
    ConfigError,
    UnknownLayerError,
    UnknownModelError,
    WeightsError,
    choices,
    close_matches,
    message,
    option,
)
from ._layers import LayerIndex, listing_hint
from ._preprocessing import Preprocessing
from ._model_sources import LoadedModel, ModelEntry, StateDict
from ._weights import load_state_dict_into, weights_only_loading

__all__ = [
    "TIMM_PREFIX",
    "TimmLayerIndex",
    "TimmNetwork",
    "check_timm_name",
    "describe_timm",
    "hub_cache_dir",
    "import_timm",
    "is_timm_model",
    "list_timm_architectures",
    "load_timm",
    "timm_cached_weights",
    "timm_preprocessing",
    "timm_weights_label",
    "timm_weights_tags",
]

log = logging.getLogger("featx")

TIMM_PREFIX = "timm/"
# Node names of the outputs after the stages (timm's forward_features, forward_head).
FEATURES_NODE = "forward_features"
PRE_LOGITS_NODE = "pre_logits"
LOGITS_NODE = "logits"
_FINAL_NODES = (FEATURES_NODE, PRE_LOGITS_NODE, LOGITS_NODE)


def is_timm_model(name: str) -> bool:
    """Whether *name* asks for a timm model (``timm/<architecture>``)."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def import_timm() -> Any:
    """The timm module, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            message(
                "timm models need the timm package, which is not installed",
                hint="install it with pip install 'featx[timm]'",
            )
        ) from None
    return timm


@lru_cache(maxsize=1)
def list_timm_architectures() -> tuple[str, ...]:
    """Every architecture timm can build (``timm.list_models()``), without the ``timm/`` prefix."""
    return tuple(import_timm().list_models())


def _architecture(name: str) -> str:
    return name[len(TIMM_PREFIX) :]


def timm_weights_tags(architecture: str) -> tuple[str, ...]:
    """timm's pretrained tags of *architecture*, its default first (``('a1_in1k', 'a2_in1k', ...)``)."""
    timm = import_timm()
    # list_pretrained leaves out configurations without weights (the tag 'untrained'); the registry keeps the order.
    available = set(timm.list_pretrained(f"{architecture}.*"))
    return tuple(name.split(".", 1)[1] for name in timm.models.get_arch_pretrained_cfgs(architecture) if name in available)


def check_timm_name(name: str, *, parameter: str = "model") -> str:
    """Return *name* if it is ``timm/<architecture>`` of an architecture timm has.

    Raises
    ------
    ConfigError
        timm is not installed.
    UnknownModelError
        With the closest names and where the list comes from (``models --source timm``).
    """
    architecture = _architecture(name)
    names = list_timm_architectures()
    flag = option(parameter, flag="network" if parameter == "networks" else None)
    if "." in architecture and architecture.split(".", 1)[0] in names:
        arch, tag = architecture.split(".", 1)
        raise UnknownModelError(
            message(
                flag,
                allowed="timm/<architecture>, with the pretrained tag given as the weights",
                got=name,
                hint=f"pass {option(parameter, f'{TIMM_PREFIX}{arch}')} {option('weights', tag)}",
            )
        )
    if architecture not in names:
        close = close_matches(architecture, names)
        close = close.replace("did you mean ", f"did you mean {TIMM_PREFIX}").replace(", ", f", {TIMM_PREFIX}")
        raise UnknownModelError(
            message(
                flag,
                allowed=f"timm/ and one of timm's {len(names):,} architectures",
                got=name,
                hint=f"{close}list them with `featx models --source timm [--filter TEXT]`",
            )
        )
    return name


def timm_weights_label(name: str, weights: str) -> str:
    """The label of one of timm's pretrained tags for *name*: the tag, ``DEFAULT`` resolved.

    ``DEFAULT`` is timm's default tag of the architecture (``'a1_in1k'`` for resnet18).

    Raises
    ------
    WeightsError
        *weights* is not a tag of the architecture.
    """
    tags = timm_weights_tags(_architecture(name))
    if weights == "DEFAULT" and tags:
        return tags[0]
    if weights not in tags:
        raise WeightsError(
            message(
                option("weights"),
                allowed=f"{choices(['DEFAULT', *tags, 'none'] if tags else ['none'])} for {name}",
                got=weights,
                hint=f"or pass a state dict with {option('weights_file', 'PATH')}",
            )
        )
    return weights


# --------------------------------------------------------------------------- weights in the cache


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache timm downloads to, as huggingface_hub finds it.

    ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``;
    read when called (huggingface_hub reads it once, at import).
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


# What timm reads from a hub repository, in its order of preference (timm.models._hub).
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _pretrained_cfg(architecture: str, tag: str) -> Any:
    return import_timm().models.get_pretrained_cfg(f"{architecture}.{tag}")


def timm_cached_weights(architecture: str, tag: str) -> tuple[Path | None, str]:
    """Where the weights *tag* of *architecture* are cached, and what to say about where they go.

    Returns
    -------
    path : Path or None
        The cached file, or None when it is not in the cache.
    expected : str
        The file timm would download, for messages.
    """
    cfg = _pretrained_cfg(architecture, tag)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(), revision=revision or None)
            if isinstance(found, str):
                return Path(found), found
        folder = hub_cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots"
        return None, f"{filenames[0]} of the Hugging Face repository {repo} in '{folder}/<revision>/'"
    if cfg.url:
        from urllib.parse import urlparse

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        return (path if path.is_file() else None), f"'{path}'"
    return None, f"no download location is known for {architecture}.{tag}"


def _create_pretrained(name: str, tag: str, kwargs: dict[str, Any]) -> nn.Module:
    timm = import_timm()
    architecture = _architecture(name)
    cached, expected = timm_cached_weights(architecture, tag)
    overlay = {"file": str(cached)} if cached is not None else None
    try:
        # timm's url and file loaders default to weights_only=False.  Downloads
        # announce themselves on stdout; stdout is for results.
        with weights_only_loading(), contextlib.redirect_stdout(sys.stderr):
            return timm.create_model(
                f"{architecture}.{tag}", pretrained=True, pretrained_cfg_overlay=overlay,
                cache_dir=hub_cache_dir(), **kwargs,
            )
    except (OSError, RuntimeError, ValueError, EOFError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if cached is not None:
            raise WeightsError(
                message(
                    f"the cached weights file '{cached}' for {name} ({tag}) could not be loaded ({reason})",
                    hint=f"delete it so that it is downloaded again, or pass {option('weights_file', 'PATH')}",
                )
            ) from None
        raise WeightsError(
            message(
                f"pretrained weights {tag} for {name} are not cached and could not be downloaded ({reason}): "
                f"expected {expected} (set HF_HOME to use another cache folder)",
                hint=f"download them there on a machine that is online, or pass {option('weights_file', 'PATH')} "
                f"(the model.safetensors file), or {option('weights', 'none')} for a seeded random initialisation",
            )
        ) from None


# --------------------------------------------------------------------------- preprocessing


def timm_preprocessing(model: nn.Module, image_size: int | None = None) -> Preprocessing:
    """The values of timm's eval transform for *model* (``create_transform(**resolve_data_config(model=model))``).

    Parameters
    ----------
    model : nn.Module
        A timm model (its ``pretrained_cfg`` says the input size, crop_pct, mean, std, interpolation).
    image_size : int, optional
        Crop size instead of the configuration's; the resize is timm's
        ``floor(size / crop_pct)`` of it.
    """
    from timm.data import resolve_data_config

    args = {"input_size": (3, image_size, image_size)} if image_size is not None else {}
    cfg = resolve_data_config(args, model=model)
    height, width = cfg["input_size"][1:]
    if height != width:
        raise ConfigError(
            message(
                f"{type(model).__name__}'s input size is {height}x{width}, not square",
                hint=f"pass a square {option('image_size')}",
            )
        )
    crop_mode = cfg.get("crop_mode", "center")
    if crop_mode not in ("center", "squash"):
        # 'border' (6 of timm's 1,800 weights) pads to a square instead of cropping.
        log.warning(
            f"timm's eval transform of this model uses crop mode '{crop_mode}'; featx resizes the "
            "shorter side and centre-crops ('center'), so its inputs differ slightly from timm's"
        )
    interpolation = cfg["interpolation"] if cfg["interpolation"] != "random" else "bilinear"
    return Preprocessing(
        resize=math.floor(height / cfg["crop_pct"]),
        crop=int(height),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        interpolation=interpolation,
        resize_mode="squash" if crop_mode == "squash" else "shorter",
    )


# --------------------------------------------------------------------------- the network and its layers


class _TimmFeatures(nn.Module):
    """Returns the requested outputs of a timm model, ``{node: tensor}``, through timm's own API.

    Stages come from ``forward_intermediates``, which stops after the deepest
    requested stage when nothing after the stages is needed;
    ``forward_features``, ``pre_logits`` and ``logits`` from ``forward_features``
    and ``forward_head``.
    """

    def __init__(self, model: nn.Module, stages: Sequence[str], nodes: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        wanted = set(nodes)
        self.stage_nodes = [s for s in stages if s in wanted]
        self.indices = [stages.index(s) for s in self.stage_nodes]
        self.finals = [n for n in _FINAL_NODES if n in wanted]

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        features = None
        if self.indices and self.finals:
            features, intermediates = self.model.forward_intermediates(pixels, indices=self.indices)
            outputs.update(zip(self.stage_nodes, intermediates))
        elif self.indices:
            intermediates = self.model.forward_intermediates(
                pixels, indices=self.indices, stop_early=True, intermediates_only=True
            )
            outputs.update(zip(self.stage_nodes, intermediates))
        elif self.finals:
            features = self.model.forward_features(pixels)
        if FEATURES_NODE in self.finals:
            outputs[FEATURES_NODE] = features
        if PRE_LOGITS_NODE in self.finals:
            outputs[PRE_LOGITS_NODE] = self.model.forward_head(features, pre_logits=True)
        if LOGITS_NODE in self.finals:
            outputs[LOGITS_NODE] = self.model.forward_head(features)
        return outputs


class TimmNetwork(nn.Module):
    """A timm model as featx runs it: the model, and the index of its layers (:class:`TimmLayerIndex`).

    Parameters
    ----------
    model : nn.Module
        A model made by ``timm.create_model``.
    name : str
        ``timm/<architecture>``.
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)

    def layer_index(self, *, image_size: int = 224) -> TimmLayerIndex:
        return TimmLayerIndex(self, image_size=image_size)


class TimmLayerIndex(LayerIndex):
    """The layers of a timm model: the stages of its ``feature_info``, ``forward_features``, ``pre_logits``, ``logits``.

    Parameters
    ----------
    network : TimmNetwork
    image_size : int
        Input size used when output shapes are needed.
    """

    def __init__(self, network: TimmNetwork, *, image_size: int = 224) -> None:
        super().__init__(network, image_size=image_size, name=network.name)

    @cached_property
    def stages(self) -> list[str]:
        """Module names of ``feature_info``: what ``forward_intermediates`` returns, in order."""
        if not hasattr(self.model.model, "forward_intermediates"):
            return []
        info = getattr(self.model.model, "feature_info", None) or []
        return [entry["module"] for entry in info]

    @cached_property
    def nodes(self) -> list[str]:
        return [*self.stages, *_FINAL_NODES]

    def feature_body(self, nodes: Sequence[str]) -> nn.Module:
        return _TimmFeatures(self.model.model, self.stages, nodes)

    @cached_property
    def aliases(self) -> dict[str, str]:
        """Alias -> node: ``penultimate``, ``logits``, ``last_conv`` (CNNs), ``last_stage``, ``stage<i>``."""
        stages = self.stages
        aliases = {f"stage{i}": node for i, node in enumerate(stages)}
        if stages:
            aliases["last_stage"] = stages[-1]
        aliases["penultimate"] = PRE_LOGITS_NODE
        aliases["last_conv"] = "last_conv"  # resolved lazily: it needs the output shapes
        return aliases

    def _last_conv(self) -> str:
        if len(self.shapes[FEATURES_NODE]) != 3:
            raise UnknownLayerError(
                message(
                    f"{self.name} outputs no convolutional feature map (forward_features is "
                    f"{'x'.join(map(str, self.shapes[FEATURES_NODE]))}), so no 'last_conv'",
                    hint=f"use last_stage or {FEATURES_NODE}; {listing_hint(self.name)}",
                )
            )
        return FEATURES_NODE

    def _valid_names(self) -> str:
        stages = self.stages
        return (
            f"timm's feature stages ({', '.join(stages[:4])}{', ...' if len(stages) > 4 else ''}), "
            f"{', '.join(_FINAL_NODES)} and aliases "
            f"({', '.join(a for a in self.aliases if not a.startswith('stage'))}, stage0..)"
        )

    def _params(self, node: str) -> int:
        """Those the node adds to the ones before it."""
        cumulative = self._cumulative
        position = self.nodes.index(node)
        return cumulative[node] - (cumulative[self.nodes[position - 1]] if position else 0)


def load_timm(
    name: str,
    *,
    weights: str,
    seed: int,
    image_size: int | None,
    state: StateDict | None = None,
    origin: Path | None = None,
) -> LoadedModel:
    """A timm model with its weights and timm's preprocessing (the ``load`` of the model source ``timm``).

    Parameters
    ----------
    name : str
        ``timm/<architecture>``.
    weights : str
        A pretrained tag, ``none`` (a random initialisation seeded with
        *seed*), or the label of *state*'s file.
    seed : int
        Seed of the random initialisation.
    image_size : int, optional
        Crop size instead of the pretrained configuration's.  Models with a
        fixed input size (ViTs) are built for it (``img_size``), as timm does.
    state : mapping of str -> Tensor, optional
        The tensors to load (a ``--weights-file``'s).
    origin : Path, optional
        The file *state* was read from, for messages.

    Returns
    -------
    LoadedModel
        Its module is a :class:`TimmNetwork` in eval mode; ``timm_version`` is recorded.
    """
    timm = import_timm()
    architecture = _architecture(name)
    kwargs: dict[str, Any] = {}
    if image_size is not None:
        cfg = timm.models.get_pretrained_cfg(architecture)
        if cfg is not None and cfg.fixed_input_size:
            kwargs["img_size"] = image_size
    used_seed = None
    if state is not None:
        model = load_state_dict_into(
            lambda **more: timm.create_model(architecture, pretrained=False, **kwargs, **more),
            lambda model: (f"{model.pretrained_cfg.get('classifier')}", model.get_classifier()),
            state, origin, name, seed,
        )
    elif weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(architecture, pretrained=False, **kwargs)
        used_seed = seed
    else:
        model = _create_pretrained(name, weights, kwargs)
    model.eval()
    return LoadedModel(
        name=name,
        module=TimmNetwork(model, name).eval(),
        weights=weights,
        preprocessing=timm_preprocessing(model, image_size),
        seed=used_seed,
        provenance={"timm_version": timm.__version__},  # provenance, not identity
    )


# --------------------------------------------------------------------------- the models listing


def describe_timm(architecture: str) -> ModelEntry:
    """The ``featx models`` row of a timm architecture (built on the meta device: no memory, no initialisation)."""
    timm = import_timm()
    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False)
    tags = timm_weights_tags(architecture)
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    return ModelEntry(
        name=TIMM_PREFIX + architecture,
        weights=tags,
        input_size=int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]),
        params=sum(p.numel() for p in model.parameters()),
        penultimate=int(width) if width else None,
        cached=tuple(t for t in tags if timm_cached_weights(architecture, t)[0] is not None),
    )
