#!/usr/bin/env python
"""featx entry point: ``python run_pipeline.py <command> ...`` (see ``--help``)."""

import sys

try:
    from featx.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports featx: nothing has started, nothing is written
    print("interrupted: nothing was written", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
