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

import io
import json
import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ClassifyError, message
from ..formatting import printable
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
# What a classifier zip may hold, checked before anything is decompressed (a zip's header says
# each member's size; the reads stop at it too, whatever the header says).  The manifest is a
# few KiB of JSON: more than 4 MiB is not one.  The other members hold fitted arrays, which can
# be large (a knn keeps its training rows) but do not compress: a member past 256 MiB that
# compresses more than 50:1 is a decompression bomb, refused unread.  skops files are zips
# themselves: their members are held to the same rules.
_MAX_MANIFEST_BYTES = 4 << 20
_MAX_MEMBER_BYTES = 8 << 30
_BOMB_BYTES = 256 << 20
_BOMB_RATIO = 50
_READ_BYTES = 1 << 20
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


def _member_problem(info: zipfile.ZipInfo, limit: int) -> str | None:
    """Why a member must not be decompressed, from its header alone, or None."""
    if info.file_size == 0:
        return "is empty"  # never handed to a parser: xgboost aborts the process on an empty model
    if info.file_size > limit:
        return f"is {info.file_size:,} bytes, more than the {limit:,} a classifier's '{info.filename}' may have"
    if info.file_size > _BOMB_BYTES and info.file_size > _BOMB_RATIO * max(info.compress_size, 1):
        return (f"expands from {info.compress_size:,} to {info.file_size:,} bytes (more than {_BOMB_RATIO}:1), "
                "a decompression bomb")
    return None


def _read_member(archive: zipfile.ZipFile, name: str, path: Path, limit: int = _MAX_MEMBER_BYTES) -> bytearray:
    """Member *name*, read in bounded chunks: never more than its header's size, nor than *limit*."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ClassifyError(
            message(f"'{path}' is not a complete featx classifier: it lacks '{name}'", hint=_REFIT)
        ) from None
    problem = _member_problem(info, limit)
    if problem:
        raise ClassifyError(message(f"'{path}': member '{name}' {problem}", hint="refusing to read it"))
    data = bytearray(info.file_size)
    view = memoryview(data)
    done = 0
    with archive.open(info) as member:
        while done < info.file_size:
            got = member.readinto(view[done : done + _READ_BYTES])
            if not got:
                break
            done += got
        extra = member.read(1)
    if done != info.file_size or extra:
        raise ClassifyError(
            message(f"'{path}': member '{name}' does not hold the {info.file_size:,} bytes its header says",
                    hint=_REFIT)
        )
    return data


def _check_inner_zip(data: bytes | bytearray, name: str, path: Path) -> None:
    """The members of a skops file (itself a zip) are bounded as the artifact's are, before skops reads one."""
    total = 0
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ClassifyError(
            message(f"'{path}': its pipeline cannot be read by skops (not a skops file)", hint=_REFIT)
        ) from None
    with inner:
        for info in inner.infolist():
            problem = _member_problem(info, _MAX_MEMBER_BYTES)
            total += info.file_size
            if problem is None and total > _MAX_MEMBER_BYTES:
                problem = f"holds {total:,} bytes in all"
            if problem:
                raise ClassifyError(
                    message(f"'{path}': '{name}', member '{info.filename}' {problem}", hint="refusing to read it")
                )


def _parse_manifest(data: bytes | bytearray, path: Path) -> Any:
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ClassifyError(
            message(f"'{path}': its manifest is not UTF-8 text (byte {exc.start:,})", hint=_REFIT)
        ) from None
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if isinstance(exc, ValueError) else "nested too deeply"
        raise ClassifyError(message(f"'{path}': its manifest is not valid JSON ({reason})", hint=_REFIT)) from None


def _check_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ClassifyError(
            message(
                f"'{path}' is not a featx classifier (its manifest has no format '{ARTIFACT_FORMAT}')", hint=_PASS_ONE
            )
        )
    version = manifest.get("format_version")
    versions = manifest.get("versions", {})
    if version != ARTIFACT_VERSION:
        written_by = versions.get("featx", "an unknown version") if isinstance(versions, dict) else "an unknown version"
        raise ClassifyError(
            message(
                f"classifier '{path}' has featx classifier format {version!r} (written by featx {written_by})",
                hint=f"this featx {__version__} reads format {ARTIFACT_VERSION} only: re-run `featx classify` with "
                f"this featx, or use featx {written_by} to predict",
            )
        )
    classes = manifest.get("classes")
    files = manifest.get("files", {})
    inputs = manifest.get("inputs", [])
    problem = None
    if not isinstance(versions, dict):
        problem = "'versions' is not an object"
    elif not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        problem = "'classes' is not a list of class names"
    elif len(set(classes)) != len(classes):
        problem = "'classes' names a class twice"
    elif not isinstance(manifest.get("classifier"), dict) or not isinstance(manifest["classifier"].get("family"), str):
        problem = "'classifier' does not name a family"
    elif not isinstance(files, dict) or not isinstance(files.get("booster"), (str, type(None))):
        problem = "'files' is not an object of member names"
    elif not isinstance(inputs, list) or not all(isinstance(b, dict) for b in inputs):
        problem = "'inputs' is not a list of feature blocks"
    elif not all(isinstance(b.get("layer"), str) and isinstance(b.get("provenance"), dict)
                 and isinstance(b.get("layer_info"), dict) for b in inputs):
        problem = "an input lacks its layer, provenance or layer_info"
    elif not isinstance(manifest.get("n_features", 0), int):
        problem = "'n_features' is not an integer"
    if problem:
        raise ClassifyError(message(f"'{path}': its manifest is damaged: {problem}", hint=_REFIT))


def _check_classes(pipeline: Any, manifest: Mapping[str, Any], path: Path) -> None:
    """The estimator predicts class indices into the manifest's classes, one probability column each."""
    learnt = getattr(pipeline.steps[-1][1], "classes_", None)
    if learnt is None:
        return
    learnt = np.asarray(learnt)
    n = len(manifest["classes"])
    if learnt.dtype.kind not in "iu" or learnt.size != n or (learnt.size and (learnt.min() < 0 or learnt.max() >= n)):
        raise ClassifyError(
            message(
                f"'{path}': its manifest names {n} classes, its estimator predicts {learnt.size} "
                f"({printable(learnt[:5].tolist())}{', ...' if learnt.size > 5 else ''})",
                hint=_REFIT,
            )
        )


def _load_pipeline(data: bytes, path: Path) -> Any:
    sio = _skops_io()

    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a damaged skops file
        raise ClassifyError(
            message(
                f"'{path}': its pipeline cannot be read by skops ({type(exc).__name__}: {printable(str(exc))[:200]})",
                hint=_REFIT,
            )
        ) from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ClassifyError(
            message(
                f"'{path}' holds types featx does not trust ({', '.join(refused)})",
                hint="it was not written by `featx classify`, refusing to load it",
            )
        )
    try:
        return sio.loads(data, trusted=list(untrusted))
    except Exception as exc:  # a schema skops accepts but cannot build from
        raise ClassifyError(
            message(f"'{path}': its pipeline cannot be built by skops ({type(exc).__name__}: "
                    f"{printable(str(exc))[:200]})", hint=_REFIT)
        ) from None


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
            manifest = _parse_manifest(_read_member(archive, MANIFEST, path, _MAX_MANIFEST_BYTES), path)
            _check_manifest(manifest, path)
            data = _read_member(archive, PIPELINE, path)
            _check_inner_zip(data, PIPELINE, path)
            pipeline = _load_pipeline(data, path)
            del data
            member = manifest.get("files", {}).get("booster")
            if member:
                own_file = _own_file(manifest)
                if own_file is None:
                    raise ClassifyError(
                        message(f"'{path}': its manifest names an estimator file '{member}' for a classifier family "
                                "that saves none", hint=_REFIT)
                    )
                try:
                    estimator = own_file.load(_read_member(archive, own_file.name, path))
                except ClassifyError:
                    raise
                except Exception as exc:  # the library's own parser (XGBoostError, with a C++ backtrace)
                    first = (str(exc).strip().splitlines() or [""])[0][:200]  # not the backtrace
                    raise ClassifyError(
                        message(f"'{path}': its estimator file '{own_file.name}' cannot be loaded "
                                f"({type(exc).__name__}: {first})", hint=_REFIT)
                    ) from None
                pipeline = Pipeline([*pipeline.steps, ("clf", estimator)])
            _check_classes(pipeline, manifest, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError) as exc:
        # Not a zip, a damaged one (a bad CRC), or a compression method zipfile does not know.
        reason = "not a zip file" if isinstance(exc, zipfile.BadZipFile) and "File is not a zip" in str(exc) else \
            f"a damaged zip: {printable(str(exc))[:200]}"
        raise ClassifyError(message(f"'{path}' is not a featx classifier ({reason})", hint=_PASS_ONE)) from None
    saved_with = manifest["versions"].get("scikit-learn")
    current = _versions()["scikit-learn"]
    if saved_with != current:
        log.warning(
            f"'{path}' was saved with scikit-learn {saved_with}, this is {current}: its predictions may differ "
            "slightly; re-run `featx classify` to refit it with this version"
        )
    return FittedClassifier(pipeline=pipeline, manifest=manifest, path=path)
