"""The Ray engine: shards of the image list on Ray actors, one store written by the driver.

Design
------
The driver (the process that runs ``extract``) does everything the local
engine does up to the forward loop: it checks the configuration, loads the
model, asks the store writer what is left to do and builds the truncated
network.  Ray and the workers start earlier, as soon as the store is locked
(:meth:`RayEngine.start`): each worker is a new Python process that imports
torch and featx (several seconds), which then overlaps the driver's model
loading.  An autotuning measurement waits until the workers are up
(:meth:`RayEngine.before_measuring`): it times the network, and must not
share the cores with their imports.  Then, instead of running the network itself:

1. The images still to do are cut into shards of whole batches
   (:func:`~featx.extraction._shards.plan_shards`: at multiples of the batch
   size, a few shards per worker, at most 64 batches or 256 MiB of features).
2. The ``--ray-workers`` Ray actors (:class:`~featx.extraction._shards.ShardWorker`)
   each get the driver's network once through the object store (``ray.put``:
   no node needs a weights cache or network access), with their first shard,
   together with the recipe that holds the driver's choice of images per pass
   and memory layout (made after the actors started), so every worker
   computes the local engine's bits.  Each worker decodes its shards' images itself, on
   its node's cores (no driver bottleneck), in decoding processes it starts
   once (:class:`~featx.extraction._loader.DecodePool`), and returns the pooled
   features through Ray's object store.  The driver names each worker's next
   shard with its current one, so the worker decodes the first batches of
   the next shard while its network runs the last ones of the current shard:
   a shard boundary costs a call, not a batch decoded while the network waits.
3. The driver keeps the one :class:`~featx.store.StoreWriter` and adds the
   shards in order (finished shards that overtake a slower one wait in a
   bounded buffer), so the store format, its crash safety and resuming are
   exactly the local engine's: a killed driver loses the shards in flight,
   and the same command resumes after the last committed part.

Faults: an actor killed mid-shard is restarted by Ray (``max_restarts=-1``)
and its shard handed out again; a shard that fails :data:`SHARD_ATTEMPTS`
times (an error, or a worker that dies on it) stops the run with one line
naming the shard, its images and the last error, after the shards before it
are committed.

Why k GPUs should give about k times one GPU's images/s: each worker decodes its own images on its
own node's cores, which is what limits one GPU, so decoding grows with the
workers; the driver only appends features, about 8 KiB an image for
ResNet-50's ``penultimate`` (tens of MB/s for several GPUs, far below what
HDF5 appends on one disk), so it is no bottleneck; a worker gets its next
shard as soon as it returns one, and the last shards are small next to the
run (a few shards per worker), so workers finish together.  What a run pays
that the local engine does not: Ray's start (a local instance), the part of
each worker's start (a Python process importing torch) that the driver's
model loading does not cover, and the network fetched from the object store,
a few seconds in all.  The run's seconds count from the network and forward
configuration being ready (the local engine's instant too) to the finished
store, so what the workers still need then is in them.

On the CPU every worker runs the driver's number of threads (bit for bit), so
workers that share a node's cores (``--ray-workers 2`` on 2 cores) would run
networks whose threads stall each other at every operation's barrier; such
workers take turns on the network, batch by batch (``take_turns``), and
decode while they wait.  A local Ray instance starts its workers at niceness
0, like the local engine's process (Ray's default is 15, which would leave the
network little more CPU than its decoding processes at 19).

Cluster setups: every node must be able to open the images as the driver's
image source describes them (:meth:`~featx.extraction.ImageSource.portable`:
a folder at the same absolute path on every node, or URLs that every node
reads itself); only the driver reads and writes the store.  Nodes need featx with the same torch and
torchvision as the driver (same Python and Ray, as Ray itself requires).
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass

import ray
import ray.exceptions
import torch
from tqdm.auto import tqdm

from ..errors import ClusterError, DataError, message, option
from ._config import ExtractConfig, WorkerThroughput
from ._job import EngineRun, ExtractionJob
from ._shards import Shard, ShardResult, ShardWorker, WorkerRecipe, batches_per_shard, plan_shards

__all__ = ["SHARD_ATTEMPTS", "RayEngine"]

log = logging.getLogger("featx")

#: Times a shard is tried (errors and dead workers) before the run stops.
SHARD_ATTEMPTS = 3
# How long connecting to --ray-address may take before it is reported unreachable.
_PROBE_SECONDS = 5.0
# How long the run waits for the first worker to start: on a cluster an
# autoscaler may add nodes first; a local instance has the resources at once.
_WORKER_START_SECONDS = 600.0
_LOCAL_WORKER_START_SECONDS = 120.0
# Ray's default ports: the GCS of `ray start --head`, and the Ray Client server.
_GCS_PORT = 6379
_CLIENT_PORT = 10001


@dataclass(frozen=True)
class _Resources:
    """What a Ray cluster (or this machine, for a local instance) has."""

    cpus: float
    gpus: float
    nodes: int
    node_cpus: float  # of the largest node
    node_gpus: float

    def describe(self) -> str:
        return f"{self.gpus:g} GPU(s) and {self.cpus:g} CPU(s) on {self.nodes} node(s)"

    @classmethod
    def of_ray(cls) -> _Resources:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        return cls(
            cpus=sum(n.get("CPU", 0.0) for n in nodes),
            gpus=sum(n.get("GPU", 0.0) for n in nodes),
            nodes=len(nodes),
            node_cpus=max((n.get("CPU", 0.0) for n in nodes), default=0.0),
            node_gpus=max((n.get("GPU", 0.0) for n in nodes), default=0.0),
        )

    @classmethod
    def of_this_machine(cls) -> _Resources:
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        gpus = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
        return cls(cpus=cpus, gpus=gpus, nodes=1, node_cpus=cpus, node_gpus=gpus)


@dataclass(frozen=True)
class _WorkerPlan:
    workers: int
    cpus: float  # Ray resources of each worker
    gpus: float
    device: str  # 'cpu' or 'cuda'
    threads: int
    decode_workers: int

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU(s)" + (f" and {self.gpus:g} GPU(s)" if self.gpus else "")
        turns = ", taking turns on the network" if self.take_turns else ""
        return (
            f"{self.workers} Ray worker(s) of {each} each, on {self.device}, {self.threads} thread(s), "
            f"{self.decode_workers} decoding process(es){turns}"
        )

    @property
    def take_turns(self) -> bool:
        """Whether the workers run more threads than the cores they reserve, so share them with each other."""
        return self.device == "cpu" and self.cpus < self.threads


def _plan_workers(config: ExtractConfig, have: _Resources, threads: int) -> _WorkerPlan:
    """Workers, their resources and device, from the configuration and what the cluster has."""
    gpus = config.gpus_per_worker
    if gpus is not None and float(gpus).is_integer():
        gpus = int(gpus)  # messages say --gpus-per-worker 1, not 1.0
    if gpus is None:
        gpus = 0.0 if config.device == "cpu" else 1.0 if config.device == "cuda" or have.gpus >= 1 else 0.0
    if gpus > 0:
        if have.gpus == 0:
            raise ClusterError(
                message(
                    f"{option('gpus_per_worker', gpus)} needs GPUs, and the Ray cluster has none",
                    hint=f"it has {have.describe()}; leave out {option('gpus_per_worker')} to run on the CPUs",
                )
            )
        if gpus > have.node_gpus:
            raise ClusterError(
                message(
                    f"{option('gpus_per_worker', gpus)} needs {gpus:g} GPUs on one node",
                    hint=f"the largest node of the Ray cluster has {have.node_gpus:g} ({have.describe()} in all)",
                )
            )
    if config.ray_workers is not None:
        workers = config.ray_workers
    elif gpus > 0:
        workers = max(1, int(have.gpus // gpus))
    else:
        workers = max(1, int(have.cpus // threads))
    if gpus > 0 and workers * gpus > have.gpus:
        raise ClusterError(
            message(
                f"{option('ray_workers', workers)} with {option('gpus_per_worker', gpus)} needs {workers * gpus:g} GPUs",
                hint=f"the Ray cluster has {have.describe()}; ask for fewer workers",
            )
        )
    share = have.cpus / workers
    cpus = math.floor(share) if share >= 1 else round(share, 4)
    if gpus == 0:
        # On the CPU every worker runs the driver's number of threads: the last
        # bits of some kernels depend on it.  It reserves that many cores where
        # the cluster has them, else its share.
        cpus = min(threads, cpus)
    else:
        threads = max(1, int(cpus))
    cpus = min(cpus, have.node_cpus) or round(share, 4)
    decode = config.workers if config.workers is not None else min(16, max(1, int(cpus)))
    return _WorkerPlan(workers, cpus, gpus, "cuda" if gpus > 0 else "cpu", threads, decode)


def _check_reachable(address: str) -> None:
    """Fail within :data:`_PROBE_SECONDS` when nothing listens at *address* (``host:port``, ``ray://host:port``)."""
    if address == "auto":
        return  # Ray looks up the cluster this machine runs; it fails at once when there is none.
    client = address.startswith("ray://")
    rest = address[len("ray://") :] if client else address
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        port_number = int(port) if port else (_CLIENT_PORT if client else _GCS_PORT)
    except ValueError:
        raise ClusterError(
            message(option("ray_address"), allowed="HOST:PORT, ray://HOST:PORT or auto", got=address)
        ) from None
    try:
        with socket.create_connection((host.strip("[]"), port_number), timeout=_PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = "no answer within 5 s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterError(
            message(
                f"cannot reach the Ray cluster at {host}:{port_number} ({reason})",
                hint=f"start one with `ray start --head` and pass the address it prints, or leave out "
                f"{option('ray_address')} to start Ray on this machine",
            )
        ) from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _error_of(exc: BaseException) -> str:
    """One line for what went wrong on a worker: the original exception, not Ray's wrapping."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {_first_line(cause)}"
    if isinstance(exc, ray.exceptions.ActorDiedError) and getattr(exc, "actor_init_failed", False):
        # The worker's constructor raised: its exception is the traceback's last line.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[-1] if lines else type(exc).__name__
    if isinstance(exc, ray.exceptions.RayActorError):
        return "the Ray worker died (its process was killed or crashed)"
    return f"{type(exc).__name__}: {_first_line(exc)}"


class _RayShardWorker(ShardWorker):
    """A :class:`ShardWorker` that starts before the driver's network exists and gets it with its first shard.

    The actor is created as soon as Ray is up, with only what the cluster
    plan knows (device, threads), so its process imports torch and featx
    while the driver builds its network and chooses the forward
    configuration.  The recipe (with that configuration), the network and
    the image list come as object references with every call (in a list,
    which Ray leaves as it is) and are fetched on first use, so a worker
    that Ray restarted fetches them again by itself; none is a constructor
    argument, which Ray warns about for restartable actors.
    """

    def __init__(self, device: str, threads: int) -> None:
        self.device = torch.device(device)
        torch.set_num_threads(threads)
        self.loaded = False

    def ready(self) -> str:
        """Where the worker runs (:meth:`ShardWorker.describe`); returns once its process has imported featx."""
        return super().describe()

    def _load(self, shared: list) -> None:
        if not self.loaded:
            recipe, extractor, images = ray.get(shared)
            super().__init__(recipe, extractor, images)
            self.loaded = True

    def extract(self, shard: Shard, shared: list, then: Shard | None = None) -> ShardResult:
        self._load(shared)
        return super().extract(shard, then)


class RayEngine:
    """The Ray engine: the cluster an extraction runs on, checked before any work (:class:`~featx.extraction._engine.Engine`).

    Made by :meth:`connect` at the start of an extraction: Ray is joined at
    ``--ray-address`` (or, when this process already runs Ray, used as it
    is), or, without an address, a local Ray instance over this machine's
    cores and GPUs is planned (and started by :meth:`start`).  The workers'
    number, resources and device are worked out here, so that a cluster
    without the GPUs asked for is a one-line error before a model is loaded.

    Attributes
    ----------
    device : torch.device
        Where the workers run the network (``cpu`` or ``cuda``).
    """

    def __init__(self, plan: _WorkerPlan, resources: _Resources, *, start_local: bool, disconnect: bool) -> None:
        self.plan = plan
        self.resources = resources
        self.device = torch.device(plan.device)
        self._start_local = start_local
        self._disconnect = disconnect
        self._workers: _Workers | None = None

    @classmethod
    def connect(cls, config: ExtractConfig) -> RayEngine:
        """Join (or plan) the cluster of *config* and plan its workers.

        Raises
        ------
        ClusterError
            ``--ray-address`` cannot be reached or joined, or the cluster lacks
            the GPUs asked for.
        """
        threads = torch.get_num_threads()
        if config.ray_address is not None:
            _check_reachable(config.ray_address)
        if ray.is_initialized():
            # This process runs Ray already (a caller's ray.init): its cluster is used as it is.
            log.info("using the Ray instance this process already runs")
            have = _Resources.of_ray()
            return cls(_plan_workers(config, have, threads), have, start_local=False, disconnect=False)
        if config.ray_address is None:
            have = _Resources.of_this_machine()
            return cls(_plan_workers(config, have, threads), have, start_local=True, disconnect=False)
        # Something that answers but is no Ray cluster makes Ray's C++ client retry for
        # about 20 s, logging a line a second: the one line below says it (unless asked otherwise).
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        try:
            ray.init(address=config.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
            raise ClusterError(
                message(f"cannot join the Ray cluster at '{config.ray_address}'", hint=_first_line(exc))
            ) from None
        try:
            have = _Resources.of_ray()
            return cls(_plan_workers(config, have, threads), have, start_local=False, disconnect=True)
        except BaseException:
            ray.shutdown()
            raise

    @property
    def can_autotune(self) -> bool:
        """Whether the driver can time the workers' network: not when they run on GPUs it lacks."""
        return self.device.type != "cuda" or torch.cuda.is_available()

    def _start_ray(self) -> None:
        if self._start_local and not ray.is_initialized():
            started = time.perf_counter()
            ray.init(
                address="local",
                num_cpus=int(self.resources.cpus),
                num_gpus=int(self.resources.gpus),
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                # Ray starts its workers at niceness 15 by default.  Here they are the extraction:
                # at 15 their network threads would yield to any other work (and share the
                # cores almost evenly with their decoding processes at 19), where the local
                # engine runs its network at 0 and decodes at 19.
                _system_config={"worker_niceness": 0},
            )
            self._disconnect = True
            log.info(f"started a local Ray instance ({self.resources.describe()}) in {time.perf_counter() - started:.1f} s")

    def start(self) -> None:
        """Start Ray (a local instance) and the workers, without waiting for them.

        Called by the engine as soon as the store is locked, before the driver
        builds its network and chooses the forward configuration: each
        worker's process (a new Python process importing torch and featx,
        several seconds) starts meanwhile.  The workers get the network, the
        image list and the recipe (that configuration included) with their
        first shard (:meth:`run`).  :meth:`close` stops them.
        """
        if self._workers is not None:
            return
        self._start_ray()
        plan = self.plan
        token = uuid.uuid4().hex[:8]
        worker_class = ray.remote(_RayShardWorker)
        actors = [
            worker_class.options(
                name=f"featx-{token}-worker-{i}",
                num_cpus=plan.cpus,
                num_gpus=plan.gpus,
                # A killed worker comes back; its shard is handed out again by the
                # driver, which counts the attempts (SHARD_ATTEMPTS).
                max_restarts=-1,
                max_task_retries=0,
                scheduling_strategy="SPREAD",
            ).remote(plan.device, plan.threads)
            for i in range(plan.workers)
        ]
        self._workers = _Workers(actors, [_ready(actor) for actor in actors], time.perf_counter())
        log.debug(f"{len(actors)} Ray worker(s) starting")

    def before_measuring(self) -> None:
        """Wait for every worker's process to be up (or to have failed: :meth:`run` reports it).

        The engine calls it before it autotunes: a measurement of the network's
        speed must not share the cores with the workers' imports.
        """
        if self._workers is None:
            return
        waited = time.perf_counter()
        refs = self._workers.ready
        timeout = _LOCAL_WORKER_START_SECONDS if self._start_local else _WORKER_START_SECONDS
        up, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        log.debug(
            f"{len(up)} of {len(refs)} Ray worker(s) up after a wait of {time.perf_counter() - waited:.2f} s: autotuning now"
        )

    def close(self) -> None:
        """Stop the workers, and the local Ray instance or the connection this cluster opened."""
        if self._workers is not None and ray.is_initialized():
            for actor in self._workers.actors:
                ray.kill(actor, no_restart=True)
        self._workers = None
        if self._disconnect and ray.is_initialized():
            ray.shutdown()

    def run(self, job: ExtractionJob) -> EngineRun:
        """Extract ``job.writer.plan.remaining`` on the workers into the store; the Ray engine's counterpart of the local run.

        Starts the workers if :meth:`start` has not; stops them and Ray
        (:meth:`close`) however it ends.  The seconds count from this call
        (the driver's network and forward configuration ready, the local
        engine's instant too) to the finished store: whatever the workers
        still need to start is in them; starting a local Ray instance is not
        (unless :meth:`start` was not called).

        Raises
        ------
        ClusterError
            A worker could not start, or a shard failed :data:`SHARD_ATTEMPTS` times;
            every shard before it is committed.
        """
        started = time.perf_counter()
        try:
            if self._workers is None:
                self.start()
                started = time.perf_counter()  # after the local Ray instance's start; the workers' is in it
            run = _Run(self.plan, job, self._workers)
            seconds = _LOCAL_WORKER_START_SECONDS if self._start_local else _WORKER_START_SECONDS
            done = run.extract(seconds)
            done.seconds = time.perf_counter() - started
            return done
        finally:
            self.close()


def _ready(actor) -> ray.ObjectRef:
    """A call that returns once *actor* is up: retried while Ray restarts it, failed if it is dead for good."""
    return actor.ready.options(max_task_retries=-1).remote()


@dataclass
class _Workers:
    """The actors of a run, the calls that return once each is up, and when they were created."""

    actors: list
    ready: list
    created: float


@dataclass
class _Run:
    """One extraction on the workers: hands out shards, commits them in order."""

    plan: _WorkerPlan
    job: ExtractionJob
    workers: _Workers

    def __post_init__(self) -> None:
        config, writer = self.job.config, self.job.writer
        batch_bytes = config.batch_size * sum(spec.dim * 4 for spec in writer.plan.todo)
        remaining = writer.plan.remaining
        n_batches = -(-len(remaining) // config.batch_size)
        batches = batches_per_shard(n_batches, self.plan.workers, batch_bytes)
        self.shards = plan_shards(remaining, config.batch_size, batches)

    def _share(self) -> None:
        """Put the recipe, the network and the image list in the object store: the workers fetch them with their first shard."""
        plan, job = self.plan, self.job
        recipe = WorkerRecipe(
            preprocessing=job.network.preprocessing,
            batch_size=job.config.batch_size,
            device=plan.device,
            precision=job.network.precision,
            layout=job.forward.layout,
            threads=plan.threads,
            decode_workers=plan.decode_workers,
            max_pixels=job.config.max_pixels,
            take_turns=plan.take_turns,
        )
        # Portable: the workers' working folder (or node) is not the driver's.
        images = job.source.portable()
        put = time.perf_counter()
        self.shared = [ray.put(recipe), ray.put(job.truncated), ray.put(images)]
        log.debug(f"network and image list put in the object store in {time.perf_counter() - put:.2f} s")

    def extract(self, start_seconds: float) -> EngineRun:
        writer, collection = self.job.writer, self.job.source
        started = time.perf_counter()
        if not self.shards:  # every image is in committed parts: only the final file is left
            writer.finish()
            return EngineRun()
        log.info(f"{self.plan.describe()}; {len(self.shards)} shard(s) of up to {len(self.shards[0].indices)} images")
        self._share()
        actors = self.workers.actors
        names = [f"worker {i}" for i in range(len(actors))]
        busy = [0.0] * len(actors)
        images = [0] * len(actors)
        # ref -> (worker, shard); shard None for a worker's ready() call: it takes shards once that returns.
        waiting: dict = {ref: (i, None) for i, ref in enumerate(self.workers.ready)}
        idle: list[int] = []
        todo = [(shard.number, shard) for shard in self.shards]  # a heap: retried shards first
        # worker -> the shard it gets next, named with its current one so that it decodes it ahead.
        upcoming: dict[int, Shard] = {}
        done: dict[int, ShardResult] = {}
        attempts = [0] * len(self.shards)
        errors: dict[int, str] = {}
        failing: Shard | None = None
        retried = 0
        committed = 0
        failed: list[tuple[str, str]] = []
        processed = 0
        # Shards past the next one to commit that may be in flight or wait in `done`.
        window = 2 * len(actors) + 2
        any_ready = False
        bar = tqdm(
            total=len(collection),
            initial=len(collection) - len(writer.plan.remaining),
            unit="img",
            desc=f"{self.job.network.recipe.model} {','.join(s.name for s in writer.plan.todo)} ({len(actors)} Ray workers)",
            disable=not self.job.config.progress,
            dynamic_ncols=True,
        )
        try:
            while committed < len(self.shards):
                if failing is not None and committed >= failing.number:
                    raise ClusterError(
                        message(
                            f"{failing.describe(collection.ids)} failed {attempts[failing.number]} times on the Ray workers",
                            hint=f"last error: {errors[failing.number]}; the images before it are saved, "
                            "and the same command resumes from them",
                        )
                    )
                # Shards from this number on wait: the buffer of finished shards is full, or one before keeps failing.
                limit = committed + window if failing is None else min(committed + window, failing.number)
                for worker in list(idle):
                    shard = upcoming.pop(worker, None)
                    if shard is not None and shard.number >= limit:
                        heapq.heappush(todo, (shard.number, shard))
                        shard = None
                    if shard is None:
                        if not (todo and todo[0][0] < limit):
                            continue
                        _, shard = heapq.heappop(todo)
                    if todo and todo[0][0] < limit:
                        upcoming[worker] = heapq.heappop(todo)[1]
                    idle.remove(worker)
                    then = upcoming.get(worker)
                    waiting[actors[worker].extract.remote(shard, self.shared, then)] = (worker, shard)
                ready, _ = ray.wait(list(waiting), num_returns=1, timeout=30.0)
                if not ready:
                    if not any_ready and time.perf_counter() - self.workers.created > start_seconds:
                        raise ClusterError(
                            message(
                                f"no Ray worker started within {start_seconds:.0f} s",
                                hint=f"each needs {self.plan.describe()}; see `ray status` for what is free",
                            )
                        )
                    continue
                worker, shard = waiting.pop(ready[0])
                try:
                    value = ray.get(ready[0])
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                    error = _error_of(exc)
                    # A worker that cannot see the data folder (a DataError when it takes in the network
                    # and image list with its first shard) would fail every shard: the run stops now.
                    if shard is None or isinstance(getattr(exc, "cause", None), DataError):
                        raise ClusterError(message(f"Ray {names[worker]} could not start", hint=error)) from None
                    attempts[shard.number] += 1
                    errors[shard.number] = error
                    log.warning(f"{shard.describe(collection.ids)} failed on {names[worker]} ({error}); attempt {attempts[shard.number]} of {SHARD_ATTEMPTS}")
                    if attempts[shard.number] >= SHARD_ATTEMPTS:
                        if failing is None or shard.number < failing.number:
                            failing = shard
                    else:
                        retried += 1
                        heapq.heappush(todo, (shard.number, shard))
                    if isinstance(exc, ray.exceptions.RayActorError):
                        # Ray restarts the worker; it takes shards again once it answers,
                        # and the shard it was to get next goes to whichever worker is free first.
                        if worker in upcoming:
                            reserved = upcoming.pop(worker)
                            heapq.heappush(todo, (reserved.number, reserved))
                        waiting[_ready(actors[worker])] = (worker, None)
                    else:
                        idle.append(worker)
                    continue
                idle.append(worker)
                if shard is None:
                    names[worker] = f"worker {worker} ({value})"
                    any_ready = True
                    log.debug(
                        f"{names[worker]} ready {time.perf_counter() - self.workers.created:.2f} s after it was created, "
                        f"{time.perf_counter() - started:.2f} s after the run started"
                    )
                    continue
                log.debug(
                    f"shard {shard.number} from {names[worker]} at {time.perf_counter() - started:.2f} s: "
                    f"{value.seconds:.2f} s, {value.decode_wait:.2f} s of it waiting for decoded images"
                )
                busy[worker] += value.seconds
                images[worker] += len(shard.indices)
                bar.update(len(shard.indices))
                done[value.number] = value
                while committed in done:
                    result = done.pop(committed)
                    writer.add(stop=result.stop, indices=result.indices, features=result.features, failures=result.failures)
                    failed.extend((collection.ids[i], reason) for i, reason in result.failures)
                    processed += len(result.indices) + len(result.failures)
                    committed += 1
        except BaseException:
            bar.close()
            # Keep every shard added so far.
            try:
                writer.commit()
            except BaseException:
                writer.abort()
            raise
        bar.close()
        writer.finish()
        throughput = [
            WorkerThroughput(name=names[i], images=images[i], seconds=busy[i]) for i in range(len(actors)) if images[i]
        ]
        return EngineRun(failed=failed, images=processed, workers=throughput, retried_shards=retried)
