"""featx: transfer learning with fixed CNN features.

Extract activations of pretrained torchvision networks into self-describing
HDF5 stores, and train classical classifiers on them.
"""

__version__ = "0.1.0"

from .errors import FeatxError  # noqa: E402
from .extract import ExtractConfig, ExtractResult, extract_features  # noqa: E402
from .layers import LayerIndex  # noqa: E402
from .models import load_model  # noqa: E402
from .store import FeatureStore, open_store  # noqa: E402

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
