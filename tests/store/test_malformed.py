"""Malformed stores (issue 24, defect 5): every reader refuses them on open, in one line, before any work.

Each variant of the corpus (tests/store/malformed_corpus.py) is a good store
with one edit; on the main of the issue they gave IndexError, KeyError,
TypeError, ValueError or UnicodeDecodeError tracebacks (rc 1) in ``info``,
``classify`` and ``export``, and ``info`` said "complete: 12 rows" of a
store whose features have 5.
"""

from __future__ import annotations

import numpy as np
import pytest
from malformed_corpus import UNUSABLE, VARIANTS, good_store, make_variant

import featx
from featx.errors import FeatxError, MalformedStoreError, StoreError

IDS = [name for name, _, _ in VARIANTS]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return good_store(tmp_path_factory.mktemp("good") / "good.h5")


@pytest.fixture(params=VARIANTS, ids=IDS)
def variant(request, good, tmp_path):
    name, edit, expected = request.param
    return make_variant(good, edit, tmp_path / "bad.h5"), expected


def test_the_corpus_is_large_enough():
    assert len(VARIANTS) >= 20
    assert len(set(IDS)) == len(IDS)


def test_the_good_store_opens(good, run_cli, tmp_path):
    with featx.open_store(good) as store:
        assert len(store) == 12 and store.layers == ["f"] and store.classes == ["ants", "bees", "wasps"]
    code, out, err = run_cli("info", good)
    assert code == 0 and "complete: 12 rows" in out, err


def test_the_api_raises_one_featx_error(variant):
    path, expected = variant
    with pytest.raises(FeatxError) as caught:
        featx.open_store(path)
    assert isinstance(caught.value, StoreError)
    text = str(caught.value)
    assert expected in text, text
    assert "\n" not in text and f"'{path}'" in text


def test_a_malformed_store_is_a_malformed_store_error(good, tmp_path):
    path = make_variant(good, VARIANTS[0][1], tmp_path / "bad.h5")
    with pytest.raises(MalformedStoreError, match=r"^malformed feature store '.*bad\.h5': sample '.*' has label -7"):
        featx.open_store(path)


def _one_line_error(code: int, out: str, err: str, expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["info", "export", "classify"])
def test_every_command_says_one_line_and_exits_2(variant, command, run_cli, tmp_path):
    path, expected = variant
    args = {
        "info": ("info", path),
        "export": ("export", path, "--out", tmp_path / "x.csv"),
        "classify": ("classify", "--features", path, "--model", "bayes", "--out", tmp_path / "run"),
    }[command]
    _one_line_error(*run_cli(*args), expected)
    assert not (tmp_path / "x.csv").exists()
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize(("name", "edit", "expected"), UNUSABLE, ids=[u[0] for u in UNUSABLE])
def test_a_store_without_layers_is_described_but_not_exported_nor_classified(good, tmp_path, run_cli, name, edit,
                                                                             expected):
    path = make_variant(good, edit, tmp_path / "empty.h5")
    code, out, err = run_cli("info", path)
    assert code == 0 and "(no layers)" in out, err
    _one_line_error(*run_cli("export", path, "--out", tmp_path / "x.npz"), expected)
    _one_line_error(*run_cli("classify", "--features", path, "--model", "bayes", "--out", tmp_path / "run"), expected)
    with pytest.raises(FeatxError, match=expected):
        featx.export_store(path, tmp_path / "y.npz")
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "y.npz").exists()


def test_an_unsorted_store_with_distinct_ids_still_opens(good, tmp_path):
    """Ids written in another order than featx's (other tools, old tests) are accepted when they are distinct."""
    import h5py

    path = make_variant(good, lambda f: None, tmp_path / "unsorted.h5")
    with h5py.File(path, "r+") as f:
        ids = f["samples/id"].asstr()[()].tolist()
        ids[0], ids[1] = ids[1], ids[0]
        f["samples/id"][...] = np.array(ids, dtype=object)
    with featx.open_store(path) as store:
        assert store.ids[0] == ids[0] and len(set(store.ids)) == 12
