"""benchmarks/source_listing.py's listing step runs against today's store API (not a timing test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "source_listing.py"


def test_the_listing_step_lists_and_plans_every_row(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label,split,note\n" + "".join(f"a/{i}.jpg,c{i % 3},train,n\n" for i in range(7)))
    done = subprocess.run([sys.executable, str(BENCHMARK), "--measure-listing", str(manifest)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["rows"] == 7
    assert set(figures) == {"rows", "list_s", "plan_s", "peak_rss_mib"}
