"""Fault campaign for feature stores (issue 11, item 8): kill, fill, race, lock out and corrupt the writer.

Every fault is followed by the same command again, and every store it leaves is
compared, array by array, with the store of an uninterrupted run:

- **kills**: ``SIGKILL`` at random points of a run, counted in write events
  (h5py dataset writes and creations, file closes, fsyncs, renames), from the
  first part to the rename of the final file, in new stores and in
  incremental updates (a grown and shrunk data folder);
- **full disks**: every write from a random event on fails with ENOSPC (EIO once);
  with ``--tmpfs`` (root), also a real tmpfs too small for the store, enlarged afterwards;
- **concurrent writers**: two runs started together on one store;
- **a read-only folder** (``--tmpfs``): a complete store is used, a new one refused;
- **corrupt parts**: a bit flipped in, or the end cut off, a committed part.

The runs write synthetic features through featx's real store writer
(:class:`featx.store.StoreWriter`), in child processes that import no torch,
so a fault costs a fraction of a second; the features are a fixed function of
the image id, as the engine's are (every pass runs a fixed number of images).
``--cli`` adds kills of the real command, ``run_pipeline.py extract``, at random times.

    .venv/bin/python benchmarks/fault_campaign.py                 # the long version (about 2 minutes)
    .venv/bin/python benchmarks/fault_campaign.py --kills 12 --tmpfs --cli
    .venv/bin/python benchmarks/fault_campaign.py --json results.json

tests/test_fault_campaign.py runs a short version of the same campaign.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Two layers of different widths; batches of 4 candidates, a part committed after each.
LAYERS = {"wide": 48, "narrow": 5}
BATCH = 4


# --- the data: two versions of a folder -----------------------------------------------------------
def image_ids(version: int, n: int) -> list[str]:
    """Sorted ids of version 1 of the folder, or of version 2: every 7th image removed, n/4 added, a new class."""
    ids = [f"{'ab'[i % 2]}/{i:04d}.png" for i in range(n)]
    if version == 2:
        ids = [image_id for i, image_id in enumerate(ids) if i % 7 != 3]
        ids += [f"{'ab'[i % 2]}/{i:04d}+.png" for i in range(0, n, 4)]  # sort between existing ones
        ids += [f"0new/{i:04d}.png" for i in range(3)]  # a class sorted first: every label shifts
    return sorted(ids)


def samples(version: int, n: int) -> SimpleNamespace:
    ids = image_ids(version, n)
    classes = tuple(sorted({i.split("/")[0] for i in ids}))
    return SimpleNamespace(
        ids=tuple(ids),
        labels=np.asarray([classes.index(i.split("/")[0]) for i in ids], dtype=np.int32),
        splits=("",) * len(ids),
        classes=classes,
    )


def fails(image_id: str) -> bool:
    """Every 11th image of version 1 cannot be decoded."""
    return not image_id.endswith("+.png") and int(image_id.split("/")[1][:4]) % 11 == 5


def features_of(image_id: str) -> dict[str, np.ndarray]:
    seed = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(dim).astype(np.float32) for name, dim in LAYERS.items()}


def meta(version: int, n: int) -> dict:
    fingerprint = hashlib.sha1("\n".join(image_ids(version, n)).encode()).hexdigest()
    return {"featx_version": "campaign", "model": "synthetic", "weights": "none", "seed": 0, "data_fingerprint": fingerprint}


# --- the child: one run of the store writer, with an optional fault -------------------------------
class Faults:
    """Counts write events; kills this process at event *kill_at*, or fails every write from *fail_at* on."""

    def __init__(self, kill_at: int | None, fail_at: int | None, fail_errno: int) -> None:
        import h5py

        self.count = 0
        self.final_from: int | None = None
        self.kill_at, self.fail_at, self.fail_errno = kill_at, fail_at, fail_errno
        self.in_index = False
        self.failed_in: str | None = None  # where the first injected failure landed
        self._wrap(h5py.Dataset, "__setitem__", write=True)
        self._wrap(h5py.Group, "create_dataset", write=True)
        self._wrap(h5py.File, "close", write=False)
        # A file system may report a full disk only when the data is flushed (delayed allocation, NFS).
        self._wrap(os, "fsync", write=True)
        self._wrap(os, "replace", write=False)
        self._mark_index()

    def _mark_index(self) -> None:
        """Events inside the rewrite of the store's index (after each committed part) are the index's."""
        import featx.store._writer as _writer

        name = "write_small_atomically" if hasattr(_writer, "write_small_atomically") else "write_atomically"
        original, faults = getattr(_writer, name), self

        def index(*args, **kwargs):
            faults.in_index = True
            try:
                return original(*args, **kwargs)
            finally:
                faults.in_index = False

        setattr(_writer, name, index)

    @property
    def phase(self) -> str:
        if self.final_from is not None:
            return "final assembly"
        return "index rewrite" if self.in_index else "parts"

    def _wrap(self, owner, name: str, *, write: bool) -> None:
        original = getattr(owner, name)
        faults = self

        def wrapper(*args, **kwargs):
            faults.count += 1
            if faults.kill_at is not None and faults.count >= faults.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if write and faults.fail_at is not None and faults.count >= faults.fail_at:
                if faults.failed_in is None:
                    faults.failed_in = faults.phase
                raise OSError(faults.fail_errno, f"injected: {os.strerror(faults.fail_errno)}")
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)


def drive(store: Path, version: int, n: int, faults: Faults | None, force: bool = False) -> int:
    """Extract version *version* of the folder into *store* as ``extract`` does; 0, or 2 with one line on stderr."""
    from featx.errors import FeatxError
    from featx.store import AttributeIdentity, LayerSpec, StoreWriter

    specs = [LayerSpec(name=name, node=name, pool="none", dim=dim, source_shape=(dim,)) for name, dim in LAYERS.items()]
    table = samples(version, n)
    try:
        attrs = meta(version, n)
        writer = StoreWriter(
            store, meta=attrs, identity=AttributeIdentity(attrs, ("model",)), layers=specs, samples=table,
            checkpoint_seconds=0, force=force,
        )
        plan = writer.open()
        if plan.up_to_date:
            print("up to date")
            return 0
        try:
            remaining = list(plan.remaining)
            for a in range(0, len(remaining), BATCH):
                batch = remaining[a : a + BATCH]
                good = [i for i in batch if not fails(table.ids[i])]
                rows = [features_of(table.ids[i]) for i in good]
                values = {name: np.stack([r[name] for r in rows]) if rows else np.empty((0, dim), np.float32)
                          for name, dim in LAYERS.items()}
                # An update computes every layer of the store: the plan says which (plan.todo).
                values = {spec.name: values[spec.name] for spec in plan.todo}
                failures = [(i, "not an image: campaign") for i in batch if fails(table.ids[i])]
                writer.add(stop=batch[-1] + 1, indices=good, features=values, failures=failures)
            if faults is not None:
                faults.final_from = faults.count
            writer.finish()
        finally:
            writer.close()
    except FeatxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    updated = plan.update
    print("updated" if updated else "wrote", json.dumps(asdict(updated) if updated else {}))
    return 0


def child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fault_campaign.py drive")
    p.add_argument("store", type=Path)
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--kill-at", type=int)
    p.add_argument("--fail-at", type=int)
    p.add_argument("--errno", type=int, default=errno.ENOSPC)
    p.add_argument("--count", action="store_true", help="print the number of write events")
    p.add_argument("--force", action="store_true", help="start even if the free space looks too small")
    a = p.parse_args(argv)
    # The writer's warnings (a damaged part) on stderr, as the command line prints them.
    import logging

    log = logging.getLogger("featx")
    handler = logging.StreamHandler(sys.stderr)
    log.handlers[:], log.propagate = [handler], False
    log.setLevel(logging.INFO)
    faults = Faults(a.kill_at, a.fail_at, a.errno) if (a.kill_at or a.fail_at or a.count) else None
    code = drive(a.store, a.version, a.n, faults, force=a.force)
    if a.count and faults is not None:
        print("events", json.dumps({"events": faults.count, "final_from": faults.final_from}))
    if faults is not None and faults.failed_in:
        print("failed in", faults.failed_in)
    return code


# --- the campaign -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One fault and what the same command made of the store afterwards."""

    fault: str
    phase: str  # 'new' store or 'update'
    at: str  # where the fault struck
    returncode: int  # of the faulted run (-9: killed)
    resumes: int
    identical: bool
    left_after_fault: int  # bytes beside the store right after the fault (parts, temporaries, lock)
    left_after_resume: int  # bytes beside the store once the same command finished (must be 0)
    note: str = ""


class Forked:
    """A run of :func:`child_main` in a forked copy of this process (no interpreter start, no imports).

    Used by the quick test, whose process has featx.store imported already;
    the child is a real, separate process, killed with a real SIGKILL.
    """

    def __init__(self, argv: list[str], folder: Path) -> None:
        self.out, self.err = folder / f".out-{id(self)}", folder / f".err-{id(self)}"
        self.pid = os.fork()
        if self.pid == 0:  # the child
            code = 1
            try:
                with open(self.out, "w") as out, open(self.err, "w") as err:
                    os.dup2(out.fileno(), 1)
                    os.dup2(err.fileno(), 2)
                    sys.stdout, sys.stderr = out, err
                    code = child_main(argv)
                    out.flush()
                    err.flush()
            finally:
                os._exit(code)

    def wait(self, timeout: float | None = None) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.stdout, self.stderr = self.out.read_text(), self.err.read_text()
        self.out.unlink()
        self.err.unlink()
        return self.returncode


@dataclass
class Campaign:
    n: int = 40
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="featx-faults-")))
    seed: int = 0
    fork: bool = False  # run the writer in forked processes instead of new interpreters
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.baseline = {v: self.workdir / f"baseline-v{v}.h5" for v in (1, 2)}
        for version, path in self.baseline.items():
            self.run(path, version, check=True)
        self.events = {"new": self.count(None, 1), "update": self.count(self.baseline[1], 2)}

    # running the child
    def run(self, store: Path, version: int, *extra: str, check: bool = False, wait: bool = True):
        argv = [str(store), "--version", str(version), "--n", str(self.n), *extra]
        if self.fork:
            done = Forked(argv, self.workdir)
            if not wait:
                return done
            done.wait()
        else:
            command = [sys.executable, __file__, "drive", *argv]
            if not wait:
                return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"the run failed ({done.returncode}): {done.stderr}")
        return done

    def count(self, base: Path | None, version: int) -> dict:
        store = self.fresh_folder("count") / "s.h5"
        if base is not None:
            shutil.copy(base, store)
        out = self.run(store, version, "--count", check=True).stdout.splitlines()[-1]
        return json.loads(out.split(" ", 1)[1])

    def fresh_folder(self, name: str) -> Path:
        folder = self.workdir / f"{name}-{len(self.outcomes)}-{self.rng.randrange(10**6)}"
        folder.mkdir()
        return folder

    def start(self, phase: str, name: str) -> tuple[Path, int]:
        """A store path for a new store (version 1) or for an update of a copy of the complete v1 store."""
        store = self.fresh_folder(name) / "s.h5"
        if phase == "update":
            shutil.copy(self.baseline[1], store)
        return store, (2 if phase == "update" else 1)

    # comparing
    def identical(self, store: Path, version: int) -> bool:
        return contents(store) == contents(self.baseline[version])

    def finish(self, fault: str, phase: str, at: str, store: Path, version: int, returncode: int, note: str = "") -> Outcome:
        left = leftover_bytes(store)
        resumes = 0
        done = self.run(store, version)
        resumes += 1
        outcome = Outcome(
            fault, phase, at, returncode, resumes,
            done.returncode == 0 and self.identical(store, version), left, leftover_bytes(store),
            note or (done.stderr.strip().splitlines()[-1] if done.returncode else ""),
        )
        self.outcomes.append(outcome)
        return outcome

    # the faults
    def kill(self, phase: str, final: bool = False) -> Outcome:
        events = self.events[phase]
        low = events["final_from"] + 1 if final else 1
        at = self.rng.randint(low, events["events"])
        store, version = self.start(phase, "kill")
        done = self.run(store, version, "--kill-at", str(at))
        where = "final assembly" if at > events["final_from"] else "parts"
        return self.finish("kill -9", phase, f"event {at} of {events['events']} ({where})", store, version, done.returncode)

    def fill(self, phase: str, number: int = errno.ENOSPC) -> Outcome:
        events = self.events[phase]
        at = self.rng.randint(2, events["events"])
        store, version = self.start(phase, "full")
        done = self.run(store, version, "--fail-at", str(at), "--errno", str(number))
        name = "disk full" if number == errno.ENOSPC else f"I/O error ({errno.errorcode[number]})"
        note = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "(the run ended before the fault)"
        return self.finish(name, phase, f"event {at} of {events['events']}", store, version, done.returncode, note)

    def fill_at(self, phase: str, at: int) -> Outcome:
        """Every write from event *at* on fails with ENOSPC; the error's safe rows must be the rows the store shows."""
        events = self.events[phase]
        store, version = self.start(phase, "full")
        done = self.run(store, version, "--fail-at", str(at))
        where = next((line.split(" ", 2)[2] for line in done.stdout.splitlines() if line.startswith("failed in ")),
                     "after the run")
        note = one_line_error(done.returncode, done.stderr, store)
        outcome = self.finish("disk full", phase, f"event {at} of {events['events']} ({where})", store, version,
                              done.returncode, note)
        outcome.identical = outcome.identical and not note.startswith("NOT")
        return outcome

    def fills_spread(self, count: int) -> list[Outcome]:
        """Full disks at *count* write events spread evenly over whole runs, new stores and updates alternately.

        From the first part to the final file: parts, the index rewritten
        after each committed part, the final assembly, an incremental update's.
        Event counts vary a little from run to run (a part is committed at most
        once per 1/20 of the run's age), so each outcome says where its failure
        actually landed, as the faulted run saw it.
        """
        outcomes = []
        for k in range(count):
            phase = "update" if k % 2 else "new"
            last = self.events[phase]["events"] - 1  # the very last event is the rename, which writes nothing
            at = 2 + round((k // 2 + 0.5 * (k % 2)) * (last - 2) / max(1, (count - 1) // 2))
            outcomes.append(self.fill_at(phase, min(at, last)))
        return outcomes

    def peak_bytes(self) -> int:
        """Bytes a new store takes at its peak: every part, the index, and the final file beside them."""
        from featx.store import parts_dir

        store = self.fresh_folder("peak") / "s.h5"
        self.run(store, 1, "--kill-at", str(self.events["new"]["final_from"] + 1))
        parts = sum(p.stat().st_size for p in parts_dir(store).glob("*"))
        return parts + store.stat().st_size + self.baseline[1].stat().st_size

    def real_disks(self, count: int) -> list[Outcome]:
        """Real tmpfs disks of *count* sizes spread from 5 % to 130 % of the peak a new store takes.

        A tmpfs counts whole pages and its own metadata, so the last sizes
        reach the final assembly (or fit).
        """
        peak = self.peak_bytes()
        outcomes = []
        for k in range(count):
            fraction = 0.05 + 1.25 * k / max(1, count - 1)
            outcome = self.real_disk(fraction, peak)
            if outcome is None:
                return outcomes  # no mount (not root)
            outcomes.append(outcome)
        return outcomes

    def concurrent(self) -> Outcome:
        store, version = self.start("new", "race")
        first, second = (self.run(store, version, wait=False) for _ in range(2))
        results = []
        for p in (first, second):
            code = p.wait(timeout=300)
            results.append((code, p.stderr if isinstance(p.stderr, str) else p.stderr.read()))
        codes = sorted(code for code, _ in results)
        refused = [err.strip().splitlines()[-1] for code, err in results if code == 2]
        ok = codes in ([0, 0], [0, 2]) and all("is writing" in line for line in refused)
        note = refused[0] if refused else "the second run started after the first had finished"
        outcome = self.finish("concurrent writers", "new", f"exit codes {codes}", store, version, codes[-1], note)
        outcome.identical = outcome.identical and ok
        return outcome

    def corrupt(self, phase: str, how: str) -> Outcome:
        from featx.store import parts_dir

        events = self.events[phase]
        store, version = self.start(phase, "corrupt")
        at = self.rng.randint(events["final_from"] // 2, events["final_from"])
        self.run(store, version, "--kill-at", str(at))
        parts = sorted(parts_dir(store).glob("part-*.h5"))
        victim = self.rng.choice(parts)
        raw = bytearray(victim.read_bytes())
        if how == "bit flip":
            offset = data_offset(victim) + self.rng.randrange(LAYERS["narrow"] * 4)
            raw[offset] ^= 1 << self.rng.randrange(8)
        else:
            raw = raw[: len(raw) * 2 // 3]
        victim.write_bytes(bytes(raw))
        done = self.run(store, version)
        detected = "damaged" in done.stderr
        outcome = Outcome(
            f"{how} in a part", phase, f"{victim.name} of {len(parts)}", 0, 1,
            done.returncode == 0 and self.identical(store, version) and detected, 0, leftover_bytes(store),
            "detected and recomputed" if detected else "NOT detected",
        )
        self.outcomes.append(outcome)
        return outcome

    def real_disk(self, fraction: float, peak: int | None = None) -> Outcome | None:
        """A real tmpfs of *fraction* of the space the store needs (*peak*, else an estimate); enlarged after the failure."""
        disk = self.fresh_folder("tmpfs")
        size_kib = max(16, int(fraction * (peak or needed_bytes(self.n)) / 1024))
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)], capture_output=True, check=False).returncode:
            return None
        try:
            store = disk / "s.h5"
            done = self.run(store, 1, "--force")
            note = one_line_error(done.returncode, done.stderr, store) if done.returncode else "fitted"
            left = leftover_bytes(store)
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            again = self.run(store, 1)
            outcome = Outcome(
                "real full disk (tmpfs)", "new", f"{size_kib} KiB", done.returncode, 1,
                again.returncode == 0 and self.identical(store, 1) and done.returncode in (0, 2)
                and not note.startswith("NOT"), left, leftover_bytes(store), note,
            )
            self.outcomes.append(outcome)
            return outcome
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)

    def read_only(self) -> Outcome | None:
        disk = self.fresh_folder("readonly")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, check=False).returncode:
            return None
        try:
            shutil.copy(self.baseline[1], disk / "s.h5")
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            used = self.run(disk / "s.h5", 1)
            refused = self.run(disk / "new.h5", 1)
            ok = used.returncode == 0 and "up to date" in used.stdout and refused.returncode == 2
            outcome = Outcome(
                "read-only folder", "new", "complete store used, new store refused", refused.returncode, 0,
                ok and self.identical(disk / "s.h5", 1), 0, leftover_bytes(disk / "s.h5"),
                refused.stderr.strip().splitlines()[-1] if refused.stderr.strip() else "",
            )
            self.outcomes.append(outcome)
            return outcome
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def shown_rows(store: Path) -> int:
    """Rows a reader (``info``) sees in *store*, complete or not; 0 when there is none."""
    from featx.errors import FeatxError
    from featx.store import open_store

    if not store.exists():
        return 0
    try:
        with open_store(store) as s:
            return len(s)
    except FeatxError:
        return -1


def one_line_error(returncode: int, stderr: str, store: Path | None = None) -> str:
    """The faulted run's error line, or what is wrong with how it ended (starting with NOT).

    A full disk must end in exit 2 and one line (no traceback, no HDF5 dealloc
    noise); the rows it says are safe must be the rows a reader sees.
    """
    lines = stderr.strip().splitlines()
    if returncode == 0:
        return "(the run ended before the fault)"
    if returncode != 2:
        return f"NOT exit 2: {returncode}; {lines[-1][:200] if lines else ''}"
    errors = [line for line in lines if line.startswith("error: ")]
    noise = [line for line in lines if "Traceback" in line or "Exception ignored" in line or "dealloc" in line]
    if len(errors) != 1 or noise:
        return f"NOT one line: {len(errors)} error lines, {len(noise)} of tracebacks; {(noise or errors or [''])[0][:160]}"
    line = errors[0]
    if store is not None and " rows are safe" in line:
        safe = int(line.split("): ", 1)[1].split(" rows are safe")[0].replace(",", ""))
        shown = shown_rows(store)
        if safe != shown:
            return f"NOT the rows shown: {safe} said safe, {shown} shown; {line[:160]}"
    return line


def needed_bytes(n: int) -> int:
    """Roughly what a store of version 1 takes: its parts and its final file."""
    return 2 * n * sum(LAYERS.values()) * 4 + 200_000


def data_offset(part: Path) -> int:
    import h5py

    with h5py.File(part, "r") as f:
        return f["features/narrow"].id.get_chunk_info(0).byte_offset


def leftover_bytes(store: Path) -> int:
    """Bytes of every file in the store's folder (its own folder), the store excepted: parts, temporaries, lock."""
    return sum(p.stat().st_size for p in store.parent.rglob("*") if p.is_file() and p != store)


def contents(store: Path) -> dict | None:
    """Everything a reader gets from a store, as plain comparable values (None if it does not open complete)."""
    from featx.errors import FeatxError
    from featx.store import open_store

    try:
        with open_store(store) as s:
            if not s.complete:
                return None
            return {
                "ids": s.ids.tolist(), "labels": s.labels.tolist(), "splits": s.splits.tolist(), "classes": list(s.classes),
                "failed": s.failed.to_dict("list"),
                **{name: s.features(name).tobytes() for name in LAYERS},
            }
    except FeatxError:
        return None


# --- the real command, killed at random times ------------------------------------------------------
def cli_kills(kills: int, seed: int, workdir: Path) -> list[Outcome]:
    """``run_pipeline.py extract`` on real JPEGs killed with SIGKILL at random times, resumed, compared."""
    data_root = REPO.parent / "shared" / "data" / "hymenoptera_data"
    if not data_root.is_dir():
        return []
    data = workdir / "cli-data"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (data / split / cls).mkdir(parents=True, exist_ok=True)
            for src in sorted((data_root / split / cls).glob("*.jpg"))[:6]:
                shutil.copy(src, data / split / cls / src.name)
    args = ["extract", "--data", str(data), "--model", "resnet18", "--layer", "conv2", "--layer", "penultimate",
            "--weights", "none", "--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
            "--no-progress", "--no-autotune", "--checkpoint-seconds", "0"]
    baseline = workdir / "cli-baseline.h5"
    started = time.monotonic()
    subprocess.run([sys.executable, "run_pipeline.py", *args, "--out", str(baseline)], cwd=REPO, check=True, capture_output=True)
    length = time.monotonic() - started
    rng = random.Random(seed)
    outcomes = []
    for k in range(kills):
        store = workdir / f"cli-{k}" / "s.h5"
        store.parent.mkdir()
        delay = rng.uniform(0.3, 1.0) * length
        run = subprocess.Popen([sys.executable, "run_pipeline.py", *args, "--out", str(store)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        code = run.wait()
        left = leftover_bytes(store)
        again = subprocess.run(
            [sys.executable, "run_pipeline.py", *args, "--out", str(store)], cwd=REPO, capture_output=True, text=True, check=False
        )
        from featx.store import open_store

        same = False
        if again.returncode == 0:
            with open_store(store) as a, open_store(baseline) as b:
                same = a.ids.tolist() == b.ids.tolist() and all(
                    np.array_equal(a.features(name), b.features(name)) for name in ("conv2", "penultimate")
                )
        outcomes.append(Outcome("kill -9 (extract command)", "new", f"after {delay:.1f} s of {length:.1f} s", code, 1,
                                same, left, leftover_bytes(store)))
    return outcomes


# --- Ctrl-C in classify (issue 24) ------------------------------------------------------------------
CLASSIFY_FAMILIES = ("svm", "logreg", "bayes", "xgboost", "mlp")


def classify_store(path: Path, rows: int, cols: int, classes: int = 5, seed: int = 0) -> Path:
    """A complete synthetic store of *rows* x *cols* float32 features around one centre per class, split 3:1."""
    sys.path.insert(0, str(REPO / "tests"))
    from stores import write_store  # the tests' writer of exact stores

    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % classes
    centres = rng.normal(scale=1.0, size=(classes, cols))
    features = (centres[labels] + rng.normal(scale=2.0, size=(rows, cols))).astype(np.float32)
    ids = [f"{'train' if i % 4 else 'val'}/{'abcdefgh'[labels[i]]}/{i:07d}.jpg" for i in range(rows)]
    order = np.argsort(ids)
    return write_store(
        path, [ids[i] for i in order], labels[order], {"f": features[order]},
        splits=[ids[i].split("/")[0] for i in order], classes=tuple("abcdefgh"[:classes]),
    )


def classify_interrupts(count: int, seed: int, workdir: Path, *, rows: int = 20_000, cols: int = 128,
                        families: tuple[str, ...] = CLASSIFY_FAMILIES, sigterm_every: int = 0) -> list[Outcome]:
    """``run_pipeline.py classify`` interrupted (SIGINT, like Ctrl-C) at *count* random moments, every family in turn.

    Each family's uninterrupted run is timed first; each interruption lands at
    a uniform random moment of it (interpreter start, join, fit, prediction,
    artifact writing).  It must end in exit 130 (143 for SIGTERM, every
    *sigterm_every*-th) and one line, or exit 0 when the run had finished; and
    leave no run folder and no temporary one: the bytes left are counted.
    """
    store = classify_store(workdir / "classify.h5", rows, cols)
    rng = random.Random(seed)
    base = [sys.executable, "run_pipeline.py", "classify", "--features", f"{store}:f", "--no-plots", "--device", "cpu"]
    length = {}
    for family in families:
        out = workdir / f"classify-baseline-{family}"
        started = time.monotonic()
        subprocess.run([*base, "--model", family, "--out", str(out)], cwd=REPO, check=True, capture_output=True)
        length[family] = time.monotonic() - started
    outcomes = []
    for k in range(count):
        family = families[k % len(families)]
        term = bool(sigterm_every) and k % sigterm_every == sigterm_every - 1
        folder = workdir / f"classify-{k}"
        folder.mkdir()
        out = folder / "run"
        delay = rng.uniform(0.02, 0.85) * length[family]  # timings vary on a busy machine: not too near the end
        run = subprocess.Popen([*base, "--model", family, "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        run.send_signal(signal.SIGTERM if term else signal.SIGINT)
        stdout, stderr = run.communicate(timeout=600)
        code = run.returncode
        left = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        entries = sorted(p.name for p in folder.iterdir())
        expected = 143 if term else 130
        lines = stderr.strip().splitlines()
        if code == expected:
            clean = len(lines) >= 1 and lines[-1].startswith(("interrupted: ", "terminated: ")) and entries == [] and (
                not any("Traceback" in line or "Exception ignored" in line for line in lines)
            )
            note = lines[-1] if lines else ""
        elif code == 0:  # the run had finished: a complete run folder, nothing else
            clean = entries == ["run"] and (out / "results.json").is_file()
            note = "finished before the signal"
        else:
            clean, note = False, f"NOT {expected}: {lines[-1][:160] if lines else ''}"
        outcomes.append(Outcome(
            f"{'SIGTERM' if term else 'Ctrl-C'} (classify)", family, f"after {delay:.1f} s of {length[family]:.1f} s",
            code, 0, clean, 0 if code == 0 else left, 0, note if clean else f"NOT clean ({entries}): {note}",
        ))
    return outcomes


# --- report -------------------------------------------------------------------------------------------
def summary(outcomes: list[Outcome]) -> str:
    kills = [o for o in outcomes if o.fault.startswith("kill")]
    landed = [o for o in kills if o.returncode == -signal.SIGKILL]
    lines = [
        f"{'fault':<28} {'phase':<7} {'where':<36} {'rc':>4} {'same':>5} {'left after fault':>17} {'left after resume':>18}  note",
    ]
    for o in outcomes:
        lines.append(
            f"{o.fault:<28} {o.phase:<7} {o.at:<36} {o.returncode:>4} {'yes' if o.identical else 'NO':>5} "
            f"{o.left_after_fault:>15,} B {o.left_after_resume:>16,} B  {o.note[:120]}"
        )
    identical = sum(o.identical for o in outcomes)
    lines += [
        "",
        (
            f"kills: {len(kills)} ({len(landed)} landed, {sum('final' in o.at for o in kills)} in the final assembly, "
            f"{sum(o.phase == 'update' for o in kills)} in incremental updates); "
            f"resumes: {sum(o.resumes for o in outcomes)}"
        ),
        f"stores identical to an uninterrupted run (or, for classify, a clean end): {identical} of {len(outcomes)}",
        "outcomes by exit code: " + ", ".join(
            f"{code}: {sum(o.returncode == code for o in outcomes)}" for code in sorted({o.returncode for o in outcomes})
        ),
        (
            f"bytes left behind once the same command finished: {sum(o.left_after_resume for o in outcomes):,} "
            f"(largest after a fault, before resuming: {max((o.left_after_fault for o in outcomes), default=0):,})"
        ),
    ]
    return "\n".join(lines)


def run_campaign(
    *, kills: int = 12, fills: int = 4, races: int = 2, corruptions: int = 2, n: int = 40, seed: int = 0,
    tmpfs: bool = False, read_only: bool = False, cli: int = 0, workdir: Path | None = None, fork: bool = False,
    spread_fills: int = 0, disk_sizes: int = 0, classify: int = 0, classify_rows: int = 20_000,
    classify_cols: int = 128,
) -> list[Outcome]:
    """Run every fault; a third of the kills in incremental updates, one in each phase's final assembly.

    *tmpfs* adds real small disks and a read-only mount, *read_only* the read-only mount alone
    (both need root; without it they are left out).  Issue 24 adds *spread_fills* full disks at write
    events spread evenly over whole runs (the index rewrite included), *disk_sizes* real tmpfs disks of
    sizes spread over a run (root), and *classify* interruptions of the classify command.
    """
    campaign = Campaign(n=n, seed=seed, fork=fork, **({"workdir": workdir} if workdir else {}))
    for k in range(kills):
        phase = "update" if k % 3 == 2 else "new"
        campaign.kill(phase, final=k in (0, 2))
    for k in range(fills):
        campaign.fill("update" if k % 2 else "new", errno.EIO if k == fills - 1 and fills > 2 else errno.ENOSPC)
    for _ in range(races):
        campaign.concurrent()
    for k in range(corruptions):
        campaign.corrupt("new", "bit flip" if k % 2 == 0 else "truncation")
    if tmpfs:
        for fraction in (0.3, 0.6, 0.9):
            campaign.real_disk(fraction)
    if tmpfs or read_only:
        campaign.read_only()
    if spread_fills:
        campaign.fills_spread(spread_fills)
    if disk_sizes:
        campaign.real_disks(disk_sizes)
    outcomes = campaign.outcomes
    if classify:
        outcomes += classify_interrupts(classify, seed, campaign.workdir, rows=classify_rows, cols=classify_cols)
    if cli:
        outcomes += cli_kills(cli, seed, campaign.workdir)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["drive"]:
        return child_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=24, help="SIGKILLs of the store writer at random points (default 24)")
    p.add_argument("--fills", type=int, default=6, help="full disks (and one I/O error) at random points")
    p.add_argument("--races", type=int, default=3, help="pairs of concurrent writers")
    p.add_argument("--corruptions", type=int, default=4, help="parts bit-flipped or truncated")
    p.add_argument("--images", type=int, default=120, help="images of the synthetic folder")
    p.add_argument("--tmpfs", action="store_true", help="also a real small tmpfs and a read-only mount (root)")
    p.add_argument("--cli", type=int, default=0, metavar="K", help="also K kills of the real extract command")
    p.add_argument("--spread-fills", type=int, default=10, help="full disks at write events spread over whole runs")
    p.add_argument("--disk-sizes", type=int, default=10, help="real tmpfs disks of sizes spread over a run (root)")
    p.add_argument("--classify", type=int, default=20, help="Ctrl-C at random moments of classify, every family")
    p.add_argument("--classify-rows", type=int, default=20_000, help="rows of the store classify reads")
    p.add_argument("--classify-cols", type=int, default=128, help="its feature columns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every outcome here")
    a = p.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="featx-faults-") as tmp:
        outcomes = run_campaign(
            kills=a.kills, fills=a.fills, races=a.races, corruptions=a.corruptions, n=a.images, seed=a.seed,
            tmpfs=a.tmpfs, cli=a.cli, workdir=Path(tmp), spread_fills=a.spread_fills, disk_sizes=a.disk_sizes,
            classify=a.classify, classify_rows=a.classify_rows, classify_cols=a.classify_cols,
        )
    print(summary(outcomes))
    print(f"({time.monotonic() - started:.0f} s)")
    if a.json:
        a.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return 0 if all(o.identical and o.left_after_resume == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
