"""``make bench``: run every benchmark in ``bench/`` and print its figures and ratios.

Each benchmark module has a ``main()`` that measures the real code path and a baseline
in the same run, and prints both with their ratio. The machine is shared and noisy, so
compare ratios, not absolute times. Goals are checked with ``bench.goals.check`` and
summarised, PASS or MISS, at the end with the load average. ``python -m bench read
crypto`` runs only the named benchmarks (``audit`` is the package of three).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

from bench import goals


def main() -> int:
    only = set(sys.argv[1:])
    folder = Path(__file__).parent
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(folder)])
        if not m.name.startswith("_") and m.name != "goals"
    )
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
    print(f"\n=== goals ({goals.load_average()} at the end)")
    for line in goals.RESULTS:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
