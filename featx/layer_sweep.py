"""Which network, which layer, which classifier: ``featx sweep`` (both sides).

A sweep is a plan of networks x layers x classifiers:

1. **Plan** (:func:`plan_sweep`, nothing computed): every network name,
   layer name and classifier is checked, ``auto`` is expanded from the
   network's layer index (its stage aliases, plus ``penultimate``), each
   layer gets its relative depth, and every store path and the output
   folder are checked to be writable, before any extraction.
2. **Extraction**: per network, every layer from one forward pass into one
   store (:func:`featx.extraction.extract_features` with several layers);
   a store that already holds them is reused (nothing is computed), one that
   lacks some is extended, an interrupted one resumes.
3. **Evaluation**: per network and layer, :func:`featx.classification.run_classification`
   with the sweep's classifiers, exactly as ``classify --features STORE:LAYER``
   (each family's result does not depend on the others of its run), into
   ``cells/<network>/<layer>/``; with ``concat='best'``, the best layer of
   each network concatenated across networks (``cells/concat``).
4. **Outputs** (in ``out``): ``sweep.json``, ``sweep.csv``,
   ``accuracy-by-layer.png`` (one panel per network, one line per classifier,
   accuracy against relative depth) and ``report.html`` (self-contained).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownLayerError, choices, close_matches, message, option
from .formatting import format_table

__all__ = [
    "AUTO",
    "CONCAT_MODES",
    "SWEEP_CLASSIFIERS",
    "SweepConfig",
    "SweepRow",
    "SweepResult",
    "auto_layers",
    "plan_sweep",
    "run_sweep",
    "format_sweep",
]

log = logging.getLogger("featx")

#: The layer name that stands for the stage outputs plus ``penultimate``.
AUTO = "auto"
#: ``best``: the best layer of each network, concatenated across networks; ``none``: no concatenation.
CONCAT_MODES = ("best", "none")
SWEEP_CLASSIFIERS = ("logreg", "svm", "bayes")
CONCAT = "concat"

# The stage outputs a user would try, by family of alias, first family found wins:
# timm's feature stages, Keras' VGG block pools, the paper names of ResNet and
# AlexNet stages (conv1 is the stem: its maps are large and rarely transfer).
_STAGE_PATTERNS = (re.compile(r"stage\d+"), re.compile(r"block\d+_pool"), re.compile(r"conv([2-9]|\d\d+)"))
# A network with none of those gets evenly spread convolutional outputs.
_SPREAD = (0.25, 0.5, 0.75)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs.  See ``featx sweep --help``.

    Parameters
    ----------
    data : path or URL
        The images, as ``extract``'s ``data``.
    networks : tuple of str
        Model names (``resnet18``, ``timm/tf_efficientnet_lite0``).
    layers : tuple of str
        Layer names of every network, or ``auto`` (the stage outputs and
        ``penultimate``); ``auto`` and names may be mixed.
    classifiers : tuple of str
        Classifier families (a comma-separated string is accepted).
    concat : {'best', 'none'}
    out : path, optional
        The sweep folder (default: ``runs/sweep/<data folder name>``).
    cv : int, optional
        k-fold cross-validation instead of the stored split or hold-out.
    test_size : float
        Hold-out fraction when the images have no split.
    seed : int
        Seed of the random initialisation (``weights='none'``), the splits and the classifiers.
    device : str
        Where the networks run and the GPU classifiers fit.
    features_dir : path
        Parent of the stores, at ``extract``'s default paths, so that a sweep
        reuses what ``extract`` made and the other way round.
    progress : bool
        One progress bar per network.
    extract : mapping
        Any other option of ``extract`` (:meth:`featx.extraction.ExtractConfig.from_options`):
        ``weights``, ``weights_file``, ``image_size``, ``resize``, ``crop``,
        ``mean``, ``std``, ``interpolation``, ``pool``, ``batch_size``,
        ``workers``, ``precision``, ``dtype``, ...
    """

    data: Any
    networks: tuple[str, ...]
    layers: tuple[str, ...] = (AUTO,)
    classifiers: tuple[str, ...] = SWEEP_CLASSIFIERS
    concat: str = "best"
    out: Path | None = None
    cv: int | None = None
    test_size: float = 0.25
    seed: int = 0
    device: str = "auto"
    features_dir: Path = Path("features")
    progress: bool = True
    extract: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        networks = (self.networks,) if isinstance(self.networks, str) else tuple(self.networks)
        layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
        object.__setattr__(self, "networks", tuple(dict.fromkeys(networks)))
        object.__setattr__(self, "layers", tuple(dict.fromkeys(layers)))
        object.__setattr__(self, "classifiers", _parse_classifiers(self.classifiers))
        object.__setattr__(self, "extract", dict(self.extract))
        if not self.networks:
            raise ConfigError(message("no network given", hint=f"pass {option('networks', 'NAME', flag='network')}"))
        if not self.layers:
            raise ConfigError(message("no layer given", hint=f"pass {option('layers', AUTO, flag='layer')}"))
        if self.concat not in CONCAT_MODES:
            raise ConfigError(message(option("concat"), allowed=choices(CONCAT_MODES), got=self.concat))
        taken = [k for k in ("data", "model", "layers", "out", "seed", "device", "progress", "features_dir")
                 if k in self.extract]
        if taken:
            raise ConfigError(
                message(f"extract option '{taken[0]}' is set by the sweep itself", hint="pass it to the sweep")
            )
        if len(self.networks) == 1 and len(self.layers) == 1 and self.layers[0] != AUTO and len(self.classifiers) == 1:
            raise ConfigError(
                message(
                    f"a sweep of one network ({self.networks[0]}), one layer ({self.layers[0]}) and one classifier "
                    f"({self.classifiers[0]}) compares nothing",
                    hint="`featx extract` then `featx classify` does this; give the sweep more layers "
                    f"({option('layers', AUTO, flag='layer')}), networks or classifiers",
                )
            )

        self.classify_config()  # cv, test_size, seed, device: checked here, as classify checks them

    def classify_config(self) -> Any:
        """The :class:`~featx.classification.ClassifyConfig` of every cell (``features`` and ``out`` set per cell)."""
        from .classification import ClassifyConfig

        return ClassifyConfig(
            features=("<store>",), models=self.classifiers, cv=self.cv, test_size=self.test_size, seed=self.seed,
            device=self.device, plots=False, overwrite=True,  # the sweep owns its cell folders: a re-run replaces them
        )

    @property
    def out_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        data = str(self.data).rstrip("/")
        return Path("runs") / "sweep" / (Path(data).stem or "data")


def _parse_classifiers(classifiers: Sequence[str] | str) -> tuple[str, ...]:
    from .classification import FAMILIES

    items = classifiers.split(",") if isinstance(classifiers, str) else [
        c for item in classifiers for c in item.split(",")
    ]
    names = tuple(dict.fromkeys(c.strip() for c in items if c.strip()))
    if not names:
        raise ConfigError(message(option("classifiers"), allowed=f"a list of {choices(FAMILIES)}", got=classifiers))
    for name in names:
        if name not in FAMILIES:
            raise ConfigError(
                message(
                    f"unknown classifier '{name}'",
                    hint=f"{close_matches(name, FAMILIES)}{option('classifiers')} takes {', '.join(FAMILIES)}",
                )
            )
    return names


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedLayer:
    """One layer of a network in the plan: the name it is stored under, its graph node, its relative depth."""

    name: str
    node: str
    depth: float


@dataclass(frozen=True)
class NetworkPlan:
    """One network: its layers (shallow to deep) and its extraction configuration."""

    network: str
    layers: tuple[PlannedLayer, ...]
    extract: Any  # featx.extraction.ExtractConfig
    store: Path


def auto_layers(rows: Sequence[Any]) -> list[tuple[str, str]]:
    """``(name, node)`` of the layers ``auto`` stands for, shallow to deep, one per node.

    Parameters
    ----------
    rows : sequence of LayerInfo
        A network's layers in execution order (``list_layers(model).rows``).

    Returns
    -------
    list of (str, str)
        The stage outputs (timm's ``stage<i>``, VGG's ``block<i>_pool``,
        ResNet's and AlexNet's ``conv2``..``conv5``), else three
        convolutional outputs spread over the depth, and ``penultimate``.
    """
    chosen: list[tuple[str, str]] = []
    for pattern in _STAGE_PATTERNS:
        chosen = [(alias, r.node) for r in rows for alias in r.aliases if pattern.fullmatch(alias)]
        if chosen:
            break
    if not chosen:
        chosen = _spread(rows)
    chosen += [("penultimate", r.node) for r in rows if "penultimate" in r.aliases]
    seen: dict[str, str] = {}
    for name, node in chosen:
        seen.setdefault(node, name)
    order = {r.node: i for i, r in enumerate(rows)}
    return sorted(((name, node) for node, name in seen.items()), key=lambda pair: order[pair[1]])


def _spread(rows: Sequence[Any]) -> list[tuple[str, str]]:
    """Three feature maps spread over the depth, for a network without stage aliases.

    Candidates are the outputs of the blocks two levels down (``features.3``,
    ``features.denseblock2``: the module path names its last node, as
    ``extract`` reads it), else every feature map.
    """
    maps = {r.node for r in rows if len(r.shape) == 3}
    blocks: dict[str, str] = {}
    for r in rows:
        parts = r.node.split(".")
        if len(parts) > 2:
            blocks[".".join(parts[:2])] = r.node  # the last node inside wins
    candidates = [(path, node) for path, node in blocks.items() if node in maps]
    candidates = candidates or [(node, node) for node in (r.node for r in rows) if node in maps]
    if not candidates:
        return []
    return [candidates[int(f * (len(candidates) - 1))] for f in _SPREAD]


def _resolve(name: str, rows: Sequence[Any], network: str) -> str:
    """The node a layer name means (a node, an alias, or a module path: its last node)."""
    nodes = [r.node for r in rows]
    if name in nodes:
        return name
    for r in rows:
        if name in r.aliases:
            return r.node
    inside = [n for n in nodes if n.startswith(name + ".")]
    if inside:
        return inside[-1]
    known = [a for r in rows for a in r.aliases] + nodes
    raise UnknownLayerError(
        message(
            f"unknown layer '{name}' for {network}",
            hint=f"{close_matches(name, known)}list them with `featx layers --model {network}`",
        )
    )


def _network_layers(config: SweepConfig, network: str) -> tuple[PlannedLayer, ...]:
    from .extraction import list_layers

    rows = list_layers(network, image_size=config.extract.get("image_size")).rows
    last = max(len(rows) - 1, 1)
    position = {r.node: i for i, r in enumerate(rows)}
    wanted: list[tuple[str, str]] = []
    for name in config.layers:
        wanted += auto_layers(rows) if name == AUTO else [(name, _resolve(name, rows, network))]
    by_node: dict[str, str] = {}
    for name, node in wanted:
        by_node.setdefault(node, name)  # one name per node: a store holds each node once
    return tuple(
        sorted(
            (PlannedLayer(name, node, round(position[node] / last, 4)) for node, name in by_node.items()),
            key=lambda layer: layer.depth,
        )
    )


def plan_sweep(config: SweepConfig) -> list[NetworkPlan]:
    """Check everything and say what will be extracted where; nothing is computed or written.

    Raises
    ------
    OutputPathError
        The sweep folder or a store cannot be written.
    UnknownModelError, UnknownLayerError
        A network or a layer that does not exist, with the closest names.
    ConfigError
        Any other option that is not allowed.
    """
    from .extraction import ExtractConfig, check_model_name
    from .paths import check_writable_dir

    check_writable_dir(config.out_dir, "out")
    for network in config.networks:
        check_model_name(network, parameter="networks")
    plans = []
    for network in config.networks:
        layers = _network_layers(config, network)
        extract = ExtractConfig.from_options(
            data=config.data, model=network, layers=tuple(layer.name for layer in layers), seed=config.seed,
            device=config.device, progress=config.progress, features_dir=config.features_dir, **config.extract,
        )
        plans.append(NetworkPlan(network, layers, extract, extract.store_path()))
    return plans


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SweepRow:
    """One cell: a network's layer (or the concatenation) and a classifier, evaluated as ``classify`` does.

    ``depth`` is the layer's position in the network's execution order (0 the
    first node, 1 the output); None for the concatenation.
    """

    network: str
    layer: str
    depth: float | None
    columns: int
    classifier: str
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    fit_seconds: float
    run_dir: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "layer": self.layer,
            "relative_depth": self.depth,
            "columns": self.columns,
            "classifier": self.classifier,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "fit_seconds": self.fit_seconds,
            "run": str(self.run_dir),
        }


CSV_COLUMNS = ("network", "layer", "relative_depth", "columns", "classifier", "accuracy", "balanced_accuracy",
               "macro_f1", "fit_seconds")


@dataclass
class ExtractionSummary:
    """What the extraction of one network did."""

    network: str
    store: Path
    layers: dict[str, int]
    up_to_date: bool
    images: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"network": self.network, "store": str(self.store), "layers": self.layers,
                "up_to_date": self.up_to_date, "images": self.images, "seconds": self.seconds}


@dataclass
class SweepResult:
    """What a sweep did: every cell, the best one, the files written."""

    config: SweepConfig
    rows: list[SweepRow]
    extractions: list[ExtractionSummary]
    out_dir: Path
    json_path: Path
    csv_path: Path
    plot_path: Path
    report_path: Path
    panels: list[str]
    seconds: float = 0.0
    extract_seconds: float = 0.0
    classify_seconds: float = 0.0
    evaluation: str = ""

    @property
    def best(self) -> SweepRow:
        """The cell with the highest accuracy (the first one on ties)."""
        return max(self.rows, key=lambda r: r.accuracy)

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "config": {
                "data": str(c.data), "networks": list(c.networks), "layers": list(c.layers),
                "classifiers": list(c.classifiers), "concat": c.concat, "cv": c.cv, "test_size": c.test_size,
                "seed": c.seed, "device": c.device, "extract": {k: str(v) for k, v in c.extract.items()},
            },
            "evaluation": self.evaluation,
            "extractions": [e.to_json() for e in self.extractions],
            "rows": [r.to_json() for r in self.rows],
            "best": self.best.to_json(),
            "plot": {"file": self.plot_path.name, "panels": len(self.panels), "networks": self.panels},
            "report": self.report_path.name,
            "seconds": {
                "total": self.seconds, "extraction": self.extract_seconds, "classification": self.classify_seconds,
            },
        }


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def _quiet_classify() -> Iterator[None]:
    """A cell prints one line: classify's own progress lines (INFO) are held back, its warnings are not."""
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", name)


def _evaluate(template: Any, specs: tuple[str, ...], out: Path) -> Any:
    from .classification import run_classification

    with _quiet_classify():
        return run_classification(replace(template, features=specs, out=out))


def _rows_of(run: Any, network: str, layer: str, depth: float | None) -> list[SweepRow]:
    rows = []
    for r in run.results:
        row = SweepRow(network, layer, depth, int(run.n_features), r.name, r.accuracy, r.balanced_accuracy,
                       r.macro_f1, r.fit_seconds, run.out_dir)
        rows.append(row)
        where = "" if depth is None else f" (depth {depth:.2f})"
        log.info(
            f"{network} {layer}{where}, {row.columns:,} columns, {r.name}: accuracy {r.accuracy:.3f}, "
            f"balanced {r.balanced_accuracy:.3f}, macro F1 {r.macro_f1:.3f}, fit {r.fit_seconds:.2f} s"
        )
    return rows


def run_sweep(config: SweepConfig) -> SweepResult:
    """Plan, extract each network once, evaluate every layer x classifier, write the tables, plot and report.

    Parameters
    ----------
    config : SweepConfig

    Returns
    -------
    SweepResult

    Raises
    ------
    FeatxError
        A bad network, layer, classifier or option, or an output that cannot
        be written: before any extraction.

    Examples
    --------
    >>> from featx.layer_sweep import SweepConfig, format_sweep, run_sweep
    >>> result = run_sweep(SweepConfig(data="data/digits", networks=("resnet18", "alexnet"),
    ...                                extract={"weights": "none", "image_size": 64}))  # doctest: +SKIP
    >>> print(format_sweep(result))  # doctest: +SKIP
    """
    started = time.perf_counter()
    template = config.classify_config()
    plans = plan_sweep(config)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)

    from .extraction import extract_features

    extractions = []
    for plan in plans:
        log.info(f"{plan.network}: {len(plan.layers)} layers ({', '.join(layer.name for layer in plan.layers)}) "
                 f"from one pass into {plan.store}")
        result = extract_features(plan.extract)
        extractions.append(ExtractionSummary(plan.network, result.path, dict(result.layers), result.up_to_date,
                                             result.images, result.seconds))
        if result.up_to_date:
            log.info(f"{plan.network}: the store already holds every layer; nothing computed")
    extracted = time.perf_counter()

    rows: list[SweepRow] = []
    runs: dict[Path, Any] = {}
    best_layer: dict[str, tuple[float, str]] = {}
    for plan, extraction in zip(plans, extractions):
        for layer in plan.layers:
            cell = out / "cells" / _folder_name(plan.network) / _folder_name(layer.name)
            run = _evaluate(template, (f"{extraction.store}:{layer.name}",), cell)
            runs[run.out_dir] = run
            rows += _rows_of(run, plan.network, layer.name, layer.depth)
            accuracy = run.best.accuracy
            if plan.network not in best_layer or accuracy > best_layer[plan.network][0]:
                best_layer[plan.network] = (accuracy, layer.name)
    if config.concat == "best" and len(plans) > 1:
        specs = tuple(f"{e.store}:{best_layer[e.network][1]}" for e in extractions)
        run = _evaluate(template, specs, out / "cells" / CONCAT)
        runs[run.out_dir] = run
        rows += _rows_of(run, " + ".join(config.networks),
                         " + ".join(best_layer[n][1] for n in config.networks), None)
    finished = time.perf_counter()

    first = next(iter(runs.values()))
    result = SweepResult(
        config=config, rows=rows, extractions=extractions, out_dir=out, json_path=out / "sweep.json",
        csv_path=out / "sweep.csv", plot_path=out / "accuracy-by-layer.png", report_path=out / "report.html",
        panels=list(config.networks), extract_seconds=extracted - started, classify_seconds=finished - extracted,
        evaluation=first.evaluation.description,
    )
    _write_csv(result)
    png = plot_accuracy_by_layer(result)
    result.plot_path.write_bytes(png)
    _write_report(result, runs[result.best.run_dir], png)
    result.seconds = time.perf_counter() - started
    result.json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _write_csv(result: SweepResult) -> None:
    with open(result.csv_path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for row in result.rows:
            record = row.to_json()
            writer.writerow(["" if record[c] is None else record[c] for c in CSV_COLUMNS])


# --------------------------------------------------------------------------- plot and report


# Relative depths closer than this share one tick label.
_TICK_GAP = 0.04


def plot_accuracy_by_layer(result: SweepResult) -> bytes:
    """``accuracy-by-layer.png``: one panel per network, one line per classifier, accuracy against relative depth.

    The concatenation's best accuracy, when there is one, is a dashed line in every panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    networks = result.panels
    columns = min(len(networks), 3)
    lines = math.ceil(len(networks) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.8 * lines), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, columns, sharey=True, squeeze=False).ravel()
    concat = [r for r in result.rows if r.depth is None]
    for ax, network in zip(axes, networks):
        cells = [r for r in result.rows if r.network == network]
        for classifier in result.config.classifiers:
            points = sorted((r.depth, r.accuracy) for r in cells if r.classifier == classifier)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=classifier)
        ticks: list[tuple[float, str]] = []
        for depth, name in sorted({(r.depth, r.layer) for r in cells}):
            if ticks and depth - ticks[-1][0] < _TICK_GAP:  # labels this close would overprint: one tick
                ticks[-1] = (ticks[-1][0], f"{ticks[-1][1]} / {name}")
            else:
                ticks.append((depth, name))
        ax.set_xticks([d for d, _ in ticks], [name for _, name in ticks], rotation=45, ha="right", fontsize=8)
        if concat:
            best = max(concat, key=lambda r: r.accuracy)
            ax.axhline(best.accuracy, color="grey", linestyle="--", linewidth=1,
                       label=f"concat ({best.classifier})")
        ax.set_title(network, fontsize=10)
        ax.set_xlabel("relative depth (layer)", fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[len(networks):]:
        figure.delaxes(ax)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _table(result: SweepResult) -> tuple[tuple[str, ...], list[tuple[str, ...]], int]:
    header = ("network", "layer", "depth", "columns", "classifier", "accuracy", "balanced acc", "macro F1", "fit s")
    best = result.best
    rows = [
        (r.network, r.layer, "" if r.depth is None else f"{r.depth:.2f}", f"{r.columns:,}", r.classifier,
         f"{r.accuracy:.3f}", f"{r.balanced_accuracy:.3f}", f"{r.macro_f1:.3f}", f"{r.fit_seconds:.2f}")
        for r in result.rows
    ]
    return header, rows, result.rows.index(best)


def _write_report(result: SweepResult, best_run: Any, png: bytes) -> None:
    from .classification import write_report
    from .thumbnails import image_thumbnails

    header, rows, marked = _table(result)
    best = result.best
    write_report(
        result.report_path,
        best=best_run,
        title=f"featx sweep: {', '.join(result.config.networks)} on {result.config.data}",
        best_label=f"{best.network} {best.layer}, {best.classifier} (accuracy {best.accuracy:.3f})",
        summary=_summary(result),
        header=header,
        rows=rows,
        marked=marked,
        figures=[("Accuracy by layer", png)],
        thumbnails=image_thumbnails(result.config.data),
    )


def _summary(result: SweepResult) -> list[str]:
    lines = []
    for e in result.extractions:
        done = "reused (nothing computed)" if e.up_to_date else f"{e.images:,} images in {e.seconds:.1f} s"
        lines.append(f"{e.network}: {len(e.layers)} layers from one forward pass, store {e.store}: {done}")
    return lines


def format_sweep(result: SweepResult) -> str:
    """The printed table: one row per network and layer, one accuracy column per classifier, the best marked."""
    classifiers = list(result.config.classifiers)
    best = result.best
    cells: dict[tuple[str, str], dict[str, SweepRow]] = {}
    for r in result.rows:
        cells.setdefault((r.network, r.layer), {})[r.classifier] = r
    rows = []
    for (network, layer), by_name in cells.items():
        first = next(iter(by_name.values()))
        rows.append((
            network, layer, "" if first.depth is None else f"{first.depth:.2f}", f"{first.columns:,}",
            *(f"{by_name[c].accuracy:.3f}{' *' if by_name[c] is best else ''}" for c in classifiers),
        ))
    lines = [
        *_summary(result),
        f"evaluation: {result.evaluation}",
        "",
        format_table(
            ("network", "layer", "depth", "columns", *classifiers), rows, align="<<>>" + ">" * len(classifiers)
        ),
        "",
        f"* best: {best.network} {best.layer} with {best.classifier}, accuracy {best.accuracy:.3f} "
        f"(balanced {best.balanced_accuracy:.3f}, macro F1 {best.macro_f1:.3f})",
        f"time: {result.seconds:.1f} s (extraction {result.extract_seconds:.1f} s, classification "
        f"{result.classify_seconds:.1f} s)",
        "",
        f"table: {result.csv_path} and {result.json_path}",
        f"plot: {result.plot_path}",
        f"report: {result.report_path}",
        f"classifiers of each cell: {result.out_dir / 'cells'}/<network>/<layer>/classifier-<model>.zip",
    ]
    return "\n".join(lines)
