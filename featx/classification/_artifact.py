"""Saving and loading fitted classifiers without pickle.

An artifact is one zip file::

    manifest.json    format, versions, classifier, classes, and every input:
                     store, layer, model, weights (+sha256), preprocessing,
                     pooling, normalisation
    pipeline.skops   the scikit-learn pipeline (skops.io), without its last
                     step when the family saves its estimator apart
    booster.ubj      the estimator in its library's own format, for a family
                     that declares one (``Family.own_file``: xgboost's booster
                     in UBJSON); the manifest's ``files.booster`` names it

``pickle``/``joblib`` would run arbitrary code while loading a file someone
sent.  skops.io rebuilds objects only from types it is told to trust: its
own default list (scikit-learn and numpy types) plus :data:`TRUSTED_TYPES`
(what the families declare); a file naming any other type is refused before
anything is built.  The family named in the manifest says whether its
estimator is saved apart, and how to load it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ClassifyError, message
from ._json import json_default
from ._registry import FAMILIES, OwnFile, trusted_types

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "TRUSTED_TYPES",
    "FittedClassifier",
    "save_classifier",
    "load_classifier",
]

log = logging.getLogger("featx")

ARTIFACT_FORMAT = "featx-classifier"
ARTIFACT_VERSION = 1
MANIFEST = "manifest.json"
PIPELINE = "pipeline.skops"
# Types a featx pipeline holds that skops does not trust by default.  Anything
# else that skops reports as untrusted makes loading fail.
TRUSTED_TYPES = trusted_types()
_MAX_MEMBER_BYTES = 8 << 30
# The hints of the errors below: what to pass instead, how to get a good file.
_PASS_ONE = "pass a classifier-<model>.zip from a `featx classify` run folder"
_REFIT = "re-run `featx classify` to make a new one"


@dataclass
class FittedClassifier:
    """A loaded classifier: the fitted pipeline and what it was trained on.

    Attributes
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Block normalisation, optional PCA, then the estimator.
    manifest : dict
        Everything recorded with it (see the module docstring).
    path : Path, optional
        The file it was loaded from.
    """

    pipeline: Any
    manifest: dict[str, Any]
    path: Path | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def family(self) -> str:
        return self.manifest["classifier"]["family"]

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return list(self.manifest["inputs"])

    @property
    def has_proba(self) -> bool:
        return hasattr(self.pipeline, "predict_proba")

    @property
    def views(self) -> int:
        """Training views per image (1: none); see :meth:`predict_proba`."""
        return int(self.manifest.get("views", 1))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices (into :attr:`classes`) of ``X`` ``(n_samples, n_features)``."""
        if self.views > 1 and np.shape(X)[1] != self.manifest.get("n_features"):
            return np.argmax(self._view_mean(X), axis=1).astype(np.int64)
        return np.asarray(self.pipeline.predict(X), dtype=np.int64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray | None:
        """Per-class probabilities ``(n_samples, n_classes)``, or ``None`` for a model without them.

        A classifier trained on training views takes one row per view
        (``n_features`` columns), or one row per image with every view
        (``views x n_features`` columns, each input's views one after the
        other, as its store holds them): then each image's probabilities are
        the mean over its views.
        """
        if not self.has_proba:
            return None
        if self.views > 1 and np.shape(X)[1] != self.manifest.get("n_features"):
            return self._view_mean(X)
        return np.asarray(self.pipeline.predict_proba(X), dtype=np.float64)

    def _view_mean(self, X: np.ndarray) -> np.ndarray:
        """Rows of every view of each image -> the mean over its views of the probabilities (or decision scores)."""
        from ._join import views_as_rows

        rows = views_as_rows(np.asarray(X), [int(b["dim"]) for b in self.blocks], self.views)
        scores = self.pipeline.predict_proba(rows) if self.has_proba else self.pipeline.decision_function(rows)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim == 1:
            scores = np.stack([-scores, scores], axis=1)
        return scores.reshape(len(X), self.views, -1).mean(axis=1)


# skops.io lists scikit-learn's estimators when it is imported (sklearn.utils.all_estimators walks every
# sklearn package), and one of them, the torch wrapper of the vendored array-api-compat, imports torch:
# seconds and hundreds of MiB in a classify run that never uses it.  all_estimators skips packages that fail to
# import, and no estimator lives there, so the trusted and untrusted types are the same without it.
_SKOPS_TORCH_ROUTE = "sklearn.externals.array_api_compat.torch"


def _skops_io() -> Any:
    """``skops.io``, imported without letting scikit-learn's estimator listing import torch."""
    import sys

    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    blocked = _SKOPS_TORCH_ROUTE not in sys.modules  # a caller that imported it keeps it
    if blocked:
        sys.modules[_SKOPS_TORCH_ROUTE] = None  # makes its import fail, as a missing package would
    try:
        import skops.io
    finally:
        if blocked and sys.modules.get(_SKOPS_TORCH_ROUTE, 0) is None:
            del sys.modules[_SKOPS_TORCH_ROUTE]
    return skops.io


def _versions() -> dict[str, str]:
    import sklearn
    import skops
    import xgboost

    return {
        "featx": __version__,
        "scikit-learn": sklearn.__version__,
        "skops": skops.__version__,
        "xgboost": xgboost.__version__,
    }


def _own_file(manifest: Mapping[str, Any]) -> OwnFile | None:
    """The file of its own that the family named in *manifest* saves its estimator to, if any."""
    classifier = manifest.get("classifier")
    family = FAMILIES.get(classifier.get("family")) if isinstance(classifier, Mapping) else None
    return family.own_file if family is not None else None


def save_classifier(path: str | os.PathLike, pipeline: Any, manifest: Mapping[str, Any]) -> Path:
    """Write a fitted pipeline and its manifest to *path* (replaced atomically).

    Parameters
    ----------
    path : path
        The artifact file (``.zip``).
    pipeline : sklearn.pipeline.Pipeline
        Fitted; its last step is the estimator.
    manifest : mapping
        JSON-serialisable description; format and version fields are added.
        Its ``classifier.family`` says whether the estimator is saved apart
        from the pipeline (``Family.own_file``).
    """
    sio = _skops_io()

    path = Path(path)
    own_file = _own_file(manifest)
    full = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        **manifest,
        "files": {"pipeline": PIPELINE, "booster": own_file.name if own_file else None},
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(full, indent=2, default=json_default))
            archive.writestr(PIPELINE, sio.dumps(pipeline[:-1] if own_file else pipeline))
            if own_file:
                with tempfile.TemporaryDirectory() as folder:
                    file = Path(folder) / own_file.name
                    own_file.save(pipeline.steps[-1][1], file)
                    archive.write(file, own_file.name)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_member(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ClassifyError(
            message(f"'{path}' is not a complete featx classifier: it lacks '{name}'", hint=_REFIT)
        ) from None
    if info.file_size > _MAX_MEMBER_BYTES:
        raise ClassifyError(
            message(f"'{path}': member '{name}' is {info.file_size:,} bytes, too large for a classifier")
        )
    return archive.read(name)


def _check_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ClassifyError(
            message(
                f"'{path}' is not a featx classifier (its manifest has no format '{ARTIFACT_FORMAT}')", hint=_PASS_ONE
            )
        )
    version = manifest.get("format_version")
    if version != ARTIFACT_VERSION:
        written_by = manifest.get("versions", {}).get("featx", "an unknown version")
        raise ClassifyError(
            message(
                f"classifier '{path}' has featx classifier format {version!r} (written by featx {written_by})",
                hint=f"this featx {__version__} reads format {ARTIFACT_VERSION} only: re-run `featx classify` with "
                f"this featx, or use featx {written_by} to predict",
            )
        )


def _load_pipeline(data: bytes, path: Path) -> Any:
    sio = _skops_io()

    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a damaged skops file
        raise ClassifyError(
            message(f"'{path}': its pipeline cannot be read by skops ({type(exc).__name__}: {exc})", hint=_REFIT)
        ) from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ClassifyError(
            message(
                f"'{path}' holds types featx does not trust ({', '.join(refused)})",
                hint="it was not written by `featx classify`, refusing to load it",
            )
        )
    return sio.loads(data, trusted=list(untrusted))


def load_classifier(path: str | os.PathLike) -> FittedClassifier:
    """Load an artifact written by :func:`save_classifier`.

    Parameters
    ----------
    path : path
        A ``classifier-<model>.zip`` of a classify run folder.

    Returns
    -------
    FittedClassifier
        The pipeline, ready to predict on joined features ``(n_samples, n_features)``.

    Raises
    ------
    ClassifyError
        The file is missing, not a featx classifier, from an incompatible
        format version, or holds types that are not trusted.
    """
    from sklearn.pipeline import Pipeline

    path = Path(path)
    if not path.is_file():
        raise ClassifyError(message(f"classifier not found: '{path}' is not a file", hint=_PASS_ONE))
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                manifest = json.loads(_read_member(archive, MANIFEST, path))
            except json.JSONDecodeError as exc:
                raise ClassifyError(message(f"'{path}': its manifest is not valid JSON ({exc})", hint=_REFIT)) from None
            _check_manifest(manifest, path)
            pipeline = _load_pipeline(_read_member(archive, PIPELINE, path), path)
            member = manifest.get("files", {}).get("booster")
            if member:
                own_file = _own_file(manifest)
                if own_file is None:
                    raise ClassifyError(
                        message(f"'{path}': its manifest names an estimator file '{member}' for a classifier family "
                                "that saves none", hint=_REFIT)
                    )
                estimator = own_file.load(_read_member(archive, own_file.name, path))
                pipeline = Pipeline([*pipeline.steps, ("clf", estimator)])
    except zipfile.BadZipFile:
        raise ClassifyError(message(f"'{path}' is not a featx classifier (not a zip file)", hint=_PASS_ONE)) from None
    saved_with = manifest.get("versions", {}).get("scikit-learn")
    current = _versions()["scikit-learn"]
    if saved_with != current:
        log.warning(
            f"'{path}' was saved with scikit-learn {saved_with}, this is {current}: its predictions may differ "
            "slightly; re-run `featx classify` to refit it with this version"
        )
    return FittedClassifier(pipeline=pipeline, manifest=manifest, path=path)
