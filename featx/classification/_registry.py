"""The classifier registry: five families built from scikit-learn and xgboost.

Each family is a :class:`Family`: the hyper-parameters it declares (with
defaults, a parser for command-line text and the sklearn-style range check,
as scikit-learn's ``_parameter_constraints``), a function that builds the
estimator, and the grid a search explores.  The estimators are scikit-learn's
and xgboost's own, except the minibatch linear models of :mod:`._linear`
(scikit-learn's objectives, a solver it lacks) and :mod:`._bayes`'s
``GaussianNB`` with a faster prediction.

Parameters are checked once, by :func:`resolve_params`, when a
:class:`~featx.classification.ClassifyConfig` is made: before any store is
read.  The registry imports neither scikit-learn nor xgboost (they load when
an estimator is built), so the command line builds its options from it cheaply.

========  ==============================================================
svm       a linear SVM (``kernel='linear'``): ``LinearSVC``'s one-vs-rest squared
          hinge objective, fitted by minibatch Adam on BLAS products
          (:mod:`._linear`), which converges in seconds where liblinear's
          ``LinearSVC`` took minutes and stopped unconverged on 4,608 columns
          and ``SGDClassifier`` took minutes per epoch at 10^6 x 2,048, 100
          classes; or ``SVC`` with an RBF kernel (``kernel='rbf'``)
logreg    multinomial ``LogisticRegression`` (lbfgs); when streaming, the same
          softmax objective by the minibatch fit of :mod:`._linear`
bayes     ``GaussianNB`` (:mod:`._bayes`: its prediction by matrix products)
xgboost   ``XGBClassifier``, ``tree_method='hist'``, every core, early stopping on
          a held-out tenth of the training rows, 64 histogram bins (a quarter
          of xgboost's default: rounds 2.6-4x faster at the same accuracy),
          on CUDA when a GPU is present
mlp       ``MLPClassifier``: a few dense layers on top of the frozen features
========  ==============================================================

Scaling is not part of a family: every block of features is normalised by the
pipeline in front of the classifier (``normalize``, standard by default),
which is what the linear, kernel and neural families need and what trees and
Gaussian naive Bayes are indifferent to.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, choices, close_matches, message, option

__all__ = [
    "Param",
    "Family",
    "FAMILIES",
    "family",
    "parse_models",
    "all_params",
    "param_help",
    "resolve_params",
    "unknown_name",
    "xgboost_device",
    "cuda_device_count",
    "torch_has_cuda",
    "using_device",
    "linear_device",
    "XGBOOST_EARLY_STOP_FRACTION",
    "XGBOOST_EARLY_STOP_ROUNDS",
]


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: its default, what values are allowed, and how to read text.

    Attributes
    ----------
    default : object
        Value used when the parameter is not set.
    allowed : str
        The allowed values in words, as in scikit-learn's messages
        (``"a float in the range (0, inf)"``).
    parse : callable
        ``value -> value``: converts text (or a Python value) and raises
        ``ValueError`` when the value is not allowed.
    help : str
        One line for ``--help``.
    """

    default: Any
    allowed: str
    parse: Callable[[Any], Any]
    help: str


def _positive_float(value: Any) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError
    return number


def _fraction(value: Any) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    number = int(value.strip()) if isinstance(value, str) else int(value)
    if number < 1:
        raise ValueError
    return number


def _choice(*names: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if str(value) not in names:
            raise ValueError
        return str(value)

    return parse


def _gamma(value: Any) -> str | float:
    return str(value) if str(value) in ("scale", "auto") else _positive_float(value)


def _hidden(value: Any) -> tuple[int, ...]:
    """``"256"``, ``"512,256"``, ``256`` or ``(512, 256)`` -> a tuple of layer widths."""
    if isinstance(value, str):
        items = value.replace(" ", "").split(",")
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    if not items or "" in items:
        raise ValueError
    return tuple(_positive_int(v) for v in items)


_KERNELS = ("linear", "rbf")
_C = Param(1.0, "a float in the range (0, inf)", _positive_float, "inverse regularisation strength")


@functools.cache
def cuda_device_count() -> int:
    """The GPUs the CUDA driver sees (``cuDeviceGetCount``); 0 without an NVIDIA driver.

    Asked of the driver directly (what ``torch.cuda.is_available()`` asks
    too), so that classification never imports torch to find out: importing
    it would cost seconds and tie this side to the extraction side's
    dependencies.
    """
    import ctypes
    import sys

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError:  # no NVIDIA driver on this machine
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@functools.cache
def torch_has_cuda() -> bool:
    """An installed torch built with CUDA, read from its ``torch/version.py`` without importing torch."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return False
    return re.search(r"^cuda\b[^=\n]*=\s*['\"]", text, flags=re.MULTILINE) is not None


# The device of the classify run in progress ('cpu', 'cuda' or 'cuda:N', resolved), None outside one.
_RUN_DEVICE: ContextVar[str | None] = ContextVar("featx_classify_device", default=None)


@contextlib.contextmanager
def using_device(device: str) -> Iterator[None]:
    """Build and fit the classifiers on *device* (resolved: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``) inside.

    The families' builders, and xgboost's booster parameters, ask
    :func:`linear_device` and :func:`xgboost_device`; outside this context
    the linear models run on the CPU and xgboost where it did before (CUDA
    when the driver sees a GPU).
    """
    token = _RUN_DEVICE.set(device)
    try:
        yield
    finally:
        _RUN_DEVICE.reset(token)


def linear_device() -> str:
    """Where the minibatch linear models run: the run's GPU when torch has CUDA, else ``'cpu'`` (numpy)."""
    device = _RUN_DEVICE.get()
    return device if device not in (None, "cpu") and torch_has_cuda() else "cpu"


@functools.cache
def _xgboost_has_cuda() -> bool:
    import xgboost

    return bool(xgboost.build_info().get("USE_CUDA"))


def xgboost_device() -> str:
    """The run's GPU when this xgboost is built with CUDA, else ``'cpu'``.

    Outside a run (:func:`using_device`), e.g. when a saved booster is
    loaded: ``'cuda'`` when the CUDA driver sees a GPU (:func:`cuda_device_count`).
    """
    if not _xgboost_has_cuda():
        return "cpu"
    device = _RUN_DEVICE.get()
    if device is None:
        device = "cuda" if cuda_device_count() > 0 else "cpu"
    return device


@dataclass(frozen=True)
class Family:
    """A classifier family of the registry.

    Attributes
    ----------
    name : str
        Registry key, what ``models`` (``--model``) takes.
    description : str
        The estimator, in words.
    params : dict of str -> Param
        Hyper-parameters it declares.
    build : callable
        ``(params, seed) -> estimator`` with every declared parameter in *params*.
    grid : callable
        ``params -> {name: [values]}``: what ``search`` tries (may depend on
        a fixed parameter such as the SVM kernel).
    for_rows : callable, optional
        ``(estimator, params, n_rows, n_features, streaming) -> estimator``:
        sets what depends on the shape of the training matrix (the penalty of
        a given ``C``, xgboost's bins) and returns the estimator to fit (the
        linear SVM's solver depends on the shape).
    stream : callable, optional
        ``(params, seed) -> estimator`` for training matrices larger than the
        memory budget: one with ``partial_fit``, or xgboost's (fitted from an
        ``xgboost.DataIter``); ``None`` (or an estimator of ``None``) when the
        family has no incremental fit.
    """

    name: str
    description: str
    params: Mapping[str, Param]
    build: Callable[[Mapping[str, Any], int], Any]
    grid: Callable[[Mapping[str, Any]], dict[str, list[Any]]]
    for_rows: Callable[[Any, Mapping[str, Any], int, int, bool], Any] | None = None
    stream: Callable[[Mapping[str, Any], int], Any] | None = None


def _minibatch(loss: str, params: Mapping[str, Any], seed: int):
    from ._linear import MinibatchLinearClassifier

    # alpha is set from C and the number of rows by _linear_for_rows before fitting.
    return MinibatchLinearClassifier(loss, max_iter=params["max_iter"], random_state=seed, device=linear_device())


# With fewer rows than columns (1,088 x 4,608, 17 classes: separable) the linear
# SVM is SGDClassifier's hinge loss with the 'optimal' step schedule, which
# converges in ~100 epochs of cheap per-row updates at about logreg's accuracy:
# 0.658 against 0.676 in 2.7 s, where the minibatch squared hinge reached 0.648.
# It stops after 5 epochs improving the training loss by less than tol.
_SGD_TOL = 1e-3
_SGD_PATIENCE = 5


def _sgd_hinge(params: Mapping[str, Any], n_rows: int, seed: int):
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(
        loss="hinge", alpha=1.0 / (params["C"] * max(n_rows, 1)), max_iter=params["max_iter"], tol=_SGD_TOL,
        learning_rate="optimal", n_iter_no_change=_SGD_PATIENCE, n_jobs=-1, random_state=seed,
    )


# lbfgs costs hundreds of passes over the training matrix, the minibatch softmax model a few: from
# 2^26 training values (e.g. 32,768 x 2,048) the in-memory logreg is the minibatch model.  Measured on
# 300,000 x 2,048, 100 classes (2 cores): lbfgs 675 s, accuracy 0.471; see the issue notes for the
# minibatch model there.  Below (50,000 x 512, 10 classes: 3.8 s; the demo's digits) lbfgs stays.
_LBFGS_MAX_CELLS = 1 << 26


def _linear_for_rows(estimator: Any, params: Mapping[str, Any], n_rows: int, n_features: int, streaming: bool) -> Any:
    """``alpha = 1 / (C n)`` (scikit-learn's ``C`` objective over ``C n``); the SVM's solver from the shape.

    Returns the estimator to fit: the minibatch model given, or, for an
    in-memory linear SVM with fewer rows than columns, ``SGDClassifier``.
    The in-memory logreg with at least as many rows as columns is the
    minibatch softmax model on a GPU (:func:`linear_device`; the SVM's rule,
    since lbfgs runs on the CPU only), and on the CPU from
    :data:`_LBFGS_MAX_CELLS` training values on.
    """
    from sklearn.linear_model import LogisticRegression

    from ._linear import MinibatchLinearClassifier, for_rows

    if isinstance(estimator, LogisticRegression) and n_rows >= n_features and (
            linear_device() != "cpu" or n_rows * n_features >= _LBFGS_MAX_CELLS):
        estimator = _minibatch("log_loss", params, estimator.random_state)
    if not isinstance(estimator, MinibatchLinearClassifier):
        return estimator
    if estimator.loss == "squared_hinge" and n_rows < n_features and not streaming:
        return _sgd_hinge(params, n_rows, estimator.random_state)
    for_rows(estimator, params["C"], n_rows)
    return estimator


def _build_svm(params: Mapping[str, Any], seed: int):
    from sklearn.svm import SVC

    if params["kernel"] == "linear":
        return _minibatch("squared_hinge", params, seed)
    return SVC(kernel="rbf", C=params["C"], gamma=params["gamma"], max_iter=-1, random_state=seed)


def _stream_svm(params: Mapping[str, Any], seed: int):
    return _minibatch("squared_hinge", params, seed) if params["kernel"] == "linear" else None


def _stream_logreg(params: Mapping[str, Any], seed: int):
    return _minibatch("log_loss", params, seed)


def _svm_grid(params: Mapping[str, Any]) -> dict[str, list[Any]]:
    if params["kernel"] == "linear":
        # The penalty itself: C's mapping depends on the rows of each inner fold.
        return {"alpha": [1e-5, 1e-4, 1e-3, 1e-2]}
    return {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 1e-4, 1e-3]}


def _build_logreg(params: Mapping[str, Any], seed: int):
    from sklearn.linear_model import LogisticRegression

    # lbfgs fits the multinomial (softmax) model whatever the number of classes.
    return LogisticRegression(C=params["C"], max_iter=params["max_iter"], solver="lbfgs", random_state=seed)


def _build_bayes(params: Mapping[str, Any], seed: int):  # GaussianNB.partial_fit is exact, so it streams too
    from ._bayes import GaussianNaiveBayes

    return GaussianNaiveBayes(var_smoothing=params["var_smoothing"])


#: Fraction of the training rows xgboost holds out (stratified) for early stopping.
XGBOOST_EARLY_STOP_FRACTION = 0.1
#: Boosting rounds without improvement of the held-out log loss before xgboost stops.
XGBOOST_EARLY_STOP_ROUNDS = 10


#: Histogram bins per feature (xgboost's default is 256).  The time of a boosting round is bound by
#: scattering gradients into per-node histograms of features x bins cells, and a smaller histogram
#: stays in the caches.  Measured (2 cores, stratified early stopping as the pipeline does):
#: 50,000 x 512, 10 classes: 64 bins 77 s, accuracy 0.739; 256 bins 202 s, 0.740 (10,000 test rows,
#: standard error 0.004); 20,000 x 2,048, 100 classes: 15 s per round with 64 bins, 60 s with 256;
#: the demo's digits (1,212 x 1,024, 10 classes, one thread): 8.3 CPU s, 0.929 against 18.8 s, 0.924.
XGBOOST_BINS = 64


def _bins(value: Any) -> int:
    number = _positive_int(value)
    if not 2 <= number <= 256:  # one byte per quantised value (QUANTISED_BYTES_PER_VALUE)
        raise ValueError
    return number


def _build_xgboost(params: Mapping[str, Any], seed: int):
    import os

    from xgboost import XGBClassifier

    return XGBClassifier(
        tree_method="hist",
        device=xgboost_device(),
        n_jobs=os.cpu_count(),
        n_estimators=params["n_estimators"],
        max_depth=params["max_depth"],
        learning_rate=params["learning_rate"],
        subsample=params["subsample"],
        max_bin=params["max_bin"],
        random_state=seed,
    )


def _build_mlp(params: Mapping[str, Any], seed: int):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=params["hidden"],
        alpha=params["alpha"],
        max_iter=params["max_iter"],
        random_state=seed,
    )


FAMILIES: dict[str, Family] = {
    "svm": Family(
        "svm",
        "support vector machine: linear (one-vs-rest squared hinge, minibatch Adam), or SVC with the rbf kernel",
        {
            "C": _C,
            "kernel": Param("linear", choices(_KERNELS), _choice(*_KERNELS), "kernel: linear or rbf"),
            "gamma": Param("scale", "'scale', 'auto' or a float in the range (0, inf)", _gamma, "rbf kernel width"),
            "max_iter": Param(10_000, "an int in the range [1, inf)", _positive_int, "iteration limit"),
        },
        _build_svm,
        _svm_grid,
        for_rows=_linear_for_rows,
        stream=_stream_svm,
    ),
    "logreg": Family(
        "logreg",
        "multinomial logistic regression (LogisticRegression, lbfgs)",
        {
            "C": _C,
            "max_iter": Param(1_000, "an int in the range [1, inf)", _positive_int, "iteration limit"),
        },
        _build_logreg,
        lambda params: {"C": [0.001, 0.01, 0.1, 1.0, 10.0]},
        for_rows=_linear_for_rows,
        stream=_stream_logreg,
    ),
    "bayes": Family(
        "bayes",
        "Gaussian naive Bayes (GaussianNB)",
        {
            "var_smoothing": Param(
                1e-9, "a float in the range (0, inf)", _positive_float, "variance added for stability"
            ),
        },
        _build_bayes,
        lambda params: {"var_smoothing": [1e-9, 1e-6, 1e-3, 1e-1]},
        stream=_build_bayes,
    ),
    "xgboost": Family(
        "xgboost",
        "gradient-boosted trees (XGBClassifier, hist; CUDA when present)",
        {
            "n_estimators": Param(100, "an int in the range [1, inf)", _positive_int, "boosting rounds"),
            "max_depth": Param(6, "an int in the range [1, inf)", _positive_int, "tree depth"),
            "learning_rate": Param(0.3, "a float in the range (0, inf)", _positive_float, "shrinkage"),
            "subsample": Param(1.0, "a float in the range (0, 1]", _fraction, "row subsampling per tree"),
            "max_bin": Param(XGBOOST_BINS, "an int in the range [2, 256]", _bins, "histogram bins per feature"),
        },
        _build_xgboost,
        lambda params: {"max_depth": [3, 6], "learning_rate": [0.05, 0.1, 0.3], "n_estimators": [100, 300]},
        stream=_build_xgboost,
    ),
    "mlp": Family(
        "mlp",
        "a small fully-connected network on the features (MLPClassifier)",
        {
            "hidden": Param(
                (256,), "comma-separated ints in the range [1, inf), e.g. 512,256", _hidden,
                "hidden layer widths, e.g. 512,256",
            ),
            "alpha": Param(1e-4, "a float in the range (0, inf)", _positive_float, "L2 penalty"),
            "max_iter": Param(200, "an int in the range [1, inf)", _positive_int, "iteration limit"),
        },
        _build_mlp,
        lambda params: {"alpha": [1e-4, 1e-2, 1.0], "hidden": [(256,), (512, 256)]},
        stream=_build_mlp,  # MLPClassifier.partial_fit: Adam over the blocks
    ),
}


# Several families can be compared in one run, so the allowed value says so.
_MODELS_ALLOWED = f"{choices(FAMILIES)} (or several, comma-separated)"


def unknown_name(what: str, name: Any, known: Sequence[str], allowed: str | None = None) -> ConfigError:
    """The error for a name that is not one of *known*: the choices, and close matches as a hint.

    Parameters
    ----------
    what : str
        The subject, as :func:`featx.errors.message` takes it (``option("normalize")``).
    name : object
        The name received.
    known : sequence of str
        The names allowed.
    allowed : str, optional
        What is allowed, in words; ``choices(known)`` by default.
    """
    hint = close_matches(str(name), known).strip() or None
    return ConfigError(message(what, allowed=allowed or choices(known), got=name, hint=hint))


def family(name: str) -> Family:
    """The registry entry of *name*; an unknown name is a :class:`~featx.errors.ConfigError`."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise unknown_name(option("models", flag="model"), name, list(FAMILIES), allowed=_MODELS_ALLOWED) from None


def parse_models(models: Sequence[str] | str) -> tuple[str, ...]:
    """``"svm,logreg"`` or ``("svm", "logreg")`` -> checked, de-duplicated names in order.

    Raises
    ------
    ConfigError
        No name, or a name that is not in :data:`FAMILIES`.
    """
    items = models.split(",") if isinstance(models, str) else [m for item in models for m in item.split(",")]
    names = tuple(dict.fromkeys(m.strip() for m in items if m.strip()))
    if not names:
        raise ConfigError(message(option("models", flag="model"), allowed=_MODELS_ALLOWED, got=models))
    for name in names:
        family(name)
    return names


def all_params() -> dict[str, dict[str, Param]]:
    """Every declared parameter name -> {family: its declaration there}."""
    found: dict[str, dict[str, Param]] = {}
    for fam in FAMILIES.values():
        for name, param in fam.params.items():
            found.setdefault(name, {})[fam.name] = param
    return found


def param_help(name: str) -> str:
    """``--help`` text of a parameter: what it is and its default in each family."""
    declared = all_params()[name]
    first = next(iter(declared.values()))
    defaults = ", ".join(f"{fam} {_show(p.default)}" for fam, p in declared.items())
    return f"{first.help} (default: {defaults})"


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def resolve_params(models: Sequence[str], params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Check user-set parameters and give each family its full parameter set.

    Parameters
    ----------
    models : sequence of str
        Family names (already checked).
    params : mapping
        User-set values, as text (from the command line) or Python values.

    Returns
    -------
    dict of family name -> dict of parameter -> value
        Defaults with the user's values applied where the family declares them.

    Raises
    ------
    ConfigError
        A parameter no chosen family declares, or a value out of range.
    """
    known = all_params()
    for name, value in params.items():
        if name not in known:
            raise unknown_name("the name of a classifier parameter", name, sorted(known))
        owners = list(known[name])
        if not set(owners) & set(models):
            raise ConfigError(
                message(
                    f"parameter '{name}' is not used by {', '.join(models)}", hint=f"it applies to {', '.join(owners)}"
                )
            )
    resolved: dict[str, dict[str, Any]] = {}
    for model in models:
        fam = FAMILIES[model]
        values = {}
        for name, param in fam.params.items():
            value = params.get(name, param.default)
            try:
                values[name] = param.parse(value)
            except (ValueError, TypeError):
                raise ConfigError(
                    message(f"the '{name}' parameter of {model}", allowed=param.allowed, got=value)
                ) from None
        resolved[model] = values
    return resolved
