"""Training and evaluating classifiers on cached features: :func:`run_classification`.

It joins the feature inputs on sample id (:mod:`._join`), splits the labelled
samples (:mod:`._evaluation`: the stored train/val|test split, else a
stratified hold-out or k-fold cross-validation, seeded), fits each requested
classifier family in the pipeline of :mod:`._pipeline`, and writes a run folder::

    results.json               configuration, inputs, join report, metrics
    predictions-<model>.csv    id, true, predicted, per-class probabilities
    confusion-<model>.png      confusion matrix of the evaluation rows
    classifier-<model>.zip     the fitted pipeline + manifest (see :mod:`._artifact`)
    missing-ids.csv            ids left out because an input lacks them (if any)
    report.html                one self-contained page: table, confusion matrix, misclassified images

Every check that needs no data has been made by :class:`ClassifyConfig`; the
machine's part (memory budget, device) is resolved first and the run folder is
checked next, before any store is read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputPathError, message, option
from ..formatting import csv_text
from ._artifact import save_classifier
from ._boosting import fit_xgboost
from ._config import ClassifyConfig
from ._evaluation import Evaluation, check_components, plan_evaluation, search_folds
from ._html import Thumbnails, write_report
from ._join import JoinedFeatures, join_features
from ._json import json_default
from ._pipeline import build_pipeline, fit_in_place, transform_in_place
from ._protocol import choose, validation_rows
from ._registry import BOOSTING, FAMILIES, ONE_PASS, protocol, solver_words
from ._report import classification_metrics, plot_confusion, predictions_frame, write_predictions
from ._run import ClassifierResult, ClassifyRun
from ._run_folder import RunFolder
from ._streaming import FitPlan, plan_fit, stream_fit, stream_predict

__all__ = ["run_classification"]

log = logging.getLogger("featx")


# --------------------------------------------------------------------------- fitting


class _ViewTable:
    """The joined samples one row per view, image-major: what the fits learn from when the stores hold training views.

    Row ``i x views + v`` is view ``v`` of joined sample ``i`` (:meth:`JoinedFeatures.view_rows`), with its
    sample's label, split and id: the fits and their streaming, boosting and protocol code read labels and rows
    from it as from :class:`JoinedFeatures`, while the evaluation plans, predicts and reports per image.
    """

    def __init__(self, joined: JoinedFeatures) -> None:
        self.joined = joined
        self.views = joined.views
        self.labels = np.repeat(joined.labels, joined.views)
        self.splits = np.repeat(joined.splits, joined.views)
        self.classes = joined.classes
        self.blocks = joined.blocks
        self.n_features = joined.n_features

    def rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.joined.rows(rows, out)


class _Fitter:
    """Fits one family, with optional grid search, recording convergence warnings."""

    def __init__(self, name: str, params: dict[str, Any], config: ClassifyConfig, joined: JoinedFeatures,
                 plan: FitPlan, device: str) -> None:
        self.name = name
        self.family = FAMILIES[name]
        self.params = params
        self.images = joined  # per image; the fits read self.joined: per view with training views
        self.views = joined.views
        joined = _ViewTable(joined) if joined.views > 1 else joined
        chosen = protocol(config.protocol, config.models)
        # The protocol chooses this family's regularisation (the registry says which family it fits).
        self.protocol = chosen if chosen is not None and chosen.family == name else None
        self.protocol_summary: dict[str, Any] | None = None
        self.config = config
        self.joined = joined
        self.plan = plan
        self.device = device
        self.warnings: list[str] = []
        self.fit_input = "blocks" if plan.streaming else "matrix"  # see ClassifierResult.fit_input

    def make(self, n_rows: int, params: dict[str, Any] | None = None):
        """The unfitted pipeline: the family's estimator for *n_rows* training rows (any, for a grid search)."""
        shape = {} if self.config.search else {"rows": n_rows, "features": self.joined.n_features}
        estimator = self.family.build(self.params if params is None else params, self.config.seed,
                                      device=self.device, streaming=self.plan.streaming, **shape)
        return build_pipeline(self.joined.blocks, self.config.normalize, self.config.pca, estimator, self.config.seed)

    def predict(self, model: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted class indices of the samples *rows*, and their probabilities when the model has them.

        Read from the stores block by block on either path: the evaluation
        rows are never held as one more matrix.  With training views, each
        sample's prediction is the mean over its views of the predicted
        probabilities (of the decision function for a model without them).
        """
        has_proba = hasattr(model, "predict_proba")
        if self.views == 1:
            return stream_predict(model, self.joined, rows, self.plan.block_rows, has_proba)
        _, scores = stream_predict(model, self.joined, self.images.view_rows(rows), self.plan.block_rows, True,
                                   scores=not has_proba)
        if scores.ndim == 1:  # a binary decision function: the second class's score
            scores = np.stack([-scores, scores], axis=1)
        mean = scores.reshape(len(rows), self.views, -1).mean(axis=1)
        return np.argmax(mean, axis=1).astype(np.int64), mean if has_proba else None

    def _record(self, caught: list[warnings.WarningMessage]) -> None:
        """Keep (and log once) the convergence warnings of a fit; re-issue the others."""
        from sklearn.exceptions import ConvergenceWarning

        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                text = message(
                    f"{self.name} did not converge ({str(w.message).splitlines()[0]})",
                    hint=f"raise {option('max_iter')}",
                )
                if text not in self.warnings:
                    self.warnings.append(text)
                    log.warning(text)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def fit(self, rows: np.ndarray, evaluated: np.ndarray | None = None) -> tuple[Any, dict[str, Any] | None]:
        """Fit on *rows*; return the fitted pipeline and the search summary (or None).

        The training rows are read into one float32 matrix (the only copy)
        and normalised in place (:func:`fit_in_place`); a boosting family
        reads them block by block into its quantised matrix instead, and a
        streaming plan fits block by block (``Family.learns`` says how).
        Under a protocol (:mod:`._protocol`), its value is chosen first on a
        validation split (*evaluated*: the rows the fit will be evaluated
        on, which say whether the stores' val split can validate), then the
        model is refitted with it (:attr:`protocol_summary`).
        """
        if self.protocol is not None:
            fit_rows, val_rows, refit_rows, how = validation_rows(
                self.images, rows, np.zeros(0, np.int64) if evaluated is None else evaluated, self.config.seed
            )
            counts = {"validation_rows": int(val_rows.size), "refit_rows": int(refit_rows.size)}  # images
            # Validation and refit rows are carved per image: the views of an image stay together.
            fit_rows, val_rows, refit_rows = (self.images.view_rows(r) for r in (fit_rows, val_rows, refit_rows))
            log.info(f"{self.name}: {self.protocol.name} protocol, validated on {how}")
            summary = choose(self.protocol, self.params, self.joined, fit_rows, val_rows,
                             lambda params, n: self.make(n, dict(params)), self.plan.block_rows, self._record)
            self.protocol_summary = {**summary, "validation": how, **counts}
            return self._fit(refit_rows, {**self.params, self.protocol.param: summary["chosen"]})
        return self._fit(self.images.view_rows(rows), self.params)

    def _fit(self, rows: np.ndarray, params: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import GridSearchCV

        estimator = self.make(len(rows), params)
        if self.family.learns == BOOSTING and not self.config.search:
            model, matrix = fit_xgboost(
                estimator, self.joined, rows, block_rows=self.plan.block_rows, memory=self.plan.memory_budget,
                seed=self.config.seed,
            )
            self.fit_input = matrix
            return model, None
        if self.plan.streaming:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model = stream_fit(
                    self.name, self.family.learns, self.joined, rows, estimator, self.plan.block_rows,
                    self.config.seed,
                )
            self._record(caught)
            return model, None
        rows = np.sort(rows)
        X, y = self.joined.rows(rows), self.joined.labels[rows]
        if self.config.search:
            grid = {f"clf__{k}": v for k, v in self.family.grid(params).items()}
            folds = search_folds(y, self.joined.classes, self.config.seed)
            if self.views > 1:  # inner folds of whole images: no image's view validates another of its views
                from sklearn.model_selection import StratifiedGroupKFold

                folds = StratifiedGroupKFold(folds.n_splits, shuffle=True, random_state=self.config.seed)
            estimator = GridSearchCV(estimator, grid, scoring="accuracy", cv=folds, error_score="raise")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if self.config.search:  # each inner fold fits its own normaliser: the matrix stays as read
                estimator.fit(X, y, **({"groups": rows // self.views} if self.views > 1 else {}))
            elif self.family.learns == ONE_PASS:  # by blocks, as exact as fit and without its copies of X
                features, step = transform_in_place(estimator, X, self.plan.block_rows), self.plan.block_rows
                blocks = ((features[i : i + step], y[i : i + step]) for i in range(0, len(y), step))
                estimator.named_steps["clf"].fit_blocks(blocks, np.arange(len(self.joined.classes)))
            else:
                fit_in_place(estimator, X, y, self.plan.block_rows)
        del X
        self._record(caught)
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


def _manifest(
    name: str,
    params: dict[str, Any],
    searched: dict[str, Any] | None,
    metrics: dict[str, Any],
    joined: JoinedFeatures,
    config: ClassifyConfig,
    evaluation: Evaluation,
) -> dict[str, Any]:
    """What a saved classifier records besides the pipeline (see :mod:`._artifact`)."""
    return {
        "classifier": {"family": name, "params": params, "searched": searched},
        "classes": list(joined.classes),
        "inputs": [b.to_json() for b in joined.blocks],
        "n_features": int(joined.n_features),
        "views": int(joined.views),  # training views: the features of an image are views x n_features columns
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
    plan: FitPlan,
    device: str,
) -> ClassifierResult:
    """Fit and evaluate one family on every fold; write its predictions, plot and artifact."""
    fitter = _Fitter(name, params, config, joined, plan, device)
    rows, predicted, proba_parts, folds = [], [], [], []
    fit_times, predict_time = [], 0.0
    model = searched = None
    for k, (train, test) in enumerate(evaluation.folds):
        started = time.perf_counter()
        model, searched = fitter.fit(train, test)
        fit_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        labels, proba_part = fitter.predict(model, test)
        predicted.append(labels)
        predict_time += time.perf_counter() - started
        if proba_part is not None:
            proba_parts.append(proba_part)
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
    write_predictions(frame, predictions)
    confusion = None
    if config.plots:
        title = f"{name}: accuracy {metrics['accuracy']:.3f} on {len(y_true):,} samples"
        confusion = plot_confusion(out / f"confusion-{name}.png", y_true, y_pred, joined.classes, title)
    used = dict(params, **(searched["best_params"] if searched else {}))
    if fitter.protocol_summary is not None:  # the value the protocol chose (the saved model's, with cv)
        used[fitter.protocol_summary["param"]] = fitter.protocol_summary["chosen"]
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
        fit_input=fitter.fit_input,
        solver=type(model.named_steps["clf"]).__name__,
        method=solver_words(model.named_steps["clf"]),
        protocol=fitter.protocol_summary,
        device=_fitted_device(model.named_steps["clf"]),
    )


def _fitted_device(estimator: Any) -> str:
    """Where *estimator* was fitted: its ``device`` parameter (the minibatch models', xgboost's), else the CPU."""
    return str(estimator.get_params().get("device") or "cpu")


def _write_missing(out: Path, missing: Mapping[str, list[str]]) -> Path | None:
    if not missing:
        return None
    import pandas as pd

    frame = pd.DataFrame(  # quoted like every CSV of featx: the ids come from file names
        [(csv_text(image_id), csv_text(spec)) for spec, ids in missing.items() for image_id in ids],
        columns=["id", "missing_from"],
    )
    path = out / "missing-ids.csv"
    frame.to_csv(path, index=False)
    return path


# scikit-learn's MLPClassifier catches KeyboardInterrupt, warns this and returns a half-trained model.
_SWALLOWED_INTERRUPT = "Training interrupted by user"


@contextlib.contextmanager
def _interrupts_not_swallowed() -> Iterator[None]:
    """Ctrl-C during a fit ends the run (exit 130), even where an estimator would catch it and go on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=_SWALLOWED_INTERRUPT, category=UserWarning)
        try:
            yield
        except UserWarning as exc:
            if str(exc).startswith(_SWALLOWED_INTERRUPT):
                # The warning is raised inside scikit-learn's `except KeyboardInterrupt`: that one goes on
                # (the command line's SIGTERM is a KeyboardInterrupt of its own kind, exit 143).
                caught = exc.__context__
                raise (caught if isinstance(caught, KeyboardInterrupt) else KeyboardInterrupt()) from None
            raise


def run_classification(config: ClassifyConfig, *, thumbnails: Thumbnails | None = None) -> ClassifyRun:
    """Train and evaluate the configured classifiers; write the run folder.

    Parameters
    ----------
    config : ClassifyConfig
    thumbnails : callable, optional
        ``ids -> {id: encoded image bytes}``: the misclassified images of
        ``report.html`` (this side never reads images; the workflows pass one).
        Not called when ``config.plots`` is false.

    Returns
    -------
    ClassifyRun
        Metrics of every classifier and where its files are.

    Raises
    ------
    DeviceError
        The device is not on this machine (:meth:`ClassifyConfig.resolve`);
        raised before any store is read.
    OutputPathError
        The run folder (``out``, else ``runs_dir``) cannot be written; raised
        before any store is read.
    StoreError
        A store is missing, unreadable, incomplete or lacks the layer.
    ClassifyError
        Inputs that cannot be joined, unusable labels, a split or PCA the data
        do not allow.

    Examples
    --------
    >>> from featx.classification import ClassifyConfig, format_results, run_classification
    >>> config = ClassifyConfig(features=("features/digits/resnet18.h5",), models="svm,logreg")
    >>> run = run_classification(config)  # doctest: +SKIP
    >>> print(format_results(run))  # doctest: +SKIP
    >>> run.best.name, run.best.accuracy  # doctest: +SKIP
    """
    resources = config.resolve()
    stores = [path for spec in config.features for path in (spec, spec.rsplit(":", 1)[0])]
    folder = RunFolder(config, inputs=stores)  # checked (new, empty, or overwrite); nothing made yet
    joined = join_features(config.features, load=False)
    evaluation = plan_evaluation(joined, cv=config.cv, test_size=config.test_size, seed=config.seed)
    model_params = config.model_params
    plan = plan_fit(
        len(joined.ids) * joined.views, joined.n_features, resources.memory, models=config.models, params=model_params,
        search=config.search, pca=config.pca, protocol=config.protocol,
    )
    if plan.streaming:
        log.info(f"streaming fit in blocks of {plan.block_rows:,} rows: {plan.reason}")
    # One pass over every store for NaN/inf; the fits then read only the rows they use.
    joined.check()
    if joined.missing:
        for spec, ids in joined.missing.items():
            log.warning(f"{len(ids):,} sample id(s) are missing from {spec} and left out (e.g. {ids[0]})")
    check_components(config.pca, joined, evaluation, search=config.search)
    out = folder.create()  # .<name>.tmp-<pid>: renamed when the run is complete, removed if it is not
    try:
        with _interrupts_not_swallowed():
            run = _fit_and_write(config, joined, evaluation, model_params, plan, resources.device, out, thumbnails)
        return folder.commit(run)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a full disk, a bug: no partial run folder
        folder.discard()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            where = config.out if config.out is not None else config.runs_dir
            raise OutputPathError(
                message(
                    f"no space left on the disk of the run folder ({os.strerror(exc.errno)}): nothing was written",
                    got=Path(where), hint="free some space, then run the command again",
                )
            ) from None
        raise


def _fit_and_write(config: ClassifyConfig, joined: JoinedFeatures, evaluation: Evaluation,
                   model_params: dict[str, dict[str, Any]], plan: FitPlan, device: str, out: Path,
                   thumbnails: Thumbnails | None) -> ClassifyRun:
    """Fit every family and write the run's files into *out* (the temporary folder)."""
    if joined.views > 1:
        log.info(f"training views: {joined.views} per image; the fits learn from every view of the training images, "
                 "each evaluation image is predicted by the mean over its views")
    log.info(
        f"{len(joined.ids):,} samples x {joined.n_features:,} features from "
        f"{' + '.join(f'{b.spec} ({b.dim:,})' for b in joined.blocks)}; {evaluation.description}"
    )
    results = []
    for name in config.models:
        log.info(f"fitting {name} ...")
        results.append(_evaluate(name, model_params[name], joined, evaluation, config, out, plan, device))
    _write_missing(out, joined.missing)
    run = ClassifyRun(
        out_dir=out,
        results=results,
        inputs=joined.blocks,
        n_samples=len(joined.ids),
        n_labelled=int(np.count_nonzero(joined.labels >= 0)),
        n_features=int(joined.n_features),
        classes=list(joined.classes),
        evaluation=evaluation,
        missing_ids=joined.missing,
        config=config,
        results_json=out / "results.json",
        fit=plan,
    )
    run.results_json.write_text(json.dumps(run.to_json(), indent=2, default=json_default) + "\n")
    if config.plots:
        write_report(out / "report.html", best=run, thumbnails=thumbnails)
    else:  # no pictures: no confusion PNG, and no image read for the report's thumbnails
        write_report(out / "report.html", best=run, no_thumbnails=option("plots", False, flag="no_plots"))
    return run
