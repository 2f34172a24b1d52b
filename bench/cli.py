"""How long `tellonce --help` takes, against the same help with every group imported up front.

The baseline imports each lazy group's module before printing the help, which is what the
command did before its groups became lazy. Both run as fresh processes, alternately, so
machine noise hits both; the figure is the median of each.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from bench import goals
from service.cli import LAZY_GROUPS

ROUNDS = 7

LAZY = "from service.cli import app; app(['--help'])"
EAGER = (
    "import importlib\n"
    f"for module in {sorted({m for m, _a, _h in LAZY_GROUPS.values()})!r}: importlib.import_module(module)\n"
    "from service.cli import app; app(['--help'])"
)


def _seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, timeout=120)
    return time.perf_counter() - started


def main() -> None:
    lazy: list[float] = []
    eager: list[float] = []
    for _ in range(ROUNDS):
        lazy.append(_seconds(LAZY))
        eager.append(_seconds(EAGER))
    lazy_median, eager_median = statistics.median(lazy), statistics.median(eager)
    print(f"tellonce --help, lazy groups:       {lazy_median:.3f} s (median of {ROUNDS})")
    print(f"baseline, every group imported:     {eager_median:.3f} s")
    print(f"ratio baseline/lazy:                {eager_median / lazy_median:.1f}x")
    goals.check("tellonce --help", lazy_median, 0.5, at_most=True, unit=" s")
