"""The command line: thin and lazy, one line per user mistake, outputs checked before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quick_extract


REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("extract", "layers", "classify", "predict", "info", "export", "demo", "sweep")


def _modules_after(code: str) -> set[str]:
    """Top-level modules loaded by *code*, run in a fresh interpreter."""
    script = f"import sys\n{code}\nimport json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_neither_torch_nor_torchvision(command):
    argv = ["--help"] if command is None else [command, "--help"]
    loaded = _modules_after(f"from featx.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert not loaded & {"torch", "torchvision"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, hymenoptera) -> Path:
    from conftest import copy_real_images

    root = copy_real_images(hymenoptera, tmp_path_factory.mktemp("cli") / "images", per_class=2)
    return quick_extract(root, root.parent / "store.h5", layers=("penultimate",)).path


def test_info_and_export_import_no_torch(store, tmp_path):
    for argv in (["info", str(store)], ["export", str(store), "--out", str(tmp_path / "x.npz")]):
        loaded = _modules_after(f"from featx.cli import main\nassert main({argv!r}) == 0")
        assert not loaded & {"torch", "torchvision"}, argv
    assert (tmp_path / "x.npz").is_file()


def test_classify_parsing_imports_no_torch(tmp_path):
    argv = ["classify", "--features", str(tmp_path / "missing.h5"), "--model", "svm"]
    loaded = _modules_after(f"from featx.cli import main\nassert main({argv!r}) == 2")
    assert not loaded & {"torch", "torchvision"}


def _refuses_before_work(run_cli, monkeypatch, argv, out: str):
    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction started before the arguments were checked")

    # Checking the store path is the first thing extract_features does: no engine, model or image before it.
    monkeypatch.setattr("featx.extraction._engine.ENGINE_FACTORIES", {"local": no_extraction})
    code, stdout, stderr = run_cli(*argv)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith("error: --out is not writable (") and f"'{out}'; choose another --out" in stderr


@pytest.mark.parametrize("out", ["/proc/featx-test/out", "{tmp}/file.txt/out"])
def test_unwritable_out_is_one_line_before_any_work(out, store, tmp_path, run_cli, monkeypatch, small_dataset):
    (tmp_path / "file.txt").write_text("in the way")
    out = out.format(tmp=tmp_path)
    cases = {
        "extract": ["extract", "--data", small_dataset, "--model", "resnet18", "--weights", "none", "--out", f"{out}.h5"],
        "export": ["export", store, "--out", f"{out}.npz"],
        "classify": ["classify", "--features", store, "--model", "logreg", "--out", out],
    }
    for name, argv in cases.items():
        expected = f"{out}.h5" if name == "extract" else f"{out}.npz" if name == "export" else out
        _refuses_before_work(run_cli, monkeypatch, argv, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "small"]  # small: the images


def test_predict_checks_out_before_extracting(trained_classifier, small_dataset, tmp_path, run_cli, monkeypatch):
    out = tmp_path / "file.txt" / "p.csv"
    (tmp_path / "file.txt").write_text("in the way")
    argv = ["predict", "--classifier", trained_classifier, "--data", small_dataset / "val", "--out", out]
    _refuses_before_work(run_cli, monkeypatch, argv, str(out))


@pytest.fixture(scope="module")
def trained_classifier(store, tmp_path_factory) -> Path:
    from featx.classification import ClassifyConfig, run_classification

    run = run_classification(
        ClassifyConfig(features=(f"{store}:penultimate",), models="logreg", out=tmp_path_factory.mktemp("run"), plots=False)
    )
    return run.results[0].artifact


def test_quiet_shows_no_progress_bar(small_dataset, tmp_path, run_cli):
    code, stdout, stderr = run_cli(
        "-q", "extract", "--data", small_dataset, "--model", "resnet18", "--layer", "conv2", "--weights", "none",
        "--image-size", "64", "--workers", "0", "--out", tmp_path / "q.h5",
    )
    assert code == 0, stderr
    assert stderr == ""  # no bar, no size estimate: only warnings (none here)
    assert stdout.startswith(f"wrote {tmp_path / 'q.h5'}: 12 images; layers conv2 (64)")


def test_shared_options_are_declared_once():
    from featx.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("extract", "predict", "demo"):
        flags = [s for action in sub[command]._actions for s in action.option_strings]
        assert flags.count("--device") == 1 and flags.count("--workers") == 1 and flags.count("--no-progress") == 1
    source = (REPO / "featx" / "cli.py").read_text()
    assert source.count('"--device"') == source.count('"--workers"') == source.count('"--no-progress"') == 1
