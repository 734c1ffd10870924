"""Classification on cached features: the classifier registry, the join on sample id,
evaluation, training, saved classifiers and reports.

Reads stores through :mod:`featx.store`; never imports :mod:`featx.extraction`
(and so never torch).
"""

from ._artifact import ARTIFACT_FORMAT, ARTIFACT_VERSION, TRUSTED_TYPES, FittedClassifier, load_classifier, save_classifier
from ._evaluation import Evaluation, plan_evaluation
from ._join import FeatureBlock, JoinedFeatures, join_features, parse_feature_spec
from ._registry import FAMILIES, Family, Param, all_params, param_help, parse_models, resolve_params
from ._report import predictions_frame
from ._training import NORMALIZERS, ClassifierResult, ClassifyConfig, ClassifyRun, build_pipeline, format_results, run_classification

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "TRUSTED_TYPES",
    "FittedClassifier",
    "load_classifier",
    "save_classifier",
    "Evaluation",
    "plan_evaluation",
    "FeatureBlock",
    "JoinedFeatures",
    "join_features",
    "parse_feature_spec",
    "FAMILIES",
    "Family",
    "Param",
    "all_params",
    "param_help",
    "parse_models",
    "resolve_params",
    "predictions_frame",
    "NORMALIZERS",
    "ClassifierResult",
    "ClassifyConfig",
    "ClassifyRun",
    "build_pipeline",
    "format_results",
    "run_classification",
]
