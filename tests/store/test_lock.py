"""One writer per store (featx.store._lock), issue 11 item 1.

A second writer of the same store gets a one-line error naming the pid that
holds it; the lock dies with its process (``kill -9`` leaves a stale lock file
that the next writer takes over); readers are never blocked.  Measured before:
two ``extract`` on the same ``--out`` at once, one died with a FileNotFoundError
traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_real_images, quick_extract

from stores import attribute_identity

from featx.errors import StoreLockedError
from featx.store import LayerSpec, StoreWriter, lock_store, open_store

REPO = Path(__file__).resolve().parents[2]

# Holds the lock of a store until killed: prints its pid once it holds it.
HOLD_LOCK = """
import sys, time
from featx.store import lock_store
lock = lock_store(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""

# Runs the CLI with its final write paused, after the first layer is copied,
# until a file disappears, so that a second command can be started while the
# first one holds the store.  The pause is the test's: it wraps the private
# function that copies a layer into the final file, in this child process only.
PAUSE_UNTIL_RELEASED = """
import os, runpy, sys, time
from featx.store import _assembly

hold = sys.argv.pop(1)
copy_layer = _assembly.copy_layer

def copy_then_pause(*args, **kwargs):
    copy_layer(*args, **kwargs)
    open(hold + ".reached", "w").close()
    while os.path.exists(hold):
        time.sleep(0.05)

_assembly.copy_layer = copy_then_pause
sys.argv = ["run_pipeline.py", *sys.argv[1:]]
runpy.run_path("run_pipeline.py", run_name="__main__")
"""


def _lock_file(store: Path) -> Path:
    """Where the lock of *store* is: ``<store>.lock`` beside it."""
    return store.with_name(store.name + ".lock")


def _hold(store: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _wait(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the first command ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_writer_is_told_the_pid_holding_the_store(tmp_path):
    store = tmp_path / "s.h5"
    holder = _hold(store)
    try:
        assert _lock_file(store).read_text().split() == [str(holder.pid)]
        with pytest.raises(StoreLockedError, match=rf"^another featx process \(pid {holder.pid}\) is writing '.*s\.h5'; wait"):
            lock_store(store)
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_kill_9_is_taken_over_and_removed_on_release(tmp_path):
    store = tmp_path / "s.h5"
    holder = _hold(store)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert _lock_file(store).exists()  # the file stays; the lock died with its process
    lock = lock_store(store)
    assert lock.stale_pid == str(holder.pid)
    assert _lock_file(store).read_text().split() == [str(os.getpid())]
    lock.release()
    assert not _lock_file(store).exists()
    assert list(tmp_path.iterdir()) == []


def test_one_process_cannot_hold_two_writers_of_a_store(tmp_path):
    lock = lock_store(tmp_path / "s.h5")
    with pytest.raises(StoreLockedError, match=rf"pid {os.getpid()}"):
        lock_store(tmp_path / "s.h5")
    lock.release()
    lock_store(tmp_path / "s.h5").release()  # free again


def test_readers_are_never_blocked_by_a_writer(tmp_path):
    store = tmp_path / "s.h5"
    spec = LayerSpec(name="f", node="n", pool="none", dim=2, source_shape=(2,))

    class samples:
        ids, labels, splits, classes = ("a.png", "b.png"), np.array([0, 0], np.int32), ("", ""), ("x",)

    writer = StoreWriter(
        store, meta={"model": "m", "data_fingerprint": "x"},
        identity=attribute_identity({"model": "m", "data_fingerprint": "x"}), layers=[spec], samples=samples,
    )
    writer.open()
    writer.add(stop=2, indices=[0, 1], features={"f": np.ones((2, 2), np.float32)})
    writer.finish()
    holder = _hold(store)  # another process writes now
    try:
        with open_store(store) as reader:
            assert reader.ids.tolist() == ["a.png", "b.png"]
    finally:
        holder.kill()
        holder.wait()


def test_two_extract_commands_on_one_out(tmp_path, hymenoptera, run_cli):
    data = copy_real_images(hymenoptera, tmp_path / "data", per_class=1)
    out = tmp_path / "same.h5"
    args = [
        "extract", "--data", str(data), "--model", "resnet18", "--layer", "penultimate", "--weights", "none",
        "--image-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress",
        "--no-autotune", "--out", str(out),
    ]
    hold = tmp_path / "hold"
    hold.touch()
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSE_UNTIL_RELEASED, str(hold), *args], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait(lambda: Path(str(hold) + ".reached").exists(), first)
        code, stdout, stderr = run_cli(*args)  # the second command, while the first one writes
        assert code == 2 and stdout == "" and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == (
            f"error: another featx process (pid {first.pid}) is writing '{out}'; wait for it to finish, "
            "or write to another --out; reading the store meanwhile is safe"
        )
        assert "forward pass" not in stderr  # refused before the model was loaded
    finally:
        hold.unlink()
    assert first.wait(timeout=120) == 0, first.stdout.read()
    expected = quick_extract(data, tmp_path / "alone.h5", layers=("penultimate",), autotune=False)
    with open_store(out) as store, open_store(expected.path) as alone:
        assert store.complete
        assert store.ids.tolist() == alone.ids.tolist()
        np.testing.assert_array_equal(store.features("penultimate"), alone.features("penultimate"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.h5", "data", "hold.reached", "same.h5"]
