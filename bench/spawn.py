"""Run a command and write its wall time and ``RUSAGE_CHILDREN`` to a JSON file.

Usage: ``python -S bench/spawn.py RESULT.json -- CMD ...``. Why a separate, small process: a
child's ru_maxrss starts from the memory of the process that forked it (Linux keeps the
pre-exec high-water mark), so measuring from the benchmark itself, which has just generated a
few hundred MB of CloudTrail, would inflate every figure. Only the standard library is used.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    result, cmd = argv[1], argv[3:]
    began = time.perf_counter()
    code = subprocess.call(cmd)
    wall = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(result, "w") as fh:
        json.dump({"wall": wall, "max_rss_kb": usage.ru_maxrss, "returncode": code}, fh)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
