"""featx: transfer learning with fixed CNN features.

Extract activations of pretrained torchvision networks into self-describing
HDF5 stores, and train classical classifiers on them.  The functions mirror
the commands of ``run_pipeline.py``::

    import featx

    result = featx.extract("data/hymenoptera", model="resnet18", layers=["penultimate"])
    run = featx.classify([f"{result.path}:penultimate"], models="svm,logreg")
    with featx.open_store(result.path) as store:
        X, y = store.features("penultimate"), store.labels

The packages behind them: :mod:`featx.store` (HDF5 stores),
:mod:`featx.extraction` (networks, images, the batch engine) and
:mod:`featx.classification` (classifiers on stored features).
"""

from ._version import __version__
from .errors import FeatxError

__all__ = [
    "__version__",
    "FeatxError",
    # the commands
    "extract",
    "classify",
    "predict",
    "sweep",
    "list_layers",
    "format_layers",
    "list_models",
    "format_models",
    "info",
    "export",
    "describe_store",
    "export_store",
    # reading what they wrote
    "open_store",
    "FeatureStore",
    "load_classifier",
    # features without a store (a scikit-learn transformer), and how a feature is made
    "FeatureExtractor",
    "FeatureRecipe",
    # configurations and results
    "ExtractConfig",
    "ExtractResult",
    "ClassifyConfig",
    "ClassifyRun",
    "PredictResult",
    "load_model",
]

# Names served on first use, so that `import featx` loads neither torch
# (extraction) nor scikit-learn (classification).
_LAZY = {
    "extract": "featx._api",
    "classify": "featx._api",
    "predict": "featx._api",
    "sweep": "featx._api",
    "list_layers": "featx.extraction",
    "format_layers": "featx.extraction",
    "list_models": "featx.extraction",
    "format_models": "featx.extraction",
    "info": "featx._api",
    "export": "featx._api",
    "describe_store": "featx.store",
    "export_store": "featx.store",
    "open_store": "featx.store",
    "FeatureStore": "featx.store",
    "load_classifier": "featx.classification",
    "FeatureExtractor": "featx.extraction",
    "FeatureRecipe": "featx.extraction",
    "ExtractConfig": "featx.extraction",
    "ExtractResult": "featx.extraction",
    "ClassifyConfig": "featx.classification",
    "ClassifyRun": "featx.classification",
    "PredictResult": "featx.prediction",
    "load_model": "featx.extraction",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featx' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
