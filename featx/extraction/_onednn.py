"""Convolution chains in oneDNN's blocked memory layout, for the CPU.

On the CPU, PyTorch runs an fp32 convolution on a plain NCHW tensor by
reordering the input into oneDNN's blocked layout (``nChw16c`` and the like),
running the blocked kernel, and reordering the output back; the weights are
reordered on every call too.  Between two convolutions of VGG's first blocks
those reorders move more bytes than the convolution itself, and half of the
time goes to them.  :func:`blocked_layout` keeps the tensors of a traced
network in the blocked layout (``Tensor.to_mkldnn()``) from one convolution to
the next, through the ReLUs, max-poolings and additions between them, and
converts back only where another operation needs a plain tensor.  It changes
chains of two convolutions or more (AlexNet's and VGG's features); ResNet's
convolutions, each between two batch norms, stay as they are.

The features do not change by a single bit: each convolution runs the same
oneDNN kernel on the same values, and ReLU, max-pooling and addition are exact
in any layout.  Operations whose oneDNN version rounds differently (batch norm,
average pooling, linear layers) stay plain.  The tests check the equality on
AlexNet, VGG, ResNet and other families.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["blocked_layout", "available"]

# Operations that give bit-identical results on blocked tensors, and run blocked
# when all their tensor inputs are (a convolution always starts a blocked run).
_EXACT_MODULES = (nn.ReLU, nn.MaxPool2d)
_EXACT_FUNCTIONS = {operator.add, torch.add, torch.relu, F.relu, torch.relu_}


def available() -> bool:
    """Whether this torch build has oneDNN (MKLDNN) for the CPU."""
    return torch.backends.mkldnn.is_available()


class BlockedConv2d(nn.Module):
    """An ``nn.Conv2d`` on blocked tensors, with its weights reordered once."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        weight = conv.weight.detach()
        # The reorder torch.utils.mkldnn.to_mkldnn applies, without its TorchScript wrapper.
        self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups
        )
        self.bias = conv.bias.detach().to_mkldnn() if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)


def _convertible_conv(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
    )


def _exact_on_blocked(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, nn.MaxPool2d):
            return not module.return_indices and module.dilation in (1, (1, 1))
        return isinstance(module, _EXACT_MODULES)
    if node.op == "call_function":
        # Tensors only: no scalar operand, no keyword (such as inplace=True).
        return node.target in _EXACT_FUNCTIONS and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)
    return False


def _chains(blocked: set[fx.Node], convs: set[fx.Node]) -> set[fx.Node]:
    """The connected runs of *blocked* nodes that hold two convolutions or more.

    A lone convolution (ResNet's, between batch norms) gains nothing: its input
    and output are reordered either way.
    """
    parent = {node: node for node in blocked}

    def root(node: fx.Node) -> fx.Node:
        while parent[node] is not node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for node in blocked:
        for value in node.all_input_nodes:
            if value in blocked:
                parent[root(value)] = root(node)
    count: dict[fx.Node, int] = {}
    for node in blocked & convs:
        count[root(node)] = count.get(root(node), 0) + 1
    return {node for node in blocked if count.get(root(node), 0) >= 2}


def blocked_layout(body: fx.GraphModule) -> fx.GraphModule:
    """A copy of a traced network that keeps convolution chains in the blocked layout.

    Parameters
    ----------
    body : torch.fx.GraphModule
        A traced network in eval mode, on the CPU, in float32 (what
        ``create_feature_extractor`` returns).  It is not modified.

    Returns
    -------
    torch.fx.GraphModule
        Same inputs and outputs (plain tensors), same values bit for bit;
        *body* itself when it has no convolution to convert.
    """
    graph = copy.deepcopy(body.graph)
    module = fx.GraphModule(body, graph)
    modules = dict(module.named_modules())
    convs: set[fx.Node] = set()
    blocked: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "call_module" and _convertible_conv(modules[node.target]):
            convs.add(node)
            blocked.add(node)
        elif _exact_on_blocked(node, modules) and node.all_input_nodes and all(n in blocked for n in node.all_input_nodes):
            blocked.add(node)
    blocked = _chains(blocked, convs)
    if not blocked:
        return body
    for node in blocked & convs:
        module.add_submodule(node.target, BlockedConv2d(modules[node.target]))

    # One conversion per value and direction, right after the value is made:
    # the value each consumer saw before, even if an in-place ReLU changes it later.
    converted: dict[tuple[fx.Node, str], fx.Node] = {}

    def convert(value: fx.Node, method: str) -> fx.Node:
        if (value, method) not in converted:
            with graph.inserting_after(value):
                converted[value, method] = graph.call_method(method, (value,))
        return converted[value, method]

    for node in list(graph.nodes):
        for value in node.all_input_nodes:
            if node in blocked and value not in blocked:
                node.replace_input_with(value, convert(value, "to_mkldnn"))
            elif node not in blocked and value in blocked:
                node.replace_input_with(value, convert(value, "to_dense"))
    # A copy of an output that later operations change in place (see
    # the network module's _copy_reused_outputs) is already made by its conversion.
    for (value, method), dense in converted.items():
        users = list(dense.users)
        if method == "to_dense" and len(users) == 1 and users[0].op == "call_method" and users[0].target == "clone":
            if not users[0].kwargs and len(users[0].args) == 1:
                users[0].replace_all_uses_with(dense)
                graph.erase_node(users[0])
    graph.lint()
    module.recompile()
    return module.eval()
