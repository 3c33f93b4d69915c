"""The report in a real browser (#26): headless Chromium opens the HTML the renderer wrote, draws
it, fetches nothing and logs nothing. A page that does fetch and log shows the check can fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.report.html import render
from tests.helpers.chromium import open_page
from tests.helpers.png import colours
from tests.helpers.report_docs import SENTENCE, long_job

pytestmark = pytest.mark.slow


async def test_the_report_renders_in_chromium_and_fetches_nothing(tmp_path: Path) -> None:
    report = tmp_path / "jobs.results.report.html"
    report.write_text(render(long_job()), encoding="utf-8")

    page = await open_page(report)

    assert page.requests == [report.resolve().as_uri()]  # the file itself, nothing more
    assert page.console == []
    assert SENTENCE in page.dom
    assert page.dom.count("<svg") >= 8
    # Drawn, not blank: the page is mostly white paper, with ink and colour on it.
    seen = colours(page.png)
    white = seen[b"\xff\xff\xff"]
    assert sum(seen.values()) - white > 0.05 * sum(seen.values())
    assert len(seen) > 50


async def test_printed_on_a4_landscape_no_chart_is_cut(tmp_path: Path) -> None:
    """A4 landscape with the page's 10 mm margins leaves 277 mm, 1,047 CSS pixels: every chart
    fits that width, and none is split across pages (figure: break-inside avoid)."""
    report = tmp_path / "jobs.results.report.html"
    report.write_text(render(long_job()), encoding="utf-8")

    page = await open_page(report, width=1047, media="print", probe="""
        [...document.querySelectorAll('svg')].map(s => {
            const r = s.getBoundingClientRect();
            return [r.left, r.right, r.height, getComputedStyle(s.closest('figure') || s)
                    .breakInside];
        })""")

    assert len(page.probe) >= 8
    for left, right, height, breaks in page.probe:
        assert left >= 0 and right <= 1047 and height > 20
        assert breaks in ("avoid", "auto")  # auto: the share bar, not in a figure
    assert sum(b == "avoid" for *_, b in page.probe) >= 8


async def test_a_page_that_fetches_and_logs_is_caught(tmp_path: Path) -> None:
    page_file = tmp_path / "leaky.html"
    page_file.write_text('<!doctype html><p>x</p><img src="http://example.invalid/a.png">'
                         '<script>console.error("boom")</script>', encoding="utf-8")

    page = await open_page(page_file)

    assert "http://example.invalid/a.png" in page.requests
    assert "console.error: boom" in page.console
