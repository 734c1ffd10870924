"""Layer names: graph nodes, module paths and familiar aliases.

Any node of torchvision's FX graph of the model works (``features.11``,
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
``conv1``, the bare stem convolution; the paper's conv1 stage (after batch norm
and ReLU), which featx 0.1 called ``conv1``, is ``stem``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from ..errors import (
    ConfigError,
    ImageSizeError,
    UnknownLayerError,
    close_matches,
    message,
    option,
)
from ..formatting import format_table
from ._models import load_model

__all__ = ["LayerInfo", "LayerIndex", "LayerListing", "list_layers", "format_layers", "parameters_up_to"]

log = logging.getLogger("featx")


@dataclass(frozen=True)
class LayerInfo:
    """One row of a layer listing.

    Attributes
    ----------
    node : str
        Graph node name.
    aliases : tuple of str
        Alias names that resolve to this node.
    shape : tuple of int
        Output shape of one sample (without the batch dimension).
    params : int
        Parameters of the module that computes the node (0 for functional ops).
    cumulative_params : int
        Parameters the node's output depends on: Keras' running total of
        ``model.summary()`` up to this layer (set by :func:`list_layers`).
    """

    node: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    params: int
    cumulative_params: int = 0


def _next_of_type(children: list[tuple[str, nn.Module]], start: int, kind: type) -> int | None:
    for j in range(start, len(children)):
        if isinstance(children[j][1], kind):
            return j
    return None


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
GENERIC_ALIASES = ("penultimate", "logits", "last_conv")
# Names that were aliases in featx 0.1 and are graph nodes of the family: they now
# mean the node, and using one says where the old meaning went (a command that
# worked then must not change meaning silently).
FORMER_ALIASES: list[tuple[type, dict[str, str]]] = [
    (torchvision.models.ResNet, {"conv1": "stem"}),
]


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


def _listing_hint(model: str | None) -> str:
    """Where the valid layer names of *model* are listed."""
    return f"list them with `run_pipeline.py layers --model {model or 'MODEL'}`"


class LayerIndex:
    """Names, aliases and shapes of the layers of one model.

    Parameters
    ----------
    model : nn.Module
        A torchvision classification model (in eval mode).
    image_size : int
        Input size used when output shapes are needed.
    name : str, optional
        torchvision name of the model, used in error messages.
    """

    def __init__(self, model: nn.Module, *, image_size: int = 224, name: str | None = None) -> None:
        self.model = model
        self.image_size = image_size
        self.name = name
        with warnings.catch_warnings():
            # "eval nodes are a subsequence of train nodes": expected, we extract in eval mode.
            warnings.simplefilter("ignore", UserWarning)
            self.nodes: list[str] = list(get_graph_node_names(model)[1])
        self._node_set = set(self.nodes)
        self._modules = dict(model.named_modules())

    # names ------------------------------------------------------------------------
    def _last_node_in(self, prefix: str) -> str | None:
        inside = [n for n in self.nodes if n == prefix or n.startswith(prefix + ".")]
        return inside[-1] if inside else None

    @cached_property
    def _module_paths(self) -> set[str]:
        paths = set()
        for node in self.nodes:
            parts = node.split(".")
            paths.update(".".join(parts[:k]) for k in range(1, len(parts)))
        return paths - self._node_set

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
                    node = target if target in self._node_set else self._last_node_in(target)
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
        """Graph node of a node name, module path or alias.

        Raises
        ------
        UnknownLayerError
            With the closest valid names and a pointer to the ``layers`` command.
        """
        # Graph nodes first, so that a node name always means that node (ResNet's
        # 'conv1' is the bare stem convolution, not the paper's conv1 stage).
        if name in self._node_set:
            self._say_former_alias(name)
            return name
        if name in self.aliases:
            return self._last_conv() if name == "last_conv" else self.aliases[name]
        if name in self._module_paths:
            return self._last_node_in(name)
        choices = [*self.aliases, *self.nodes, *self._module_paths]
        model = self.name or type(self.model).__name__
        raise UnknownLayerError(
            message(
                f"unknown layer '{name}' for {model}",
                hint=f"{close_matches(name, choices)}valid names are graph nodes, module paths and aliases "
                f"({', '.join(list(self.aliases)[:8])}, ...); {_listing_hint(self.name)}",
            )
        )

    def _say_former_alias(self, node: str) -> None:
        for kind, renamed in FORMER_ALIASES:
            if isinstance(self.model, kind) and node in renamed:
                log.info(
                    f"layer '{node}' is {self.name or type(self.model).__name__}'s graph node {node}; featx 0.1 "
                    f"read '{node}' as the node {self.aliases[renamed[node]]}, which is now called '{renamed[node]}'"
                )

    # shapes --------------------------------------------------------------------------
    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample output shape of every tensor-valued node at ``image_size``."""
        extractor = create_feature_extractor(self.model, return_nodes={n: n for n in self.nodes})
        outputs = trial_forward(extractor.eval(), self.image_size, self.name or type(self.model).__name__)
        return {
            node: tuple(value.shape[1:])
            for node, value in outputs.items()
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1
        }

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
                message(
                    f"{self.name or type(self.model).__name__} has no convolution, so no 'last_conv'",
                    hint=_listing_hint(self.name),
                )
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

    def describe(self) -> list[LayerInfo]:
        """One :class:`LayerInfo` per tensor-valued node, in execution order."""
        by_node: dict[str, list[str]] = {}
        for alias in self.aliases:
            try:
                by_node.setdefault(self.resolve(alias), []).append(alias)
            except UnknownLayerError:
                continue  # e.g. no last_conv in a model without convolutions
        for path in sorted(self._module_paths, key=lambda p: (p.count("."), p)):
            if path.count(".") == 0:
                by_node.setdefault(self._last_node_in(path), []).append(path)
        rows = []
        for node in self.nodes:
            if node not in self.shapes:
                continue
            module = self._modules.get(node)
            params = sum(p.numel() for p in module.parameters()) if module is not None else 0
            rows.append(LayerInfo(node, tuple(by_node.get(node, ())), self.shapes[node], params))
        return rows


@dataclass(frozen=True)
class LayerListing:
    """The layers of a model at an input size, as ``run_pipeline.py layers`` lists them.

    Attributes
    ----------
    model : str
        torchvision model name.
    image_size : int
        Input size the shapes are for.
    rows : tuple of LayerInfo
        Every tensor-valued node, in execution order.
    shown : tuple of LayerInfo
        The rows listed: all of them with ``show_all``, else those with
        aliases or parameters, and the output.
    total_params : int
        Parameters of the whole model.
    show_all : bool
    """

    model: str
    image_size: int
    rows: tuple[LayerInfo, ...]
    shown: tuple[LayerInfo, ...]
    total_params: int
    show_all: bool = False


def list_layers(model: str, *, image_size: int | None = None, show_all: bool = False) -> LayerListing:
    """Names, aliases, output shapes and parameter counts of a model's layers.

    Parameters
    ----------
    model : str
        torchvision model name.
    image_size : int, optional
        Input size (default: the weights' crop size, usually 224).
    show_all : bool
        List nodes without parameters or aliases too.

    Returns
    -------
    LayerListing
        Print it with :func:`format_layers`.

    Examples
    --------
    >>> listing = list_layers("vgg19", image_size=256)  # doctest: +SKIP
    >>> {alias: r.shape for r in listing.rows for alias in r.aliases}["block5_pool"]  # doctest: +SKIP
    (512, 8, 8)
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(message(option("image_size"), allowed="a positive integer (the input size in pixels)", got=image_size))
    loaded = load_model(model, weights="none", image_size=image_size)
    size = image_size or loaded.preprocessing.crop
    if hasattr(loaded.module, "layer_index"):  # a timm network names its own layers
        index = loaded.module.layer_index(image_size=size)
        cumulative = index.cumulative_params()
    else:
        index = LayerIndex(loaded.module, image_size=size, name=model)
        cumulative = _graph_parameters_up_to(loaded.module, index.nodes, size, model)
    rows = tuple(replace(r, cumulative_params=cumulative.get(r.node, 0)) for r in index.describe())
    shown = tuple(r for r in rows if show_all or r.aliases or r.params or r.node == rows[-1].node)
    total = sum(p.numel() for p in loaded.module.parameters())
    return LayerListing(model=model, image_size=size, rows=rows, shown=shown, total_params=total, show_all=show_all)


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


def _graph_parameters_up_to(model: nn.Module, nodes: list[str], image_size: int, name: str) -> dict[str, int]:
    """:func:`parameters_up_to` for the graph nodes of a torchvision model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # eval nodes are a subsequence of train nodes
        extractor = create_feature_extractor(model, return_nodes={n: n for n in nodes}).eval()
    return parameters_up_to(trial_forward(extractor, image_size, name, record_graph=True), model)


def format_layers(listing: LayerListing) -> str:
    """The table ``run_pipeline.py layers`` prints: a title line, the layers, the total parameters."""
    title = f"{listing.model} at {listing.image_size}x{listing.image_size}: {len(listing.rows)} layers"
    if not listing.show_all:
        title += f" ({len(listing.shown)} shown; --all for every node)"
    table = format_table(
        ("layer (graph node)", "aliases", "output shape", "params", "params up to here"),
        [
            (r.node, ", ".join(r.aliases), "x".join(map(str, r.shape)), f"{r.params:,}", f"{r.cumulative_params:,}")
            for r in listing.shown
        ],
        align="<<>>>",
    )
    return f"{title}\n{table}\ntotal params: {listing.total_params:,}"
