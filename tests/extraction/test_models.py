"""Model registry, weights, their labels and preprocessing (featx.extraction load_model, weights_label)."""

from __future__ import annotations

import hashlib
import pathlib
import re
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from conftest import real_jpegs
from PIL import Image

from featx.errors import ConfigError, UnknownModelError, WeightsError
from featx.extraction import check_model_name, load_model, weights_cache_path
from featx.extraction._models import weights_label
from featx.extraction._preprocessing import Preprocessing
from featx.store import WEIGHTS_KINDS, parse_weights_label

RESNET18_V1 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1


class _Payload:
    """Pickles to a call that creates a file: proof of code execution if it appears."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _assert_same_tensors(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, and downloads that fail as they do offline (never a real download)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch-home"


# --------------------------------------------------------------------------- names


def test_unknown_model_names_close_matches():
    with pytest.raises(
        UnknownModelError,
        match=r"^model must be one of torchvision's \d+ classification models \(alexnet, .*list_models.*\); "
        r"got 'resnet5'; did you mean resnet50, .*\?$",
    ):
        load_model("resnet5", weights="none")


def test_unknown_weights_name_lists_choices():
    with pytest.raises(
        WeightsError,
        match=r"^weights must be one of DEFAULT, IMAGENET1K_V1, none for resnet18; got 'IMAGENET1K_V9'; "
        r"or pass a state dict with weights_file='PATH'$",
    ):
        load_model("resnet18", weights="IMAGENET1K_V9")


# --------------------------------------------------------------------------- random init


def test_weights_none_is_seeded():
    a = load_model("resnet18", weights="none", seed=0)
    b = load_model("resnet18", weights="none", seed=0)
    c = load_model("resnet18", weights="none", seed=1)
    _assert_same_tensors(b.module, a.module.state_dict())
    assert not torch.equal(a.module.conv1.weight, c.module.conv1.weight)
    assert a.weights == "none" and a.seed == 0
    assert not a.module.training
    # The global RNG is left alone.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_model("alexnet", weights="none", seed=3)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- the torch cache


def test_cache_path_follows_torch_home(torch_home):
    assert weights_cache_path(RESNET18_V1) == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


def test_cached_weights_load_without_network(torch_home):
    torch.manual_seed(7)
    state = torchvision.models.resnet18().state_dict()
    cached = weights_cache_path(RESNET18_V1)
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    for name in ("IMAGENET1K_V1", "DEFAULT"):
        loaded = load_model("resnet18", weights=name)
        _assert_same_tensors(loaded.module, state)
        assert loaded.weights == "IMAGENET1K_V1"
        assert loaded.preprocessing == Preprocessing(resize=256, crop=224)


def test_offline_without_cached_file(torch_home):
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError) as info:
        load_model("resnet18", weights="IMAGENET1K_V1")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "pretrained weights ResNet18_Weights.IMAGENET1K_V1 for resnet18 are not cached and could not be "
        "downloaded ([Errno -3] Temporary failure in name resolution): expected the file "
        f"'{expected}' (set TORCH_HOME to use another cache folder); copy it there, or pass "
        "weights_file='PATH', or weights='none' for a seeded random initialisation"
    )


def test_cached_file_with_pickled_code_is_refused(torch_home):
    marker = torch_home.parent / "code-ran"
    cached = weights_cache_path(RESNET18_V1)
    cached.parent.mkdir(parents=True)
    torch.save({"conv1.weight": _Payload(marker)}, cached)
    with pytest.raises(
        WeightsError,
        match=rf"^the cached weights file '{re.escape(str(cached))}' for resnet18 .* could not be loaded with "
        r"torch.load\(weights_only=True\) \(it holds pickled Python objects other than tensors, .*\); "
        r"delete it so that it is downloaded again, or pass weights_file='PATH'$",
    ):
        load_model("resnet18", weights="IMAGENET1K_V1")
    assert not marker.exists()


def test_truncated_cached_file(torch_home):
    cached = weights_cache_path(RESNET18_V1)
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    cached.write_bytes(cached.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"^the cached weights file .* could not be loaded .*; delete it") as info:
        load_model("resnet18", weights="IMAGENET1K_V1")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- --weights-file


def test_weights_file_loads_exactly_those_tensors(saved_weights):
    path = saved_weights("resnet18")
    loaded = load_model("resnet18", weights_file=path)
    _assert_same_tensors(loaded.module, torch.load(path, weights_only=True))
    assert loaded.weights == "file:resnet18.pt"
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.preprocessing == Preprocessing(resize=256, crop=224)


def test_weights_file_wrapped_and_data_parallel_checkpoints(tmp_path):
    state = torchvision.models.alexnet().state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    _assert_same_tensors(load_model("alexnet", weights_file=path).module, state)


def test_fine_tuned_checkpoint_keeps_its_classes(tmp_path):
    state = torchvision.models.resnet18(num_classes=2).state_dict()
    torch.save(state, tmp_path / "two.pt")
    loaded = load_model("resnet18", weights_file=tmp_path / "two.pt")
    assert loaded.module.fc.out_features == 2
    _assert_same_tensors(loaded.module, state)


def test_weights_file_with_wrong_keys(tmp_path):
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pt")
    with pytest.raises(
        WeightsError,
        match=r"^'.*alexnet\.pt' does not match the resnet18 architecture: missing 102 keys \(e\.g\. conv1\.weight, "
        r"bn1\.weight, bn1\.bias\); 16 unexpected keys \(e\.g\. features\.0\.weight, .*\); "
        r"pass the model the checkpoint was trained with$",
    ):
        load_model("resnet18", weights_file=tmp_path / "alexnet.pt")


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    old_style = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old_style, tmp_path / "old.pt")
    loaded = load_model("resnet18", weights_file=tmp_path / "old.pt")
    for key, value in old_style.items():
        assert torch.equal(loaded.module.state_dict()[key], value)


def test_weights_file_with_wrong_shapes(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, tmp_path / "gray.pt")
    with pytest.raises(
        WeightsError,
        match=r"does not match the resnet18 architecture: shape mismatches: conv1\.weight \(64, 1, 7, 7\) vs \(64, 3, 7, 7\);",
    ):
        load_model("resnet18", weights_file=tmp_path / "gray.pt")


def test_weights_file_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(
        WeightsError,
        match=r"^'.*evil\.pt' could not be loaded with torch\.load\(weights_only=True\) \(it holds pickled Python "
        r"objects other than tensors, which are refused as they could run code\); it must be a state dict",
    ):
        load_model("resnet18", weights_file=tmp_path / "evil.pt")
    assert not marker.exists()


def test_weights_file_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"^'.*list\.pt' does not hold a state dict \(a mapping of parameter names to tensors\)"):
        load_model("resnet18", weights_file=tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(
        WeightsError,
        match=r"^'.*text\.pt' could not be loaded with torch\.load\(weights_only=True\) "
        r"\(not a file written by torch\.save: KeyError: 101\); it must be a state dict",
    ):
        load_model("resnet18", weights_file=tmp_path / "text.pt")


def test_safetensors_weights_file_loads_exactly_those_tensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    path = tmp_path / "tuned.safetensors"
    save_file(state, path)
    loaded = load_model("resnet18", weights_file=path)
    _assert_same_tensors(loaded.module, state)
    assert (loaded.weights, loaded.module.fc.out_features) == ("file:tuned.safetensors", 3)
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match=r"^'.*broken\.safetensors' could not be loaded as a safetensors file \("):
        load_model("resnet18", weights_file=tmp_path / "broken.safetensors")


def test_weights_file_missing(tmp_path):
    with pytest.raises(WeightsError, match=r"^weights file not found: '.*nope\.pt' does not exist; check weights_file$"):
        load_model("resnet18", weights_file=tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match=r"^weights file not found: '.*' is a folder, not a file; check weights_file$"):
        load_model("resnet18", weights_file=tmp_path)


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b3", "vit_b_16"])
def test_preprocessing_equals_the_weights_transforms(name, hymenoptera):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    loaded_pre = Preprocessing.of_weights(weights)
    image = Image.open(real_jpegs(hymenoptera / "val" / "bees", 1)[0]).convert("RGB")
    expected = weights.transforms()(image)
    assert torch.equal(loaded_pre(image), expected)


def test_efficientnet_preset_is_recorded():
    # EfficientNet-B3's weights resize to 320 and crop 300, with bicubic interpolation.
    loaded = load_model("efficientnet_b3", weights="none")
    assert loaded.preprocessing.attrs() == {
        "image_size": 300,
        "resize": 320,
        "crop": 300,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic",
    }


def test_image_size_keeps_the_resize_ratio(hymenoptera):
    loaded = load_model("resnet18", weights="none", image_size=256)
    assert (loaded.preprocessing.resize, loaded.preprocessing.crop) == (293, 256)
    image = Image.open(real_jpegs(hymenoptera / "train" / "ants", 1)[0]).convert("RGB")
    pixels = loaded.preprocessing(image)
    assert tuple(pixels.shape) == (3, 256, 256)
    assert pixels.dtype == torch.float32
    # Normalised with the ImageNet statistics.
    raw = torchvision.transforms.functional.center_crop(
        torchvision.transforms.functional.resize(torchvision.transforms.functional.pil_to_tensor(image), [293], antialias=True),
        [256],
    ).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    np.testing.assert_allclose(pixels.numpy(), ((raw - mean) / std).numpy(), atol=0.05)


# --------------------------------------------------------------------------- weights labels


def test_weights_label_needs_no_model(tmp_path):
    assert weights_label("resnet18") == "IMAGENET1K_V1"  # DEFAULT resolved
    assert weights_label("resnet18", weights="IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert weights_label("resnet18", weights="none") == "none"
    assert weights_label("resnet18", weights="None") == "none"
    assert weights_label("resnet18", weights_file=tmp_path / "tuned.pt") == "file:tuned.pt"
    with pytest.raises(UnknownModelError):
        weights_label("resnet5", weights="none")


def test_weights_label_is_what_the_loaded_model_records(saved_weights):
    path = saved_weights("resnet18")
    for settings in ({"weights": "none"}, {"weights_file": path}):
        assert load_model("resnet18", **settings).weights == weights_label("resnet18", **settings)


@pytest.mark.parametrize(
    "label, parsed",
    [
        ("file:resnet18.pt", ("file", "resnet18.pt")),
        ("file:my:odd.pt", ("file", "my:odd.pt")),
        ("none", ("none", "none")),
        ("IMAGENET1K_V2", ("torchvision", "IMAGENET1K_V2")),
    ],
)
def test_parse_weights_label(label, parsed):
    assert parse_weights_label(label) == parsed
    assert parsed[0] in WEIGHTS_KINDS


def test_parse_weights_label_refuses_an_empty_label():
    with pytest.raises(ConfigError) as raised:
        parse_weights_label("")
    assert str(raised.value) == "weights label must be a non-empty string; got ''"


def test_check_model_name():
    assert check_model_name("vgg16") == "vgg16"
    with pytest.raises(UnknownModelError, match=r"^model must be one of torchvision's \d+ classification models"):
        check_model_name("vgg17")
    # A name no model source claims is answered with torchvision's list.
    with pytest.raises(UnknownModelError, match=r"^model must be one of torchvision's .*; got 'hub/resnet18'; did you mean resnet18, .*\?$"):
        check_model_name("hub/resnet18")
