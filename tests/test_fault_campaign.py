"""The fault campaign, short version (benchmarks/fault_campaign.py; issue 11, item 8).

The store writer is killed with SIGKILL at 10 random points (new stores and
incremental updates, the final assembly of each included), its disk fills (and
fails with EIO) at random points, two writers race for one store, and committed
parts are bit-flipped and truncated; where mounting is allowed (root), a
complete store on a read-only mount is used and a new one refused.  After each fault the same run again must
leave a store equal, array by array, to the store of an uninterrupted run, and
nothing else on disk.  The runs are forked processes writing synthetic features
(no network), so the whole campaign takes seconds; ``python
benchmarks/fault_campaign.py`` runs the long version, with real tmpfs disks,
a read-only mount and kills of the ``extract`` command itself.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_campaign.py"


@pytest.fixture(scope="module")
def campaign():
    spec = importlib.util.spec_from_file_location("fault_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the quick campaign forks its writers (POSIX only)")
def test_every_fault_resumes_to_the_store_of_an_uninterrupted_run(campaign, tmp_path):
    outcomes = campaign.run_campaign(
        kills=10, fills=3, races=1, corruptions=2, read_only=True, n=24, seed=11, workdir=tmp_path, fork=True
    )
    report = campaign.summary(outcomes)
    kills = [o for o in outcomes if o.fault == "kill -9"]
    assert len(kills) == 10
    assert all(o.returncode == -signal.SIGKILL for o in kills), report  # every kill landed
    assert sum("final assembly" in o.at for o in kills) >= 2, report
    assert sum(o.phase == "update" for o in kills) >= 3, report
    assert all(o.left_after_fault > 0 for o in kills), report  # there was something to resume from
    fills = [o for o in outcomes if o.fault in ("disk full", "I/O error (EIO)")]
    assert [o.returncode for o in fills] == [2, 2, 2], report
    assert all(("rows are safe" in o.note) for o in fills), report
    assert all(o.identical for o in outcomes), report
    assert sum(o.left_after_resume for o in outcomes) == 0, report
    assert [o.note for o in outcomes if "in a part" in o.fault] == ["detected and recomputed"] * 2, report
    read_only = [o for o in outcomes if o.fault == "read-only folder"]  # a read-only mount: root only
    if read_only:
        assert read_only[0].identical and "out is not writable" in read_only[0].note, report
