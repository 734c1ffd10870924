"""The network an extraction runs (featx.extraction probe_layers, TruncatedNetwork): truncation, slices, one build."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx
from conftest import MODEL, quick_extract
from PIL import Image

from networks import build_extractor

from featx.errors import UnknownLayerError
from featx.extraction import FeatureRecipe, load_model
from featx.extraction._network import CPU_FORWARD_BYTES, TruncatedNetwork, build_network, probe_layers
from featx.store import LayerSpec


def test_network_runs_only_up_to_the_deepest_layer():
    loaded = load_model("vgg16", weights="none", image_size=32)
    extractor, shapes, nodes = build_extractor(loaded, ("block1_pool", "block2_conv1"), "flatten")
    assert nodes == {"block1_pool": "features.4", "block2_conv1": "features.6"}
    assert shapes == {"block1_pool": (64, 16, 16), "block2_conv1": (128, 16, 16)}
    assert not hasattr(extractor.body, "classifier")
    assert sorted(dict(extractor.body.features.named_children())) == [str(i) for i in range(7)]
    with torch.inference_mode():
        outputs = extractor(torch.zeros(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"block1_pool": (2, 64 * 16 * 16), "block2_conv1": (2, 128 * 16 * 16)}


def test_cpu_batches_run_in_slices_with_the_same_features(small_dataset):
    loaded = load_model("vgg16", weights="none")
    extractor, _, _ = build_extractor(loaded, ("block1_pool", "block2_conv1"), "avg")
    # The largest activation is block 1's 64 x 224 x 224 floats, held about three times per image.
    assert extractor.micro_batch == CPU_FORWARD_BYTES // (3 * 64 * 224 * 224 * 4) == 13
    extractor.micro_batch = 3
    pixels = torch.stack([loaded.preprocessing(Image.open(p).convert("RGB")) for p in sorted(small_dataset.rglob("*.jpg"))[:4]] * 2)
    with torch.inference_mode():
        sliced = extractor(pixels)
        extractor.micro_batch = None
        whole = extractor(pixels)
    for name in ("block1_pool", "block2_conv1"):
        assert sliced[name].shape == (8, whole[name].shape[1])
        np.testing.assert_allclose(sliced[name].numpy(), whole[name].numpy(), rtol=1e-5, atol=1e-6)


def test_an_image_has_the_same_bits_whichever_images_share_its_pass():
    # Passes of a fixed size, the last one padded: image 0 computed alone, with
    # 2 others or with 4 others gives the same bits (without the padding, a pass
    # of 1 and a pass of 3 images differ in the last bits of ResNet's sums).
    loaded = load_model("resnet18", weights="none", image_size=64)
    extractor, _, _ = build_extractor(loaded, ("layer3", "penultimate"), "avg")
    extractor.micro_batch = 3
    torch.manual_seed(0)
    pixels = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        alone = extractor(pixels[:1])
        three = extractor(pixels[[0, 3, 4]])
        five = extractor(pixels)
    for name in ("layer3", "penultimate"):
        assert alone[name].shape == (1, five[name].shape[1]) and five[name].shape[0] == 5
        assert torch.equal(alone[name][0], three[name][0]) and torch.equal(alone[name][0], five[name][0])
        assert torch.equal(three[name][1:], five[name][3:])


def test_one_probe_gives_every_layer_spec():
    loaded = load_model("alexnet", weights="none", image_size=64)
    plan = probe_layers(loaded, ("conv5", "fc7", "features.0"), "avgmax")
    assert plan.nodes == {"conv5": "features.11", "fc7": "classifier.5", "features.0": "features.0"}
    assert plan.source_shapes == {"conv5": (256, 3, 3), "fc7": (4096,), "features.0": (64, 15, 15)}
    assert plan.pools == {"conv5": "avgmax", "fc7": "none", "features.0": "avgmax"}
    assert plan.dims == {"conv5": 512, "fc7": 4096, "features.0": 128}
    recipe = FeatureRecipe.request(
        "alexnet", ("conv5", "fc7", "features.0"), weights="none", image_size=64, pool="avgmax",
        precision="bf16", dtype="float16",
    )
    network = build_network(recipe)
    assert network.plan == plan
    assert network.specs()[1] == LayerSpec(
        name="fc7", node="classifier.5", pool="none", dim=4096, source_shape=(4096,), precision="bf16", dtype="float16"
    )
    # The resolved recipe records every layer's node and effective pooling.
    assert [(l.name, l.node, l.pool) for l in network.recipe.layers] == [
        ("conv5", "features.11", "avgmax"), ("fc7", "classifier.5", "none"), ("features.0", "features.0", "avgmax")
    ]


def test_a_node_without_a_tensor_output_is_refused():
    loaded = load_model("resnet18", weights="none", image_size=64)
    with pytest.raises(UnknownLayerError, match=r"^unknown layer 'nope' for resnet18; "):
        probe_layers(loaded, ("nope",), "avg")


@pytest.fixture
def traces(monkeypatch):
    """How many times torch.fx traced a module (torchvision traces train and eval mode: two per graph)."""
    count = [0]
    trace = torch.fx.Tracer.trace

    def counted(self, *args, **kwargs):
        count[0] += 1
        return trace(self, *args, **kwargs)

    monkeypatch.setattr(torch.fx.Tracer, "trace", counted)
    return count


def test_the_network_is_built_once_after_the_store_says_what_to_do(synthetic_dataset, tmp_path, traces):
    loaded = load_model(MODEL, weights="none", image_size=64)
    before = traces[0]
    TruncatedNetwork(loaded.module, {"conv2": "layer1.1.relu_1"}, {"conv2": "avg"})
    build = traces[0] - before
    before = traces[0]
    probe_layers(loaded, ("conv2",), "avg")
    probe = traces[0] - before
    assert build > 0 and probe > 0

    def traced(**overrides) -> int:
        before = traces[0]
        quick_extract(synthetic_dataset, tmp_path / "s.h5", **overrides)
        return traces[0] - before

    assert traced(layers=("conv2",)) == probe + build
    # A layer added to the store: the probe covers both, the network is built for the new one only.
    assert traced(layers=("conv2", "conv3")) == probe + build
    # Up to date: nothing is built.
    assert traced(layers=("conv2", "conv3")) == probe


