"""Predicting new images with a saved classifier.

The classifier's manifest says how each of its input blocks was computed
(model, weights, preprocessing, graph node, pooling, precision).  The same
features are extracted from the new images by the extraction engine itself
(:func:`featx.extraction.extract_features`) into temporary stores, checked
against the manifest, joined on image id exactly as at training time, and fed
to the fitted pipeline.

What can be checked before extracting is: a weights file is found among the
given ones by its sha256 (a renamed copy is the same weights), and each layer is
extracted by the graph node recorded at training, not by the name it was asked
for then (an alias may mean another node in another featx version).  What only
the extraction tells, the preprocessing that torchvision gives the weights, is
compared after it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .classification import FittedClassifier, join_features, load_classifier, predictions_frame
from .errors import ClassifyError, message, option
from .paths import check_writable_dir, check_writable_file
from .store import (
    IDENTITY_KEYS,
    LAYER_IDENTITY_KEYS,
    describe_weights,
    identity_differences,
    open_store,
    parse_weights_label,
)

__all__ = ["PredictResult", "predict_images", "format_prediction"]

log = logging.getLogger("featx")

# Store attributes that must come out the same for the features to be the same
# (the data folder is, by design, another one).
_SAME_MODEL = tuple(k for k in IDENTITY_KEYS if k != "data_fingerprint")
_SAME_LAYER = LAYER_IDENTITY_KEYS


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


def _image_folder(data: Sequence[Path], scratch: Path) -> tuple[Path, bool, dict[str, str]]:
    """A folder the extraction engine can read, whether it got a folder or loose files.

    Returns ``(folder, labelled, names)``: *labelled* is whether class
    subfolders may carry labels (only for one folder given as is); *names* maps
    ids in *folder* to what is shown to the user.
    """
    from .extraction import collect_images

    if len(data) == 1 and data[0].is_dir():
        return data[0], True, {}
    collection = collect_images(data)
    # extract_features reads whole folders: link just these files into one.
    folder = scratch / "images"
    for image_id in collection.ids:
        link = folder / image_id
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((collection.root / image_id).absolute())
    return folder, False, {i: str(collection.root / i) for i in collection.ids}


def _weights_of(provenance: dict[str, Any], weights_files: Sequence[Path]) -> tuple[str, Path | None]:
    """``(weights, weights_file)`` for ExtractConfig; a needed file is found by its sha256."""
    from .extraction import sha256_file

    weights = str(provenance["weights"])
    kind, name = parse_weights_label(weights)
    if kind != "file":
        return weights, None
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
            return "DEFAULT", path
    given = ", ".join(f"'{p}' has sha256 {h}" for p, h in hashes.items())
    raise ClassifyError(
        message(f"{needed}, but none of the files given ({files_option}) is that file: {given}", hint="pass the file used at extraction")
    )


def _group_key(block: dict[str, Any]) -> tuple:
    """Blocks with the same key come from one extraction (one forward pass)."""
    prov, info = block["provenance"], block["layer_info"]
    model = tuple(str(prov.get(k)) for k in _SAME_MODEL)
    pool = info["pool"] if info["pool"] != "none" else "avg"  # 'none': the output was already 2-D
    return (*model, pool, info["precision"], info["dtype"])


def _differences(at_training: dict[str, Any], now: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{key} is {b!r} now, {a!r} at training" for key, a, b in identity_differences(at_training, now, keys)]


def _versions_hint(at_training: dict[str, Any], now: dict[str, Any]) -> str:
    """What to do when the same configuration gave other features: use the versions of the training run."""
    changed = [
        f"{package} {at_training.get(f'{package}_version')} (this run: {now.get(f'{package}_version')})"
        for package in ("torchvision", "featx")
        if at_training.get(f"{package}_version") != now.get(f"{package}_version")
    ]
    if changed:
        return f"the training features were made with {' and '.join(changed)}: predict with those versions"
    return "extract the training features again with this installation and classify them again"


def _extract_group(
    blocks: list[dict[str, Any]], folder: Path, store: Path, weights: str, weights_file: Path | None, **options: Any
) -> None:
    """Extract the layers of *blocks* (one network) from *folder* into *store*; check they match.

    Layers are extracted by their recorded graph node, so the store's datasets
    are named by node (see :func:`_node`).
    """
    from .extraction import ExtractConfig, extract_features

    prov, info = blocks[0]["provenance"], blocks[0]["layer_info"]
    layers = tuple(dict.fromkeys(_node(b) for b in blocks))
    asked = ", ".join(
        dict.fromkeys(b["layer"] if b["layer"] == _node(b) else f"{b['layer']} (node {_node(b)})" for b in blocks)
    )
    weights_shown = describe_weights(str(prov["weights"]), prov.get("weights_sha256"))
    log.info(f"extracting {asked} of {prov['model']}, weights {weights_shown}, for the new images")
    extract_features(
        ExtractConfig(
            data=folder,
            model=prov["model"],
            layers=layers,
            weights=weights,
            weights_file=weights_file,
            seed=prov.get("seed") or 0,
            # The recorded preprocessing, whatever made it (the weights' own, flags,
            # a sidecar): the same pixels, hence the same features.
            **_preprocessing(prov),
            pool=info["pool"] if info["pool"] != "none" else "avg",
            precision=info["precision"],
            dtype=info["dtype"],
            out=store,
            **options,
        )
    )
    with open_store(store) as made:
        for block in blocks:
            diffs = _differences(block["provenance"], made.meta, _SAME_MODEL)
            diffs += _differences(block["layer_info"], made.layer_info(_node(block)), _SAME_LAYER)
            if diffs:
                raise ClassifyError(
                    message(
                        f"the {block['spec']} features of the new images would not match the classifier's: "
                        + "; ".join(diffs),
                        hint=_versions_hint(block["provenance"], made.meta),
                    )
                )


def _preprocessing(prov: dict[str, Any]) -> dict[str, Any]:
    """ExtractConfig's preprocessing options that reproduce a store's recorded preprocessing."""
    options: dict[str, Any] = {"crop": int(prov["crop"])}
    if prov.get("resize") is not None:
        options["resize"] = int(prov["resize"])
    for key in ("mean", "std"):
        if prov.get(key) is not None:
            options[key] = tuple(float(v) for v in np.atleast_1d(prov[key]))
    if prov.get("interpolation") is not None:
        options["interpolation"] = str(prov["interpolation"])
    return options


def _node(block: dict[str, Any]) -> str:
    """The graph node a block was read from at training (what is extracted again)."""
    return str(block["layer_info"].get("node") or block["layer"])


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
    work_dir: str | os.PathLike | None = None,
) -> PredictResult:
    """Classify images with a saved classifier.

    Parameters
    ----------
    classifier : path or FittedClassifier
        A ``classifier-<model>.zip`` from a classify run.
    data : sequence of path
        One image folder (class subfolders are read as true labels when they
        are the classifier's classes), or image files and folders.
    device, batch_size, workers, progress
        As for ``extract``.
    weights_files : sequence of path
        State dicts, needed when a feature input was made with ``--weights-file``.
    out : path, optional
        CSV file to write the predictions to.
    work_dir : path, optional
        Where the temporary feature stores go (the system's temporary folder by default).

    Raises
    ------
    FeatxError
        A bad classifier file, missing images or weights, or features that
        cannot be reproduced.
    """
    # Every argument is checked before the first image is decoded.
    if out is not None:
        check_writable_file(out, "out")
    if work_dir is not None:
        check_writable_dir(work_dir, "work_dir")
    clf = classifier if isinstance(classifier, FittedClassifier) else load_classifier(classifier)
    paths = [Path(p).expanduser() for p in data]
    if not paths:
        raise ClassifyError(
            message("no images given", hint=f"pass {option('data')} with an image folder or image files")
        )
    groups: dict[tuple, list[int]] = {}
    for i, block in enumerate(clf.blocks):
        groups.setdefault(_group_key(block), []).append(i)
    files = [Path(p).expanduser() for p in weights_files]
    # The weights of every network are found before the first one runs.
    weights = [_weights_of(clf.blocks[members[0]]["provenance"], files) for members in groups.values()]

    with tempfile.TemporaryDirectory(prefix="featx-predict-", dir=work_dir) as scratch:
        scratch = Path(scratch)
        folder, labelled, names = _image_folder(paths, scratch)
        specs: list[str] = [""] * len(clf.blocks)
        for g, members in enumerate(groups.values()):
            store = scratch / f"features-{g}.h5"
            _extract_group(
                [clf.blocks[i] for i in members], folder, store, *weights[g],
                device=device, batch_size=batch_size, workers=workers, progress=progress,
            )
            for i in members:
                specs[i] = f"{store}:{_node(clf.blocks[i])}"
        failed, usable = _failures(scratch, len(groups))
        if usable == 0:
            examples = "; ".join(f"{names.get(i, i)}: {reason}" for i, reason in failed[:3])
            raise ClassifyError(
                message(f"none of the {len(failed)} images could be used ({examples})", hint="pass image files")
            )
        joined = join_features(specs)

    if joined.X.shape[1] != clf.manifest["n_features"]:
        raise ClassifyError(
            message(
                "the number of feature columns of the new images",
                allowed=f"the classifier's {clf.manifest['n_features']:,}",
                got=joined.X.shape[1],
                hint="the extraction does not reproduce the training features",
            )
        )
    reasons = dict(failed)
    for spec, ids in joined.missing.items():
        for image_id in ids:
            reasons.setdefault(image_id, f"no features in {spec}")
    failed = sorted(reasons.items())
    predicted = clf.predict(joined.X)
    proba = clf.predict_proba(joined.X)
    true = _true_labels(joined, clf.classes) if labelled else None
    accuracy = None
    if true is not None:
        known = true >= 0
        accuracy = float(np.mean(predicted[known] == true[known]))
    ids = [names.get(i, i) for i in joined.ids]
    frame = predictions_frame(ids, predicted, clf.classes, true=true, proba=proba)
    written = None
    if out is not None:
        written = Path(out)
        written.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(written, index=False)
    return PredictResult(
        predictions=frame,
        classes=clf.classes,
        failed=[(names.get(i, i), reason) for i, reason in failed],
        accuracy=accuracy,
        classifier=clf,
        out=written,
    )


def _failures(scratch: Path, n_stores: int) -> tuple[list[tuple[str, str]], int]:
    """Images an extraction could not use, with reasons; and the fewest rows a store got."""
    failed: dict[str, str] = {}
    rows = []
    for g in range(n_stores):
        with open_store(scratch / f"features-{g}.h5") as store:
            frame = store.failed
            failed.update(zip(frame["id"], frame["reason"]))
            rows.append(len(store))
    return sorted(failed.items()), min(rows)


def _true_labels(joined, classes: Sequence[str]) -> np.ndarray | None:
    """True labels in the classifier's class order, when the folder names are its classes."""
    folder_names = np.array([*joined.classes, ""], dtype=object)[joined.labels]
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
        + ", ".join(f"{name} {counts.get(name, 0):,}" for name in result.classes)
    ]
    if result.accuracy is not None:
        lines.append(f"accuracy on the labelled images: {result.accuracy:.3f}")
    if result.failed:
        lines.append(f"{len(result.failed)} image(s) could not be used:")
        lines += [f"  {image_id}: {reason}" for image_id, reason in result.failed]
    if result.out is not None:
        lines.append(f"predictions written to {result.out}")
    return "\n".join(lines)
