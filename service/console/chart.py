"""The usage chart: fields released to other departments per day, as plain SVG written here.

Pure: no FastAPI, no database. Stacked bars, one per day, one colour per consumer, a
legend, a y axis with round ticks, and a ``<title>`` on every segment. The page shows
the same numbers as a table for people who do not see the chart.

The layout leaves room for what it writes: the plot starts right of the widest y-axis
label, and the legend gives each department a line of its own, never a cut name
(``tests/console/test_chart_browser.py`` measures every label in a real browser).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from xml.sax.saxutils import escape

# Okabe and Ito's palette: told apart by people with the common colour-vision deficiencies,
# and each at least 3:1 against white (WCAG non-text contrast) except yellow, left out.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#000000", "#882255")

WIDTH = 760
PLOT_TOP = 16
PLOT_HEIGHT = 220
LEGEND_LINE = 22
# Generous advance widths of the system sans-serif, per character, for laying text out.
AXIS_FONT, AXIS_CHAR = 12, 7.5
LEGEND_FONT, LEGEND_CHAR = 13, 8.5


@dataclass(frozen=True)
class DayCount:
    day: date
    consumer: str
    count: int


def nice_step(maximum: int, ticks: int = 5) -> int:
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks."""
    if maximum <= ticks:
        return 1
    raw = maximum / ticks
    power = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        if raw <= multiple * power:
            return int(multiple * power)
    return int(10 * power)


def _short(day: date) -> str:
    return f"{day.day} {day:%b}"


def usage_svg(
    counts: Sequence[DayCount],
    days: Sequence[date],
    names: Mapping[str, str],
    *,
    title: str = "Fields released to other departments per day",
) -> str:
    """The chart as an SVG document fragment; ``names`` maps department ids to names."""
    consumers = sorted({c.consumer for c in counts}, key=lambda d: names.get(d, d))
    colour = {consumer: PALETTE[i % len(PALETTE)] for i, consumer in enumerate(consumers)}
    by_day: dict[date, dict[str, int]] = {day: {} for day in days}
    for item in counts:
        if item.day in by_day:
            by_day[item.day][item.consumer] = by_day[item.day].get(item.consumer, 0) + item.count
    totals = [sum(by_day[day].values()) for day in days]
    top = max(totals, default=0)
    step = nice_step(top)
    axis_max = max(step, math.ceil(top / step) * step)
    ticks = list(range(0, axis_max + 1, step))
    plot_left = 12 + math.ceil(max(len(f"{tick:,}") for tick in ticks) * AXIS_CHAR)
    legend_names = [names.get(consumer, consumer) for consumer in consumers]
    widest_legend = max((len(name) for name in legend_names), default=0) * LEGEND_CHAR
    width = max(WIDTH, math.ceil(plot_left + 20 + widest_legend + 8))
    plot_width = width - plot_left - 8
    slot = plot_width / max(1, len(days))
    bar = max(2.0, slot * 0.7)
    legend_top = PLOT_TOP + PLOT_HEIGHT + 40
    height = legend_top + LEGEND_LINE * max(1, len(consumers)) + 8
    total = sum(totals)
    description = (
        f"{total:,} fields released over {len(days)} days to {len(consumers)} other departments."
        if total
        else f"No fields released to other departments in these {len(days)} days."
    )

    def y(value: float) -> float:
        return PLOT_TOP + PLOT_HEIGHT - (value / axis_max) * PLOT_HEIGHT

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="100%" aria-labelledby="chart-title chart-desc">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{escape(description)}</desc>',
    ]
    # Grid lines and y-axis labels.
    for tick in ticks:
        ty = y(tick)
        parts.append(
            f'<line x1="{plot_left}" x2="{width - 8}" y1="{ty:.1f}" y2="{ty:.1f}" '
            'stroke="#b1b4b6" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{plot_left - 6}" y="{ty + 4:.1f}" text-anchor="end" font-size="{AXIS_FONT}" '
            f'fill="#0b0c0c">{tick:,}</text>'
        )
    # One stacked bar per day.
    label_every = max(1, math.ceil(len(days) / 10))
    for index, day in enumerate(days):
        x = plot_left + index * slot + (slot - bar) / 2
        base = 0
        for consumer in consumers:
            count = by_day[day].get(consumer, 0)
            if not count:
                continue
            top_y, bottom_y = y(base + count), y(base)
            label = f"{names.get(consumer, consumer)}, {_short(day)}: {count}"
            parts.append(
                f'<rect x="{x:.1f}" y="{top_y:.1f}" width="{bar:.1f}" height="{bottom_y - top_y:.1f}" '
                f'fill="{colour[consumer]}"><title>{escape(label)}</title></rect>'
            )
            base += count
        if index % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{PLOT_TOP + PLOT_HEIGHT + 18}" text-anchor="middle" '
                f'font-size="12" fill="#0b0c0c">{escape(_short(day))}</text>'
            )
    parts.append(
        f'<line x1="{plot_left}" x2="{width - 8}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
        'stroke="#0b0c0c" stroke-width="1"/>'
    )
    # Legend: one department a line, its whole name.
    for index, (consumer, name) in enumerate(zip(consumers, legend_names, strict=True)):
        lx = plot_left
        ly = legend_top + index * LEGEND_LINE
        parts.append(f'<rect x="{lx}" y="{ly}" width="14" height="14" fill="{colour[consumer]}"/>')
        parts.append(
            f'<text x="{lx + 20}" y="{ly + 12}" font-size="{LEGEND_FONT}" '
            f'fill="#0b0c0c">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
