"""Shards of an extraction and the worker that computes them (the Ray engine's worker side; no Ray here).

The images still to do are cut into :class:`Shard` s of whole batches, at
multiples of the batch size of the list the local engine would run (so a
shard's batches are the local engine's batches).  A :class:`ShardWorker` holds
the driver's truncated network, built once, and turns a shard into a
:class:`ShardResult`: the pooled features of its images, decoded by the worker
itself, in a :class:`~featx.extraction.DecodePool` whose processes start once
and decode the worker's next shard (which the driver names with the current
one) while the network runs the last batches of the current one.  The Ray engine (:mod:`._ray`) makes the worker a Ray actor; nothing
here depends on Ray, so a worker also runs in-process.

Why the features are the local engine's bit for bit: the network runs a fixed
number of images per pass (:class:`~featx.extraction._network.TruncatedNetwork`), the
driver's choice (micro batch, memory layout) is shipped with the network, and
on the CPU the worker runs as many threads as the driver (oneDNN's kernels for
ResNet-50's last stage sum in another order with 1 thread than with 2).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # not on Windows: workers there do not take turns
    fcntl = None


from ._image_source import ImageSource
from ._loader import BatchJoiner, DecodePool, run_batch
from ._preprocessing import Preprocessing
from ._network import TruncatedNetwork, prepare_extractor

__all__ = ["Shard", "ShardResult", "ShardWorker", "WorkerRecipe", "batches_per_shard", "plan_shards"]

# A worker gets about this many shards (a slow worker delays the end by at
# most about 1/SHARDS_PER_WORKER of its share) ...
SHARDS_PER_WORKER = 4
# ... of at most this many batches (a killed worker loses at most one shard) ...
MAX_BATCHES_PER_SHARD = 64
# ... and of at most this many bytes of features (the driver buffers a few shards).
MAX_SHARD_BYTES = 256 << 20
#: The file whose lock workers on one node take turns on (``take_turns``), one per user.  Their
#: threads wait for one another at every operation: two networks whose threads share the cores
#: stall each other at each of those waits, while one at a time runs at the full speed of the cores.
TURN_LOCK = Path(tempfile.gettempdir()) / f"featx-{os.getuid() if hasattr(os, 'getuid') else 0}-network.lock"


@dataclass(frozen=True)
class Shard:
    """Consecutive images of the list still to do: whole batches of it.

    Attributes
    ----------
    number : int
        Position of the shard in the run (the driver commits shards in this order).
    indices : sequence of int
        Candidate indices of its images, increasing.
    """

    number: int
    indices: Sequence[int]

    @property
    def stop(self) -> int:
        """Candidates before this index are accounted for once the shard is committed."""
        return self.indices[-1] + 1

    def describe(self, ids: Sequence[str]) -> str:
        """``"shard 3 (images 192-255: train/ants/a.jpg .. train/bees/b.jpg)"``."""
        first, last = self.indices[0], self.indices[-1]
        return f"shard {self.number} ({len(self.indices)} images, {first}-{last}: {ids[first]} .. {ids[last]})"


def batches_per_shard(n_batches: int, workers: int, batch_bytes: int) -> int:
    """How many batches a shard holds: a few shards per worker, bounded in batches and bytes.

    Parameters
    ----------
    n_batches : int
        Batches still to do.
    workers : int
    batch_bytes : int
        Bytes of the features of one batch (every layer).
    """
    balance = math.ceil(n_batches / (workers * SHARDS_PER_WORKER))
    memory = MAX_SHARD_BYTES // max(1, batch_bytes)
    return max(1, min(balance, MAX_BATCHES_PER_SHARD, memory))


def plan_shards(remaining: Sequence[int], batch_size: int, batches: int) -> list[Shard]:
    """Cut the images still to do into shards of *batches* batches of *batch_size* (the last ones shorter).

    Parameters
    ----------
    remaining : sequence of int
        Candidate indices still to do, increasing (``StorePlan.remaining``).
    batch_size, batches : int
    """
    size = batch_size * batches
    return [Shard(n, remaining[a : a + size]) for n, a in enumerate(range(0, len(remaining), size))]


@dataclass(frozen=True)
class WorkerRecipe:
    """How a worker runs its network and decodes its images: the driver's choices.

    Attributes
    ----------
    preprocessing : Preprocessing
    batch_size : int
        Images per batch (the local engine's batches).
    device : str
        ``'cpu'`` or ``'cuda'`` (the GPU Ray assigned to the worker).
    precision : str
    layout : str
        Memory layout of the network (the driver's :class:`~featx.extraction.ForwardConfig`).
    threads : int
        Threads of the network's operations.
    decode_workers : int
        Decoding processes (0: decode in the worker itself).
    max_pixels : int
    take_turns : bool
        The workers of a node run more threads than it has cores (on the
        CPU every worker runs the driver's threads): they run the network
        one at a time, batch by batch (see :data:`TURN_LOCK`), and decode
        while they wait.
    """

    preprocessing: Preprocessing
    batch_size: int
    device: str
    precision: str
    layout: str
    threads: int
    decode_workers: int
    max_pixels: int
    take_turns: bool = False


@dataclass
class ShardResult:
    """The features of one shard, as :meth:`~featx.store.StoreWriter.add` takes them.

    Attributes
    ----------
    number, stop : int
        The shard's number and :attr:`Shard.stop`.
    indices : list of int
        Candidates of the rows of *features*.
    features : dict of name -> ndarray (len(indices), D)
        Empty when no image of the shard could be decoded.
    failures : list of (candidate index, reason)
    seconds : float
        Time the worker spent on the shard.
    decode_wait : float
        Of *seconds*, the time the network waited for decoded images.
    """

    number: int
    stop: int
    indices: list[int]
    features: dict[str, np.ndarray]
    failures: list[tuple[int, str]]
    seconds: float
    decode_wait: float = 0.0


class ShardWorker:
    """Holds the truncated network once and extracts shards with it.

    Parameters
    ----------
    recipe : WorkerRecipe
    extractor : TruncatedNetwork
        The driver's network, weights included (so no node needs a weights
        cache); prepared here for the worker's device.
    images : ImageSource
        With an absolute root, the same path on every node.

    Raises
    ------
    DataError
        The data folder is not at its path on this node (no shared file system).
    """

    def __init__(self, recipe: WorkerRecipe, extractor: TruncatedNetwork, images: ImageSource) -> None:
        images.check_available()
        self.recipe = recipe
        self.images = images
        # One pool for every shard: its processes start once, and decode the next shard ahead.
        self.decoder = DecodePool(
            images,
            recipe.preprocessing,
            batch_size=recipe.batch_size,
            workers=recipe.decode_workers,
            max_pixels=recipe.max_pixels,
        )
        torch.set_num_threads(recipe.threads)
        self.device = torch.device(recipe.device)
        self.extractor = prepare_extractor(extractor, self.device, recipe.precision, recipe.layout)
        self.joiner = BatchJoiner(self.device)

    def describe(self) -> str:
        """``"10.0.0.5 pid 123, cpu, 2 threads"``: where the worker runs (and its niceness, if not 0)."""
        where = f"{socket.gethostname()} pid {os.getpid()}"
        niceness = os.nice(0) if hasattr(os, "nice") else 0
        if niceness:
            # A cluster started with Ray's default (15): the network yields to other work on the node.
            where += f", niceness {niceness}"
        if self.device.type == "cuda":
            return f"{where}, {torch.cuda.get_device_name(self.device)}"
        return f"{where}, cpu, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"

    def extract(self, shard: Shard, then: Shard | None = None) -> ShardResult:
        """Decode the shard's images and run them through the network, batch by batch.

        *then*, the shard the driver will give this worker next, is decoded
        ahead while the network runs the last batches of *shard*.
        """
        started = time.perf_counter()
        recipe = self.recipe
        pool = self.decoder
        if not pool.starts_with(shard.number):
            # Not decoded ahead (the first shard, or the driver changed its plan): what is queued is stale.
            pool.discard()
            pool.schedule(shard.number, shard.indices)
        if then is not None:
            pool.schedule(then.number, then.indices)
        indices: list[int] = []
        failures: list[tuple[int, str]] = []
        outputs: dict[str, list[np.ndarray]] = {}
        waited = 0.0
        with torch.inference_mode():
            for _ in range(-(-len(shard.indices) // recipe.batch_size)):
                asked = time.perf_counter()
                chunks = pool.take()
                waited += time.perf_counter() - asked
                with self._turn():
                    done, failed, batch = run_batch(
                        self.extractor, self.joiner, chunks, self.device, recipe.precision, pool.dataset.source.ids
                    )
                indices += done
                failures += failed
                for name, value in batch.items():
                    outputs.setdefault(name, []).append(value)
        features = {name: np.concatenate(parts) for name, parts in outputs.items()}
        seconds = time.perf_counter() - started
        return ShardResult(shard.number, shard.stop, indices, features, failures, seconds, waited)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """The network to itself among the workers of this node, when they take turns."""
        if not self.recipe.take_turns or fcntl is None:
            yield
            return
        # Opened for each batch, so that no decoding process (forked between batches) holds it.
        fd = os.open(TURN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
