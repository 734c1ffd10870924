"""What an extraction engine is: the :class:`Engine` interface, the job it runs and what it returns.

The local engine (:class:`~featx.extraction._engine.LocalEngine`) and the Ray
engine (:class:`~featx.extraction._ray.RayEngine`) implement it;
:func:`~featx.extraction.extract_features` knows no other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from ..store import StoreWriter
    from ._config import ExtractConfig, WorkerThroughput
    from ._image_source import ImageSource
    from ._network import FeatureNetwork, ForwardConfig, TruncatedNetwork

__all__ = ["Engine", "EngineRun", "ExtractionJob"]


@dataclass
class ExtractionJob:
    """What an engine runs: the images still to do, through a network, into a store.

    Attributes
    ----------
    config : ExtractConfig
    source : ImageSource
    network : FeatureNetwork
        The model and its resolved recipe.
    truncated : TruncatedNetwork
        The network cut after the deepest layer still to do, running
        ``forward.micro_batch`` images per pass (not yet moved to the device).
    writer : StoreWriter
        Says what is left (``writer.plan.remaining``) and takes the rows.
    forward : ForwardConfig
    """

    config: ExtractConfig
    source: ImageSource
    network: FeatureNetwork
    truncated: TruncatedNetwork
    writer: StoreWriter
    forward: ForwardConfig


@dataclass
class EngineRun:
    """What an engine did.

    Attributes
    ----------
    failed : list of (id, reason)
    images : int
        Images processed.
    seconds : float
        From the call of :meth:`Engine.run` (the network and its forward
        configuration ready) to the finished store.
    workers : list of WorkerThroughput
        What each worker did (Ray).
    retried_shards : int
        Shards handed out again after a worker failed on them (Ray).
    """

    failed: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    workers: list[WorkerThroughput] = field(default_factory=list)
    retried_shards: int = 0


class Engine(Protocol):
    """Runs an extraction's network over the images still to do and writes the rows into the store.

    Made from the configuration (:data:`ENGINE_FACTORIES`) before any work,
    so that an unusable engine (no GPU, a cluster that cannot be joined) is a
    one-line error then.

    Attributes
    ----------
    device : torch.device
        Where the network runs.
    can_autotune : bool
        Whether the forward configuration can be measured here (the Ray
        engine's driver may lack the GPUs its workers run on).
    """

    device: torch.device
    can_autotune: bool

    def start(self) -> None:
        """Called once the store is locked, before the network is built: start what takes long to start."""

    def before_measuring(self) -> None:
        """Called just before the forward configuration is measured: let nothing else share the cores then."""

    def run(self, job: ExtractionJob) -> EngineRun:
        """Extract ``job.writer.plan.remaining`` into the store and finish it."""

    def close(self) -> None:
        """Release what the engine holds (workers, a cluster connection), whatever happened."""
