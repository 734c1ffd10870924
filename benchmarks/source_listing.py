"""Image sources at scale: listing and planning a 10^6-row manifest; reading from object storage against local disk.

Part 1, listing: a CSV (and a Parquet) manifest of N rows (``path,label,split,
note``; the paths need not exist: nothing is decoded) is listed with
``open_source`` and planned into a new store with ``StoreWriter.open``, each N
in a fresh process, so that the peak RSS (``getrusage``, the whole process,
Python and pandas included) is that run's.  N = 10^4, 10^5, 10^6 by default:
the seconds show how the cost grows with N.

Part 2, reading: the same real images (``../shared/data/hymenoptera_data``) as
a local folder and as a bucket on a local S3-compatible server (moto's, on
127.0.0.1, started here and stopped), read and decoded as a decoding worker
does (``ImageSource.load_many``, chunks of 16), with featx's read-ahead and
with one read at a time, as served and with ``--latency-ms`` added to each
read (the round trip of a remote store, which the loopback server lacks);
runs interleaved, medians of ``--repeats``.

    .venv/bin/python benchmarks/source_listing.py
    .venv/bin/python benchmarks/source_listing.py --rows 1000000 --skip reading

Needs ``featx[s3,test]`` (s3fs, moto[server], pyarrow).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "extraction"))

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"


def write_manifest(folder: Path, rows: int) -> tuple[Path, Path]:
    """A CSV and a Parquet manifest of *rows* rows: 1,000 classes, splits train/val/test, a note column."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    classes = rng.integers(0, 1000, rows)
    frame = pd.DataFrame(
        {
            "path": [f"images/c{c:04d}/{i:09d}.jpg" for i, c in zip(rng.permutation(rows), classes)],
            "label": [f"class{c:04d}" for c in classes],
            "split": np.array(["train", "val", "test"])[rng.integers(0, 3, rows)],
            "note": [f"n{i % 97}" for i in range(rows)],
        }
    )
    csv, parquet = folder / f"list-{rows}.csv", folder / f"list-{rows}.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)
    return csv, parquet


def measure_listing(manifest: str) -> dict:
    """In this process: seconds to list *manifest* and to plan a new store of it, and the peak RSS."""
    import resource

    from featx.extraction import open_source
    from featx.store import AttributeIdentity, LayerSpec, StoreWriter

    started = time.perf_counter()
    source = open_source(manifest)
    listed = time.perf_counter() - started
    store = Path(tempfile.mkdtemp()) / "s.h5"
    started = time.perf_counter()
    meta = {"model": "x", "data_fingerprint": source.fingerprint}
    writer = StoreWriter(
        store, meta=meta, identity=AttributeIdentity(meta, ("model",)),
        layers=[LayerSpec(name="f", node="f", pool="none", dim=8, source_shape=(8,))], samples=source,
    )
    plan = writer.open()
    planned = time.perf_counter() - started
    writer.close()
    assert len(plan.remaining) == len(source)
    return {
        "rows": len(source),
        "list_s": round(listed, 3),
        "plan_s": round(planned, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def listing(rows: list[int]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for n in rows:
            for manifest in write_manifest(Path(folder), n):
                out = subprocess.run(
                    [sys.executable, __file__, "--measure-listing", str(manifest)],
                    check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                figures = {"manifest": manifest.suffix.lstrip("."), **json.loads(out.stdout.strip().splitlines()[-1])}
                results.append(figures)
                print(
                    f"{figures['manifest']:>8} {figures['rows']:>9,} rows: listed in {figures['list_s']:6.2f} s, "
                    f"planned in {figures['plan_s']:5.2f} s, peak RSS {figures['peak_rss_mib']:7.1f} MiB",
                    flush=True,
                )
    return results


def _read_all(source, indices, chunk: int = 16) -> float:
    """Images/s of reading and decoding *indices* of *source* as a decoding worker does, chunk by chunk."""
    started = time.perf_counter()
    done = 0
    for a in range(0, len(indices), chunk):
        for image in source.load_many(indices[a : a + chunk]):
            assert not isinstance(image, Exception), image
            done += 1
    return done / (time.perf_counter() - started)


def _with_latency(fs, seconds: float) -> None:
    """Every read of *fs* waits *seconds* first: a remote store's round trip, which the loopback server lacks."""
    read = fs.cat_file

    def delayed(*args, **kwargs):
        time.sleep(seconds)
        return read(*args, **kwargs)

    fs.cat_file = delayed


def reading(images: int, repeats: int, latency_ms: float) -> dict:
    import fsspec
    from s3_server import client_environment, s3_server

    import featx.extraction._remote as remote
    from featx.extraction import open_source

    folder_source = open_source(HYMENOPTERA)
    ids = folder_source.ids[:: max(1, len(folder_source) // images)][:images]
    with tempfile.TemporaryDirectory() as tmp, s3_server(Path(tmp)) as endpoint:
        os.environ.update(client_environment(endpoint, Path(tmp)))
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("featx-bench")
        for image_id in ids:
            fs.pipe_file(f"featx-bench/hym/{image_id}", (HYMENOPTERA / image_id).read_bytes())
        local = open_source(HYMENOPTERA)
        s3 = open_source("s3://featx-bench/hym")
        local_rows = [local.ids.index(i) for i in ids]
        s3_rows = list(range(len(s3)))
        window = remote.READ_AHEAD
        runs: dict[str, list[float]] = {}
        for _ in range(repeats):
            for latency in (0.0, latency_ms):
                fs = remote.filesystem("s3://featx-bench")[0]
                if latency:
                    _with_latency(fs, latency / 1000)
                for ahead in (window, 1):
                    remote.READ_AHEAD = ahead
                    name = f"s3 +{latency:g} ms, {ahead} in flight"
                    runs.setdefault(name, []).append(_read_all(s3, s3_rows))
                remote._FILESYSTEMS.clear()  # the next file system has no added latency
            runs.setdefault("local disk", []).append(_read_all(local, local_rows))
        remote.READ_AHEAD = window
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, value in medians.items():
        ratio = value / medians["local disk"]
        print(f"{name:>24}: {value:7.1f} images/s (median of {repeats}; {ratio:.2f} x local disk)", flush=True)
    return {
        "images": len(ids), "repeats": repeats, "read_ahead": window, "latency_ms": latency_ms,
        "images_per_s": medians, "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--images", type=int, default=200, help="images read in part 2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="round trip added to each S3 read (part 2)")
    parser.add_argument("--skip", choices=["listing", "reading"], action="append", default=[])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--measure-listing", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_listing:
        print(json.dumps(measure_listing(args.measure_listing)))
        return
    figures = {}
    if "listing" not in args.skip:
        print("listing and planning a manifest (paths need not exist), one fresh process per run:")
        figures["listing"] = listing(args.rows)
    if "reading" not in args.skip:
        print(f"reading and decoding {args.images} real JPEGs (one process, chunks of 16):")
        figures["reading"] = reading(args.images, args.repeats, args.latency_ms)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
