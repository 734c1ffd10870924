"""Images -> features, batch after batch: the one loop every way of extracting runs.

:class:`FeatureStream` decodes the images of a source (in worker processes),
runs each batch through a prepared network and yields the pooled features.
The local engine writes what it yields into a store; the
:class:`~featx.extraction.FeatureExtractor` transformer keeps it in memory.
Both therefore compute the same numbers for the same recipe, forward
configuration and batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._images import MAX_IMAGE_PIXELS
from ._loader import BatchJoiner, ImageLoader, run_batch
from ._network import TruncatedNetwork
from ._preprocessing import Preprocessing
from ._image_source import ImageSource

__all__ = ["FeatureBatch", "FeatureStream"]


@dataclass
class FeatureBatch:
    """The features of one batch.

    Attributes
    ----------
    indices : list of int
        Source indices of the rows of *features*, increasing.
    failures : list of (int, str)
        Source index and reason of each image that could not be used.
    features : dict of name -> ndarray (len(indices), D)
        Empty when no image of the batch could be used.
    """

    indices: list[int]
    failures: list[tuple[int, str]]
    features: dict[str, np.ndarray]

    @property
    def stop(self) -> int:
        """One past the last source index the batch covered (used or failed)."""
        return max([*self.indices, *(i for i, _ in self.failures)]) + 1

    def __len__(self) -> int:
        return len(self.indices) + len(self.failures)


class FeatureStream:
    """Decode images of a source and run them through a network, batch by batch.

    Iterating yields a :class:`FeatureBatch` per batch of *batch_size* source indices.

    Parameters
    ----------
    network : TruncatedNetwork
        Prepared for *device* (:func:`~featx.extraction._network.prepare_extractor`).
    source : ImageSource
    preprocessing : Preprocessing
    indices : sequence of int
        Source indices, increasing.
    batch_size, workers : int
        Images per batch; decoding processes (0: decode in this process).
    device : torch.device
    precision : str
    max_pixels : int
    decode : {'cpu', 'gpu'}
        Where JPEGs are decoded (see :class:`~featx.extraction._loader.ImageLoader`).
    """

    def __init__(
        self,
        network: TruncatedNetwork,
        source: ImageSource,
        preprocessing: Preprocessing,
        *,
        indices: Sequence[int],
        batch_size: int,
        workers: int,
        device: torch.device,
        precision: str,
        max_pixels: int = MAX_IMAGE_PIXELS,
        decode: str = "cpu",
    ) -> None:
        self.network = network
        self.device = device
        self.precision = precision
        self.ids = source.ids  # seeds of random views
        self.loader = ImageLoader(
            source,
            preprocessing,
            indices=indices,
            batch_size=batch_size,
            workers=workers,
            device=device,
            max_pixels=max_pixels,
            decode=decode,
        )

    def __iter__(self) -> Iterator[FeatureBatch]:
        joiner = BatchJoiner(self.device)
        for chunks in self.loader:
            with torch.inference_mode():
                done, failures, features = run_batch(
                    self.network, joiner, chunks, self.device, self.precision, self.ids
                )
            yield FeatureBatch(done, failures, features)

    @property
    def refused_on_gpu(self) -> int:
        """JPEGs the GPU's decoder refused, decoded on the CPU instead."""
        decoder = self.loader.gpu_decoder
        return decoder.refused if decoder is not None else 0
