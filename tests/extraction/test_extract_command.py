"""`run_pipeline.py extract` end to end: the acceptance run on real images, summaries, user errors."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from conftest import ODD_BAD, ODD_GOOD

from featx.cli import main
from featx.devices import cpu_flags
from featx.extraction._images import IMAGE_EXTENSIONS

TINY = ["--model", "resnet18", "--layer", "conv2", "--weights", "none", "--image-size", "64", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def alexnet_run(hymenoptera, tmp_path_factory):
    """Acceptance 2: AlexNet conv5 + fc7 of every hymenoptera image, through the CLI."""
    out = tmp_path_factory.mktemp("acceptance") / "alexnet.h5"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([
            "extract", "--data", str(hymenoptera), "--model", "alexnet", "--layer", "conv5", "--layer", "fc7",
            "--weights", "none", "--out", str(out), "--no-progress",
        ])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_acceptance_store_layout_read_with_plain_h5py(alexnet_run, hymenoptera):
    code, out, err, path = alexnet_run
    assert code == 0, err
    files = sorted(
        p.relative_to(hymenoptera).as_posix()
        for p in hymenoptera.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    assert len(files) == 398  # 397 JPEGs and one GIF, all usable
    with h5py.File(path, "r") as f:
        ids = f["samples/id"].asstr()[()].tolist()
        assert ids == files
        assert f["features/conv5"].shape == (398, 256)
        assert f["features/fc7"].shape == (398, 4096)
        assert f["features/conv5"].dtype == np.float32
        assert f["classes"].asstr()[()].tolist() == ["ants", "bees"]
        classes = ["ants", "bees"]
        labels = f["samples/label"][()]
        assert labels.dtype == np.int32
        assert [classes[i] for i in labels] == [i.split("/")[1] for i in ids]
        assert f["samples/split"].asstr()[()].tolist() == [i.split("/")[0] for i in ids]
        assert f["failed/id"].shape == (0,)
        attrs = dict(f.attrs)
        assert attrs["featx_format"] == 1
        assert attrs["model"] == "alexnet" and attrs["weights"] == "none"
        assert (attrs["image_size"], attrs["resize"], attrs["crop"]) == (224, 256, 224)
        np.testing.assert_allclose(attrs["mean"], [0.485, 0.456, 0.406])
        np.testing.assert_allclose(attrs["std"], [0.229, 0.224, 0.225])
        assert attrs["data_root"] == str(hymenoptera.resolve())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", attrs["created_utc"])
        assert attrs["torch_version"] == torch.__version__
        assert attrs["torchvision_version"] == torchvision.__version__
        assert isinstance(attrs["featx_version"], str)
        assert bool(attrs["complete"]) is True
        assert f["features/conv5"].attrs["node"] == "features.11"
        assert f["features/fc7"].attrs["node"] == "classifier.5"
        assert f["features/fc7"].attrs["pool"] == "none"
        np.testing.assert_array_equal(f["features/conv5"].attrs["source_shape"], [256, 13, 13])
        fc7 = f["features/fc7"][()]
    assert np.isfinite(fc7).all() and (fc7 >= 0).all()  # post-ReLU
    assert len({row.tobytes() for row in fc7}) == 398  # one row per image, not a repeated one


def test_acceptance_messages(alexnet_run):
    code, out, err, path = alexnet_run
    assert "conv5 (node features.11, 256x13x13, pool avg): 398 rows x 256 x 4 B = 398.0 KiB" in err
    assert "fc7 (node classifier.5, 4096, pool none): 398 rows x 4,096 x 4 B = 6.2 MiB" in err
    assert out.splitlines()[0] == f"wrote {path}: 398 images; layers conv5 (256), fc7 (4,096)"
    flags = sorted({"amx_bf16", "avx512_bf16"} & cpu_flags())
    why = f"auto: this CPU has {'amx_bf16' if 'amx_bf16' in flags else flags[0]}" if flags else "auto: this CPU has no bf16 instructions"
    assert re.fullmatch(r"  398 images in [\d.]+ s \([\d.]+ images/s\)", out.splitlines()[1])
    assert out.splitlines()[2] == f"  computed in {'bf16' if flags else 'fp32'} ({why}), stored as float32"
    assert "could not be used" not in out


def test_rerun_says_up_to_date(alexnet_run, hymenoptera, run_cli):
    _, _, _, path = alexnet_run
    before = path.read_bytes()
    code, out, err = run_cli(
        "extract", "--data", hymenoptera, "--model", "alexnet", "--layer", "conv5", "--layer", "fc7",
        "--weights", "none", "--out", path, "--no-progress",
    )
    assert code == 0, err
    precision = "bf16" if {"amx_bf16", "avx512_bf16"} & cpu_flags() else "fp32"  # --precision auto
    assert out == f"up to date: {path} (398 images; conv5 (256), fc7 (4,096); {precision})\n"
    assert f"{path} already holds conv5, fc7 for these images: nothing to do" in err
    assert path.read_bytes() == before


def test_summary_lists_every_failed_image(odd_images, tmp_path, run_cli):
    code, out, err = run_cli("extract", "--data", odd_images, "--out", tmp_path / "odd.h5", *TINY)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"wrote {tmp_path / 'odd.h5'}: {len(ODD_GOOD)} images; layers conv2 (64)"
    assert lines[2] == f"  {len(ODD_BAD)} image(s) could not be used (listed in /failed):"
    assert lines[-1].startswith("  computed in ")  # the precision, last
    listed = dict(line.strip().split(": ", 1) for line in lines[3:-1])
    assert sorted(listed) == sorted(ODD_BAD)
    for image_id, pattern in ODD_BAD.items():
        assert re.search(pattern, listed[image_id]), (image_id, listed[image_id])


def test_default_store_path(synthetic_dataset, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("extract", "--data", synthetic_dataset, *TINY)
    assert code == 0, err
    expected = Path("features") / "synthetic" / "resnet18-none-64.h5"
    assert out.splitlines()[0] == f"wrote {expected}: 10 images; layers conv2 (64)"
    assert (tmp_path / expected).is_file()


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err[len("error: "):].rstrip("\n")


def test_unknown_model(synthetic_dataset, run_cli):
    message = _one_line_error(*run_cli("extract", "--data", synthetic_dataset, "--model", "resnet5", "--weights", "none"))
    assert re.fullmatch(
        r"--model must be one of torchvision's \d+ classification models \(alexnet, .*, \.\.\.; "
        r"see torchvision\.models\.list_models\(module=torchvision\.models\)\); got 'resnet5'; "
        r"did you mean resnet50, .*\?",
        message,
    )


def test_unknown_layer(synthetic_dataset, run_cli):
    message = _one_line_error(
        *run_cli("extract", "--data", synthetic_dataset, "--model", "alexnet", "--layer", "fc9", "--weights", "none")
    )
    assert message.startswith("unknown layer 'fc9' for alexnet; did you mean fc8, fc7, fc6? ")
    assert message.endswith("list them with `featx layers --model alexnet`")


def test_image_size_too_small(synthetic_dataset, run_cli):
    message = _one_line_error(
        *run_cli("extract", "--data", synthetic_dataset, "--model", "alexnet", "--image-size", "32", "--weights", "none")
    )
    assert message.startswith("alexnet cannot run on 32x32 images (Given input size: (256x1x1).")
    assert message.endswith("use a larger --image-size (the weights' own, usually 224, when omitted)")


def test_missing_data_folder(tmp_path, run_cli):
    message = _one_line_error(*run_cli("extract", "--data", tmp_path / "nope", *TINY))
    assert message == (
        f"data folder not found: '{tmp_path / 'nope'}' does not exist; pass --data DIR with a folder of images, "
        "one subfolder per class (optionally under train/, val/, test/)"
    )


def test_empty_folder_and_folder_without_images(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    message = _one_line_error(*run_cli("extract", "--data", tmp_path / "empty", *TINY))
    assert message.startswith(f"no images found in '{tmp_path / 'empty'}': looked for files ending in .bmp, .gif, .jpeg, .jpg, ")
    (tmp_path / "docs" / "a").mkdir(parents=True)
    (tmp_path / "docs" / "a" / "readme.txt").write_text("x")
    message = _one_line_error(*run_cli("extract", "--data", tmp_path / "docs", *TINY))
    assert message.endswith("; put images in one subfolder per class")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(synthetic_dataset, run_cli):
    message = _one_line_error(*run_cli("extract", "--data", synthetic_dataset, *TINY, "--device", "cuda"))
    assert message == (
        f"device 'cuda' is not available; no CUDA GPU is visible to torch (torch {torch.__version__}); "
        "use --device cpu or --device auto"
    )


def test_unknown_device(synthetic_dataset, run_cli):
    message = _one_line_error(*run_cli("extract", "--data", synthetic_dataset, *TINY, "--device", "tpu"))
    assert message == "--device must be auto, cpu, cuda or cuda:N; got 'tpu'"


def test_bad_weights_name(synthetic_dataset, run_cli):
    message = _one_line_error(*run_cli("extract", "--data", synthetic_dataset, "--model", "resnet18", "--weights", "IMAGENET"))
    assert message == (
        "--weights must be one of DEFAULT, IMAGENET1K_V1, none for resnet18; got 'IMAGENET'; "
        "or pass a state dict with --weights-file PATH"
    )


def test_bad_batch_size(synthetic_dataset, run_cli):
    message = _one_line_error(*run_cli("extract", "--data", synthetic_dataset, *TINY, "--batch-size", "0"))
    assert message == "--batch-size must be a positive integer; got 0"


def test_store_of_another_configuration(synthetic_dataset, tmp_path, run_cli):
    out = tmp_path / "s.h5"
    assert run_cli("extract", "--data", synthetic_dataset, "--out", out, *TINY)[0] == 0
    message = _one_line_error(*run_cli("extract", "--data", synthetic_dataset, "--out", out, *TINY, "--seed", "3"))
    assert message == (
        f"store '{out}' was made with another configuration (the command differs): seed is 0 there, 3 here; "
        "use --overwrite to replace it, or --out PATH to write a new store"
    )
    code, stdout, err = run_cli("extract", "--data", synthetic_dataset, "--out", out, *TINY, "--seed", "3", "--overwrite")
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: 10 images")
