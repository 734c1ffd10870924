"""`export` writes only regular files it creates, never its own input (issue 24, items 1, 2 and 9).

Measured before: ``export STORE --out /dev/stdout --format csv --overwrite``
printed ``wrote /dev/stdout (csv, 2.2 MiB)``, nothing reached the pipe, and
/dev/stdout became a regular file; a FIFO was replaced the same way; ``--out -``
wrote a file named ``-``; ``export base.h5 --out base.h5 --overwrite``
replaced the store by its npz; ``kill -9`` during an export left a hidden
``.X.csv.tmp-PID`` that later exports never removed.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from stores import blobs, dataset, write_store
from featx import open_store
from featx.errors import OutputPathError
from featx.store import export_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> Path:
    ids, labels, splits = dataset()
    return write_store(tmp_path / "base.h5", ids, labels, {"fc7": blobs(labels, 8, seed=1)}, splits=splits)


def _refused(path, reason: str) -> str:
    return f"error: --out is not writable ({reason}): '{path}'; choose another --out\n"


def test_a_fifo_is_refused_and_left_a_fifo(store, tmp_path, run_cli):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, stdout, stderr = run_cli("export", store, "--out", fifo, "--format", "csv", "--overwrite")
    assert (code, stdout) == (2, "")
    assert stderr == _refused(fifo, "it is a FIFO (named pipe), not a regular file; featx writes only regular files")
    assert fifo.is_fifo()


# Never the machine's own /dev/null or /dev/stdout: on a featx that replaced them (as root) the test would break
# them for every process.  A device node and links made in tmp_path are refused the same way, and harmless if not.


def test_a_device_is_refused(store, tmp_path, run_cli):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    code, stdout, stderr = run_cli("export", store, "--out", null, "--format", "csv", "--overwrite")
    assert (code, stdout) == (2, "")
    assert stderr == _refused(null, "it is a character device, not a regular file; featx writes only regular files")
    assert null.is_char_device()


def test_a_link_to_dev_null_is_refused(store, tmp_path, run_cli):
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    code, stdout, stderr = run_cli("export", store, "--out", link, "--format", "csv", "--overwrite")
    assert (code, stdout) == (2, "")
    assert stderr == _refused(
        link, "it is a symbolic link to a character device, not a regular file; featx writes only regular files"
    )


def test_standard_output_on_a_pipe_is_refused_and_the_pipe_gets_nothing(store, tmp_path):
    """As measured with --out /dev/stdout (here a link like it, /proc/self/fd/1, with standard output a pipe)."""
    stdout_link = tmp_path / "stdout"
    stdout_link.symlink_to("/proc/self/fd/1")
    done = subprocess.run(
        [sys.executable, "run_pipeline.py", "export", str(store), "--out", str(stdout_link), "--format", "csv",
         "--overwrite"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == _refused(
        stdout_link, "it is a symbolic link to a FIFO (named pipe), not a regular file; featx writes only regular files"
    )


def test_dash_is_refused_not_a_file_named_dash(store, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli("export", store, "--out", "-", "--format", "csv")
    assert (code, stdout) == (2, "")
    assert stderr == _refused("-", "'-' is not a file name: featx writes files, never standard output through --out")
    assert not (tmp_path / "-").exists()


def test_a_symbolic_link_is_refused_and_its_target_kept(store, tmp_path, run_cli):
    target = tmp_path / "target.csv"
    target.write_text("mine")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    code, _, stderr = run_cli("export", store, "--out", link, "--overwrite")
    assert code == 2
    assert stderr == _refused(link, f"it is a symbolic link (to '{target}'): pass the file itself to replace it")
    assert link.is_symlink() and target.read_text() == "mine"


def test_the_store_itself_is_refused_by_inode_whatever_its_name(store, tmp_path, run_cli):
    before = store.read_bytes()
    code, stdout, stderr = run_cli("export", store, "--out", store, "--format", "npz", "--overwrite")
    assert (code, stdout) == (2, "")
    assert stderr == _refused(store, f"it is the input '{store}' of this command, which writing would destroy")
    other_name = tmp_path / "sub" / ".." / "base.h5"
    (tmp_path / "sub").mkdir()
    hard_link = tmp_path / "same.npz"
    os.link(store, hard_link)
    for out in (other_name, hard_link):
        with pytest.raises(OutputPathError, match="it is the input"):
            export_store(store, out, format="npz", overwrite=True)
    assert store.read_bytes() == before
    with open_store(store) as s:
        assert len(s) == 36


def test_a_killed_exports_temporary_file_is_removed_by_the_next_export(store, tmp_path):
    """A real kill -9 half way through a CSV export; the next export to the same path removes its leftover."""
    out = tmp_path / "x.csv"
    script = textwrap.dedent(f"""
        import os, signal
        from featx.store import _export
        original = _export._write_csv

        def write(source, path):
            path.write_bytes(b"partial" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)

        _export.EXPORTERS["csv"] = write
        _export.export_store({str(store)!r}, {str(out)!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.csv.tmp-")]
    assert len(leftovers) == 1
    export_store(store, out, block_rows=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.h5", "x.csv"]
    with open_store(store) as s:
        expected = s.features("fc7")
    got = np.loadtxt(out, delimiter=",", skiprows=1, usecols=range(4, 12), dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- predict --out (issue 24, item 8)


def test_predict_refuses_an_existing_csv_and_its_own_inputs_before_any_work(tmp_path, run_cli):
    """Checked before the classifier is read or an image decoded (so any file can stand for them here)."""
    classifier = tmp_path / "classifier-svm.zip"
    classifier.write_bytes(b"not read")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\na.jpg\n")
    old = tmp_path / "old.csv"
    old.write_text("kept")
    code, stdout, stderr = run_cli("predict", "--classifier", classifier, "--data", manifest, "--out", old)
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"error: --out already exists: '{old}'; pass --overwrite to replace it, or choose another --out\n"
    )
    for victim in (classifier, manifest):
        code, _, stderr = run_cli("predict", "--classifier", classifier, "--data", manifest, "--out", victim,
                                  "--overwrite")
        assert code == 2
        assert stderr == _refused(victim, f"it is the input '{victim}' of this command, which writing would destroy")
    assert (old.read_text(), manifest.read_text(), classifier.read_bytes()) == ("kept", "path\na.jpg\n", b"not read")
