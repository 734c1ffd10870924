"""Full disks and I/O errors (featx.store._space, _atomic, _writer), issue 11 item 2.

Before a run the size estimate is compared with the free space (``--force``
tries anyway); ENOSPC or EIO during a run is a one-line error (exit 2) saying
how many rows are safe and how much space is needed, leaves no temporary file,
does not crash the interpreter, and the same command resumes once there is
space.  Measured before: on a 3 MB tmpfs ``extract`` printed an h5py traceback
and segfaulted (exit 139), leaving a 3 MB temporary part behind.

The real-disk test mounts a small tmpfs (root only; skipped with the reason
otherwise); the injection tests make h5py's write path fail and always run.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import copy_real_images, quick_extract

from stores import attribute_identity

from featx.errors import DiskFullError, StoreWriteError
from featx.store import LayerSpec, StoreWriter, open_store, parts_dir

REPO = Path(__file__).resolve().parents[2]
SPEC = LayerSpec(name="f", node="n", pool="none", dim=256, source_shape=(256,))
N = 40


class _Samples:
    ids = tuple(f"{i:02d}.png" for i in range(N))
    labels = np.zeros(N, dtype=np.int32)
    splits = ("",) * N
    classes = ("x",)


def _rows(indices) -> np.ndarray:
    return np.stack([np.full(SPEC.dim, i, dtype=np.float32) for i in indices])


def _extract_synthetic(path: Path) -> StoreWriter:
    """Write the remaining candidates in batches of 4 (a commit after each), then finish."""
    writer = StoreWriter(
        path, meta={"model": "m", "data_fingerprint": "x"}, identity=attribute_identity({"model": "m", "data_fingerprint": "x"}),
        layers=[SPEC], samples=_Samples(), checkpoint_seconds=0,
    )
    try:
        remaining = list(writer.open().remaining)
        for a in range(0, len(remaining), 4):
            batch = remaining[a : a + 4]
            writer.add(stop=batch[-1] + 1, indices=batch, features={"f": _rows(batch)})
        writer.finish()
    finally:
        writer.close()
    return writer


def _fail_writes(monkeypatch, after: int, number: int = errno.ENOSPC) -> None:
    """Make every h5py dataset write after the first *after* ones fail with OSError(*number*)."""
    original = h5py.Dataset.__setitem__
    calls = {"n": 0}

    def write(self, key, value):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(number, f"Can't write data ({errno.errorcode[number]})")
        return original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", write)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or p.name.endswith(".lock"))


# Two writes per batch of 4 (index, features), then one per part in the final assembly:
# the disk fills in the second batch, the seventh, or while the final file is written.
@pytest.mark.parametrize("after", [3, 14, 25])
def test_a_full_disk_during_a_run_is_one_error_and_the_run_resumes(tmp_path, monkeypatch, after):
    path = tmp_path / "s.h5"
    _fail_writes(monkeypatch, after)
    with pytest.raises(DiskFullError) as caught:
        _extract_synthetic(path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"no space left on the disk of '{path}' (No space left on device): ")
    assert " rows are safe; about " in text and " more is needed (parts " in text
    assert text.endswith("; free some space, then run the same command again to resume")
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()  # space is freed
    _extract_synthetic(path)
    with open_store(path) as store:
        assert store.complete
        np.testing.assert_array_equal(store.features("f"), _rows(range(N)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_an_io_error_is_a_store_write_error(tmp_path, monkeypatch):
    _fail_writes(monkeypatch, 5, errno.EIO)
    with pytest.raises(StoreWriteError, match=r"^writing '.*s\.h5' failed \(Input/output error\): 8 rows are safe; check the disk"):
        _extract_synthetic(tmp_path / "s.h5")
    assert _leftovers(tmp_path) == []


def test_a_run_that_cannot_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1000))
    with pytest.raises(DiskFullError, match=r"^not enough free space for '.*s\.h5': about 1\.1 MiB is needed \(parts 40\.0 KiB \+ final store 40\.0 KiB \+ HDF5 margin 1\.0 MiB\), 1,000 B is free; .* or use force=True to try anyway$"):
        _extract_synthetic(tmp_path / "s.h5")
    assert list(tmp_path.iterdir()) == []  # nothing was created
    writer = StoreWriter(
        tmp_path / "s.h5", meta={"model": "m"}, identity=attribute_identity({"model": "m"}),
        layers=[SPEC], samples=_Samples(), force=True,
    )
    assert writer.open().remaining == range(N)  # tries anyway
    writer.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory, hymenoptera) -> tuple[Path, Path]:
    """4 real JPEGs and the store of an uninterrupted extraction of them (conv2 flattened, penultimate)."""
    root = tmp_path_factory.mktemp("full-disk")
    data = copy_real_images(hymenoptera, root / "data", per_class=1)
    store = quick_extract(data, root / "alone.h5", pool="flatten", batch_size=2, autotune=False).path
    return data, store


def _assert_as_uninterrupted(out: Path, alone: Path, layer: str) -> None:
    with open_store(out) as store, open_store(alone) as expected:
        assert store.complete and store.ids.tolist() == expected.ids.tolist()
        np.testing.assert_array_equal(store.features(layer), expected.features(layer))


def test_extract_on_a_full_disk_says_what_is_safe(tmp_path, images, run_cli, monkeypatch):
    """The command line: exit 2 and one line; the same command resumes."""
    data, alone = images
    out = tmp_path / "store" / "s.h5"
    args = [
        "extract", "--data", data, "--model", "resnet18", "--layer", "penultimate", "--pool", "flatten", "--weights", "none",
        "--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress",
        "--no-autotune", "--checkpoint-seconds", "0", "--out", out,
    ]
    _fail_writes(monkeypatch, 4)
    code, _, stderr = run_cli(*args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: no space left on the disk of '{out}' (No space left on device): ")
    assert "Traceback" not in stderr
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    code, _, stderr = run_cli(*args)
    assert code == 0, stderr
    _assert_as_uninterrupted(out, alone, "penultimate")
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.h5"]


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs at tmp_path/disk, and a function that resizes it; skipped where mount is refused."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (root needed): {mounted.stderr.strip() or mounted.returncode}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)

    yield disk, resize
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk(images, small_disk, run_cli):
    """A 512 KiB tmpfs: refused without --force; with it, exit 2 and no crash (was: segfault, 139); resumes after a resize."""
    disk, resize = small_disk
    data, alone = images
    out = disk / "s.h5"
    # conv2 flattened: 64 x 16 x 16 floats = 64 KiB per image; 4 images in 4 parts of 256 KiB chunks, then the store.
    args = [
        "extract", "--data", data, "--model", "resnet18", "--layer", "conv2", "--pool", "flatten", "--weights", "none",
        "--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress",
        "--no-autotune", "--checkpoint-seconds", "0", "--out", out,
    ]
    code, _, stderr = run_cli(*args)
    last = stderr.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"error: not enough free space for '{out}': about ")
    assert last.endswith("--force to try anyway") and "Traceback" not in stderr
    assert list(disk.iterdir()) == []

    # With --force it runs out of space: in a subprocess, so that a crash would show as its exit code.
    forced = subprocess.run(
        [sys.executable, "run_pipeline.py", *map(str, args), "--force"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert forced.returncode == 2, forced.stderr
    last = forced.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no space left on the disk of '{out}' (No space left on device): ")
    assert "rows are safe; about" in last
    assert "Traceback" not in forced.stderr
    assert _leftovers(disk) == []

    resize("8m")  # space is freed
    code, _, stderr = run_cli(*args)
    assert code == 0, stderr
    _assert_as_uninterrupted(out, alone, "conv2")
    assert sorted(p.name for p in disk.iterdir()) == ["s.h5"]
    assert not parts_dir(out).exists()


# --------------------------------------------------------------------------- issue 24, item 4: the index rewrite


def _info_rows(path: Path) -> int:
    with open_store(path) as store:
        return len(store)


@pytest.mark.parametrize("failing_index", [1, 3])
def test_a_full_disk_while_the_index_is_rewritten_says_the_rows_info_shows(tmp_path, monkeypatch, failing_index):
    """The part was committed but the index behind it could not be written: the part is dropped too.

    Measured before: the error said 160 rows were safe, ``info`` showed 144.
    """
    import featx.store._writer as _writer

    path = tmp_path / "s.h5"
    name = "write_small_atomically" if hasattr(_writer, "write_small_atomically") else "write_atomically"  # before
    original, calls = getattr(_writer, name), []

    def write_index(*args, **kwargs):
        calls.append(1)
        if len(calls) == failing_index:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(_writer, name, write_index)
    with pytest.raises(DiskFullError) as caught:
        _extract_synthetic(path)
    safe = int(str(caught.value).split(": ", 1)[1].split(" rows are safe")[0])
    assert safe == 4 * (failing_index - 1)
    if failing_index > 1:
        assert _info_rows(path) == safe
    else:
        assert not path.exists()  # no index was ever written: nothing is safe, nothing shows
    assert len(list(parts_dir(path).glob("*.h5"))) == failing_index - 1  # the dropped part's space is free
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    _extract_synthetic(path)
    with open_store(path) as store:
        assert store.complete
        np.testing.assert_array_equal(store.features("f"), _rows(range(N)))


def test_the_space_needed_adds_up():
    from featx.store._space import SpaceNeeded

    needed = SpaceNeeded(parts=476 << 10, final=796 << 10)
    margin = needed.total - needed.parts - needed.final
    assert needed.describe() == f"parts 476.0 KiB + final store 796.0 KiB + HDF5 margin {margin / (1 << 20):.1f} MiB"


def test_a_real_full_disk_during_the_index_rewrite_is_exit_2_one_line(hymenoptera, tmp_path):
    """As measured: a 1,200 KiB tmpfs, all 398 images, batches of 16 (was: 8 ObjectID.__dealloc__ errors, exit 139)."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (root needed): {mounted.stderr.strip() or mounted.returncode}")
    try:
        out = disk / "s.h5"
        args = [
            sys.executable, "run_pipeline.py", "-q", "extract", "--data", str(hymenoptera), "--model", "resnet18",
            "--weights", "none", "--image-size", "64", "--batch-size", "16", "--checkpoint-seconds", "0",
            "--out", str(out), "--force", "--no-autotune", "--device", "cpu", "--workers", "0",
        ]
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 2, done.stderr[-3000:]
        assert len(done.stderr.splitlines()) == 1, done.stderr[-3000:]  # no dealloc noise, no traceback
        assert done.stderr.startswith(f"error: no space left on the disk of '{out}' (No space left on device): ")
        safe = int(done.stderr.split(": ", 2)[2].split(" rows are safe")[0].replace(",", ""))
        assert safe == (_info_rows(out) if out.exists() else 0)
        assert _leftovers(disk) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
