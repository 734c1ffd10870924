"""Hostile values in files that are otherwise well formed (issue 24, defect 9 and 'what to build' item 5).

Measured on the main of the issue: a row of 3e38 passed the finite check and
dropped bayes to chance silently; duplicate sample ids were dropped silently
(398 -> 397 rows); ANSI escapes in class names and ids reached the terminal
from ``info`` and ``classify``; CSV export wrote formula cells
(``=HYPERLINK(...)``) as they were; a read-only file system was reported as
"no permission".
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from stores import blobs, dataset, write_store

import featx
from featx.errors import ClassifyError, FeatxError, OutputPathError
from featx.formatting import printable

ESC = "\x1b"
EVIL_CLASS = f"{ESC}[31mred{ESC}[0m\nforged line"
EVIL_ID = "=HYPERLINK(\"http://x\",\"click\").jpg"


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_the_rest():
    assert printable(EVIL_CLASS) == "\\x1b[31mred\\x1b[0m\\x0aforged line"
    assert printable("ab\x9bc\x7f\u202egpj.exe\u2028") == "ab\\x9bc\\x7f\\u202egpj.exe\\u2028"
    assert printable("fourmi_été 蜜蜂 ok") == "fourmi_été 蜜蜂 ok"
    assert "\n" not in printable("a\r\nb") and printable(Path("x\ty")) == "x\\x09y"


def test_error_messages_are_one_line_whatever_the_names_hold():
    text = featx.errors.message("unknown class", got=EVIL_CLASS, hint="check it")
    assert text == "unknown class: '\\x1b[31mred\\x1b[0m\\x0aforged line'; check it"


@pytest.fixture
def evil_store(tmp_path) -> Path:
    """A well-formed store whose class names and ids hold terminal escapes, newlines and formulas."""
    ids, labels, splits = dataset(n_per_class=6)
    ids = [f"{i[:-4]}{ESC}]0;pwned{chr(7)}.jpg" if k == 0 else i for k, i in enumerate(ids)]
    ids[1] = EVIL_ID
    order = np.argsort(ids)
    ids = [ids[k] for k in order]
    labels, splits = labels[order], [splits[k] for k in order]
    return write_store(tmp_path / "evil.h5", ids, labels, {"f": blobs(labels, 4, seed=0)}, splits=splits,
                       classes=(EVIL_CLASS, "+cmd|' /C calc'!A0", "@SUM(1+1)"), model=f"res{ESC}[2Jnet18")


def test_info_shows_no_control_character_from_the_file(evil_store, run_cli):
    code, out, err = run_cli("info", evil_store)
    assert code == 0, err
    assert ESC not in out and "\a" not in out and "forged line\n" not in out
    assert "\\x1b[31mred\\x1b[0m\\x0aforged line" in out and "res\\x1b[2Jnet18" in out


def test_classify_output_shows_no_control_character_from_the_stores(evil_store, run_cli, tmp_path):
    code, out, err = run_cli("classify", "--features", evil_store, "--model", "bayes", "--out", tmp_path / "run",
                             "--no-plots")
    assert code == 0, err
    assert ESC not in out + err
    assert "\\x1b[31mred\\x1b[0m\\x0aforged line" in out


def test_csv_export_neutralises_formula_cells(evil_store, tmp_path):
    out = featx.export_store(evil_store, tmp_path / "x.csv").path
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = [row["id"] for row in rows]
    assert "'" + EVIL_ID in ids and EVIL_ID not in ids
    assert {row["class"] for row in rows} == {EVIL_CLASS, "'+cmd|' /C calc'!A0", "'@SUM(1+1)"}
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@", "\t", "\r")), value
    # The numbers are not touched (a negative feature keeps its sign), and npz keeps every name as it is.
    with featx.open_store(evil_store) as store:
        np.testing.assert_array_equal(np.array([[float(row[f"f_{j}"]) for j in range(4)] for row in rows],
                                               dtype=np.float32), store.features("f"))
    npz = np.load(featx.export_store(evil_store, tmp_path / "x.npz").path, allow_pickle=False)
    assert EVIL_ID in npz["id"].tolist()


@pytest.mark.parametrize("value", [3e38, -1e11])
def test_absurdly_large_features_are_refused_like_nan(tmp_path, run_cli, value):
    ids, labels, splits = dataset()
    X = blobs(labels, 5, seed=1)
    X[3, 2] = value
    store = write_store(tmp_path / "s.h5", ids, labels, {"f": X}, splits=splits)
    expected = (f"store '{store}' layer 'f' holds NaN, infinite or absurdly large features (|x| > 1e+10, "
                f"e.g. {abs(value):.3g}) in 1 of 36 rows (e.g. '{ids[3]}')")
    with pytest.raises(ClassifyError, match=r"^" + expected.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")
                       .replace("|", r"\|").replace(".", r"\.")):
        featx.classification.join_features([str(store)])
    code, _, err = run_cli("classify", "--features", store, "--model", "bayes", "--out", tmp_path / "run")
    assert code == 2 and err.strip().startswith("error: " + expected), err


def test_features_up_to_the_limit_are_used(tmp_path):
    ids, labels, splits = dataset()
    X = blobs(labels, 5, seed=1)
    X[3, 2] = -1e10
    store = write_store(tmp_path / "s.h5", ids, labels, {"f": X}, splits=splits)
    joined = featx.classification.join_features([str(store)])
    assert joined.X[3, 2] == np.float32(-1e10)


def test_duplicate_sample_ids_are_an_error_naming_them(tmp_path, run_cli):
    ids, labels, splits = dataset()
    store = write_store(tmp_path / "s.h5", ids, labels, {"f": blobs(labels, 4, seed=0)}, splits=splits)
    with h5py.File(store, "r+") as f:
        f["samples/id"][5] = ids[4]
    code, out, err = run_cli("classify", "--features", store, "--model", "bayes", "--out", tmp_path / "run")
    assert code == 2 and f"1 sample id(s) appear more than once in '/samples/id' ('{ids[4]}')" in err, err
    with pytest.raises(FeatxError, match="appear more than once"):
        featx.open_store(store)


def _statvfs_read_only(real):
    class ReadOnly:
        def __init__(self, result):
            self._result = result

        def __getattr__(self, name):
            return getattr(self._result, name)

        @property
        def f_flag(self):
            return self._result.f_flag | os.ST_RDONLY

    return lambda path: ReadOnly(real(path))


def test_a_read_only_file_system_is_said_as_such(tmp_path, monkeypatch, run_cli):
    ids, labels, splits = dataset()
    store = write_store(tmp_path / "s.h5", ids, labels, {"f": blobs(labels, 4, seed=0)}, splits=splits)
    target = tmp_path / "ro"
    target.mkdir()
    monkeypatch.setattr(os, "statvfs", _statvfs_read_only(os.statvfs))
    code, _, err = run_cli("export", store, "--out", target / "x.csv")
    assert code == 2 and f"'{target}' is on a read-only file system" in err and "permission" not in err, err
    with pytest.raises(OutputPathError, match="read-only file system"):
        featx.export_store(store, target / "x.npz")


def test_a_real_read_only_mount_is_said_as_such(tmp_path, run_cli):
    """The same on a real read-only tmpfs (root only; skipped where mounting is not allowed)."""
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a read-only file system here")
    try:
        ids, labels, splits = dataset()
        store = write_store(tmp_path / "s.h5", ids, labels, {"f": blobs(labels, 4, seed=0)}, splits=splits)
        code, _, err = run_cli("export", store, "--out", mount / "x.csv")
        assert code == 2 and f"'{mount}' is on a read-only file system" in err and "permission" not in err, err
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --------------------------------------------------------------------------- predictions CSVs: formulas quoted

FORMULA_IDS = ["'quoted.jpg", "+cmd|' /C calc'!A0.jpg", "-2+3.jpg", "=cmd|' /C calc'!A0.jpg", "@SUM(1+1).jpg"]


def test_csv_text_quotes_formula_cells_and_gives_them_back():
    from featx.formatting import csv_text, csv_text_cells, csv_value

    assert [csv_text(v) for v in [*FORMULA_IDS, "a/b.jpg", "", "\tx", "\rx"]] == [
        "''quoted.jpg", "'+cmd|' /C calc'!A0.jpg", "'-2+3.jpg", "'=cmd|' /C calc'!A0.jpg", "'@SUM(1+1).jpg",
        "a/b.jpg", "", "'\tx", "'\rx"]
    assert [csv_value(csv_text(v)) for v in FORMULA_IDS] == FORMULA_IDS
    safe = ["a.jpg", "b/c.jpg"]
    assert csv_text_cells(safe) is safe  # nothing to quote: no copy


def test_classify_predictions_csv_quotes_formula_ids_and_classes(tmp_path):
    import html
    import re

    evaluated = sorted([*FORMULA_IDS, *(f"val/{i:03d}.jpg" for i in range(10))])
    ids = sorted([*evaluated, *(f"train/{i:03d}.jpg" for i in range(30))])
    labels = np.arange(len(ids)) % 3
    splits = ["train" if i.startswith("train/") else "val" for i in ids]
    classes = ("=HYPERLINK(\"http://x\")", "-b", "@c")
    store = write_store(tmp_path / "s.h5", ids, labels, {"f": blobs(labels, 4, seed=0, spread=2.0)}, splits=splits,
                        classes=classes)
    run = featx.classify([str(store)], models="bayes", out=tmp_path / "run", plots=False)
    with open(run.best.predictions, newline="", encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    quoted = ["''quoted.jpg", "'+cmd|' /C calc'!A0.jpg", "'-2+3.jpg", "'=cmd|' /C calc'!A0.jpg", "'@SUM(1+1).jpg"]
    assert [row["id"] for row in written] == [*quoted, *(f"val/{i:03d}.jpg" for i in range(10))]
    truth = {image_id: classes[label] for image_id, label in zip(ids, labels)}
    assert [row["true"] for row in written] == ["'" + truth[i] for i in evaluated]
    assert {row["predicted"] for row in written} <= {"'" + c for c in classes}
    # The report reads the file back: its ids and class names as they are (HTML-escaped).
    text = (run.out_dir / "report.html").read_text()
    wrong = [row["id"] for row in written if row["true"] != row["predicted"]]
    assert wrong and re.findall(r'<div class="id">([^<]*)</div>', text) == [
        html.escape(v[1:] if v.startswith("'") else v) for v in wrong]
    confusion = text.split('<table class="confusion">', 1)[1].split("<tbody>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<tr><th class="text">([^<]*)</th>', confusion) == [html.escape(c) for c in sorted(classes)]


def test_missing_ids_csv_quotes_formula_ids(tmp_path):
    ids, labels, splits = dataset()
    ids = sorted([*ids, "=cmd|' /C calc'!A0.jpg", "-2+3.jpg"])
    labels = np.arange(len(ids)) % 3
    full = write_store(tmp_path / "full.h5", ids, labels, {"f": blobs(labels, 3, seed=0)})
    kept = [k for k, i in enumerate(ids) if i[0] not in "=-"]
    partial = write_store(tmp_path / "partial.h5", [ids[k] for k in kept], labels[kept],
                          {"g": blobs(labels[kept], 3, seed=1)})
    run = featx.classify([str(full), str(partial)], models="bayes", out=tmp_path / "run", plots=False)
    with open(run.out_dir / "missing-ids.csv", newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["id", "missing_from"], ["'-2+3.jpg", f"{partial}:g"],
                                       ["'=cmd|' /C calc'!A0.jpg", f"{partial}:g"]]
