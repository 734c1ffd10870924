"""report.html: one self-contained page, its numbers those of the run, thumbnails embedded."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
from classify_data import config_for, write_two_stores
from PIL import Image
from sklearn.metrics import confusion_matrix

from featx.classification import run_classification, write_report
from featx.classification._html import MAX_MISCLASSIFIED, data_uri


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (5, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _outside_references(text: str) -> list[str]:
    """Every reference to something outside the file: URLs, non-data sources, links, scripts, imports."""
    found = re.findall(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, flags=re.I)
    sources = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]*)""", text, flags=re.I)
    found += [s for s in sources if not s.startswith("data:")]
    found += re.findall(r"<link|<script|@import|url\(", text, flags=re.I)
    return found


def test_classify_writes_a_self_contained_report(tmp_path: Path):
    alexnet, _ = write_two_stores(tmp_path)
    run = run_classification(config_for(tmp_path, [f"{alexnet}:conv5"], models="logreg,bayes"))
    text = (run.out_dir / "report.html").read_text()
    assert _outside_references(text) == []
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # The table holds each classifier's metrics; the best row is marked.
    for r in run.results:
        assert f"<td>{r.accuracy:.3f}</td><td>{r.balanced_accuracy:.3f}</td><td>{r.macro_f1:.3f}</td>" in text
    assert text.count('<tr class="best">') == 1
    # No figure, no thumbnail without a callback (here the best classifies every row right).
    assert "<img" not in text and "Every evaluation image is classified correctly." in text


def test_report_numbers_and_thumbnails(tmp_path: Path):
    alexnet, _ = write_two_stores(tmp_path)
    run = run_classification(config_for(tmp_path, [f"{alexnet}:conv5"], models="bayes"))
    best = run.best
    frame = pd.read_csv(best.predictions, dtype=str)
    wrong = frame[frame["true"] != frame["predicted"]]
    assert len(wrong) > 0  # blobs of width 3 overlap: there is something to show

    images = {image_id: _png((k * 40 % 256, 10, 200)) for k, image_id in enumerate(frame["id"])}
    asked: list[list[str]] = []

    def thumbnails(ids):
        asked.append(list(ids))
        return {i: images[i] for i in ids[1:]}  # the first one cannot be read: left without a picture

    path = write_report(tmp_path / "r.html", best=run, title="t", figures=[("Plot", _png((1, 2, 3)))],
                        thumbnails=thumbnails)
    text = path.read_text()
    assert _outside_references(text) == []
    assert asked == [list(wrong["id"])[:MAX_MISCLASSIFIED]]  # only the misclassified ones, in id order
    sources = re.findall(r'src="([^"]+)"', text)
    assert sources[0] == data_uri(_png((1, 2, 3)))
    assert sources[1:] == [data_uri(images[i]) for i in list(wrong["id"])[1:MAX_MISCLASSIFIED]]
    for uri in sources:  # each embedded image decodes
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).load()

    # The confusion matrix is scikit-learn's; the per-class table is the run's.
    classes = run.classes
    index = {c: k for k, c in enumerate(classes)}
    expected = confusion_matrix([index[c] for c in frame["true"]], [index[c] for c in frame["predicted"]])
    table = text.split('<table class="confusion">', 1)[1].split("</table>", 1)[0]
    cells = [int(v) for v in re.findall(r"<td[^>]*>(\d+)</td>", table)]
    assert np.array_equal(np.array(cells).reshape(len(classes), len(classes)), expected)
    for name, m in best.per_class.items():
        assert (f'<td class="text">{name}</td><td>{m["precision"]:.3f}</td><td>{m["recall"]:.3f}</td>'
                f'<td>{m["f1"]:.3f}</td><td>{m["support"]}</td>') in text
    assert f"{len(wrong):,} of {len(frame):,} evaluation images misclassified" in text

    # Without a callback the grid lists the ids, and says why there is no picture.
    text = write_report(tmp_path / "ids.html", best=run).read_text()
    assert "<img" not in text and "(no thumbnails: the images were not at hand)" in text
    assert all(f'<div class="id">{i}</div>' in text for i in wrong["id"])


def test_report_escapes_names(tmp_path: Path):
    alexnet, _ = write_two_stores(tmp_path)
    run = run_classification(config_for(tmp_path, [f"{alexnet}:fc7"], models="bayes"))
    text = write_report(tmp_path / "r.html", best=run, title="<script>x</script>", summary=["a & b"]).read_text()
    assert "<script>" not in text and "&lt;script&gt;x&lt;/script&gt;" in text and "a &amp; b" in text
