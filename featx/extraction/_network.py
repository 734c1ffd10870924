"""The network an extraction runs: resolved layers, their shapes, and the truncated graph.

:func:`probe_layers` works out what each requested layer is (graph node,
output shape, pooling, width) with one trial forward pass; the engine then
asks the store which layers are still to do and builds the
:class:`TruncatedNetwork` once, for those only.  ``create_feature_extractor``
keeps only the graph those outputs need, so the network runs only up to the
deepest of them.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError, UnknownLayerError, WeightsError, message
from ..store import LayerSpec
from . import _onednn as onednn
from ._allocator import reuse_freed_memory
from ._layers import layer_index, listing_hint, trial_forward
from ._models import LoadedModel, load_model
from ._pooling import POOLS, effective_pool, pool_features
from ._preprocessing import Preprocessing
from ._recipe import PRECISIONS, FeatureRecipe
from ._views import ViewSpec, decode_preprocessing, expand_views, reduce_views

__all__ = [
    "CPU_FORWARD_BYTES",
    "LAYOUTS",
    "ForwardConfig",
    "default_layout",
    "LayerPlan",
    "TruncatedNetwork",
    "probe_layers",
    "FeatureNetwork",
    "build_network",
    "prepare_extractor",
    "layouts_for",
]

# Activation memory one CPU forward pass may use (batches are sliced to fit it),
# and how many copies of the largest activation per image a forward pass holds
# (input and output of a layer, plus oneDNN's reordered copy: measured on VGG16).
CPU_FORWARD_BYTES = 512 << 20
_ACTIVATION_COPIES = 3

#: Memory layouts a network can run in: ``blocked`` (fp32 on the CPU: chains of
#: convolutions in oneDNN's blocked layout, :mod:`featx.extraction._onednn`),
#: ``channels_last`` (NHWC weights and activations) and ``contiguous`` (plain NCHW).
LAYOUTS = ("blocked", "channels_last", "contiguous")


@dataclass(frozen=True)
class ForwardConfig:
    """How the network runs: images per pass and memory layout.

    Both change the last bits of the features (the kernels sum in another
    order), never their meaning: an extraction records them in its store
    (:meth:`attrs`) and a resumed or extended run reuses them, so that every
    row of a store is computed the same way, whichever engine or run computed it.

    Attributes
    ----------
    micro_batch : int
        Images per pass through the network (see :class:`TruncatedNetwork`).
    layout : str
        One of :data:`LAYOUTS`.
    compiled : bool
        The network runs through ``torch.compile`` (:mod:`featx.extraction._compile`).
    """

    micro_batch: int
    layout: str
    compiled: bool = False

    #: Root attributes of a store that record the configuration.
    ATTRS = ("forward_micro_batch", "forward_layout", "forward_device")

    def __post_init__(self) -> None:
        if isinstance(self.micro_batch, bool) or not isinstance(self.micro_batch, int) or self.micro_batch < 1:
            raise ValueError(message("micro_batch", allowed="a positive integer", got=self.micro_batch))
        if self.layout not in LAYOUTS:
            raise ValueError(message("layout", allowed=", ".join(LAYOUTS), got=self.layout))

    def attrs(self, device: torch.device) -> dict[str, object]:
        """The store's root attributes that record this configuration for *device*."""
        attrs: dict[str, object] = {
            "forward_micro_batch": self.micro_batch, "forward_layout": self.layout, "forward_device": device.type,
        }
        if self.compiled:  # written only then: a store without it ran eagerly
            attrs["forward_compiled"] = 1
        return attrs

    def describe(self) -> str:
        """``"4 images per pass, channels_last"``."""
        compiled = ", compiled" if self.compiled else ""
        return f"{self.micro_batch} image{'s' if self.micro_batch != 1 else ''} per pass, {self.layout}{compiled}"


def default_layout(device: torch.device, precision: str = "fp32") -> str:
    """The layout a network runs in without autotuning.

    ``channels_last`` on CUDA (what tensor cores want) and for bf16/fp16 on
    the CPU (oneDNN's AMX and AVX-512 BF16 convolutions run NHWC: 3.1x fp32
    against 2.3x contiguous for ResNet-50 on 2 cores); on the CPU ``blocked``
    in fp32 where this torch has oneDNN (it gives the bits of plain NCHW
    without reordering every activation twice per convolution), else ``contiguous``.
    """
    if device.type == "cuda" or PRECISIONS.get(precision) is not None:
        return "channels_last"
    return "blocked" if _blocked_runs(device, precision) else "contiguous"


def _blocked_runs(device: torch.device, precision: str) -> bool:
    """oneDNN's blocked chains: fp32 convolutions on a CPU whose torch has oneDNN."""
    return device.type == "cpu" and PRECISIONS[precision] is None and onednn.available()


def layouts_for(device: torch.device, precision: str = "fp32") -> tuple[str, ...]:
    """The layouts that can run on *device* in *precision* (``blocked``: fp32 on a CPU with oneDNN)."""
    return tuple(layout for layout in LAYOUTS if layout != "blocked" or _blocked_runs(device, precision))


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
        Largest slice of a batch one CPU forward pass runs (see :class:`TruncatedNetwork`).
    """

    nodes: dict[str, str]
    source_shapes: dict[str, tuple[int, ...]]
    pools: dict[str, str]
    dims: dict[str, int]
    max_images: int


class TruncatedNetwork(torch.nn.Module):
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
    views : ViewSpec, optional
        Augmented views (:mod:`~featx.extraction._views`): each input image (a
        base tensor) runs as its V views, *micro_batch* of them per pass, and
        the V pooled outputs of an image are reduced to one row.
    crop, interpolation : int, str
        The network's input size and the resize of ``multiscale`` and ``random`` views.

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
        self,
        model: torch.nn.Module,
        nodes: dict[str, str],
        pools: dict[str, str],
        *,
        micro_batch: int | None = None,
        views: ViewSpec | None = None,
        crop: int = 224,
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.pools = pools
        self.micro_batch = micro_batch
        self.views = views if views is not None and views.active else None
        self.crop = crop
        self.interpolation = interpolation
        # Whether every pass gets its input in channels_last (prepare_extractor sets it).
        # A bool, not a torch.memory_format: the extractor is pickled to Ray workers,
        # and pickle finds memory formats by searching sys.modules, where another
        # module that re-exports torch (sklearn's array_api_compat) can come first.
        self.channels_last = False
        unique = sorted(set(nodes.values()))
        self.body = layer_index(model).feature_body(unique)
        if isinstance(self.body, torch.fx.GraphModule):  # a traced graph may overwrite a requested output in place
            _copy_reused_outputs(self.body)

    def forward(self, pixels: torch.Tensor, ids: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Pooled features of a batch ``(B, 3, H, W)``, one row per image; *ids* (one per image) seed random views."""
        if self.views is None:
            return self._run(pixels)
        spec = self.views
        # The views of a few images at a time: whole passes of micro_batch views, not all B * V at once.
        group = max(1, (self.micro_batch or len(pixels) * spec.count) // spec.count)
        parts = []
        for start in range(0, len(pixels), group):
            chunk_ids = ids[start : start + group] if ids is not None else None
            views = expand_views(
                pixels[start : start + group], spec, self.crop, interpolation=self.interpolation, ids=chunk_ids
            )
            parts.append({name: reduce_views(value, spec) for name, value in self._run(views).items()})
        if len(parts) == 1:
            return parts[0]
        return {name: torch.cat([p[name] for p in parts]) for name in self.nodes}

    def _run(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.micro_batch
        if size is None or len(pixels) == size:
            return self._pooled(self._in_layout(pixels))
        n = len(pixels)
        slices = []
        for start in range(0, n, size):
            part = pixels[start : start + size]
            if len(part) < size:
                padding = part.new_zeros((size - len(part), *part.shape[1:]))
                part = torch.cat([part, padding])
            slices.append(self._pooled(self._in_layout(part)))
        if len(slices) == 1:
            return {name: value[:n] for name, value in slices[0].items()}
        return {name: torch.cat([s[name] for s in slices])[:n] for name in self.nodes}

    def _pooled(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.body(pixels)
        return {name: pool_features(outputs[node], self.pools[name]) for name, node in self.nodes.items()}

    def _in_layout(self, pixels: torch.Tensor) -> torch.Tensor:
        """*pixels* in the layout of the network's weights: the kernels' choice, and so the bits, depend on it."""
        if pixels.dim() != 4:
            return pixels
        return pixels.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


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


def probe_layers(loaded: LoadedModel, layer_names: Sequence[str], pool: str | Mapping[str, str]) -> LayerPlan:
    """Resolve layer names and measure their outputs with one trial forward pass.

    Parameters
    ----------
    loaded : LoadedModel
    layer_names : sequence of str
        Graph nodes, module paths or aliases.
    pool : str or mapping of name -> str
        The pooling asked for (of every layer, or by name); 2-D outputs get ``'none'``.

    Raises
    ------
    UnknownLayerError
        A name is not a layer of the model, or its node does not output a tensor.
    ImageSizeError
        The network cannot run at the preprocessing's crop size.
    """
    crop = loaded.preprocessing.crop
    index = layer_index(loaded.module, image_size=crop, name=loaded.name)
    nodes = {name: index.resolve(name) for name in layer_names}
    probe = index.feature_body(sorted(set(nodes.values()))).eval()
    _check_trained(loaded, nodes)
    with _largest_output(loaded.module) as largest:
        outputs = trial_forward(probe, crop, loaded.name)
    for name, node in nodes.items():
        if not isinstance(outputs[node], torch.Tensor):
            raise UnknownLayerError(
                message(f"layer '{name}' (node {node}) does not output a tensor", hint="choose another layer")
            )
    source_shapes = {name: tuple(outputs[node].shape[1:]) for name, node in nodes.items()}
    asked = pool if isinstance(pool, Mapping) else dict.fromkeys(nodes, pool)
    pools = {name: _pool_of(name, asked[name], len(shape) + 1) for name, shape in source_shapes.items()}
    with torch.inference_mode():
        dims = {name: int(pool_features(outputs[node], pools[name]).shape[1]) for name, node in nodes.items()}
    max_images = max(1, CPU_FORWARD_BYTES // (_ACTIVATION_COPIES * max(largest[0], 3 * crop * crop * 4)))
    return LayerPlan(nodes=nodes, source_shapes=source_shapes, pools=pools, dims=dims, max_images=max_images)


def _pool_of(name: str, pool: str, ndim: int) -> str:
    """The pooling of layer *name*; ``'none'`` (a recipe's record of a 2-D output) only fits a 2-D output."""
    if pool == "none" and ndim > 2:
        raise UnknownLayerError(
            message(f"layer '{name}' outputs {ndim - 1}-D values per image; its recipe's pool", allowed="one of " + ", ".join(POOLS), got=pool)
        )
    return effective_pool(pool, ndim)


def _check_trained(loaded: LoadedModel, nodes: dict[str, str]) -> None:
    """Refuse layers computed by modules the weights file had no weights for (a Keras ``_notop`` file's top)."""
    refused = [
        f"{name} (node {node})"
        for name, node in nodes.items()
        if any(node == module or node.startswith(module + ".") for module in loaded.untrained)
    ]
    if refused:
        raise WeightsError(
            message(
                f"the weights file has no weights for {', '.join(loaded.untrained)} of {loaded.name}, "
                f"which computes {', '.join(refused)}",
                hint="choose a layer before it (a Keras include_top=False file: up to block5_pool); "
                f"{listing_hint(loaded.name)}",
            )
        )


def prepare_extractor(
    extractor: TruncatedNetwork, device: torch.device, precision: str = "fp32", layout: str | None = None
) -> TruncatedNetwork:
    """Move an extractor to *device* and into a memory layout, the way the engine runs it.

    Parameters
    ----------
    extractor : TruncatedNetwork
        Its parameters are moved (and, for ``channels_last``, converted) in place;
        in bf16/fp16 the convolution and linear weights are cast once
        (:func:`_cast_autocast_weights`), in place too: modules it shares with
        its model are changed with it.
    device : torch.device
    precision : str
        One of :data:`~featx.extraction.PRECISIONS`.
    layout : str, optional
        One of :data:`LAYOUTS` that runs on *device* (:func:`layouts_for`); by
        default :func:`default_layout`.

    Notes
    -----
    ``blocked``: chains of convolutions run in oneDNN's blocked layout
    (:mod:`featx.extraction._onednn`), the same bits as ``contiguous`` without
    reordering every activation twice per convolution.  ``channels_last``:
    weights and every pass's input in NHWC, which oneDNN and cuDNN run with
    other kernels (other bits in the last places; faster for some networks).
    On CUDA, cuDNN autotuning is turned on; on the CPU the process keeps freed
    memory for the next batch (:func:`reuse_freed_memory`).

    Raises
    ------
    ValueError
        *layout* is unknown or cannot run on *device* in *precision*.
    """
    layout = default_layout(device, precision) if layout is None else layout
    if layout not in layouts_for(device, precision):
        allowed = f"{', '.join(layouts_for(device, precision))} on {device.type} in {precision}"
        raise ValueError(message("layout", allowed=allowed, got=layout))
    extractor = extractor.to(device)
    if layout == "channels_last":
        extractor = extractor.to(memory_format=torch.channels_last)
        extractor.channels_last = True
    if PRECISIONS[precision] is not None:
        _cast_autocast_weights(extractor, getattr(torch, PRECISIONS[precision]))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        reuse_freed_memory()
        if layout == "blocked" and isinstance(extractor.body, torch.fx.GraphModule):
            # A timm body is no traced graph: it runs as it is ('contiguous').
            extractor.body = onednn.blocked_layout(extractor.body)
    return extractor


# The modules whose weights autocast casts to the lower precision at every call
# (their operations are on its lower-precision list); exact types only, so that a
# subclass that uses its weight otherwise (timm's weight-standardised convolutions) is left alone.
_AUTOCAST_WEIGHTED = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


def _cast_autocast_weights(extractor: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast once, in place, the weights that autocast would cast to *dtype* at every pass.

    Under ``inference_mode`` autocast keeps no cast copy of a weight: each pass
    converts every convolution's and linear layer's weights again (AlexNet's
    fc6 alone is 38M values; bf16 AlexNet fc7 on 2 cores: 267 images/s with
    the weights cast once, 231 without).  A weight cast beforehand is the
    tensor autocast would have made (the same rounding, the same layout), so
    the features keep their bits; the other operations still run as autocast decides.
    """
    for module in extractor.modules():
        if type(module) in _AUTOCAST_WEIGHTED:
            module.to(dtype)


@dataclass
class FeatureNetwork:
    """A recipe made concrete: the loaded model, its layers probed, and the recipe resolved.

    Attributes
    ----------
    loaded : LoadedModel
        The model (its ``module`` is released once the truncated network is built,
        see :meth:`release`).
    plan : LayerPlan
        What each requested layer is (node, shape, pooling, width).
    recipe : FeatureRecipe
        The recipe resolved (:meth:`~featx.extraction.FeatureRecipe.resolved`).
    """

    loaded: LoadedModel
    plan: LayerPlan
    recipe: FeatureRecipe

    @property
    def preprocessing(self) -> Preprocessing:
        """What the decoding workers make of each image: the recipe's preprocessing, or the base of its views."""
        return decode_preprocessing(self.loaded.preprocessing, self.recipe.view_spec)

    @property
    def precision(self) -> str:
        """The precision the forward pass runs in (every layer of a recipe has the same)."""
        return self.recipe.layers[0].precision

    def specs(self) -> list[LayerSpec]:
        """One :class:`~featx.store.LayerSpec` per layer of the recipe, in its order."""
        plan = self.plan
        return [
            LayerSpec(
                name=layer.name,
                node=plan.nodes[layer.name],
                pool=plan.pools[layer.name],
                dim=plan.dims[layer.name],
                source_shape=plan.source_shapes[layer.name],
                precision=layer.precision,
                dtype=layer.dtype,
                views=self.recipe.view_spec.columns,
            )
            for layer in self.recipe.layers
        ]

    def truncated(self, layers: Sequence[str], micro_batch: int | None) -> TruncatedNetwork:
        """The network cut after the deepest of *layers* (names of the recipe), in eval mode."""
        plan = self.plan
        return TruncatedNetwork(
            self.loaded.module,
            {name: plan.nodes[name] for name in layers},
            {name: plan.pools[name] for name in layers},
            micro_batch=micro_batch,
            views=self.recipe.view_spec,
            crop=self.loaded.preprocessing.crop,
            interpolation=self.loaded.preprocessing.interpolation,
        ).eval()

    def release(self) -> None:
        """Drop the whole model: only a truncated network is kept in memory for a run.

        VGG16's classifier alone is 490 MB; FX tracing leaves reference cycles
        that hold the whole model, hence the collection.
        """
        self.loaded.module = None
        gc.collect()


def build_network(recipe: FeatureRecipe, device: torch.device | None = None) -> FeatureNetwork:
    """Load the recipe's model and weights, probe its layers, resolve the recipe.

    A layer whose graph node the recipe already records (a resolved recipe
    replayed by ``predict``) is read from that node, whatever its name would
    resolve to now.  A layer asked for in ``auto`` precision is computed in
    *device*'s native precision (:func:`~featx.extraction._device.resolve_precision`;
    default device: the CPU).

    Raises
    ------
    UnknownModelError, WeightsError, UnknownLayerError, ImageSizeError
    """
    if any(layer.precision == "auto" for layer in recipe.layers):
        from ._device import resolve_precision

        recipe = recipe.with_precision(resolve_precision("auto", device or torch.device("cpu"))[0])
    precisions = sorted({layer.precision for layer in recipe.layers})
    if len(precisions) > 1:
        raise ConfigError(
            message("the layers of one forward pass", allowed="one precision", got=precisions,
                    hint="extract the layers of each precision in a run of its own")
        )
    loaded = load_model(
        recipe.model,
        weights=recipe.weights,
        weights_file=recipe.weights_file,
        seed=recipe.seed,
        image_size=recipe.image_size,
        preprocessing=recipe.preprocessing,
    )
    # Probed by node when the recipe has one, then named as the recipe names them.
    asked = {layer.node or layer.name: layer for layer in recipe.layers}
    probed = probe_layers(loaded, list(asked), {key: layer.pool for key, layer in asked.items()})
    names = {key: layer.name for key, layer in asked.items()}
    columns = recipe.view_spec.columns  # every view kept: V blocks of D columns
    plan = LayerPlan(
        nodes={names[k]: v for k, v in probed.nodes.items()},
        source_shapes={names[k]: v for k, v in probed.source_shapes.items()},
        pools={names[k]: v for k, v in probed.pools.items()},
        dims={names[k]: v * columns for k, v in probed.dims.items()},
        max_images=probed.max_images,
    )
    resolved = recipe.resolved(
        weights=loaded.weights,
        weights_sha256=loaded.weights_sha256,
        seed=loaded.seed,
        preprocessing=loaded.preprocessing,
        layers=[replace(layer, node=plan.nodes[layer.name], pool=plan.pools[layer.name]) for layer in recipe.layers],
    )
    return FeatureNetwork(loaded=loaded, plan=plan, recipe=resolved)
