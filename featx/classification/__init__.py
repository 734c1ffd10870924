"""Classification on cached features: the classifier registry, the join on sample id,
evaluation, training, saved classifiers and reports.

==================  ==================================================================
``_registry``       the classifier families and their declared parameters
                    (:data:`FAMILIES`, :func:`resolve_params`): what ``--model`` and the
                    parameter options are built from
``_config``         :class:`ClassifyConfig`: every value checked once, before any work
``_join``           ``STORE[:LAYER]`` inputs read and joined on sample id
``_evaluation``     which rows train and which evaluate (stored split, hold-out, k-fold)
``_pipeline``       per-block normalisation -> optional PCA -> estimator
``_streaming``      :func:`plan_fit` (in memory or streaming, from ``memory``) and the
                    block-by-block ``partial_fit`` of a matrix larger than the budget
``_linear``         :class:`MinibatchLinearClassifier`: the linear svm and streamed
                    logreg, minibatch Adam on BLAS products
``_bayes``          :class:`GaussianNaiveBayes`: GaussianNB predicted by matrix products
``_training``       :func:`run_classification`: fit, evaluate, write the run folder
``_artifact``       saved classifiers without pickle: :func:`save_classifier`, :func:`load_classifier`
``_report``         metrics, prediction files, confusion plots, :func:`format_results`
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
from ._registry import (
    FAMILIES,
    Family,
    Param,
    all_params,
    cuda_device_count,
    param_help,
    parse_models,
    resolve_params,
    using_device,
    xgboost_device,
)

if TYPE_CHECKING:  # what _LAZY serves, for type checkers and readers
    from ._artifact import (
        ARTIFACT_FORMAT,
        ARTIFACT_VERSION,
        TRUSTED_TYPES,
        FittedClassifier,
        load_classifier,
        save_classifier,
    )
    from ._bayes import GaussianNaiveBayes
    from ._config import ClassifyConfig, parse_device
    from ._evaluation import Evaluation, plan_evaluation
    from ._join import FeatureBlock, JoinedFeatures, join_features, parse_feature_spec
    from ._linear import MinibatchLinearClassifier
    from ._report import classification_metrics, format_results, predictions_frame
    from ._streaming import FitPlan, plan_fit
    from ._training import ClassifierResult, ClassifyRun, run_classification

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "FAMILIES",
    "NORMALIZERS",
    "TRUSTED_TYPES",
    "ClassifierResult",
    "ClassifyConfig",
    "ClassifyRun",
    "Evaluation",
    "Family",
    "FeatureBlock",
    "FitPlan",
    "FittedClassifier",
    "GaussianNaiveBayes",
    "JoinedFeatures",
    "MinibatchLinearClassifier",
    "Param",
    "all_params",
    "build_pipeline",
    "classification_metrics",
    "cuda_device_count",
    "fit_in_place",
    "format_results",
    "join_features",
    "load_classifier",
    "param_help",
    "parse_device",
    "parse_feature_spec",
    "parse_models",
    "plan_evaluation",
    "plan_fit",
    "predictions_frame",
    "resolve_params",
    "run_classification",
    "save_classifier",
    "using_device",
    "xgboost_device",
]

# Name -> the module that owns it.  Served on first use: these modules import
# numpy and featx.store (h5py), which the command line's parser does not need.
_LAZY = {
    **dict.fromkeys(
        ("ARTIFACT_FORMAT", "ARTIFACT_VERSION", "TRUSTED_TYPES", "FittedClassifier", "load_classifier",
         "save_classifier"),
        "._artifact",
    ),
    **dict.fromkeys(("ClassifyConfig", "parse_device"), "._config"),
    **dict.fromkeys(("Evaluation", "plan_evaluation"), "._evaluation"),
    **dict.fromkeys(("FeatureBlock", "JoinedFeatures", "join_features", "parse_feature_spec"), "._join"),
    **dict.fromkeys(("classification_metrics", "format_results", "predictions_frame"), "._report"),
    **dict.fromkeys(("FitPlan", "plan_fit"), "._streaming"),
    "GaussianNaiveBayes": "._bayes",
    "MinibatchLinearClassifier": "._linear",
    **dict.fromkeys(("ClassifierResult", "ClassifyRun", "run_classification"), "._training"),
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
