"""The classifier registry: every fact about a classifier family, in its entry of :data:`FAMILIES`.

Each family is a :class:`Family`:

- the hyper-parameters it declares (defaults, a parser for command-line text
  and the sklearn-style range check, as scikit-learn's
  ``_parameter_constraints``), and the grid a search explores;
- the estimator it fits for a training shape and a device (``make``: the
  solver choice), built from scikit-learn and xgboost, or from :mod:`._linear`
  (scikit-learn's objectives, a solver it lacks) and :mod:`._bayes`
  (``GaussianNB`` with a faster prediction);
- how it learns (``learns``: :data:`FIT`, :data:`ONE_PASS` or
  :data:`BOOSTING`), and with which parameters it can learn from blocks
  streamed from the stores (``streams``, ``streams_with``);
- the library that takes it to a GPU (``gpu``, ``gpu_with``);
- what its artifact needs: the types skops must trust (``trusted``), and a file
  of its own beside the pipeline (``own_file``, xgboost's booster).

The code that fits, streams and saves asks these attributes, never a family's
name: adding a family is one entry here and its estimator's module.

Parameters are checked once, by :func:`resolve_params`, when a
:class:`~featx.classification.ClassifyConfig` is made: before any store is
read.  The registry imports neither scikit-learn nor xgboost (they load when
an estimator is built), so the command line builds its options from it cheaply.

========  ==============================================================
svm       a linear SVM (``kernel='linear'``): ``LinearSVC`` (liblinear) with fewer
          rows than columns in memory, else its one-vs-rest squared hinge
          objective fitted by minibatch Adam on BLAS products then L-BFGS
          (:mod:`._linear`); or ``SVC`` with an RBF kernel (``kernel='rbf'``)
logreg    multinomial ``LogisticRegression`` (lbfgs); the same softmax
          objective by the minibatch fit of :mod:`._linear` when streaming, on
          a GPU, or from :data:`LBFGS_MAX_VALUES` training values
bayes     ``GaussianNB`` (:mod:`._bayes`: its prediction by matrix products)
xgboost   ``XGBClassifier``, ``tree_method='hist'``, every core, early stopping on
          a held-out tenth of the training rows (:mod:`._boosting`), 64
          histogram bins, on CUDA when the run's device is a GPU
knn       DINO's kNN probe (:mod:`._knn`): cosine similarity on L2-normalised
          rows, the ``k`` nearest vote with weights ``exp(s / temperature)``;
          exact, by blocks of the training rows (through torch on a GPU)
mlp       ``MLPClassifier``: a few dense layers on top of the frozen features
========  ==============================================================

Scaling is not part of a family: every block of features is normalised by the
pipeline in front of the classifier (``normalize``, standard by default),
which is what the linear, kernel and neural families need and what trees and
Gaussian naive Bayes are indifferent to.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import devices
from ..errors import ConfigError, DeviceError, choices, close_matches, message, option

__all__ = [
    "Param",
    "Family",
    "GpuLibrary",
    "OwnFile",
    "Fit",
    "FAMILIES",
    "FIT",
    "ONE_PASS",
    "BOOSTING",
    "family",
    "parse_models",
    "all_params",
    "param_help",
    "resolve_params",
    "unknown_name",
    "streaming_families",
    "check_gpu_libraries",
    "trusted_types",
    "solver_words",
    "Protocol",
    "PROTOCOLS",
    "protocol",
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

# --------------------------------------------------------------------------- what a family declares

#: ``Family.learns``: ``fit`` on one float32 matrix of the training rows, normalised in place; when
#: streaming, ``partial_fit`` over shuffled blocks, epoch after epoch.
FIT = "fit"
#: ``Family.learns``: the estimator's ``fit_blocks(blocks, classes)``, exact in one pass over row blocks,
#: in memory as when streaming (no copy of the training matrix is made).
ONE_PASS = "one-pass"
#: ``Family.learns``: boosting on xgboost's quantised matrix, built from row blocks (:mod:`._boosting`),
#: in memory as when streaming; a grid search fits the estimator on the matrix instead.
BOOSTING = "boosting"


@dataclass(frozen=True)
class GpuLibrary:
    """A library that fits a family's estimator on a GPU.

    Attributes
    ----------
    name : str
    has_cuda : callable
        ``() -> bool``: this installation of the library can use CUDA.
    checked : bool
        A GPU asked for explicitly is refused before the run when the library
        lacks CUDA; else the family fits on the CPU.
    """

    name: str
    has_cuda: Callable[[], bool]
    checked: bool

    def device(self, device: str) -> str:
        """Where the library fits on the run's *device* (resolved): that GPU when it can use CUDA, else ``'cpu'``."""
        return device if device != "cpu" and self.has_cuda() else "cpu"


@functools.cache
def _xgboost_has_cuda() -> bool:
    import xgboost

    return bool(xgboost.build_info().get("USE_CUDA"))


# torch is read from its version file (featx.devices, looked up at each call), so it can be checked before
# the run; xgboost is asked by importing it, which the configuration's checks do not do.
TORCH = GpuLibrary("torch", lambda: devices.torch_has_cuda(), checked=True)
XGBOOST = GpuLibrary("xgboost", _xgboost_has_cuda, checked=False)


@dataclass(frozen=True)
class OwnFile:
    """A fitted estimator saved beside the skops pipeline, in its library's own format.

    Attributes
    ----------
    name : str
        Its member in the artifact's zip (the manifest's ``files.booster``).
    save : callable
        ``(estimator, path) -> None``.
    load : callable
        ``bytes -> estimator``, ready to predict on this machine.
    """

    name: str
    save: Callable[[Any, Path], None]
    load: Callable[[bytes], Any]


@dataclass(frozen=True)
class Fit:
    """What the estimator a family makes depends on besides its parameters.

    Attributes
    ----------
    device : str
        Where it fits: ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (its GPU library's CUDA already checked).
    rows, features : int or None
        Shape of the training matrix; ``None`` for a grid search, whose inner folds vary.
    streaming : bool
        It learns from blocks streamed from the stores.
    """

    device: str = "cpu"
    rows: int | None = None
    features: int | None = None
    streaming: bool = False


def _holds(values: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    return all(params[name] == value for name, value in values.items())


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
    make : callable
        ``(params, seed, fit: Fit) -> estimator`` with every declared
        parameter in *params*: the estimator to fit for that shape and device
        (see :meth:`build`).
    grid : callable
        ``params -> {name: [values]}``: what ``search`` tries (may depend on
        a fixed parameter such as the SVM kernel).
    learns : {FIT, ONE_PASS, BOOSTING}
        How it learns from the training rows.
    streams : bool
        It can learn from blocks streamed from the stores (a training matrix
        larger than the memory budget) ...
    streams_with : dict of str -> value
        ... with these parameter values only (the SVM's linear kernel).
    gpu : GpuLibrary, optional
        The library that fits it on a GPU; ``None``: it fits on the CPU.
    gpu_with : dict of str -> value
        The parameter values with which it uses that library.
    trusted : tuple of str
        Types its fitted estimator holds that skops does not trust by default.
    own_file : OwnFile, optional
        Its estimator is saved apart from the skops pipeline, in this format.
    """

    name: str
    description: str
    params: Mapping[str, Param]
    make: Callable[[Mapping[str, Any], int, Fit], Any]
    grid: Callable[[Mapping[str, Any]], dict[str, list[Any]]]
    learns: str = FIT
    streams: bool = True
    streams_with: Mapping[str, Any] = field(default_factory=dict)
    gpu: GpuLibrary | None = None
    gpu_with: Mapping[str, Any] = field(default_factory=dict)
    trusted: tuple[str, ...] = ()
    own_file: OwnFile | None = None

    def build(self, params: Mapping[str, Any], seed: int, *, device: str = "cpu", rows: int | None = None,
              features: int | None = None, streaming: bool = False) -> Any:
        """The estimator this family fits, unfitted.

        Parameters
        ----------
        params : mapping
            Every declared parameter (:func:`resolve_params`).
        seed : int
            Its ``random_state``.
        device : str
            The run's device, resolved (``'cpu'``, ``'cuda'``, ``'cuda:N'``):
            used when the family's GPU library can (:meth:`fit_device`).
        rows, features : int, optional
            Shape of the training matrix, which chooses the solver and sets
            the penalty of a given ``C``; left out for a grid search.
        streaming : bool
            The estimator learns from streamed blocks (:attr:`streams`).
        """
        return self.make(params, seed, Fit(self.fit_device(params, device), rows, features, streaming))

    def fit_device(self, params: Mapping[str, Any], device: str) -> str:
        """Where it fits with *params* on the run's *device*: that GPU when its library can use it, else ``'cpu'``."""
        library = self.gpu_library(params)
        return library.device(device) if library is not None else "cpu"

    def gpu_library(self, params: Mapping[str, Any]) -> GpuLibrary | None:
        """The library that takes the family to a GPU with *params*, or ``None``."""
        return self.gpu if self.gpu is not None and _holds(self.gpu_with, params) else None

    def can_stream(self, params: Mapping[str, Any]) -> bool:
        """It can learn from blocks streamed from the stores, with *params*."""
        return self.streams and _holds(self.streams_with, params)


# --------------------------------------------------------------------------- the families' estimators


def _minibatch(loss: str, params: Mapping[str, Any], seed: int, fit: Fit):
    """The minibatch linear model, with ``alpha = 1 / (C n)`` when the training rows *n* are known."""
    from ._linear import MinibatchLinearClassifier

    estimator = MinibatchLinearClassifier(loss, max_iter=params["max_iter"], random_state=seed, device=fit.device)
    if fit.rows is not None:
        estimator.set_params(alpha=_alpha(params, fit.rows))
    return estimator


def _alpha(params: Mapping[str, Any], rows: int) -> float:
    return 1.0 / (params["C"] * max(rows, 1))


#: Training values (rows x columns) up to which the wide svm is liblinear's: it copies the matrix to float64 and
#: again to its own sparse rows (8 + 16 bytes a value: 1.5 GiB at this bound); above it, the minibatch model.
LIBLINEAR_MAX_VALUES = 1 << 26
#: Most L-BFGS iterations that finish the minibatch svm (``MinibatchLinearClassifier.polish``; each a full pass
#: over the training rows, and it stops once the objective settles): from the minibatch solution LinearSVC's optimum
#: took 31 to 94 with more rows than columns, and about 200 on separable wide matrices (benchmarks/README.md).
SVM_POLISH_ITER = 100
SVM_POLISH_ITER_WIDE = 300


def _make_svm(params: Mapping[str, Any], seed: int, fit: Fit):
    """``SVC`` (rbf); the linear SVM: ``LinearSVC`` in memory with fewer rows than columns, else minibatch.

    With fewer rows than columns (up to :data:`LIBLINEAR_MAX_VALUES`
    training values) liblinear's dual coordinate descent is ``LinearSVC``
    itself, exact (its cost grows with the rows; it works on copies of the
    matrix, small at such shapes).  With more
    rows, streamed or on a GPU, the minibatch squared hinge of :mod:`._linear`
    (the same objective, ``alpha = 1 / (C n)``), finished by
    at most :data:`SVM_POLISH_ITER` L-BFGS iterations so that it reaches
    ``LinearSVC``'s optimum and accuracy.
    """
    if params["kernel"] != "linear":
        from sklearn.svm import SVC

        return SVC(kernel="rbf", C=params["C"], gamma=params["gamma"], max_iter=-1, random_state=seed)
    if (fit.rows is not None and fit.rows < fit.features and fit.rows * fit.features <= LIBLINEAR_MAX_VALUES
            and not fit.streaming):
        from sklearn.svm import LinearSVC

        return LinearSVC(C=params["C"], dual=True, max_iter=params["max_iter"], random_state=seed)
    estimator = _minibatch("squared_hinge", params, seed, fit)
    if fit.rows is not None:  # the run's fit, not a grid search's inner ones
        estimator.set_params(polish=SVM_POLISH_ITER if fit.rows >= fit.features else SVM_POLISH_ITER_WIDE)
    return estimator


def _svm_grid(params: Mapping[str, Any]) -> dict[str, list[Any]]:
    if params["kernel"] == "linear":
        # The penalty itself: C's mapping depends on the rows of each inner fold.
        return {"alpha": [1e-5, 1e-4, 1e-3, 1e-2]}
    return {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 1e-4, 1e-3]}


#: Training values (rows x columns) from which the in-memory logreg is the minibatch softmax model:
#: lbfgs costs hundreds of passes over the training matrix, the minibatch model a few.
LBFGS_MAX_VALUES = 1 << 26


def _make_logreg(params: Mapping[str, Any], seed: int, fit: Fit):
    """``LogisticRegression`` (lbfgs), or the minibatch softmax model.

    The minibatch model when streaming, and in memory with at least as many
    rows as columns on a GPU (lbfgs runs on the CPU only) or from
    :data:`LBFGS_MAX_VALUES` training values.
    """
    tall = fit.rows is not None and fit.rows >= fit.features
    if fit.streaming or (tall and (fit.device != "cpu" or fit.rows * fit.features >= LBFGS_MAX_VALUES)):
        return _minibatch("log_loss", params, seed, fit)
    from sklearn.linear_model import LogisticRegression

    # lbfgs fits the multinomial (softmax) model whatever the number of classes.
    return LogisticRegression(C=params["C"], max_iter=params["max_iter"], solver="lbfgs", random_state=seed)


def _make_bayes(params: Mapping[str, Any], seed: int, fit: Fit):
    from ._bayes import GaussianNaiveBayes

    return GaussianNaiveBayes(var_smoothing=params["var_smoothing"])


# Histogram bins per feature, a quarter of xgboost's default: a round's time is bound by scattering
# gradients into histograms of features x bins cells, and at 64 bins they stay in the caches at the
# same accuracy (benchmarks/README.md).
_XGBOOST_BINS = 64


def _bins(value: Any) -> int:
    number = _positive_int(value)
    if not 2 <= number <= 256:  # one byte per quantised value (QUANTISED_BYTES_PER_VALUE)
        raise ValueError
    return number


def _make_xgboost(params: Mapping[str, Any], seed: int, fit: Fit):
    import os

    from xgboost import XGBClassifier

    return XGBClassifier(
        tree_method="hist",
        device=fit.device,
        n_jobs=os.cpu_count(),
        n_estimators=params["n_estimators"],
        max_depth=params["max_depth"],
        learning_rate=params["learning_rate"],
        subsample=params["subsample"],
        max_bin=params["max_bin"],
        random_state=seed,
    )


def _save_booster(estimator: Any, path: Path) -> None:
    # XGBModel.save_model keeps the sklearn wrapper's attributes (classes, ...).  UBJSON is data, not code,
    # and round-trips the model bit for bit (JSON would round floats through text).
    estimator.save_model(path)


def _load_booster(data: bytes) -> Any:
    from xgboost import XGBClassifier

    model = XGBClassifier()
    model.load_model(bytearray(data))
    # Trained on a GPU, used where there may be none (and the other way round).
    model.set_params(device=XGBOOST.device(devices.resolve_device("auto")))
    return model


def _make_knn(params: Mapping[str, Any], seed: int, fit: Fit):
    """DINO's kNN vote (:mod:`._knn`).  In a run's fit it keeps the run's training matrix, normalised in place;
    a grid search's inner fits copy theirs (their matrix may be a view of the search's)."""
    from ._knn import KNNVote

    return KNNVote(k=params["k"], temperature=params["temperature"], device=fit.device, copy=fit.rows is None)


def _make_mlp(params: Mapping[str, Any], seed: int, fit: Fit):
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
        "support vector machine: linear (LinearSVC's one-vs-rest squared hinge: liblinear with fewer rows than "
        "columns, else minibatch Adam then L-BFGS), or SVC with the rbf kernel",
        {
            "C": _C,
            "kernel": Param("linear", choices(_KERNELS), _choice(*_KERNELS), "kernel: linear or rbf"),
            "gamma": Param("scale", "'scale', 'auto' or a float in the range (0, inf)", _gamma, "rbf kernel width"),
            "max_iter": Param(10_000, "an int in the range [1, inf)", _positive_int, "iteration limit"),
        },
        _make_svm,
        _svm_grid,
        streams_with={"kernel": "linear"},
        gpu=TORCH,
        gpu_with={"kernel": "linear"},
        trusted=("featx.classification._linear.MinibatchLinearClassifier",),
    ),
    "logreg": Family(
        "logreg",
        "multinomial logistic regression (LogisticRegression, lbfgs)",
        {
            "C": _C,
            "max_iter": Param(1_000, "an int in the range [1, inf)", _positive_int, "iteration limit"),
        },
        _make_logreg,
        lambda params: {"C": [0.001, 0.01, 0.1, 1.0, 10.0]},
        gpu=TORCH,
        trusted=("featx.classification._linear.MinibatchLinearClassifier",),
    ),
    "bayes": Family(
        "bayes",
        "Gaussian naive Bayes (GaussianNB)",
        {
            "var_smoothing": Param(
                1e-9, "a float in the range (0, inf)", _positive_float, "variance added for stability"
            ),
        },
        _make_bayes,
        lambda params: {"var_smoothing": [1e-9, 1e-6, 1e-3, 1e-1]},
        learns=ONE_PASS,
        trusted=("featx.classification._bayes.GaussianNaiveBayes",),
    ),
    "xgboost": Family(
        "xgboost",
        "gradient-boosted trees (XGBClassifier, hist; CUDA when present)",
        {
            "n_estimators": Param(100, "an int in the range [1, inf)", _positive_int, "boosting rounds"),
            "max_depth": Param(6, "an int in the range [1, inf)", _positive_int, "tree depth"),
            "learning_rate": Param(0.3, "a float in the range (0, inf)", _positive_float, "shrinkage"),
            "subsample": Param(1.0, "a float in the range (0, 1]", _fraction, "row subsampling per tree"),
            "max_bin": Param(_XGBOOST_BINS, "an int in the range [2, 256]", _bins, "histogram bins per feature"),
        },
        _make_xgboost,
        lambda params: {"max_depth": [3, 6], "learning_rate": [0.05, 0.1, 0.3], "n_estimators": [100, 300]},
        learns=BOOSTING,
        gpu=XGBOOST,
        own_file=OwnFile("booster.ubj", _save_booster, _load_booster),
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
        _make_mlp,
        lambda params: {"alpha": [1e-4, 1e-2, 1.0], "hidden": [(256,), (512, 256)]},
        # Streamed by MLPClassifier.partial_fit: Adam over the blocks.
        trusted=(
            "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
            "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        ),
    ),
    "knn": Family(
        "knn",
        "k nearest neighbours by cosine similarity on L2-normalised rows, votes weighted by exp(similarity / T) "
        "(DINO's kNN probe); exact, by blocks of the training rows",
        {
            "k": Param(20, "an int in the range [1, inf)", _positive_int, "neighbours of the knn vote (DINO: 10, 20, "
                       "100, 200)"),
            "temperature": Param(0.07, "a float in the range (0, inf)", _positive_float,
                                 "temperature T of the knn vote weights exp(similarity / T)"),
        },
        _make_knn,
        lambda params: {"k": [10, 20, 100, 200]},
        # It keeps every training row: a matrix larger than the memory budget cannot be held to vote.
        streams=False,
        gpu=TORCH,
        trusted=("featx.classification._knn.KNNVote",),
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


def _words(names: Sequence[str]) -> str:
    """``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def streaming_families() -> str:
    """The families that can learn from streamed blocks, in words: ``svm (linear), logreg, ... or mlp``."""
    return _words([
        fam.name + (f" ({', '.join(map(str, fam.streams_with.values()))})" if fam.streams_with else "")
        for fam in FAMILIES.values() if fam.streams
    ])


def check_gpu_libraries(models: Sequence[str], params: Mapping[str, Mapping[str, Any]], device: str,
                        asked: str) -> None:
    """Refuse a GPU asked for explicitly when a chosen family's (checked) GPU library has no CUDA here.

    Parameters
    ----------
    models : sequence of str
        Family names (already checked).
    params : mapping
        Each family's parameters (:func:`resolve_params`).
    device : str
        The run's device, resolved.
    asked : str
        The device as the user gave it (not ``auto``: ``auto`` fits such families on the CPU).

    Raises
    ------
    DeviceError
        Naming the families and the library.
    """
    if device == "cpu":
        return
    libraries = {name: FAMILIES[name].gpu_library(params[name]) for name in models}
    for library in dict.fromkeys(lib for lib in libraries.values() if lib is not None and lib.checked):
        if not library.has_cuda():
            names = [name for name, lib in libraries.items() if lib is library]
            raise DeviceError(
                message(
                    f"device '{asked}' cannot fit {', '.join(names)}",
                    hint=f"they run on a GPU through {library.name}, and no {library.name} built with CUDA is "
                    f"installed; use {option('device', 'cpu')} or {option('device', 'auto')}",
                )
            )


def solver_words(estimator: Any) -> str:
    """The solver a fitted estimator ran, in words for classify's table: ``liblinear``, ``lbfgs``,
    ``minibatch squared hinge + L-BFGS``, ``sgd hinge``, ...; ``''`` when the estimator's name says it all."""
    kind = type(estimator).__name__
    params = estimator.get_params()
    if kind == "LinearSVC":
        return "liblinear"
    if kind == "LogisticRegression":
        return str(params["solver"])
    if kind == "SGDClassifier":
        return f"sgd {params['loss']}"
    if kind == "MinibatchLinearClassifier":
        return f"minibatch {params['loss'].replace('_', ' ')}" + (" + L-BFGS" if params.get("polish") else "")
    if kind == "SVC":
        return f"libsvm {params['kernel']}"
    return ""


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol of the literature that fixes how a family's regularisation is chosen.

    Attributes
    ----------
    name : str
        What ``protocol`` (``--protocol``) takes.
    family : str
        The family it fits.
    param : str
        The parameter it chooses ...
    grid : (float, float, int)
        ... among ``np.logspace(*grid)``, on a validation split carved from the training rows.
    description : str
    """

    name: str
    family: str
    param: str
    grid: tuple[float, float, int]
    description: str


#: The linear-probe protocol of Kornblith et al. 2019, CLIP, DINOv2 and ssl-transfer: L-BFGS softmax regression,
#: C among 45 log-spaced values from 1e-6 to 1e5 (``np.logspace(-6, 5, 45)``), chosen on a validation split, then
#: refitted on the training rows.
PROTOCOLS: dict[str, Protocol] = {
    "linear-probe": Protocol(
        "linear-probe", "logreg", "C", (-6.0, 5.0, 45),
        "L-BFGS softmax regression, C from 45 log-spaced values in [1e-6, 1e5] chosen on a validation split "
        "(the store's val split next to test, else a stratified 20% of the training rows), refitted on train (+val)",
    ),
}


def protocol(name: str | None, models: Sequence[str]) -> Protocol | None:
    """The protocol *name* (None: none), checked against the chosen families.

    Raises
    ------
    ConfigError
        An unknown protocol, or one whose family is not among *models*.
    """
    if name is None:
        return None
    if name not in PROTOCOLS:
        raise unknown_name(option("protocol"), name, list(PROTOCOLS))
    chosen = PROTOCOLS[name]
    if chosen.family not in models:
        raise ConfigError(
            message(
                f"{option('protocol', name)} fits {chosen.family}, which is not among the classifiers chosen "
                f"({', '.join(models)})",
                hint=f"add it: {option('models', ','.join([*models, chosen.family]), flag='model')}",
            )
        )
    return chosen


def trusted_types() -> tuple[str, ...]:
    """Every type a featx artifact may hold that skops does not trust by default (the families' ``trusted``)."""
    return tuple(sorted({name for fam in FAMILIES.values() for name in fam.trusted}))
