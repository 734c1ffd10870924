"""Feature inputs of a classifier: ``STORE[:LAYER]`` specs joined on sample id.

Several stores (AlexNet ``fc7``, ResNet ``penultimate``, ...) are combined
column-wise.  Rows are matched by sample id, never by position: stores of the
same folder can differ in their rows (an image that failed in one network, a
store extracted before images were added), so the join keeps the ids every
input has and reports the others.  Features are read through
:func:`featx.store.open_store` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClassifyError, ConfigError, StoreError, choices, close_matches, message, option
from ..formatting import printable
from ..store import FeatureStore, open_store

__all__ = ["FeatureBlock", "JoinedFeatures", "parse_feature_spec", "check_feature_specs", "join_features",
           "views_as_rows"]

# Root attributes that say how a block's features were computed; kept with
# every classifier so that `predict` can compute the same features again.
log = logging.getLogger("featx")
LAYER_KEYS = ("node", "pool", "requested", "precision", "dtype")
_EXAMPLES = 3


@dataclass
class FeatureBlock:
    """One input of the join: a layer of a store, and where its columns went.

    Attributes
    ----------
    spec : str
        ``STORE:LAYER`` as a label for tables and messages.
    store : Path
        The store file.
    layer : str
        The feature dataset used.
    dim : int
        Its number of columns.
    start : int
        First column of the block in the joined matrix.
    provenance : dict
        Model, weights, preprocessing and data attributes of the store.
    layer_info : dict
        ``node``, ``pool``, ``requested``, ``precision``, ``dtype`` of the layer.
    views : int
        Views per image of a layer extracted with training views (its dataset's
        ``views`` attribute): the store row holds ``views x dim`` columns, view
        after view; ``dim`` is one view's.
    """

    spec: str
    store: Path
    layer: str
    dim: int
    start: int
    provenance: dict[str, Any]
    layer_info: dict[str, Any]
    views: int = 1

    @property
    def columns(self) -> slice:
        return slice(self.start, self.start + self.dim)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "store": str(self.store),
            "layer": self.layer,
            "dim": self.dim,
            "views": self.views,
            "start": self.start,
            "provenance": self.provenance,
            "layer_info": self.layer_info,
        }


@dataclass
class JoinedFeatures:
    """Samples present in every input, with their concatenated features.

    Attributes
    ----------
    ids : ndarray of str, (n_samples,)
        Sorted sample ids.
    X : ndarray of float32, (n_samples, n_features), or None
        Blocks side by side, in input order; ``None`` when joined with
        ``load=False`` (read block by block with :meth:`rows`).
    labels : ndarray of int, (n_samples,)
        Index into ``classes``; ``-1`` for unlabelled samples.
    classes : list of str
        Names of the classes that labelled samples have, sorted.
    splits : ndarray of str, (n_samples,)
        ``'train'``, ``'val'``, ``'test'`` or ``''``.
    blocks : list of FeatureBlock
    missing : dict of str -> list of str
        For each input spec, the ids another input has and it lacks (left out).
    """

    ids: np.ndarray
    X: np.ndarray | None
    labels: np.ndarray
    classes: list[str]
    splits: np.ndarray
    blocks: list[FeatureBlock]
    missing: dict[str, list[str]] = field(default_factory=dict)
    sources: list[_Source] = field(default_factory=list, repr=False)
    views: int = 1

    def load(self) -> None:
        """Read every input into ``X``: one float32 matrix, filled store by store in contiguous row blocks.

        With training views, ``X`` holds one row per view (:meth:`view_rows`).

        Raises
        ------
        ClassifyError
            An input holds NaN or infinite features.
        """
        if self.views > 1:
            self.check()
            self.X = self.rows(np.arange(self.ids.size * self.views))
            return
        X = np.empty((self.ids.size, self.n_features), dtype=np.float32)
        for source in self.sources:
            with open_store(source.path) as store:
                _scan(store, source, self.ids, X)
        self.X = X

    def view_rows(self, images: np.ndarray) -> np.ndarray:
        """The rows of :meth:`rows` that hold the views of *images* (joined sample indices): ``image x views + v``.

        Without training views (``views == 1``) these are *images* themselves.
        """
        images = np.asarray(images, dtype=np.int64)
        return (images[:, None] * self.views + np.arange(self.views)).ravel()

    def check(self) -> None:
        """Check, block by block, that every input is finite, keeping nothing (what :meth:`load` checks)."""
        for source in self.sources:
            with open_store(source.path) as store:
                _scan(store, source, self.ids, None)

    @property
    def n_features(self) -> int:
        """Columns of the joined matrix (known without reading it)."""
        return sum(b.dim for b in self.blocks)

    def rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Features of the joined *rows*, read from the stores: a training matrix, or one block of a streaming fit.

        Each store is read in contiguous windows of at most :data:`READ_ROWS`
        rows that hold wanted rows (never h5py fancy indexing, never a read
        larger than one window), and only the wanted rows are kept: the result
        is the only copy of the features made.

        Parameters
        ----------
        rows : ndarray of int, (n_rows,)
            Indices into the joined samples (increasing ones read in one sweep);
            with training views, into their views (:meth:`view_rows`): row
            ``i x views + v`` is view ``v`` of sample ``i``, read from the
            store row of sample ``i``.
        out : ndarray of float32, (>= n_rows, n_features), optional
            A buffer reused from block to block.

        Returns
        -------
        ndarray of float32, (n_rows, n_features)
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self.X is not None:
            return self.X[rows]
        block = (np.empty((rows.size, self.n_features), dtype=np.float32) if out is None else out[: rows.size])
        images, view = (rows // self.views, rows % self.views) if self.views > 1 else (rows, None)
        for source in self.sources:
            with open_store(source.path) as store:
                _read_windows(store, source, source.rows[images], block, view)
        return block


def views_as_rows(X: np.ndarray, dims: Sequence[int], views: int) -> np.ndarray:
    """Images with every view (each input's ``views x dim`` columns, view after view) -> one row per view.

    Row ``i x views + v`` of the result is view ``v`` of image ``i``: the layout :meth:`JoinedFeatures.rows` reads.
    """
    n = X.shape[0]
    out = np.empty((n * views, sum(dims)), dtype=np.float32)
    start = column = 0
    for dim in dims:
        out[:, column : column + dim] = X[:, start : start + views * dim].reshape(n * views, dim)
        start += views * dim
        column += dim
    return out


def parse_feature_spec(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """``"STORE[:LAYER]"`` -> ``(store path, layer or None)``.

    A path that exists as given is taken whole, so a store whose name holds a
    colon still works; otherwise the text after the last colon is the layer.
    """
    text = os.fspath(spec)
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    store, layer = text.rsplit(":", 1)
    if not store or not layer or "/" in layer or os.sep in layer:
        return Path(text), None
    return Path(store), layer


def check_feature_specs(specs: Sequence[str | os.PathLike] | str | os.PathLike) -> tuple[str, ...]:
    """The ``STORE[:LAYER]`` specs as a tuple of str; none at all is a :class:`~featx.errors.ConfigError`.

    A single spec (a str or a path) is accepted for one input.
    """
    items = (specs,) if isinstance(specs, (str, os.PathLike)) else tuple(specs)
    if not items:
        raise ConfigError(
            message("no features given", hint=f"pass {option('features', 'STORE[:LAYER]')}, one per store to join")
        )
    return tuple(os.fspath(s) for s in items)


def _choose_layer(store: FeatureStore, layer: str | None) -> str:
    layers = store.layers
    if not layers:
        raise StoreError(message(f"store '{store.path}' holds no feature layer", hint="extract a layer into it first"))
    if layer is not None:
        if layer not in layers:
            hint = close_matches(layer, layers) + (
                f"use {option('features', f'{store.path}:NAME')} with one of them, or extract the layer first"
            )
            raise StoreError(
                message(f"the layer of store '{store.path}'", allowed=choices(layers), got=layer, hint=hint)
            )
        return layer
    if len(layers) == 1:
        return layers[0]
    raise StoreError(
        message(
            f"store '{store.path}' holds several layers ({', '.join(layers)})",
            hint=f"name one, e.g. {option('features', f'{store.path}:{layers[-1]}')}",
        )
    )


def _check_complete(store: FeatureStore) -> None:
    if not store.complete:
        done, total = store.meta.get("candidates_done", "?"), store.meta.get("candidates", "?")
        raise StoreError(
            message(
                f"store '{store.path}' is incomplete: its extraction stopped after {done} of {total} images",
                hint="finish it by running the same extract command again",
            )
        )


def _class_names(store: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """Class name of each row (``''`` when unlabelled), so stores are compared by name."""
    names = np.array([*store.classes, ""], dtype=object)
    return names[store.labels[rows]]


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(f"'{printable(i)}'" for i in list(ids)[:_EXAMPLES])
    return shown + (", ..." if len(ids) > _EXAMPLES else "")


def _no_common_ids(stores: list[FeatureStore]) -> ClassifyError:
    described = "; ".join(
        f"'{s.path}' has {len(s):,} ids (e.g. {_examples(s.ids[:1])}) from {s.meta.get('data_root', '?')}"
        for s in stores
    )
    return ClassifyError(
        message(
            f"the feature inputs share no sample id, so they cannot be joined: {described}",
            hint="join stores extracted from the same data folder",
        )
    )


def _warn_data_roots(stores: list[FeatureStore]) -> None:
    """Warn when the stores were extracted from different data folders (their ``data_root`` attributes).

    Ids are paths relative to the data folder, so two folders with the same
    file names join silently even when they hold different images; a store
    moved or re-extracted from a copy of the folder is also reported, which a
    warning (not an error) leaves the user to judge.
    """
    roots = {str(store.meta["data_root"]) for store in stores if store.meta.get("data_root") is not None}
    if len(roots) < 2:
        return
    described = "; ".join(f"'{store.path}' from {store.meta.get('data_root', '?')}" for store in stores)
    log.warning(
        message(
            f"the feature inputs were extracted from different data roots ({described}): they are joined on "
            "sample ids relative to each root, as if the folders held the same images",
            hint="join stores extracted from the same data folder, or check that the folders hold the same images",
        )
    )


def _views(store: FeatureStore, layer: str) -> int:
    """Training views per image of a layer: its ``views`` attribute (1 when absent), checked against its width."""
    info = store.layer_info(layer)
    views = info.get("views", 1)
    width = int(info["shape"][1])
    if isinstance(views, (bool, np.bool_)) or not isinstance(views, (int, np.integer)) or views < 1 \
            or width % int(views):
        raise StoreError(
            message(
                f"the 'views' attribute of layer '{layer}' in store '{store.path}'",
                allowed=f"a positive integer that divides its {width} columns",
                got=views,
                hint="re-extract the store",
            )
        )
    return int(views)


#: Rows read from a store at a time: one contiguous h5py read each (~8 MiB at 2,048 float32 columns).
READ_ROWS = 1024

#: Largest magnitude a feature may have; beyond it a value is reported like NaN and inf.  No network
#: layer comes near it (float16 stores end at 65,504; ImageNet networks' activations stay below 10^4),
#: while a flipped high exponent bit of a float32 near 1 gives 10^19 or more, and garbage 10^38.  Such
#: values do not fail loudly, they ruin the fit silently: one row of 3e38 drops GaussianNB to chance
#: (its variance overflows float32), and in a measure on 90 rows x 8 columns one row at 10^12 already
#: dropped every family (xgboost's too) to chance.
MAX_ABS_FEATURE = 1e10


def _non_finite_error(source: _Source, bad: np.ndarray, ids: np.ndarray, largest: float | None = None) -> ClassifyError:
    bad_ids = ids[np.sort(bad)]
    again = " ".join((option("precision", "fp32"), option("dtype", "float32"), option("overwrite", True)))
    what = "NaN or infinite features" if largest is None else (
        f"NaN, infinite or absurdly large features (|x| > {MAX_ABS_FEATURE:.0e}, e.g. {largest:.3g})"
    )
    return ClassifyError(
        message(
            f"store '{source.path}' layer '{source.layer}' holds {what} in {len(bad_ids)} of "
            f"{len(ids)} rows (e.g. {_examples(bad_ids)})",
            hint=f"re-extract it with {again}, or use another layer",
        )
    )


@dataclass
class _Source:
    """Where one input's columns come from: a store layer and the store row of every joined row."""

    path: Path
    layer: str
    rows: np.ndarray  # (n_joined,) store row of each joined row
    columns: slice


def _read_windows(store: FeatureStore, source: _Source, wanted: np.ndarray, out: np.ndarray,
                  view: np.ndarray | None = None) -> None:
    """Write store rows *wanted* of one layer into ``out[:, source.columns]``, row ``i`` from ``wanted[i]``.

    The wanted rows are visited in store order, in contiguous windows of at
    most :data:`READ_ROWS` rows that start at a wanted row: dense selections
    (a training split, a block of a streaming fit) are read in one sweep,
    scattered ones window by window.  With *view*, out row ``i`` is view
    ``view[i]`` of store row ``wanted[i]`` (its columns ``[v D, (v + 1) D)``).
    """
    order = np.argsort(wanted, kind="stable")
    ordered = wanted[order]
    i = 0
    while i < ordered.size:
        low = int(ordered[i])
        j = int(np.searchsorted(ordered, low + READ_ROWS, side="left"))
        high = int(ordered[j - 1]) + 1
        window = store.features(source.layer, slice(low, high))
        if view is None:
            out[order[i:j], source.columns] = window[ordered[i:j] - low]  # cast to float32 in place (float16 stores)
        else:  # (rows, views x D) -> (rows, views, D): one view of each row
            views = window.reshape(window.shape[0], -1, source.columns.stop - source.columns.start)
            out[order[i:j], source.columns] = views[ordered[i:j] - low, view[order[i:j]]]
        i = j


def _scan(store: FeatureStore, source: _Source, ids: np.ndarray, out: np.ndarray | None) -> None:
    """Read a layer in contiguous row blocks, check it is finite, and write the joined rows into *out*.

    Every store row is read once, in order, whatever the order of the join:
    no h5py fancy indexing over the whole store.  With ``out=None`` only the
    check runs (the streaming path reads the rows again when it fits).
    """
    n_store = len(store)
    target = np.full(n_store, -1, dtype=np.int64)  # joined row of each store row, -1 when left out
    target[source.rows] = np.arange(source.rows.size)
    bad: list[np.ndarray] = []
    largest: float | None = None
    # verify: the rows are checked against the store's checksums as they are read (CRC-32, no second read).
    for rows, block in store.iter_features(source.layer, batch_rows=READ_ROWS, verify=True):
        where = target[rows]
        keep = where >= 0
        values = block[keep]
        sane = (np.abs(values) <= MAX_ABS_FEATURE).all(axis=1)  # False for NaN too
        if not sane.all():
            bad.append(where[keep][~sane])
            huge = np.abs(values[~sane])
            huge = huge[np.isfinite(huge) & (huge > MAX_ABS_FEATURE)]
            if huge.size:
                largest = max(largest or 0.0, float(huge.max()))
        if out is not None:
            out[where[keep], source.columns] = values  # cast to float32 in place (float16 stores)
    if bad:
        raise _non_finite_error(source, np.concatenate(bad), ids, largest)


def join_features(specs: Sequence[str | os.PathLike], *, load: bool = True) -> JoinedFeatures:
    """Read the inputs and join them on sample id.

    Each store is read in contiguous row blocks, straight into one
    preallocated float32 matrix: no other copy of the features is made.

    Parameters
    ----------
    specs : sequence of str
        ``STORE[:LAYER]`` for each input; a layer may be left out when the store
        holds only one.
    load : bool
        Read the features into ``X``; with ``False``, ``X`` is ``None`` until
        :meth:`JoinedFeatures.load` (or :meth:`JoinedFeatures.check` for a
        streaming fit, which reads them block by block).

    Returns
    -------
    JoinedFeatures
        The samples every input has, sorted by id, with features side by side.

    Raises
    ------
    ConfigError
        No spec at all.
    StoreError
        A store is missing, unreadable, incomplete or lacks the layer.
    ClassifyError
        The inputs share no id, disagree on a sample's label or split, or hold
        NaN/inf features.
    """
    parsed = [parse_feature_spec(s) for s in check_feature_specs(specs)]
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(open_store(path)) for path, _ in parsed]
        layers = []
        for store, (_, layer) in zip(stores, parsed):
            _check_complete(store)
            layers.append(_choose_layer(store, layer))
        labels_of = [f"{store.path}:{layer}" for store, layer in zip(stores, layers)]
        if len(set(labels_of)) < len(labels_of):
            twice = sorted({s for s in labels_of if labels_of.count(s) > 1})
            raise ClassifyError(
                message(f"a feature input is given twice: {', '.join(twice)}", hint="give each STORE:LAYER once")
            )
        _warn_data_roots(stores)

        id_sets = [set(store.ids.tolist()) for store in stores]
        common = np.array(sorted(set.intersection(*id_sets)), dtype=object)
        if common.size == 0:
            raise _no_common_ids(stores)
        everywhere = set.union(*id_sets)
        missing = {label: sorted(everywhere - ids) for label, ids in zip(labels_of, id_sets) if everywhere - ids}

        rows = []
        for store in stores:
            position = {image_id: row for row, image_id in enumerate(store.ids.tolist())}
            rows.append(np.fromiter((position[i] for i in common), dtype=np.int64, count=common.size))

        names = _class_names(stores[0], rows[0])
        splits = stores[0].splits[rows[0]]
        for store, label, r in zip(stores[1:], labels_of[1:], rows[1:]):
            other = _class_names(store, r)
            differ = common[names != other]
            if differ.size:
                raise ClassifyError(
                    message(
                        f"'{labels_of[0]}' and '{label}' disagree on the class of {differ.size} sample(s) "
                        f"(e.g. {_examples(differ)})",
                        hint="join stores extracted from the same labelled data folder",
                    )
                )
            differ = common[splits != store.splits[r]]
            if differ.size:
                raise ClassifyError(
                    message(
                        f"'{labels_of[0]}' and '{label}' disagree on the split (train/val/test) of {differ.size} "
                        f"sample(s) (e.g. {_examples(differ)})",
                        hint="join stores extracted from the same data folder",
                    )
                )

        blocks: list[FeatureBlock] = []
        sources: list[_Source] = []
        start = 0
        views = [_views(store, layer) for store, layer in zip(stores, layers)]
        if len(set(views)) > 1:
            described = ", ".join(f"'{label}' {v}" for label, v in zip(labels_of, views))
            raise ClassifyError(
                message(
                    f"the feature inputs have different training views per image ({described})",
                    hint="join stores extracted with the same views",
                )
            )
        for store, layer, label, r, v in zip(stores, layers, labels_of, rows, views):
            info = store.layer_info(layer)
            dim = int(info["shape"][1]) // v
            blocks.append(
                FeatureBlock(
                    spec=label,
                    store=store.path,
                    layer=layer,
                    dim=dim,
                    start=start,
                    provenance=store.provenance,
                    layer_info={k: info.get(k) for k in LAYER_KEYS},
                    views=v,
                )
            )
            sources.append(_Source(store.path, layer, r, slice(start, start + dim)))
            start += dim

    classes = sorted({n for n in names if n})
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    joined = JoinedFeatures(
        ids=common,
        X=None,
        labels=labels,
        classes=classes,
        splits=np.asarray(splits, dtype=object),
        blocks=blocks,
        missing=missing,
        sources=sources,
        views=views[0],
    )
    if load:
        joined.load()
    return joined
