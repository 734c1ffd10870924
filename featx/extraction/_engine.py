"""The batch extraction engine: image folder -> HDF5 feature store.

Every argument is checked before any work: the configuration when it is made,
then the device, the model and weights names and the output path, before an
image is read or a model loaded.  One trial forward pass tells what the
requested layers are (:func:`~featx.extraction.probe_layers`); the store
writer says which of them are still to do; the network is then built once, for
those, and truncated after the deepest of them.  Pooled features go to a
writer thread, so HDF5 writes overlap the next forward pass.  Batches always
cover the same image ranges (multiples of the batch size), so a resumed run
computes exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from .._version import __version__
from ..formatting import format_bytes
from ..paths import check_writable_file
from ..store import StoreWriter, lock_store, open_store
from ._autotune import choose_forward_config, default_micro_batch
from ._config import ExtractConfig, ExtractResult, default_store_path
from ._device import resolve_device
from ._gpu_decode import resolve_decode
from ._images import ImageCollection, discover_images
from ._loader import BatchJoiner, ImageLoader, default_workers, run_batch
from ._models import LoadedModel, load_model, weights_label
from ._network import FeatureExtractor, ForwardConfig, prepare_extractor, probe_layers

if TYPE_CHECKING:
    from ._ray import RayCluster

__all__ = ["extract_features"]

log = logging.getLogger("featx")


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


def _meta(loaded: LoadedModel, collection: ImageCollection) -> dict:
    return {
        "featx_version": __version__,
        **loaded.attrs(),
        "data_root": str(collection.root.resolve()),
        "data_fingerprint": collection.fingerprint,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }


#: Images per pass without autotuning (the Ray engine's name for it; see default_micro_batch).
micro_batch_size = default_micro_batch


def extract_features(config: ExtractConfig) -> ExtractResult:
    """Extract the configured layers of every image of a folder into a store.

    Resumes an unfinished store, reuses a finished one, adds new layers to a
    store of the same configuration.  See :class:`ExtractConfig`.

    Parameters
    ----------
    config : ExtractConfig

    Returns
    -------
    ExtractResult
        Print it with :func:`~featx.extraction.format_extraction`.

    Raises
    ------
    FeatxError
        For every user mistake (unknown model/layer, missing folder, no GPU,
        an unwritable output, a store made with another configuration, ...),
        all but the last found before any image is decoded or model loaded.

    Examples
    --------
    >>> from featx.extraction import ExtractConfig, extract_features, format_extraction
    >>> result = extract_features(ExtractConfig(data="data/digits", model="resnet18", weights="none"))  # doctest: +SKIP
    >>> print(format_extraction(result))  # doctest: +SKIP
    """
    if config.engine != "ray":
        return _extract(config, None)
    from ._ray import RayCluster  # imports Ray, for this engine only

    # Joined and checked (address, GPUs) before any work; the network runs on its workers' device.
    cluster = RayCluster.connect(config)
    try:
        return _extract(cluster.driver_config(config), cluster)
    finally:
        cluster.close()  # its workers, and the Ray instance it started, whatever happened


def _extract(config: ExtractConfig, cluster: RayCluster | None) -> ExtractResult:
    """:func:`extract_features` on the local engine (*cluster* None) or on a ``RayCluster``."""
    device = cluster.device if cluster is not None else resolve_device(config.device)
    decode = resolve_decode(config.decode, device)
    # The names are checked, and the default path worked out, without loading anything.
    weights_label(config.model, weights=config.weights, weights_file=config.weights_file)
    path = Path(config.out) if config.out is not None else check_writable_file(default_store_path(config), "out")
    collection = discover_images(config.data)
    # One writer per store: a second run is told now, before a model is loaded.
    lock = lock_store(path)
    if cluster is not None:
        # Every check that needs no model is passed: the workers' processes start
        # now and import torch while this one builds the network.
        cluster.start()
    loaded = load_model(
        config.model,
        weights=config.weights,
        weights_file=config.weights_file,
        seed=config.seed,
        image_size=config.image_size,
        preprocessing=config.preprocessing_options(),
    )
    plan = probe_layers(loaded, config.layers, config.pool)
    specs = plan.specs(precision=config.precision, dtype=config.dtype)
    writer = StoreWriter(
        path,
        meta=_meta(loaded, collection),
        layers=specs,
        samples=collection,
        overwrite=config.overwrite,
        force=config.force,
        checkpoint_seconds=config.checkpoint_seconds,
        compression=config.compression,
        lock=lock,
    )
    writer.open()
    collection.log_layout()  # only now: a user error found before stays one line
    if writer.plan.up_to_date:
        log.info(f"{path} already holds {', '.join(config.layers)} for these images: nothing to do")
        with open_store(path) as store:
            return ExtractResult(path=path, rows=len(store), layers=plan.dims, up_to_date=True)

    # How the network runs, chosen once for every engine and recorded in the store:
    # a resumed or extended run reuses it, so that every row is computed the same way.
    # Chosen only once the writer has accepted the store: a measurement takes up to
    # 30 s, which a configuration the store refuses must not cost.  The writer reads
    # its meta only when it writes a part or the store file, so the choice joins it here.
    try:
        choice = choose_forward_config(
            loaded, plan, path=path, overwrite=config.overwrite, batch_size=config.batch_size,
            device=device, precision=config.precision, autotune=config.autotune,
            # A measurement must not share the cores with the Ray workers' imports.
            before_measuring=cluster.wait_until_ready if cluster is not None else None,
        )
    except BaseException:
        writer.close()  # the store's lock
        raise
    forward = choice.config
    writer.meta.update(forward.attrs(device))
    todo = writer.plan.todo
    log.info(choice.describe())
    if len(todo) < len(specs):
        log.info(f"{path} already holds {', '.join(s.name for s in specs if s not in todo)}; adding {', '.join(s.name for s in todo)}")
    extractor = FeatureExtractor(
        loaded.module,
        {s.name: s.node for s in todo},
        {s.name: s.pool for s in todo},
        micro_batch=forward.micro_batch,
    ).eval()
    # The extractor holds the layers it runs; the rest of the network (VGG16's
    # classifier: 490 MB) is not kept in memory for the whole run.  FX tracing
    # leaves reference cycles that hold the whole model, hence the collection.
    loaded.module = None
    gc.collect()
    for spec in todo:
        itemsize = np.dtype(spec.dtype).itemsize
        log.info(
            f"{spec.name} (node {spec.node}, {'x'.join(map(str, spec.source_shape))}, pool {spec.pool}): "
            f"{len(collection):,} rows x {spec.dim:,} x {itemsize} B = {format_bytes(len(collection) * spec.dim * itemsize)}"
        )
    update = writer.plan.update
    if update is not None:
        retried = f", {update.retried:,} that failed last time tried again" if update.retried else ""
        log.info(
            f"updating {path} to the data folder now: +{update.added:,} new images, -{update.removed:,} removed; "
            f"{update.kept:,} rows kept{retried}"
        )
    if writer.plan.resuming:
        log.info(f"resuming {path}: {len(collection) - len(writer.plan.remaining):,} of {len(collection):,} images already done")

    workers = config.workers if config.workers is not None else default_workers(device)
    cluster_summary: dict = {}
    try:
        if cluster is not None:
            failed, processed, seconds, cluster_summary = cluster.run(config, collection, loaded, extractor, writer, forward)
        else:
            failed, processed, seconds = _run(config, collection, loaded, extractor, writer, device, workers, forward, decode)
    finally:
        writer.close()  # the store's lock
    with open_store(path) as store:
        rows = len(store)
    changes = dict(updated=True, added=update.added, removed=update.removed) if update is not None else {}
    return ExtractResult(
        path=path, rows=rows, layers=plan.dims, failed=failed, seconds=seconds, images=processed, **changes,
        **cluster_summary,
    )


def _run(
    config: ExtractConfig,
    collection: ImageCollection,
    loaded: LoadedModel,
    extractor: FeatureExtractor,
    writer: StoreWriter,
    device: torch.device,
    workers: int,
    forward: ForwardConfig,
    decode: str = "cpu",
) -> tuple[list[tuple[str, str]], int, float]:
    """Run the images from ``writer.plan.start`` on through the network into the store.

    *extractor* runs ``forward.micro_batch`` images per pass; it is prepared
    here in ``forward.layout``.  JPEGs are decoded on the GPU with
    ``decode='gpu'`` (see :class:`ImageLoader`).  Returns the images that
    failed, the number processed and the seconds taken: from this call (the
    network and its forward configuration ready; the Ray engine counts from
    the same instant) to the finished store.
    """
    started = time.perf_counter()
    extractor = prepare_extractor(extractor, device, config.precision, forward.layout)
    loader = ImageLoader(
        collection,
        loaded.preprocessing,
        indices=writer.plan.remaining,
        batch_size=config.batch_size,
        workers=workers,
        device=device,
        max_pixels=config.max_pixels,
        decode=decode,
    )
    if decode == "gpu":
        log.info("decoding JPEGs on the GPU (nvJPEG); other files on the CPU")
    joiner = BatchJoiner(device)
    failed: list[tuple[str, str]] = []
    thread = _WriterThread(writer)
    thread.start()
    bar = tqdm(
        total=len(collection),
        initial=len(collection) - len(writer.plan.remaining),
        unit="img",
        desc=f"{loaded.name} {','.join(s.name for s in writer.plan.todo)}",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    processed = 0
    try:
        with torch.inference_mode():
            for chunks in loader:
                indices, failures, features = run_batch(extractor, joiner, chunks, device, config.precision)
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
    if loader.gpu_decoder is not None and loader.gpu_decoder.refused:
        log.info(f"{loader.gpu_decoder.refused} JPEG(s) that the GPU's decoder refused were decoded on the CPU")
    return failed, processed, time.perf_counter() - started
