"""Writing an extraction into a store, resumably: :class:`StoreWriter`.

:meth:`StoreWriter.open` takes the store's lock and plans the run
(:mod:`._plan`); the writer then takes rows batch by batch into part files
(:mod:`._parts`), keeps the store file an index over them (:mod:`._index`) and
finally assembles them (:mod:`._assembly`).  The file at the store's path is
only ever replaced whole (:mod:`._atomic`), so ``kill -9`` at any point loses
at most the rows of the part being written, and the same command resumes after
the last complete part.

One process at a time writes a store (:mod:`._lock`); a run that cannot fit
is refused before it starts, and a write that fails (a full disk, an I/O
error) is one line that says what is safe (:mod:`._space`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputPathError, StoreError, message
from ..paths import check_writable_file
from ._assembly import write_final_store
from ._atomic import remove_stale_temporaries, write_small_atomically
from ._identity import StoreIdentity
from ._index import fill_index
from ._lock import StoreLock
from ._parts import OpenPart, Part, commit_part, create_part, discard_part, read_samples
from ._plan import StorePlan, candidates_from, plan_run
from ._schema import DATA_FINGERPRINT, RECIPE_ATTR, LayerSpec, parts_dir, store_attrs
from ._space import SpaceNeeded, check_free_space, write_error

__all__ = ["StoreWriter"]


class StoreWriter:
    """Writes an extraction into a store, resumably, as the store's only writer.  Used by :mod:`featx.extraction`.

    Making a writer only keeps its arguments; :meth:`open` does the work and
    says what is left to do.  Then :meth:`add` the rows of :attr:`StorePlan.remaining`
    and :meth:`finish`, or :meth:`close` to stop (what was committed stays).

    Parameters
    ----------
    path : path
        The store file.
    meta : dict
        Root attributes (configuration and provenance), written to the store
        and to its part files.  ``data_fingerprint`` says which images the
        store is made of: a complete store with another one is updated.
    layers : sequence of LayerSpec
        The layers requested.
    samples : ImageSource-like
        ``ids``, ``labels``, ``splits`` and ``classes`` of every candidate image.
    identity : StoreIdentity
        How the features are made (the extraction's recipe; an
        :class:`AttributeIdentity` for other writers): its text is written as
        the root attribute ``recipe``, and it alone says whether what a store
        or its parts recorded was made the same way.
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
        the writer releases it.  By default :meth:`open` takes it.

    Attributes
    ----------
    plan : StorePlan or None
        What the run has to do, once :meth:`open` decided it.
    lock : StoreLock or None
        The store's write lock, held until :meth:`finish` or :meth:`close`
        (None in a read-only folder, where only a complete store is accepted).

    Examples
    --------
    >>> writer = StoreWriter("s.h5", meta=meta, layers=[spec], samples=images)  # doctest: +SKIP
    >>> plan = writer.open()
    >>> for batch in batches(plan.remaining):
    ...     writer.add(stop=batch[-1] + 1, indices=batch, features={spec.name: compute(batch)})
    >>> writer.finish()
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        meta: Mapping[str, Any],
        layers: Sequence[LayerSpec],
        samples: Any,
        identity: StoreIdentity,
        overwrite: bool = False,
        force: bool = False,
        checkpoint_seconds: float = 10.0,
        checkpoint_bytes: int = 1 << 30,
        compression: str | None = None,
        lock: StoreLock | None = None,
    ) -> None:
        self.path = Path(path)
        self.parts = parts_dir(self.path)
        self.meta = {**meta, RECIPE_ATTR: identity.to_json()}
        self.layers = tuple(layers)
        self.samples = samples
        self.identity = identity
        self.overwrite = overwrite
        self.force = force
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpoint_bytes = checkpoint_bytes
        self.compression = compression
        self.lock = lock
        self.plan: StorePlan | None = None
        self._open: OpenPart | None = None
        self._committed: list[Part] = []
        self._started = self._last_commit = 0.0

    # opening ----------------------------------------------------------------------
    def open(self) -> StorePlan:
        """Take the store's lock, delete what dead runs left, and plan the run.

        With *overwrite*, the store and its parts are deleted first.  A writer
        with nothing to do releases the lock at once.

        Returns
        -------
        StorePlan
            Also kept as :attr:`plan`.

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
        """
        try:
            if not self.path.is_file():
                # Before the first mkdir: an unwritable path must leave nothing behind.
                check_writable_file(self.path, "out")
            if self.lock is None:
                try:
                    self.lock = StoreLock(self.path)
                except OutputPathError:
                    # A read-only folder: a complete store there can still be found up to date.
                    plan = self._plan(read_only=True)
                    if not plan.up_to_date:
                        raise
                    self.plan = plan
                    return plan
            remove_stale_temporaries(self.path)
            if self.overwrite:
                self._remove_all()
            self.plan = self._plan(read_only=False)
            self._committed = list(self.plan.parts)
            if self.plan.up_to_date:
                self.close()
            else:
                check_free_space(self.path, self._space_needed(), force=self.force)
        except BaseException:
            self.close()
            raise
        self._started = self._last_commit = time.monotonic()
        return self.plan

    def _plan(self, *, read_only: bool) -> StorePlan:
        return plan_run(
            self.path, layers=self.layers, samples=self.samples, differences=self.identity.differences,
            fingerprint=self.meta.get(DATA_FINGERPRINT), read_only=read_only,
        )

    def _remove_all(self) -> None:
        if self.parts.is_dir():
            for p in self.parts.iterdir():
                p.unlink()
            self.parts.rmdir()
        if self.path.exists():
            self.path.unlink()

    def _opened(self) -> StorePlan:
        if self.plan is None:
            raise StoreError(message(f"the writer of '{self.path}' is not open", hint="call its open() first"))
        return self.plan

    # progress ---------------------------------------------------------------------
    @property
    def rows_done(self) -> int:
        """Rows in committed parts."""
        return sum(p.rows for p in self._committed)

    def _done(self) -> int:
        """Candidates accounted for by the committed parts."""
        return self._committed[-1].stop if self._committed else 0

    def _remaining(self) -> Sequence[int]:
        return candidates_from(self._opened().candidates, self._done())

    def _space_needed(self) -> SpaceNeeded:
        """Bytes still to write: the parts of the candidates left, and the final file."""
        plan = self._opened()
        row_bytes = sum(spec.dim * np.dtype(spec.dtype).itemsize for spec in plan.todo)
        n = len(self.samples.ids)
        # Layers added: the final file copies the store and adds the new columns.
        final = (self.path.stat().st_size if plan.extends else 0) + n * row_bytes
        return SpaceNeeded(parts=len(self._remaining()) * row_bytes, final=final)

    def _failed_write(self, exc: BaseException) -> BaseException:
        """The one-line error for a failed write (the open part dropped), or *exc* itself if it is no I/O error.

        The rows said to be safe are the rows the store shows afterwards
        (``info``): those of the committed parts for a new store, whose index
        covers them; a complete store that is updated or extended stays as it
        was until the run finishes, so its own rows, and the rows of this run
        kept in parts are said apart.
        """
        self.abort()
        rows_safe, kept = self.rows_done, None
        if self.plan is not None and self.plan.existing_layers:
            rows_safe, kept = self._rows_in_store(), self.rows_done
        error = write_error(exc, store=self.path, rows_safe=rows_safe, needed=self._space_needed(), kept=kept)
        return exc if error is None else error

    def _rows_in_store(self) -> int:
        """Rows of the (complete) store at :attr:`path`, as a reader counts them; 0 if it cannot be read."""
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                return int(f["samples/id"].shape[0])
        except (OSError, KeyError):
            return 0

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
        plan = self._opened()
        try:
            if self._open is None:
                attrs = self.meta if plan.update is None else {**self.meta, "update_of": plan.update.base_fingerprint}
                self._open = create_part(
                    self.parts, len(self._committed), self._done(), attrs, plan.todo, batch_rows=len(indices)
                )
            part = self._open
            part.append(plan.todo, indices, features)
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
        plan = self._opened()
        if not plan.existing_layers:
            # A new store: keep the store file an up-to-date index of the parts.
            # (When layers are added to a complete store, or it is updated, that
            # store stays as it is until the run is finished.)
            table = read_samples(self._committed)
            attrs = store_attrs(
                self.meta, complete=False, rows=len(table.ids), candidates_done=self._done(),
                candidates=len(self.samples.ids),
            )
            try:
                write_small_atomically(
                    self.path,
                    lambda f: fill_index(
                        f, parts_folder=self.parts, parts=self._committed, table=table, layers=plan.todo,
                        root_attrs=attrs, classes=self.samples.classes,
                    ),
                )
            except (OSError, RuntimeError) as exc:
                # The index still shows the parts before this one: drop it too, so that the rows said to be
                # safe are the rows the store shows (`info`), and its space is free for the next run.
                dropped = self._committed.pop()
                dropped.path.unlink(missing_ok=True)
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

    # finishing ---------------------------------------------------------------------
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
        plan = self._opened()
        self.commit()
        remaining = self._remaining()
        if remaining:
            done = len(plan.candidates) - len(remaining)
            raise StoreError(
                message(f"cannot finish '{self.path}': {done} of {len(plan.candidates)} images were processed")
            )
        try:
            write_final_store(
                self.path, plan=plan, parts=self._committed, samples=self.samples, meta=self.meta,
                compression=self.compression,
            )
        except (OSError, RuntimeError) as exc:
            raise self._failed_write(exc) from None
        for part in self._committed:
            part.path.unlink()
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()
        self.close()
