"""A corpus of tampered classifier zips (imported, not collected): good artifacts, then one change each.

Each variant is ``(name, make, expected)``: ``make(artifacts, out)`` writes a
tampered copy of a good artifact at *out* (``artifacts`` maps a family to a
good ``classifier-<family>.zip``), and *expected* is a fragment of the one
line featx must answer.  Used by tests/classification/test_tampered_zips.py
and benchmarks/hostile_files.py.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

MANIFEST = "manifest.json"
PIPELINE = "pipeline.skops"
BOOSTER = "booster.ubj"


def rewrite(src: Path, dst: Path, *, replace: Mapping[str, bytes] | None = None, drop=(), manifest=None) -> Path:
    """Copy the zip *src* to *dst*, replacing members' bytes, dropping some, or editing the manifest's JSON."""
    replace = dict(replace or {})
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            if item.filename in drop:
                continue
            data = replace.pop(item.filename, None)
            if data is None:
                data = old.read(item)
                if item.filename == MANIFEST and manifest is not None:
                    data = json.dumps(manifest(json.loads(data))).encode()
            new.writestr(item.filename, data)
        for name, data in replace.items():
            new.writestr(name, data)
    return dst


def bomb(dst: Path, *, member: str = MANIFEST, gib: float = 1.0, base: Path | None = None) -> Path:
    """A zip of about 1 MB whose *member* expands to *gib* GiB of zeros, written in 1 MiB chunks (never whole)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        if base is not None:
            with zipfile.ZipFile(base) as good:
                for item in good.infolist():
                    if item.filename != member:
                        archive.writestr(item.filename, good.read(item))
        with archive.open(member, "w", force_zip64=True) as fp:
            for _ in range(int(gib * 1024)):
                fp.write(chunk)
    return dst


def _edit(family: str, **kwargs) -> Callable[[Mapping[str, Path], Path], Path]:
    return lambda artifacts, out: rewrite(artifacts[family], out, **kwargs)


def _manifest(family: str, change: Callable[[dict], dict]) -> Callable[[Mapping[str, Path], Path], Path]:
    return _edit(family, manifest=change)


def _truncated(artifacts: Mapping[str, Path], out: Path) -> Path:
    data = artifacts["bayes"].read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def _flipped(artifacts: Mapping[str, Path], out: Path) -> Path:
    """One byte of the compressed pipeline flipped: the zip's directory is intact, the member's CRC is not."""
    shutil.copyfile(artifacts["bayes"], out)
    with zipfile.ZipFile(out) as archive:
        info = archive.getinfo(PIPELINE)
    data = bytearray(out.read_bytes())
    header = 30 + len(info.filename.encode()) + len(info.extra)
    data[info.header_offset + header + info.compress_size // 2] ^= 0x10
    out.write_bytes(bytes(data))
    return out


def _not_zip(artifacts: Mapping[str, Path], out: Path) -> Path:
    out.write_bytes(b"PK\x03\x04 but nothing else of a zip" * 10)
    return out


def _drop_class(manifest: dict) -> dict:
    return {**manifest, "classes": manifest["classes"][:-1]}


def _with(key: str, value) -> Callable[[dict], dict]:
    return lambda manifest: {**manifest, key: value}


def _deep_json(artifacts: Mapping[str, Path], out: Path) -> Path:
    return rewrite(artifacts["bayes"], out, replace={MANIFEST: b"[" * 100_000 + b"]" * 100_000})


def _big_manifest(artifacts: Mapping[str, Path], out: Path) -> Path:
    manifest = json.loads(zipfile.ZipFile(artifacts["bayes"]).read(MANIFEST))
    manifest["padding"] = "x" * (5 << 20)
    return rewrite(artifacts["bayes"], out, replace={MANIFEST: json.dumps(manifest).encode()})


def _skops_bomb(artifacts: Mapping[str, Path], out: Path) -> Path:
    """A pipeline.skops whose own schema.json expands to 300 MiB (skops files are zips)."""
    inner = out.with_suffix(".inner")
    bomb(inner, member="schema.json", gib=300 / 1024)
    try:
        return rewrite(artifacts["bayes"], out, replace={PIPELINE: inner.read_bytes()})
    finally:
        inner.unlink()


#: (name, make, fragment of the message)
VARIANTS: list[tuple[str, Callable[[Mapping[str, Path], Path], Path], str]] = [
    ("garbage booster.ubj", _edit("xgboost", replace={BOOSTER: b"\x00garbage, not UBJSON" * 50}),
     "its estimator file 'booster.ubj' cannot be loaded (XGBoostError"),
    ("empty booster.ubj", _edit("xgboost", replace={BOOSTER: b""}), "member 'booster.ubj' is empty"),
    ("booster.ubj missing", _edit("xgboost", drop=(BOOSTER,)), "it lacks 'booster.ubj'"),
    ("manifest not UTF-8", _edit("bayes", replace={MANIFEST: b'{"format": "featx-classifier\xff\xfe"}'}),
     "its manifest is not UTF-8 text"),
    ("manifest not JSON", _edit("bayes", replace={MANIFEST: b"{format: featx"}), "its manifest is not valid JSON"),
    ("manifest nested 100,000 deep", _deep_json, "its manifest is not valid JSON"),
    ("manifest a list", _edit("bayes", replace={MANIFEST: b"[]"}), "is not a featx classifier (its manifest has no format"),
    ("manifest of 5 MiB", _big_manifest, "member 'manifest.json' is 5,2"),
    ("manifest missing", _edit("bayes", drop=(MANIFEST,)), "it lacks 'manifest.json'"),
    ("classes do not match the pipeline", _manifest("bayes", _drop_class),
     "its manifest names 2 classes, its estimator predicts 3"),
    ("classes of the xgboost one do not match", _manifest("xgboost", _drop_class),
     "its manifest names 2 classes, its estimator predicts 3"),
    ("classes not a list", _manifest("bayes", _with("classes", "abc")), "'classes' is not a list of class names"),
    ("a class named twice", _manifest("bayes", _with("classes", ["a", "a", "b"])), "'classes' names a class twice"),
    ("versions a list", _manifest("bayes", _with("versions", [1, 2])), "'versions' is not an object"),
    ("format version 99", _manifest("bayes", _with("format_version", 99)), "has featx classifier format 99"),
    ("classifier not an object", _manifest("bayes", _with("classifier", "bayes")), "'classifier' does not name a family"),
    ("inputs not a list", _manifest("bayes", _with("inputs", {"a": 1})), "'inputs' is not a list of feature blocks"),
    ("an input without its provenance",
     _manifest("bayes", lambda m: {**m, "inputs": [{k: v for k, v in b.items() if k != "provenance"} for b in m["inputs"]]}),
     "an input lacks its layer, provenance or layer_info"),
    ("pipeline.skops missing", _edit("bayes", drop=(PIPELINE,)), "it lacks 'pipeline.skops'"),
    ("pipeline.skops garbage", _edit("bayes", replace={PIPELINE: b"garbage" * 100}),
     "its pipeline cannot be read by skops"),
    ("pipeline.skops a skops bomb", _skops_bomb, "'pipeline.skops', member 'schema.json' expands from"),
    ("truncated zip", _truncated, "is not a featx classifier"),
    ("a byte flipped in a member", _flipped, "is not a featx classifier (a damaged zip"),
    ("not a zip", _not_zip, "is not a featx classifier (not a zip file)"),
]
