"""ClassifyConfig: every value that is wrong whatever the data is refused when the configuration is made.

The stores named here do not exist: nothing is read to check a configuration.
"""

from __future__ import annotations

import re

import pytest

from featx.classification import FAMILIES, ClassifyConfig
from featx.errors import ConfigError

MODELS = "models must be one of svm, logreg, bayes, xgboost, mlp, knn (or several, comma-separated)"
PARAMETERS = (
    "C, alpha, gamma, hidden, k, kernel, learning_rate, max_bin, max_depth, max_iter, n_estimators, subsample, temperature, var_smoothing"
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ("svm", "forest")}, f"{MODELS}; got 'forest'"),
        ({"models": ("sv",)}, f"{MODELS}; got 'sv'; did you mean svm?"),
        ({"models": ""}, f"{MODELS}; got ''"),
        ({"normalize": "minmax"}, "normalize must be one of standard, l2, none; got 'minmax'"),
        (
            {"normalize": "standart"},
            "normalize must be one of standard, l2, none; got 'standart'; did you mean standard?",
        ),
        ({"params": {"C": "-1"}}, "the 'C' parameter of svm must be a float in the range (0, inf); got '-1'"),
        ({"params": {"C": -1}}, "the 'C' parameter of svm must be a float in the range (0, inf); got -1"),
        ({"params": {"kernel": "poly"}}, "the 'kernel' parameter of svm must be one of linear, rbf; got 'poly'"),
        (
            {"params": {"hidden": "8,,4"}, "models": ("mlp",)},
            "the 'hidden' parameter of mlp must be comma-separated ints in the range [1, inf), e.g. 512,256; "
            "got '8,,4'",
        ),
        ({"params": {"max_depth": 3}}, "parameter 'max_depth' is not used by svm; it applies to xgboost"),
        (
            {"params": {"max_bin": 300}, "models": ("xgboost",)},
            "the 'max_bin' parameter of xgboost must be an int in the range [2, 256]; got 300",
        ),
        (
            {"params": {"gama": 1}},
            f"the name of a classifier parameter must be one of {PARAMETERS}; got 'gama'; did you mean gamma?",
        ),
        ({"test_size": 1.5}, "test_size must be a fraction between 0 and 1 (exclusive); got 1.5"),
        ({"test_size": "0.2"}, "test_size must be a fraction between 0 and 1 (exclusive); got '0.2'"),
        ({"cv": 1}, "cv must be an integer of at least 2 (the folds); got 1"),
        ({"pca": 0}, "pca must be a positive integer (the number of components kept); got 0"),
        ({"pca": True}, "pca must be a positive integer (the number of components kept); got True"),
        ({"seed": -1}, "seed must be an integer in the range [0, 4294967295]; got -1"),
    ],
    ids=[
        "unknown-model", "model-close-match", "no-model", "unknown-normalize", "normalize-close-match", "C-text",
        "C-number", "kernel", "hidden", "param-of-another-family", "max_bin", "unknown-param", "test_size", "test_size-text",
        "cv", "pca", "pca-bool", "seed",
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        ClassifyConfig(features=("does-not-exist.h5",), **kwargs)


def test_no_features():
    with pytest.raises(ConfigError, match="^" + re.escape(
        "no features given; pass features='STORE[:LAYER]', one per store to join"
    ) + "$"):
        ClassifyConfig(features=())


def test_configuration_errors_are_value_errors():
    """Library users catch the built-in class they expect."""
    with pytest.raises(ValueError):
        ClassifyConfig(features=("x.h5",), models="forest")


def test_parameters_are_resolved_once_with_the_defaults():
    config = ClassifyConfig(features="x.h5", models="logreg,svm,logreg", params={"C": "0.5", "kernel": "rbf"})
    assert config.features == ("x.h5",)
    assert config.models == ("logreg", "svm")
    assert config.params == {"C": "0.5", "kernel": "rbf"}  # recorded as given
    assert config.model_params == {
        "logreg": {"C": 0.5, "max_iter": 1000},
        "svm": {"C": 0.5, "kernel": "rbf", "gamma": "scale", "max_iter": 10_000},
    }
    assert set(config.model_params) <= set(FAMILIES)


def test_making_a_configuration_asks_nothing_of_the_machine(monkeypatch):
    """The memory budget and the device are read by resolve(), when a run starts."""

    def asked(*args):
        raise AssertionError("the machine was asked")

    monkeypatch.setattr("os.sysconf", asked)
    monkeypatch.setattr("featx.devices.cuda_device_count", asked)
    monkeypatch.setattr("featx.devices.torch_has_cuda", asked)
    config = ClassifyConfig(features="x.h5", models="svm,xgboost", device="cuda:3")
    assert (config.memory, config.device) == (None, "cuda:3")
    with pytest.raises(AssertionError, match="the machine was asked"):
        config.resolve()


def test_resolve_gives_the_memory_budget_and_the_device(monkeypatch):
    monkeypatch.setattr("featx.devices.cuda_device_count", lambda: 0)
    resolved = ClassifyConfig(features="x.h5", memory="2G").resolve()
    assert (resolved.memory, resolved.device) == (2 * 2**30, "cpu")
