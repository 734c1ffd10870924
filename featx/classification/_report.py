"""What a run reports: metrics, prediction files, confusion-matrix plots and the printed table.

Metrics are scikit-learn's; plots are drawn on a bare matplotlib ``Figure``
with the Agg canvas, so no GUI backend is ever selected and the user's
pyplot state is left alone.  Tables are :func:`featx.formatting.format_table`'s.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..formatting import csv_text_cells, format_table, printable
from ._run import ClassifyRun

__all__ = ["classification_metrics", "predictions_frame", "write_predictions", "plot_confusion", "format_results"]

# The columns of a predictions file that hold ids and class names.
_TEXT_COLUMNS = ("id", "true", "predicted")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1 and per-class precision/recall/F1.

    Parameters
    ----------
    y_true, y_pred : ndarray of int, (n_samples,)
        Class indices into *classes*.
    classes : sequence of str

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (floats) and
        ``per_class``: ``{class: {precision, recall, f1, support}}``.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

    with warnings.catch_warnings():
        # A class the model never predicts has an undefined precision: reported as 0.
        warnings.simplefilter("ignore", UserWarning)
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(len(classes)), zero_division=0
        )
        result = {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        }
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    }
    return result


def predictions_frame(
    ids: Sequence[str],
    predicted: np.ndarray,
    classes: Sequence[str],
    *,
    true: np.ndarray | None = None,
    proba: np.ndarray | None = None,
    extra: Mapping[str, Sequence[Any]] | None = None,
):
    """A DataFrame ``id, [true,] predicted, [extra...,] [proba_<class>...]`` with class names.

    Parameters
    ----------
    ids : sequence of str, (n_samples,)
    predicted : ndarray of int, (n_samples,)
        Class indices.
    classes : sequence of str
    true : ndarray of int, optional
        Class indices; ``-1`` (unlabelled) is written as an empty cell.
    proba : ndarray of float, (n_samples, n_classes), optional
        Per-class probabilities, in *classes* order.
    extra : mapping of column -> values, optional
        More columns (``split``, ``fold``) placed before the probabilities.
    """
    import pandas as pd

    names = np.array([*classes, ""], dtype=object)
    frame = pd.DataFrame({"id": np.asarray(ids, dtype=object)})
    if true is not None:
        frame["true"] = names[np.asarray(true)]
    frame["predicted"] = names[np.asarray(predicted)]
    for column, values in (extra or {}).items():
        frame[column] = list(values)
    if proba is not None:
        # float64 so that the text written round-trips to the exact values computed.
        proba = np.asarray(proba, dtype=np.float64)
        for j, name in enumerate(classes):
            frame[f"proba_{name}"] = proba[:, j]
    return frame


def write_predictions(frame, path: str | os.PathLike | None = None) -> str | None:
    """Write a :func:`predictions_frame` as CSV, its ids and class names safe to open in a spreadsheet.

    A cell of ``id``, ``true`` or ``predicted`` that a spreadsheet would run as
    a formula (``=``, ``+``, ``-``, ``@``, ...) gets a ``'`` in front, as in
    ``export --format csv`` (:func:`featx.formatting.csv_text`; ids and class
    names come from file names anyone can choose); *frame* is left as it is.

    Parameters
    ----------
    frame : pandas.DataFrame
    path : path, optional
        The file to write; by default the CSV is returned as text.

    Returns
    -------
    str or None
        The CSV text when *path* is ``None``.
    """
    quoted = {}
    for column in _TEXT_COLUMNS:
        if column in frame.columns:
            cells = frame[column].tolist()
            escaped = csv_text_cells(cells)
            if escaped is not cells:
                quoted[column] = escaped
    return (frame.assign(**quoted) if quoted else frame).to_csv(path, index=False)


def plot_confusion(
    path: str | os.PathLike, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], title: str
) -> Path:
    """Save the confusion matrix (rows: true class, columns: predicted) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(classes)
    size = min(4 + 0.45 * n, 30)
    figure = Figure(figsize=(size, size * 0.85), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=np.arange(n),
        display_labels=list(classes),
        ax=ax,
        colorbar=n > 2,
        include_values=n <= 30,  # numbers in hundreds of cells are unreadable
        xticks_rotation="vertical" if n > 6 else "horizontal",
        cmap="Blues",
    )
    ax.set_title(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


# More classes than this make the per-class table wider than a terminal.
_MAX_CLASS_COLUMNS = 8


#: Points of a validation curve printed per line.
_CURVE_PER_LINE = 5


def _protocol_lines(name: str, summary: dict[str, Any]) -> list[str]:
    """The protocol's choice and its whole validation curve, a few points per line."""
    param = summary["param"]
    points = [f"{p[param]:<8.2g} {p['accuracy']:.3f}" for p in summary["curve"]]
    return [
        f"{name}: {summary['protocol']} protocol: {param} = {summary['chosen']:.3g} chosen on {summary['validation']} "
        f"(validation accuracy {summary['validation_accuracy']:.3f}; {summary['solver']}"
        + (", warm starts along the grid" if summary.get("warm_start") else "") + ")",
        f"validation curve ({param}, accuracy):",
        *("  " + "   ".join(points[i : i + _CURVE_PER_LINE]) for i in range(0, len(points), _CURVE_PER_LINE)),
    ]


def format_results(run: ClassifyRun) -> str:
    """The run as readable text: inputs, evaluation, one row per classifier, files.

    Parameters
    ----------
    run : ClassifyRun
        What :func:`~featx.classification.run_classification` returned.

    Returns
    -------
    str
        Lines without a final newline; the same whether the run came from
        Python or the command line (no option names).
    """
    # Class names and paths come from the stores: shown with terminal control characters escaped.
    classes = [printable(c) for c in run.classes]
    # Each input's compute precision, as its store records it (fp32 before featx recorded it).
    inputs = " + ".join(
        f"{printable(b.spec)} ({b.dim:,}, {b.layer_info.get('precision') or 'fp32'})" for b in run.inputs
    )
    lines = [
        f"features: {inputs} = {run.n_features:,} columns; normalisation per input: {run.config.normalize}"
        + (f", PCA to {run.config.pca}" if run.config.pca else ""),
        f"samples: {run.n_samples:,} joined on id, {run.n_labelled:,} labelled; "
        f"{len(run.classes)} classes: {', '.join(classes[:10])}{', ...' if len(run.classes) > 10 else ''}",
    ]
    if run.missing_ids:
        left_out = len({i for ids in run.missing_ids.values() for i in ids})
        lines.append(f"left out: {left_out:,} id(s) missing from an input (listed in missing-ids.csv)")
    lines += [f"evaluation: {run.evaluation.description}", ""]
    best = run.best
    rows = [
        (
            r.name + (f" ({r.method})" if r.method else "") + (" *" if r is best and len(run.results) > 1 else ""),
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
        lines.append(format_table(("classifier", *classes), per_class))
    else:
        lines += ["", "per-class precision and recall: see results.json"]
    for r in run.results:
        if r.protocol:
            lines += ["", *_protocol_lines(r.name, r.protocol)]
    if run.evaluation.mode == "cv":
        lines.append("")
        lines += [
            f"{r.name}: fold accuracies {', '.join(f'{a:.3f}' for a in r.fold_accuracies)}" for r in run.results
        ]
    if len(run.results) > 1:
        lines += ["", f"* best accuracy: {best.name}"]
    lines += [
        "",
        f"run folder: {run.out_dir} (results.json, report.html, predictions-<model>.csv, confusion-<model>.png, "
        "classifier-<model>.zip)",
    ]
    return "\n".join(lines)
