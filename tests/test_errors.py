"""featx.errors: one message formula, options named as their user writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from featx import errors
from featx.errors import cli_option_names, message, option


def test_message_formula():
    assert message("batch_size", allowed="a positive integer", got=0) == "batch_size must be a positive integer; got 0"
    assert message("pool", allowed=errors.choices(["avg", "max"]), got="sum", hint="see --help") == (
        "pool must be one of avg, max; got 'sum'; see --help"
    )
    assert message("feature store not found", got=Path("x.h5"), hint="check the path") == (
        "feature store not found: 'x.h5'; check the path"
    )
    assert message("no images given") == "no images given"


def test_option_names_follow_the_caller():
    assert [option("batch_size"), option("batch_size", 8), option("weights", "none"), option("overwrite", True)] == [
        "batch_size", "batch_size=8", "weights='none'", "overwrite=True",
    ]
    with cli_option_names():
        assert [option("batch_size"), option("batch_size", 8), option("weights", "none"), option("overwrite", True)] == [
            "--batch-size", "--batch-size 8", "--weights none", "--overwrite",
        ]
    assert option("batch_size") == "batch_size"  # the block restores the library's names


def test_close_matches():
    assert errors.close_matches("resnet5", ["resnet50", "resnet18", "vgg16"]) == "did you mean resnet50, resnet18? "
    assert errors.close_matches("zzz", ["resnet50"]) == ""


@pytest.mark.parametrize("name", [n for n in errors.__all__ if n[0].isupper()])
def test_every_error_is_a_featx_error_and_a_builtin(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.FeatxError)
    if cls is not errors.FeatxError:
        assert issubclass(cls, (ValueError, OSError)), name
