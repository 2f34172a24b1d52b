"""The goals the benchmarks are held to: each check prints its figure against the goal with
PASS or MISS, and ``make bench`` repeats every check in one summary at the end, with the
load average the run saw (the machine is shared, so a MISS under load says little)."""

from __future__ import annotations

import os

# Each check as printed, in the order the benchmarks ran.
RESULTS: list[str] = []


def check(name: str, value: float, goal: float, *, at_most: bool = False, unit: str = "x") -> bool:
    """Print ``name``'s figure against ``goal`` (a floor, or a ceiling when ``at_most``)
    with PASS or MISS, record it for the summary, and return whether it passed."""
    passed = value <= goal if at_most else value >= goal
    line = (
        f"GOAL {name}: {_figure(value, goal)}{unit} (goal {'<=' if at_most else '>='} {goal:,.2f}{unit}) "
        f"{'PASS' if passed else 'MISS'}"
    )
    print(line)
    RESULTS.append(line)
    return passed


def _figure(value: float, goal: float) -> str:
    """``value`` to two decimals, or to as many more as it takes to differ from ``goal``
    (a ratio of 0.4975 printed as 0.50 beside a goal of 0.50 and MISS reads as a mistake)."""
    for decimals in range(2, 7):
        shown = f"{value:,.{decimals}f}"
        if value == goal or shown != f"{goal:,.{decimals}f}":
            return shown
    return f"{value:,.6f}"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"
