"""How the network runs, chosen for the model and device in front of it: images per pass and memory layout.

The engine runs every pass through the network at a fixed number of images
(:class:`~featx.extraction._network.TruncatedNetwork`) and in one memory layout
(:data:`~featx.extraction.LAYOUTS`).  Which is fastest depends on the network,
the image size, the precision and the machine: on a 2-core CPU ResNet-50 runs
fastest 4 images at a time in ``channels_last``, VGG16's first blocks one
image at a time, AlexNet 64 at a time in oneDNN's blocked layout.
:func:`choose_forward_config` decides, in this order:

1. what an earlier run recorded in the store (a resumed run or an extended
   store computes every row the way the first run did: the choice changes the
   last bits of the features);
2. what an earlier measurement of the same network on the same machine found
   (a JSON file per case in :func:`cache_dir`);
3. a measurement: a few passes of each candidate on random input
   (:func:`measure_candidates`), a few seconds on a CPU;
4. with autotuning off, the engine's default (today's configuration).

The default configuration is always a candidate, and a candidate replaces it
only when it is measurably faster (:data:`MIN_GAIN`), so autotuning never makes
a run slower than the default by more than the noise of its measurement.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._version import __version__
from ..store import parts_dir, recorded_attrs
from ._device import autocast
from ._models import LoadedModel
from ._network import (
    TruncatedNetwork,
    ForwardConfig,
    LayerPlan,
    default_layout,
    layouts_for,
    prepare_extractor,
)
from ._timm import TimmNetwork

__all__ = [
    "AUTOTUNE_VARIABLE",
    "CACHE_DIR_VARIABLE",
    "MIN_GAIN",
    "ForwardChoice",
    "cache_dir",
    "candidate_configs",
    "choose_forward_config",
    "default_forward_config",
    "default_micro_batch",
    "measure_candidates",
    "network_layouts",
    "recorded_forward_config",
    "review_cached_choice",
]

log = logging.getLogger("featx")

#: Environment variable naming the folder of featx's cache (else ``$XDG_CACHE_HOME/featx``).
CACHE_DIR_VARIABLE = "FEATX_CACHE_DIR"
#: Environment variable that turns autotuning off for every run when ``0``
#: (``--no-autotune`` for one run): for test suites and scripts that compare
#: stores made by separate runs bit for bit.
AUTOTUNE_VARIABLE = "FEATX_AUTOTUNE"
#: A candidate replaces the default only when it is this much faster: below it,
#: the difference is within what a busy machine's measurement can tell apart,
#: and the default's bits are kept.
MIN_GAIN = 0.03
# Micro-batch sizes tried besides the default (capped by the batch size and memory).
_SIZES = (1, 4, 16, 64, 256)
# Seconds each candidate runs per round (at least one pass), and the rounds: at least
# _ROUNDS, then more (up to _MAX_ROUNDS) until the choice is stable, within the budget.
_SECONDS_PER_ROUND = 0.15
_ROUNDS = 2
_MAX_ROUNDS = 6
# The choice is stable when the fastest candidate stayed the same over the last round and no
# candidate's best pass improved by more than this (a busy moment that lifted off).
_STABLE = 0.05
# A cached measurement is dropped (measured again on the next run) when a run's own speed
# end to end is above it by this factor (it was measured under load: decoding and writing
# included, a run cannot beat the network alone) or below it by this factor.
_CACHED_TOO_SLOW, _CACHED_TOO_FAST = 1.5, 1 / 4
# After the first round, candidates this much slower than the best are not measured again.
_CLEARLY_SLOWER = 1.25
# A measurement stops starting candidates after this long (a busy machine, a huge
# network): the candidates measured by then, the default first, are the choice.
_BUDGET_SECONDS = 30.0


def default_micro_batch(batch_size: int, max_images: int, device: torch.device) -> int:
    """Images per pass without autotuning (see :class:`~featx.extraction._network.TruncatedNetwork`).

    The batch size, or on the CPU, where a batch's activations live in the
    memory the whole process runs in, at most *max_images*
    (:func:`~featx.extraction.probe_layers`), in equal slices: VGG16's 64-channel
    full-resolution activations of 64 images take 2.4 GiB with oneDNN's copies.
    """
    if device.type != "cpu" or batch_size <= max_images:
        return batch_size
    slices = -(-batch_size // max_images)
    return -(-batch_size // slices)


def network_layouts(loaded: LoadedModel, device: torch.device, precision: str) -> tuple[str, ...]:
    """The layouts *loaded*'s network runs in on *device* in *precision*.

    :func:`~featx.extraction.layouts_for`, without ``blocked`` for a timm
    model: oneDNN's blocked chains are rewritten into FX graphs, and a timm
    body (timm's own ``forward_intermediates``) is none, so it runs plain
    NCHW; offering ``blocked`` would time ``contiguous`` twice and record a
    layout that never ran.
    """
    layouts = layouts_for(device, precision)
    if isinstance(loaded.module, TimmNetwork):
        layouts = tuple(layout for layout in layouts if layout != "blocked")
    return layouts


def default_forward_config(
    batch_size: int, max_images: int, device: torch.device, precision: str, layouts: Sequence[str] | None = None
) -> ForwardConfig:
    """The configuration without autotuning: :func:`default_micro_batch` and :func:`default_layout`.

    *layouts* (:func:`network_layouts`) are those the network runs in; where
    the default layout is not among them (``blocked`` for a timm model), the
    default is ``contiguous``.
    """
    layout = default_layout(device, precision)
    if layouts is not None and layout not in layouts:
        layout = "contiguous"
    return ForwardConfig(default_micro_batch(batch_size, max_images, device), layout)


def candidate_configs(
    batch_size: int, max_images: int, device: torch.device, precision: str, layouts: Sequence[str] | None = None
) -> list[ForwardConfig]:
    """The configurations the autotuner times, the default first.

    Micro batches of 1, 4, 16, 64 and 256 images up to the default's (which
    bounds memory, and above which a pass only pads), in every layout that runs
    on *device* in *precision* (or in *layouts*, :func:`network_layouts`),
    except ``contiguous`` where ``blocked`` runs: the blocked layout computes
    the same bits as the plain one without its reorders
    (:mod:`featx.extraction._onednn`), and is the plain one itself for a
    network without a chain of convolutions.
    """
    default = default_forward_config(batch_size, max_images, device, precision, layouts)
    sizes = sorted({size for size in _SIZES if size < default.micro_batch} | {default.micro_batch})
    layouts = tuple(layouts) if layouts is not None else layouts_for(device, precision)
    if "blocked" in layouts:
        layouts = tuple(layout for layout in layouts if layout != "contiguous")
    configs = [default]
    for layout in layouts:
        configs += [ForwardConfig(size, layout) for size in sizes if ForwardConfig(size, layout) != default]
    return configs


@dataclass(frozen=True)
class ForwardChoice:
    """The forward configuration an extraction uses, and why.

    Attributes
    ----------
    config : ForwardConfig
    source : str
        ``'recorded'`` (in the store, by the run that started it), ``'cached'``
        (an earlier measurement), ``'measured'`` (now), ``'default'``
        (autotuning off), or ``'unrecorded'`` (the default, for a store that
        records no configuration this run can reuse: one made before featx
        recorded it, which ran the default, or one made on another device).
    images_per_second : dict of ForwardConfig -> float
        The measurement behind a ``cached`` or ``measured`` choice: each
        candidate's speed at the run's batch size (padding counted).
    seconds : float
        Time the measurement took (0 unless ``measured``).
    cache_file : Path or None
        Where the measurement is cached.
    default : ForwardConfig or None
        The configuration without autotuning, which a measured or cached
        choice is compared with in :meth:`describe`.
    """

    config: ForwardConfig
    source: str
    images_per_second: dict[ForwardConfig, float] = field(default_factory=dict)
    seconds: float = 0.0
    cache_file: Path | None = None
    default: ForwardConfig | None = None

    def describe(self, default: ForwardConfig | None = None) -> str:
        """One line for the log: the configuration, where it comes from, and what it gains (against *default*, else :attr:`default`)."""
        default = default if default is not None else self.default
        text = f"forward pass: {self.config.describe()}"
        if self.source == "recorded":
            return f"{text} (recorded in the store by the run that started it)"
        if self.source == "default":
            return f"{text} (default; autotuning off)"
        if self.source == "unrecorded":
            return f"{text} (default: the store records no configuration that runs here)"
        if self.source == "measured":
            how = f"autotuned in {self.seconds:.1f} s"
        else:
            how = f"autotuned earlier ({self.cache_file})"
        speed = self.images_per_second.get(self.config)
        if speed is None:
            return f"{text} ({how})"
        versus = ""
        if default is not None and default != self.config and default in self.images_per_second:
            versus = f" against {self.images_per_second[default]:.1f} with {default.describe()}"
        return f"{text} ({how}: {speed:.1f} images/s{versus})"


def cache_dir() -> Path:
    """featx's cache folder: ``$FEATX_CACHE_DIR``, else ``$XDG_CACHE_HOME/featx``, else ``~/.cache/featx``."""
    explicit = os.environ.get(CACHE_DIR_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "featx"


def _processor_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s model name on Linux), for the cache key."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _processor_name()


def _cache_key(loaded: LoadedModel, plan: LayerPlan, batch_size: int, device: torch.device, precision: str) -> dict:
    """Everything a measurement depends on (not the weights' values: speed does not depend on them)."""
    return {
        "model": loaded.name,
        "nodes": sorted(set(plan.nodes.values())),
        "pools": sorted(set(plan.pools.values())),
        "image_size": loaded.preprocessing.crop,
        "precision": precision,
        "batch_size": batch_size,
        "max_images": plan.max_images,
        "device": device.type,
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "featx_version": __version__,
        "torch_version": str(torch.__version__),
    }


def _cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "autotune" / f"{key['model']}-{digest}.json"


def _read_cache(path: Path, key: dict) -> dict[ForwardConfig, float] | None:
    """The cached speeds of *key*, or ``None`` (no file, another key, or a damaged file: measured again)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        if content.get("key") != key:
            return None
        return {
            ForwardConfig(int(c["micro_batch"]), str(c["layout"])): float(c["images_per_second"])
            for c in content["candidates"]
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, key: dict, speeds: dict[ForwardConfig, float], chosen: ForwardConfig) -> None:
    """Write the measurement atomically; a cache that cannot be written only costs a measurement next time."""
    content = {
        "key": key,
        "chosen": {"micro_batch": chosen.micro_batch, "layout": chosen.layout},
        "candidates": [
            {"micro_batch": c.micro_batch, "layout": c.layout, "images_per_second": speed}
            for c, speed in speeds.items()
        ],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=1)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning(
            f"could not cache the autotuning result in {path} ({exc.strerror or exc}); it is measured again next time"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_candidates(
    base: TruncatedNetwork,
    configs: Sequence[ForwardConfig],
    *,
    image_size: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    seconds_per_round: float = _SECONDS_PER_ROUND,
    rounds: int = _ROUNDS,
    budget_seconds: float = _BUDGET_SECONDS,
) -> dict[ForwardConfig, float]:
    """Time each configuration on random input; images/s at *batch_size*, padding of the last pass counted.

    Parameters
    ----------
    base : TruncatedNetwork
        The truncated network, on the CPU, not prepared (it is copied for each
        layout and not changed).
    configs : sequence of ForwardConfig
    image_size : int
        Crop size of the random images.
    batch_size : int
        Images per batch of the run: a batch of *b* takes ``ceil(b / m)``
        passes of *m* images.
    device : torch.device
    precision : str
    seconds_per_round, rounds : float, int
        Each candidate runs passes for at least *seconds_per_round* (one pass
        at least) in each round; rounds interleave the candidates, so that a
        busy moment of the machine does not fall on one alone, and each counts
        its fastest pass.  After *rounds* rounds, more are run (up to
        ``_MAX_ROUNDS``, within the budget) until the measurement is stable:
        the same fastest candidate as the round before, and no candidate's best
        pass more than ``_STABLE`` faster than before.  A candidate's first pass, which builds its kernels,
        counts only when it is its only pass of the first round (a long pass,
        that the building hardly changes); on CUDA, where cuDNN's autotuning
        makes first passes slow, one pass of each is run before the rounds.
        After the first round, candidates much slower than the best are not
        run again.
    budget_seconds : float
        No candidate is started after this long: those not measured by then
        are left out of the result (the first, the default, always runs).

    Returns
    -------
    dict of ForwardConfig -> float
        Images/s of each configuration measured, in the order given.
    """
    deadline = time.perf_counter() + budget_seconds
    prepared = {
        layout: prepare_extractor(copy.deepcopy(base), device, precision, layout).eval()
        for layout in dict.fromkeys(c.layout for c in configs)
    }
    generator = torch.Generator().manual_seed(0)
    inputs = {
        size: torch.randn((size, 3, image_size, image_size), generator=generator).to(device)
        for size in {c.micro_batch for c in configs}
    }

    def passes(config: ForwardConfig, min_seconds: float) -> list[float]:
        extractor = prepared[config.layout]
        extractor.micro_batch = config.micro_batch
        times: list[float] = []
        while not times or sum(times) < min_seconds:
            _synchronize(device)
            start = time.perf_counter()
            with autocast(device, precision):
                extractor(inputs[config.micro_batch])
            _synchronize(device)
            times.append(time.perf_counter() - start)
        return times

    best: dict[ForwardConfig, float] = {}
    remaining = list(dict.fromkeys(configs))
    leader = None
    with torch.inference_mode():
        if device.type == "cuda":
            for number, config in enumerate(remaining):
                if number and time.perf_counter() > deadline:
                    break
                passes(config, 0.0)
        for round_number in range(max(rounds, _MAX_ROUNDS)):
            if round_number:
                fastest = min(_per_image(best[c], c, batch_size) for c in best)
                remaining = [c for c in best if _per_image(best[c], c, batch_size) <= _CLEARLY_SLOWER * fastest]
            before = dict(best)
            for config in remaining:
                if best and time.perf_counter() > deadline:
                    break  # what is measured stands; the rest is left out
                times = passes(config, seconds_per_round)
                if round_number == 0 and device.type != "cuda" and len(times) > 1:
                    times = times[1:]
                best[config] = min(min(times), best.get(config, float("inf")))
            now = min(best, key=lambda c: _per_image(best[c], c, batch_size))
            steady = all(best[c] >= (1 - _STABLE) * before[c] for c in best if c in before)
            if time.perf_counter() > deadline or (round_number + 1 >= rounds and now == leader and steady):
                break
            leader = now
    return {c: 1.0 / _per_image(best[c], c, batch_size) for c in configs if c in best}


def _per_image(seconds_per_pass: float, config: ForwardConfig, batch_size: int) -> float:
    """Seconds per image of a batch: ``ceil(b / m)`` passes for *b* images."""
    passes = -(-batch_size // config.micro_batch)
    return seconds_per_pass * passes / batch_size


def _fastest(speeds: dict[ForwardConfig, float], default: ForwardConfig) -> ForwardConfig:
    best = max(speeds, key=speeds.__getitem__)
    if default in speeds and speeds[best] < (1 + MIN_GAIN) * speeds[default]:
        return default
    return best


def recorded_forward_config(
    path: str | os.PathLike, device: torch.device, precision: str, layouts: Sequence[str] | None = None
) -> ForwardConfig | None:
    """The configuration an earlier run into the store at *path* recorded, if this run can reuse it.

    ``None`` when nothing is recorded (no store, or a store from before this
    was recorded), when it was recorded on another kind of device (the
    features differ between devices anyway), or when its layout cannot run
    here: not in *layouts* (:func:`network_layouts`; by default
    :func:`~featx.extraction.layouts_for`).  ``blocked`` recorded for a network
    that cannot run it (a timm model's store from a featx that recorded it) is
    read as ``contiguous``, the layout such a run computed in.
    """
    recorded = recorded_attrs(path, ForwardConfig.ATTRS)
    try:
        config = ForwardConfig(int(recorded["forward_micro_batch"]), str(recorded["forward_layout"]))
    except (KeyError, TypeError, ValueError):
        return None
    runs_here = tuple(layouts) if layouts is not None else layouts_for(device, precision)
    if config.layout == "blocked" and "blocked" not in runs_here and "blocked" in layouts_for(device, precision):
        config = ForwardConfig(config.micro_batch, "contiguous")
    if recorded.get("forward_device") != device.type or config.layout not in runs_here:
        return None
    return config


def choose_forward_config(
    loaded: LoadedModel,
    plan: LayerPlan,
    *,
    path: str | os.PathLike,
    overwrite: bool,
    batch_size: int,
    device: torch.device,
    precision: str,
    autotune: bool,
    before_measuring: Callable[[], None] | None = None,
) -> ForwardChoice:
    """The forward configuration of an extraction into *path*: recorded, cached, measured or default.

    Parameters
    ----------
    loaded : LoadedModel
        The model, with its module (the truncated network is copied from it,
        not changed).
    plan : LayerPlan
        The requested layers (:func:`~featx.extraction.probe_layers`).
    path : path
        The store; what an earlier run recorded there wins (unless
        *overwrite*), and an earlier run that recorded nothing usable here
        gets the default.
    overwrite : bool
        The store is replaced: what it recorded does not count.
    batch_size : int
    device : torch.device
    precision : str
    autotune : bool
        Measure (or reuse a measurement) when nothing is recorded; else the
        default.  ``FEATX_AUTOTUNE=0`` in the environment turns it off too.
    before_measuring : callable, optional
        Called just before a measurement, only when one is made (the Ray
        engine waits there for its workers' processes to be up, so that they
        do not share the cores with it).

    Returns
    -------
    ForwardChoice
    """
    layouts = network_layouts(loaded, device, precision)
    default = default_forward_config(batch_size, plan.max_images, device, precision, layouts)
    if not overwrite:
        recorded = recorded_forward_config(path, device, precision, layouts)
        if recorded is not None:
            return ForwardChoice(recorded, "recorded", default=default)
        if Path(path).exists() or parts_dir(path).is_dir():
            # An earlier run left rows without a usable record: before featx recorded
            # the choice, every run ran the default.
            return ForwardChoice(default, "unrecorded", default=default)
    if not autotune or os.environ.get(AUTOTUNE_VARIABLE, "").strip().lower() in ("0", "off", "false", "no"):
        return ForwardChoice(default, "default", default=default)
    key = _cache_key(loaded, plan, batch_size, device, precision)
    cache_file = _cache_file(key)
    speeds = _read_cache(cache_file, key)
    if speeds is not None and default in speeds:
        return ForwardChoice(_fastest(speeds, default), "cached", speeds, cache_file=cache_file, default=default)
    if before_measuring is not None:
        before_measuring()
    started = time.perf_counter()
    base = TruncatedNetwork(loaded.module, plan.nodes, plan.pools).eval()
    speeds = measure_candidates(
        base,
        candidate_configs(batch_size, plan.max_images, device, precision, layouts),
        image_size=loaded.preprocessing.crop,
        batch_size=batch_size,
        device=device,
        precision=precision,
    )
    del base
    chosen = _fastest(speeds, default)
    _write_cache(cache_file, key, speeds, chosen)
    return ForwardChoice(
        chosen, "measured", speeds, seconds=time.perf_counter() - started, cache_file=cache_file, default=default
    )


def review_cached_choice(choice: ForwardChoice, images_per_second: float) -> str | None:
    """Drop a cached measurement that a run's own speed contradicts; the reason, or None when it stands.

    A run's speed end to end (decoding and writing included) cannot exceed the
    network's alone: a run ``_CACHED_TOO_SLOW`` times faster than the cached
    figure shows a measurement made on a busy machine.  A run far below it
    (``_CACHED_TOO_FAST``) shows a measurement that no longer describes this
    machine.  Either way the next run measures again (the store keeps what
    this run recorded: its rows were computed that way).
    """
    if choice.source != "cached" or choice.cache_file is None or images_per_second <= 0:
        return None
    cached = choice.images_per_second.get(choice.config)
    if not cached:
        return None
    ratio = images_per_second / cached
    if _CACHED_TOO_FAST <= ratio <= _CACHED_TOO_SLOW:
        return None
    try:
        choice.cache_file.unlink()
    except OSError:
        return None
    return (
        f"this run did {images_per_second:.1f} images/s against the {cached:.1f} of the cached measurement "
        f"({choice.cache_file}): dropped, measured again on the next run"
    )
