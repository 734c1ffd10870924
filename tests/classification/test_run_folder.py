"""The run folder: checked before any store is read, refused in one line when it cannot be written."""

from __future__ import annotations

import re

import pytest

from classify_data import config_for
from featx.classification import ClassifyConfig, run_classification
from featx.errors import OutputPathError

# A store path that does not exist: reading it would be a StoreNotFoundError,
# so an OutputPathError proves the run folder is checked first.
NO_STORE = "does-not-exist.h5:fc7"
PROC_REASON = r"(no permission to write in '/proc'|cannot create files in '/proc': [^;]+)"


def test_out_inside_a_file_is_refused_before_any_store_is_read(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    out = blocker / "run"
    with pytest.raises(OutputPathError, match="^" + re.escape(
        f"out is not writable ('{blocker}' is a file, not a folder): '{out}'; choose another out"
    ) + "$"):
        run_classification(config_for(tmp_path, [NO_STORE], out=out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]  # nothing written
    assert blocker.read_text() == "not a folder"


def test_out_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("")
    with pytest.raises(OutputPathError, match="^" + re.escape(
        f"out is not writable ('{blocker}' is a file, not a folder): '{blocker}'; choose another out"
    ) + "$"):
        run_classification(config_for(tmp_path, [NO_STORE], out=blocker))


def test_out_on_a_special_file_system_is_refused():
    config = ClassifyConfig(features=(NO_STORE,), out="/proc/featx-run", plots=False)
    with pytest.raises(OutputPathError, match=f"^out is not writable \\({PROC_REASON}\\): '/proc/featx-run'; "
                                              "choose another out$"):
        run_classification(config)


def test_an_unwritable_runs_dir_is_refused_when_out_is_not_given(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("")
    config = ClassifyConfig(features=(NO_STORE,), runs_dir=blocker / "demo", plots=False)
    with pytest.raises(OutputPathError, match="^" + re.escape(
        f"runs_dir is not writable ('{blocker}' is a file, not a folder): '{blocker / 'demo'}'; "
        "choose another runs_dir"
    ) + "$"):
        run_classification(config)


def test_an_unwritable_out_is_a_permission_error():
    """Library users catch the built-in class they expect."""
    with pytest.raises(PermissionError):
        run_classification(ClassifyConfig(features=(NO_STORE,), out="/proc/featx-run"))


def test_cli_names_the_flag_in_one_line_and_exits_2(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, stdout, stderr = run_cli("classify", "--features", NO_STORE, "--out", blocker / "run")
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"error: --out is not writable ('{blocker}' is a file, not a folder): '{blocker / 'run'}'; "
        "choose another --out\n"
    )
    code, stdout, stderr = run_cli("classify", "--features", NO_STORE, "--out", "/proc/featx-run")
    assert (code, stdout) == (2, "")
    assert re.fullmatch(
        f"error: --out is not writable \\({PROC_REASON}\\): '/proc/featx-run'; choose another --out\n", stderr
    )
