"""Writing an extraction into a store, resumably: :class:`StoreWriter`.

The writer plans (what is already in the store, what is left, whether the
store was made by the same configuration), then takes rows batch by batch
into part files (:mod:`._parts`), keeps the store file an index over them
(:mod:`._index`) and finally assembles them (:mod:`._assembly`).  The file at
the store's path is only ever replaced whole (:mod:`._atomic`), so ``kill -9``
at any point loses at most the rows of the part being written, and the same
command resumes after the last complete part.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from ..errors import StoreError, StoreMismatchError, message, option
from ..paths import check_writable_file
from ._assembly import fill_extended_store, fill_new_store
from ._atomic import remove_stale_temporaries, write_atomically
from ._identity import identity_differences
from ._index import fill_index
from ._parts import (
    OpenPart,
    Part,
    commit_part,
    create_part,
    discard_part,
    load_parts,
    read_samples,
    remove_finished_parts,
)
from ._reader import open_hdf5
from ._schema import (
    FORMAT_VERSION,
    IDENTITY_KEYS,
    LAYER_IDENTITY_KEYS,
    LayerSpec,
    attr_value,
    is_layer,
    parts_dir,
    read_strings,
)

__all__ = ["StoreWriter"]


def _listed(differences: list[tuple[str, Any, Any]]) -> str:
    """``"seed is 0 there, 1 here; ..."``: both values of each difference, for a message."""
    return "; ".join(f"{key} is {have!r} there, {want!r} here" for key, have, want in differences)


class StoreWriter:
    """Writes an extraction into a store, resumably.  Used by :mod:`featx.extraction`.

    Parameters
    ----------
    path : path
        The store file.
    meta : dict
        Root attributes (configuration and provenance); keys in
        :data:`IDENTITY_KEYS` must match an existing store.
    layers : list of LayerSpec
        The layers requested.
    samples : ImageCollection-like
        ``ids``, ``labels``, ``splits`` and ``classes`` of every candidate image.
    overwrite : bool
        Replace a store made with another configuration instead of refusing.
    checkpoint_seconds : float
        A part is committed once it is this old (or 1/20 of the run's age, if
        larger, so that long runs make a bounded number of parts), or holds more
        than ``checkpoint_bytes``.  ``0`` commits after every batch.
    checkpoint_bytes : int
        Bytes of features after which a part is committed whatever its age.
    compression : {None, 'gzip', 'lzf'}
        Compression of the final feature datasets.

    Attributes
    ----------
    start : int
        First candidate index still to extract (0 for a new store).
    todo : list of LayerSpec
        Layers that still have to be extracted; empty when the store is up to date.
    existing_layers : dict of str -> dict
        Layers of the complete store at *path* and their attributes (empty for a new store).

    Raises
    ------
    OutputPathError
        *path* is a folder or cannot be created (nothing is created then).
    StoreMismatchError
        The store or its unfinished parts were made by another configuration.
    StoreError
        Something that is not a featx store is at *path*.
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
        checkpoint_seconds: float = 10.0,
        checkpoint_bytes: int = 1 << 30,
        compression: str | None = None,
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
        if not self.path.is_file():
            # Before the first mkdir: an unwritable path must leave nothing behind.
            check_writable_file(self.path, "out")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        if overwrite:
            self._remove_all()
        self.existing_layers: dict[str, dict[str, Any]] = {}
        self.todo = self._plan(list(layers))
        self.start = self._committed[-1].stop if self._committed else 0

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
        """Root attributes and layers' attributes of the file at :attr:`path`."""
        replace = f"move it away, or use {option('overwrite', True)} to replace it"
        with open_hdf5(self.path, hint=replace) as f:
            attrs = dict(f.attrs)
            existing = {
                name: {k: attr_value(v) for k, v in f["features"][name].attrs.items()}
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
        return attrs, existing

    def _plan(self, layers: list[LayerSpec]) -> list[LayerSpec]:
        if self.path.exists():
            attrs, existing = self._read_existing()
            self._check_identity(attrs, "store")
            if bool(attrs.get("complete", False)):
                self.existing_layers = existing
                for spec in layers:
                    if spec.name in existing:
                        self._check_layer_identity(spec, existing[spec.name])
                remove_finished_parts(self.parts, list(existing))
                layers = [spec for spec in layers if spec.name not in existing]
                if not layers:
                    return []
        self._committed = load_parts(
            self.parts, layers, lambda attrs: self._check_identity(attrs, "unfinished extraction in")
        )
        return layers

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
        """
        if self._open is None:
            start = self._committed[-1].stop if self._committed else 0
            self._open = create_part(self.parts, len(self._committed), start, self.meta, self.todo)
        part = self._open
        part.append(self.todo, indices, features)
        part.failed.extend(failures)
        part.stop = stop
        now = time.monotonic()
        interval = max(self.checkpoint_seconds, (now - self._started) / 20)
        if now - self._last_commit >= interval or part.bytes >= self.checkpoint_bytes:
            self.commit()

    def commit(self) -> None:
        """Make the rows added so far durable and visible in the store file."""
        part, self._open = self._open, None
        if part is None:
            return
        self._committed.append(commit_part(part, self.samples))
        self._last_commit = time.monotonic()
        if not self.existing_layers:
            # A new store: keep the store file an up-to-date index of the parts.
            # (When layers are added to a complete store, that store stays as it is
            # until the new layers are finished.)
            table = read_samples(self._committed)
            write_atomically(
                self.path,
                lambda f: fill_index(
                    f, parts_folder=self.parts, parts=self._committed, table=table, layers=self.todo,
                    root_attrs=self._root_attrs(complete=False, rows=len(table.ids)), classes=self.samples.classes,
                ),
            )

    def abort(self) -> None:
        """Drop the part being written (after an error); committed parts stay."""
        part, self._open = self._open, None
        if part is not None:
            discard_part(part)

    # the store file --------------------------------------------------------------
    def _root_attrs(self, *, complete: bool, rows: int) -> dict[str, Any]:
        # In this order: the file's bytes depend on the order attributes are written.
        return {
            **self.meta,
            "featx_format": FORMAT_VERSION,
            "complete": complete,
            "rows": rows,
            "candidates_done": self._committed[-1].stop if self._committed else 0,
            "candidates": len(self.samples.ids),
        }

    def finish(self) -> None:
        """Assemble the parts into the final store and delete them.

        Raises
        ------
        StoreError
            Not every candidate was added.
        StoreMismatchError
            The new layers have other rows than the store they are added to.
        """
        self.commit()
        covered = self._committed[-1].stop if self._committed else 0
        if covered != len(self.samples.ids):
            raise StoreError(
                message(f"cannot finish '{self.path}': {covered} of {len(self.samples.ids)} images were processed")
            )
        table = read_samples(self._committed)
        hook = type(self).on_final_layer
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
                    modified_utc=self.meta.get("created_utc"), compression=self.compression, hook=hook,
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
        for part in self._committed:
            part.path.unlink()
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()
