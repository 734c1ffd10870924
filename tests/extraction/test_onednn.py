"""Convolution chains in oneDNN's blocked layout (featx.extraction blocked_layout): same bits, plain outputs."""

from __future__ import annotations

import pytest
import torch


from networks import build_extractor

from featx.extraction import load_model
from featx.extraction._network import prepare_extractor
from featx.extraction._onednn import BlockedConv2d, blocked_layout

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")

# Model -> layers asked together (a shallow one that a later in-place ReLU would
# change, a deep one) -> how many convolutions run blocked.
CASES = {
    "alexnet": (("features.0", "conv5", "fc7"), 5),
    "vgg11": (("block1_conv1", "block3_pool", "fc2"), 8),
    "resnet18": (("conv2", "penultimate"), 0),  # every convolution sits between batch norms
    "squeezenet1_1": (("features.3", "features.12"), 25),  # ceil_mode max-pooling, concatenations
    "mobilenet_v3_small": (("features.3", "penultimate"), 0),  # grouped convolutions, batch norms
}


def _blocked_convs(module: torch.nn.Module) -> int:
    return sum(isinstance(m, BlockedConv2d) for m in module.modules())


@pytest.mark.parametrize("name", sorted(CASES))
def test_blocked_layout_gives_the_same_bits(name):
    layers, expected_convs = CASES[name]
    loaded = load_model(name, weights="none", image_size=64)
    extractor, _, _ = build_extractor(loaded, layers, "flatten")
    blocked = blocked_layout(extractor.body)
    assert _blocked_convs(blocked) == expected_convs
    if not expected_convs:
        assert blocked is extractor.body
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = extractor.body(pixels)
        got = blocked(pixels)
    assert sorted(got) == sorted(want)
    for node, value in want.items():
        assert not got[node].is_mkldnn, node
        assert got[node].shape == value.shape, node
        assert torch.equal(got[node], value), node


def test_a_shallow_output_keeps_its_value_before_an_in_place_relu():
    loaded = load_model("alexnet", weights="none", image_size=64)
    extractor, _, _ = build_extractor(loaded, ("features.0", "features.1"), "flatten")
    blocked = blocked_layout(extractor.body)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = blocked(pixels)
        conv = loaded.module.features[0](pixels)
    assert torch.equal(got["features.0"], conv)
    assert (got["features.0"] < 0).any()
    assert torch.equal(got["features.1"], torch.relu(conv))


def test_the_original_graph_is_left_as_it_was():
    loaded = load_model("vgg11", weights="none", image_size=32)
    extractor, _, _ = build_extractor(loaded, ("block2_pool",), "avg")
    code = extractor.body.code
    blocked_layout(extractor.body)
    assert extractor.body.code == code
    assert _blocked_convs(extractor.body) == 0


@pytest.mark.parametrize("precision, expected_convs", [("fp32", 2), ("bf16", 0)])
def test_the_engine_uses_it_on_the_cpu_in_fp32_only(precision, expected_convs):
    loaded = load_model("vgg11", weights="none", image_size=32)
    extractor, _, _ = build_extractor(loaded, ("block2_pool",), "avg")
    prepared = prepare_extractor(extractor, torch.device("cpu"), precision)
    assert _blocked_convs(prepared) == expected_convs



def test_an_output_reused_by_deeper_layers_is_copied_once():
    loaded = load_model("vgg11", weights="none", image_size=32)
    extractor, _, _ = build_extractor(loaded, ("block1_pool", "block2_pool"), "flatten")
    plain_clones = [n for n in extractor.body.graph.nodes if n.op == "call_method" and n.target == "clone"]
    blocked = blocked_layout(extractor.body)
    methods = [n.target for n in blocked.graph.nodes if n.op == "call_method"]
    # The plain graph copies block1_pool before block 2 reads it; the conversion back
    # to a plain tensor is that copy in the blocked graph.
    assert len(plain_clones) == 1
    assert methods == ["to_mkldnn", "to_dense", "to_dense"]
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want, got = extractor.body(pixels), blocked(pixels)
    assert all(torch.equal(got[node], want[node]) for node in want)
