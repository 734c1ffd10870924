"""Writing a store crash-safely (featx.store._writer, _parts, _index, _assembly): parts, resume, identity, leftovers."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from stores import IDENTITY_KEYS, attribute_identity

from featx.errors import OutputPathError, StoreError, StoreMismatchError
from featx.store import (
    LAYER_IDENTITY_KEYS,
    LayerSpec,
    StoreUpdate,
    StoreWriter,
    identity_differences,
    open_store,
    parts_dir,
)

SPEC = LayerSpec(name="f", node="n", pool="none", dim=3, source_shape=(3,))
META = {"model": "m", "weights": "none", "featx_version": "0", "data_fingerprint": "abc"}


class _Samples:
    ids = tuple(f"{i}.png" for i in range(6))
    labels = np.array([0, 1, 0, 1, 0, 1], dtype=np.int32)
    splits = ("",) * 6
    classes = ("x", "y")


def _rows(start: int, stop: int) -> np.ndarray:
    return np.arange(start * 3, stop * 3, dtype=np.float32).reshape(-1, 3)


def _writer(path: Path, **kw) -> StoreWriter:
    """An open writer of *path*."""
    writer = StoreWriter(
        path, meta=META, identity=attribute_identity(META),
        layers=[SPEC], samples=_Samples(), checkpoint_seconds=0, **kw,
    )
    writer.open()
    return writer


def test_unfinished_store_opens_with_the_rows_so_far(tmp_path, monkeypatch):
    path = tmp_path / "w.h5"
    writer = _writer(path)
    writer.add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})
    writer.add(stop=4, indices=[3], features={"f": _rows(3, 4)}, failures=[(2, "empty file (0 bytes)")])
    # What a reader sees while the writer is stopped (or killed) here.
    monkeypatch.chdir(tmp_path.parent)  # the virtual datasets find their parts from anywhere
    with open_store(path) as store:
        assert not store.complete
        assert store.ids.tolist() == ["0.png", "1.png", "3.png"]
        assert store.labels.tolist() == [0, 1, 1]
        np.testing.assert_array_equal(store.features("f"), np.concatenate([_rows(0, 2), _rows(3, 4)]))
        assert store.failed.to_dict("list") == {"id": ["2.png"], "reason": ["empty file (0 bytes)"]}
        assert store.size_on_disk() > path.stat().st_size
    with h5py.File(path, "r") as f:
        assert f["features/f"].is_virtual
        assert f.attrs["candidates_done"] == 4 and f.attrs["candidates"] == 6
    # A new writer resumes after the committed parts (the lock is released as a killed process's is).
    writer.lock.release()
    again = _writer(path)
    assert (again.plan.start, again.rows_done, again.plan.resuming) == (4, 3, True)
    again.add(stop=6, indices=[4, 5], features={"f": _rows(4, 6)})
    again.finish()
    with open_store(path) as store:
        assert store.complete
        assert store.ids.tolist() == ["0.png", "1.png", "3.png", "4.png", "5.png"]
        np.testing.assert_array_equal(store.features("f"), np.concatenate([_rows(0, 2), _rows(3, 6)]))
    assert not parts_dir(path).exists()


def test_a_part_being_written_is_dropped(tmp_path):
    path = tmp_path / "w.h5"
    writer = StoreWriter(
        path, meta=META, identity=attribute_identity(META), layers=[SPEC], samples=_Samples(), checkpoint_seconds=3600,
    )
    writer.open()
    writer.add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})
    writer.commit()
    writer.add(stop=4, indices=[2, 3], features={"f": _rows(2, 4)})  # still open: as if killed now
    leftover = list(parts_dir(path).glob(".*.tmp-*"))
    assert len(leftover) == 1
    # The first writer is left as it is, its part still open, as a killed process leaves it
    # (whose lock the kernel releases).
    writer.lock.release()
    again = _writer(path)
    assert again.plan.start == 2
    assert not leftover[0].exists()


def test_finish_refuses_missing_rows(tmp_path):
    writer = _writer(tmp_path / "w.h5")
    writer.add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})
    with pytest.raises(StoreError, match=r"^cannot finish '.*w\.h5': 2 of 6 images were processed$"):
        writer.finish()


def test_leftovers_of_a_run_killed_in_its_final_steps_are_cleaned(tmp_path):
    path = tmp_path / "w.h5"
    writer = _writer(path)
    writer.add(stop=6, indices=list(range(6)), features={"f": _rows(0, 6)})
    saved_parts = tmp_path / "saved-parts"
    shutil.copytree(parts_dir(path), saved_parts)
    writer.finish()
    finished = path.read_bytes()
    # Killed after the final file replaced the index, before the parts were deleted ...
    shutil.copytree(saved_parts, parts_dir(path))
    # ... or while a later final write was under way (its temporary file, of a dead process).
    stale = tmp_path / ".w.h5.tmp-999999999"
    stale.write_bytes(b"half written")
    again = _writer(path)
    assert again.plan.up_to_date
    assert not parts_dir(path).exists()
    assert not stale.exists()
    assert path.read_bytes() == finished


def test_temporary_file_of_a_live_process_is_kept(tmp_path):
    live = tmp_path / f".w.h5.tmp-{os.getppid()}"
    live.write_bytes(b"being written")
    _writer(tmp_path / "w.h5")
    assert live.exists()


def test_different_layer_set_in_unfinished_parts(tmp_path):
    path = tmp_path / "w.h5"
    _writer(path).add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})
    other = LayerSpec(name="g", node="n2", pool="none", dim=3, source_shape=(3,))
    with pytest.raises(
        StoreMismatchError,
        match="^" + re.escape(f"an unfinished extraction of layers f is in '{parts_dir(path)}', this command asks for g; "
                              "ask for the same layers to finish it first, or use overwrite=True to start again") + "$",
    ):
        StoreWriter(path, meta=META, identity=attribute_identity(META), layers=[other], samples=_Samples()).open()
    assert StoreWriter(
        path, meta=META, identity=attribute_identity(META), layers=[other], samples=_Samples(), overwrite=True,
    ).open().start == 0
    assert not path.exists()


def test_existing_file_that_is_not_a_store(tmp_path):
    path = tmp_path / "x.h5"
    path.write_text("not hdf5")
    with pytest.raises(
        StoreError,
        match=r"^not an HDF5 file, so not a feature store: '.*x\.h5'; move it away, or use overwrite=True to replace it$",
    ):
        _writer(path)
    with h5py.File(path, "w") as f:
        f["data"] = 1
    with pytest.raises(
        StoreError,
        match=r"^an HDF5 file that is not a featx store is in the way: '.*x\.h5'; "
        r"choose another out, or use overwrite=True to replace it$",
    ):
        _writer(path)


def test_another_configuration_is_refused_with_both_values(tmp_path):
    path = tmp_path / "w.h5"
    _writer(path).add(stop=6, indices=list(range(6)), features={"f": _rows(0, 6)})
    other = {**META, "model": "m2", "mean": [0.5, 0.5, 0.5]}
    with pytest.raises(StoreMismatchError) as caught:
        StoreWriter(path, meta=other, identity=attribute_identity(other), layers=[SPEC], samples=_Samples()).open()
    assert str(caught.value) == (
        f"store '{path}' was made with another configuration (the command differs): model is 'm' there, 'm2' here; "
        "mean is None there, [0.5, 0.5, 0.5] here; use overwrite=True to replace it, or out='PATH' to write a new store"
    )


def test_a_layer_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "w.h5"
    writer = _writer(path)
    writer.add(stop=6, indices=list(range(6)), features={"f": _rows(0, 6)})
    writer.finish()
    half = LayerSpec(name="f", node="n", pool="none", dim=3, source_shape=(3,), precision="fp16", dtype="float16")
    with pytest.raises(StoreMismatchError) as caught:
        StoreWriter(path, meta=META, identity=attribute_identity(META), layers=[half], samples=_Samples()).open()
    assert str(caught.value) == (
        f"layer 'f' already exists in '{path}' with other settings: precision is 'fp32' there, 'fp16' here; "
        "dtype is 'float32' there, 'float16' here; use overwrite=True to re-extract the store, or out='PATH'"
    )


def test_identity_differences_lists_key_and_both_values():
    recorded = {"model": np.bytes_(b"alexnet"), "seed": np.int64(0), "mean": np.array([0.485, 0.456, 0.406])}
    requested = {"model": "alexnet", "seed": 1, "mean": (0.485, 0.456, 0.406)}
    assert identity_differences(recorded, requested, IDENTITY_KEYS) == [("seed", 0, 1)]
    assert identity_differences({}, {}, IDENTITY_KEYS) == []
    assert identity_differences({"node": "a", "pool": "avg"}, {"node": "a", "pool": "max"}, LAYER_IDENTITY_KEYS) == [
        ("pool", "avg", "max"),
    ]


def test_identity_tolerance_is_the_float32_round_trip():
    mean = [0.485, 0.456, 0.406]
    as_float32 = np.asarray(mean, dtype=np.float32)  # what a float32 attribute reads back as
    assert identity_differences({"mean": as_float32}, {"mean": mean}, ["mean"]) == []
    assert identity_differences({"mean": [0.485, 0.456, 0.4061]}, {"mean": mean}, ["mean"]) == [
        ("mean", [0.485, 0.456, 0.4061], mean)
    ]
    # Lengths must agree: a broadcast of one value against three is a difference.
    assert identity_differences({"std": [0.5]}, {"std": [0.5, 0.5, 0.5]}, ["std"]) == [("std", [0.5], [0.5, 0.5, 0.5])]
    assert identity_differences({"std": None}, {"std": [0.5]}, ["std"]) == [("std", None, [0.5])]


def test_an_unwritable_path_leaves_nothing_behind(tmp_path):
    path = Path("/proc/featx-test/w.h5")
    with pytest.raises(OutputPathError) as caught:
        _writer(path)
    assert str(caught.value) == (
        "out is not writable (cannot create files in '/proc': No such file or directory): "
        f"'{path}'; choose another out"
    )
    (tmp_path / "file.txt").write_text("keep me")
    path = tmp_path / "file.txt" / "sub" / "w.h5"
    with pytest.raises(OutputPathError) as caught:
        _writer(path)
    assert str(caught.value) == (
        f"out is not writable ('{tmp_path / 'file.txt'}' is a file, not a folder): '{path}'; choose another out"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]
    assert (tmp_path / "file.txt").read_text() == "keep me"


def test_the_parent_folder_is_created(tmp_path):
    path = tmp_path / "new" / "folder" / "w.h5"
    writer = _writer(path)
    writer.add(stop=6, indices=list(range(6)), features={"f": _rows(0, 6)})
    writer.finish()
    with open_store(path) as store:
        assert store.complete and len(store) == 6


def test_making_a_writer_does_nothing_until_it_is_opened(tmp_path):
    path = tmp_path / "new" / "w.h5"
    writer = StoreWriter(path, meta=META, identity=attribute_identity(META), layers=[SPEC], samples=_Samples())
    assert writer.plan is None
    assert list(tmp_path.iterdir()) == []  # no folder, no lock file
    with pytest.raises(StoreError, match=r"^the writer of '.*w\.h5' is not open; call its open\(\) first$"):
        writer.add(stop=1, indices=[0], features={"f": _rows(0, 1)})
    plan = writer.open()
    assert writer.plan is plan
    assert (plan.todo, plan.remaining, plan.start, plan.resuming, plan.up_to_date) == ((SPEC,), range(6), 0, False, False)
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.h5.lock"]
    writer.close()
    assert list(tmp_path.iterdir()) == []  # the folders made for the lock go with it


class _Recipe:
    """A stand-in for the extraction side's recipe: JSON text; networks of one first letter make the same features."""

    def __init__(self, network: str) -> None:
        self.network = network

    def to_json(self) -> str:
        return json.dumps({"network": self.network})

    def differences(self, recorded):
        text = recorded.get("recipe")
        have = json.loads(text)["network"] if text is not None else str(recorded["model"])  # written without one
        return [] if have[0] == self.network[0] else [("network", have, self.network)]


def test_the_identity_is_asked_through_one_object_and_recorded_as_recipe(tmp_path):
    path = tmp_path / "w.h5"
    _writer(path).add(stop=2, indices=[0, 1], features={"f": _rows(0, 2)})  # an identity of attributes: no recipe
    other = {**META, "model": "m2"}
    with pytest.raises(StoreMismatchError, match=r"model is 'm' there, 'm2' here; use overwrite=True"):
        StoreWriter(path, meta=other, identity=attribute_identity(other), layers=[SPEC], samples=_Samples()).open()
    with pytest.raises(StoreMismatchError) as caught:
        StoreWriter(path, meta=META, layers=[SPEC], samples=_Samples(), identity=_Recipe("x")).open()
    assert str(caught.value) == (
        f"store '{path}' was made with another configuration (the command differs): "
        "network is 'm' there, 'x' here; use overwrite=True to replace it, or out='PATH' to write a new store"
    )
    # The data fingerprint is the store's own comparison, whatever the identity says.
    moved = {**META, "data_fingerprint": "def"}
    with pytest.raises(StoreMismatchError, match=r"\(the data folder changed since then\): data_fingerprint is 'abc' there, 'def' here; "):
        StoreWriter(path, meta=moved, layers=[SPEC], samples=_Samples(), identity=_Recipe("m")).open()
    resumed = StoreWriter(
        path, meta=other, layers=[SPEC], samples=_Samples(), identity=_Recipe("m2"), checkpoint_seconds=0,
    )
    assert resumed.open().start == 2
    resumed.add(stop=6, indices=[2, 3, 4, 5], features={"f": _rows(2, 6)})
    with h5py.File(max(parts_dir(path).glob("part-*.h5")), "r") as part:
        assert part.attrs["recipe"] == '{"network": "m2"}'
    resumed.finish()
    with open_store(path) as store:
        assert store.complete and store.meta["recipe"] == '{"network": "m2"}'
    with pytest.raises(StoreMismatchError, match=r"\(the command differs\): network is 'm2' there, 'x' here; "):
        StoreWriter(path, meta=other, layers=[SPEC], samples=_Samples(), identity=_Recipe("x")).open()


class _MoreSamples(_Samples):
    ids = (*_Samples.ids, "6.png")
    labels = np.array([0, 1, 0, 1, 0, 1, 1], dtype=np.int32)
    splits = ("",) * 7


def test_a_complete_store_of_other_images_is_updated(tmp_path):
    path = tmp_path / "w.h5"
    writer = _writer(path)
    writer.add(stop=6, indices=list(range(6)), features={"f": _rows(0, 6)})
    writer.finish()
    grown = StoreWriter(
        path, meta={**META, "data_fingerprint": "def"},
        identity=attribute_identity({**META, "data_fingerprint": "def"}), layers=[SPEC], samples=_MoreSamples(),
    )
    plan = grown.open()
    assert plan.update == StoreUpdate(added=1, removed=0, retried=0, kept=6, base_fingerprint="abc")
    assert (plan.todo, list(plan.remaining), plan.extends) == ((SPEC,), [6], False)
    grown.add(stop=7, indices=[6], features={"f": _rows(6, 7)})
    grown.finish()
    with open_store(path) as store:
        assert store.complete and store.ids.tolist() == list(_MoreSamples.ids)
        assert store.meta["data_fingerprint"] == "def" and "update_of" not in store.meta
        np.testing.assert_array_equal(store.features("f"), _rows(0, 7))
