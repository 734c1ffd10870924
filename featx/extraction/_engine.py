"""The extraction: an image source -> an HDF5 feature store, on an engine.

Every argument is checked before any work: the configuration when it is made,
then the engine (device, cluster), the model and weights names and the store
path, before an image is read or a model loaded.  One trial forward pass
tells what the requested layers are and resolves the recipe
(:func:`~featx.extraction._network.build_network`); the store writer says
which layers and images are still to do; the network is then truncated once,
for those, after the deepest of them.  How it runs (images per pass, memory
layout) is chosen once and recorded, and an engine runs it: this process
(:class:`LocalEngine`) or Ray actors (:class:`~featx.extraction._ray.RayEngine`),
behind one interface (:class:`~featx.extraction._job.Engine`).
Batches always cover the same image ranges (multiples of the batch size), so
a resumed run computes exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import ConfigError, StoreError, message, option
from ..formatting import format_bytes
from ..store import RECIPE_ATTR, StoreWriter, lock_store, open_store, recorded_attrs
from ._autotune import choose_forward_config, review_cached_choice
from ._config import ExtractConfig, ExtractResult
from ._compile import compile_key, compile_network, decide_compile
from ._device import resolve_device, resolve_precision
from ._gpu_decode import resolve_decode
from ._loader import default_workers
from ._network import FeatureNetwork, build_network, prepare_extractor
from ._recipe import FeatureRecipe, LayerRecipe
from ._image_source import ImageSource
from ._job import Engine, EngineRun, ExtractionJob
from ._sources import open_source
from ._stream import FeatureStream

__all__ = ["LocalEngine", "ENGINE_FACTORIES", "extract_features"]

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


class LocalEngine:
    """The network in this process, decoding in DataLoader worker processes.

    Parameters
    ----------
    config : ExtractConfig

    Raises
    ------
    DeviceError
        The device (or GPU decoding) asked for is not available.
    """

    can_autotune = True

    def __init__(self, config: ExtractConfig) -> None:
        self.device = resolve_device(config.device)
        # libjpeg's DCT scaling (--jpeg draft) is the CPU's decoder: nvJPEG decodes exactly.
        draft = config.recipe.preprocessing.jpeg == "draft"
        self.decode = resolve_decode("cpu" if draft and config.decode == "auto" else config.decode, self.device)
        self.workers = config.workers if config.workers is not None else default_workers(self.device)

    def start(self) -> None:
        pass

    def before_measuring(self) -> None:
        pass

    def close(self) -> None:
        pass

    def run(self, job: ExtractionJob) -> EngineRun:
        started = time.perf_counter()
        config, writer, source = job.config, job.writer, job.source
        network = prepare_extractor(job.truncated, self.device, job.network.precision, job.forward.layout)
        if job.forward.compiled:
            recipe = job.network.recipe
            key = compile_key(
                recipe.model, recipe.to_json(), (job.forward.micro_batch, 3, job.network.preprocessing.crop),
                job.network.precision, job.forward.layout,
            )
            measured = compile_network(
                network, device=self.device, precision=job.network.precision,
                image_size=job.network.preprocessing.crop, key=key,
            )
            log.info(
                f"compiled the network in {measured.seconds:.1f} s (graph cached for the next run); "
                f"forward pass compiled: {measured.images_per_second:.1f} images/s"
            )
        stream = FeatureStream(
            network,
            source,
            job.network.preprocessing,
            indices=writer.plan.remaining,
            batch_size=config.batch_size,
            workers=self.workers,
            device=self.device,
            precision=job.network.precision,
            max_pixels=config.max_pixels,
            decode=self.decode,
        )
        if self.decode == "gpu":
            log.info("decoding JPEGs on the GPU (nvJPEG); other files on the CPU")
        done = EngineRun()
        thread = _WriterThread(writer)
        thread.start()
        bar = tqdm(
            total=len(source),
            initial=len(source) - len(writer.plan.remaining),
            unit="img",
            desc=f"{job.network.recipe.model} {','.join(s.name for s in writer.plan.todo)}",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        try:
            for batch in stream:
                thread.put(dict(stop=batch.stop, indices=batch.indices, features=batch.features, failures=batch.failures))
                done.failed.extend((source.ids[i], reason) for i, reason in batch.failures)
                done.images += len(batch)
                bar.update(len(batch))
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
        if stream.refused_on_gpu:
            log.info(f"{stream.refused_on_gpu} JPEG(s) that the GPU's decoder refused were decoded on the CPU")
        done.seconds = time.perf_counter() - started
        return done


def _ray_engine(config: ExtractConfig) -> Engine:
    # find_spec looks Ray up without importing it: the message names the extra.
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            message(f"{option('engine', 'ray')} needs Ray, which is not installed", hint="pip install 'featx[ray]'")
        )
    from ._ray import RayEngine  # imports Ray, for this engine only

    return RayEngine.connect(config)


#: Engine name (:data:`~featx.extraction.ENGINES`) -> what makes it from a configuration.
ENGINE_FACTORIES: dict[str, Callable[[ExtractConfig], Engine]] = {"local": LocalEngine, "ray": _ray_engine}


def _meta(network: FeatureNetwork, source: ImageSource) -> dict:
    return {
        "featx_version": __version__,
        **network.recipe.attrs(),
        **network.loaded.provenance,
        "data_root": source.location,
        "data_fingerprint": source.fingerprint,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }


def _store_recipe(recipe: FeatureRecipe, existing: dict[str, dict]) -> FeatureRecipe:
    """The recipe a store records: its layers already there and those of this run, by name."""
    layers = {name: LayerRecipe.from_attrs(name, attrs) for name, attrs in existing.items()}
    layers.update({layer.name: layer for layer in recipe.layers})
    return recipe.with_layers([layers[name] for name in sorted(layers)])


def _recorded_precision(path: Path) -> str | None:
    """The precision the store at *path* (or its parts) was computed in; None where there is none yet.

    Read from its recipe, else (a store from before the recipe attribute) from
    its feature datasets' ``precision`` attribute.
    """
    recorded = recorded_attrs(path, (RECIPE_ATTR,), layer_key="precision")
    text = recorded.get(RECIPE_ATTR)
    if text:
        try:
            layers = FeatureRecipe.from_json(text).layers
        except StoreError:
            return None  # the writer says what is wrong with it
        if layers:
            return layers[0].precision
    found = sorted(str(value) for key, value in recorded.items() if key.startswith("features/"))
    return found[0] if found else None


def extract_features(config: ExtractConfig) -> ExtractResult:
    """Extract the configured layers of every image of a source into a store.

    Resumes an unfinished store, reuses a finished one, adds new layers to a
    store of the same recipe, updates a finished store to a changed source.

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
        an unwritable output, a store made with another recipe, ...),
        all but the last found before any image is decoded or model loaded.

    Examples
    --------
    >>> from featx.extraction import ExtractConfig, extract_features, format_extraction
    >>> config = ExtractConfig.from_options(data="data/digits", model="resnet18", weights="none")
    >>> print(format_extraction(extract_features(config)))  # doctest: +SKIP
    """
    # The names are checked, and the default path worked out, without loading anything.
    path = config.store_path()
    # Joined and checked (device, cluster, GPUs) before any work.
    engine = ENGINE_FACTORIES[config.engine](config)
    try:
        return _extract(config, path, engine)
    finally:
        engine.close()  # its workers, and the Ray instance it started, whatever happened


def _extract(config: ExtractConfig, path: Path, engine: Engine) -> ExtractResult:
    source = open_source(config.data)
    # One writer per store: a second run is told now, before a model is loaded.
    lock = lock_store(path)
    # Every check that needs no model is passed: what the engine must start starts now.
    engine.start()
    # `auto` resolves once per store: to what the store records (an fp32 store resumes,
    # updates and is reused in fp32), else to the device's native precision.
    recorded = None if config.overwrite else _recorded_precision(path)
    precision, precision_reason = resolve_precision(config.recipe.layers[0].precision, engine.device, recorded)
    network = build_network(config.recipe.with_precision(precision), engine.device)
    writer = StoreWriter(
        path,
        meta=_meta(network, source),
        layers=network.specs(),
        samples=source,
        identity=network.recipe,
        overwrite=config.overwrite,
        force=config.force,
        checkpoint_seconds=config.checkpoint_seconds,
        compression=config.compression,
        lock=lock,
    )
    writer.open()
    source.log_layout()  # only now: a user error found before stays one line
    names = network.recipe.layer_names
    if writer.plan.up_to_date:
        log.info(f"{path} already holds {', '.join(names)} for these images: nothing to do")
        with open_store(path) as store:
            return ExtractResult(
                path=path, rows=len(store), layers=network.plan.dims, up_to_date=True, recipe=network.recipe,
                precision_reason=precision_reason,
            )

    # How the network runs, chosen once for every engine and recorded in the store:
    # a resumed or extended run reuses it, so that every row is computed the same way.
    # Chosen only once the writer has accepted the store: a measurement takes up to
    # 30 s, which a configuration the store refuses must not cost.
    autotune = config.autotune and engine.can_autotune
    if config.autotune and not autotune:
        log.info("the workers' network runs as without autotuning: this machine has no GPU to time it on")
    try:
        choice = choose_forward_config(
            network.loaded, network.plan, path=path, overwrite=config.overwrite, batch_size=config.batch_size,
            device=engine.device, precision=network.precision, autotune=autotune,
            before_measuring=engine.before_measuring,
        )
    except BaseException:
        writer.close()  # the store's lock
        raise
    forward = choice.config
    images_per_second = choice.images_per_second.get(forward) if choice.images_per_second else None
    recorded_compiled = None
    if choice.source in ("recorded", "unrecorded"):
        value = recorded_attrs(path, ("forward_compiled",)).get("forward_compiled")
        recorded_compiled = bool(value) if value is not None else False
    decision = decide_compile(
        config.compile if config.engine == "local" else "off",
        images=len(writer.plan.remaining), device=engine.device,
        key=compile_key(network.recipe.model, network.recipe.to_json(),
                        (forward.micro_batch, 3, network.preprocessing.crop), network.precision, forward.layout),
        images_per_second=images_per_second, recorded=recorded_compiled,
    )
    if config.engine != "local" and config.compile == "on":
        log.info("the Ray engine's workers run the network eagerly (--compile applies to the local engine)")
    forward = replace(forward, compiled=decision.compiled)
    writer.meta.update(forward.attrs(engine.device))
    writer.meta[RECIPE_ATTR] = _store_recipe(network.recipe, writer.plan.existing_layers).to_json()
    todo = writer.plan.todo
    log.info(f"computing in {precision} ({precision_reason})")
    log.info(choice.describe())
    log.info(f"network: {decision.reason}")
    if len(todo) < len(names):
        log.info(f"{path} already holds {', '.join(s.name for s in network.specs() if s not in todo)}; adding {', '.join(s.name for s in todo)}")
    truncated = network.truncated([spec.name for spec in todo], forward.micro_batch)
    network.release()
    for spec in todo:
        itemsize = np.dtype(spec.dtype).itemsize
        log.info(
            f"{spec.name} (node {spec.node}, {'x'.join(map(str, spec.source_shape))}, pool {spec.pool}): "
            f"{len(source):,} rows x {spec.dim:,} x {itemsize} B = {format_bytes(len(source) * spec.dim * itemsize)}"
        )
    update = writer.plan.update
    if update is not None:
        retried = f", {update.retried:,} that failed last time tried again" if update.retried else ""
        log.info(
            f"updating {path} to the data folder now: +{update.added:,} new images, -{update.removed:,} removed; "
            f"{update.kept:,} rows kept{retried}"
        )
    if writer.plan.resuming:
        log.info(f"resuming {path}: {len(source) - len(writer.plan.remaining):,} of {len(source):,} images already done")
    try:
        done = engine.run(ExtractionJob(config, source, network, truncated, writer, forward))
    finally:
        writer.close()  # the store's lock
    if not forward.compiled and done.images >= max(4 * config.batch_size, 256) and done.seconds >= 5:
        # A cached measurement that this run's own speed contradicts is measured again next time
        # (a run long enough for its speed to say something: starting the workers is not the network).
        dropped = review_cached_choice(choice, done.images / done.seconds)
        if dropped:
            log.info(dropped)
    with open_store(path) as store:
        rows = len(store)
    changes = dict(updated=True, added=update.added, removed=update.removed) if update is not None else {}
    return ExtractResult(
        path=path, rows=rows, layers=network.plan.dims, failed=done.failed, seconds=done.seconds, images=done.images,
        workers=done.workers, retried_shards=done.retried_shards, recipe=network.recipe,
        precision_reason=precision_reason, **changes,
    )
