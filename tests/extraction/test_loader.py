"""The engine's input pipeline (featx.extraction ImageLoader, BatchJoiner) and its CPU settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from featx.extraction import load_model
from featx.extraction._folder import discover_images
from featx.extraction._images import load_image
from featx.extraction._loader import BatchJoiner, ImageLoader, default_workers
from featx.store import open_store

CPU = torch.device("cpu")


def _niceness(image) -> torch.Tensor:
    """A 'preprocessing' that reports the niceness of the process running it."""
    return torch.full((1,), float(os.nice(0)))


@pytest.fixture
def broken_dataset(small_dataset: Path) -> Path:
    """The 12 real JPEGs plus an empty file that fails to decode."""
    (small_dataset / "train" / "ants" / "0-empty.jpg").write_bytes(b"")
    return small_dataset


def test_workers_decode_a_chunk_of_each_batch_in_order(broken_dataset):
    collection = discover_images(broken_dataset)
    preprocessing = load_model("resnet18", weights="none", image_size=32).preprocessing
    loader = ImageLoader(collection, preprocessing, indices=range(len(collection)), batch_size=5, workers=2, device=CPU)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [[chunk.indices + [i for i, _ in chunk.failures] for chunk in b] for b in batches] == [
        [[1, 2, 0], [3, 4]],  # the empty file (index 0) fails: kept aside with its reason
        [[5, 6, 7], [8, 9]],
        [[10, 11, 12]],
    ]
    assert batches[0][0].failures == [(0, "empty file (0 bytes)")]
    # Stacked in the worker straight into shared memory: nothing copies it on the way.
    assert all(chunk.pixels.is_shared() for chunks in batches for chunk in chunks)
    joined = BatchJoiner(CPU)([chunk.pixels for chunk in batches[1]])
    expected = torch.stack([preprocessing(load_image(collection.path(i))) for i in range(5, 10)])
    assert torch.equal(joined, expected)


def test_decoding_workers_yield_the_cpu_to_the_network(small_dataset):
    collection = discover_images(small_dataset)
    loader = ImageLoader(collection, _niceness, indices=range(4), batch_size=4, workers=2, device=CPU)
    ((first, second),) = list(loader)
    expected = min(19, os.nice(0) + 19)
    assert torch.cat([first.pixels, second.pixels]).flatten().tolist() == [expected] * 4


def test_without_workers_a_batch_is_one_chunk_decoded_here(small_dataset):
    collection = discover_images(small_dataset)
    loader = ImageLoader(collection, _niceness, indices=range(3, 10), batch_size=4, workers=0, device=CPU)
    batches = list(loader)
    assert [[chunk.indices for chunk in b] for b in batches] == [[[3, 4, 5, 6]], [[7, 8, 9]]]
    assert batches[0][0].pixels.flatten().tolist() == [float(os.nice(0))] * 4


def test_the_joiner_reuses_one_buffer_on_the_cpu():
    joiner = BatchJoiner(CPU)
    chunks = [torch.randn(3, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    first = joiner(chunks)
    assert torch.equal(first, torch.cat(chunks))
    pointer = first.data_ptr()
    second = joiner([torch.ones(2, 3, 8, 8), torch.zeros(1, 3, 8, 8)])
    assert second.data_ptr() == pointer and second.shape == (3, 3, 8, 8)
    assert torch.equal(second, torch.cat([torch.ones(2, 3, 8, 8), torch.zeros(1, 3, 8, 8)]))
    alone = torch.randn(4, 3, 8, 8)
    assert joiner([alone]) is alone  # one chunk: nothing to copy


def test_outputs_that_view_the_reused_buffer_are_copied():
    joiner = BatchJoiner(CPU)
    batch = joiner([torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)])
    view = joiner.detach(batch.flatten(1))
    computed = joiner.detach(batch.mean(dim=(2, 3)))
    assert not np.may_share_memory(view, batch.numpy())
    np.testing.assert_array_equal(view, batch.flatten(1).numpy())
    joiner([torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)])  # the next batch overwrites the buffer
    assert view.any() and computed.any()


def test_one_decoding_worker_per_core_up_to_16():
    assert default_workers(CPU) == min(16, len(os.sched_getaffinity(0)))


def test_features_do_not_depend_on_the_number_of_workers(broken_dataset, tmp_path):
    from conftest import quick_extract

    stores = {
        workers: quick_extract(broken_dataset, tmp_path / f"w{workers}.h5", batch_size=5, workers=workers).path
        for workers in (0, 1, 3)
    }
    with open_store(stores[0]) as reference:
        assert len(reference) == 12 and reference.failed["id"].tolist() == ["train/ants/0-empty.jpg"]
        for workers in (1, 3):
            with open_store(stores[workers]) as store:
                assert store.ids.tolist() == reference.ids.tolist()
                for layer in reference.layers:
                    np.testing.assert_array_equal(store.features(layer), reference.features(layer))
