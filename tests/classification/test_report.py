"""format_results: the printed comparison of a run."""

from __future__ import annotations

import pytest

from classify_data import config_for, write_two_stores
from featx.classification import format_results, run_classification


@pytest.fixture
def two_stores(tmp_path):
    """The two stores of :func:`classify_data.write_two_stores`."""
    return write_two_stores(tmp_path)


def test_format_results_prints_one_row_per_classifier(tmp_path, two_stores):
    alexnet, resnet = two_stores
    run = run_classification(config_for(tmp_path, [f"{alexnet}:fc7", resnet], models=("logreg", "bayes")))
    text = format_results(run)
    lines = text.splitlines()
    assert lines[0] == (
        f"features: {alexnet}:fc7 (6, fp32) + {resnet}:penultimate (4, fp32) = 10 columns; normalisation per input: standard"
    )
    assert lines[2] == "evaluation: stored split: train on train (24), evaluate on val (12)"
    header = lines.index("classifier        accuracy  balanced acc  macro F1  fit s  predict s")
    # The solver beside the family: lbfgs for logreg, nothing for bayes (its estimator says it).
    for line, result, name in zip(lines[header + 2 : header + 4], run.results, ("logreg (lbfgs)", "bayes")):
        assert line.startswith(name + " ") and result.name == name.split()[0]
        assert line.split()[-5] == f"{result.accuracy:.3f}"
    assert f"run folder: {run.out_dir}" in text
