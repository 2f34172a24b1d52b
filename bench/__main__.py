"""``make bench``: run every benchmark in ``bench/`` and print its figures and ratios.

Each benchmark module has a ``main()`` that measures the real code path and a baseline
in the same run, and prints both with their ratio. The machine is shared and noisy, so
compare ratios, not absolute times.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main() -> int:
    only = set(sys.argv[1:])
    folder = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(folder)]) if not m.name.startswith("_"))
    if only:
        names = [n for n in names if n in only]
    if not names:
        print("no benchmarks yet")
        return 0
    for name in names:
        print(f"\n=== bench/{name}")
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        module.main()
        print(f"--- bench/{name} took {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
