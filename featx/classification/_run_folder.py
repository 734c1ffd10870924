"""The run folder of a classify run: checked first, written under a temporary name, renamed when complete.

A run that stops half way (Ctrl-C, SIGTERM, ``kill -9``, an error) must not
leave a folder that looks like a finished run, and a run into a folder that
holds another run must not mix the two (an old ``classifier-bayes.zip`` beside
a new ``results.json`` that lists only logreg).  So every file of a run is
written into ``.<name>.tmp-<pid>`` beside the run folder, and only a complete
run is moved to its name: into a new folder by one rename, into an existing
one (``overwrite``) after featx's own files there are removed.  A temporary
folder of a dead process is removed by the next run to the same place
(:func:`featx.paths.remove_stale_temporaries`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from ..errors import OutputPathError, message, option
from ..paths import check_run_folder, check_writable_dir, remove_stale_temporaries, temporary_path
from ._config import ClassifyConfig
from ._run import ClassifyRun

__all__ = ["RUN_FILES", "RunFolder"]

#: What a run writes in its folder (glob patterns): what ``overwrite`` replaces, and nothing else.
RUN_FILES = (
    "results.json", "report.html", "predictions-*.csv", "confusion-*.png", "classifier-*.zip", "missing-ids.csv",
)


class RunFolder:
    """Where one run writes: :meth:`create` the temporary folder, then :meth:`commit` or :meth:`discard` it."""

    def __init__(self, config: ClassifyConfig, inputs: Iterable[str | os.PathLike] = ()) -> None:
        """Check that the run folder can be written (nothing is created); *inputs* are the stores read."""
        self.config = config
        self.tmp: Path | None = None
        overwrite = bool(getattr(config, "overwrite", False))
        if config.out is not None:
            self.final: Path | None = check_run_folder(
                config.out, "out", own=RUN_FILES, inputs=list(inputs), overwrite=overwrite
            )
        else:
            check_writable_dir(config.runs_dir, "runs_dir")
            self.final = None
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")

    def create(self) -> Path:
        """Make the temporary folder the run writes into (removing dead runs' ones first); return it."""
        if self.final is not None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.final)
            self.tmp = temporary_path(self.final)
        else:
            runs = Path(self.config.runs_dir)
            runs.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(runs, ".*.tmp-*")
            self.tmp = temporary_path(runs / self.stamp)
        self.tmp.mkdir()
        return self.tmp

    def discard(self) -> None:
        """Remove the temporary folder: an interrupted or failed run leaves nothing."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def commit(self, run: ClassifyRun) -> ClassifyRun:
        """Move the complete run to its folder; return *run* with the paths it has there."""
        assert self.tmp is not None
        final = self._move() if self.final is not None else self._move_to_new()
        self.tmp = None

        def moved(path: Path | None) -> Path | None:
            return None if path is None else final / path.name

        results = [
            dataclasses.replace(r, artifact=moved(r.artifact), predictions=moved(r.predictions),
                                confusion=moved(r.confusion))
            for r in run.results
        ]
        return dataclasses.replace(run, out_dir=final, results=results, results_json=final / run.results_json.name)

    def _move(self) -> Path:
        final = self.final
        if not final.exists():
            os.rename(self.tmp, final)
            return final
        for pattern in RUN_FILES:  # the run folder's previous run (overwrite was checked)
            for old in final.glob(pattern):
                old.unlink(missing_ok=True)
        try:
            os.rmdir(final)  # empty now: the new run takes its place in one rename
        except OSError:
            for path in self.tmp.iterdir():  # the user's own files stay: ours join them
                os.replace(path, final / path.name)
            self.tmp.rmdir()
            return final
        os.rename(self.tmp, final)
        return final

    def _move_to_new(self) -> Path:
        runs = Path(self.config.runs_dir)
        for n in range(1, 1000):
            final = runs / (self.stamp if n == 1 else f"{self.stamp}-{n}")
            try:
                final.mkdir()  # reserves the name; the rename replaces the empty folder
            except FileExistsError:
                continue
            os.rename(self.tmp, final)
            return final
        raise OutputPathError(
            message("cannot create a new run folder", got=runs, hint=f"pass {option('out', 'DIR')}")
        )
