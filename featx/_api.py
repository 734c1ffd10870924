"""The Python API: one function per command, keyword arguments named like the flags.

``featx.extract(...)`` is ``run_pipeline.py extract ...``, ``featx.classify(...)``
is ``classify``, ``featx.predict(...)`` is ``predict``, ``featx.info(...)`` is
``info`` and ``featx.export(...)`` is ``export`` (also by their library names,
``describe_store`` and ``export_store``), ``featx.list_layers(...)`` is
``layers`` and ``featx.list_models(...)`` is ``models`` and ``featx.sweep(...)`` is
``sweep``; each returns the result
object the command prints.  Keywords are named like the flags (``weights_file``
for ``--weights-file``).  Every argument is checked before any work starts;
mistakes, an unknown keyword included, raise a :class:`featx.FeatxError` (a
``ValueError`` for bad values) whose one-line message names the keyword
argument, as the command line's names the flag.

The heavy sides are imported on first call: ``import featx`` loads neither
torch nor scikit-learn.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .classification import ClassifyRun
    from .extraction import ExtractResult
    from .layer_sweep import SweepResult
    from .prediction import PredictResult

__all__ = ["extract", "classify", "predict", "sweep", "info", "export"]


def _check_keywords(command: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Refuse an unknown keyword in one line, as ``extract`` does (a ConfigError, never a bare TypeError)."""
    from .errors import ConfigError, close_matches, message

    allowed = list(allowed)
    for name in given:
        if name not in allowed:
            raise ConfigError(
                message(f"an unknown option of {command}", got=name, hint=close_matches(name, allowed).strip() or None)
            )


def _keywords(function: Callable[..., Any], *leave_out: str) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name not in leave_out]


def extract(
    data: str | os.PathLike,
    *,
    model: str = "resnet50",
    layers: str | Sequence[str] = ("penultimate",),
    weights: str = "DEFAULT",
    out: str | os.PathLike | None = None,
    **options: Any,
) -> "ExtractResult":
    """Extract layer activations of every image of a folder into a feature store.

    Resumes an unfinished store, reuses a finished one with the same
    configuration, and adds new layers to it.

    Parameters
    ----------
    data : path or URL
        Image folder (``<class>/<image>``, optionally under ``train/``,
        ``val/``, ``test/``), a manifest (``list.csv``, ``list.parquet``), a
        tar archive or a pattern of WebDataset shards
        (``'shards/train-{000000..000127}.tar'``), or a URL of one of these or
        of a prefix holding a class-folder tree (``s3://bucket/prefix``).
    model : str
        torchvision classification model name.
    layers : str or sequence of str
        Graph nodes, module paths or aliases (``penultimate``, ``conv5``,
        ``fc7``, ``block2_pool``, ...); all come from one forward pass.
    weights : str
        ``DEFAULT``, a weights name such as ``IMAGENET1K_V1``, or ``none``
        (a seeded random initialisation).
    out : path, optional
        The store; by default ``features/<data folder>/<model>-<weights>.h5``.
    **options
        Any other field of :class:`featx.extraction.ExtractConfig`:
        ``weights_file``, ``seed``, ``image_size``, ``pool``, ``batch_size``,
        ``workers``, ``device``, ``precision``, ``dtype``, ``compression``,
        ``overwrite``, ``force``, ``checkpoint_seconds``, ``progress``.

    Returns
    -------
    ExtractResult
        The store's path, its rows, the width of each layer, the images that
        could not be used.

    Examples
    --------
    >>> import featx
    >>> result = featx.extract("data/hymenoptera", model="resnet18",
    ...                        layers=["conv5", "penultimate"], weights="none")  # doctest: +SKIP
    >>> result.layers  # doctest: +SKIP
    {'conv5': 512, 'penultimate': 512}
    """
    from pathlib import Path

    from .extraction import ExtractConfig, extract_features

    names = (layers,) if isinstance(layers, str) else tuple(layers)
    config = ExtractConfig.from_options(
        data=data, model=model, layers=names, weights=weights,
        out=Path(out) if out is not None else None, **options,
    )
    return extract_features(config)


def classify(
    features: str | Sequence[str],
    *,
    models: str | Sequence[str] = "svm",
    out: str | os.PathLike | None = None,
    **options: Any,
) -> "ClassifyRun":
    """Train and evaluate classifiers on cached features, joined on sample id.

    Parameters
    ----------
    features : str or sequence of str
        ``STORE[:LAYER]`` inputs; several are concatenated, joined on sample id.
    models : str or sequence of str
        Classifier families: ``svm``, ``logreg``, ``bayes``, ``xgboost``, ``mlp``
        (a comma-separated string or a sequence).
    out : path, optional
        The run folder; by default a new ``runs/<timestamp>/``.
    **options
        Any other field of :class:`featx.classification.ClassifyConfig`:
        ``normalize``, ``pca``, ``test_size``, ``cv``, ``seed``, ``search``,
        ``params`` (classifier parameters such as ``{"C": 0.1}``), ``plots``,
        ``memory``, ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``: where
        svm, logreg and xgboost fit).

    Returns
    -------
    ClassifyRun
        One result per classifier (accuracy, fit time, paths of the
        predictions and of the saved classifier), and the run folder.

    Examples
    --------
    >>> run = featx.classify(["features/hymenoptera/resnet18-none.h5:penultimate"],
    ...                      models="logreg,bayes")  # doctest: +SKIP
    >>> {r.name: round(r.accuracy, 3) for r in run.results}  # doctest: +SKIP
    {'logreg': 0.693, 'bayes': 0.562}
    """
    from pathlib import Path

    from dataclasses import fields

    from .classification import ClassifyConfig, run_classification
    from .thumbnails import store_thumbnails

    _check_keywords("classify", options, [f.name for f in fields(ClassifyConfig) if f.name not in ("features", "models", "out")])
    inputs = (features,) if isinstance(features, str) else tuple(features)
    config = ClassifyConfig(
        features=inputs, models=models, out=Path(out) if out is not None else None, **options
    )
    return run_classification(config, thumbnails=store_thumbnails(config.features))


def predict(
    classifier: str | os.PathLike,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    **options: Any,
) -> "PredictResult":
    """Classify new images with a classifier saved by :func:`classify`.

    The features it was trained on are extracted again from the new images
    (same model, weights, preprocessing, layers and pooling).

    Parameters
    ----------
    classifier : path
        A ``classifier-<model>.zip`` of a classify run.
    data : path, URL or sequence of path
        An image folder, manifest, tar archive or shard pattern, or URL, as
        for :func:`extract` (labels named like the classes give an accuracy),
        or image files.
    **options
        ``out`` (a CSV file), ``overwrite``, ``weights_file`` (a path or a
        sequence of paths, as ``--weights-file``; also ``weights_files``),
        ``device``, ``batch_size``, ``workers``, ``progress``: see
        :func:`featx.prediction.predict_images`.

    Returns
    -------
    PredictResult
        ``predictions`` (a DataFrame: id, [true,] predicted, proba_<class>...),
        ``accuracy`` when the images are labelled, the images that failed.

    Examples
    --------
    >>> result = featx.predict("runs/x/classifier-logreg.zip", "new-images/")  # doctest: +SKIP
    >>> result.predictions.head()  # doctest: +SKIP
    """
    from .prediction import predict_images

    _check_keywords("predict", options, [*_keywords(predict_images, "classifier", "data"), "weights_file"])
    if "weights_file" in options:  # the flag's name; several files as a sequence
        given = options.pop("weights_file")
        options["weights_files"] = [given] if isinstance(given, (str, os.PathLike)) else list(given)
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    return predict_images(classifier, paths, **options)


def sweep(
    data: str | os.PathLike,
    *,
    networks: str | Sequence[str],
    layers: str | Sequence[str] = "auto",
    classifiers: str | Sequence[str] = ("logreg", "svm", "bayes"),
    concat: str = "best",
    out: str | os.PathLike | None = None,
    **options: Any,
) -> "SweepResult":
    """Which network, which layer, which classifier: evaluate every combination, write a table, a plot and a report.

    Each network's layers come from one forward pass into one store (reused
    and extended by a later sweep or ``extract``); each layer x classifier is
    evaluated as :func:`classify` does.

    Parameters
    ----------
    data : path or URL
        The images, as for :func:`extract`.
    networks : str or sequence of str
        Model names (``resnet18``, ``timm/tf_efficientnet_lite0``).
    layers : str or sequence of str
        Layer names, or ``auto``: the stage outputs and ``penultimate``.
    classifiers : str or sequence of str
        Classifier families.
    concat : {'best', 'none'}
        ``best``: also the best layer of each network, concatenated.
    out : path, optional
        The sweep folder (default: ``runs/sweep/<data folder name>``).
    **options
        ``cv``, ``test_size``, ``seed``, ``device``, ``features_dir``,
        ``progress`` (:class:`featx.layer_sweep.SweepConfig`), and any option of
        :func:`extract` (``weights``, ``image_size``, ``batch_size``, ``workers``, ...).

    Returns
    -------
    SweepResult
        ``rows`` (one per cell), ``best``, and the paths of ``sweep.json``,
        ``sweep.csv``, ``accuracy-by-layer.png`` and ``report.html``.

    Examples
    --------
    >>> result = featx.sweep("data/digits", networks=["resnet18", "alexnet"], classifiers="logreg,bayes",
    ...                      weights="none", image_size=64)  # doctest: +SKIP
    >>> result.best.layer, round(result.best.accuracy, 3)  # doctest: +SKIP
    """
    from dataclasses import fields
    from pathlib import Path

    from .layer_sweep import SweepConfig, run_sweep

    own = {f.name for f in fields(SweepConfig)} - {"extract"}
    config = SweepConfig(
        data=data,
        networks=(networks,) if isinstance(networks, str) else tuple(networks),
        layers=(layers,) if isinstance(layers, str) else tuple(layers),
        classifiers=classifiers,
        concat=concat,
        out=Path(out) if out is not None else None,
        **{k: v for k, v in options.items() if k in own},
        extract={k: v for k, v in options.items() if k not in own},
    )
    return run_sweep(config)


def info(store: str | os.PathLike, **options: Any) -> str:
    """What a feature store holds, as ``run_pipeline.py info`` prints it (:func:`featx.store.describe_store`).

    Examples
    --------
    >>> print(featx.info("features/hymenoptera/resnet18-none.h5"))  # doctest: +SKIP
    """
    from .store import describe_store

    _check_keywords("info", options, _keywords(describe_store)[1:])
    return describe_store(store, **options)


def export(store: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Any:
    """Write a store as npz, Parquet or CSV, as ``run_pipeline.py export`` (:func:`featx.store.export_store`).

    Parameters
    ----------
    store, out : path
    **options
        ``format``, ``layers``, ``overwrite``, ``block_rows``.

    Examples
    --------
    >>> featx.export("store.h5", "store.parquet", layers=["fc7"])  # doctest: +SKIP
    """
    from .store import export_store

    _check_keywords("export", options, _keywords(export_store)[2:])
    return export_store(store, out, **options)
