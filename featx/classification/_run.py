"""What a classification run did: :class:`ClassifyRun`, a :class:`ClassifierResult` per family, ``results.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .._version import __version__
from ._config import ClassifyConfig
from ._evaluation import Evaluation
from ._join import FeatureBlock
from ._streaming import FitPlan

__all__ = ["ClassifierResult", "ClassifyRun"]


@dataclass
class ClassifierResult:
    """Evaluation of one classifier family.

    Attributes
    ----------
    name : str
        Family name.
    accuracy, balanced_accuracy, macro_f1 : float
        On the evaluation rows (out-of-fold predictions with ``cv``).
    fit_seconds : float
        Time to fit once (mean over folds with ``cv``).
    predict_seconds : float
        Time to predict every evaluation row.
    n_train, n_test : int
        Training rows of a fit, and evaluation rows.
    artifact, predictions : Path
        The saved classifier and its ``predictions-<model>.csv``.
    confusion : Path or None
        The confusion-matrix PNG.
    per_class : dict
        ``{class: {precision, recall, f1, support}}``.
    params : dict
        Hyper-parameters used (the best ones with ``search``).
    searched : dict or None
        The grid explored by ``search`` and its best cross-validated accuracy.
    fold_accuracies : list of float
        Accuracy of each fold with ``cv``.
    has_proba : bool
        The predictions file holds per-class probabilities.
    warnings : list of str
        Convergence warnings raised while fitting.
    fit_input : str
        What the estimator learnt from: ``'matrix'`` (one float32 matrix of
        the training rows, normalised in place), ``'blocks'`` (``partial_fit``
        over blocks read from the stores), or xgboost's ``'QuantileDMatrix'`` /
        ``'ExtMemQuantileDMatrix'`` (built from blocks).
    solver : str
        The estimator that was fitted (the family's shape rules choose it):
        ``'MinibatchLinearClassifier'``, ``'SGDClassifier'``,
        ``'LogisticRegression'``, ``'XGBClassifier'``, ...
    device : str
        Where it was fitted: ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (see
        ``ClassifyConfig.device``).
    method : str
        The solver in words (``'liblinear'``, ``'minibatch squared hinge + L-BFGS'``,
        ``'lbfgs'``, ...), printed beside the family's name; ``''`` when the
        estimator's name says it.
    protocol : dict or None
        The linear-probe protocol's choice of ``C`` (``--protocol linear-probe``).
    """

    name: str
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    fit_seconds: float
    predict_seconds: float
    n_train: int
    n_test: int
    artifact: Path
    predictions: Path
    confusion: Path | None = None
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, Any] | None = None
    fold_accuracies: list[float] = field(default_factory=list)
    has_proba: bool = False
    warnings: list[str] = field(default_factory=list)
    fit_input: str = "matrix"
    solver: str = ""
    device: str = "cpu"
    method: str = ""
    protocol: dict[str, Any] | None = None


@dataclass
class ClassifyRun:
    """What a classification run did.

    Attributes
    ----------
    out_dir : Path
        The run folder.
    results : list of ClassifierResult
        In the order of ``config.models``.
    inputs : list of FeatureBlock
        Stores, layers and widths of the joined inputs.
    n_samples : int
        Samples every input has.
    n_labelled : int
        Of those, the labelled ones.
    n_features : int
        Columns of the joined matrix.
    classes : list of str
    evaluation : Evaluation
    missing_ids : dict of str -> list of str
        For each input, ids left out because it lacks them.
    config : ClassifyConfig
    results_json : Path
    fit : FitPlan
        In memory or streaming, and why.
    """

    out_dir: Path
    results: list[ClassifierResult]
    inputs: list[FeatureBlock]
    n_samples: int
    n_labelled: int
    n_features: int
    classes: list[str]
    evaluation: Evaluation
    missing_ids: dict[str, list[str]]
    config: ClassifyConfig
    results_json: Path
    fit: FitPlan | None = None

    @property
    def best(self) -> ClassifierResult:
        """The result with the highest accuracy (first one on ties)."""
        return max(self.results, key=lambda r: r.accuracy)

    def to_json(self) -> dict[str, Any]:
        """The content of ``results.json``: configuration, inputs, samples, evaluation, fit and every result."""
        config = self.config
        return {
            "featx_version": __version__,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
            "config": {
                "features": list(config.features),
                "models": list(config.models),
                "normalize": config.normalize,
                "pca": config.pca,
                "test_size": config.test_size,
                "cv": config.cv,
                "seed": config.seed,
                "search": config.search,
                "device": config.device,
                "protocol": config.protocol,
                "params": dict(config.params),
            },
            "inputs": [b.to_json() for b in self.inputs],
            "samples": {"joined": self.n_samples, "labelled": self.n_labelled, "features": self.n_features},
            "missing_ids": {spec: len(ids) for spec, ids in self.missing_ids.items()},
            "classes": self.classes,
            "evaluation": self.evaluation.to_json(),
            "fit": self.fit.to_json() if self.fit else None,
            "results": [
                {
                    "name": r.name,
                    "accuracy": r.accuracy,
                    "balanced_accuracy": r.balanced_accuracy,
                    "macro_f1": r.macro_f1,
                    "per_class": r.per_class,
                    "fit_seconds": r.fit_seconds,
                    "predict_seconds": r.predict_seconds,
                    "n_train": r.n_train,
                    "n_test": r.n_test,
                    "params": r.params,
                    "searched": r.searched,
                    "fold_accuracies": r.fold_accuracies,
                    "warnings": r.warnings,
                    "fit_input": r.fit_input,
                    "solver": r.solver,
                    "device": r.device,
                    "method": r.method,
                    "protocol": r.protocol,
                    "predictions": r.predictions.name,
                    "confusion": r.confusion.name if r.confusion else None,
                    "artifact": r.artifact.name,
                }
                for r in self.results
            ],
            "best": self.best.name,
        }
