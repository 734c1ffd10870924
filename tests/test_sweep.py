"""featx sweep: one pass per network, rows equal to classify's, the plot, the report, a re-run that computes nothing."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib.image
import pytest
from conftest import copy_real_images

import featx
import featx.extraction
from featx.classification import ClassifyConfig, run_classification
from featx.errors import ConfigError, OutputPathError, UnknownLayerError, UnknownModelError
from featx.extraction import list_layers
from featx.layer_sweep import CSV_COLUMNS, SweepConfig, auto_layers, format_sweep, plan_sweep, run_sweep

NETWORKS = ("resnet18", "alexnet")
CLASSIFIERS = ("logreg", "bayes")
EXTRACT = {"weights": "none", "image_size": 64, "batch_size": 16, "workers": 0}


def _config(data: Path, root: Path, **options) -> SweepConfig:
    settings = dict(data=data, networks=NETWORKS, classifiers=CLASSIFIERS, out=root / "sweep",
                    features_dir=root / "features", progress=False, extract=EXTRACT)
    return SweepConfig(**{**settings, **options})


class _CountingExtract:
    """Wraps extract_features: which network each call extracted, with which layers, and what it computed."""

    def __init__(self):
        self.calls: list[tuple[str, tuple[str, ...], int, bool]] = []
        self.extract = featx.extraction.extract_features

    def __call__(self, config):
        result = self.extract(config)
        self.calls.append((config.recipe.model, tuple(layer.name for layer in config.recipe.layers), result.images,
                           result.up_to_date))
        return result


@pytest.fixture(scope="module")
def swept(tmp_path_factory, hymenoptera):
    """A sweep of resnet18 and alexnet (random weights, 64x64), layer auto, logreg and bayes, on 12 real JPEGs."""
    root = tmp_path_factory.mktemp("sweep")
    data = copy_real_images(hymenoptera, root / "small")
    counting = _CountingExtract()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(featx.extraction, "extract_features", counting)
        result = run_sweep(_config(data, root))
        first = list(counting.calls)
        # The same sweep through the Python API: its options map onto the same stores.
        again = featx.sweep(data, networks=NETWORKS, classifiers=",".join(CLASSIFIERS), out=root / "sweep",
                            features_dir=root / "features", progress=False, **EXTRACT)
    return root, data, result, first, counting.calls[len(first):], again


def test_auto_layers_are_the_stage_outputs_and_penultimate():
    expected = {
        "resnet18": ["conv2", "conv3", "conv4", "conv5", "penultimate"],
        "alexnet": ["conv2", "conv3", "conv4", "conv5", "penultimate"],
        "vgg11": ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool", "penultimate"],
        "timm/tf_efficientnet_lite0": ["stage0", "stage1", "stage2", "stage3", "stage4", "penultimate"],
        # No stage aliases: block outputs spread over the depth (their module paths).
        "mobilenet_v3_small": ["features.3", "features.6", "features.8", "penultimate"],
    }
    for model, names in expected.items():
        rows = list_layers(model, image_size=64).rows
        chosen = auto_layers(rows)
        assert [name for name, _ in chosen] == names, model
        nodes = [r.node for r in rows]
        assert [nodes.index(node) for _, node in chosen] == sorted(nodes.index(node) for _, node in chosen)


def test_one_forward_pass_per_network(swept):
    _, _, result, first, _, _ = swept
    auto = ("conv2", "conv3", "conv4", "conv5", "penultimate")
    # One extraction per network, every layer in it, each of the 12 images computed once.
    assert first == [("resnet18", auto, 12, False), ("alexnet", auto, 12, False)]
    for e in result.extractions:
        with featx.open_store(e.store) as store:
            assert store.layers == sorted(auto) and len(store) == 12 and store.complete


def test_rows_equal_classify_run_alone(swept, tmp_path):
    _, _, result, _, _, _ = swept
    stores = {e.network: e.store for e in result.extractions}
    assert len(result.rows) == (5 + 5 + 1) * 2
    saved = json.loads(result.json_path.read_text())["rows"]
    with open(result.csv_path, newline="") as file:
        table = list(csv.DictReader(file))
    assert tuple(table[0]) == CSV_COLUMNS
    for row, record, line in zip(result.rows, saved, table):
        if row.depth is None:  # the concatenation of each network's best layer
            best = {
                n: max((r for r in result.rows if r.network == n), key=lambda r: r.accuracy).layer for n in NETWORKS
            }
            assert row.network == "resnet18 + alexnet" and row.layer == f"{best['resnet18']} + {best['alexnet']}"
            specs = tuple(f"{stores[n]}:{best[n]}" for n in NETWORKS)
        else:
            specs = (f"{stores[row.network]}:{row.layer}",)
        alone = run_classification(ClassifyConfig(features=specs, models=row.classifier, out=tmp_path / "alone",
                                                  overwrite=True, plots=False))
        (r,) = alone.results
        assert (row.accuracy, row.balanced_accuracy, row.macro_f1, row.columns) == (
            r.accuracy, r.balanced_accuracy, r.macro_f1, alone.n_features)
        assert {k: record[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "columns")} == {
            "accuracy": r.accuracy, "balanced_accuracy": r.balanced_accuracy, "macro_f1": r.macro_f1,
            "columns": alone.n_features}
        assert (float(line["accuracy"]), float(line["macro_f1"]), int(line["columns"])) == (
            r.accuracy, r.macro_f1, alone.n_features)
        assert (line["network"], line["layer"], line["classifier"]) == (row.network, row.layer, row.classifier)
    # Relative depth: the layer's place among the network's nodes, in (0, 1).
    nodes = [r.node for r in list_layers("resnet18", image_size=64).rows]
    conv3 = next(r for r in result.rows if (r.network, r.layer) == ("resnet18", "conv3"))
    assert conv3.depth == round(nodes.index("layer2.1.relu_1") / (len(nodes) - 1), 4)


def test_plot_has_one_panel_per_network(swept):
    _, _, result, _, _, _ = swept
    pixels = matplotlib.image.imread(result.plot_path)
    assert pixels.shape == (380, 920, 4)  # two panels of 4.6 x 3.8 inches at 100 dpi
    saved = json.loads(result.json_path.read_text())
    assert saved["plot"] == {"file": "accuracy-by-layer.png", "panels": 2, "networks": list(NETWORKS)}


def test_report_is_one_self_contained_file(swept):
    _, _, result, _, _, _ = swept
    text = result.report_path.read_text()
    assert re.findall(r"https?://", text) == []
    assert re.findall(r"<link|<script|@import|url\(", text) == []
    sources = re.findall(r"""src\s*=\s*["']?([^"' >]*)""", text)
    assert sources and all(s.startswith("data:image/") for s in sources)
    best = result.best
    run = json.loads((best.run_dir / "results.json").read_text())
    import pandas as pd

    frame = pd.read_csv(best.run_dir / f"predictions-{best.classifier}.csv", dtype=str)
    wrong = int((frame["true"] != frame["predicted"]).sum())
    assert len(sources) == 1 + wrong  # the plot, and a thumbnail of each misclassified image
    assert f"{wrong} of {len(frame)} evaluation images misclassified" in text or wrong == 0
    assert run["results"][[r["name"] for r in run["results"]].index(best.classifier)]["accuracy"] == best.accuracy
    assert text.count('<tr class="best">') == 1


def test_rerun_computes_nothing(swept):
    _, _, result, _, again_calls, again = swept
    assert [(model, images, up_to_date) for model, _, images, up_to_date in again_calls] == [
        ("resnet18", 0, True), ("alexnet", 0, True)]
    assert [r.accuracy for r in again.rows] == [r.accuracy for r in result.rows]
    assert "reused (nothing computed)" in format_sweep(again)


def test_printed_table_marks_the_best_cell(swept):
    _, _, result, _, _, _ = swept
    text = format_sweep(result)
    best = result.best
    marked = [line for line in text.splitlines() if " *" in line and not line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[:2] == best.network.split()[:1] + best.layer.split()[:1]
    assert f"* best: {best.network} {best.layer} with {best.classifier}, accuracy {best.accuracy:.3f}" in text


def test_cli_sweep_reuses_the_stores(swept, run_cli):
    root, data, result, _, _, _ = swept
    code, out, err = run_cli(
        "sweep", "--data", data, "--network", "resnet18", "--network", "alexnet", "--layer", "auto",
        "--classifiers", "logreg,bayes", "--weights", "none", "--image-size", "64", "--batch-size", "16",
        "--workers", "0", "--features-dir", root / "features", "--out", root / "cli", "--no-progress",
    )
    assert code == 0, err
    assert out.count("reused (nothing computed)") == 2
    assert f"report: {root / 'cli' / 'report.html'}" in out
    assert json.loads((root / "cli" / "sweep.json").read_text())["rows"][0]["accuracy"] == result.rows[0].accuracy


# --------------------------------------------------------------------------- bad input, before any extraction


@pytest.fixture
def no_extraction(monkeypatch):
    def refuse(config):
        raise AssertionError("extraction started")

    monkeypatch.setattr(featx.extraction, "extract_features", refuse)


def test_unknown_layer_is_named_with_the_closest_names(tmp_path, no_extraction):
    with pytest.raises(UnknownLayerError) as error:
        run_sweep(_config(tmp_path / "data", tmp_path, layers=("auto", "conv9")))
    assert str(error.value) == (
        "unknown layer 'conv9' for resnet18; did you mean conv5, conv4, conv3, conv2, conv1? "
        "list them with `featx layers --model resnet18`"
    )
    assert not (tmp_path / "features").exists()


def test_unknown_network_is_named_with_the_closest_names(tmp_path, no_extraction):
    with pytest.raises(UnknownModelError, match=r"got 'resnet81'; did you mean resnet18, resnet152, resnet101, "
                       r"resnet50, resnet34\?$"):
        run_sweep(_config(tmp_path / "data", tmp_path, networks=("alexnet", "resnet81")))


def test_one_cell_says_classify_does_this(tmp_path):
    with pytest.raises(ConfigError) as error:
        SweepConfig(data=tmp_path, networks=("resnet18",), layers=("conv5",), classifiers="logreg")
    assert str(error.value) == (
        "a sweep of one network (resnet18), one layer (conv5) and one classifier (logreg) compares nothing; "
        "`featx extract` then `featx classify` does this; give the sweep more layers (layers='auto'), networks "
        "or classifiers"
    )


def test_unwritable_out_is_refused_before_work(tmp_path, no_extraction):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError) as error:
        plan_sweep(_config(tmp_path / "data", tmp_path, out=tmp_path / "file" / "sweep"))
    assert str(error.value) == (
        f"out is not writable ('{tmp_path / 'file'}' is a file, not a folder): '{tmp_path / 'file' / 'sweep'}'; "
        "choose another out"
    )


def test_unknown_classifier_and_concat(tmp_path):
    with pytest.raises(ConfigError) as error:
        SweepConfig(data=tmp_path, networks=NETWORKS, classifiers="logreg,bayse")
    assert str(error.value).startswith("unknown classifier 'bayse'; did you mean bayes? classifiers takes svm, logreg")
    with pytest.raises(ConfigError, match=r"^concat must be one of best, none; got 'all'$"):
        SweepConfig(data=tmp_path, networks=NETWORKS, concat="all")
    # classify's own options are checked as classify checks them, when the sweep is configured.
    with pytest.raises(ConfigError, match=r"^cv must be an integer of at least 2 \(the folds\); got 1$"):
        SweepConfig(data=tmp_path, networks=NETWORKS, cv=1)


def test_cli_bad_layer_is_one_line_and_exit_2(run_cli, tmp_path, no_extraction):
    code, out, err = run_cli(
        "sweep", "--data", tmp_path, "--network", "resnet18", "--layer", "conv9", "--classifiers", "logreg,bayes",
        "--weights", "none", "--out", tmp_path / "o", "--features-dir", tmp_path / "f",
    )
    assert (code, out) == (2, "")
    assert err == (
        "error: unknown layer 'conv9' for resnet18; did you mean conv5, conv4, conv3, conv2, conv1? "
        "list them with `featx layers --model resnet18`\n"
    )
    code, _, err = run_cli("sweep", "--data", tmp_path, "--network", "resnet18", "--layer", "conv5",
                           "--classifiers", "logreg")
    assert code == 2 and "(--layer auto)" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- thumbnails of classify's report


def test_classify_report_shows_thumbnails_of_the_store_images(swept, tmp_path):
    import base64
    import io

    from PIL import Image

    from featx.thumbnails import store_thumbnails

    _, data, result, _, _, _ = swept
    store = result.extractions[0].store
    with featx.open_store(store) as s:
        ids = list(s.ids[:3])
    images = store_thumbnails([f"{store}:conv2"])([*ids, "not/an/id.jpg"])
    assert sorted(images) == sorted(ids)  # an id the images do not have is left out
    for image_id, jpeg in images.items():
        thumbnail = Image.open(io.BytesIO(jpeg))
        with Image.open(data / image_id) as original:
            scale = 96 / max(original.size)
            assert thumbnail.format == "JPEG" and max(thumbnail.size) == 96
            assert abs(thumbnail.size[0] - original.size[0] * scale) <= 1

    # featx.classify passes them to its report: one per misclassified evaluation image.
    cell = next(r for r in result.rows if r.network == "resnet18" and r.accuracy < 1)
    run = featx.classify([f"{store}:{cell.layer}"], models=cell.classifier, out=tmp_path / "run")
    text = (run.out_dir / "report.html").read_text()
    frame = __import__("pandas").read_csv(run.best.predictions, dtype=str)
    wrong = list(frame["id"][frame["true"] != frame["predicted"]])
    sources = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(sources) == len(wrong) > 0
    assert base64.b64decode(sources[0]) == store_thumbnails([str(store)])([wrong[0]])[wrong[0]]
