"""The network an extraction runs: resolved layers, their shapes, and the truncated graph.

:func:`probe_layers` works out what each requested layer is (graph node,
output shape, pooling, width) with one trial forward pass; the engine then
asks the store which layers are still to do and builds the
:class:`FeatureExtractor` once, for those only.  ``create_feature_extractor``
keeps only the graph those outputs need, so the network runs only up to the
deepest of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torchvision.models.feature_extraction import create_feature_extractor

from ..errors import UnknownLayerError, message
from ..store import LayerSpec
from . import _onednn as onednn
from ._allocator import reuse_freed_memory
from ._config import PRECISIONS
from ._layers import LayerIndex, trial_forward
from ._models import LoadedModel
from ._pooling import effective_pool, pool_features

__all__ = [
    "CPU_FORWARD_BYTES",
    "LayerPlan",
    "FeatureExtractor",
    "probe_layers",
    "build_extractor",
    "prepare_extractor",
]

# Activation memory one CPU forward pass may use (batches are sliced to fit it),
# and how many copies of the largest activation per image a forward pass holds
# (input and output of a layer, plus oneDNN's reordered copy: measured on VGG16).
CPU_FORWARD_BYTES = 512 << 20
_ACTIVATION_COPIES = 3


@dataclass(frozen=True)
class LayerPlan:
    """What the requested layers of a model are, from one trial forward pass.

    Attributes
    ----------
    nodes : dict of str -> str
        Requested name -> graph node.
    source_shapes : dict of str -> tuple of int
        Requested name -> per-sample output shape before pooling.
    pools : dict of str -> str
        Requested name -> pooling applied (``'none'`` for ``(N, D)`` outputs).
    dims : dict of str -> int
        Requested name -> width D after pooling.
    max_images : int
        Largest slice of a batch one CPU forward pass runs (see :class:`FeatureExtractor`).
    """

    nodes: dict[str, str]
    source_shapes: dict[str, tuple[int, ...]]
    pools: dict[str, str]
    dims: dict[str, int]
    max_images: int

    def specs(self, *, precision: str = "fp32", dtype: str = "float32") -> list[LayerSpec]:
        """One :class:`~featx.store.LayerSpec` per requested layer, in the order asked."""
        return [
            LayerSpec(
                name=name,
                node=node,
                pool=self.pools[name],
                dim=self.dims[name],
                source_shape=self.source_shapes[name],
                precision=precision,
                dtype=dtype,
            )
            for name, node in self.nodes.items()
        ]


class FeatureExtractor(torch.nn.Module):
    """A network truncated after the deepest requested node, returning pooled features.

    Parameters
    ----------
    model : nn.Module
    nodes : dict of layer name -> graph node
    pools : dict of layer name -> pool name
    micro_batch : int, optional
        Every pass through the network runs exactly this many images: the input
        is cut into slices of *micro_batch* images and a shorter last slice is
        padded with zeros (whose outputs are dropped).  ``None``: the whole
        input in one pass.

    Notes
    -----
    Why a fixed pass size: the kernels of MKL, oneDNN and cuDNN depend on the
    number of images in a pass, and so do the last bits of their sums (ResNet-18
    logits differ by up to 3e-6 between passes of 3 and 8 images), but at a
    fixed size an image's features do not depend on the other images in its
    pass.  So the features of an image are the same whichever batch, shard,
    resumed run or incremental update computes it.
    """

    def __init__(
        self, model: torch.nn.Module, nodes: dict[str, str], pools: dict[str, str], *, micro_batch: int | None = None
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.pools = pools
        self.micro_batch = micro_batch
        unique = sorted(set(nodes.values()))
        self.body = create_feature_extractor(model, return_nodes={n: n for n in unique})
        _copy_reused_outputs(self.body)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.micro_batch
        if size is None or len(pixels) == size:
            return self._pooled(pixels)
        n = len(pixels)
        slices = []
        for start in range(0, n, size):
            part = pixels[start : start + size]
            if len(part) < size:
                padding = part.new_zeros((size - len(part), *part.shape[1:]))
                part = torch.cat([part, padding]).contiguous(memory_format=_memory_format(pixels))
            slices.append(self._pooled(part))
        if len(slices) == 1:
            return {name: value[:n] for name, value in slices[0].items()}
        return {name: torch.cat([s[name] for s in slices])[:n] for name in self.nodes}

    def _pooled(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.body(pixels)
        return {name: pool_features(outputs[node], self.pools[name]) for name, node in self.nodes.items()}


def _memory_format(pixels: torch.Tensor) -> torch.memory_format:
    """The layout of *pixels*, so that a padded slice keeps it (cuDNN's choice depends on it)."""
    if pixels.dim() == 4 and not pixels.is_contiguous() and pixels.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _copy_reused_outputs(body: torch.fx.GraphModule) -> None:
    """Return a copy of every requested output that later operations also consume.

    Networks overwrite intermediate tensors in place (AlexNet's and VGG's
    ``ReLU(inplace=True)``, ResNet's ReLU after its batch norms): without a copy,
    asking for AlexNet's ``features.0`` together with a deeper layer returns the
    values after the ReLU.  ``create_feature_extractor`` does not guard against
    this; the copy is made right after the node runs, before any consumer.
    """
    graphs = [getattr(body, "train_graph", None), getattr(body, "eval_graph", None), body.graph]
    for graph in {id(g): g for g in graphs if g is not None}.values():
        output = next(node for node in graph.nodes if node.op == "output")
        for node in list(output.all_input_nodes):
            if any(user is not output for user in node.users):
                with graph.inserting_after(node):
                    copy = graph.call_method("clone", (node,))
                output.replace_input_with(node, copy)
        graph.lint()
    body.recompile()


@contextlib.contextmanager
def _largest_output(model: torch.nn.Module) -> Iterator[list[int]]:
    """Record the bytes of the largest output of *model*'s layers that run in the block.

    Hooks rather than returning every node: the outputs are measured one by one,
    never all held at once.
    """
    largest = [0]

    def record(module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(record) for m in model.modules() if next(m.children(), None) is None]
    try:
        yield largest
    finally:
        for handle in handles:
            handle.remove()


def probe_layers(loaded: LoadedModel, layer_names: Sequence[str], pool: str) -> LayerPlan:
    """Resolve layer names and measure their outputs with one trial forward pass.

    Parameters
    ----------
    loaded : LoadedModel
    layer_names : sequence of str
        Graph nodes, module paths or aliases.
    pool : str
        The pooling asked for; 2-D outputs get ``'none'``.

    Raises
    ------
    UnknownLayerError
        A name is not a layer of the model, or its node does not output a tensor.
    ImageSizeError
        The network cannot run at the preprocessing's crop size.
    """
    crop = loaded.preprocessing.crop
    index = LayerIndex(loaded.module, image_size=crop, name=loaded.name)
    nodes = {name: index.resolve(name) for name in layer_names}
    probe = create_feature_extractor(loaded.module, return_nodes={n: n for n in set(nodes.values())}).eval()
    with _largest_output(loaded.module) as largest:
        outputs = trial_forward(probe, crop, loaded.name)
    for name, node in nodes.items():
        if not isinstance(outputs[node], torch.Tensor):
            raise UnknownLayerError(
                message(f"layer '{name}' (node {node}) does not output a tensor", hint="choose another layer")
            )
    source_shapes = {name: tuple(outputs[node].shape[1:]) for name, node in nodes.items()}
    pools = {name: effective_pool(pool, len(shape) + 1) for name, shape in source_shapes.items()}
    with torch.inference_mode():
        dims = {name: int(pool_features(outputs[node], pools[name]).shape[1]) for name, node in nodes.items()}
    max_images = max(1, CPU_FORWARD_BYTES // (_ACTIVATION_COPIES * max(largest[0], 3 * crop * crop * 4)))
    return LayerPlan(nodes=nodes, source_shapes=source_shapes, pools=pools, dims=dims, max_images=max_images)


def build_extractor(
    loaded: LoadedModel, layer_names: Sequence[str], pool: str
) -> tuple[FeatureExtractor, dict[str, tuple[int, ...]], dict[str, str]]:
    """Resolve layer names and build the truncated extractor of all of them.

    The engine itself probes first and builds for the layers still to do; this
    is the whole path in one call, for benchmarks and experiments.

    Returns
    -------
    extractor : FeatureExtractor
    source_shapes : dict of name -> per-sample output shape before pooling
    nodes : dict of name -> graph node
    """
    plan = probe_layers(loaded, layer_names, pool)
    extractor = FeatureExtractor(loaded.module, plan.nodes, plan.pools, micro_batch=plan.max_images)
    return extractor.eval(), plan.source_shapes, plan.nodes


def prepare_extractor(extractor: FeatureExtractor, device: torch.device, precision: str = "fp32") -> FeatureExtractor:
    """Move an extractor to *device* the way the engine runs it.

    On CUDA: ``channels_last`` (what tensor cores want) and cuDNN autotuning.
    On the CPU: the process keeps freed memory for the next batch
    (:func:`reuse_freed_memory`), and in fp32 chains of convolutions run in
    oneDNN's blocked layout (:mod:`featx.extraction._onednn`), which gives the same bits
    without reordering every activation twice per convolution.  Not
    ``channels_last``: oneDNN's NHWC kernels sum in another order, and CPU
    features must not depend on settings.
    """
    extractor = extractor.to(device)
    if device.type == "cuda":
        extractor = extractor.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    else:
        reuse_freed_memory()
        if PRECISIONS[precision] is None and onednn.available():
            extractor.body = onednn.blocked_layout(extractor.body)
    return extractor
