"""Compiled networks: ``--compile auto|on|off``, inductor's graph cached on disk, and when it pays.

``torch.compile`` (inductor; on the CPU with *freezing*, which folds the
weights, batch norms included, into the compiled kernels) runs a bf16
ResNet-50 about twice as fast as eager bf16 on a CPU with AMX, but compiling
takes a minute or more the first time.  So:

- the compiled graph is cached on disk (``TORCHINDUCTOR_CACHE_DIR`` set to a
  folder of featx's cache per model, recipe, input shape, precision and torch
  version, :func:`inductor_cache_dir`): the next run of the same network loads
  it instead of compiling it again;
- ``auto`` compiles only when the expected saving exceeds the expected compile
  time (:func:`decide_compile`): the compile time last measured for the same
  key on this machine (a warm cache: seconds), else :data:`FIRST_COMPILE_SECONDS`;
  the saving from the eager forward speed the autotuner measured and the
  compiled one measured after the last compile of the key here (one timed
  pass), else :data:`COMPILED_SPEEDUP`: where compiling did not pay (a CPU
  without AMX gains far less than one with it), ``auto`` stops compiling;
- every pass runs the same fixed number of images
  (:class:`~featx.extraction._network.TruncatedNetwork`), so one static graph
  serves a whole run (no recompilation for a short last batch).

Compiled kernels sum in another order than eager ones: a store records whether
its rows were computed compiled (``forward_compiled``), and a resumed run under
``auto`` keeps that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ._config import COMPILE_MODES
from ._device import autocast

__all__ = [
    "COMPILE_MODES",
    "COMPILED_SPEEDUP",
    "FIRST_COMPILE_SECONDS",
    "CompileDecision",
    "CompileRecord",
    "compile_key",
    "compile_network",
    "decide_compile",
    "inductor_cache_dir",
]

log = logging.getLogger("featx")

#: Compile time assumed when none was measured for the network on this machine (ResNet-50,
#: bf16, 2 cores: 61 s measured with nothing else running; CUDA compiles faster).
FIRST_COMPILE_SECONDS = {"cpu": 90.0, "cuda": 60.0}
#: Forward speed compiled / eager assumed by ``auto`` (bf16 ResNet-50 on a 2-core AMX CPU:
#: 49.6 against 25.6 images/s; kept lower, since the decoder bounds a run end to end).
COMPILED_SPEEDUP = 1.6


@dataclass(frozen=True)
class CompileRecord:
    """What the last compile of a key measured on this machine."""

    seconds: float
    images_per_second: float | None = None  # the compiled forward pass's speed (None: not measured)


@dataclass(frozen=True)
class CompileDecision:
    """Whether the network runs compiled, and why (one line for the log)."""

    compiled: bool
    reason: str


def compile_key(model: str, recipe_json: str, shape: tuple[int, ...], precision: str, layout: str) -> str:
    """The name of a compiled graph's cache folder: model, recipe, input shape, precision, layout, torch version."""
    text = json.dumps([recipe_json, list(shape), precision, layout, str(torch.__version__)])
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    return f"{model.replace('/', '-')}-{digest}"


def inductor_cache_dir(key: str) -> Path:
    """Where inductor caches the compiled graph of *key*: ``<featx cache>/inductor/<key>``."""
    from ._autotune import cache_dir

    return cache_dir() / "inductor" / key


def _times_file() -> Path:
    from ._autotune import cache_dir

    return cache_dir() / "inductor" / "compile-seconds.json"


def _record(value: object) -> CompileRecord:
    if isinstance(value, dict):  # {"seconds": ..., "images_per_second": ...}
        speed = value.get("images_per_second")
        return CompileRecord(float(value["seconds"]), float(speed) if speed is not None else None)
    return CompileRecord(float(value))  # an earlier featx recorded the seconds alone


def _read_times() -> dict[str, CompileRecord]:
    try:
        data = json.loads(_times_file().read_text(encoding="utf-8"))
        return {str(k): _record(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def _record_time(key: str, record: CompileRecord) -> None:
    """Record what compiling *key* measured (atomically; a cache that cannot be written is only a guess lost)."""
    path = _times_file()
    times = {k: asdict(r) for k, r in _read_times().items()}
    times[key] = {name: round(value, 2) if value is not None else None for name, value in asdict(record).items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(times, f, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning(f"could not record the compile time in {path} ({exc.strerror or exc})")


def decide_compile(
    mode: str,
    *,
    images: int,
    device: torch.device,
    key: str,
    images_per_second: float | None,
    recorded: bool | None = None,
) -> CompileDecision:
    """``--compile``'s decision for a run of *images* images.

    Parameters
    ----------
    mode : str
        One of :data:`COMPILE_MODES`.
    images : int
        Images still to compute.
    device : torch.device
    key : str
        :func:`compile_key` (its measured compile time, if any, is the estimate).
    images_per_second : float or None
        The eager forward speed the autotuner measured (None: unknown, then
        ``auto`` compiles from 20,000 images on).
    recorded : bool, optional
        What the store records (a resumed run under ``auto`` keeps it).
    """
    if mode == "on":
        return CompileDecision(True, "compiled (--compile on)")
    if mode == "off":
        return CompileDecision(False, "eager (--compile off)")
    if recorded is not None:
        how = "compiled" if recorded else "eager"
        return CompileDecision(recorded, f"{how} (compile auto: as the store's rows were computed)")
    measured = _read_times().get(key)
    estimate = measured.seconds if measured is not None else FIRST_COMPILE_SECONDS.get(device.type, 90.0)
    source = "measured here" if measured is not None else "not measured here yet"
    if images_per_second is None or images_per_second <= 0:
        compiled = images >= 20_000
        return CompileDecision(
            compiled, f"{'compiled' if compiled else 'eager'} (compile auto: {images:,} images, speed unknown)"
        )
    compiled_speed = measured.images_per_second if measured is not None else None
    if compiled_speed is not None:
        speedup, how = compiled_speed / images_per_second, "measured here"
        if speedup <= 1.0:
            return CompileDecision(
                False,
                f"eager (compile auto: compiled, the network ran at {compiled_speed:.1f} images/s here, "
                f"eager at {images_per_second:.1f})",
            )
    else:
        speedup, how = COMPILED_SPEEDUP, "assumed"
    saving = images / images_per_second * (1 - 1 / speedup)
    compiled = saving > estimate
    return CompileDecision(
        compiled,
        f"{'compiled' if compiled else 'eager'} (compile auto: ~{saving:.0f} s saved on {images:,} images "
        f"at {speedup:.2f}x eager ({how}) {'>' if compiled else '<='} ~{estimate:.0f} s to compile, {source})",
    )


@contextlib.contextmanager
def _inductor_settings(device: torch.device, key: str):
    import torch._inductor.config as inductor

    folder = inductor_cache_dir(key)
    folder.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    # Inductor imports torch.utils.cpp_extension, which warns on a machine with torch's
    # CUDA build and no GPU that it "found no CUDA runtime": true, and nothing to do
    # with a graph compiled for the CPU.
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    if device.type == "cpu":
        extension_log.setLevel(logging.ERROR)
    # Freezing folds the weights (and batch norms) into the graph: inference only, CPU only.
    try:
        with inductor.patch(freezing=device.type == "cpu", fx_graph_cache=True):
            yield
    finally:
        extension_log.setLevel(level)
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def compile_network(
    extractor: torch.nn.Module, *, device: torch.device, precision: str, image_size: int, key: str
) -> CompileRecord:
    """Compile *extractor*'s body in place and warm it up at its pass size; returns what it measured.

    The warm-up pass (zeros, the run's fixed pass size) is where inductor
    compiles, or loads the graph from :func:`inductor_cache_dir`.  One more
    pass, timed, gives the compiled network's speed; both are recorded for
    :func:`decide_compile`.
    """
    started = time.perf_counter()
    size = extractor.micro_batch or 1
    with _inductor_settings(device, key):
        extractor.body = torch.compile(extractor.body, backend="inductor", dynamic=False)
        pixels = torch.zeros((size, 3, image_size, image_size), device=device)
        with torch.inference_mode(), autocast(device, precision):
            extractor(pixels)
            _synchronize(device)
            seconds = time.perf_counter() - started
            timed = time.perf_counter()
            extractor(pixels)
            _synchronize(device)
            images_per_second = size / (time.perf_counter() - timed)
    record = CompileRecord(seconds, images_per_second)
    _record_time(key, record)
    return record


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
