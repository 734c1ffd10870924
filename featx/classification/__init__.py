"""Classification on cached features: the classifier registry, the join on sample id,
evaluation, training, saved classifiers and reports.

==================  ==================================================================
``_registry``       the classifier families and every fact about them
                    (:data:`FAMILIES`): parameters, estimators, how they learn and
                    stream, their GPU library, their artifact
``_config``         :class:`ClassifyConfig`: every value checked once, before any work;
                    ``resolve()``: the memory budget and the device of this machine
``_join``           ``STORE[:LAYER]`` inputs read and joined on sample id
``_evaluation``     which rows train and which evaluate (stored split, hold-out, k-fold)
``_pipeline``       per-block normalisation -> optional PCA -> estimator
``_streaming``      the fit plan (in memory or streaming, from the memory budget) and
                    the block-by-block ``partial_fit`` of a matrix larger than the budget
``_boosting``       xgboost fitted from row blocks
``_linear``         :class:`MinibatchLinearClassifier`: the linear svm and streamed
                    logreg, minibatch Adam on BLAS products (``_torch_linear``: on a GPU)
``_bayes``          :class:`GaussianNaiveBayes`: GaussianNB predicted by matrix products
``_knn``            ``KNNVote``: DINO's weighted kNN vote, exact by blocks of the training rows
``_protocol``       the linear-probe protocol: ``C`` chosen on a validation split, then a refit
``_training``       :func:`run_classification`: fit, evaluate, write the run folder
``_run``            what a run did (:class:`ClassifyRun`) and its ``results.json``
``_artifact``       saved classifiers without pickle: :func:`save_classifier`, :func:`load_classifier`
``_report``         metrics, prediction files, confusion plots, :func:`format_results`
``_html``           :func:`write_report`: one self-contained ``report.html`` (images embedded)
==================  ==================================================================

Reads stores through :mod:`featx.store`; never imports :mod:`featx.extraction`
(and so never torch).  Importing the package loads only the registries
(:data:`FAMILIES`, :data:`NORMALIZERS`, :func:`all_params`, :func:`param_help`):
no numpy, h5py, scikit-learn nor xgboost, because the command line builds
its options from them on every start.  The other names load on first use.

A worked example is in :func:`run_classification`'s docstring.
"""

from typing import TYPE_CHECKING

from ._pipeline import NORMALIZERS, build_pipeline, fit_in_place
from ._registry import FAMILIES, all_params, param_help, parse_models

if TYPE_CHECKING:  # what _LAZY serves, for type checkers and readers
    from ._artifact import FittedClassifier, load_classifier, save_classifier
    from ._bayes import GaussianNaiveBayes
    from ._config import ClassifyConfig
    from ._evaluation import plan_evaluation
    from ._html import write_report
    from ._join import JoinedFeatures, join_features
    from ._linear import MinibatchLinearClassifier
    from ._report import format_results, predictions_frame, write_predictions
    from ._run import ClassifierResult, ClassifyRun
    from ._training import run_classification

__all__ = [
    # a run
    "ClassifyConfig",
    "run_classification",
    "ClassifyRun",
    "ClassifierResult",
    "format_results",
    "write_report",
    # the classifiers and their options
    "FAMILIES",
    "NORMALIZERS",
    "parse_models",
    "all_params",
    "param_help",
    # saved classifiers and their predictions
    "FittedClassifier",
    "load_classifier",
    "save_classifier",
    "predictions_frame",
    "write_predictions",
    # the pieces a run is made of
    "join_features",
    "JoinedFeatures",
    "plan_evaluation",
    "build_pipeline",
    "fit_in_place",
    "MinibatchLinearClassifier",
    "GaussianNaiveBayes",
]

# Name -> the module that owns it.  Served on first use: these modules import
# numpy and featx.store (h5py), which the command line's parser does not need.
_LAZY = {
    **dict.fromkeys(("FittedClassifier", "load_classifier", "save_classifier"), "._artifact"),
    "GaussianNaiveBayes": "._bayes",
    "ClassifyConfig": "._config",
    "plan_evaluation": "._evaluation",
    "write_report": "._html",
    **dict.fromkeys(("JoinedFeatures", "join_features"), "._join"),
    "MinibatchLinearClassifier": "._linear",
    **dict.fromkeys(("format_results", "predictions_frame", "write_predictions"), "._report"),
    **dict.fromkeys(("ClassifierResult", "ClassifyRun"), "._run"),
    "run_classification": "._training",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
