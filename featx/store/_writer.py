"""Writing an extraction into a store, resumably: :class:`StoreWriter`.

The writer plans (what is already in the store, what is left, whether the
store was made by the same configuration), then takes rows batch by batch
into part files (:mod:`._parts`), keeps the store file an index over them
(:mod:`._index`) and finally assembles them (:mod:`._assembly`).  The file at
the store's path is only ever replaced whole (:mod:`._atomic`), so ``kill -9``
at any point loses at most the rows of the part being written, and the same
command resumes after the last complete part.

One process at a time writes a store (:mod:`._lock`); a run that cannot fit
is refused before it starts, and a write that fails (a full disk, an I/O
error) is one line that says what is safe (:mod:`._space`).  When the data
folder of a complete store grew or shrank, the writer plans an incremental
update: only the images new to the store are extracted, and the final file
keeps the rows of the images still present (:func:`._assembly.fill_updated_store`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from ..errors import OutputPathError, StoreError, StoreMismatchError, message, option
from ..paths import check_writable_file
from ._assembly import RowSources, fill_extended_store, fill_new_store, fill_updated_store
from ._atomic import remove_stale_temporaries, write_atomically
from ._identity import identity_differences
from ._index import fill_index
from ._lock import StoreLock
from ._parts import (
    OpenPart,
    Part,
    commit_part,
    create_part,
    discard_part,
    load_parts,
    part_indices,
    read_samples,
    remove_finished_parts,
    remove_parts,
)
from ._reader import open_hdf5
from ._schema import (
    FORMAT_VERSION,
    IDENTITY_KEYS,
    LAYER_IDENTITY_KEYS,
    LayerSpec,
    SampleTable,
    attr_value,
    is_layer,
    parts_dir,
    read_strings,
)
from ._space import SpaceNeeded, check_free_space, write_error

__all__ = ["StoreUpdate", "StoreWriter"]

log = logging.getLogger("featx")


def _listed(differences: list[tuple[str, Any, Any]]) -> str:
    """``"seed is 0 there, 1 here; ..."``: both values of each difference, for a message."""
    return "; ".join(f"{key} is {have!r} there, {want!r} here" for key, have, want in differences)


@dataclass(frozen=True)
class StoreUpdate:
    """What an incremental update changes in a complete store whose data folder changed.

    Attributes
    ----------
    added : int
        Images in the folder that the store has never seen.
    removed : int
        Images of the store (rows or failures) no longer in the folder.
    retried : int
        Images that failed last time and are still there: tried again, as a
        fresh extraction would.
    kept : int
        Rows kept as they are.
    base_fingerprint : str
        The data fingerprint of the store being updated.
    """

    added: int
    removed: int
    retried: int
    kept: int
    base_fingerprint: str


class StoreWriter:
    """Writes an extraction into a store, resumably, as the store's only writer.  Used by :mod:`featx.extraction`.

    Parameters
    ----------
    path : path
        The store file.
    meta : dict
        Root attributes (configuration and provenance); keys in
        :data:`IDENTITY_KEYS` must match an existing store, except
        ``data_fingerprint`` for a complete store, which is then updated.
    layers : list of LayerSpec
        The layers requested.
    samples : ImageCollection-like
        ``ids``, ``labels``, ``splits`` and ``classes`` of every candidate image.
    overwrite : bool
        Replace a store made with another configuration instead of refusing.
    force : bool
        Start even when the free space looks too small for what is left to write.
    checkpoint_seconds : float
        A part is committed once it is this old (or 1/20 of the run's age, if
        larger, so that long runs make a bounded number of parts), or holds more
        than ``checkpoint_bytes``.  ``0`` commits after every batch.
    checkpoint_bytes : int
        Bytes of features after which a part is committed whatever its age.
    compression : {None, 'gzip', 'lzf'}
        Compression of the final feature datasets.
    lock : StoreLock, optional
        The store's lock, taken earlier by the caller (:func:`lock_store`);
        the writer releases it.  By default the writer takes it.

    Attributes
    ----------
    start : int
        First candidate index still to extract (0 for a new store).
    remaining : sequence of int
        The candidate indices still to extract, increasing: ``range(start, N)``,
        or for an incremental update the images new to the store from *start* on.
    todo : list of LayerSpec
        Layers that still have to be extracted; empty when the store is up to date.
        For an update, every layer of the store.
    existing_layers : dict of str -> dict
        Layers of the complete store at *path* and their attributes (empty for a new store).
    update : StoreUpdate or None
        What an incremental update changes; None when the data folder is the store's.
    lock : StoreLock or None
        The store's write lock, held until :meth:`finish` or :meth:`close`
        (None in a read-only folder, where only a complete store is accepted).

    Raises
    ------
    OutputPathError
        *path* is a folder or cannot be created (nothing is created then).
    StoreLockedError
        Another process is writing the store.
    StoreMismatchError
        The store or its unfinished parts were made by another configuration.
    DiskFullError
        What is left to write does not fit in the free space (and *force* is false).
    StoreError
        Something that is not a featx store, or a store of a newer format, is at *path*.

    Notes
    -----
    The writer holds the store's lock (``<store>.lock``) from its creation to
    :meth:`finish` or :meth:`close`; a writer with nothing to do releases it at once.
    """

    #: Called with each layer's name once it is copied into the final file,
    #: before that file replaces the index (``None``: nothing is called).  Set on
    #: the class (``StoreWriter.on_final_layer = pause``), it reaches the writer
    #: that a command builds inside: crash-safety tests pause a run there to kill
    #: it.  It must not raise.
    on_final_layer: ClassVar[Callable[[str], None] | None] = None

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        meta: Mapping[str, Any],
        layers: Sequence[LayerSpec],
        samples: Any,
        overwrite: bool = False,
        force: bool = False,
        checkpoint_seconds: float = 10.0,
        checkpoint_bytes: int = 1 << 30,
        compression: str | None = None,
        lock: StoreLock | None = None,
    ) -> None:
        self.path = Path(path)
        self.parts = parts_dir(self.path)
        self.meta = dict(meta)
        self.samples = samples
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpoint_bytes = checkpoint_bytes
        self.compression = compression
        self._open: OpenPart | None = None
        self._committed: list[Part] = []
        self._started = time.monotonic()
        self._last_commit = self._started
        self.lock: StoreLock | None = lock
        self.existing_layers: dict[str, dict[str, Any]] = {}
        self.update: StoreUpdate | None = None
        # Candidates this run extracts (all of them, or an update's new images).
        self._pending: Sequence[int] = range(len(samples.ids))
        if not self.path.is_file():
            # Before the first mkdir: an unwritable path must leave nothing behind.
            try:
                check_writable_file(self.path, "out")
            except OutputPathError:
                self.close()
                raise
        try:
            if self.lock is None:
                self.lock = StoreLock(self.path)
        except OutputPathError:
            # A read-only folder: a complete store there can still be found up to date.
            self.todo = self._plan(list(layers), read_only=True)
            if self.todo:
                raise
            self.start = 0
            return
        try:
            remove_stale_temporaries(self.path)
            if overwrite:
                self._remove_all()
            self.todo = self._plan(list(layers))
            self.start = self._committed[-1].stop if self._committed else 0
            if self.todo:
                check_free_space(self.path, self.space_needed(), force=force)
            else:
                self.close()
        except BaseException:
            self.close()
            raise

    # planning ---------------------------------------------------------------------
    def _remove_all(self) -> None:
        if self.parts.is_dir():
            for p in self.parts.iterdir():
                p.unlink()
            self.parts.rmdir()
        if self.path.exists():
            self.path.unlink()

    def _check_identity(self, attrs: Mapping[str, Any], what: str) -> None:
        differences = identity_differences(attrs, self.meta, IDENTITY_KEYS)
        if differences:
            reason = (
                "the data folder changed since then"
                if any(key == "data_fingerprint" for key, _, _ in differences)
                else "the command differs"
            )
            raise StoreMismatchError(
                message(
                    f"{what} '{self.path}' was made with another configuration ({reason}): {_listed(differences)}",
                    hint=f"use {option('overwrite', True)} to replace it, or {option('out', 'PATH')} to write a new store",
                )
            )

    def _check_layer_identity(self, spec: LayerSpec, recorded: Mapping[str, Any]) -> None:
        differences = identity_differences(recorded, spec.attrs(), LAYER_IDENTITY_KEYS)
        if differences:
            raise StoreMismatchError(
                message(
                    f"layer '{spec.name}' already exists in '{self.path}' with other settings: {_listed(differences)}",
                    hint=f"use {option('overwrite', True)} to re-extract the store, or {option('out', 'PATH')}",
                )
            )

    def _read_existing(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Root attributes and layers' attributes (with their width, ``dim``) of the file at :attr:`path`."""
        replace = f"move it away, or use {option('overwrite', True)} to replace it"
        with open_hdf5(self.path, hint=replace) as f:
            attrs = dict(f.attrs)
            existing = {
                name: {
                    **{k: attr_value(v) for k, v in f["features"][name].attrs.items()},
                    "dim": int(f["features"][name].shape[1]),
                }
                for name in f.get("features", {})
                if is_layer(f["features"][name])
            }
        if "featx_format" not in attrs:
            raise StoreError(
                message(
                    "an HDF5 file that is not a featx store is in the way",
                    got=self.path,
                    hint=f"choose another {option('out')}, or use {option('overwrite', True)} to replace it",
                )
            )
        if int(attrs["featx_format"]) > FORMAT_VERSION:
            raise StoreError(
                message(
                    f"'{self.path}' is a store of a newer featx (store format {int(attrs['featx_format'])}; "
                    f"this featx reads and writes format {FORMAT_VERSION})",
                    hint=f"upgrade featx to use it, choose another {option('out')}, "
                    f"or use {option('overwrite', True)} to replace it",
                )
            )
        return attrs, existing

    def _plan(self, layers: list[LayerSpec], read_only: bool = False) -> list[LayerSpec]:
        if self.path.exists():
            attrs, existing = self._read_existing()
            complete = bool(attrs.get("complete", False))
            differences = identity_differences(attrs, self.meta, IDENTITY_KEYS)
            if complete and differences and all(key == "data_fingerprint" for key, _, _ in differences):
                return layers if read_only else self._plan_update(attrs, existing, layers)
            self._check_identity(attrs, "store")
            if complete:
                self.existing_layers = existing
                for spec in layers:
                    if spec.name in existing:
                        self._check_layer_identity(spec, existing[spec.name])
                layers = [spec for spec in layers if spec.name not in existing]
                if not read_only:
                    remove_finished_parts(self.parts, list(existing))
                if not layers:
                    return []
        if read_only:
            return layers
        self._committed = load_parts(
            self.parts, layers, lambda attrs: self._check_identity(attrs, "unfinished extraction in")
        )
        return layers

    def _plan_update(
        self, attrs: Mapping[str, Any], existing: dict[str, dict[str, Any]], layers: list[LayerSpec]
    ) -> list[LayerSpec]:
        """Plan the incremental update of the complete store at :attr:`path` to the data folder's images now."""
        update_hint = f"use {option('overwrite', True)} to extract everything again"
        new_layers = [spec.name for spec in layers if spec.name not in existing]
        if new_layers:
            raise StoreMismatchError(
                message(
                    f"the data folder of '{self.path}' changed since it was made, and layers it does not hold are "
                    f"asked for ({', '.join(new_layers)})",
                    hint=f"first update it with its own layers ({', '.join(existing)}), then add the new ones; "
                    f"or {update_hint}",
                )
            )
        for spec in layers:
            self._check_layer_identity(spec, existing[spec.name])
        wanted = {(spec.precision, spec.dtype) for spec in layers}
        specs = []
        for name, recorded in existing.items():
            spec = LayerSpec(
                name=name,
                node=str(recorded["node"]),
                pool=str(recorded["pool"]),
                dim=int(recorded["dim"]),
                source_shape=tuple(int(v) for v in recorded.get("source_shape", [recorded["dim"]])),
                precision=str(recorded.get("precision", "fp32")),
                dtype=str(recorded.get("dtype", "float32")),
            )
            if (spec.precision, spec.dtype) not in wanted:
                raise StoreMismatchError(
                    message(
                        f"layer '{name}' of '{self.path}' was extracted in {spec.precision} and stored as "
                        f"{spec.dtype}; this command computes {', '.join(f'{p}/{d}' for p, d in sorted(wanted))}",
                        hint=f"update the store with {option('precision', spec.precision)} "
                        f"{option('dtype', spec.dtype)}, or {update_hint}",
                    )
                )
            specs.append(spec)
        with open_hdf5(self.path, hint=update_hint) as f:
            rows = list(read_strings(f["samples/id"]))
            failed = set(read_strings(f["failed/id"]))
        ids = self.samples.ids
        old_rows = {image_id: row for row, image_id in enumerate(rows)}
        seen = set(old_rows) | failed
        now = set(ids)
        if seen == now:
            raise StoreMismatchError(
                message(
                    f"the images of '{self.path}' changed in place: the same file names, other file sizes "
                    f"(data fingerprint {attr_value(attrs.get('data_fingerprint'))!r} there, "
                    f"{self.meta.get('data_fingerprint')!r} here), and featx cannot tell which",
                    hint=update_hint,
                )
            )
        self._pending = [i for i, image_id in enumerate(ids) if image_id not in old_rows]
        base = str(attr_value(attrs.get("data_fingerprint")))
        self.update = StoreUpdate(
            added=len(now - seen),
            removed=len(seen - now),
            retried=len(failed & now),
            kept=len(ids) - len(self._pending),
            base_fingerprint=base,
        )
        self._old_rows = old_rows
        self.existing_layers = existing
        self.meta["update_of"] = base
        fingerprint = self.meta.get("data_fingerprint")

        def stale(part_attrs: Mapping[str, Any], names: set[str]) -> bool:
            # Not this update's: a finished run's leftovers, or an update towards another folder state.
            return (
                attr_value(part_attrs.get("data_fingerprint")) != fingerprint
                or attr_value(part_attrs.get("update_of")) != base
            )

        remove_parts(self.parts, stale)
        self._committed = load_parts(
            self.parts, specs, lambda part_attrs: self._check_identity(part_attrs, "unfinished update in")
        )
        return specs

    @property
    def up_to_date(self) -> bool:
        """Whether the store already holds every requested layer (nothing to extract)."""
        return not self.todo

    @property
    def resuming(self) -> bool:
        """Whether an unfinished extraction is continued."""
        return bool(self._committed)

    @property
    def rows_done(self) -> int:
        """Rows already in committed parts."""
        return sum(p.rows for p in self._committed)

    @property
    def remaining(self) -> Sequence[int]:
        """Candidate indices still to extract, increasing."""
        start = self._committed[-1].stop if self._committed else 0
        if isinstance(self._pending, range):
            return range(max(start, self._pending.start), self._pending.stop)
        return [i for i in self._pending if i >= start]

    def space_needed(self) -> SpaceNeeded:
        """Bytes still to write: the parts of :attr:`remaining`, and the final file."""
        row_bytes = sum(spec.dim * np.dtype(spec.dtype).itemsize for spec in self.todo)
        n = len(self.samples.ids)
        if self.existing_layers and self.update is None:
            # Layers added: the final file copies the store and adds the new columns.
            final = self.path.stat().st_size + n * row_bytes
        else:
            final = n * row_bytes
        return SpaceNeeded(parts=len(self.remaining) * row_bytes, final=final)

    # errors ----------------------------------------------------------------------
    def _failed_write(self, exc: BaseException) -> BaseException:
        """The one-line error for a failed write (the open part dropped), or *exc* itself if it is no I/O error."""
        self.abort()
        error = write_error(exc, store=self.path, rows_safe=self.rows_done, needed=self.space_needed())
        return exc if error is None else error

    # appending -----------------------------------------------------------------
    def add(
        self,
        *,
        stop: int,
        indices: Sequence[int],
        features: Mapping[str, np.ndarray],
        failures: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Append the results of the candidates up to *stop* (exclusive).

        Parameters
        ----------
        stop : int
            Candidates before this index are all accounted for after this call.
        indices : sequence of int
            Candidate indices of the rows in *features*, increasing.
        features : dict of name -> ndarray (len(indices), D)
        failures : sequence of (candidate index, reason)

        Raises
        ------
        DiskFullError, StoreWriteError
            The write failed; the part being written is dropped, committed parts stay.
        """
        try:
            if self._open is None:
                start = self._committed[-1].stop if self._committed else 0
                self._open = create_part(
                    self.parts, len(self._committed), start, self.meta, self.todo, batch_rows=len(indices)
                )
            part = self._open
            part.append(self.todo, indices, features)
        except (OSError, RuntimeError) as exc:
            raise self._failed_write(exc) from None
        part.failed.extend(failures)
        part.stop = stop
        now = time.monotonic()
        interval = max(self.checkpoint_seconds, (now - self._started) / 20)
        if now - self._last_commit >= interval or part.bytes >= self.checkpoint_bytes:
            self.commit()

    def commit(self) -> None:
        """Make the rows added so far durable and visible in the store file.

        Raises
        ------
        DiskFullError, StoreWriteError
            The write failed; the rows of the part being committed are dropped.
        """
        part, self._open = self._open, None
        if part is None:
            return
        try:
            self._committed.append(commit_part(part, self.samples))
        except (OSError, RuntimeError) as exc:
            raise self._failed_write(exc) from None
        self._last_commit = time.monotonic()
        if not self.existing_layers:
            # A new store: keep the store file an up-to-date index of the parts.
            # (When layers are added to a complete store, or it is updated, that
            # store stays as it is until the run is finished.)
            table = read_samples(self._committed)
            try:
                write_atomically(
                    self.path,
                    lambda f: fill_index(
                        f, parts_folder=self.parts, parts=self._committed, table=table, layers=self.todo,
                        root_attrs=self._root_attrs(complete=False, rows=len(table.ids)), classes=self.samples.classes,
                    ),
                )
            except (OSError, RuntimeError) as exc:
                # The part is committed (a resumed run uses it); only the index is behind.
                raise self._failed_write(exc) from None

    def abort(self) -> None:
        """Drop the part being written (after an error); committed parts stay."""
        part, self._open = self._open, None
        if part is not None:
            discard_part(part)

    def close(self) -> None:
        """Drop the part being written, if any, and release the store's lock.  Idempotent."""
        self.abort()
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            with contextlib.suppress(OSError):  # a read-only folder
                self.parts.rmdir()  # made for a part that was never committed
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # the store file --------------------------------------------------------------
    def _root_attrs(self, *, complete: bool, rows: int) -> dict[str, Any]:
        # In this order: the file's bytes depend on the order attributes are written.
        meta = {k: v for k, v in self.meta.items() if k != "update_of"}
        return {
            **meta,
            "featx_format": FORMAT_VERSION,
            "complete": complete,
            "rows": rows,
            "candidates_done": self._committed[-1].stop if self._committed else 0,
            "candidates": len(self.samples.ids),
        }

    def finish(self) -> None:
        """Assemble the parts into the final store, delete them and release the lock.

        Raises
        ------
        StoreError
            Not every candidate was added.
        StoreMismatchError
            The new layers have other rows than the store they are added to.
        DiskFullError, StoreWriteError
            The final file could not be written; the parts stay, and the same
            command assembles them again.
        """
        self.commit()
        if self.remaining:
            done = len(self._pending) - len(self.remaining)
            raise StoreError(
                message(f"cannot finish '{self.path}': {done} of {len(self._pending)} images were processed")
            )
        try:
            self._write_final()
        except (OSError, RuntimeError) as exc:
            raise self._failed_write(exc) from None
        for part in self._committed:
            part.path.unlink()
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()
        self.close()

    def _write_final(self) -> None:
        hook = type(self).on_final_layer
        if self.update is not None:
            sources, table = self._update_rows()
            attrs = {
                **self._root_attrs(complete=True, rows=len(table.ids)),
                "created_utc": self._base_created,
                "modified_utc": self.meta.get("created_utc"),
            }
            write_atomically(
                self.path,
                lambda f: fill_updated_store(
                    f, old_path=self.path, parts=self._committed, sources=sources, table=table, layers=self.todo,
                    root_attrs=attrs, classes=self.samples.classes, compression=self.compression, hook=hook,
                ),
            )
            return
        table = read_samples(self._committed)
        if self.existing_layers:
            with h5py.File(self.path, "r") as old:
                old_ids = list(read_strings(old["samples/id"]))
            if old_ids != table.ids:
                raise StoreMismatchError(
                    message(
                        f"the new layers of '{self.path}' have {len(table.ids)} rows, the store has {len(old_ids)} "
                        "(images decoded differently this time)",
                        hint=f"use {option('overwrite', True)} to re-extract everything",
                    )
                )
            write_atomically(
                self.path,
                lambda f: fill_extended_store(
                    f, old_path=self.path, parts=self._committed, n_rows=len(table.ids), layers=self.todo,
                    modified_utc=self.meta.get("created_utc"), recipe=self.meta.get("recipe"),
                    compression=self.compression, hook=hook,
                ),
            )
        else:
            write_atomically(
                self.path,
                lambda f: fill_new_store(
                    f, parts=self._committed, table=table, layers=self.todo,
                    root_attrs=self._root_attrs(complete=True, rows=len(table.ids)),
                    classes=self.samples.classes, compression=self.compression, hook=hook,
                ),
            )

    @property
    def _base_created(self) -> Any:
        with h5py.File(self.path, "r") as f:
            return attr_value(f.attrs.get("created_utc"))

    def _update_rows(self) -> tuple[RowSources, SampleTable]:
        """The rows of the updated store in sorted-id order, where each comes from, and its sample table."""
        ids, labels, splits = self.samples.ids, np.asarray(self.samples.labels, dtype=np.int32), self.samples.splits
        in_part: dict[int, tuple[int, int]] = {}
        for number, indices in enumerate(part_indices(self._committed)):
            for row, candidate in enumerate(indices.tolist()):
                in_part[candidate] = (number, row)
        chosen, part_of, row_of = [], [], []
        for candidate, image_id in enumerate(ids):
            if image_id in self._old_rows:
                chosen.append(candidate)
                part_of.append(-1)
                row_of.append(self._old_rows[image_id])
            elif candidate in in_part:
                chosen.append(candidate)
                part_of.append(in_part[candidate][0])
                row_of.append(in_part[candidate][1])
        failures = read_samples(self._committed)
        table = SampleTable(
            ids=[ids[i] for i in chosen],
            labels=labels[np.asarray(chosen, dtype=np.int64)] if chosen else np.empty(0, dtype=np.int32),
            splits=[splits[i] for i in chosen],
            failed_ids=failures.failed_ids,
            failed_reasons=failures.failed_reasons,
        )
        return RowSources(np.asarray(part_of, dtype=np.int64), np.asarray(row_of, dtype=np.int64)), table
