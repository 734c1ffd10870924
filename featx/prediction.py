"""Predicting new images with a saved classifier.

The classifier's manifest records, for each of its input blocks, the recipe
of its features (model, weights, preprocessing, graph node, pooling,
precision: :class:`~featx.extraction.FeatureRecipe`).  The recipes are
replayed on the new images in memory by
:class:`~featx.extraction.FeatureExtractor` (one forward pass per network,
every layer of that network at once; no store is written), checked against
the manifest, and their columns put side by side in the classifier's block
order, as the join did at training time.

What can be checked before extracting is: a weights file is found among the
given ones by its sha256 (a renamed copy is the same weights), and each layer is
extracted by the graph node recorded at training, not by the name it was asked
for then (an alias may mean another node in another featx version).  What only
the network tells, the preprocessing that torchvision gives the weights, is
compared once the recipe is resolved.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .classification import FittedClassifier, load_classifier, predictions_frame, write_predictions
from .errors import ClassifyError, message, option
from .formatting import printable
from .paths import check_output_file, temporary_path
from .store import describe_weights, identity_differences, parse_weights_label, sha256_file

__all__ = ["PredictResult", "predict_images", "format_prediction"]

log = logging.getLogger("featx")

# A layer's attributes that must come out the same for its features to be the same.
_SAME_LAYER = ("node", "pool", "precision", "dtype")


@dataclass
class PredictResult:
    """Predictions for new images.

    Attributes
    ----------
    predictions : pandas.DataFrame
        ``id, [true,] predicted, [proba_<class>...]``, one row per usable image.
    classes : list of str
        The classifier's classes.
    failed : list of (id, reason)
        Images that could not be used.
    accuracy : float or None
        When the images sit in class subfolders named like the classifier's
        classes: the accuracy on them.
    classifier : FittedClassifier
    out : Path or None
        The CSV written, if any.
    """

    predictions: Any
    classes: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)
    accuracy: float | None = None
    classifier: FittedClassifier | None = None
    out: Path | None = None


def _weights_file_of(provenance: dict[str, Any], weights_files: Sequence[Path]) -> Path | None:
    """The weights file a block's features were computed with, found among *weights_files* by its sha256."""
    weights = str(provenance["weights"])
    kind, name = parse_weights_label(weights)
    if kind != "file":
        return None
    sha = provenance.get("weights_sha256")
    needed = f"the classifier's {provenance['model']} features were computed with the weights file '{name}' (sha256 {sha})"
    files_option = option("weights_files", flag="weights_file")
    if not weights_files:
        raise ClassifyError(message(needed, hint=f"pass that file with {files_option}"))
    hashes = {}
    for path in weights_files:
        if not path.is_file():
            raise ClassifyError(
                message("weights file not found", got=path, hint=f"check {files_option}")
            )
        # By content, not by name: a renamed copy is the same weights.
        hashes[path] = sha256_file(path)
        if hashes[path] == sha:
            return path
    given = ", ".join(f"'{p}' has sha256 {h}" for p, h in hashes.items())
    raise ClassifyError(
        message(f"{needed}, but none of the files given ({files_option}) is that file: {given}", hint="pass the file used at extraction")
    )


def _recipe_of(block: dict[str, Any]) -> Any:
    """The recipe of a block's features: the one layer it was read from, by its recorded node."""
    from .extraction import FeatureRecipe

    info = block["layer_info"]
    return FeatureRecipe.from_store_attrs(block["provenance"], {block["layer"]: info})


def _differences(at_training: dict[str, Any], now: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{key} is {b!r} now, {a!r} at training" for key, a, b in identity_differences(at_training, now, keys)]


def _versions_hint(at_training: dict[str, Any]) -> str:
    """What to do when the same recipe gave other features: use the versions of the training run."""
    import torchvision

    now = {"torchvision": torchvision.__version__, "featx": __version__}
    changed = [
        f"{package} {at_training.get(f'{package}_version')} (this run: {now[package]})"
        for package in now
        if at_training.get(f"{package}_version") not in (None, now[package])
    ]
    if changed:
        return f"the training features were made with {' and '.join(changed)}: predict with those versions"
    return "extract the training features again with this installation and classify them again"


@dataclass
class _Network:
    """The blocks of the classifier that one forward pass of one network computes."""

    recipe: Any  # FeatureRecipe: the network, with one layer per distinct (node, pool) of its blocks
    blocks: list[int]  # block index -> its layer's name in `recipe`
    layer_of: dict[int, str]


def _networks(blocks: list[dict[str, Any]], weights_files: Sequence[Path]) -> list[_Network]:
    """The classifier's blocks grouped by network (model, weights, preprocessing, precision), with their weights files."""
    groups: dict[tuple, _Network] = {}
    for i, block in enumerate(blocks):
        recipe = _recipe_of(block)
        layer = recipe.layers[0]
        key = (recipe.network().to_json(), layer.precision)
        group = groups.get(key)
        if group is None:
            path = _weights_file_of(block["provenance"], weights_files)
            group = groups[key] = _Network(recipe.with_weights_file(path).with_layers([]), [], {})
        # Layers are named by position: two blocks may share a name with other nodes or pools.
        same = next((l for l in group.recipe.layers if (l.node, l.pool, l.dtype) == (layer.node, layer.pool, layer.dtype)), None)
        if same is None:
            same = replace(layer, name=f"layer{len(group.recipe.layers)}")
            group.recipe = group.recipe.with_layers([*group.recipe.layers, same])
        group.blocks.append(i)
        group.layer_of[i] = same.name
    return list(groups.values())


def _check_same(block: dict[str, Any], recipe: Any, layer_name: str) -> None:
    """Refuse features of the new images that would not be made as the block's were at training."""
    diffs = [f"{key} is {now!r} now, {then!r} at training" for key, then, now in recipe.differences(block["provenance"])]
    layer = next(l for l in recipe.layers if l.name == layer_name)
    diffs += _differences(block["layer_info"], layer.attrs(), _SAME_LAYER)
    if diffs:
        raise ClassifyError(
            message(
                f"the {block['spec']} features of the new images would not match the classifier's: " + "; ".join(diffs),
                hint=_versions_hint(block["provenance"]),
            )
        )


def _image_source(data: Sequence[str]) -> tuple[Any, bool]:
    """The images to predict, and whether they are shown by their ids and may carry labels.

    One folder, manifest, archive or URL is read as ``extract`` reads it:
    its ids name the images, and its labels give an accuracy when they are the
    classifier's classes.  Image files (and folders among them) are shown by
    their paths.
    """
    from .extraction import open_source

    source = open_source(data)
    single = data[0] if len(data) == 1 else None
    return source, single is not None and (bool(source.classes) or not Path(single).expanduser().is_file())


def predict_images(
    classifier: str | os.PathLike | FittedClassifier,
    data: Sequence[str | os.PathLike],
    *,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    weights_files: Sequence[str | os.PathLike] = (),
    progress: bool = True,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> PredictResult:
    """Classify images with a saved classifier.

    Parameters
    ----------
    classifier : path or FittedClassifier
        A ``classifier-<model>.zip`` from a classify run.
    data : sequence of path or URL
        One image folder, manifest, tar archive or shard pattern, or URL, as
        ``extract`` reads it (labels are true labels when they are the
        classifier's classes); or image files and folders.  A manifest, an
        archive or a URL must come alone.
    device, batch_size, workers, progress
        As for ``extract``.
    weights_files : sequence of path
        State dicts, needed when a feature input was made with ``--weights-file``.
    out : path, optional
        CSV file to write the predictions to: a new regular file, never one of
        the inputs (the classifier, a manifest, a weights file), written under a
        temporary name and renamed when complete.
    overwrite : bool
        Replace *out* if it exists.

    Raises
    ------
    FeatxError
        A bad classifier file, missing images or weights, or features that
        cannot be reproduced.
    """
    # Every argument is checked before the first image is decoded; the classifier file before torch is
    # imported (seconds), so that a bad or hostile one is refused at once.
    if out is not None:
        inputs = [*data, *weights_files, *([] if isinstance(classifier, FittedClassifier) else [classifier])]
        check_output_file(out, "out", inputs=inputs, overwrite=overwrite)
    clf = classifier if isinstance(classifier, FittedClassifier) else load_classifier(classifier)
    paths = [os.fspath(p) for p in data]
    if not paths:
        raise ClassifyError(
            message("no images given", hint=f"pass {option('data')} with an image folder or image files")
        )
    files = [Path(p).expanduser() for p in weights_files]
    # The weights of every network are found before the first one runs.
    networks = _networks(clf.blocks, files)
    source, labelled = _image_source(paths)
    from .extraction import FeatureExtractor

    columns: dict[int, np.ndarray] = {}
    usable = np.ones(len(source), dtype=bool)
    reasons: dict[int, str] = {}
    for network in networks:
        block = clf.blocks[network.blocks[0]]
        asked = ", ".join(
            dict.fromkeys(
                clf.blocks[i]["layer"] if clf.blocks[i]["layer"] == _node(clf.blocks[i])
                else f"{clf.blocks[i]['layer']} (node {_node(clf.blocks[i])})"
                for i in network.blocks
            )
        )
        weights_shown = describe_weights(str(block["provenance"]["weights"]), block["provenance"].get("weights_sha256"))
        log.info(f"extracting {asked} of {network.recipe.model}, weights {weights_shown}, for the new images")
        extractor = FeatureExtractor(
            recipe=network.recipe, device=device, batch_size=batch_size, workers=workers, progress=progress
        ).fit()
        for i in network.blocks:
            _check_same(clf.blocks[i], extractor.recipe_, network.layer_of[i])
        got = extractor.extract(source)
        for index, reason in got.failed:
            reasons.setdefault(index, reason)
        ok = np.zeros(len(source), dtype=bool)
        ok[got.indices] = True
        usable &= ok
        for i in network.blocks:
            full = np.zeros((len(source), got.features[network.layer_of[i]].shape[1]), dtype=np.float32)
            full[got.indices] = got.features[network.layer_of[i]]
            columns[i] = full
    failed = sorted((source.display_name(i) if not labelled else source.ids[i], reason) for i, reason in reasons.items())
    if not usable.any():
        examples = "; ".join(f"{name}: {reason}" for name, reason in failed[:3])
        raise ClassifyError(
            message(f"none of the {len(failed)} images could be used ({examples})", hint="pass image files")
        )
    rows = np.flatnonzero(usable)
    X = np.concatenate([columns[i][rows] for i in range(len(clf.blocks))], axis=1)
    width = clf.manifest["n_features"] * clf.views  # trained on views: every view of each image, averaged
    if X.shape[1] != width:
        raise ClassifyError(
            message(
                "the number of feature columns of the new images",
                allowed=f"the classifier's {width:,}",
                got=X.shape[1],
                hint="the extraction does not reproduce the training features",
            )
        )
    predicted = clf.predict(X)
    proba = clf.predict_proba(X)
    true = _true_labels(source, rows, clf.classes) if labelled else None
    accuracy = None
    if true is not None:
        known = true >= 0
        accuracy = float(np.mean(predicted[known] == true[known]))
    ids = [source.ids[i] if labelled else source.display_name(i) for i in rows]
    frame = predictions_frame(ids, predicted, clf.classes, true=true, proba=proba)
    written = None
    if out is not None:
        written = Path(out)
        written.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(written)  # whole or not at all; a killed run's leftover is removed by the next one
        try:
            write_predictions(frame, tmp)
            os.replace(tmp, written)
        finally:
            tmp.unlink(missing_ok=True)
    return PredictResult(
        predictions=frame,
        classes=clf.classes,
        failed=failed,
        accuracy=accuracy,
        classifier=clf,
        out=written,
    )


def _node(block: dict[str, Any]) -> str:
    """The graph node a block was read from at training (what is extracted again)."""
    return str(block["layer_info"].get("node") or block["layer"])


def _true_labels(source: Any, rows: np.ndarray, classes: Sequence[str]) -> np.ndarray | None:
    """True labels of *rows* in the classifier's class order, when the folder names are its classes."""
    folder_names = np.array([*source.classes, ""], dtype=object)[source.labels[rows]]
    present = {n for n in folder_names if n}
    if not present or not present <= set(classes):
        return None
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index.get(n, -1) for n in folder_names], dtype=np.int64)


def format_prediction(result: PredictResult) -> str:
    """What a prediction gave, for people: counts per class, accuracy, unusable images, the file written."""
    counts = result.predictions["predicted"].value_counts()
    source = f" ({result.classifier.path})" if result.classifier is not None and result.classifier.path else ""
    family = result.classifier.family if result.classifier is not None else "the classifier"
    lines = [
        f"{len(result.predictions):,} images predicted by {family}{source}: "
        + ", ".join(f"{printable(name)} {counts.get(name, 0):,}" for name in result.classes)
    ]
    if result.accuracy is not None:
        lines.append(f"accuracy on the labelled images: {result.accuracy:.3f}")
    if result.failed:
        lines.append(f"{len(result.failed)} image(s) could not be used:")
        lines += [f"  {printable(image_id)}: {printable(reason)}" for image_id, reason in result.failed]
    if result.out is not None:
        lines.append(f"predictions written to {result.out}")
    return "\n".join(lines)
