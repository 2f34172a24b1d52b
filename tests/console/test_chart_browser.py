"""The usage chart's labels, measured in a real browser: none is clipped, none overlaps another."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from service.console import chart
from tests.console.conftest import ConsoleSite, sign_in

pytestmark = pytest.mark.e2e

MEASURE = """
(svg) => {
  const box = svg.viewBox.baseVal;
  const texts = [...svg.querySelectorAll(':scope > text')].map((t) => {
    const b = t.getBBox();
    return {text: t.textContent, x: b.x, y: b.y, right: b.x + b.width, bottom: b.y + b.height};
  });
  return {width: box.width, height: box.height, texts};
}
"""


def problems(measured: dict[str, Any]) -> list[str]:
    found = []
    texts = measured["texts"]
    for t in texts:
        if t["x"] < 0 or t["y"] < 0 or t["right"] > measured["width"] or t["bottom"] > measured["height"]:
            found.append(f"{t['text']!r} leaves the chart: {t}")
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            overlap_x = min(a["right"], b["right"]) - max(a["x"], b["x"])
            overlap_y = min(a["bottom"], b["bottom"]) - max(a["y"], b["y"])
            if overlap_x > 0.5 and overlap_y > 0.5:
                found.append(f"{a['text']!r} overlaps {b['text']!r}")
    return found


async def measure(page: Page) -> dict[str, Any]:
    svg = page.locator("svg.chart").first
    result: dict[str, Any] = await svg.evaluate(MEASURE)
    assert result["texts"], "the chart has no labels"
    return result


class TestChartLayout:
    async def test_worst_case_labels_fit(self, browser: Browser) -> None:
        # Tens of thousands a day (the demo's seeding volume) and long department names.
        days = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
        names = {
            "dwp": "Department for Work and Pensions",
            "hmrc": "His Majesty's Revenue and Customs, Personal Tax Operations",
            "council": "Riverside District Council Revenues and Benefits Service",
            "dvla": "Driver and Vehicle Licensing Agency",
        }
        counts = [
            chart.DayCount(day, consumer, 19_500 + 37 * i) for i, day in enumerate(days) for consumer in names
        ]
        page = await browser.new_page()
        try:
            await page.set_content(
                f"<!doctype html><body style='margin:0;width:760px'>{chart.usage_svg(counts, days, names)}"
            )
            measured = await measure(page)
        finally:
            await page.close()
        assert problems(measured) == []
        labels = [t["text"] for t in measured["texts"]]
        assert "80,000" in labels  # the axis tick above the tallest bar, written out in full
        assert all(name in labels for name in names.values())  # every legend name whole

    async def test_the_served_usage_page(self, page: Page, console_site: ConsoleSite) -> None:
        await sign_in(page, console_site, "auditor")
        await page.goto("/console/audit/usage")
        assert problems(await measure(page)) == []
