#!/usr/bin/env python
"""Does the C allocator keep freed activation memory for the next batch?

``featx.extraction.reuse_freed_memory`` sets glibc's ``mallopt`` so that large
tensors freed after one batch are reused by the next instead of being unmapped
and faulted in again.  This prints the minor page faults of allocating and
filling a 64 MiB tensor several times, in a fresh interpreter per setting (the
heap's state must not depend on what ran before).  A reused allocation faults
in almost nothing; a fresh one faults in all its 16,384 pages.

    .venv/bin/python benchmarks/allocator_reuse.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = """
import json, resource, sys
import torch
if sys.argv[1] == "reuse":
    from featx.extraction import reuse_freed_memory
    reuse_freed_memory()
size = (64 << 20) // 4
torch.ones(size)  # the heap grows once
faults = []
for _ in range(int(sys.argv[2])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="allocations measured per setting (default: 5)")
    args = parser.parse_args()
    print(f"{'setting':<10} page faults per 64 MiB allocation (16,384 = nothing reused)")
    for setting in ("default", "reuse"):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, setting, str(args.repeats)], capture_output=True, text=True, check=True
        )
        faults = json.loads(done.stdout)
        print(f"{setting:<10} {', '.join(f'{n:,}' for n in faults)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
