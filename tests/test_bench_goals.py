"""``bench.goals``: a figure printed beside its goal never reads as the goal itself."""

from __future__ import annotations

import pytest

from bench import goals


@pytest.mark.parametrize(
    ("value", "goal", "at_most", "shown", "verdict"),
    [
        (1306 / 2625, 0.5, False, "0.498x", "MISS"),  # bench read's PostgreSQL ratio, 2026-12-03
        (0.5, 0.5, False, "0.50x", "PASS"),
        (0.53, 0.5, False, "0.53x", "PASS"),
        (3.0004, 3.0, True, "3.0004 ms", "MISS"),
        (23_922.11, 20_000.0, False, "23,922.11/s", "PASS"),
    ],
)
def test_a_figure_is_shown_to_the_decimals_that_tell_it_from_its_goal(
    value: float, goal: float, at_most: bool, shown: str, verdict: str, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = " ms" if shown.endswith(" ms") else "/s" if shown.endswith("/s") else "x"
    passed = goals.check("a goal", value, goal, at_most=at_most, unit=unit)
    line = capsys.readouterr().out.strip()
    goals.RESULTS.remove(line)
    assert line.startswith(f"GOAL a goal: {shown} (goal ")
    assert line.endswith(verdict)
    assert passed == (verdict == "PASS")
