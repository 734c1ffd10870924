"""`export`: npz, Parquet and CSV hold exactly the store's ids, labels, splits and features."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import copy_real_images, quick_extract

from featx import open_store
from featx.errors import ExportError, OutputPathError, StoreError
from featx.formatting import format_bytes
from featx.store import export_store, format_export


@pytest.fixture(scope="module")
def store(tmp_path_factory, hymenoptera: Path) -> Path:
    """11 real JPEGs, one of them named with a comma and a quote to test CSV quoting."""
    root = copy_real_images(hymenoptera, tmp_path_factory.mktemp("export") / "images")
    odd = next((root / "val" / "bees").iterdir())
    odd.rename(odd.with_name('a,"b" c.jpg'))
    next((root / "train" / "ants").iterdir()).unlink()
    return quick_extract(root, root.parent / "store.h5", layers=("conv5", "penultimate")).path


@pytest.fixture(scope="module")
def expected(store: Path) -> dict:
    with open_store(store) as s:
        classes = np.array(s.classes, dtype=object)[s.labels]
        return {
            "ids": list(s.ids), "labels": s.labels.tolist(), "splits": list(s.splits), "classes": s.classes,
            "class": list(classes), "conv5": s.features("conv5"), "penultimate": s.features("penultimate"),
        }


def test_npz_round_trip(store: Path, expected: dict, tmp_path: Path):
    result = export_store(store, tmp_path / "f.npz", block_rows=4)
    assert (result.rows, result.layers, result.format) == (11, {"conv5": 512, "penultimate": 512}, "npz")
    with np.load(tmp_path / "f.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["classes", "conv5", "id", "label", "meta", "penultimate", "split"]
        assert data["id"].tolist() == expected["ids"]
        assert data["label"].dtype == np.int32 and data["label"].tolist() == expected["labels"]
        assert data["split"].tolist() == expected["splits"]
        assert data["classes"].tolist() == expected["classes"]
        for name in ("conv5", "penultimate"):
            assert data[name].dtype == np.float32
            assert np.array_equal(data[name], expected[name])
        meta = json.loads(str(data["meta"]))
    assert meta["model"] == "resnet18" and meta["weights"] == "none"
    assert meta["layers"]["conv5"]["node"] == "layer4.1.relu_1"


def test_parquet_round_trip_in_row_groups(store: Path, expected: dict, tmp_path: Path):
    export_store(store, tmp_path / "f.parquet", block_rows=4)
    file = pq.ParquetFile(tmp_path / "f.parquet")
    assert file.num_row_groups == 3  # 11 rows written 4 at a time: never the whole matrix at once
    frame = pd.read_parquet(tmp_path / "f.parquet")
    assert list(frame.columns[:4]) == ["id", "label", "class", "split"]
    assert list(frame.columns[4:]) == [f"conv5_{j}" for j in range(512)] + [f"penultimate_{j}" for j in range(512)]
    assert frame["id"].tolist() == expected["ids"]
    assert frame["label"].tolist() == expected["labels"]
    assert frame["class"].tolist() == expected["class"]
    assert frame["split"].tolist() == expected["splits"]
    for name in ("conv5", "penultimate"):
        values = frame[[f"{name}_{j}" for j in range(512)]].to_numpy()
        assert values.dtype == np.float32 and np.array_equal(values, expected[name])
    assert json.loads(file.schema_arrow.metadata[b"featx"])["model"] == "resnet18"


def test_csv_round_trip_exact_with_quoted_ids(store: Path, expected: dict, tmp_path: Path):
    export_store(store, tmp_path / "f.csv", block_rows=4, layers=["penultimate"])
    with open(tmp_path / "f.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label", "class", "split", *(f"penultimate_{j}" for j in range(512))]
    body = rows[1:]
    assert [r[0] for r in body] == expected["ids"]
    assert 'val/bees/a,"b" c.jpg' in expected["ids"]
    assert [int(r[1]) for r in body] == expected["labels"]
    assert [r[2] for r in body] == expected["class"]
    assert [r[3] for r in body] == expected["splits"]
    # %.9g prints enough digits for every float32 to read back as the same float32.
    values = np.array([[float(v) for v in r[4:]] for r in body]).astype(np.float32)
    assert np.array_equal(values, expected["penultimate"])
    assert body[0][4] == "%.9g" % expected["penultimate"][0, 0]


def test_format_from_suffix_and_chosen_layer(store: Path, expected: dict, tmp_path: Path):
    result = export_store(store, tmp_path / "only.npz", layers=["conv5"])
    assert result.layers == {"conv5": 512}
    with np.load(tmp_path / "only.npz") as data:
        assert "penultimate" not in data.files
        assert np.array_equal(data["conv5"], expected["conv5"])


def test_errors(store: Path, tmp_path: Path):
    (tmp_path / "taken.csv").write_text("keep me")
    with pytest.raises(
        ExportError,
        match=r"^the output file already exists: '.*taken\.csv'; pass overwrite=True to replace it, or choose another out$",
    ):
        export_store(store, tmp_path / "taken.csv")
    assert (tmp_path / "taken.csv").read_text() == "keep me"
    with pytest.raises(
        ExportError,
        match=r"^the suffix of '.*f\.txt' must be one of \.npz, \.parquet, \.csv to name the export format; "
        r"got '\.txt'; rename the file, or pass format='npz\|parquet\|csv'$",
    ):
        export_store(store, tmp_path / "f.txt")
    with pytest.raises(ExportError, match=r"^export format must be one of npz, parquet, csv; got 'xlsx'$"):
        export_store(store, tmp_path / "f.xlsx", format="xlsx")
    with pytest.raises(StoreError, match=r"layer 'fc7' is not in store '.*'; it holds conv5, penultimate"):
        export_store(store, tmp_path / "f.npz", layers=["fc7"])
    with pytest.raises(ExportError, match=r"^layers must be distinct names; got \['conv5', 'conv5'\]$"):
        export_store(store, tmp_path / "f.npz", layers=["conv5", "conv5"])
    with pytest.raises(ExportError, match=r"^block_rows must be a positive integer; got 0$"):
        export_store(store, tmp_path / "f.npz", block_rows=0)
    assert not list(tmp_path.glob("f.*")) and not list(tmp_path.glob(".*tmp*"))


def test_overwrite_replaces(store: Path, expected: dict, tmp_path: Path):
    (tmp_path / "f.csv").write_text("old")
    export_store(store, tmp_path / "f.csv", overwrite=True)
    assert pd.read_csv(tmp_path / "f.csv")["id"].tolist() == expected["ids"]


def test_cli_export(run_cli, store: Path, expected: dict, tmp_path: Path):
    code, out, err = run_cli("export", store, "--format", "parquet", "--out", tmp_path / "x.pq", "--layer", "conv5")
    assert (code, err) == (0, "")
    assert out.startswith(f"wrote {tmp_path / 'x.pq'} (parquet, ") and "11 rows; layers conv5 (512);" in out
    frame = pd.read_parquet(tmp_path / "x.pq")
    assert np.array_equal(frame.iloc[:, 4:].to_numpy(), expected["conv5"])
    code, out, err = run_cli("export", store, "--format", "parquet", "--out", tmp_path / "x.pq")
    assert code == 2 and err == (
        f"error: the output file already exists: '{tmp_path / 'x.pq'}'; pass --overwrite to replace it, "
        "or choose another --out\n"
    )


def test_format_export_is_the_line_the_cli_prints(run_cli, store: Path, tmp_path: Path):
    result = export_store(store, tmp_path / "f.npz", layers=["conv5", "penultimate"])
    assert format_export(result) == (
        f"wrote {tmp_path / 'f.npz'} (npz, {format_bytes((tmp_path / 'f.npz').stat().st_size)}): 11 rows; "
        f"layers conv5 (512), penultimate (512); {result.seconds:.1f} s"
    )
    code, out, err = run_cli("export", store, "--out", tmp_path / "g.npz", "--layer", "conv5")
    assert (code, err) == (0, "")
    assert re.fullmatch(
        re.escape(f"wrote {tmp_path / 'g.npz'} (npz, {format_bytes((tmp_path / 'g.npz').stat().st_size)}): 11 rows; ")
        + r"layers conv5 \(512\); \d+\.\d s\n",
        out,
    )


def test_an_unwritable_out_is_refused_before_any_work(store: Path, tmp_path: Path):
    out = Path("/proc/featx-test.npz")
    # Checked before the store is even opened: a missing store is not what is reported.
    with pytest.raises(OutputPathError):
        export_store(tmp_path / "missing.h5", out)
    with pytest.raises(OutputPathError) as caught:
        export_store(store, out)
    assert str(caught.value) == (
        f"out is not writable (cannot create files in '/proc': No such file or directory): '{out}'; choose another out"
    )
    (tmp_path / "file.txt").write_text("keep me")
    out = tmp_path / "file.txt" / "x.npz"
    with pytest.raises(OutputPathError) as caught:
        export_store(store, out)
    assert str(caught.value) == (
        f"out is not writable ('{tmp_path / 'file.txt'}' is a file, not a folder): '{out}'; choose another out"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]
    assert (tmp_path / "file.txt").read_text() == "keep me"
    with pytest.raises(OutputPathError, match=r"^out is not writable \(it is a folder, a file name is needed\): "):
        export_store(store, tmp_path)


def test_cli_export_unwritable_out(run_cli, store: Path, tmp_path: Path):
    (tmp_path / "file.txt").write_text("keep me")
    code, out, err = run_cli("export", store, "--out", tmp_path / "file.txt" / "x.npz")
    assert (code, out) == (2, "")
    assert err == (
        f"error: --out is not writable ('{tmp_path / 'file.txt'}' is a file, not a folder): "
        f"'{tmp_path / 'file.txt' / 'x.npz'}'; choose another --out\n"
    )
