"""Layer names, aliases, shapes, the listing and the `layers` command (featx.extraction GraphLayerIndex, list_layers)."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from featx.errors import ConfigError, UnknownLayerError
from featx.extraction import format_layers, list_layers
from featx.extraction._layers import GraphLayerIndex, LayerInfo


def _index(name: str, image_size: int = 224) -> GraphLayerIndex:
    torch.manual_seed(0)
    return GraphLayerIndex(torchvision.models.get_model(name).eval(), image_size=image_size, name=name)


@pytest.fixture(scope="module")
def vgg19_256() -> GraphLayerIndex:
    return _index("vgg19", 256)


@pytest.fixture(scope="module")
def alexnet() -> GraphLayerIndex:
    return _index("alexnet")


@pytest.fixture(scope="module")
def resnet18() -> GraphLayerIndex:
    return _index("resnet18", 64)


# --------------------------------------------------------------------------- shapes and parameters


def test_vgg19_at_256_reads_like_the_keras_summary(vgg19_256):
    rows = {row.node: row for row in vgg19_256.describe()}
    by_alias = {alias: row for row in rows.values() for alias in row.aliases}
    expected_shapes = {
        "block1_conv1": (64, 256, 256),
        "block1_pool": (64, 128, 128),
        "block2_pool": (128, 64, 64),
        "block3_conv4": (256, 64, 64),
        "block3_pool": (256, 32, 32),
        "block4_pool": (512, 16, 16),
        "block5_conv4": (512, 16, 16),
        "block5_pool": (512, 8, 8),
        "fc1": (4096,),
        "fc2": (4096,),
        "predictions": (1000,),
    }
    for alias, shape in expected_shapes.items():
        assert by_alias[alias].shape == shape, alias
    # Keras' parameter counts of VGG19 (weights + biases), on the conv/dense nodes.
    expected_params = {
        "features.0": 1_792,  # block1_conv1
        "features.2": 36_928,  # block1_conv2
        "features.5": 73_856,  # block2_conv1
        "features.10": 295_168,  # block3_conv1
        "features.19": 1_180_160,  # block4_conv1
        "features.34": 2_359_808,  # block5_conv4
        "classifier.0": 102_764_544,  # fc1
        "classifier.3": 16_781_312,  # fc2
        "classifier.6": 4_097_000,  # predictions
    }
    assert {node: rows[node].params for node in expected_params} == expected_params
    assert sum(row.params for row in rows.values()) == 143_667_240
    # Channels and reduction (input pixels per step of the map), as timm's FeatureInfo gives them.
    assert [(by_alias[a].channels, by_alias[a].reduction) for a in ("block1_conv1", "block3_pool", "block5_pool", "fc1")] == [
        (64, 1), (256, 8), (512, 32), (4096, None)
    ]
    # Aliases are post-activation: block1_conv1 is the ReLU after the first conv.
    assert vgg19_256.resolve("block1_conv1") == "features.1"


def test_layers_command_vgg19(run_cli):
    code, out, err = run_cli("layers", "--model", "vgg19", "--image-size", "256")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "vgg19 at 256x256: 47 layers (42 shown; --all for every node)"
    rows = {line.split()[0]: line for line in lines[3:-1]}
    assert re.fullmatch(r"features\.9\s+block2_pool, pool2\s+128x64x64\s+0\s+260,160", rows["features.9"])
    # params up to here: Keras' VGG19(include_top=False) total at block5_pool
    assert re.fullmatch(r"features\.36\s+block5_pool, pool5, features\s+512x8x8\s+0\s+20,024,384", rows["features.36"])
    assert re.fullmatch(r"features\.0\s+64x256x256\s+1,792\s+1,792", rows["features.0"])
    assert lines[-1] == "total params: 143,667,240"


def test_layers_command_resnet50(run_cli):
    code, out, err = run_cli("layers", "--model", "resnet50")
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[3:-1]}
    assert re.fullmatch(r"layer4\.2\.relu_2\s+conv5, last_conv, layer4\s+2048x7x7\s+0\s+23,508,032", rows["layer4.2.relu_2"])
    assert re.fullmatch(r"relu\s+stem\s+64x112x112\s+0(\s+[\d,]+)?", rows["relu"])
    assert re.fullmatch(r"conv1\s+64x112x112\s+9,408(\s+[\d,]+)?", rows["conv1"])  # the node, no alias
    assert re.fullmatch(r"flatten\s+penultimate\s+2048\s+0\s+23,508,032", rows["flatten"])
    assert re.fullmatch(r"fc\s+logits\s+1000\s+2,049,000\s+25,557,032", rows["fc"])
    assert out.splitlines()[-1] == "total params: 25,557,032"


def test_shapes_match_a_forward_pass(resnet18):
    nodes = ["maxpool", "layer2", "layer4", "flatten", "fc"]
    extractor = create_feature_extractor(resnet18.model, return_nodes=nodes)
    with torch.inference_mode():
        outputs = extractor(torch.zeros(1, 3, 64, 64))
    assert {n: resnet18.shapes[resnet18.resolve(n)] for n in nodes} == {
        n: tuple(outputs[n].shape[1:]) for n in nodes
    }


# --------------------------------------------------------------------------- aliases


def test_alexnet_caffe_aliases(alexnet):
    expected = {
        "conv1": "features.1",
        "pool1": "features.2",
        "conv2": "features.4",
        "pool2": "features.5",
        "conv3": "features.7",
        "conv4": "features.9",
        "conv5": "features.11",
        "pool5": "features.12",
        "fc6": "classifier.2",
        "fc7": "classifier.5",
        "fc8": "classifier.6",
        "penultimate": "classifier.5",
        "logits": "classifier.6",
        "last_conv": "features.11",
    }
    assert {alias: alexnet.resolve(alias) for alias in expected} == expected


def test_vgg_keras_and_caffe_aliases():
    index = _index("vgg16")
    expected = {
        "block1_conv1": "features.1",
        "conv1_1": "features.1",
        "block1_conv2": "features.3",
        "conv1_2": "features.3",
        "block1_pool": "features.4",
        "pool1": "features.4",
        "block2_pool": "features.9",
        "block3_conv3": "features.15",
        "conv3_3": "features.15",
        "block5_conv3": "features.29",
        "conv5_3": "features.29",
        "conv5": "features.29",
        "block5_pool": "features.30",
        "pool5": "features.30",
        "fc1": "classifier.1",
        "fc6": "classifier.1",
        "fc2": "classifier.4",
        "fc7": "classifier.4",
        "predictions": "classifier.6",
        "fc8": "classifier.6",
        "penultimate": "classifier.4",
        "logits": "classifier.6",
        "last_conv": "features.29",
    }
    assert {alias: index.resolve(alias) for alias in expected} == expected
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'block5_conv4' for vgg16"):
        index.resolve("block5_conv4")  # VGG16 has three convs in block 5


def test_vgg_with_batch_norm_aliases_follow_the_relu():
    index = _index("vgg11_bn")
    assert index.resolve("block1_conv1") == "features.2"  # conv, bn, relu
    assert index.resolve("block1_pool") == "features.3"


def test_resnet_stage_aliases(resnet18):
    expected = {
        # A node name means that node: conv1 is the bare stem convolution; the paper's
        # conv1 stage (after BN and ReLU), featx 0.1's alias 'conv1', is 'stem'.
        "conv1": "conv1",
        "stem": "relu",
        "conv2": "layer1.1.relu_1",
        "conv3": "layer2.1.relu_1",
        "conv4": "layer3.1.relu_1",
        "conv5": "layer4.1.relu_1",
        "layer4": "layer4.1.relu_1",
        "penultimate": "flatten",
        "logits": "fc",
        "last_conv": "layer4.1.relu_1",
    }
    assert {alias: resnet18.resolve(alias) for alias in expected} == expected


def test_graph_nodes_and_module_paths(resnet18, alexnet):
    assert resnet18.resolve("layer1.0.bn2") == "layer1.0.bn2"
    assert resnet18.resolve("avgpool") == "avgpool"
    assert resnet18.resolve("layer3.0") == "layer3.0.relu_1"
    assert alexnet.resolve("features") == "features.12"
    assert alexnet.resolve("features.0") == "features.0"


def test_generic_aliases_on_other_families():
    mobilenet = _index("mobilenet_v3_small", 64)
    # The last Linear's input, looking through the dropout (the identity at inference).
    assert mobilenet.resolve("penultimate") == "classifier.1"
    assert mobilenet.resolve("last_conv") == "features.12"
    squeezenet = _index("squeezenet1_0", 64)  # no Linear: the final classifier is a conv
    assert squeezenet.resolve("logits") == "flatten"
    assert squeezenet.resolve("penultimate") == "features.12.cat"  # the input of the final 1x1 conv
    assert squeezenet.resolve("last_conv") == "features.12.cat"  # not the dropout that follows it


def test_unknown_layer_lists_close_matches_and_the_layers_command(alexnet):
    with pytest.raises(UnknownLayerError) as info:
        alexnet.resolve("conv6")
    assert str(info.value) == (
        "unknown layer 'conv6' for alexnet; did you mean conv5, conv4, conv3, conv2, conv1? valid names are "
        "graph nodes, module paths and aliases (conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5, ...); "
        "list them with `featx layers --model alexnet`"
    )


def test_describe_rows_follow_execution_order(alexnet):
    rows = alexnet.describe()
    assert [row.node for row in rows] == alexnet.nodes
    by_node = {row.node: row for row in rows}
    assert by_node["x"].shape == (3, 224, 224)
    assert by_node["features.0"].params == 64 * 3 * 11 * 11 + 64
    assert by_node["features.11"].aliases == ("conv5", "last_conv")
    assert by_node["features.12"].aliases == ("pool5", "features")
    assert by_node["classifier.6"].aliases == ("fc8", "logits", "classifier")


# --------------------------------------------------------------------------- listing


def test_list_layers_and_its_table():
    listing = list_layers("resnet18", image_size=64)
    assert (listing.model, listing.image_size, len(listing.rows), len(listing.shown)) == ("resnet18", 64, 70, 47)
    assert listing.total_params == 11_689_512
    assert listing.shown[-1] == listing.rows[-1] == LayerInfo("fc", ("logits",), (1000,), 513_000, 11_689_512)
    lines = format_layers(listing).splitlines()
    assert lines[:4] == [
        "resnet18 at 64x64: 70 layers (47 shown; --all for every node)",
        "layer (graph node)     aliases                   output shape     params  params up to here",
        "---------------------  ------------------------  ------------  ---------  -----------------",
        "conv1                                                64x32x32      9,408              9,408",
    ]
    assert lines[-1] == "total params: 11,689,512"
    assert len(lines) == 3 + 47 + 1
    every = list_layers("resnet18", image_size=64, show_all=True)
    assert every.shown == every.rows
    assert format_layers(every).splitlines()[0] == "resnet18 at 64x64: 70 layers"


def test_list_layers_defaults_to_the_weights_crop():
    assert list_layers("alexnet").image_size == 224


@pytest.mark.parametrize("size", [0, -1])
def test_list_layers_refuses_a_size_that_is_not_positive(size):
    with pytest.raises(ConfigError) as raised:
        list_layers("alexnet", image_size=size)
    assert str(raised.value) == f"image_size must be a positive integer (the input size in pixels); got {size}"
