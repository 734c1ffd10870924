"""The Ray engine: the local engine's store bit for bit, with workers killed, a driver killed, a shard that fails.

One local Ray instance (2 CPUs, in a short temporary folder: Ray's socket
paths must stay under 107 characters) serves the whole module and is always
shut down.  Its workers run a setup hook that makes the network refuse images
of a single colour, so that one test has a shard that keeps failing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import copy_real_images, quick_extract
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'featx[ray]'): the Ray engine is not tested")

from featx.errors import ClusterError, ConfigError
from featx.extraction import ExtractConfig, format_extraction, load_model
from featx.extraction._folder import discover_images
from featx.extraction._images import load_image
from featx.extraction._loader import DecodePool
from featx.store import StoreWriter, open_store, recorded_attrs

# Attributes that differ between two runs by design.
RUN_ATTRS = {"created_utc"}
# The configuration of every run here (batches of 2: a dozen images make six shards).
# fp32: the tests compare configurations whose default (blocked) is not channels_last, which bf16's is.
SETTINGS = {"batch_size": 2, "autotune": False, "checkpoint_seconds": 0, "precision": "fp32"}
# The store's record of how the network ran (ForwardConfig.ATTRS).
FORWARD_ATTRS = ("forward_micro_batch", "forward_layout", "forward_device")


def refuse_single_colour_images() -> None:
    """Ray workers' setup hook: the network raises on an image of one colour (the failing shard's)."""
    from featx.extraction._network import TruncatedNetwork

    forward = TruncatedNetwork.forward

    def forward_refusing_flat_images(self, pixels, ids=None):
        flat = pixels.flatten(2)
        if bool((flat.amax(2) == flat.amin(2)).all(1).any()):
            raise RuntimeError("injected failure: an image of one colour")
        return forward(self, pixels, ids)

    TruncatedNetwork.forward = forward_refusing_flat_images


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs; yields its address."""
    from ray import cloudpickle

    # The hook goes to the workers by value: they cannot import this test module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, _temp_dir=folder, logging_level="error",
            log_to_driver=False, runtime_env={"worker_process_setup_hook": refuse_single_colour_images},
        )
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory, hymenoptera) -> Path:
    """12 real JPEGs in train/val x ants/bees."""
    return copy_real_images(hymenoptera, tmp_path_factory.mktemp("ray-data") / "small")


@pytest.fixture(scope="module")
def local_store(images, tmp_path_factory) -> Path:
    """What the local engine writes for *images*."""
    path = tmp_path_factory.mktemp("ray-local") / "local.h5"
    quick_extract(images, path, **SETTINGS)
    return path


def assert_same_store(expected: Path, actual: Path) -> None:
    """Every group, dataset (values, dtype, shape) and attribute equal, bit for bit, but the creation time."""

    def contents(path: Path) -> dict:
        found = {}
        with h5py.File(path, "r") as f:

            def visit(name, obj):
                attrs = {k: v for k, v in obj.attrs.items() if k not in RUN_ATTRS and k not in ("DIMENSION_LIST", "REFERENCE_LIST")}
                data = obj[()] if isinstance(obj, h5py.Dataset) else None
                found[name] = (attrs, data)

            visit("/", f)
            f.visititems(visit)
        return found

    want, got = contents(expected), contents(actual)
    assert sorted(got) == sorted(want)
    for name, (attrs, data) in want.items():
        got_attrs, got_data = got[name]
        assert sorted(got_attrs) == sorted(attrs), name
        for key, value in attrs.items():
            assert np.array_equal(np.asarray(got_attrs[key]), np.asarray(value)), (name, key)
        if data is not None:
            assert got_data.dtype == data.dtype and got_data.shape == data.shape, name
            assert got_data.tobytes() == data.tobytes() if data.dtype.kind != "O" else list(got_data) == list(data), name


def test_two_workers_write_the_local_store_bit_for_bit(ray_cluster, images, local_store, tmp_path, run_cli):
    # A decoding process each (the local store decoded in-process): each worker's DecodePool decodes
    # its next shard ahead, and 2 workers of 2 threads on 2 CPUs take turns on the network.
    code, out, err = run_cli(
        "extract", "--data", images, "--out", tmp_path / "ray.h5", "--model", "resnet18", "--layer", "conv2",
        "--layer", "penultimate", "--weights", "none", "--image-size", 64, "--batch-size", 2, "--workers", 1,
        "--device", "cpu", "--no-autotune", "--checkpoint-seconds", 0, "--no-progress",
        "--engine", "ray", "--ray-workers", 2, "--precision", "fp32",  # as SETTINGS
    )
    assert code == 0, err
    assert_same_store(local_store, tmp_path / "ray.h5")
    # Each worker runs the driver's threads on 1 of the 2 CPUs: they share the cores.
    assert ("taking turns on the network" in err) == (torch.get_num_threads() > 1), err
    workers = [line for line in out.splitlines() if line.strip().startswith("worker ")]
    assert len(workers) == 2 and all("images/s" in line for line in workers)
    assert sum(int(line.split(": ")[1].split(" images")[0]) for line in workers) == 12


@contextlib.contextmanager
def featx_messages() -> Iterator[list[str]]:
    """The featx logger's messages while in the block, from DEBUG on (the CLI stops it propagating: caplog may miss them)."""
    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("featx")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_workers_started_before_autotuning_run_the_chosen_configuration_bit_for_bit(
    ray_cluster, images, local_store, tmp_path, monkeypatch
):
    monkeypatch.setenv("FEATX_AUTOTUNE", "1")
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    settings = {**SETTINGS, "autotune": True}
    with featx_messages() as messages:
        measured = quick_extract(images, tmp_path / "measured.h5", engine="ray", ray_workers=1, **settings)
    assert measured.rows == 12 and len(measured.workers) == 1
    # The driver measured only once its worker was up (started before the model was built).
    [up] = [i for i, line in enumerate(messages) if "Ray worker(s) up after a wait" in line]
    [tuned] = [i for i, line in enumerate(messages) if "autotuned in" in line]
    assert messages[up].startswith("1 of 1 Ray worker(s) up") and up < tuned
    # The local engine reuses the cached measurement: the same configuration and the same bits.
    local = quick_extract(images, tmp_path / "local-measured.h5", **settings)
    assert recorded_attrs(local.path, FORWARD_ATTRS) == recorded_attrs(measured.path, FORWARD_ATTRS)
    assert_same_store(local.path, measured.path)
    # Made to prefer a configuration with other bits than the default (one image per pass in
    # channels_last), both engines use it and record it: the workers run what the driver chose.
    [cache_file] = (tmp_path / "cache" / "autotune").glob("*.json")
    content = json.loads(cache_file.read_text())
    for candidate in content["candidates"]:
        chosen = (candidate["micro_batch"], candidate["layout"]) == (1, "channels_last")
        candidate["images_per_second"] = 1000.0 if chosen else 1.0
    cache_file.write_text(json.dumps(content))
    local = quick_extract(images, tmp_path / "local.h5", **settings)
    on_ray = quick_extract(images, tmp_path / "ray.h5", engine="ray", ray_workers=1, **settings)
    for path in (local.path, on_ray.path):
        assert recorded_attrs(path, FORWARD_ATTRS) == {
            "forward_micro_batch": 1, "forward_layout": "channels_last", "forward_device": "cpu",
        }
    assert_same_store(local.path, on_ray.path)
    # The configuration shows in the bits: workers that ran the default would not have matched.
    with open_store(local_store) as default, open_store(local.path) as other:
        assert default.meta["forward_layout"] != "channels_last"
        assert default.features("penultimate").tobytes() != other.features("penultimate").tobytes()


def test_augmented_views_on_the_workers_are_the_local_engines_bit_for_bit(ray_cluster, images, tmp_path):
    # Random views are seeded by image id, which each worker reads from its own copy of the image list.
    settings = {**SETTINGS, "views": "random:2", "views_reduce": "none"}
    local = quick_extract(images, tmp_path / "local.h5", **settings)
    on_ray = quick_extract(images, tmp_path / "ray.h5", engine="ray", ray_workers=2, **settings)
    assert on_ray.layers == local.layers == {"conv2": 2 * 64, "penultimate": 2 * 512}
    assert_same_store(local.path, on_ray.path)


def test_a_killed_worker_is_restarted_and_the_store_is_the_same(ray_cluster, images, local_store, tmp_path, monkeypatch):
    commit = StoreWriter.commit
    killed = []

    def commit_then_kill_the_workers(self):
        commit(self)
        if self.rows_done and not killed:
            # Both: one is mid-shard, the other has just been given its next one or is idle.
            for actor in ray.util.list_named_actors(all_namespaces=True):
                if actor["name"].startswith("featx-"):
                    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)
                    killed.append(actor["name"])

    monkeypatch.setattr(StoreWriter, "commit", commit_then_kill_the_workers)
    result = quick_extract(images, tmp_path / "ray.h5", engine="ray", ray_workers=2, **SETTINGS)
    assert len(killed) == 2
    assert result.retried_shards >= 1
    assert "handed out again" in format_extraction(result)
    assert_same_store(local_store, tmp_path / "ray.h5")


# A driver that stops for good (until killed) once its first shard is committed.
DRIVER = """
import json, sys, time
from pathlib import Path
from featx.extraction import ExtractConfig, extract_features
from featx.store import StoreWriter

marker, settings = sys.argv[1], json.loads(sys.argv[2])
commit = StoreWriter.commit

def commit_then_hang(self):
    commit(self)
    if self.rows_done:
        Path(marker).touch()
        time.sleep(600)

StoreWriter.commit = commit_then_hang
extract_features(ExtractConfig.from_options(**settings))
"""


def test_a_killed_driver_resumes_from_its_committed_shards(ray_cluster, images, local_store, tmp_path):
    from conftest import IMAGE_SIZE, MODEL

    out, marker = tmp_path / "ray.h5", tmp_path / "committed"
    settings = dict(
        data=str(images), out=str(out), model=MODEL, layers=["conv2", "penultimate"], weights="none",
        image_size=IMAGE_SIZE, workers=0, device="cpu", progress=False, engine="ray", ray_address=ray_cluster,
        ray_workers=1, **SETTINGS,
    )
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(marker), json.dumps(settings)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the driver committed nothing within 120 s"
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    with open_store(out) as store:
        done = len(store)
    assert 0 < done < 12
    result = quick_extract(images, out, engine="ray", ray_workers=1, **SETTINGS)
    assert result.images == 12 - done
    assert_same_store(local_store, out)


def test_a_shard_that_keeps_failing_is_named_and_the_shards_before_it_are_kept(ray_cluster, images, tmp_path):
    data = shutil.copytree(images, tmp_path / "data")
    # Sorted, it is image 6 of 13: the first of shard 3.
    Image.new("RGB", (80, 60), (90, 90, 90)).save(data / "train" / "bees" / "zz_grey.png")
    out = tmp_path / "ray.h5"
    with pytest.raises(ClusterError) as raised:
        quick_extract(data, out, engine="ray", ray_workers=2, **SETTINGS)
    text = str(raised.value)
    assert "\n" not in text
    assert text.startswith("shard 3 (2 images, 6-7: train/bees/zz_grey.png .. val/ants/")
    assert "failed 3 times" in text and "last error: RuntimeError: injected failure: an image of one colour" in text
    with open_store(out) as store:
        assert len(store) == 6
        assert list(store.ids) == sorted(str(p.relative_to(data)) for p in data.rglob("*.jpg"))[:6]


def test_workers_that_cannot_see_the_images_stop_the_run_at_once_in_one_line(ray_cluster, images, tmp_path, monkeypatch):
    data = shutil.copytree(images, tmp_path / "data")
    init = StoreWriter.__init__

    def init_then_hide_the_images(self, *args, **kwargs):
        # The driver has listed the images; the workers, which get the list with their first shard, find no folder.
        init(self, *args, **kwargs)
        data.rename(tmp_path / "elsewhere")

    monkeypatch.setattr(StoreWriter, "__init__", init_then_hide_the_images)
    with pytest.raises(ClusterError) as raised:
        quick_extract(data, tmp_path / "ray.h5", engine="ray", ray_workers=1, **SETTINGS)
    text = str(raised.value)
    assert "\n" not in text and text.startswith("Ray worker 0 (")
    assert f"could not start; DataError: the data folder is not at '{data.resolve()}' on node " in text
    assert "failed" not in text  # not retried: every shard would fail the same way


def test_gpus_on_a_cluster_without_gpus_is_one_line_saying_what_it_has(ray_cluster, images, tmp_path):
    with pytest.raises(ClusterError, match=r"^gpus_per_worker=1 needs GPUs, and the Ray cluster has none; it has 0 GPU\(s\) and 2 CPU\(s\) on 1 node\(s\)"):
        quick_extract(images, tmp_path / "ray.h5", engine="ray", gpus_per_worker=1, device="auto")
    assert not (tmp_path / "ray.h5").exists()


def test_an_unreachable_address_is_one_line_within_seconds(images, tmp_path, run_cli):
    with socket_that_is_closed() as port:
        started = time.monotonic()
        code, _, err = run_cli(
            "extract", "--data", images, "--out", tmp_path / "ray.h5", "--model", "resnet18", "--weights", "none",
            "--engine", "ray", "--ray-address", f"127.0.0.1:{port}",
        )
    assert code == 2
    assert err.startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused); start one with `ray start --head`")
    assert err.count("\n") == 1 and "--ray-address" in err
    assert time.monotonic() - started < 30
    assert not (tmp_path / "ray.h5").exists()


class socket_that_is_closed:
    """A local port that nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc_info) -> None:
        pass


def test_without_ray_the_engine_names_the_extra(images, tmp_path, monkeypatch, run_cli):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    code, _, err = run_cli("extract", "--data", images, "--out", tmp_path / "x.h5", "--engine", "ray")
    assert code == 2
    assert err == "error: --engine ray needs Ray, which is not installed; pip install 'featx[ray]'\n"


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        ({"ray_workers": 2}, r"^ray_workers is an option of the Ray engine; add engine='ray'$"),
        ({"engine": "spark"}, r"^engine must be one of local, ray; got 'spark'$"),
        ({"engine": "ray", "ray_workers": 0}, r"^ray_workers must be a positive integer; got 0$"),
        ({"engine": "ray", "gpus_per_worker": -1}, r"^gpus_per_worker must be a number >= 0"),
        ({"engine": "ray", "device": "cuda:1"}, r"^device with engine='ray' must be auto, cpu or cuda; got 'cuda:1'"),
        ({"engine": "ray", "device": "cpu", "gpus_per_worker": 1}, r"^gpus_per_worker=1 contradicts device='cpu'"),
    ],
)
def test_ray_options_are_checked_when_the_configuration_is_made(settings, text):
    with pytest.raises(ConfigError, match=text):
        ExtractConfig.from_options(**settings)


def test_the_decode_pool_decodes_the_next_list_ahead_in_the_loaders_chunks(images):
    collection = discover_images(images)
    preprocessing = load_model("resnet18", weights="none", image_size=32).preprocessing
    pool = DecodePool(collection, preprocessing, batch_size=5, workers=2)
    try:
        pool.schedule(0, range(7))
        pool.schedule(1, range(7, 10))
        assert not pool.starts_with(1)
        first, second = pool.take(), pool.take()
        # Batches of 5 in chunks of 3 (5 over 2 processes), as ImageLoader cuts them; the list's last batch is short.
        assert [chunk.indices for chunk in first] == [[0, 1, 2], [3, 4]]
        assert [chunk.indices for chunk in second] == [[5, 6]]
        # The next list's first batch was handed to the processes before it was asked for.
        assert pool.starts_with(1) and pool._queue[0].futures is not None
        third = pool.take()
        assert [chunk.indices for chunk in third] == [[7, 8, 9]]
        for chunk in first + second + third:
            expected = torch.stack([preprocessing(load_image(collection.path(i))) for i in chunk.indices])
            assert torch.equal(chunk.pixels, expected)
        # A list that is not run (the driver gave the worker another shard) is dropped.
        pool.schedule(2, range(5))
        pool.discard()
        assert not pool.starts_with(2)
        pool.schedule(3, [10, 11])
        assert [chunk.indices for chunk in pool.take()] == [[10, 11]]
    finally:
        pool.close()
