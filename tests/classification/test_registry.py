"""The classifier registry: names, declared parameters, their help, and a cheap import."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from featx.classification import FAMILIES, ClassifyConfig, all_params, param_help, parse_models
from featx.errors import ConfigError


def test_model_names_are_split_checked_and_deduplicated():
    assert parse_models("svm, logreg,svm") == ("svm", "logreg")
    assert parse_models(["bayes", "xgboost,mlp"]) == ("bayes", "xgboost", "mlp")
    with pytest.raises(ConfigError, match=re.escape("got 'knm'")):
        parse_models("svm,knm")


def _resolved(models, params):
    """Each family's full parameters, as a configuration resolves them."""
    return ClassifyConfig(features="x.h5", models=models, params=params).model_params


def test_every_family_declares_valid_defaults():
    resolved = _resolved(list(FAMILIES), {})
    for name, family in FAMILIES.items():
        assert resolved[name] == {p: param.parse(param.default) for p, param in family.params.items()}
        assert resolved[name].keys() == family.params.keys()


def test_a_parameter_applies_to_every_chosen_family_that_declares_it():
    resolved = _resolved(["svm", "logreg", "bayes"], {"C": "2", "max_iter": 50})
    assert (resolved["svm"]["C"], resolved["logreg"]["C"]) == (2.0, 2.0)
    assert (resolved["svm"]["max_iter"], resolved["logreg"]["max_iter"]) == (50, 50)
    assert resolved["bayes"] == {"var_smoothing": 1e-9}


def test_parameters_and_their_help_for_the_command_line():
    params = all_params()
    assert set(params["C"]) == {"svm", "logreg"}
    assert set(params["max_iter"]) == {"svm", "logreg", "mlp"}
    assert param_help("max_iter") == "iteration limit (default: svm 10000, logreg 1000, mlp 200)"
    assert param_help("hidden") == "hidden layer widths, e.g. 512,256 (default: mlp 256)"


def _run_fresh(code: str) -> tuple[list[str], set[str]]:
    """Run *code* in a fresh interpreter: the lines it prints, and the heavy modules it loaded."""
    heavy = ("numpy", "h5py", "sklearn", "xgboost", "torch", "torchvision", "matplotlib", "skops", "pandas")
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    return lines[:-1], set(filter(None, lines[-1].split(",")))


def test_the_registries_import_without_numpy_h5py_sklearn_or_torch():
    """The command line builds its classify options from them on every start, so they load nothing heavy."""
    _, loaded = _run_fresh(
        "from featx.classification import FAMILIES, NORMALIZERS, all_params, param_help\n"
        "[param_help(name) for name in all_params()]"
    )
    assert loaded == set()


def test_a_loaded_booster_finds_its_device_without_torch(tmp_path):
    """A saved xgboost classifier is loaded onto this machine's GPU (or the CPU), asked without importing torch."""
    import numpy as np
    from sklearn.pipeline import make_pipeline

    from featx.classification import save_classifier

    params = ClassifyConfig(features="x.h5", models="xgboost", params={"n_estimators": 2}).model_params["xgboost"]
    booster = FAMILIES["xgboost"].build(params, 0).fit(np.eye(3, dtype=np.float32), [0, 1, 2])
    path = save_classifier(
        tmp_path / "c.zip", make_pipeline(booster), {"classifier": {"family": "xgboost"}, "classes": ["a", "b", "c"]}
    )
    printed, loaded = _run_fresh(
        "from featx.classification import load_classifier\n"
        f"print(load_classifier({str(path)!r}).pipeline.steps[-1][1].get_params()['device'])"
    )
    assert printed in (["cpu"], ["cuda"])
    assert "xgboost" in loaded and not loaded & {"torch", "torchvision"}
