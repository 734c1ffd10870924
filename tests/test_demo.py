"""The main job (`demo`) on a few digits per class, offline.

``TORCH_HOME`` points at an empty folder, so pretrained weights are missing
unless a test puts a (random) state dict where torchvision's cache file goes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from sklearn.naive_bayes import GaussianNB
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from featx import open_store
from featx.demo import DEMO_CLASSIFIERS, DemoConfig, choose_weights, format_demo, run_demo
from featx.errors import DemoError, UnknownModelError
from featx.extraction import weights_cache_path

NETWORKS = ("resnet18", "mobilenet_v3_small")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _fake_pretrained(name: str) -> Path:
    """A seeded random state dict saved where torchvision looks for the DEFAULT weights."""
    path = weights_cache_path(torchvision.models.get_model_weights(name).DEFAULT)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
    return path


def _config(tmp_path: Path, **options) -> DemoConfig:
    defaults = dict(
        data=tmp_path / "data" / "digits", image_size=32, per_class=2, download=False,
        features_dir=tmp_path / "features", runs_dir=tmp_path / "runs", workers=0, progress=False, sweep=False,
    )
    return DemoConfig(**{**defaults, **options})


def test_defaults_are_two_networks_and_four_classifiers():
    config = DemoConfig()
    assert config.networks == NETWORKS
    assert config.classifiers == DEMO_CLASSIFIERS == ("svm", "logreg", "bayes", "xgboost")
    assert config.data_folder == Path("data/digits") and config.weights == "auto"
    assert DemoConfig(per_class=3).data_folder == Path("data/digits-3-per-class")


def test_choose_weights_without_cache_falls_back_in_one_note(torch_home: Path):
    # From Python the note names keyword arguments; the command line's says --offline and --weights none
    # (test_cli_demo).
    chosen, note = choose_weights(NETWORKS, download=False)
    assert chosen == {"resnet18": "none", "mobilenet_v3_small": "none"}
    files = [weights_cache_path(torchvision.models.get_model_weights(n).DEFAULT) for n in NETWORKS]
    assert all(str(f).startswith(str(torch_home)) for f in files)
    assert note == (
        f"pretrained weights for resnet18, mobilenet_v3_small are not cached ({files[0]}, {files[1]}) and were "
        "not downloaded (download=False): using a seeded random initialisation (weights='none') instead; every "
        "store and result is labelled random-init"
    )


def test_choose_weights_uses_cached_ones(torch_home: Path):
    _fake_pretrained("resnet18")
    chosen, note = choose_weights(NETWORKS, download=False)
    assert chosen == {"resnet18": "DEFAULT", "mobilenet_v3_small": "none"}
    assert note.startswith("pretrained weights for mobilenet_v3_small are not cached (")
    assert choose_weights(NETWORKS, weights="none") == ({"resnet18": "none", "mobilenet_v3_small": "none"}, None)


def test_demo_offline_labels_everything_random_init(torch_home: Path, tmp_path: Path, capsys):
    config = _config(tmp_path, classifiers=("svm", "logreg", "bayes"))
    result = run_demo(config)
    out = capsys.readouterr().out
    assert out.count("are not cached") == 1 and out.startswith("pretrained weights for resnet18, mobilenet_v3_small")

    assert [row.label for row in result.rows] == [
        "resnet18 (random-init)", "mobilenet_v3_small (random-init)", "resnet18 + mobilenet_v3_small (random-init)",
    ]
    assert [row.dim for row in result.rows] == [512, 1024, 1536]
    assert (result.n_images, result.n_train, result.n_test) == (40, 20, 20)
    stores = result.rows[2].stores
    assert [s.name for s in stores] == ["resnet18-random-init-32.h5", "mobilenet_v3_small-random-init-32.h5"]
    for store in stores:
        with open_store(store) as s:
            assert (s.meta["weights"], s.meta["seed"], s.meta["crop"], len(s)) == ("none", 0, 32, 40)
    assert [row.run.out_dir.name for row in result.rows] == [
        "resnet18-random-init", "mobilenet_v3_small-random-init", "resnet18+mobilenet_v3_small-random-init",
    ]
    assert all((row.run.out_dir / "results.json").is_file() for row in result.rows)

    # The resnet18 row equals a direct scikit-learn computation on the store.
    with open_store(stores[0]) as s:
        X, y, train = s.features("penultimate"), s.labels, s.splits == "train"
    scaled = StandardScaler().fit(X[train]).transform(X)
    accuracy = {r.name: r.accuracy for r in result.rows[0].run.results}
    assert accuracy["bayes"] == GaussianNB().fit(scaled[train], y[train]).score(scaled[~train], y[~train])
    assert accuracy["svm"] == SVC(kernel="rbf").fit(scaled[train], y[train]).score(scaled[~train], y[~train])

    table = format_demo(result)
    line = next(t for t in table.splitlines() if t.startswith("resnet18 (random-init)"))
    assert line.split()[2:] == ["512", f"{accuracy['svm']:.3f}", f"{result.rows[0].run.results[0].fit_seconds:.2f}s",
                                f"{accuracy['logreg']:.3f}", f"{result.rows[0].run.results[1].fit_seconds:.2f}s",
                                f"{accuracy['bayes']:.3f}", f"{result.rows[0].run.results[2].fit_seconds:.2f}s"]
    assert "note: random-init = seeded random initialisation, not pretrained" in table
    assert f"  {stores[0]}" in table and f"  {result.rows[2].run.out_dir}/" in table

    # Running it again reuses the digits and the stores.
    before = [s.stat().st_mtime_ns for s in stores]
    run_demo(config)
    assert [s.stat().st_mtime_ns for s in stores] == before


def test_demo_with_cached_weights_says_pretrained(torch_home: Path, tmp_path: Path, capsys):
    _fake_pretrained("resnet18")
    result = run_demo(_config(tmp_path, networks=("resnet18",), classifiers=("bayes",), per_class=1))
    assert "not cached" not in capsys.readouterr().out
    assert [row.label for row in result.rows] == ["resnet18 (pretrained)"]
    (store,) = result.rows[0].stores
    assert store.name == "resnet18-pretrained-32.h5"
    with open_store(store) as s:
        assert s.meta["weights"] == "IMAGENET1K_V1" and len(s) == 20
    assert "note:" not in format_demo(result)


def test_cli_demo(run_cli, torch_home: Path, tmp_path: Path):
    code, out, err = run_cli(
        "demo", "--offline", "--per-class", "1", "--image-size", "32", "--network", "resnet18", "--classifiers",
        "bayes,logreg", "--data", tmp_path / "d" / "digits", "--features-dir", tmp_path / "f", "--runs-dir",
        tmp_path / "r", "--no-progress", "--workers", "0",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("pretrained weights for resnet18 are not cached (")
    assert lines[0].endswith(
        ") and were not downloaded (--offline): using a seeded random initialisation (--weights none) instead; "
        "every store and result is labelled random-init"
    )
    assert lines[1] == f"digits: 20 images of 8x8 pixels at 32x32, 10 train / 10 test, 10 classes ({tmp_path / 'd' / 'digits'})"
    header = next(line for line in lines if line.startswith("network (weights)"))
    assert header.split() == ["network", "(weights)", "features", "bayes", "logreg"]
    assert any(line.startswith("resnet18 (random-init)") for line in lines)
    assert (tmp_path / "f" / "digits" / "resnet18-random-init-32.h5").is_file()


def test_bad_options():
    with pytest.raises(DemoError, match=r"^image_size must be at least 32; got 16; the default is 64$"):
        DemoConfig(image_size=16)
    with pytest.raises(
        UnknownModelError,
        match=r"^networks must be one of torchvision's \d+ classification models \(alexnet, .*\); got 'resnet81'; "
        r"did you mean resnet18",
    ):
        DemoConfig(networks=("resnet81",))
    with pytest.raises(DemoError, match=r"^weights must be one of auto, DEFAULT, none; got 'imagenet'$"):
        DemoConfig(weights="imagenet")
    with pytest.raises(DemoError, match=r"^a network is given twice: 'resnet18, resnet18'; give each once$"):
        DemoConfig(networks=("resnet18", "resnet18"))
    with pytest.raises(DemoError, match=r"^per_class must be a positive integer; got 0$"):
        DemoConfig(per_class=0)
    with pytest.raises(
        DemoError,
        match=r"^classifiers must be comma-separated classifier families, each one of svm, logreg, bayes, "
        r"xgboost, mlp, knn; got 'svm,knm'$",
    ):
        DemoConfig(classifiers=("svm", "knm"))


def test_cli_refuses_an_unknown_classifier_before_any_work(tmp_path, run_cli):
    code, out, err = run_cli(
        "demo", "--classifiers", "svm,knm", "--data", tmp_path / "digits", "--features-dir", tmp_path / "f",
        "--runs-dir", tmp_path / "r", "--offline",
    )
    assert code == 2 and out == ""
    assert err == (
        "error: --classifiers must be comma-separated classifier families, each one of svm, logreg, bayes, "
        "xgboost, mlp, knn; got 'svm,knm'\n"
    )
    assert not (tmp_path / "digits").exists() and not (tmp_path / "f").exists()


def test_demo_ends_with_a_layer_sweep(torch_home: Path, tmp_path: Path):
    result = run_demo(_config(tmp_path, networks=("resnet18",), classifiers=("svm", "bayes"), per_class=2, sweep=True))
    sweep = result.sweep
    # The demo's own digits (2 per class and split), the quick classifiers among the demo's, every stage.
    assert sweep.config.data == tmp_path / "data" / "digits" and sweep.config.classifiers == ("bayes",)
    assert [r.layer for r in sweep.rows] == ["conv2", "conv3", "conv4", "conv5", "penultimate"]
    assert sweep.plot_path == tmp_path / "runs" / "digits" / "sweep" / "accuracy-by-layer.png"
    assert sweep.plot_path.is_file() and sweep.report_path.is_file()
    lines = format_demo(result).splitlines()
    best = sweep.best
    assert lines[-5:-2] == [
        f"which layer? resnet18 swept over 5 cells (layers x bayes) on {tmp_path / 'data' / 'digits'}: best "
        f"resnet18 {best.layer} with bayes, accuracy {best.accuracy:.3f}",
        f"  plot:   {sweep.plot_path}",
        f"  report: {sweep.report_path}",
    ]
