"""Ctrl-C, SIGTERM and ``kill -9`` in classify, and a run folder that already holds a run (issue 24, items 3 and 8).

Measured before: SIGINT while xgboost built its matrix gave rc 1 (``Exception
ignored on calling ctypes callback function ... KeyboardInterrupt``, then
``Check failed: rbegin == Info().num_row_``), rc -11 or rc -6; a later one
said "progress so far is saved; run the same command again to resume", which
classify cannot do; ``--out`` into an existing run folder mixed two runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from classify_data import write_two_stores
import featx.classification._training as _training
from featx.errors import OutputPathError

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
INTERRUPTED = "interrupted: no run folder was written; run the command again to start over\n"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _classify_in_a_process(tmp_path: Path, prelude: str, *args: str) -> subprocess.CompletedProcess:
    """``classify`` in a fresh interpreter (a crash shows as its exit code) after *prelude* patched something."""
    alexnet, _ = write_two_stores(tmp_path)
    script = textwrap.dedent(prelude) + textwrap.dedent(f"""
        import sys
        from featx.cli import main
        sys.exit(main(["-q", "classify", "--features", {str(alexnet) + ':fc7'!r}, "--out", {str(tmp_path / 'run')!r},
                       "--no-plots", "--device", "cpu", *{list(args)!r}]))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_ctrl_c_inside_xgboosts_data_iterator_is_exit_130_and_one_line(tmp_path):
    """The signal lands inside the ctypes callback xgboost calls from C++: deferred, never crossing into C++."""
    done = _classify_in_a_process(tmp_path, """
        import os, signal
        import xgboost.core as core
        original, calls = core.DataIter._next_wrapper, [0]

        def next_wrapper(self, this):
            calls[0] += 1
            if calls[0] == 3:  # the second pass over the blocks
                os.kill(os.getpid(), signal.SIGINT)
            return original(self, this)

        core.DataIter._next_wrapper = next_wrapper
    """, "--model", "xgboost")
    assert (done.returncode, done.stdout, done.stderr) == (130, "", INTERRUPTED)
    assert _names(tmp_path) == ["alexnet.h5", "resnet.h5"]  # no run folder, no temporary one


def test_sigterm_while_xgboost_boosts_is_exit_143_and_one_line(tmp_path):
    done = _classify_in_a_process(tmp_path, """
        import os, signal
        import xgboost
        original = xgboost.Booster.update

        def update(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while C++ boosts the round
            return original(self, *args, **kwargs)

        xgboost.Booster.update = update
    """, "--model", "xgboost")
    assert (done.returncode, done.stdout) == (143, "")
    assert done.stderr == "terminated: no run folder was written; run the command again to start over\n"
    assert _names(tmp_path) == ["alexnet.h5", "resnet.h5"]


@pytest.mark.parametrize("where", ["join_features", "plot_confusion", "save_classifier", "_write_missing"])
def test_ctrl_c_at_any_step_leaves_no_run_folder(tmp_path, run_cli, monkeypatch, where):
    alexnet, resnet = write_two_stores(tmp_path)
    original = getattr(_training, where)

    def interrupted(*args, **kwargs):
        if where in ("join_features",):
            original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(_training, where, interrupted)
    code, stdout, stderr = run_cli("classify", "-q", "--features", f"{alexnet}:fc7", "--model", "logreg,bayes",
                                   "--out", tmp_path / "run")
    assert (code, stdout, stderr) == (130, "", INTERRUPTED)
    assert _names(tmp_path) == ["alexnet.h5", "resnet.h5"]


def test_ctrl_c_while_writing_the_second_family_keeps_the_previous_run_whole(tmp_path, run_cli, monkeypatch):
    """With --overwrite the old run stays as it was until the new one is complete."""
    alexnet, _ = write_two_stores(tmp_path)
    out = tmp_path / "run"
    code, _, stderr = run_cli("classify", "-q", "--features", f"{alexnet}:fc7", "--model", "bayes", "--out", out, "--no-plots")
    assert code == 0, stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    original, calls = _training.save_classifier, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(_training, "save_classifier", save)
    code, _, stderr = run_cli("classify", "-q", "--features", f"{alexnet}:fc7", "--model", "logreg,bayes", "--out", out,
                              "--overwrite", "--no-plots")
    assert (code, stderr) == (130, INTERRUPTED)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_run_folder_holding_a_run_is_refused_and_overwrite_replaces_only_featx_files(tmp_path, run_cli):
    alexnet, _ = write_two_stores(tmp_path)
    out = tmp_path / "run"
    code, _, stderr = run_cli("classify", "-q", "--features", f"{alexnet}:fc7", "--model", "bayes,logreg", "--out", out)
    assert code == 0, stderr
    assert _names(out) == ["classifier-bayes.zip", "classifier-logreg.zip", "confusion-bayes.png",
                           "confusion-logreg.png", "predictions-bayes.csv", "predictions-logreg.csv", "report.html",
                           "results.json"]
    code, stdout, stderr = run_cli("classify", "-q", "--features", f"{alexnet}:fc7", "--model", "logreg", "--out", out)
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"error: the run folder --out is not empty (8 files: classifier-bayes.zip, classifier-logreg.zip, "
        f"confusion-bayes.png, ...): '{out}'; pass --overwrite to replace featx's files there, or choose another --out\n"
    )
    (out / "notes.txt").write_text("mine")
    code, _, stderr = run_cli("classify", "-q", "--features", f"{alexnet}:fc7", "--model", "logreg", "--out", out,
                              "--overwrite", "--no-plots")
    assert code == 0, stderr
    # No stale bayes files, no stale plot beside a results.json that lists only logreg; the user's file kept.
    assert _names(out) == ["classifier-logreg.zip", "notes.txt", "predictions-logreg.csv", "report.html", "results.json"]
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_the_api_refuses_a_full_run_folder_too(tmp_path):
    from classify_data import config_for
    from featx.classification import run_classification

    alexnet, _ = write_two_stores(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(OutputPathError, match=r"^the run folder out is not empty \(1 files: results\.json\)"):
        run_classification(config_for(tmp_path, [f"{alexnet}:fc7"], models="bayes"))


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(tmp_path, run_cli):
    """kill -9 leaves .run.tmp-<pid>, a hidden folder no one takes for a run; the next run to run/ removes it."""
    alexnet, _ = write_two_stores(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    leftover = tmp_path / f".run.tmp-{int(dead.stdout)}"
    leftover.mkdir()
    (leftover / "classifier-bayes.zip").write_bytes(b"x" * 1000)
    code, _, stderr = run_cli("classify", "-q", "--features", f"{alexnet}:fc7", "--model", "bayes", "--out",
                              tmp_path / "run", "--no-plots")
    assert code == 0, stderr
    assert _names(tmp_path) == ["alexnet.h5", "resnet.h5", "run"]


def test_a_kill_9_leaves_only_a_hidden_temporary_folder(tmp_path):
    """A real SIGKILL half way: the run folder does not exist (nothing looks like a finished run)."""
    done = _classify_in_a_process(tmp_path, """
        import os, signal
        from featx.classification import _training
        original = _training.save_classifier

        def save(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        _training.save_classifier = save
    """, "--model", "bayes")
    assert done.returncode == -signal.SIGKILL
    names = _names(tmp_path)
    assert "run" not in names and len([n for n in names if n.startswith(".run.tmp-")]) == 1


def test_ctrl_c_while_mlp_fits_is_not_swallowed(tmp_path):
    """scikit-learn's MLP catches KeyboardInterrupt and returns half trained: the run must still end, exit 130."""
    done = _classify_in_a_process(tmp_path, """
        import os, signal
        from sklearn.neural_network import MLPClassifier
        original, calls = MLPClassifier._update_no_improvement_count, [0]

        def count(self, *args, **kwargs):  # called once per epoch, inside the loop scikit-learn guards
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return original(self, *args, **kwargs)

        MLPClassifier._update_no_improvement_count = count
    """, "--model", "mlp")
    assert (done.returncode, done.stdout, done.stderr) == (130, "", INTERRUPTED)
    assert _names(tmp_path) == ["alexnet.h5", "resnet.h5"]


def test_sigterm_while_mlp_fits_is_exit_143(tmp_path):
    done = _classify_in_a_process(tmp_path, """
        import os, signal
        from sklearn.neural_network import MLPClassifier
        original, calls = MLPClassifier._update_no_improvement_count, [0]

        def count(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, *args, **kwargs)

        MLPClassifier._update_no_improvement_count = count
    """, "--model", "mlp")
    assert (done.returncode, done.stdout) == (143, "")
    assert done.stderr == "terminated: no run folder was written; run the command again to start over\n"


def test_a_full_disk_while_the_run_is_written_is_one_line_and_leaves_nothing(tmp_path, run_cli, monkeypatch):
    import errno

    alexnet, _ = write_two_stores(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_training, "save_classifier", full)
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("classify", "-q", "--features", f"{alexnet}:fc7", "--model", "bayes", "--out", out)
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"error: no space left on the disk of the run folder (No space left on device): nothing was written: '{out}'; "
        "free some space, then run the command again\n"
    )
    assert _names(tmp_path) == ["alexnet.h5", "resnet.h5"]
