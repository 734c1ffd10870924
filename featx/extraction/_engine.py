"""The batch extraction engine: image folder -> HDF5 feature store.

One forward pass of a network truncated after the deepest requested layer
(``create_feature_extractor`` keeps only the graph those outputs need) gives
every requested layer.  Images are decoded in DataLoader worker processes;
batches go to the device with pinned memory and non-blocking copies; pooled
features go to a writer thread, so HDF5 writes overlap the next forward pass.
Batches always cover the same image ranges (multiples of the batch size), so a
resumed run computes exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.models.feature_extraction import create_feature_extractor
from tqdm.auto import tqdm

from .._version import __version__
from ..formatting import format_bytes
from . import _onednn as onednn
from ._allocator import reuse_freed_memory
from ._images import MAX_IMAGE_PIXELS, ImageBatch, ImageCollection, ImageDataset, collate_images, discover_images
from ..errors import DeviceError, FeatxError
from ._layers import LayerIndex, trial_forward
from ._models import LoadedModel, load_model
from ._pooling import POOLS, effective_pool, pool_features
from ..store import LayerSpec, StoreWriter, open_store

__all__ = [
    "PRECISIONS",
    "ExtractConfig",
    "ExtractResult",
    "extract_features",
    "default_store_path",
    "resolve_device",
    "build_extractor",
    "FeatureExtractor",
    "ImageLoader",
    "BatchJoiner",
    "prepare_extractor",
    "autocast",
    "default_workers",
]

log = logging.getLogger("featx")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Activation memory one CPU forward pass may use (batches are sliced to fit it),
# and how many copies of the largest activation per image a forward pass holds
# (input and output of a layer, plus oneDNN's reordered copy: measured on VGG16).
CPU_FORWARD_BYTES = 512 << 20
_ACTIVATION_COPIES = 3
STORAGE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything an extraction depends on.  See ``run_pipeline.py extract --help``.

    Parameters
    ----------
    data : path
        Image folder (class subfolders, optionally under train/val/test).
    model : str
        torchvision classification model name.
    layers : tuple of str
        Graph nodes, module paths or aliases (``penultimate``, ``conv5``, ...).
    weights : str
        ``DEFAULT``, a weights name, or ``none`` (seeded random init).
    weights_file : path, optional
        State dict to load instead of torchvision's weights.
    pool : str
        Pooling of 4-D/3-D outputs: one of :data:`featx.pooling.POOLS`.
    out : path, optional
        Store path; by default :func:`default_store_path`.
    """

    data: Path = Path("data")
    model: str = "resnet50"
    layers: tuple[str, ...] = ("penultimate",)
    weights: str = "DEFAULT"
    weights_file: Path | None = None
    seed: int = 0
    image_size: int | None = None
    pool: str = "avg"
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    dtype: str = "float32"
    compression: str | None = None
    out: Path | None = None
    features_dir: Path = Path("features")
    overwrite: bool = False
    checkpoint_seconds: float = 10.0
    progress: bool = True
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if not self.layers:
            raise FeatxError("no layer requested: pass at least one --layer NAME")
        if self.pool not in POOLS:
            raise FeatxError(f"unknown pool '{self.pool}': choose one of {', '.join(POOLS)}")
        if self.precision not in PRECISIONS:
            raise FeatxError(f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        if self.dtype not in STORAGE_DTYPES:
            raise FeatxError(f"unknown storage dtype '{self.dtype}': choose one of {', '.join(STORAGE_DTYPES)}")
        if self.batch_size < 1:
            raise FeatxError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise FeatxError(f"--workers must be 0 or more, got {self.workers}")
        if self.compression not in (None, "gzip", "lzf"):
            raise FeatxError(f"unknown compression '{self.compression}': choose gzip, lzf or none")
        if len(set(self.layers)) != len(self.layers):
            raise FeatxError(f"a layer is requested twice: {', '.join(self.layers)}")


@dataclass
class ExtractResult:
    """What an extraction did.

    Attributes
    ----------
    path : Path
        The store.
    rows : int
        Images in the store.
    layers : dict of str -> int
        Layers written (or already present) and their widths D.
    failed : list of (id, reason)
        Images that could not be used in this run.
    up_to_date : bool
        The store already held every requested layer; nothing was computed.
    seconds : float
        Wall time from the first image to the finished store.
    images : int
        Images processed by this run.
    """

    path: Path
    rows: int
    layers: dict[str, int]
    failed: list[tuple[str, str]] = field(default_factory=list)
    up_to_date: bool = False
    seconds: float = 0.0
    images: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; refuse devices this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{name}' is not available: no CUDA GPU is visible to torch "
                f"(torch {torch.__version__}); use --device cpu or --device auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{name}' is not available: this machine has {torch.cuda.device_count()} CUDA "
                f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device '{name}': use auto, cpu, cuda or cuda:N")
    return device


def default_store_path(config: ExtractConfig, loaded: LoadedModel, collection: ImageCollection) -> Path:
    """``features/<dataset>/<model>-<weights>[-s<seed>][-<size>].h5``, deterministic from the configuration."""
    dataset = collection.root.resolve().name or "data"
    weights = loaded.weights.replace("file:", "file-").rsplit(".", 1)[0] if loaded.weights.startswith("file:") else loaded.weights
    parts = [loaded.name, weights]
    if loaded.seed:
        parts.append(f"s{loaded.seed}")
    if config.image_size is not None:
        parts.append(str(config.image_size))
    return config.features_dir / dataset / ("-".join(parts) + ".h5")


class FeatureExtractor(torch.nn.Module):
    """A network truncated after the deepest requested node, returning pooled features.

    Parameters
    ----------
    model : nn.Module
    nodes : dict of layer name -> graph node
    pools : dict of layer name -> pool name
    max_images : int, optional
        On the CPU, batches larger than this run through the network in slices
        of at most *max_images* images (see :func:`build_extractor`).
    """

    def __init__(
        self, model: torch.nn.Module, nodes: dict[str, str], pools: dict[str, str], *, max_images: int | None = None
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.pools = pools
        self.max_images = max_images
        unique = sorted(set(nodes.values()))
        self.body = create_feature_extractor(model, return_nodes={n: n for n in unique})
        _copy_reused_outputs(self.body)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        if pixels.device.type != "cpu" or self.max_images is None or len(pixels) <= self.max_images:
            return self._pooled(pixels)
        # Host memory, unlike a GPU's, is what the whole process runs in: slices keep
        # VGG's 64-channel full-resolution activations of a batch of 64 (2.4 GiB
        # with oneDNN's copies) to a few hundred MiB, for some 5-10% more CPU time
        # (VGG16 up to block2_pool, slices of 13, on 2 cores).
        slices = [self._pooled(part) for part in pixels.split(self.max_images)]
        return {name: torch.cat([s[name] for s in slices]) for name in self.nodes}

    def _pooled(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.body(pixels)
        return {name: pool_features(outputs[node], self.pools[name]) for name, node in self.nodes.items()}


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


def build_extractor(
    loaded: LoadedModel, layer_names: tuple[str, ...], pool: str
) -> tuple[FeatureExtractor, dict[str, tuple[int, ...]], dict[str, str]]:
    """Resolve layer names and build the truncated extractor.

    Returns
    -------
    extractor : FeatureExtractor
    source_shapes : dict of name -> per-sample output shape before pooling
    nodes : dict of name -> graph node
    """
    index = LayerIndex(loaded.module, image_size=loaded.preprocessing.crop, name=loaded.name)
    nodes = {name: index.resolve(name) for name in layer_names}
    probe = create_feature_extractor(loaded.module, return_nodes={n: n for n in set(nodes.values())}).eval()
    crop = loaded.preprocessing.crop
    with _largest_output(loaded.module) as largest:
        outputs = trial_forward(probe, crop, loaded.name)
    for name, node in nodes.items():
        if not isinstance(outputs[node], torch.Tensor):
            raise FeatxError(f"layer '{name}' (node {node}) does not output a tensor; choose another layer")
    source_shapes = {name: tuple(outputs[node].shape[1:]) for name, node in nodes.items()}
    pools = {name: effective_pool(pool, len(shape) + 1) for name, shape in source_shapes.items()}
    max_images = max(1, CPU_FORWARD_BYTES // (_ACTIVATION_COPIES * max(largest[0], 3 * crop * crop * 4)))
    return FeatureExtractor(loaded.module, nodes, pools, max_images=max_images).eval(), source_shapes, nodes


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


def _layer_specs(config: ExtractConfig, extractor: FeatureExtractor, source_shapes, nodes) -> list[LayerSpec]:
    with torch.inference_mode():
        dims = {
            name: int(pool_features(torch.zeros(1, *shape), extractor.pools[name]).shape[1])
            for name, shape in source_shapes.items()
        }
    return [
        LayerSpec(
            name=name,
            node=nodes[name],
            pool=extractor.pools[name],
            dim=dims[name],
            source_shape=source_shapes[name],
            precision=config.precision,
            dtype=config.dtype,
        )
        for name in config.layers
    ]


def default_workers(device: torch.device) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # One per core, on the CPU too: every worker decodes a part of each batch
    # (see ImageLoader), so a batch is ready sooner the more cores decode it.
    # (AlexNet fc7 on 2 cores: 143 images/s with 2 workers, 124 with 1.)
    return min(16, cores)


class _WriterThread(threading.Thread):
    """Writes finished batches to the store while the next ones are computed."""

    def __init__(self, writer: StoreWriter, depth: int = 3) -> None:
        super().__init__(name="featx-writer", daemon=True)
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain after a failure so that put() never blocks forever
            try:
                self.writer.add(**item)
            except BaseException as exc:  # re-raised in the main thread
                self.error = exc

    def put(self, item: dict) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def _meta(config: ExtractConfig, loaded: LoadedModel, collection: ImageCollection) -> dict:
    return {
        "featx_version": __version__,
        **loaded.attrs(),
        "data_root": str(collection.root.resolve()),
        "data_fingerprint": collection.fingerprint,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }


def extract_features(config: ExtractConfig) -> ExtractResult:
    """Extract the configured layers of every image of a folder into a store.

    Resumes an unfinished store, reuses a finished one, adds new layers to a
    store of the same configuration.  See :class:`ExtractConfig`.

    Raises
    ------
    FeatxError
        For every user mistake (unknown model/layer, missing folder, no GPU,
        a store made with another configuration, ...).
    """
    collection = discover_images(config.data)
    device = resolve_device(config.device)
    loaded = load_model(
        config.model,
        weights=config.weights,
        weights_file=config.weights_file,
        seed=config.seed,
        image_size=config.image_size,
    )
    extractor, source_shapes, nodes = build_extractor(loaded, config.layers, config.pool)
    specs = _layer_specs(config, extractor, source_shapes, nodes)
    path = Path(config.out) if config.out is not None else default_store_path(config, loaded, collection)
    writer = StoreWriter(
        path,
        meta=_meta(config, loaded, collection),
        layers=specs,
        samples=collection,
        overwrite=config.overwrite,
        checkpoint_seconds=config.checkpoint_seconds,
        compression=config.compression,
    )
    dims = {spec.name: spec.dim for spec in specs}
    if writer.up_to_date:
        log.info(f"{path} already holds {', '.join(config.layers)} for these images: nothing to do")
        with open_store(path) as store:
            return ExtractResult(path=path, rows=len(store), layers=dims, up_to_date=True)

    todo = writer.todo
    if len(todo) < len(specs):
        log.info(f"{path} already holds {', '.join(s.name for s in specs if s not in todo)}; adding {', '.join(s.name for s in todo)}")
        extractor = FeatureExtractor(
            loaded.module,
            {s.name: s.node for s in todo},
            {s.name: s.pool for s in todo},
            max_images=extractor.max_images,
        ).eval()
    # The extractor holds the layers it runs; the rest of the network (VGG16's
    # classifier: 490 MB) is not kept in memory for the whole run.  FX tracing
    # leaves reference cycles that hold the whole model, hence the collection.
    loaded.module = None
    gc.collect()
    remaining = range(writer.start, len(collection))
    for spec in todo:
        itemsize = np.dtype(spec.dtype).itemsize
        log.info(
            f"{spec.name} (node {spec.node}, {'x'.join(map(str, spec.source_shape))}, pool {spec.pool}): "
            f"{len(collection):,} rows x {spec.dim:,} x {itemsize} B = {format_bytes(len(collection) * spec.dim * itemsize)}"
        )
    if writer.resuming:
        log.info(f"resuming {path}: {writer.start:,} of {len(collection):,} images already done")

    workers = config.workers if config.workers is not None else default_workers(device)
    return _run(config, collection, loaded, extractor, writer, remaining, device, workers, path, dims)


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


class BatchJoiner:
    """One batch tensor from its decoded chunks, on the device the network runs on.

    The network gets each batch as one tensor, however many workers decoded
    it: how a batch is split changes the last bits of some layers' outputs
    (MKL's matrix products, oneDNN's convolutions on small images).  On the
    CPU the chunks are copied into the same buffer batch after batch: a fresh
    38 MB tensor for 64 images at 224x224 costs 10 ms of page faults, a copy
    into memory already mapped 2 ms.  On CUDA they are joined on the GPU, after
    non-blocking copies from pinned memory, in the layout of
    :func:`prepare_extractor`.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffer: torch.Tensor | None = None

    def __call__(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        if self.device.type == "cuda":
            on_device = [chunk.to(self.device, non_blocking=True) for chunk in chunks]
            joined = on_device[0] if len(on_device) == 1 else torch.cat(on_device)
            return joined.contiguous(memory_format=torch.channels_last)
        if len(chunks) == 1:
            return chunks[0]
        n = sum(len(chunk) for chunk in chunks)
        buffer = self._buffer
        if buffer is None or buffer.shape[1:] != chunks[0].shape[1:] or len(buffer) < n:
            buffer = self._buffer = torch.empty((n, *chunks[0].shape[1:]), dtype=chunks[0].dtype)
        return torch.cat(chunks, out=buffer[:n])

    def detach(self, value: torch.Tensor) -> np.ndarray:
        """A layer's output as an array that the next batch cannot overwrite."""
        array = value.cpu().numpy()
        # A node that is a view of the input (an odd choice, but a valid one) would
        # otherwise hand the writer thread memory that the next batch reuses.
        if self._buffer is not None and np.may_share_memory(array, self._buffer.numpy()):
            array = array.copy()
        return array


def autocast(device: torch.device, precision: str):
    """The autocast context of a precision (``fp32``: disabled)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# On the CPU, decoding workers run at the lowest priority.  The network's
# threads wait for one another at every operation: a decoding worker that takes
# the core of one of them stalls both.  At low priority the workers decode in
# the gaps of the forward pass and, at full speed on every core, while the
# network waits for the next batch.  (AlexNet fc7 on 2 cores: 143 images/s
# against 136 at normal priority.)
WORKER_NICENESS = 19


def _decode_in_background(worker_id: int) -> None:
    os.nice(WORKER_NICENESS)


class ImageLoader:
    """The engine's input pipeline: file bytes -> preprocessed images, batch after batch.

    Each batch of *batch_size* candidates is cut into one chunk per worker, so
    that every worker decodes a part of it: a batch is ready after 1/workers of
    its decoding time, the first one included.  The batches themselves, and so
    the features, do not depend on the number of workers.  Iterating yields,
    for each batch, its chunks (:class:`ImageBatch`) in order.

    Parameters
    ----------
    collection : ImageCollection
    preprocessing : callable
        PIL image -> tensor (3, H, W).
    indices : sequence of int
        Candidates to decode, in order.
    batch_size, workers : int
    device : torch.device
        On CUDA, chunks come in pinned memory.
    """

    def __init__(
        self,
        collection: ImageCollection,
        preprocessing,
        *,
        indices,
        batch_size: int,
        workers: int,
        device: torch.device,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        chunk = -(-batch_size // max(1, workers))
        chunks: list = []
        self.chunks_per_batch: list[int] = []
        for a in range(0, len(indices), batch_size):
            batch = indices[a : a + batch_size]
            parts = [list(batch[b : b + chunk]) for b in range(0, len(batch), chunk)]
            chunks.extend(parts)
            self.chunks_per_batch.append(len(parts))
        self.loader = DataLoader(
            ImageDataset(collection, preprocessing, max_pixels=max_pixels),
            batch_sampler=chunks,
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=device.type == "cuda",
            worker_init_fn=_decode_in_background if device.type == "cpu" else None,
            persistent_workers=False,
        )

    def __len__(self) -> int:
        return len(self.chunks_per_batch)

    def __iter__(self) -> Iterator[list[ImageBatch]]:
        chunks = iter(self.loader)
        for count in self.chunks_per_batch:
            yield [next(chunks) for _ in range(count)]


def _run(config, collection, loaded, extractor, writer, remaining, device, workers, path, dims) -> ExtractResult:
    extractor = prepare_extractor(extractor, device, config.precision)
    loader = ImageLoader(
        collection,
        loaded.preprocessing,
        indices=remaining,
        batch_size=config.batch_size,
        workers=workers,
        device=device,
        max_pixels=config.max_pixels,
    )
    joiner = BatchJoiner(device)
    failed: list[tuple[str, str]] = []
    thread = _WriterThread(writer)
    thread.start()
    bar = tqdm(
        total=len(collection),
        initial=writer.start,
        unit="img",
        desc=f"{loaded.name} {','.join(s.name for s in writer.todo)}",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    processed = 0
    try:
        with torch.inference_mode():
            for chunks in loader:
                indices = [i for chunk in chunks for i in chunk.indices]
                failures = [f for chunk in chunks for f in chunk.failures]
                pixels = [chunk.pixels for chunk in chunks if chunk.pixels is not None]
                features = {}
                if pixels:
                    with autocast(device, config.precision):
                        outputs = extractor(joiner(pixels))
                    features = {name: joiner.detach(value) for name, value in outputs.items()}
                last = max([*indices, *(i for i, _ in failures)])
                thread.put(dict(stop=last + 1, indices=indices, features=features, failures=failures))
                failed.extend((collection.ids[i], reason) for i, reason in failures)
                n = len(indices) + len(failures)
                processed += n
                bar.update(n)
        thread.close()
    except BaseException:
        bar.close()
        # Keep every batch computed so far: let the writer finish, then commit.
        try:
            thread.close()
            writer.commit()
        except BaseException:
            writer.abort()
        raise
    bar.close()
    writer.finish()
    seconds = time.perf_counter() - started
    with open_store(path) as store:
        rows = len(store)
    return ExtractResult(
        path=path, rows=rows, layers=dims, failed=failed, seconds=seconds, images=processed
    )
