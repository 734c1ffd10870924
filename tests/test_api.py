"""The Python API: the README's example runs as written, and the functions mirror the commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import featx

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "features/digits-5-per-class/resnet18-none-64.h5 100 {'conv5': 512, 'penultimate': 512}"
    assert lines[1].startswith("resnet18 at 64x64: ")
    accuracies = eval(lines[2])  # {'logreg': ..., 'bayes': ...}
    assert set(accuracies) == {"logreg", "bayes"} and all(0.0 <= a <= 1.0 for a in accuracies.values())
    assert (tmp_path / "runs/api-example/results.json").is_file()
    with featx.open_store(tmp_path / "features/digits-5-per-class/resnet18-none-64.h5") as store:
        assert store.features("penultimate", rows=store.splits == "train").shape == (50, 512)


def test_import_featx_loads_neither_torch_nor_sklearn():
    code = "import sys, featx; featx.open_store; print('torch' in sys.modules, 'sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_every_public_name_resolves():
    for name in featx.__all__:
        assert getattr(featx, name) is not None, name
    with pytest.raises(AttributeError, match="module 'featx' has no attribute 'extract_everything'"):
        featx.extract_everything  # noqa: B018


def test_bad_value_names_the_keyword_argument(tmp_path):
    with pytest.raises(featx.FeatxError) as raised:
        featx.extract(tmp_path, model="resnet18", batch_size=0)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith("batch_size must be a positive integer; got 0")
