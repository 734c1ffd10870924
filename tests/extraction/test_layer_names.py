"""Layer names that never lie: a graph node name always means that node; aliases never shadow one.

ResNet's ``conv1`` is torchvision's node ``conv1`` (the bare stem convolution);
the stem after batch norm and ReLU, which featx 0.1 called ``conv1``, is
``stem``.  Aliases that collide with no node (AlexNet's and VGG's ``conv5``,
ResNet's ``conv2``..``conv5``) keep their meaning.
"""

from __future__ import annotations

import logging
import shutil
from functools import cache

import numpy as np
import pytest
import torch
import torchvision
from conftest import real_jpegs
from PIL import Image

from featx.extraction import ExtractConfig, extract_features, format_layers, list_layers, load_model
from featx.extraction._layers import GraphLayerIndex
from featx.store import open_store


@cache
def _index(name: str) -> GraphLayerIndex:
    """The names of a model, built on the meta device: names need the graph, not weights (VGG's take seconds)."""
    with torch.device("meta"):
        model = torchvision.models.get_model(name).eval()
    return GraphLayerIndex(model, name=name)


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    """A CLI run of another test may have left a handler bound to a closed capsys stream."""
    logging.getLogger("featx").handlers.clear()


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg11", "mobilenet_v3_small", "squeezenet1_0", "densenet121"])
def test_every_graph_node_name_means_that_node(name):
    index = _index(name)
    assert {node: index.resolve(node) for node in index.nodes} == {node: node for node in index.nodes}
    assert set(index.aliases) & set(index.nodes) == set()  # no alias is spelled like a node


def test_resnet_conv1_is_the_convolution_and_stem_the_relu_after_it(tmp_path, hymenoptera):
    data = tmp_path / "data"
    data.mkdir()
    for src in real_jpegs(hymenoptera / "val" / "ants", 2):
        shutil.copy(src, data / src.name)
    result = extract_features(
        ExtractConfig.from_options(
            data=data, model="resnet18", layers=("conv1", "stem"), weights="none", image_size=64,
            out=tmp_path / "s.h5", workers=0, device="cpu", progress=False, precision="fp32",
        )
    )
    loaded = load_model("resnet18", weights="none", image_size=64)
    batch = torch.stack([loaded.preprocessing(Image.open(p).convert("RGB")) for p in sorted(data.glob("*.jpg"))])
    with torch.inference_mode():
        conv = loaded.module.conv1(batch)
        stem = torch.relu(loaded.module.bn1(conv))
    with open_store(result.path) as store:
        assert (store.layer_info("conv1")["node"], store.layer_info("stem")["node"]) == ("conv1", "relu")
        np.testing.assert_allclose(store.features("conv1"), conv.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(store.features("stem"), stem.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
        assert (store.features("conv1") < 0).any()  # before the ReLU


def test_aliases_that_collide_with_no_node_keep_their_meaning():
    resnet = _index("resnet18")
    assert {a: resnet.resolve(a) for a in ("conv2", "conv3", "conv4", "conv5", "stem")} == {
        "conv2": "layer1.1.relu_1", "conv3": "layer2.1.relu_1", "conv4": "layer3.1.relu_1",
        "conv5": "layer4.1.relu_1", "stem": "relu",
    }
    alexnet = _index("alexnet")
    assert [alexnet.resolve(f"conv{i}") for i in range(1, 6)] == [f"features.{i}" for i in (1, 4, 7, 9, 11)]
    vgg = _index("vgg11")
    assert [vgg.resolve(a) for a in ("conv5", "block5_conv2", "conv1")] == ["features.19", "features.19", "features.1"]


def test_layers_lists_the_node_and_the_alias_pointing_at_the_stem():
    listing = list_layers("resnet18", image_size=64)
    rows = {row.node: row for row in listing.rows}
    assert (rows["conv1"].aliases, rows["conv1"].shape, rows["conv1"].params) == ((), (64, 32, 32), 9_408)
    assert (rows["relu"].aliases, rows["relu"].shape) == (("stem",), (64, 32, 32))
    lines = {line.split()[0]: line.split() for line in format_layers(listing).splitlines()[3:-1]}
    # Node, aliases (none for conv1), shape, params; further columns may follow.
    assert lines["conv1"][:3] == ["conv1", "64x32x32", "9,408"]
    assert lines["relu"][:4] == ["relu", "stem", "64x32x32", "0"]


def test_a_former_alias_says_where_its_meaning_went(caplog):
    resnet = _index("resnet18")
    with caplog.at_level(logging.INFO, logger="featx"):
        assert resnet.resolve("conv1") == "conv1"
        resnet.resolve("conv2")
    assert [r.getMessage() for r in caplog.records] == [
        (
            "layer 'conv1' is resnet18's graph node conv1; featx 0.1 read 'conv1' as the node relu, "
            "which is now called 'stem'"
        )
    ]
