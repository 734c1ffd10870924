"""The engine's input pipeline: file bytes -> preprocessed batches on the device.

Images are decoded in DataLoader worker processes, each batch cut into one
chunk per worker; the chunks of a batch are joined into one tensor on the
device the network runs on (pinned memory and non-blocking copies on CUDA).
With GPU decoding (:mod:`featx.extraction._gpu_decode`) the workers read the
JPEGs' bytes and the main process decodes each batch's JPEGs on the GPU.

:class:`ImageLoader` decodes one list of images (the local engine's run);
:class:`DecodePool` is fed list after list by a Ray worker, its processes
started once, and decodes the first batches of the next list while the
network runs the last ones of the current one.  Both cut batches into the
same chunks.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import message
from ._device import autocast
from ._gpu_decode import EncodedImageDataset, GpuJpegDecoder, collate_encoded
from ._images import MAX_IMAGE_PIXELS, ImageBatch, ImageDataset, collate_images
from ._image_source import ImageSource

__all__ = ["WORKER_NICENESS", "BatchJoiner", "DecodePool", "ImageLoader", "default_workers"]


def default_workers(device: torch.device | None = None) -> int:
    """Decoding processes by default: one per core this process may use, at most 16.

    Parameters
    ----------
    device : torch.device, optional
        The device the network runs on; the answer is the same for every
        device today (see the comment in the code).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # One per core, on the CPU too: every worker decodes a part of each batch
    # (see ImageLoader), so a batch is ready sooner the more cores decode it.
    # (AlexNet fc7 on 2 cores: 143 images/s with 2 workers, 124 with 1.)
    return min(16, cores)


class BatchJoiner:
    """One batch tensor from its decoded chunks, on the device the network runs on.

    The network gets each batch as one tensor, however many workers decoded
    it: how a batch is split changes the last bits of some layers' outputs
    (MKL's matrix products, oneDNN's convolutions on small images).  On the
    CPU the chunks are copied into the same buffer batch after batch: a fresh
    38 MB tensor for 64 images at 224x224 costs 10 ms of page faults, a copy
    into memory already mapped 2 ms.  On CUDA they are joined on the GPU, after
    non-blocking copies from pinned memory, in the layout of
    :func:`~featx.extraction.prepare_extractor`.
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


def run_batch(
    extractor: Any,
    joiner: BatchJoiner,
    chunks: Sequence[Any],
    device: torch.device,
    precision: str,
    ids: Sequence[str] | None = None,
) -> tuple[list[int], list[tuple[int, str]], dict[str, np.ndarray]]:
    """One batch's decoded chunks through the network: the local engine's step and a Ray worker's.

    Returns the candidate indices computed, the ``(index, reason)`` of the
    images that failed to decode, and each layer's features (empty when every
    image of the batch failed).  *ids*, the source's image ids, seed an
    extractor's random views (it gets those of the batch's images).
    """
    indices = [i for chunk in chunks for i in chunk.indices]
    failures = [f for chunk in chunks for f in chunk.failures]
    pixels = [chunk.pixels for chunk in chunks if chunk.pixels is not None]
    features: dict[str, np.ndarray] = {}
    if pixels:
        with autocast(device, precision):
            if getattr(extractor, "views", None) is not None and ids is not None:
                outputs = extractor(joiner(pixels), [ids[i] for i in indices])
            else:
                outputs = extractor(joiner(pixels))
        features = {name: joiner.detach(value) for name, value in outputs.items()}
    return indices, failures, features


# On the CPU, decoding workers run at the lowest priority.  The network's
# threads wait for one another at every operation: a decoding worker that takes
# the core of one of them stalls both.  At low priority the workers decode in
# the gaps of the forward pass and, at full speed on every core, while the
# network waits for the next batch.  (AlexNet fc7 on 2 cores: 143 images/s
# against 136 at normal priority.)
WORKER_NICENESS = 19


def _ignore_ctrl_c(worker_id: int) -> None:
    """Leave Ctrl-C to the main process, which saves its progress and then stops the workers.

    Ctrl-C reaches the whole process group: a worker that handled it too would
    die mid-message and print a traceback of its own.  And when the main process
    stops while it is fetching a batch, the worker's thread that hands batches
    over in shared memory (``multiprocessing.resource_sharer``) sees the
    connection reset: nothing is lost then, so that thread stops without a word.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default_hook = sys.excepthook

    # resource_sharer reports its errors through sys.excepthook, not threading's hook.
    def quiet_when_the_main_process_left(kind, value, traceback) -> None:
        if not issubclass(kind, (ConnectionResetError, BrokenPipeError, EOFError)):
            default_hook(kind, value, traceback)

    sys.excepthook = quiet_when_the_main_process_left


def _decode_in_background(worker_id: int) -> None:
    _ignore_ctrl_c(worker_id)
    os.nice(WORKER_NICENESS)


def _batch_chunks(batch: Sequence[int], batch_size: int, workers: int) -> list[list[int]]:
    """A batch cut into one chunk per decoding worker (ImageLoader's and DecodePool's cut)."""
    chunk = -(-batch_size // max(1, workers))
    return [list(batch[b : b + chunk]) for b in range(0, len(batch), chunk)]


class ImageLoader:
    """The engine's input pipeline: file bytes -> preprocessed images, batch after batch.

    Each batch of *batch_size* candidates is cut into one chunk per worker, so
    that every worker decodes a part of it: a batch is ready after 1/workers of
    its decoding time, the first one included.  The batches themselves, and so
    the features, do not depend on the number of workers.  Iterating yields,
    for each batch, its chunks (:class:`ImageBatch`) in order.

    Parameters
    ----------
    source : ImageSource
    preprocessing : callable
        PIL image -> tensor (3, H, W).
    indices : sequence of int
        Candidates to decode, in order.
    batch_size, workers : int
    device : torch.device
        On CUDA, chunks come in pinned memory.
    max_pixels : int
        Larger images are refused as decompression bombs.
    decode : {'cpu', 'gpu'}
        ``gpu`` (a CUDA *device* only): the workers read the JPEGs' bytes and
        each batch's JPEGs are decoded together on the GPU
        (:class:`~featx.extraction.GpuJpegDecoder`); a batch then comes as one
        chunk, on the device.  Other files are decoded on the CPU either way.

    Attributes
    ----------
    gpu_decoder : GpuJpegDecoder or None
        The GPU decoder with ``decode='gpu'`` (its ``refused`` counts the JPEGs
        the CPU had to decode).
    """

    def __init__(
        self,
        source: ImageSource,
        preprocessing: Callable,
        *,
        indices: Sequence[int],
        batch_size: int,
        workers: int,
        device: torch.device,
        max_pixels: int = MAX_IMAGE_PIXELS,
        decode: str = "cpu",
    ) -> None:
        if decode not in ("cpu", "gpu") or (decode == "gpu" and device.type != "cuda"):
            allowed = "'cpu', or 'gpu' with a CUDA device"
            raise ValueError(message("decode", allowed=allowed, got=f"{decode!r} on {device}"))
        chunks: list = []
        self.chunks_per_batch: list[int] = []
        for a in range(0, len(indices), batch_size):
            parts = _batch_chunks(indices[a : a + batch_size], batch_size, workers)
            chunks.extend(parts)
            self.chunks_per_batch.append(len(parts))
        self.gpu_decoder: GpuJpegDecoder | None = None
        if decode == "gpu":
            self.gpu_decoder = GpuJpegDecoder(source, preprocessing, device, max_pixels=max_pixels)
            dataset, collate = EncodedImageDataset(source, preprocessing, max_pixels=max_pixels), collate_encoded
        else:
            dataset, collate = ImageDataset(source, preprocessing, max_pixels=max_pixels), collate_images
        self.loader = DataLoader(
            dataset,
            batch_sampler=chunks,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=_decode_in_background if device.type == "cpu" else _ignore_ctrl_c,
            persistent_workers=False,
        )

    def __len__(self) -> int:
        return len(self.chunks_per_batch)

    def __iter__(self) -> Iterator[list[ImageBatch]]:
        chunks = iter(self.loader)
        for count in self.chunks_per_batch:
            batch = [next(chunks) for _ in range(count)]
            yield [self.gpu_decoder(batch)] if self.gpu_decoder is not None else batch


# The dataset of a DecodePool's process (set once, when the process starts).
_POOL_DATASET: ImageDataset | None = None
# Linux's prctl option that signals a process when its parent dies.
_PR_SET_PDEATHSIG = 1


def _start_pool_decoder(dataset: ImageDataset, parent: int) -> None:
    """A DecodePool process: decode at low priority, leave Ctrl-C to the worker, die with the worker."""
    global _POOL_DATASET
    _POOL_DATASET = dataset
    _decode_in_background(0)
    # Preprocessing runs elementwise operations only: one thread, as in a DataLoader worker.
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        # A Ray worker that is killed (ray.kill, a crash) cannot stop its pool:
        # the kernel does, instead of leaving the processes waiting for work.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before the line above
        os._exit(0)


def _decode_chunk(indices: list[int]) -> ImageBatch:
    assert _POOL_DATASET is not None
    return collate_images(_POOL_DATASET.__getitems__(indices))


@dataclass
class _QueuedBatch:
    key: tuple[Hashable, int]  # (the list's key, the batch's position in it)
    chunks: list[list[int]]
    futures: list[Future] | None = None  # None until submitted (or always, without processes)


class DecodePool:
    """Decoding processes started once and fed list after list of images: a Ray worker's input pipeline.

    An :class:`ImageLoader` starts its processes for one list, and the first
    batch of the list is decoded while the network waits.  A Ray worker gets
    one shard after another; with a loader per shard it would pay that (and a
    fork) for every shard.  The pool's processes stay, and it decodes up to
    *prefetch* batches ahead of the one the network runs, across the lists it
    was given: the first batches of the next shard are decoded during the last
    ones of the current shard.  The batches, their chunks and the processes'
    priority are :class:`ImageLoader`'s, so the pixels are the same.

    Parameters
    ----------
    source : ImageSource
    preprocessing : callable
        PIL image -> tensor (3, H, W).
    batch_size, workers : int
        ``workers=0``: each batch is decoded in this process when it is taken.
    max_pixels : int
    prefetch : int
        Batches decoded ahead (a DataLoader's ``prefetch_factor``, 2).
    """

    def __init__(
        self,
        source: ImageSource,
        preprocessing: Callable,
        *,
        batch_size: int,
        workers: int,
        max_pixels: int = MAX_IMAGE_PIXELS,
        prefetch: int = 2,
    ) -> None:
        self.dataset = ImageDataset(source, preprocessing, max_pixels=max_pixels)
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = prefetch
        self._executor: ProcessPoolExecutor | None = None
        self._queue: deque[_QueuedBatch] = deque()

    def schedule(self, key: Hashable, indices: Sequence[int]) -> None:
        """Queue the batches of *indices* (candidates, in order) after those queued, under *key*."""
        for position, a in enumerate(range(0, len(indices), self.batch_size)):
            chunks = _batch_chunks(indices[a : a + self.batch_size], self.batch_size, self.workers)
            self._queue.append(_QueuedBatch((key, position), chunks))
        self._submit()

    def starts_with(self, key: Hashable) -> bool:
        """Whether the next batch taken is the first one of the list queued under *key*."""
        return bool(self._queue) and self._queue[0].key == (key, 0)

    def discard(self) -> None:
        """Forget every queued batch (those being decoded finish and are dropped)."""
        for item in self._queue:
            for future in item.futures or ():
                future.cancel()
        self._queue.clear()

    def take(self) -> list[ImageBatch]:
        """The next queued batch, as its decoded chunks in order; waits for it.

        Raises
        ------
        BrokenProcessPool
            A decoding process died; the queue is emptied and the next
            :meth:`schedule` starts new processes.
        """
        item = self._queue.popleft()
        self._submit()
        if item.futures is None:
            return [collate_images(self.dataset.__getitems__(chunk)) for chunk in item.chunks]
        try:
            return [future.result() for future in item.futures]
        except BrokenProcessPool:
            self.discard()
            self.close()
            raise

    def close(self) -> None:
        """Stop the processes (a later :meth:`schedule` starts new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _submit(self) -> None:
        if self.workers == 0:
            return
        for item in list(self._queue)[: self.prefetch]:
            if item.futures is None:
                if self._executor is None:
                    self._executor = ProcessPoolExecutor(
                        self.workers,
                        # Forked: the dataset and preprocessing need no pickling, and no imports are repeated.
                        mp_context=multiprocessing.get_context("fork"),
                        initializer=_start_pool_decoder,
                        initargs=(self.dataset, os.getpid()),
                    )
                item.futures = [self._executor.submit(_decode_chunk, chunk) for chunk in item.chunks]
