"""timm models: features equal timm's own forward with timm's transforms; weights, names, layers, errors."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

if importlib.util.find_spec("timm") is None and not os.environ.get("CI"):
    # `make test` installs the extra featx[timm]; in CI a missing timm fails these tests instead.
    pytest.skip("timm is not installed: pip install 'featx[timm]'", allow_module_level=True)
import timm
from timm.data import create_transform, resolve_data_config

from featx import open_store
from featx.errors import ConfigError, UnknownLayerError, UnknownModelError, WeightsError
from featx.extraction import ExtractConfig, extract_features, list_layers, load_model
from featx.extraction._models import weights_label
from featx.extraction._timm import hub_cache_dir, list_timm_architectures, timm_preprocessing

CNN = "resnet18"  # timm's ResNet: five feature stages (act1, layer1..layer4)
VIT = "vit_tiny_patch16_224"  # 5.7M parameters; built for SIZE x SIZE inputs (a fixed input size)
SMALL = "test_resnet"  # timm's own test network (0.5M parameters): quick to build
SIZE = 32


def _saved(tmp_path, architecture: str, **kwargs):
    torch.manual_seed(7)
    model = timm.create_model(architecture, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{architecture}.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _timm_inputs(model, data, ids) -> torch.Tensor:
    """The images as timm's own eval transform makes them."""
    transform = create_transform(**resolve_data_config({"input_size": (3, SIZE, SIZE)}, model=model))
    return torch.stack([transform(Image.open(data / i).convert("RGB")) for i in ids])


def _extract(data, out, model, layers, **options):
    config = ExtractConfig.from_options(
        data=data, out=out, model=model, layers=layers, image_size=SIZE, batch_size=4, workers=0,
        device="cpu", progress=False, **{"precision": "fp32", **options},  # compared with timm's fp32
    )
    return extract_features(config)


@pytest.mark.parametrize("architecture", ["resnet18", "vit_tiny_patch16_224", "efficientnet_b5"])
def test_preprocessing_equals_timms_eval_transform(architecture, tiny_dataset):
    """resnet18: crop_pct 0.95, bicubic; the ViT: mean/std 0.5; efficientnet_b5: crop mode 'squash'."""
    with torch.device("meta"):  # only the pretrained configuration is read
        model = timm.create_model(architecture)
    transform = create_transform(**resolve_data_config(model=model))
    ours = timm_preprocessing(model)
    assert ours.resize_mode == ("squash" if architecture == "efficientnet_b5" else "shorter")
    for path in sorted(tiny_dataset.rglob("*.jpg")):
        image = Image.open(path).convert("RGB")
        assert torch.equal(ours(image), transform(image)), path.name


def test_cnn_features_equal_timm_forward(tmp_path, tiny_dataset):
    model, path = _saved(tmp_path, CNN)
    layers = ("stage1", "last_stage", "last_conv", "penultimate", "logits")
    _extract(tiny_dataset, tmp_path / "s.h5", f"timm/{CNN}", layers, weights_file=path)
    with open_store(tmp_path / "s.h5") as store:
        ids = list(store.ids)
        got = {name: store.features(name) for name in layers}
        assert store.meta["resize"] == int(SIZE / model.pretrained_cfg["crop_pct"])  # timm's floor(size / crop_pct)
        assert store.meta["interpolation"] == "bicubic"
        assert store.layer_info("stage1")["node"] == "layer1"
    x = _timm_inputs(model, tiny_dataset, ids)
    with torch.no_grad():
        final, stages = model.forward_intermediates(x, indices=[1, 4])
        expected = {
            "stage1": stages[0].mean((2, 3)),
            "last_stage": stages[1].mean((2, 3)),
            "last_conv": model.forward_features(x).mean((2, 3)),
            "penultimate": model.forward_head(model.forward_features(x), pre_logits=True),
            "logits": model(x),
        }
    assert torch.equal(final, model.forward_features(x))
    for name in layers:
        assert got[name].shape == tuple(expected[name].shape)
        np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_vit_features_equal_timm_forward(tmp_path, tiny_dataset):
    model, path = _saved(tmp_path, VIT, img_size=SIZE)
    layers = ("stage5", "forward_features", "penultimate")
    _extract(tiny_dataset, tmp_path / "v.h5", f"timm/{VIT}", layers, weights_file=path)
    with open_store(tmp_path / "v.h5") as store:
        ids = list(store.ids)
        got = {name: store.features(name) for name in layers}
        assert store.meta["mean"] == [0.5, 0.5, 0.5]  # the ViT's own normalisation, not ImageNet's
        assert store.layer_info("forward_features")["source_shape"] == [(SIZE // 16) ** 2 + 1, 192]
    x = _timm_inputs(model, tiny_dataset, ids)
    with torch.no_grad():
        (block5,) = model.forward_intermediates(x, indices=[5], intermediates_only=True)
        tokens = model.forward_features(x)
        expected = {
            "stage5": block5.mean((2, 3)),
            "forward_features": tokens.mean(1),
            "penultimate": model.forward_head(tokens, pre_logits=True),
        }
    for name in layers:
        np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_weights_none_is_seeded_and_recorded(tmp_path, tiny_dataset):
    first = load_model(f"timm/{SMALL}", weights="none", seed=3)
    again = load_model(f"timm/{SMALL}", weights="none", seed=3)
    other = load_model(f"timm/{SMALL}", weights="none", seed=4)
    a, b, c = (dict(m.module.model.named_parameters())["fc.weight"] for m in (first, again, other))
    assert (first.weights, first.seed) == ("none", 3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    result = _extract(tiny_dataset, None, f"timm/{SMALL}", ("penultimate",), weights="none",
                      features_dir=tmp_path / "features")
    assert result.path.name == f"timm-{SMALL}-none-{SIZE}.h5"
    with open_store(result.path) as store:
        assert store.meta["model"] == f"timm/{SMALL}"
        assert store.meta["weights"] == "none"
        assert store.meta["timm_version"] == timm.__version__
        assert store.features("penultimate").shape == (4, first.module.model.num_features)


def test_a_fine_tuned_checkpoint_keeps_its_classes(tmp_path):
    model, path = _saved(tmp_path, SMALL, num_classes=2)
    loaded = load_model(f"timm/{SMALL}", weights_file=path)
    assert (loaded.weights, loaded.seed, loaded.module.model.get_classifier().out_features) == ("file:test_resnet.pt", None, 2)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.module.model.state_dict()[key], value), key


def test_default_weights_are_read_from_the_hub_cache(tmp_path, monkeypatch):
    """A file placed where huggingface_hub's cache looks for it (under HF_HOME) is what loads, offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    from safetensors.torch import save_file

    torch.manual_seed(11)
    reference = timm.create_model(CNN, pretrained=False)
    repo = hub_cache_dir() / f"models--timm--{CNN}.a1_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(reference.state_dict(), repo / "snapshots" / commit / "model.safetensors")
    assert weights_label(f"timm/{CNN}") == "a1_in1k"  # DEFAULT: timm's default tag
    loaded = load_model(f"timm/{CNN}", weights="DEFAULT")
    assert loaded.weights == "a1_in1k"
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.module.model.state_dict()[key], value), key


def test_uncached_weights_offline_name_the_expected_file(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempt in a test
    with pytest.raises(WeightsError) as raised:
        load_model(f"timm/{CNN}", weights="DEFAULT")
    text = str(raised.value)
    assert "not cached" in text and f"timm/{CNN}.a1_in1k" in text and "model.safetensors" in text
    assert str(tmp_path / "hf" / "hub") in text
    assert "weights_file" in text and "weights='none'" in text and "\n" not in text


def test_unknown_names_and_weights(monkeypatch):
    with pytest.raises(UnknownModelError, match=r"did you mean timm/convnext_tiny.*models --source timm"):
        weights_label("timm/convnxt_tiny")
    with pytest.raises(UnknownModelError, match=r"model='timm/resnet18' weights='a1_in1k'"):
        weights_label("timm/resnet18.a1_in1k")
    with pytest.raises(WeightsError, match=r"weights must be one of DEFAULT, a1_in1k, .* for timm/resnet18; got 'b9'"):
        weights_label("timm/resnet18", weights="b9")
    assert len(list_timm_architectures()) > 1000


def test_timm_not_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    list_timm_architectures.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"^timm models need the timm package.*pip install 'featx\[timm\]'$"):
            weights_label("timm/resnet18")
    finally:
        list_timm_architectures.cache_clear()


def test_layers_listing_and_layer_errors():
    listing = list_layers("timm/resnet18", image_size=SIZE)
    rows = {r.node: r for r in listing.rows}
    assert list(rows) == ["act1", "layer1", "layer2", "layer3", "layer4", "forward_features", "pre_logits", "logits"]
    assert rows["layer2"].aliases == ("stage2",) and rows["layer2"].shape == (128, SIZE // 8, SIZE // 8)
    assert (rows["layer2"].channels, rows["layer2"].reduction) == (128, 8)  # timm's feature_info says the same
    assert (rows["pre_logits"].channels, rows["pre_logits"].reduction) == (512, None)
    assert "penultimate" in rows["pre_logits"].aliases and "last_conv" in rows["forward_features"].aliases
    assert rows["logits"].cumulative_params == listing.total_params == 11_689_512
    assert rows["pre_logits"].cumulative_params == 11_689_512 - 513_000  # all but the fc layer
    assert rows["act1"].cumulative_params == 64 * 3 * 7 * 7 + 2 * 64  # conv1 and bn1
    network = load_model(f"timm/{VIT}", weights="none", image_size=SIZE).module
    index = network.layer_index(image_size=SIZE)
    with pytest.raises(UnknownLayerError, match=r"no convolutional feature map .*, so no 'last_conv'; use last_stage"):
        index.resolve("last_conv")
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'stage12' for timm/vit_tiny.*did you mean .*stage11"):
        index.resolve("stage12")
