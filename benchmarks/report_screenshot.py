#!/usr/bin/env python
"""Open a report.html in a real headless browser and save a screenshot next to it.

Checks what a test of the HTML text cannot: that the page renders offline as
one file (plots, confusion matrix, thumbnails), in Chromium from Debian's
packages (``apt-get install chromium``).  The browser runs with the network
turned off (``--no-proxy-server`` with an unreachable proxy for anything it
might still try), so a page that needed an outside resource would show a hole.

    .venv/bin/python benchmarks/report_screenshot.py runs/sweep/digits/report.html
    # -> runs/sweep/digits/report-screenshot.png

The command is an argument list (no shell): the path is passed as it is.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"no Chromium found ({', '.join(BROWSERS)}); install it with `apt-get install -y chromium`")


def screenshot(report: Path, out: Path, *, width: int = 1280, height: int = 2000, timeout: float = 120.0) -> Path:
    """Render *report* with headless Chromium into the PNG *out*."""
    report = report.resolve()
    with tempfile.TemporaryDirectory(prefix="featx-chromium-") as profile:
        command = [
            find_browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            # Offline: any request for an outside resource goes to a proxy that does not exist.
            "--proxy-server=127.0.0.1:9",
            f"--screenshot={out.resolve()}",
            f"--window-size={width},{height}",
            report.as_uri(),
        ]
        subprocess.run(command, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not out.is_file():
        sys.exit(f"Chromium wrote no screenshot to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report.html (of sweep or classify)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: report-screenshot.png next to the report)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    out = args.out or args.report.with_name("report-screenshot.png")
    path = screenshot(args.report, out, width=args.width, height=args.height)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
