"""Layer names: the layer index of a network, and torchvision's graph nodes, module paths and aliases.

:class:`LayerIndex` is what featx asks of every network it runs: the names
of its layers in execution order, aliases for them, one :class:`LayerInfo`
per layer (its output shape, channels, reduction and parameters, as timm's
``FeatureInfo`` describes a feature output), :meth:`~LayerIndex.resolve`
from any of those names, and a body that computes the requested layers.
:func:`layer_index` gives a network's own: :class:`GraphLayerIndex` for
torchvision's models (their FX graph), timm's for ``timm/`` networks
(:class:`~featx.extraction._timm.TimmLayerIndex`).

In a torchvision model, any node of the FX graph works (``features.11``,
``layer4.2.relu_2``), as does a module path, which means the last node inside
that module (``layer4``), as in ``create_feature_extractor``.  On top of that,
the aliases users know from Caffe, Keras and the papers resolve to
post-activation outputs:

* every model: ``penultimate`` (input of the final classifier layer),
  ``logits`` (the output), ``last_conv`` (the last convolutional feature map);
* AlexNet: ``conv1``..``conv5``, ``pool1``, ``pool2``, ``pool5``, ``fc6``..``fc8``;
* VGG: Keras ``block1_conv1``.., ``block1_pool``.., ``fc1``, ``fc2``, ``predictions``;
  Caffe ``conv1_1``.., ``pool1``.., ``fc6``..``fc8``; ``conv1``..``conv5`` = last
  conv of each block;
* ResNet (and ResNeXt, Wide ResNet): ``stem`` (the stem after batch norm and
  ReLU, node ``relu``), ``conv2``..``conv5`` = ``layer1``..``layer4``.

A graph node name always means that node: a name is looked up among the graph
nodes first, then among the aliases, then among the module paths, and an alias
that is also a node name is dropped.  ResNet's ``conv1`` is therefore the node
``conv1``, the bare stem convolution; the stem after batch norm and ReLU is
``stem`` (:data:`FORMER_ALIASES`: using ``conv1`` says so).
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, runtime_checkable

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from ..errors import ImageSizeError, UnknownLayerError, close_matches, message, option

__all__ = [
    "GraphLayerIndex",
    "IndexedNetwork",
    "LayerIndex",
    "LayerInfo",
    "layer_index",
    "listing_hint",
    "parameters_up_to",
    "trial_forward",
]

log = logging.getLogger("featx")


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a network: a row of the ``featx layers`` listing.

    Attributes
    ----------
    node : str
        The layer's name: a graph node, or a timm module (``layer2``) or output (``pre_logits``).
    aliases : tuple of str
        Alias names that resolve to this node.
    shape : tuple of int
        Output shape of one sample (without the batch dimension).
    params : int
        Parameters of the module that computes the node (0 for functional
        ops); for timm's layers, those the node adds to the ones before.
    cumulative_params : int
        Parameters the node's output depends on: Keras' running total of
        ``model.summary()`` up to this layer (:meth:`LayerIndex.cumulative_params`).
    reduction : int or None
        How many input pixels one step of a feature map spans (timm's
        ``FeatureInfo.reduction``); None for outputs that are no feature map.
    """

    node: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    params: int
    cumulative_params: int = 0
    reduction: int | None = None

    @property
    def channels(self) -> int:
        """Channels of a feature map ``(C, H, W)``, else the last dimension (features per token, or the width)."""
        return self.shape[0] if len(self.shape) == 3 else self.shape[-1]


def trial_forward(network: nn.Module, image_size: int, model_name: str, *, record_graph: bool = False) -> dict:
    """Run *network* on one blank image of *image_size*; a size too small is a user error.

    With *record_graph*, autograd records the pass, so that
    :func:`parameters_up_to` can read which parameters each output depends on.
    """
    try:
        with torch.inference_mode(not record_graph), torch.set_grad_enabled(record_graph):
            return network(torch.zeros(1, 3, image_size, image_size))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageSizeError(
            message(
                f"{model_name} cannot run on {image_size}x{image_size} images ({reason})",
                hint=f"use a larger {option('image_size')} (the weights' own, usually 224, when omitted)",
            )
        ) from None


def parameters_up_to(outputs: dict[str, torch.Tensor], model: nn.Module) -> dict[str, int]:
    """Node -> how many of *model*'s parameters its output depends on.

    Read from autograd's record of one forward pass (the outputs of
    :func:`trial_forward` with ``record_graph=True``): the parameters reached
    by walking back from an output are the ones that computed it.  For a chain
    of layers that is the running total of Keras' ``model.summary()``
    (VGG19's ``block5_pool``: 20,024,384, the total of
    ``VGG19(include_top=False)``); for branching networks it counts each
    parameter once, whichever path uses it.
    """
    sizes = {id(p): p.numel() for p in model.parameters()}
    counts = {}
    for node, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            continue
        reached, seen, stack = set(), set(), [value.grad_fn]
        while stack:
            step = stack.pop()
            if step is None or step in seen:
                continue
            seen.add(step)
            variable = getattr(step, "variable", None)  # AccumulateGrad: a leaf, i.e. a parameter
            if variable is not None:
                reached.add(id(variable))
            stack.extend(parent for parent, _ in step.next_functions)
        counts[node] = sum(sizes.get(i, 0) for i in reached)
    return counts


def listing_hint(model: str | None) -> str:
    """Where the valid layer names of *model* are listed."""
    return f"list them with `featx layers --model {model or 'MODEL'}`"


class LayerIndex(ABC):
    """The layers of one network: names, aliases, output shapes, and a body that computes them.

    Subclasses say what the network's layers are (:attr:`nodes`,
    :attr:`aliases`, :meth:`feature_body`, what ``last_conv`` is); resolving
    a name, measuring the shapes, the parameter counts and the listing's rows
    are the same for every network.

    Parameters
    ----------
    model : nn.Module
        The network (in eval mode).
    image_size : int
        Input size used when output shapes are needed.
    name : str, optional
        The model's name, used in messages.
    """

    def __init__(self, model: nn.Module, *, image_size: int = 224, name: str | None = None) -> None:
        self.model = model
        self.image_size = image_size
        self.name = name

    # what each kind of network says -------------------------------------------------
    @property
    @abstractmethod
    def nodes(self) -> list[str]:
        """Every layer name, in execution order."""

    @property
    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """Alias -> node; ``last_conv`` maps to itself and is resolved by :meth:`_last_conv`."""

    @abstractmethod
    def feature_body(self, nodes: Sequence[str]) -> nn.Module:
        """A module that returns ``{node: output}`` for *nodes*, computing no more than they need."""

    @abstractmethod
    def _last_conv(self) -> str:
        """The node of ``last_conv``, or :class:`UnknownLayerError` when the network has none."""

    @abstractmethod
    def _valid_names(self) -> str:
        """What names are valid, for the message of an unknown one (``graph nodes, module paths and aliases (...)``)."""

    def _params(self, node: str) -> int:
        """The listing's ``params`` of *node*: those of the module that computes it."""
        module = self._modules.get(node)
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    @cached_property
    def module_paths(self) -> dict[str, str]:
        """Module path -> node, for names that mean the last node inside a module (none by default)."""
        return {}

    # the same for every network ------------------------------------------------------
    @property
    def label(self) -> str:
        """How messages name the model."""
        return self.name or type(self.model).__name__

    @cached_property
    def _node_set(self) -> frozenset[str]:
        return frozenset(self.nodes)

    @cached_property
    def _modules(self) -> dict[str, nn.Module]:
        return dict(self.model.named_modules())

    def resolve(self, name: str) -> str:
        """Node of a node name, alias or module path.

        Raises
        ------
        UnknownLayerError
            With the closest valid names and a pointer to the ``layers`` command.
        """
        # Nodes first, so that a node name always means that node (ResNet's
        # 'conv1' is the bare stem convolution, not the paper's conv1 stage).
        if name in self._node_set:
            return name
        if name in self.aliases:
            return self._last_conv() if name == "last_conv" else self.aliases[name]
        if name in self.module_paths:
            return self.module_paths[name]
        known = [*self.aliases, *self.nodes, *self.module_paths]
        raise UnknownLayerError(
            message(
                f"unknown layer '{name}' for {self.label}",
                hint=f"{close_matches(name, known)}valid names are {self._valid_names()}; {listing_hint(self.name)}",
            )
        )

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample output shape of every tensor-valued node at ``image_size``."""
        outputs = trial_forward(self.feature_body(self.nodes).eval(), self.image_size, self.label)
        return {
            node: tuple(value.shape[1:])
            for node, value in outputs.items()
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1
        }

    @cached_property
    def _cumulative(self) -> dict[str, int]:
        # A second pass, recorded by autograd: the parameters each output was computed from.
        body = self.feature_body(self.nodes).eval()
        return parameters_up_to(trial_forward(body, self.image_size, self.label, record_graph=True), self.model)

    def cumulative_params(self) -> dict[str, int]:
        """Node -> parameters its output depends on (Keras' running total)."""
        return dict(self._cumulative)

    def describe(self) -> list[LayerInfo]:
        """One :class:`LayerInfo` per tensor-valued node, in execution order (``cumulative_params`` left 0)."""
        names: dict[str, list[str]] = {}
        for alias in self.aliases:
            try:
                names.setdefault(self.resolve(alias), []).append(alias)
            except UnknownLayerError:
                continue  # e.g. no last_conv in a model without convolutions
        for path in sorted(p for p in self.module_paths if "." not in p):
            names.setdefault(self.module_paths[path], []).append(path)
        return [
            LayerInfo(node, tuple(names.get(node, ())), shape, self._params(node), reduction=self._reduction(shape))
            for node in self.nodes
            if (shape := self.shapes.get(node)) is not None
        ]

    def _reduction(self, shape: tuple[int, ...]) -> int | None:
        return max(1, round(self.image_size / shape[-1])) if len(shape) == 3 else None


@runtime_checkable
class IndexedNetwork(Protocol):
    """A network that indexes its own layers (timm's :class:`~featx.extraction._timm.TimmNetwork`)."""

    def layer_index(self, *, image_size: int = 224) -> LayerIndex: ...


def layer_index(model: nn.Module, *, image_size: int = 224, name: str | None = None) -> LayerIndex:
    """The layer index of a network featx runs: its own (:class:`IndexedNetwork`), else its FX graph's.

    Parameters
    ----------
    model : nn.Module
        A loaded model's ``module``.
    image_size : int
        Input size used when output shapes are needed.
    name : str, optional
        The model's name, used in messages.
    """
    if isinstance(model, IndexedNetwork):
        return model.layer_index(image_size=image_size)
    return GraphLayerIndex(model, image_size=image_size, name=name)


# --------------------------------------------------------------------------- torchvision's graph


def _post_activation(children: list[tuple[str, nn.Module]], i: int, stop_kinds: tuple[type, ...]) -> str:
    """Name of the ReLU that follows child *i* before the next *stop_kinds* layer, else child *i*."""
    for j in range(i + 1, len(children)):
        if isinstance(children[j][1], stop_kinds):
            break
        if isinstance(children[j][1], nn.ReLU):
            return children[j][0]
    return children[i][0]


def _classifier_aliases(model: nn.Module, names: list[str]) -> dict[str, str]:
    children = list(model.classifier.named_children())
    linears = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear)]
    return {
        alias: f"classifier.{_post_activation(children, i, (nn.Linear,))}"
        for alias, i in zip(names, linears)
    }


def _alexnet_aliases(model: nn.Module) -> dict[str, str]:
    children = list(model.features.named_children())
    aliases, convs = {}, 0
    for i, (_, module) in enumerate(children):
        if isinstance(module, nn.Conv2d):
            convs += 1
            aliases[f"conv{convs}"] = f"features.{_post_activation(children, i, (nn.Conv2d, nn.MaxPool2d))}"
        elif isinstance(module, nn.MaxPool2d):
            aliases[f"pool{convs}"] = f"features.{children[i][0]}"  # Caffe numbers pools by the conv before
    aliases.update(_classifier_aliases(model, ["fc6", "fc7", "fc8"]))
    return aliases


def _vgg_aliases(model: nn.Module) -> dict[str, str]:
    children = list(model.features.named_children())
    aliases, block, conv = {}, 1, 0
    for i, (name, module) in enumerate(children):
        if isinstance(module, nn.Conv2d):
            conv += 1
            node = f"features.{_post_activation(children, i, (nn.Conv2d, nn.MaxPool2d))}"
            aliases[f"block{block}_conv{conv}"] = node
            aliases[f"conv{block}_{conv}"] = node
            aliases[f"conv{block}"] = node  # the last conv of the block wins
        elif isinstance(module, nn.MaxPool2d):
            aliases[f"block{block}_pool"] = f"features.{name}"
            aliases[f"pool{block}"] = f"features.{name}"
            block, conv = block + 1, 0
    aliases.update(_classifier_aliases(model, ["fc6", "fc7", "fc8"]))
    aliases.update(_classifier_aliases(model, ["fc1", "fc2", "predictions"]))
    return aliases


def _resnet_aliases(model: nn.Module) -> dict[str, str]:
    # Not 'conv1', the paper's name of the stem: torchvision's node 'conv1' is the bare convolution.
    aliases = {"stem": "relu"}
    for stage in range(1, 5):
        aliases[f"conv{stage + 1}"] = f"layer{stage}"
    return aliases


# Family aliases: (model class, function of the model -> {alias: node or module path}).
FAMILY_ALIASES: list[tuple[type, Callable[[nn.Module], dict[str, str]]]] = [
    (torchvision.models.AlexNet, _alexnet_aliases),
    (torchvision.models.VGG, _vgg_aliases),
    (torchvision.models.ResNet, _resnet_aliases),
]
# Names that were aliases in featx 0.1 and are graph nodes of the family: they now
# mean the node, and using one says where the old meaning went (a command that
# worked then must not change meaning silently).
FORMER_ALIASES: list[tuple[type, dict[str, str]]] = [
    (torchvision.models.ResNet, {"conv1": "stem"}),
]


class GraphLayerIndex(LayerIndex):
    """The layers of a torchvision model: the nodes of its FX graph, module paths and family aliases.

    Parameters
    ----------
    model : nn.Module
        A torchvision classification model (in eval mode).
    image_size : int
        Input size used when output shapes are needed.
    name : str, optional
        torchvision name of the model, used in messages.
    """

    @cached_property
    def nodes(self) -> list[str]:
        with warnings.catch_warnings():
            # "eval nodes are a subsequence of train nodes": expected, we extract in eval mode.
            warnings.simplefilter("ignore", UserWarning)
            return list(get_graph_node_names(self.model)[1])

    def feature_body(self, nodes: Sequence[str]) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # as in nodes
            return create_feature_extractor(self.model, return_nodes={n: n for n in nodes})

    @cached_property
    def module_paths(self) -> dict[str, str]:
        """Module path -> the last graph node inside that module, for paths that are no node themselves."""
        last: dict[str, str] = {}
        for node in self.nodes:
            parts = node.split(".")
            for k in range(1, len(parts)):
                last[".".join(parts[:k])] = node
        return {path: node for path, node in last.items() if path not in self._node_set}

    def _has_conv(self, node: str) -> bool:
        # torchvision traces some blocks (Conv2dNormActivation, ...) as single leaf nodes.
        module = self._modules.get(node)
        return module is not None and any(isinstance(m, nn.Conv2d) for m in module.modules())

    def _final_classifier_node(self) -> str | None:
        """The last Linear, or for all-convolutional nets (SqueezeNet) the last conv."""
        linears = [n for n in self.nodes if isinstance(self._modules.get(n), nn.Linear)]
        if linears:
            return linears[-1]
        convs = [n for n in self.nodes if self._has_conv(n)]
        return convs[-1] if convs else None

    def _penultimate(self, final: str) -> str | None:
        """The node feeding *final*, looking through dropout, which is the identity at inference."""
        for node in reversed(self.nodes[: self.nodes.index(final)]):
            if not isinstance(self._modules.get(node), (nn.Dropout, nn.Identity)):
                return node
        return None

    @cached_property
    def aliases(self) -> dict[str, str]:
        """Alias -> graph node, for the aliases this model has."""
        aliases: dict[str, str] = {}
        for kind, make in FAMILY_ALIASES:
            if isinstance(self.model, kind):
                for alias, target in make(self.model).items():
                    node = target if target in self._node_set else self.module_paths.get(target)
                    if node is not None:
                        aliases[alias] = node
        final = self._final_classifier_node()
        penultimate = self._penultimate(final) if final is not None else None
        if penultimate is not None:
            aliases["penultimate"] = penultimate
        aliases["logits"] = self.nodes[-1]
        aliases["last_conv"] = "last_conv"  # resolved lazily: it needs output shapes
        # The node wins: an alias spelled like a graph node would never be reached.
        return {alias: node for alias, node in aliases.items() if alias not in self._node_set}

    def resolve(self, name: str) -> str:
        node = super().resolve(name)
        if name in self._node_set:
            self._say_former_alias(node)
        return node

    def _say_former_alias(self, node: str) -> None:
        for kind, renamed in FORMER_ALIASES:
            if isinstance(self.model, kind) and node in renamed:
                log.info(
                    f"layer '{node}' is {self.label}'s graph node {node}; featx 0.1 "
                    f"read '{node}' as the node {self.aliases[renamed[node]]}, which is now called '{renamed[node]}'"
                )

    def _valid_names(self) -> str:
        return f"graph nodes, module paths and aliases ({', '.join(list(self.aliases)[:8])}, ...)"

    def _last_conv(self) -> str:
        """Last node with the spatial size of the last convolution's output.

        That is the post-activation (post-residual, post-concatenation) output of
        the last convolutional stage, before global pooling.
        """
        shapes = self.shapes
        final = self._final_classifier_node()
        convs = [n for n in self.nodes if n != final and n in shapes and len(shapes[n]) == 3 and self._has_conv(n)]
        if not convs:
            raise UnknownLayerError(
                message(f"{self.label} has no convolution, so no 'last_conv'", hint=listing_hint(self.name))
            )
        spatial = shapes[convs[-1]][1:]
        end = self.nodes.index(final) if final is not None else len(self.nodes)
        after = self.nodes[self.nodes.index(convs[-1]) : end]
        same = [
            n
            for n in after
            if n in shapes
            and len(shapes[n]) == 3
            and shapes[n][1:] == spatial
            # SqueezeNet's classifier starts with a dropout: the identity at inference, not a layer of its own.
            and not isinstance(self._modules.get(n), (nn.Dropout, nn.Identity))
        ]
        return same[-1]
