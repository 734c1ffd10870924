"""Hostile files through the command line (issue 24, items 4 and 5): malformed stores, tampered classifier zips, a bomb.

Every file of the two corpora (tests/store/malformed_corpus.py: a good store
with one edit each; tests/classification/tampered_zips.py: good classifier
zips with one change each) goes through the real command, one process each:

- each malformed store through ``info``, ``export`` and ``classify``;
- each tampered zip through ``predict``;
- a 1 MB zip holding a 1 GiB ``manifest.json`` through ``predict``: its time and peak RSS.

It prints the outcomes by exit code, how many answers were one line
(``error: ...``) and how many a traceback, the time per command, the bomb's
peak memory, and the files each command left behind in its folder.
``--featx PATH`` runs the commands of another checkout (the same corpus, made
with this one's writer), e.g. the main branch before the fix:

    .venv/bin/python benchmarks/hostile_files.py
    .venv/bin/python benchmarks/hostile_files.py --featx ../main --json before.json

Each command is a fresh Python process (imports included in its time); the
figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "tests", REPO / "tests" / "store", REPO / "tests" / "classification"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def run(featx: Path, args: list[str], cwd: Path) -> dict:
    """One command of the checkout *featx* in a fresh process: exit code, its last line, seconds, files left."""
    before = {p for p in cwd.rglob("*")}
    env = {**os.environ, "PYTHONPATH": str(featx), "FEATX_AUTOTUNE": "0"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(featx / "run_pipeline.py"), *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=600)
    seconds = time.perf_counter() - started
    left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p not in before and p.is_file())
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
    return {
        "args": args[0],
        "rc": process.returncode,
        "one_line": len(lines) == 1 and lines[0].startswith("error: "),
        "traceback": any(line.startswith("Traceback") for line in lines),
        "last": lines[-1][:300] if lines else "",
        "seconds": round(seconds, 2),
        "left": left,
    }


def measure_peak(featx: Path, args: list[str], cwd: Path) -> tuple[int, float, str]:
    """Exit code, seconds and peak RSS (MiB) of one command, from its own rusage (wait4)."""
    env = {**os.environ, "PYTHONPATH": str(featx), "FEATX_AUTOTUNE": "0"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(featx / "run_pipeline.py"), *args], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
    return code, seconds, usage.ru_maxrss / 1024, (lines[-1][:200] if lines else "")


def summarise(title: str, results: list[dict]) -> dict:
    codes = collections.Counter(r["rc"] for r in results)
    one_line = sum(r["one_line"] for r in results)
    tracebacks = sum(r["traceback"] for r in results)
    left = sorted({f for r in results for f in r["left"]})
    seconds = sorted(r["seconds"] for r in results)
    print(f"\n{title}: {len(results)} commands")
    print(f"  exit codes: {', '.join(f'{code}: {n}' for code, n in sorted(codes.items()))}")
    print(f"  one-line errors: {one_line}; tracebacks: {tracebacks}")
    if seconds:
        print(f"  seconds per command: median {seconds[len(seconds) // 2]:.2f}, max {seconds[-1]:.2f}")
    print(f"  files left behind: {len(left)}" + (f" ({', '.join(left[:5])})" if left else ""))
    bad = [r for r in results if r["rc"] != 2 or not r["one_line"]]
    for r in bad[:40]:
        print(f"    {r['variant']} [{r['args']}]: rc {r['rc']}: {r['last'][:160]}")
    return {"commands": len(results), "exit_codes": dict(codes), "one_line": one_line, "tracebacks": tracebacks,
            "left_behind": left, "seconds": seconds, "not_clean": [(r["variant"], r["args"], r["rc"], r["last"])
                                                                  for r in bad]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--featx", type=Path, default=REPO, help="the checkout whose commands run (default: this one)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--no-bomb", action="store_true", help="skip the 1 GiB manifest bomb")
    args = parser.parse_args()
    featx = args.featx.resolve()

    from malformed_corpus import UNUSABLE, VARIANTS, good_store, make_variant
    from tampered_zips import MANIFEST, bomb
    from tampered_zips import VARIANTS as ZIPS

    report: dict = {"featx": str(featx), "python": sys.version.split()[0]}
    work = Path(tempfile.mkdtemp(prefix="featx-hostile-"))
    try:
        good = good_store(work / "good.h5")
        stores = []
        for name, edit, _ in [*VARIANTS, *UNUSABLE]:
            folder = work / "stores" / f"{len(stores):02d}"
            folder.mkdir(parents=True)
            stores.append((name, make_variant(good, edit, folder / "bad.h5")))
        results = []
        for name, path in stores:
            for command in (["info", str(path)], ["export", str(path), "--out", "x.csv"],
                            ["classify", "--features", str(path), "--model", "bayes", "--out", "run", "--no-plots"]):
                if name in {u[0] for u in UNUSABLE} and command[0] == "info":
                    continue  # a store without layers is described (exit 0): not a hostile case for info
                result = run(featx, command, path.parent)
                result["variant"] = name
                results.append(result)
        report["malformed_stores"] = summarise(f"malformed stores ({len(stores)} variants x info, export, classify)",
                                               results)

        # Good classifier zips from the real command, then the tampered copies.
        folder = work / "zips"
        folder.mkdir()
        done = run(REPO, ["classify", "--features", str(good), "--model", "bayes,xgboost", "--out",
                          str(folder / "run"), "--no-plots"], folder)
        if done["rc"] != 0:
            print(f"could not make the good classifiers: {done['last']}")
            return 1
        artifacts = {family: folder / "run" / f"classifier-{family}.zip" for family in ("bayes", "xgboost")}
        results = []
        for k, (name, make, _) in enumerate(ZIPS):
            here = folder / f"{k:02d}"
            here.mkdir()
            path = make(artifacts, here / "classifier-tampered.zip")
            result = run(featx, ["predict", "--classifier", str(path), "--data", "no-images", "--out", "p.csv"], here)
            result["variant"] = name
            results.append(result)
        report["tampered_zips"] = summarise(f"tampered classifier zips ({len(ZIPS)} variants x predict)", results)

        if not args.no_bomb:
            here = folder / "bomb"
            here.mkdir()
            path = bomb(here / "classifier-bomb.zip", member=MANIFEST, gib=1.0, base=artifacts["bayes"])
            code, seconds, peak, last = measure_peak(featx, ["predict", "--classifier", str(path), "--data", "x"], here)
            base_code, base_seconds, base_peak, _ = measure_peak(
                featx, ["predict", "--classifier", str(artifacts["bayes"]), "--data", "no-images"], here
            )
            print(f"\nbomb: a {path.stat().st_size / 1e6:.1f} MB zip holding a 1 GiB manifest.json, through predict")
            print(f"  exit {code} in {seconds:.2f} s, peak RSS {peak:.0f} MiB: {last}")
            print(f"  (the same command on the good classifier, refused for its missing images: exit {base_code} in "
                  f"{base_seconds:.2f} s, peak RSS {base_peak:.0f} MiB)")
            report["bomb"] = {"zip_bytes": path.stat().st_size, "rc": code, "seconds": round(seconds, 2),
                              "peak_rss_mib": round(peak), "message": last, "baseline_seconds": round(base_seconds, 2),
                              "baseline_peak_rss_mib": round(base_peak)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
