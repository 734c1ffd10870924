"""The join of feature inputs on sample id: rows matched by id, layers chosen, inputs refused."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from classify_data import config_for, write_two_stores
from stores import blobs, dataset, write_store
from featx.classification import join_features, run_classification
from featx.errors import ClassifyError, StoreError


@pytest.fixture
def two_stores(tmp_path):
    """The two stores of :func:`classify_data.write_two_stores`."""
    return write_two_stores(tmp_path)


def test_join_is_by_sample_id_not_row_position(tmp_path, two_stores):
    alexnet, resnet = two_stores
    reference = join_features([f"{alexnet}:fc7", f"{resnet}"])
    assert reference.X.shape == (36, 10)
    assert reference.missing == {}

    # The same data with rows shuffled, and 5 rows dropped from one store, 3 others from the other.
    with_alexnet = join_features([f"{alexnet}:fc7"])
    with_resnet = join_features([f"{resnet}"])
    rng = np.random.default_rng(7)
    order_a = rng.permutation(36)[:-5]
    order_r = rng.permutation(36)[:-3]
    ids = np.asarray(reference.ids)
    shuffled_a = write_store(
        tmp_path / "a-shuffled.h5", list(ids[order_a]), with_alexnet.labels[order_a],
        {"fc7": with_alexnet.X[order_a]}, splits=list(with_alexnet.splits[order_a]),
    )
    shuffled_r = write_store(
        tmp_path / "r-shuffled.h5", list(ids[order_r]), with_resnet.labels[order_r],
        {"penultimate": with_resnet.X[order_r]}, splits=list(with_resnet.splits[order_r]),
    )
    joined = join_features([f"{shuffled_a}:fc7", f"{shuffled_r}:penultimate"])

    common = sorted(set(ids[order_a]) & set(ids[order_r]))
    assert list(joined.ids) == common
    rows = np.searchsorted(ids, common)
    np.testing.assert_array_equal(joined.X, reference.X[rows])
    np.testing.assert_array_equal(joined.labels, reference.labels[rows])
    assert list(joined.splits) == list(reference.splits[rows])
    assert joined.missing == {
        f"{shuffled_a}:fc7": sorted(set(ids[order_r]) - set(ids[order_a])),
        f"{shuffled_r}:penultimate": sorted(set(ids[order_a]) - set(ids[order_r])),
    }
    assert [(b.layer, b.start, b.dim) for b in joined.blocks] == [("fc7", 0, 6), ("penultimate", 6, 4)]


def test_joined_classifier_sees_the_same_matrix_when_rows_are_shuffled(tmp_path, two_stores):
    alexnet, resnet = two_stores
    joined = join_features([f"{alexnet}:fc7", f"{resnet}"])
    order = np.random.default_rng(0).permutation(len(joined.ids))
    shuffled = write_store(
        tmp_path / "shuffled.h5", list(joined.ids[order]), joined.labels[order],
        {"penultimate": joined.X[order, 6:]}, splits=list(joined.splits[order]),
    )
    first = run_classification(config_for(tmp_path, [f"{alexnet}:fc7", resnet], models=("logreg",), out=tmp_path / "r1"))
    second = run_classification(config_for(tmp_path, [f"{alexnet}:fc7", shuffled], models=("logreg",), out=tmp_path / "r2"))
    a = pd.read_csv(first.results[0].predictions)
    b = pd.read_csv(second.results[0].predictions)
    pd.testing.assert_frame_equal(a, b)


def test_feature_spec_parsing(tmp_path):
    """``STORE:LAYER`` splits at the last colon, unless the whole spec is a path that exists."""
    for spec in ("features/x.h5:fc7", "features/x.h5"):
        with pytest.raises(StoreError, match=re.escape("feature store not found: 'features/x.h5';")):
            join_features([spec])
    ids, labels, splits = dataset()
    odd = write_store(tmp_path / "a:b.h5", ids, labels, {"f": blobs(labels, 3, seed=0)}, splits=splits)
    (block,) = join_features([str(odd)]).blocks
    assert (block.store, block.layer) == (odd, "f")


def test_a_store_with_several_layers_needs_one_named(two_stores):
    alexnet, _ = two_stores
    with pytest.raises(StoreError, match=re.escape(
        f"store '{alexnet}' holds several layers (conv5, fc7); name one, e.g. features='{alexnet}:fc7'"
    )):
        join_features([str(alexnet)])
    with pytest.raises(StoreError, match=re.escape(
        f"the layer of store '{alexnet}' must be one of conv5, fc7; got 'fc8'; did you mean fc7? "
        f"use features='{alexnet}:NAME'"
    )):
        join_features([f"{alexnet}:fc8"])


def test_stores_of_different_datasets_share_no_id(tmp_path, two_stores):
    _, resnet = two_stores
    labels = np.array([0, 0, 1, 1])
    other = write_store(
        tmp_path / "other.h5", ["x/0.png", "x/1.png", "y/0.png", "y/1.png"], labels,
        {"penultimate": blobs(labels, 4, seed=0)}, classes=("x", "y"), data_root="/data/other",
    )
    message = (
        f"the feature inputs share no sample id, so they cannot be joined: '{resnet}' has 36 ids "
        f"(e.g. 'train/a/001.jpg') from /data/test; '{other}' has 4 ids (e.g. 'x/0.png') from /data/other; "
        "join stores extracted from the same data folder"
    )
    with pytest.raises(ClassifyError, match=re.escape(message)):
        run_classification(config_for(tmp_path, [resnet, other]))


def test_stores_that_disagree_on_labels(tmp_path, two_stores):
    _, resnet = two_stores
    ids, labels, splits = dataset()
    relabelled = labels.copy()
    relabelled[[0, 5]] = (labels[[0, 5]] + 1) % 3
    other = write_store(tmp_path / "other.h5", ids, relabelled, {"f": blobs(labels, 2, seed=0)}, splits=splits)
    with pytest.raises(ClassifyError, match=re.escape(
        f"'{resnet}:penultimate' and '{other}:f' disagree on the class of 2 sample(s) "
        f"(e.g. '{ids[0]}', '{ids[5]}'); join stores extracted from the same labelled data folder"
    )):
        join_features([resnet, other])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_are_refused(tmp_path, bad):
    ids, labels, splits = dataset()
    values = blobs(labels, 4, seed=0)
    values[[3, 9], 1] = bad
    store = write_store(tmp_path / "nan.h5", ids, labels, {"fc7": values}, splits=splits)
    message = (
        f"store '{store}' layer 'fc7' holds NaN or infinite features in 2 of 36 rows "
        f"(e.g. '{ids[3]}', '{ids[9]}'); re-extract it with precision='fp32' dtype='float32' overwrite=True, "
        "or use another layer"
    )
    with pytest.raises(ClassifyError, match=re.escape(message)):
        run_classification(config_for(tmp_path, [store]))


def test_an_unfinished_store(tmp_path):
    ids, labels, splits = dataset()
    store = write_store(tmp_path / "half.h5", ids, labels, {"f": blobs(labels, 2, 0)}, splits=splits, finish=False)
    with pytest.raises(StoreError, match=re.escape(
        f"store '{store}' is incomplete: its extraction stopped after 36 of 36 images; "
        "finish it by running the same extract command again"
    )):
        run_classification(config_for(tmp_path, [store]))


def test_rows_read_in_windows_equal_the_loaded_matrix(tmp_path, two_stores, monkeypatch):
    alexnet, resnet = two_stores
    reference = join_features([f"{alexnet}:fc7", resnet])
    order = np.random.default_rng(1).permutation(len(reference.ids))
    shuffled = write_store(
        tmp_path / "shuffled.h5", list(reference.ids[order]), reference.labels[order],
        {"penultimate": reference.X[order, 6:]}, splits=list(reference.splits[order]),
    )
    # Windows of 5 store rows: dense, scattered (the shuffled store) and unordered selections all cross several.
    monkeypatch.setattr("featx.classification._join.READ_ROWS", 5)
    joined = join_features([f"{alexnet}:fc7", shuffled], load=False)
    assert joined.X is None
    for rows in (np.arange(36), np.arange(3, 30, 2), np.random.default_rng(2).permutation(36)[:17]):
        block = joined.rows(rows)
        assert block.dtype == np.float32 and block.flags.c_contiguous
        np.testing.assert_array_equal(block, reference.X[rows])


def test_stores_from_different_data_roots_are_joined_with_a_warning(tmp_path, two_stores, caplog):
    alexnet, _ = two_stores
    ids, labels, splits = dataset()
    moved = write_store(
        tmp_path / "moved.h5", ids, labels, {"f": blobs(labels, 2, seed=0)}, splits=splits, data_root="/data/copy",
    )
    with caplog.at_level("WARNING", logger="featx"):
        joined = join_features([f"{alexnet}:fc7", moved])
    assert len(joined.ids) == 36
    expected = (
        f"the feature inputs were extracted from different data roots ('{alexnet}' from /data/test; '{moved}' "
        "from /data/copy): they are joined on sample ids relative to each root, as if the folders held the same "
        "images; join stores extracted from the same data folder, or check that the folders hold the same images"
    )
    assert [r.getMessage() for r in caplog.records] == [expected]
    caplog.clear()
    with caplog.at_level("WARNING", logger="featx"):
        join_features([f"{alexnet}:fc7", f"{alexnet}:conv5"])
    assert caplog.records == []
