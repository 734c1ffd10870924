"""run_pipeline.py classify: the table, the run folder, one-line errors with option names as flags."""

from __future__ import annotations

import json

import pytest

from classify_data import write_two_stores


@pytest.fixture
def two_stores(tmp_path):
    """The two stores of :func:`classify_data.write_two_stores`."""
    return write_two_stores(tmp_path)


def test_cli_prints_the_table_and_writes_the_run_folder(tmp_path, two_stores, run_cli):
    alexnet, resnet = two_stores
    out = tmp_path / "cli-run"
    code, stdout, stderr = run_cli(
        "classify", "--features", f"{alexnet}:fc7", "--features", resnet, "--model", "logreg,bayes",
        "--C", "0.1", "--out", out, "--no-plots",
    )
    assert code == 0, stderr
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["params"] == {"C": "0.1"}
    assert saved["results"][0]["params"]["C"] == 0.1
    for result in saved["results"]:
        row = next(line for line in stdout.splitlines() if line.split()[:1] == [result["name"]])
        assert f"{result['accuracy']:.3f}" in row
    assert "precision / recall per class:" in stdout


def test_cli_error_is_one_line(tmp_path, two_stores, run_cli):
    alexnet, _ = two_stores
    code, stdout, stderr = run_cli("classify", "--features", alexnet, "--out", tmp_path / "r")
    assert code == 2
    assert stderr == (
        f"error: store '{alexnet}' holds several layers (conv5, fc7); name one, e.g. --features {alexnet}:fc7\n"
    )
    code, _, stderr = run_cli("classify", "--features", f"{alexnet}:fc7", "--kernel", "poly")
    assert (code, stderr) == (2, "error: the 'kernel' parameter of svm must be one of linear, rbf; got 'poly'\n")


def test_cli_memory_option(tmp_path, two_stores, run_cli):
    _, resnet = two_stores
    code, _, stderr = run_cli("classify", "--features", resnet, "--memory", "lots", "--out", tmp_path / "r")
    assert (code, stderr) == (
        2, "error: --memory must be a number of bytes, optionally with a unit K, M, G or T (e.g. 512M, 4G); "
        "got 'lots'\n",
    )
    code, _, stderr = run_cli("classify", "--features", resnet, "--memory", "100", "--out", tmp_path / "r")
    assert (code, stderr) == (
        2, "error: the memory budget (100 bytes) is too small for one block of 8 rows x 4 features, which needs "
        "512 bytes; pass --memory 512 or more\n",
    )
    code, _, stderr = run_cli(
        "classify", "--features", resnet, "--model", "bayes", "--memory", "520", "--out", tmp_path / "s", "--no-plots"
    )
    assert code == 0, stderr
    assert json.loads((tmp_path / "s" / "results.json").read_text())["fit"]["path"] == "streaming"
