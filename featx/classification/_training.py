"""Training and evaluating classifiers on cached features.

:func:`run_classification` joins the feature inputs on sample id, splits the
labelled samples (the stored train/val|test split, else a stratified hold-out
or k-fold cross-validation, seeded), fits each requested classifier family in
a scikit-learn pipeline, and writes a run folder::

    results.json               configuration, inputs, join report, metrics
    predictions-<model>.csv    id, true, predicted, per-class probabilities
    confusion-<model>.png      confusion matrix of the evaluation rows
    classifier-<model>.zip     the fitted pipeline + manifest (see featx.artifact)
    missing-ids.csv            ids left out because an input lacks them (if any)

The pipeline is ``ColumnTransformer`` (one normaliser per input block, so one
wide network does not drown another) -> optional ``PCA`` -> estimator.  Every
statistic is therefore fitted on training rows only, and the saved artifact
reproduces the whole transformation on new images.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ._artifact import save_classifier
from ._registry import FAMILIES, parse_models, resolve_params
from ..errors import ClassifyError
from ._evaluation import Evaluation, plan_evaluation, smallest_class
from ._join import FeatureBlock, JoinedFeatures, join_features
from ..formatting import format_table
from ._report import classification_metrics, json_default, plot_confusion, predictions_frame

__all__ = [
    "NORMALIZERS",
    "ClassifyConfig",
    "ClassifierResult",
    "ClassifyRun",
    "run_classification",
    "format_results",
    "build_pipeline",
]

log = logging.getLogger("featx")

NORMALIZERS = ("standard", "l2", "none")
_SEARCH_FOLDS = 5


@dataclass(frozen=True)
class ClassifyConfig:
    """Everything a classification run depends on.  See ``run_pipeline.py classify --help``.

    Parameters
    ----------
    features : tuple of str
        ``STORE[:LAYER]`` specs, joined on sample id.
    models : tuple of str
        Classifier families (:data:`featx.classifiers.FAMILIES`); a
        comma-separated string is accepted.
    normalize : {'standard', 'l2', 'none'}
        Normalisation of each input block, fitted on training rows.
    pca : int, optional
        Number of principal components kept after normalisation.
    test_size : float
        Fraction held out when the stores have no train/val|test split.
    cv : int, optional
        k-fold cross-validation over all labelled samples instead.
    seed : int
        Seed of the splits and of every estimator.
    search : bool
        Cross-validated grid search over each family's main parameters.
    out : path, optional
        Run folder; by default a new ``runs_dir/<timestamp>/``.
    params : mapping
        Hyper-parameters, e.g. ``{"C": 1.0, "kernel": "linear"}``: each applies
        to the chosen families that declare it.
    runs_dir : path
        Parent of the default run folders.
    plots : bool
        Write the confusion-matrix PNGs.
    """

    features: tuple[str, ...]
    models: tuple[str, ...] = ("svm",)
    normalize: str = "standard"
    pca: int | None = None
    test_size: float = 0.25
    cv: int | None = None
    seed: int = 0
    search: bool = False
    out: Path | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    runs_dir: Path = Path("runs")
    plots: bool = True

    def __post_init__(self) -> None:
        features = (self.features,) if isinstance(self.features, (str, Path)) else tuple(self.features)
        object.__setattr__(self, "features", tuple(str(f) for f in features))
        object.__setattr__(self, "models", parse_models(self.models))
        object.__setattr__(self, "params", dict(self.params))
        if not self.features:
            raise ClassifyError("no features given: pass --features STORE[:LAYER] (repeat it to join several stores)")
        if self.normalize not in NORMALIZERS:
            raise ClassifyError(f"unknown normalisation '{self.normalize}': choose one of {', '.join(NORMALIZERS)}")
        if self.pca is not None and (isinstance(self.pca, bool) or not isinstance(self.pca, int) or self.pca < 1):
            raise ClassifyError(f"--pca must be a positive number of components, got {self.pca!r}")
        if not 0 < self.test_size < 1:
            raise ClassifyError(f"--test-size must be a fraction between 0 and 1 (exclusive), got {self.test_size}")
        if self.cv is not None and (isinstance(self.cv, bool) or not isinstance(self.cv, int) or self.cv < 2):
            raise ClassifyError(f"--cv must be an integer of at least 2 folds, got {self.cv!r}")
        resolve_params(self.models, self.params)  # fail on a bad parameter before any work


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

    @property
    def best(self) -> ClassifierResult:
        """The result with the highest accuracy (first one on ties)."""
        return max(self.results, key=lambda r: r.accuracy)


# --------------------------------------------------------------------------- pipelines


def build_pipeline(
    blocks: Sequence[FeatureBlock], normalize: str, pca: int | None, estimator: Any, seed: int = 0
):
    """Per-block normalisation -> optional PCA -> *estimator*, as one sklearn ``Pipeline``.

    Parameters
    ----------
    blocks : sequence of FeatureBlock
        Column ranges of the inputs in the joined matrix.
    normalize : {'standard', 'l2', 'none'}
    pca : int, optional
    estimator : sklearn estimator
    seed : int
        ``random_state`` of the PCA solver.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    def normaliser():
        return {"standard": StandardScaler(), "l2": Normalizer(norm="l2"), "none": "passthrough"}[normalize]

    steps: list[tuple[str, Any]] = [
        ("blocks", ColumnTransformer([(f"block{i}", normaliser(), b.columns) for i, b in enumerate(blocks)]))
    ]
    if pca is not None:
        steps.append(("pca", PCA(n_components=pca, random_state=seed)))
    steps.append(("clf", estimator))
    return Pipeline(steps)


def _inner_folds(y: np.ndarray, classes: Sequence[str], seed: int):
    from sklearn.model_selection import StratifiedKFold

    name, smallest = smallest_class(y, classes)
    if smallest < 2:
        raise ClassifyError(
            f"--search cross-validates on the training rows and needs at least 2 of every class there, "
            f"but class '{name}' has {smallest}; add images of it, or leave out --search"
        )
    return StratifiedKFold(n_splits=min(_SEARCH_FOLDS, smallest), shuffle=True, random_state=seed)


def _check_pca(config: ClassifyConfig, evaluation: Evaluation, joined: JoinedFeatures) -> None:
    if config.pca is None:
        return
    rows = min(len(train) for train, _ in evaluation.folds)
    if config.search:
        _, smallest = smallest_class(joined.labels[evaluation.final_train], joined.classes)
        k = min(_SEARCH_FOLDS, max(smallest, 2))
        rows = rows - math.ceil(rows / k)
    limit = min(rows, joined.X.shape[1])
    if config.pca > limit:
        raise ClassifyError(
            f"--pca {config.pca} is more components than the data allow: at most min(training rows of a fit "
            f"= {rows}, features = {joined.X.shape[1]}) = {limit}; choose --pca {limit} or fewer"
        )


class _Fitter:
    """Fits one family, with optional grid search, recording convergence warnings."""

    def __init__(self, name: str, params: dict[str, Any], config: ClassifyConfig, joined: JoinedFeatures) -> None:
        self.name = name
        self.params = params
        self.config = config
        self.joined = joined
        self.warnings: list[str] = []

    def make(self):
        fam = FAMILIES[self.name]
        estimator = fam.build(self.params, self.config.seed)
        return build_pipeline(self.joined.blocks, self.config.normalize, self.config.pca, estimator, self.config.seed)

    def fit(self, rows: np.ndarray) -> tuple[Any, dict[str, Any] | None]:
        """Fit on *rows*; return the fitted pipeline and the search summary (or None)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import GridSearchCV

        X, y = self.joined.X[rows], self.joined.labels[rows]
        estimator = self.make()
        if self.config.search:
            grid = {f"clf__{k}": v for k, v in FAMILIES[self.name].grid(self.params).items()}
            folds = _inner_folds(y, self.joined.classes, self.config.seed)
            estimator = GridSearchCV(estimator, grid, scoring="accuracy", cv=folds, error_score="raise")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            estimator.fit(X, y)
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                message = f"{self.name} did not converge ({str(w.message).splitlines()[0]}); raise --max-iter"
                if message not in self.warnings:
                    self.warnings.append(message)
                    log.warning(message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if not self.config.search:
            return estimator, None
        best = {k.removeprefix("clf__"): v for k, v in estimator.best_params_.items()}
        summary = {
            "grid": {k.removeprefix("clf__"): v for k, v in grid.items()},
            "best_params": best,
            "best_cv_accuracy": float(estimator.best_score_),
        }
        return estimator.best_estimator_, summary


# --------------------------------------------------------------------------- the run


def _run_folder(config: ClassifyConfig) -> Path:
    if config.out is not None:
        out = Path(config.out)
        if out.exists() and not out.is_dir():
            raise ClassifyError(f"--out must be a folder, got the file '{out}'; choose another path")
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        out = Path(config.runs_dir) / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir(parents=True)
            return out
        except FileExistsError:
            continue
    raise ClassifyError(f"cannot create a new run folder in '{config.runs_dir}'; pass --out DIR")


def _manifest(
    name: str,
    params: dict[str, Any],
    searched: dict[str, Any] | None,
    metrics: dict[str, Any],
    joined: JoinedFeatures,
    config: ClassifyConfig,
    evaluation: Evaluation,
) -> dict[str, Any]:
    """What a saved classifier records besides the pipeline (see featx.artifact)."""
    return {
        "classifier": {"family": name, "params": params, "searched": searched},
        "classes": list(joined.classes),
        "inputs": [b.to_json() for b in joined.blocks],
        "n_features": int(joined.X.shape[1]),
        "normalize": config.normalize,
        "pca": config.pca,
        "seed": config.seed,
        "trained_on": {"rows": int(len(evaluation.final_train)), "evaluation": evaluation.description},
        "metrics": {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
    }


def _evaluate(
    name: str,
    params: dict[str, Any],
    joined: JoinedFeatures,
    evaluation: Evaluation,
    config: ClassifyConfig,
    out: Path,
) -> ClassifierResult:
    """Fit and evaluate one family on every fold; write its predictions, plot and artifact."""
    fitter = _Fitter(name, params, config, joined)
    rows, predicted, proba_parts, folds = [], [], [], []
    fit_times, predict_time = [], 0.0
    model = searched = None
    for k, (train, test) in enumerate(evaluation.folds):
        started = time.perf_counter()
        model, searched = fitter.fit(train)
        fit_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        predicted.append(np.asarray(model.predict(joined.X[test]), dtype=np.int64))
        predict_time += time.perf_counter() - started
        if hasattr(model, "predict_proba"):
            proba_parts.append(model.predict_proba(joined.X[test]))
        rows.append(test)
        folds.append(np.full(len(test), k))
    if evaluation.mode == "cv":
        log.info(f"{name}: fitting the saved classifier on all {len(evaluation.final_train):,} labelled samples")
        model, searched = fitter.fit(evaluation.final_train)

    order = np.argsort(np.concatenate(rows), kind="stable")  # back to sample (id) order
    rows_all = np.concatenate(rows)[order]
    y_pred = np.concatenate(predicted)[order]
    proba = np.concatenate(proba_parts)[order] if len(proba_parts) == len(rows) else None
    y_true = joined.labels[rows_all]
    metrics = classification_metrics(y_true, y_pred, joined.classes)
    fold_accuracies = [float(np.mean(p == joined.labels[t])) for p, t in zip(predicted, rows)]

    extra = {"split": joined.splits[rows_all]}
    if evaluation.mode == "cv":
        extra = {"fold": np.concatenate(folds)[order]}
    frame = predictions_frame(joined.ids[rows_all], y_pred, joined.classes, true=y_true, proba=proba, extra=extra)
    predictions = out / f"predictions-{name}.csv"
    frame.to_csv(predictions, index=False)
    confusion = None
    if config.plots:
        title = f"{name}: accuracy {metrics['accuracy']:.3f} on {len(y_true):,} samples"
        confusion = plot_confusion(out / f"confusion-{name}.png", y_true, y_pred, joined.classes, title)
    used = dict(params, **(searched["best_params"] if searched else {}))
    artifact = save_classifier(
        out / f"classifier-{name}.zip", model, _manifest(name, used, searched, metrics, joined, config, evaluation)
    )
    return ClassifierResult(
        name=name,
        accuracy=metrics["accuracy"],
        balanced_accuracy=metrics["balanced_accuracy"],
        macro_f1=metrics["macro_f1"],
        fit_seconds=float(np.mean(fit_times)),
        predict_seconds=predict_time,
        n_train=int(round(np.mean([len(t) for t, _ in evaluation.folds]))),
        n_test=int(len(y_true)),
        artifact=artifact,
        predictions=predictions,
        confusion=confusion,
        per_class=metrics["per_class"],
        params=used,
        searched=searched,
        fold_accuracies=fold_accuracies if evaluation.mode == "cv" else [],
        has_proba=proba is not None,
        warnings=fitter.warnings,
    )


def _write_missing(out: Path, missing: Mapping[str, list[str]]) -> Path | None:
    if not missing:
        return None
    import pandas as pd

    frame = pd.DataFrame(
        [(image_id, spec) for spec, ids in missing.items() for image_id in ids], columns=["id", "missing_from"]
    )
    path = out / "missing-ids.csv"
    frame.to_csv(path, index=False)
    return path


def _results_json(run: ClassifyRun) -> dict[str, Any]:
    config = run.config
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
            "params": dict(config.params),
        },
        "inputs": [b.to_json() for b in run.inputs],
        "samples": {"joined": run.n_samples, "labelled": run.n_labelled, "features": run.n_features},
        "missing_ids": {spec: len(ids) for spec, ids in run.missing_ids.items()},
        "classes": run.classes,
        "evaluation": run.evaluation.to_json(),
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
                "predictions": r.predictions.name,
                "confusion": r.confusion.name if r.confusion else None,
                "artifact": r.artifact.name,
            }
            for r in run.results
        ],
        "best": run.best.name,
    }


def run_classification(config: ClassifyConfig) -> ClassifyRun:
    """Train and evaluate the configured classifiers; write the run folder.

    Parameters
    ----------
    config : ClassifyConfig

    Returns
    -------
    ClassifyRun
        Metrics of every classifier and where its files are.

    Raises
    ------
    FeatxError
        Unreadable or incompatible inputs, unusable labels, bad parameters.
    """
    params = resolve_params(config.models, config.params)
    joined = join_features(config.features)
    if joined.missing:
        for spec, ids in joined.missing.items():
            log.warning(f"{len(ids):,} sample id(s) are missing from {spec} and left out (e.g. {ids[0]})")
    evaluation = plan_evaluation(joined, cv=config.cv, test_size=config.test_size, seed=config.seed)
    _check_pca(config, evaluation, joined)
    out = _run_folder(config)
    log.info(
        f"{len(joined.ids):,} samples x {joined.X.shape[1]:,} features from "
        f"{' + '.join(f'{b.spec} ({b.dim:,})' for b in joined.blocks)}; {evaluation.description}"
    )
    results = []
    for name in config.models:
        log.info(f"fitting {name} ...")
        results.append(_evaluate(name, params[name], joined, evaluation, config, out))
    _write_missing(out, joined.missing)
    run = ClassifyRun(
        out_dir=out,
        results=results,
        inputs=joined.blocks,
        n_samples=len(joined.ids),
        n_labelled=int(np.count_nonzero(joined.labels >= 0)),
        n_features=int(joined.X.shape[1]),
        classes=list(joined.classes),
        evaluation=evaluation,
        missing_ids=joined.missing,
        config=config,
        results_json=out / "results.json",
    )
    run.results_json.write_text(json.dumps(_results_json(run), indent=2, default=json_default) + "\n")
    return run


# --------------------------------------------------------------------------- the table

_MAX_CLASS_COLUMNS = 8


def format_results(run: ClassifyRun) -> str:
    """The run as readable text: inputs, evaluation, one row per classifier, files."""
    inputs = " + ".join(f"{b.spec} ({b.dim:,})" for b in run.inputs)
    lines = [
        f"features: {inputs} = {run.n_features:,} columns; --normalize {run.config.normalize} per input"
        + (f", PCA to {run.config.pca}" if run.config.pca else ""),
        f"samples: {run.n_samples:,} joined on id, {run.n_labelled:,} labelled; "
        f"{len(run.classes)} classes: {', '.join(run.classes[:10])}{', ...' if len(run.classes) > 10 else ''}",
    ]
    if run.missing_ids:
        left_out = len({i for ids in run.missing_ids.values() for i in ids})
        lines.append(f"left out: {left_out:,} id(s) missing from an input (listed in missing-ids.csv)")
    lines += [f"evaluation: {run.evaluation.description}", ""]
    best = run.best
    rows = [
        (
            r.name + (" *" if r is best and len(run.results) > 1 else ""),
            f"{r.accuracy:.3f}",
            f"{r.balanced_accuracy:.3f}",
            f"{r.macro_f1:.3f}",
            f"{r.fit_seconds:.2f}",
            f"{r.predict_seconds:.3f}",
        )
        for r in run.results
    ]
    lines.append(format_table(("classifier", "accuracy", "balanced acc", "macro F1", "fit s", "predict s"), rows))
    if len(run.classes) <= _MAX_CLASS_COLUMNS:
        lines += ["", "precision / recall per class:"]
        per_class = [
            (r.name, *(f"{r.per_class[c]['precision']:.2f} / {r.per_class[c]['recall']:.2f}" for c in run.classes))
            for r in run.results
        ]
        lines.append(format_table(("classifier", *run.classes), per_class))
    else:
        lines += ["", "per-class precision and recall: see results.json"]
    if run.evaluation.mode == "cv":
        lines.append("")
        lines += [
            f"{r.name}: fold accuracies {', '.join(f'{a:.3f}' for a in r.fold_accuracies)}" for r in run.results
        ]
    if len(run.results) > 1:
        lines += ["", f"* best accuracy: {best.name}"]
    lines += [
        "",
        f"run folder: {run.out_dir} (results.json, predictions-<model>.csv, confusion-<model>.png, "
        "classifier-<model>.zip)",
    ]
    return "\n".join(lines)
