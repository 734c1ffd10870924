"""featx.paths: outputs are checked before any work, and nothing is created by the check."""

from __future__ import annotations

import pytest

from featx.errors import OutputPathError, cli_option_names
from featx.paths import check_writable_dir, check_writable_file


def test_a_new_file_in_new_folders_is_writable_and_nothing_is_made(tmp_path):
    target = tmp_path / "a" / "b" / "store.h5"
    assert check_writable_file(target, "out") == target
    assert check_writable_dir(tmp_path / "run", "out") == tmp_path / "run"
    assert list(tmp_path.iterdir()) == []


def test_a_path_inside_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputPathError) as raised:
        check_writable_file(tmp_path / "file.txt" / "store.h5", "out")
    assert str(raised.value) == (
        f"out is not writable ('{tmp_path / 'file.txt'}' is a file, not a folder): "
        f"'{tmp_path / 'file.txt' / 'store.h5'}'; choose another out"
    )
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, PermissionError)
    with pytest.raises(OutputPathError, match=r"^out is not writable \('.*file.txt' is a file, not a folder\): "):
        check_writable_dir(tmp_path / "file.txt" / "run", "out")


def test_a_file_system_that_refuses_new_files():
    with cli_option_names(), pytest.raises(OutputPathError) as raised:
        check_writable_file("/proc/featx-test/store.h5", "out")
    assert str(raised.value) == (
        "--out is not writable (cannot create files in '/proc': No such file or directory): "
        "'/proc/featx-test/store.h5'; choose another --out"
    )


def test_a_folder_where_a_file_is_needed(tmp_path):
    with pytest.raises(OutputPathError, match=r"^out is not writable \(it is a folder, a file name is needed\)"):
        check_writable_file(tmp_path, "out")
