"""A newcomer's rough edges (issue 24, item 10): options after the command, --help examples, the API's names.

Measured before: ``extract -q`` / ``classify --quiet`` failed with
"unrecognized arguments: -q"; no --help had an example; extract's --help gave
the default --out without its ``-<size>`` part; ``featx.describe_store`` /
``featx.export_store`` were named unlike ``info`` / ``export``, ``weights_files=``
unlike ``--weights-file``, and an unknown keyword raised a bare TypeError.
"""

from __future__ import annotations

import pytest

import featx
from featx.cli import build_parser
from featx.errors import ConfigError, FeatxError
from stores import blobs, dataset, write_store

COMMANDS = ("extract", "layers", "models", "classify", "predict", "info", "export", "demo")


@pytest.fixture
def store(tmp_path):
    ids, labels, splits = dataset()
    return write_store(tmp_path / "s.h5", ids, labels, {"fc7": blobs(labels, 4, seed=1)}, splits=splits)


def test_quiet_is_accepted_after_the_command(store, run_cli):
    for argv in (["info", "-q", store], ["info", "--quiet", store], ["-q", "info", store]):
        code, stdout, stderr = run_cli(*argv)
        assert (code, stderr) == (0, ""), argv
        assert stdout.startswith(f"store:          {store}\n")
    args = build_parser().parse_args(["classify", "--features", "a.h5", "--quiet"])
    assert args.quiet is True
    assert build_parser().parse_args(["classify", "--features", "a.h5"]).quiet is False
    assert build_parser().parse_args(["-q", "extract"]).quiet is True  # given before, kept when not given after


def test_every_command_has_examples():
    from featx.cli import EXAMPLES

    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert sorted(subcommands) == sorted(EXAMPLES) and set(COMMANDS) <= set(subcommands)


def test_help_texts(capsys):
    parser = build_parser()
    for command in next(a for a in parser._actions if a.dest == "command").choices:
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        tail = text.split("\nexamples:\n", 1)[1].splitlines()
        assert 2 <= len(tail) <= 3, (command, tail)
        assert all(line.startswith("  run_pipeline.py ") and f" {command}" in line for line in tail), tail
    with pytest.raises(SystemExit):
        parser.parse_args(["extract", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps the help at its hyphens
    assert "default:features/<dataset>/<model>-<weights>[-s<seed>][-<size>][-p<hash>].h5" in text


def test_the_api_has_the_commands_names(store, tmp_path):
    assert featx.info(store) == featx.describe_store(store)
    result = featx.export(store, tmp_path / "s.npz", layers=["fc7"])
    assert result.rows == 36 and (tmp_path / "s.npz").is_file()
    assert {"info", "export"} <= set(featx.__all__)


@pytest.mark.parametrize(
    "call, text",
    [
        (lambda: featx.classify("s.h5", sed=1), "an unknown option of classify: 'sed'; did you mean seed?"),
        (lambda: featx.predict("c.zip", "d", weights="x"),
         "an unknown option of predict: 'weights'; did you mean weights_file, weights_files?"),
        (lambda: featx.export("s.h5", "s.npz", fmt="csv"), "an unknown option of export: 'fmt'; did you mean format?"),
        (lambda: featx.info("s.h5", colour=True), "an unknown option of info: 'colour'"),
        (lambda: featx.extract("d", modle="x"), "an unknown option of extract: 'modle'; did you mean model?"),
    ],
)
def test_an_unknown_keyword_is_one_featx_error(call, text):
    with pytest.raises(ConfigError) as caught:
        call()
    assert isinstance(caught.value, FeatxError) and not isinstance(caught.value, TypeError)
    assert str(caught.value) == text


def test_predict_takes_weights_file_like_the_flag(tmp_path):
    """The keyword is accepted (and checked: here the classifier is missing, the first thing predict reads)."""
    with pytest.raises(FeatxError, match="^classifier not found"):
        featx.predict(tmp_path / "none.zip", tmp_path, weights_file=tmp_path / "w.pth")
