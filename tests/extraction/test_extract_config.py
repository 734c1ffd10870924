"""What an extraction is asked (featx.extraction ExtractConfig): checks before any work, default path, summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODEL, quick_extract

from featx.errors import (
    ConfigError,
    DataError,
    OutputPathError,
    UnknownModelError,
    WeightsError,
    cli_option_names,
)
from featx.extraction import ExtractConfig, ExtractResult, extract_features, format_extraction
from featx.extraction._config import default_store_path


@pytest.mark.parametrize(
    "overrides, python, cli",
    [
        (
            {"layers": ()},
            "no layer requested; pass at least one layer name, e.g. layers=('penultimate',)",
            None,
        ),
        (
            {"layers": ("fc7", "fc6", "fc7")},
            "a layer is requested twice: 'fc7'; ask for each layer once",
            None,
        ),
        (
            {"pool": "median"},
            "pool must be one of avg, max, flatten, avgmax; got 'median'",
            "--pool must be one of avg, max, flatten, avgmax; got 'median'",
        ),
        (
            {"precision": "fp8"},
            "precision must be one of auto, fp32, bf16, fp16; got 'fp8'",
            "--precision must be one of auto, fp32, bf16, fp16; got 'fp8'",
        ),
        (
            {"dtype": "float64"},
            "dtype must be one of float32, float16; got 'float64'",
            "--dtype must be one of float32, float16; got 'float64'",
        ),
        (
            {"compression": "zstd"},
            "compression must be one of gzip, lzf or None; got 'zstd'",
            "--compression must be one of gzip, lzf or None; got 'zstd'",
        ),
        (
            {"batch_size": 0},
            "batch_size must be a positive integer; got 0",
            "--batch-size must be a positive integer; got 0",
        ),
        (
            {"batch_size": 2.5},
            "batch_size must be a positive integer; got 2.5",
            "--batch-size must be a positive integer; got 2.5",
        ),
        (
            {"workers": -1},
            "workers must be 0 or a positive integer (0: decode in this process); got -1",
            "--workers must be 0 or a positive integer (0: decode in this process); got -1",
        ),
        (
            {"image_size": 0},
            "image_size must be a positive integer (the crop size in pixels); got 0",
            "--image-size must be a positive integer (the crop size in pixels); got 0",
        ),
        (
            {"image_size": -1},
            "image_size must be a positive integer (the crop size in pixels); got -1",
            "--image-size must be a positive integer (the crop size in pixels); got -1",
        ),
        (
            {"checkpoint_seconds": -1},
            "checkpoint_seconds must be a number of seconds >= 0 (0: after every batch); got -1",
            "--checkpoint-seconds must be a number of seconds >= 0 (0: after every batch); got -1",
        ),
        (
            {"checkpoint_seconds": float("nan")},
            "checkpoint_seconds must be a number of seconds >= 0 (0: after every batch); got nan",
            "--checkpoint-seconds must be a number of seconds >= 0 (0: after every batch); got nan",
        ),
        (
            {"max_pixels": 0},
            "max_pixels must be a positive integer; got 0",
            "--max-pixels must be a positive integer; got 0",
        ),
    ],
)
def test_config_validation(overrides, python, cli):
    with pytest.raises(ConfigError) as raised:
        ExtractConfig.from_options(**overrides)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value) == python
    if cli is not None:
        with cli_option_names(), pytest.raises(ConfigError) as raised:
            ExtractConfig.from_options(**overrides)
        assert str(raised.value) == cli


def test_zero_checkpoint_seconds_and_zero_workers_are_allowed():
    config = ExtractConfig.from_options(checkpoint_seconds=0, workers=0)
    assert (config.checkpoint_seconds, config.workers) == (0, 0)


def _in_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file.txt").write_text("in the way")
    return tmp_path / "file.txt" / "s.h5"


def test_unwritable_out_is_refused_before_any_work(tmp_path):
    # Making a configuration reads nothing from disk; store_path() checks, and extract_features calls it first.
    out = _in_a_file(tmp_path)
    config = ExtractConfig.from_options(data=tmp_path / "nope", model=MODEL, weights="none", out=out)
    with pytest.raises(OutputPathError) as raised:
        extract_features(config)
    assert str(raised.value) == (
        f"out is not writable ('{tmp_path / 'file.txt'}' is a file, not a folder): '{out}'; choose another out"
    )
    with cli_option_names(), pytest.raises(OutputPathError) as raised:
        ExtractConfig.from_options(data=tmp_path / "nope", model=MODEL, weights="none", out="/proc/featx-test/s.h5").store_path()
    # Why /proc refuses depends on the user (no permission, or no files there): the reason is the file system's.
    assert str(raised.value).startswith("--out is not writable (")
    assert str(raised.value).endswith("): '/proc/featx-test/s.h5'; choose another --out")
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_unwritable_default_path_is_refused_before_any_image_or_model_is_loaded(tmp_path, monkeypatch):
    import torch

    # Were the model loaded, its pretrained weights would be looked for and fail offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "features").write_text("a file where the features folder goes")
    config = ExtractConfig.from_options(data=tmp_path / "no-such-folder", model=MODEL, features_dir=tmp_path / "features")
    with pytest.raises(OutputPathError) as raised:
        extract_features(config)
    out = tmp_path / "features" / "no-such-folder" / f"{MODEL}-IMAGENET1K_V1.h5"
    assert str(raised.value) == (
        f"out is not writable ('{tmp_path / 'features'}' is a file, not a folder): '{out}'; choose another out"
    )
    # The data folder does not exist: a DataError had the images been looked for first.
    with pytest.raises(DataError):
        extract_features(ExtractConfig.from_options(data=tmp_path / "no-such-folder", model=MODEL, weights="none", out=tmp_path / "s.h5"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]


def test_unknown_model_and_weights_are_refused_before_the_data_is_read(tmp_path):
    with pytest.raises(UnknownModelError, match=r"^model must be one of torchvision's \d+ classification models .*; got 'resnet5'; did you mean resnet50, "):
        extract_features(ExtractConfig.from_options(data=tmp_path / "nope", model="resnet5", weights="none"))
    with pytest.raises(WeightsError, match=r"^weights must be one of DEFAULT, IMAGENET1K_V1, none for resnet18; got 'V9'"):
        extract_features(ExtractConfig.from_options(data=tmp_path / "nope", model="resnet18", weights="V9"))


def test_default_store_path_needs_no_model(tmp_path):
    data = tmp_path / "birds"
    base = dict(data=data, model="resnet18", features_dir=tmp_path / "f")
    assert default_store_path(ExtractConfig.from_options(**base)) == tmp_path / "f" / "birds" / "resnet18-IMAGENET1K_V1.h5"
    assert default_store_path(ExtractConfig.from_options(**base, weights="none", seed=3, image_size=64)) == (
        tmp_path / "f" / "birds" / "resnet18-none-s3-64.h5"
    )
    assert default_store_path(ExtractConfig.from_options(**base, weights="none")).name == "resnet18-none.h5"
    # A file's label keeps its name without the suffix; the seed is not part of it.
    assert default_store_path(ExtractConfig.from_options(**base, weights_file=tmp_path / "tuned.v2.pt", seed=5)).name == (
        "resnet18-file-tuned.v2.h5"
    )


def test_default_store_path_is_where_the_store_is_written(synthetic_dataset, tmp_path):
    config = dict(features_dir=tmp_path / "features", layers=("conv2",))
    result = quick_extract(synthetic_dataset, None, **config)
    assert result.path == tmp_path / "features" / "synthetic" / f"{MODEL}-none-64.h5"
    assert result.path.is_file()


def test_format_extraction():
    written = ExtractResult(
        path=Path("s.h5"), rows=1234, layers={"conv5": 256, "fc7": 4096}, seconds=2.0, images=1236,
        failed=[("a/x.jpg", "empty file (0 bytes)"), ("b/y.png", "not an image: ...")],
    )
    assert format_extraction(written) == (
        "wrote s.h5: 1,234 images; layers conv5 (256), fc7 (4,096)\n"
        "  1,236 images in 2.0 s (618.0 images/s)\n"
        "  2 image(s) could not be used (listed in /failed):\n"
        "    a/x.jpg: empty file (0 bytes)\n"
        "    b/y.png: not an image: ..."
    )
    same = ExtractResult(path=Path("s.h5"), rows=10, layers={"conv2": 64}, up_to_date=True)
    assert format_extraction(same) == "up to date: s.h5 (10 images; conv2 (64))"
    nothing_new = ExtractResult(path=Path("s.h5"), rows=0, layers={"conv2": 64})
    assert format_extraction(nothing_new) == "wrote s.h5: 0 images; layers conv2 (64)"


def test_the_registries_and_the_configuration_import_no_torch():
    code = (
        "import sys\n"
        "from featx.extraction import (COMPRESSIONS, POOLS, PRECISIONS, STORAGE_DTYPES,\n"
        "    ExtractConfig, FeatureRecipe, format_extraction)\n"
        "ExtractConfig.from_options(pool='max', precision='bf16', dtype='float16', compression='lzf')\n"
        "assert list(POOLS) == ['avg', 'max', 'flatten', 'avgmax'], POOLS\n"
        "assert tuple(PRECISIONS) == ('fp32', 'bf16', 'fp16')\n"
        "FeatureRecipe.from_json(FeatureRecipe.request('resnet18').to_json())\n"
        "assert STORAGE_DTYPES == ('float32', 'float16') and COMPRESSIONS == ('gzip', 'lzf')\n"
        "assert not {'torch', 'torchvision'} & set(sys.modules), 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
