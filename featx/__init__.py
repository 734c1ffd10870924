"""featx: transfer learning with fixed CNN features.

Extract activations of pretrained torchvision networks into self-describing
HDF5 stores, and train classical classifiers on them.
"""

from ._version import __version__
from .errors import FeatxError
from .store import FeatureStore, open_store

__all__ = [
    "__version__",
    "FeatxError",
    "ExtractConfig",
    "ExtractResult",
    "extract_features",
    "LayerIndex",
    "load_model",
    "FeatureStore",
    "open_store",
]

# Names served on first use, so that `import featx` (and reading a store) does
# not load torch: extraction imports it, classification imports scikit-learn.
_LAZY = {
    "ExtractConfig": "featx.extraction",
    "ExtractResult": "featx.extraction",
    "extract_features": "featx.extraction",
    "LayerIndex": "featx.extraction",
    "load_model": "featx.extraction",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
