"""Tampered classifier zips (issue 24, defects 6 and 7): one line each, exit 2, nothing built, memory bounded.

On the main of the issue, a garbage ``booster.ubj`` gave an XGBoostError with
a C++ backtrace, a non-UTF-8 manifest a UnicodeDecodeError, manifest classes
that do not match the pipeline an IndexError while writing predictions, and
a 1 MB zip holding a 1 GiB manifest peaked at 2.3 GB of memory for 6 s
before it was refused.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from stores import blobs, dataset, write_store
from tampered_zips import MANIFEST, PIPELINE, VARIANTS, bomb

from featx.classification import ClassifyConfig, load_classifier, run_classification
from featx.errors import ClassifyError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A good classifier-bayes.zip and classifier-xgboost.zip (3 classes)."""
    folder = tmp_path_factory.mktemp("zips")
    ids, labels, splits = dataset()
    store = write_store(folder / "s.h5", ids, labels, {"fc7": blobs(labels, 5, seed=4)}, splits=splits)
    run = run_classification(
        ClassifyConfig(features=(f"{store}:fc7",), models=("bayes", "xgboost"), out=folder / "run", plots=False)
    )
    return {result.name: Path(result.artifact) for result in run.results}


@pytest.fixture(params=VARIANTS, ids=[v[0] for v in VARIANTS])
def tampered(request, artifacts, tmp_path):
    name, make, expected = request.param
    return make(artifacts, tmp_path / "classifier-tampered.zip"), expected


def test_the_corpus_is_large_enough_and_the_good_zips_load(artifacts):
    assert len(VARIANTS) >= 20
    for family, path in artifacts.items():
        assert load_classifier(path).classes == ["a", "b", "c"], family


def test_the_api_raises_one_classify_error(tampered):
    path, expected = tampered
    with pytest.raises(ClassifyError) as caught:
        load_classifier(path)
    text = str(caught.value)
    assert expected in text and "\n" not in text, text


def test_predict_says_one_line_and_exits_2(tampered, run_cli, tmp_path):
    path, expected = tampered
    code, out, err = run_cli("predict", "--classifier", path, "--data", tmp_path / "no-images", "--out", tmp_path / "p.csv")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "p.csv").exists()


_MEASURE = textwrap.dedent(
    """
    import resource, sys, time
    import sklearn.pipeline  # imported by load_classifier: not what is timed
    from featx.classification import load_classifier
    from featx.errors import ClassifyError
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        load_classifier(sys.argv[1])
    except ClassifyError as exc:
        print(time.perf_counter() - started, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        print(exc)
    """
)


def _load_in_child(path: Path) -> tuple[float, int, str]:
    """Seconds, growth of the peak RSS (KiB) and the message of load_classifier(path) in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    seconds, before, after = lines[0].split()
    return float(seconds), int(after) - int(before), lines[1]


def test_a_1_gib_manifest_bomb_is_refused_at_once_with_bounded_memory(artifacts, tmp_path):
    path = bomb(tmp_path / "classifier-bomb.zip", member=MANIFEST, gib=1.0, base=artifacts["bayes"])
    assert path.stat().st_size < 2 << 20
    seconds, grown_kib, text = _load_in_child(path)
    assert "member 'manifest.json' is 1,073,741,824 bytes, more than the 4,194,304" in text, text
    assert seconds < 1.0 and grown_kib < 64 << 10, (seconds, grown_kib)


def test_a_pipeline_bomb_is_refused_unread(artifacts, tmp_path):
    path = bomb(tmp_path / "classifier-bomb.zip", member=PIPELINE, gib=0.5, base=artifacts["bayes"])
    started = time.perf_counter()
    with pytest.raises(ClassifyError, match=r"member 'pipeline.skops' expands from [\d,]+ to 536,870,912 bytes "
                                            r"\(more than 50:1\), a decompression bomb"):
        load_classifier(path)
    assert time.perf_counter() - started < 1.0
