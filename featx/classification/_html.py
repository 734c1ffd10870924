"""One self-contained HTML report of a run: :func:`write_report`.

The page opens offline and alone: plots and thumbnails are embedded as
``data:`` URIs, the style sheet is inline, and nothing is loaded from
anywhere else (no script, font or link).  It shows a results table (the best
row marked), the figures the caller passes (PNG bytes), the confusion matrix
and per-class precision/recall of the best configuration, and a grid of the
evaluation images it got wrong with their true and predicted classes.

No image is decoded here (this side never reads the images a store was made
from): thumbnails come from a callback of the caller, ``ids -> {id: encoded
bytes}`` (JPEG, PNG, GIF or WebP); without one the grid lists the ids.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..formatting import csv_value
from ._run import ClassifierResult, ClassifyRun

__all__ = ["Thumbnails", "write_report", "render_report", "MAX_MISCLASSIFIED"]

#: ``ids -> {id: encoded image bytes}``; ids it cannot show are left out of the mapping.
Thumbnails = Callable[[Sequence[str]], Mapping[str, bytes]]

#: Misclassified images shown at most (the first ones in id order): the page stays small.
MAX_MISCLASSIFIED = 60

# Why the grid of misclassified images has no pictures when no thumbnail callback was given.
NOT_AT_HAND = "the images were not at hand"

_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"))

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
p.note{margin:2px 0;color:#444;font-size:13px}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border:1px solid #ddd;text-align:right}
th{background:#f3f3f3}td.text,th.text{text-align:left}tr.best td{background:#fff4c2;font-weight:600}
table.confusion td{min-width:28px;text-align:center}
img.plot{max-width:100%;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.cell{width:112px;font-size:11px;text-align:center;border:1px solid #eee;padding:4px}
.cell img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#fafafa}
.cell .id{color:#777;overflow-wrap:anywhere}.wrong{color:#b00020}
"""


def _mime(data: bytes) -> str | None:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_uri(data: bytes, mime: str | None = None) -> str | None:
    """``data:<mime>;base64,...`` of encoded image bytes, or None for bytes of no known image format."""
    mime = mime or _mime(data)
    return None if mime is None else f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], *, marked: int | None = None) -> str:
    # Names are left-aligned (the first column always), numbers right-aligned.
    text = {0} | {j for j, h in enumerate(header) if h in _TEXT_HEADERS}

    def cell(tag: str, j: int, value: object) -> str:
        cls = ' class="text"' if j in text else ""
        return f"<{tag}{cls}>{_e(value)}</{tag}>"

    head = "".join(cell("th", j, h) for j, h in enumerate(header))
    best = ' class="best"'
    body = "".join(
        f"<tr{best if i == marked else ''}>" + "".join(cell("td", j, v) for j, v in enumerate(row)) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _confusion(true: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> str:
    """The confusion matrix as a table, each cell shaded by its share of the true class."""
    n = len(classes)
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    head = '<th class="text">true \\ predicted</th>' + "".join(f"<th>{_e(c)}</th>" for c in classes)
    rows = []
    for i, name in enumerate(classes):
        cells = []
        for j in range(n):
            alpha = 0.08 + 0.8 * share[i, j] if counts[i, j] else 0.0
            colour = "37,99,235" if i == j else "220,38,38"
            cells.append(f'<td style="background:rgba({colour},{alpha:.2f})">{counts[i, j]}</td>')
        rows.append(f'<tr><th class="text">{_e(name)}</th>{"".join(cells)}</tr>')
    return f'<table class="confusion"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _read_predictions(result: ClassifierResult, classes: Sequence[str]):
    """(ids, true, predicted) of the evaluation rows, as class indices, from the predictions file."""
    import pandas as pd

    frame = pd.read_csv(result.predictions, dtype={"id": str, "true": str, "predicted": str}, keep_default_na=False)
    index = {name: k for k, name in enumerate(classes)}
    # The file's ids and class names are quoted against spreadsheet formulas (write_predictions): unquoted here.
    true = np.array([index[csv_value(c)] for c in frame["true"]], dtype=np.int64)
    predicted = np.array([index[csv_value(c)] for c in frame["predicted"]], dtype=np.int64)
    return np.array([csv_value(i) for i in frame["id"]], dtype=object), true, predicted


def _misclassified(ids: np.ndarray, true: np.ndarray, predicted: np.ndarray, classes: Sequence[str],
                   thumbnails: Thumbnails | None, no_thumbnails: str) -> str:
    wrong = np.flatnonzero(true != predicted)
    if wrong.size == 0:
        return '<p class="note">Every evaluation image is classified correctly.</p>'
    shown = wrong[:MAX_MISCLASSIFIED]
    images = dict(thumbnails([str(ids[k]) for k in shown])) if thumbnails is not None else {}
    cells = []
    for k in shown:
        uri = data_uri(images[ids[k]]) if ids[k] in images else None
        picture = f'<img alt="{_e(ids[k])}" src="{uri}">' if uri else ""
        cells.append(
            f'<div class="cell">{picture}<div>true <b>{_e(classes[true[k]])}</b></div>'
            f'<div class="wrong">predicted <b>{_e(classes[predicted[k]])}</b></div>'
            f'<div class="id">{_e(ids[k])}</div></div>'
        )
    note = f"{wrong.size:,} of {len(ids):,} evaluation images misclassified"
    if wrong.size > shown.size:
        note += f"; the first {shown.size} in id order are shown"
    if thumbnails is None:
        note += f" (no thumbnails: {no_thumbnails})"
    return f'<p class="note">{_e(note)}</p><div class="grid">{"".join(cells)}</div>'


def render_report(
    *,
    title: str,
    best: ClassifyRun,
    best_label: str,
    summary: Sequence[str] = (),
    header: Sequence[str] | None = None,
    rows: Sequence[Sequence[object]] | None = None,
    marked: int | None = None,
    figures: Sequence[tuple[str, bytes]] = (),
    thumbnails: Thumbnails | None = None,
    no_thumbnails: str = NOT_AT_HAND,
) -> str:
    """The page as text; see :func:`write_report`."""
    result = best.best
    classes = list(best.classes)
    if header is None or rows is None:
        header = ("classifier", "accuracy", "balanced acc", "macro F1", "fit s")
        rows = [(r.name, f"{r.accuracy:.3f}", f"{r.balanced_accuracy:.3f}", f"{r.macro_f1:.3f}",
                 f"{r.fit_seconds:.2f}") for r in best.results]
        marked = best.results.index(result)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        *(f'<p class="note">{_e(line)}</p>' for line in summary),
        f'<p class="note">evaluation: {_e(best.evaluation.description)}</p>',
        "<h2>Results</h2>",
        _table(header, rows, marked=marked),
        '<p class="note">highlighted: the best accuracy</p>',
    ]
    for caption, png in figures:
        uri = data_uri(png, "image/png")
        parts += [f"<h2>{_e(caption)}</h2>", f'<img class="plot" alt="{_e(caption)}" src="{uri}">']
    ids, true, predicted = _read_predictions(result, classes)
    parts += [
        f"<h2>Best configuration: {_e(best_label)}</h2>",
        f'<p class="note">accuracy {result.accuracy:.3f}, balanced accuracy {result.balanced_accuracy:.3f}, '
        f"macro F1 {result.macro_f1:.3f} on {len(ids):,} evaluation images</p>",
        "<h2>Confusion matrix (rows: true class, columns: predicted)</h2>",
        _confusion(true, predicted, classes),
        "<h2>Precision and recall per class</h2>",
        _table(
            ("class", "precision", "recall", "F1", "support"),
            [(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"])
             for c, m in result.per_class.items()],
        ),
        "<h2>Misclassified evaluation images</h2>",
        _misclassified(ids, true, predicted, classes, thumbnails, no_thumbnails),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# Columns of a results table that hold names, not numbers (left-aligned).
_TEXT_HEADERS = frozenset({"network", "layer", "classifier", "inputs"})


def write_report(
    path: str | os.PathLike,
    *,
    best: ClassifyRun,
    title: str = "featx classify",
    best_label: str | None = None,
    summary: Sequence[str] = (),
    header: Sequence[str] | None = None,
    rows: Sequence[Sequence[object]] | None = None,
    marked: int | None = None,
    figures: Sequence[tuple[str, bytes]] = (),
    thumbnails: Thumbnails | None = None,
    no_thumbnails: str = NOT_AT_HAND,
) -> Path:
    """Write ``report.html``: one self-contained file that opens offline.

    Parameters
    ----------
    path : path
        The HTML file to write.
    best : ClassifyRun
        The run of the best configuration: its best classifier gives the
        confusion matrix, the per-class table and the misclassified images.
    title : str
    best_label : str, optional
        How the best configuration is named (default: its inputs and classifier).
    summary : sequence of str
        Lines under the title.
    header, rows : optional
        The results table (default: the classifiers of *best*); *marked* is
        the index of the row highlighted as the best.
    figures : sequence of (caption, PNG bytes)
        Plots embedded as they are.
    thumbnails : callable, optional
        ``ids -> {id: encoded image bytes}`` for the misclassified images.
    no_thumbnails : str
        Why there is no callback, said next to the grid of ids when *thumbnails* is ``None``.

    Returns
    -------
    Path
    """
    if best_label is None:
        best_label = f"{' + '.join(b.spec for b in best.inputs)}, {best.best.name}"
    text = render_report(
        title=title, best=best, best_label=best_label, summary=summary, header=header, rows=rows, marked=marked,
        figures=figures, thumbnails=thumbnails, no_thumbnails=no_thumbnails,
    )
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path
