#!/usr/bin/env python
"""featx entry point: ``python run_pipeline.py <command> ...`` (see ``--help``)."""

import sys

from featx.cli import main

if __name__ == "__main__":
    sys.exit(main())
