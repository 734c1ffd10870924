"""Planning a run into a store: what is there, whether it was made the same way, what is left.

:func:`plan_run` reads the file at the store's path and the parts of an
unfinished run beside it (:mod:`._parts`) and decides: a new store, a resumed
run, layers added to a complete store, an incremental update of a complete
store whose data folder changed, or nothing to do.  Whether what is recorded
was made by the configuration asked for now is one function's answer (a
:class:`~._identity.StoreIdentity`'s); the data fingerprint (which images) is the
store's own business: a complete store with another fingerprint is updated
(only the images new to it are extracted), not refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreMismatchError, message, option
from ._identity import identity_differences
from ._parts import Part, load_parts, remove_finished_parts, remove_parts
from ._reader import open_hdf5
from ._schema import (
    DATA_FINGERPRINT,
    FORMAT_VERSION,
    LAYER_IDENTITY_KEYS,
    LayerSpec,
    attr_value,
    is_layer,
    parts_dir,
    read_strings,
)

__all__ = ["Differences", "StorePlan", "StoreUpdate", "candidates_from", "plan_run"]

#: ``differences(recorded root attributes)``: ``(key, recorded, requested)`` of each
#: difference in how the features are made; empty when made the same way.
Differences = Callable[[Mapping[str, Any]], list[tuple[str, Any, Any]]]


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


def candidates_from(candidates: Sequence[int], start: int) -> Sequence[int]:
    """The *candidates* (increasing) from *start* on; a range stays a range."""
    if isinstance(candidates, range):
        return range(max(start, candidates.start), candidates.stop)
    return [i for i in candidates if i >= start]


@dataclass(frozen=True)
class StorePlan:
    """What a run into a store has to do; :meth:`~featx.store.StoreWriter.open` makes it.

    Attributes
    ----------
    todo : tuple of LayerSpec
        Layers that still have to be extracted; empty when the store is up to date.
        For an update, every layer of the store.
    candidates : sequence of int
        The candidate indices this run extracts, increasing: every image
        (``range(N)``), or for an incremental update the images new to the store.
    parts : tuple of Part
        The committed parts of an earlier, unfinished run that this run continues.
    existing_layers : dict of str -> dict
        Layers of the complete store at the path and their attributes (with
        their width, ``dim``); empty for a new store.
    update : StoreUpdate or None
        What an incremental update changes; None when the data folder is the store's.
    kept_rows : dict of str -> int
        For an update, the row in the store of each image kept.
    """

    todo: tuple[LayerSpec, ...]
    candidates: Sequence[int]
    parts: tuple[Part, ...] = ()
    existing_layers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    update: StoreUpdate | None = None
    kept_rows: Mapping[str, int] = field(default_factory=dict)

    @property
    def up_to_date(self) -> bool:
        """Whether the store already holds every requested layer (nothing to extract)."""
        return not self.todo

    @property
    def resuming(self) -> bool:
        """Whether an unfinished extraction is continued."""
        return bool(self.parts)

    @property
    def start(self) -> int:
        """First candidate index not in :attr:`parts` (0 for a new run)."""
        return self.parts[-1].stop if self.parts else 0

    @property
    def remaining(self) -> Sequence[int]:
        """The candidate indices still to extract, increasing: :attr:`candidates` from :attr:`start` on."""
        return candidates_from(self.candidates, self.start)

    @property
    def extends(self) -> bool:
        """Whether layers are added to a complete store (which stays as it is until the run is finished)."""
        return bool(self.existing_layers) and self.update is None


def _listed(differences: list[tuple[str, Any, Any]]) -> str:
    """``"seed is 0 there, 1 here; ..."``: both values of each difference, for a message."""
    return "; ".join(f"{key} is {have!r} there, {want!r} here" for key, have, want in differences)


@dataclass(frozen=True)
class _Planner:
    path: Path
    layers: tuple[LayerSpec, ...]
    samples: Any
    configuration: Differences
    fingerprint: Any

    @property
    def parts(self) -> Path:
        return parts_dir(self.path)

    def differences(self, attrs: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """The configuration's differences, then the data fingerprint's."""
        earlier = getattr(self.samples, "earlier_fingerprint", None)
        if earlier is not None and attr_value(attrs.get(DATA_FINGERPRINT)) == earlier:
            # Made by a featx that fingerprinted files by size alone: the same images as far as it could tell.
            attrs = {**attrs, DATA_FINGERPRINT: self.fingerprint}
        return self.configuration(attrs) + identity_differences(
            attrs, {DATA_FINGERPRINT: self.fingerprint}, [DATA_FINGERPRINT]
        )

    def check_identity(self, attrs: Mapping[str, Any], what: str) -> None:
        differences = self.differences(attrs)
        if differences:
            reason = (
                "the data folder changed since then"
                if any(key == DATA_FINGERPRINT for key, _, _ in differences)
                else "the command differs"
            )
            raise StoreMismatchError(
                message(
                    f"{what} '{self.path}' was made with another configuration ({reason}): {_listed(differences)}",
                    hint=f"use {option('overwrite', True)} to replace it, or {option('out', 'PATH')} to write a new store",
                )
            )

    def check_layer_identity(self, spec: LayerSpec, recorded: Mapping[str, Any]) -> None:
        differences = identity_differences(recorded, spec.attrs(), LAYER_IDENTITY_KEYS)
        if differences:
            raise StoreMismatchError(
                message(
                    f"layer '{spec.name}' already exists in '{self.path}' with other settings: {_listed(differences)}",
                    hint=f"use {option('overwrite', True)} to re-extract the store, or {option('out', 'PATH')}",
                )
            )

    def read_existing(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
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

    def plan(self, read_only: bool) -> StorePlan:
        layers = self.layers
        everything = range(len(self.samples.ids))
        complete_layers: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            attrs, existing = self.read_existing()
            complete = bool(attrs.get("complete", False))
            differences = self.differences(attrs)
            if complete and differences and all(key == DATA_FINGERPRINT for key, _, _ in differences):
                return StorePlan(todo=layers, candidates=everything) if read_only else self.plan_update(attrs, existing)
            self.check_identity(attrs, "store")
            if complete:
                complete_layers = existing
                for spec in layers:
                    if spec.name in existing:
                        self.check_layer_identity(spec, existing[spec.name])
                layers = tuple(spec for spec in layers if spec.name not in existing)
                if not read_only:
                    remove_finished_parts(self.parts, list(existing))
                if not layers:
                    return StorePlan(todo=(), candidates=everything, existing_layers=complete_layers)
        if read_only:
            return StorePlan(todo=layers, candidates=everything, existing_layers=complete_layers)
        parts = load_parts(self.parts, layers, lambda attrs: self.check_identity(attrs, "unfinished extraction in"))
        return StorePlan(todo=layers, candidates=everything, parts=tuple(parts), existing_layers=complete_layers)

    def plan_update(self, attrs: Mapping[str, Any], existing: dict[str, dict[str, Any]]) -> StorePlan:
        """The plan that updates the complete store at :attr:`path` to the data folder's images now."""
        update_hint = f"use {option('overwrite', True)} to extract everything again"
        new_layers = [spec.name for spec in self.layers if spec.name not in existing]
        if new_layers:
            raise StoreMismatchError(
                message(
                    f"the data folder of '{self.path}' changed since it was made, and layers it does not hold are "
                    f"asked for ({', '.join(new_layers)})",
                    hint=f"first update it with its own layers ({', '.join(existing)}), then add the new ones; "
                    f"or {update_hint}",
                )
            )
        for spec in self.layers:
            self.check_layer_identity(spec, existing[spec.name])
        wanted = {(spec.precision, spec.dtype) for spec in self.layers}
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
                views=int(recorded.get("views", 1)),
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
                    f"the images of '{self.path}' changed in place: the same file names, but other file sizes or "
                    "modification times (a file replaced by another, or the folder copied without keeping times; "
                    f"data fingerprint {attr_value(attrs.get(DATA_FINGERPRINT))!r} there, "
                    f"{self.fingerprint!r} here), and featx cannot tell which",
                    hint=update_hint,
                )
            )
        candidates = [i for i, image_id in enumerate(ids) if image_id not in old_rows]
        base = str(attr_value(attrs.get(DATA_FINGERPRINT)))
        update = StoreUpdate(
            added=len(now - seen),
            removed=len(seen - now),
            retried=len(failed & now),
            kept=len(ids) - len(candidates),
            base_fingerprint=base,
        )

        def stale(part_attrs: Mapping[str, Any], names: set[str]) -> bool:
            # Not this update's: a finished run's leftovers, or an update towards another folder state.
            return (
                attr_value(part_attrs.get(DATA_FINGERPRINT)) != self.fingerprint
                or attr_value(part_attrs.get("update_of")) != base
            )

        remove_parts(self.parts, stale)
        parts = load_parts(self.parts, specs, lambda part_attrs: self.check_identity(part_attrs, "unfinished update in"))
        return StorePlan(
            todo=tuple(specs), candidates=candidates, parts=tuple(parts), existing_layers=existing, update=update,
            kept_rows=old_rows,
        )


def plan_run(
    path: Path,
    *,
    layers: Sequence[LayerSpec],
    samples: Any,
    differences: Differences,
    fingerprint: Any,
    read_only: bool = False,
) -> StorePlan:
    """Plan a run that extracts *layers* of *samples* into the store at *path*.

    Parameters
    ----------
    path : Path
        The store file (it may not exist).
    layers : sequence of LayerSpec
        The layers requested.
    samples : ImageCollection-like
        ``ids`` of every candidate image, sorted.
    differences : callable
        ``differences(recorded root attributes)``: how the configuration that
        made a store or a part differs from this one (a :class:`~._identity.StoreIdentity`'s).
    fingerprint : str
        The data fingerprint of *samples* (root attribute ``data_fingerprint``).
    read_only : bool
        The folder cannot be written: nothing is deleted, and parts are not read.

    Returns
    -------
    StorePlan

    Raises
    ------
    StoreMismatchError
        The store or its unfinished parts were made by another configuration.
    StoreError
        Something that is not a featx store, or a store of a newer format, is at *path*.

    Notes
    -----
    Part files that cannot be continued are deleted (unless *read_only*):
    damaged ones, those left by a finished run, those of an update towards
    another state of the data folder.
    """
    return _Planner(Path(path), tuple(layers), samples, differences, fingerprint).plan(read_only)
