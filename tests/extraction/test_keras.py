"""Keras applications VGG weights: a Keras-format file written here from a torch model gives that model's features."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import functional as F

from featx import describe_store, open_store
from featx.errors import WeightsError
from featx.extraction import ExtractConfig, extract_features, load_model
from featx.extraction._keras import keras_dense_to_torch, keras_vgg_state_dict
from featx.extraction._network import probe_layers
from featx.store import is_keras_weights_file, read_keras_weights

SIZE = 32
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _keras_layers(model: torchvision.models.VGG, top: bool) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Keras' layers of a torchvision VGG, in Keras' layout, in the order of keras.applications.VGG16."""
    layers, block, conv = [("input_1", [])], 1, 0
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            conv += 1
            name = f"block{block}_conv{conv}"
            kernel = module.weight.detach().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
            layers.append((name, [(f"{name}/kernel:0", kernel), (f"{name}/bias:0", module.bias.detach().numpy())]))
        elif isinstance(module, nn.MaxPool2d):
            layers.append((f"block{block}_pool", []))
            block, conv = block + 1, 0
    if top:
        layers.append(("flatten", []))
        channels = model.features[-3].out_channels
        height, width = model.avgpool.output_size
        linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
        for i, (name, linear) in enumerate(zip(("fc1", "fc2", "predictions"), linears)):
            kernel = linear.weight.detach().numpy().T  # (in, out)
            if i == 0:  # torch flattened (C, H, W); Keras flattens (H, W, C)
                kernel = kernel.reshape(channels, height, width, -1).transpose(1, 2, 0, 3).reshape(channels * height * width, -1)
            layers.append((name, [(f"{name}/kernel:0", kernel), (f"{name}/bias:0", linear.bias.detach().numpy())]))
    return layers


def write_keras_weights(path, model, *, top: bool) -> None:
    """What Keras' model.save_weights writes (the layout of the applications' *_tf_kernels.h5 files)."""
    with h5py.File(path, "w") as f:
        layers = _keras_layers(model, top)
        f.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name, weights in layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([w.encode() for w, _ in weights], dtype="S")
            for weight_name, value in weights:
                group.create_dataset(weight_name, data=value)


@pytest.fixture(scope="module")
def vgg16():
    """torchvision's VGG16 with seeded random convolutions (the classifier stays unallocated: a _notop file has none)."""
    with torch.device("meta"):
        model = torchvision.models.vgg16(weights=None)
    torch.manual_seed(5)
    features = nn.Sequential(*[m for m in model.features]).to_empty(device="cpu")
    for module in features:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(module.bias, std=0.1)
    model.features = features
    return model.eval()


@pytest.fixture(scope="module")
def notop_file(vgg16, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_weights(path, vgg16, top=False)
    return path


def _mini_vgg(channels=(4, 8), classes=3) -> torchvision.models.VGG:
    """A torchvision VGG small enough to hold a top: two blocks, a 2x2 pool, 16-wide dense layers."""
    layers, previous = [], 3
    for width in channels:
        layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)]
        previous = width
    with torch.device("meta"):  # VGG's own 25088x4096 classifier is replaced: not worth allocating
        model = torchvision.models.VGG(nn.Sequential(), init_weights=False)
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    model.classifier = nn.Sequential(
        nn.Linear(previous * 4, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 16), nn.ReLU(True), nn.Dropout(),
        nn.Linear(16, classes),
    )
    return model.eval()


def test_fc1_rows_follow_keras_channels_last_flatten():
    rng = np.random.default_rng(0)
    channels, height, width, out = 3, 2, 4, 5
    keras_kernel = rng.normal(size=(height * width * channels, out)).astype(np.float32)
    feature_map = rng.normal(size=(channels, height, width)).astype(np.float32)
    keras_output = feature_map.transpose(1, 2, 0).reshape(-1) @ keras_kernel  # Keras: Flatten of (H, W, C)
    torch_weight = keras_dense_to_torch(keras_kernel, (channels, height, width))
    assert torch_weight.shape == (out, channels * height * width)
    np.testing.assert_allclose(torch_weight.numpy() @ feature_map.reshape(-1), keras_output, rtol=1e-5)


def test_a_keras_file_with_a_top_maps_every_layer(tmp_path):
    torch.manual_seed(0)
    original = _mini_vgg()
    path = tmp_path / "mini.h5"
    write_keras_weights(path, original, top=True)
    assert is_keras_weights_file(path)
    state, has_top = keras_vgg_state_dict(_mini_vgg(), read_keras_weights(path).layers, path, "mini")
    assert has_top
    assert set(state) == set(original.state_dict())
    for key, value in original.state_dict().items():
        assert torch.equal(state[key], value), key


def test_keras_vgg16_file_gives_the_torch_models_features_with_caffe_preprocessing(vgg16, notop_file, tiny_dataset, tmp_path):
    out = tmp_path / "keras.h5"
    config = ExtractConfig.from_options(
        data=tiny_dataset, out=out, model="vgg16", layers=("block3_conv3", "block5_pool"), weights_file=notop_file,
        image_size=SIZE, batch_size=4, workers=0, device="cpu", progress=False,
        precision="fp32",  # compared with torch's fp32 computation
    )
    extract_features(config)
    with open_store(out) as store:
        ids, got = list(store.ids), {n: store.features(n) for n in ("block3_conv3", "block5_pool")}
        assert store.meta["channel_order"] == "BGR" and store.meta["pixel_range"] == 255
        np.testing.assert_allclose(store.meta["mean"], [103.939, 116.779, 123.68])
        assert store.meta["std"] == [1.0, 1.0, 1.0]
    assert "BGR channels, pixels in [0, 255] (not scaled)" in describe_store(out)
    resize = round(SIZE * 256 / 224)  # torchvision's vgg16 preset, scaled to SIZE
    pixels = []
    for image_id in ids:
        image = F.center_crop(F.resize(Image.open(tiny_dataset / image_id).convert("RGB"), [resize]), [SIZE])
        bgr = np.asarray(image, dtype=np.float32)[:, :, ::-1] - CAFFE_MEAN_BGR  # Keras' preprocess_input, caffe mode
        pixels.append(torch.from_numpy(bgr.transpose(2, 0, 1).copy()))
    with torch.no_grad():
        block3 = vgg16.features[:16](torch.stack(pixels))
        block5 = vgg16.features[16:](block3)
    np.testing.assert_allclose(got["block3_conv3"], block3.mean((2, 3)).numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got["block5_pool"], block5.mean((2, 3)).numpy(), rtol=1e-4, atol=1e-3)


def test_a_notop_file_refuses_the_layers_of_the_missing_top(notop_file):
    loaded = load_model("vgg16", weights_file=notop_file, image_size=SIZE)
    with pytest.raises(WeightsError, match=r"no weights for classifier of vgg16, which computes penultimate .*up to block5_pool"):
        probe_layers(loaded, ["block5_pool", "penultimate"], "avg")


def test_a_keras_file_of_another_architecture_names_the_layers(notop_file, tmp_path):
    with pytest.raises(WeightsError, match=r"does not match vgg19: missing layers block3_conv4, block4_conv4, block5_conv4;"):
        load_model("vgg19", weights_file=notop_file)
    torch.manual_seed(0)
    path = tmp_path / "narrow.h5"
    write_keras_weights(path, _mini_vgg(channels=(4, 6)), top=False)
    with pytest.raises(WeightsError, match=r"misshapen block2_conv1 \(3, 3, 4, 6\) \+ \(6,\) \(expected \(3, 3, 4, 8\) \+ \(8,\)\)"):
        keras_vgg_state_dict(_mini_vgg(), read_keras_weights(path).layers, path, "mini")


def test_a_keras_file_is_read_for_torchvisions_vggs_only(notop_file):
    with pytest.raises(WeightsError, match=r"^'.*_notop\.h5' is a Keras weights file; those are read for torchvision's VGGs "
                       r"without batch norm: 'resnet18'; pass model='vgg16' or model='vgg19'$"):
        load_model("resnet18", weights_file=notop_file)
    pytest.importorskip("timm")
    with pytest.raises(WeightsError, match=r"^'.*_notop\.h5' is a Keras weights file; those are read for torchvision's "
                       r"vgg16 and vgg19 only; pass model='vgg16' or model='vgg19'$"):
        load_model("timm/test_resnet", weights_file=notop_file)
