"""The HTML report in a real browser (Debian's Chromium through Playwright): the charts are drawn
with their tick labels, the thumbnails load with both boxes, and the links lead to Label Studio.
A screenshot is kept under test-output/report/ for people to look at."""

from __future__ import annotations

import os
from pathlib import Path

from real_browser import chromium
from test_feedback_report import grounding_examples

from varco_labeler.feedback.report import build_report
from varco_labeler.feedback.report_html import render_html

REPO = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("VARCO_E2E_OUTPUT", REPO / "test-output")) / "report"


def test_the_report_page_shows_charts_thumbnails_and_links(png_images, tmp_path) -> None:
    report = build_report(grounding_examples())
    page_file = tmp_path / "report.html"
    html = render_html(report, images=png_images, label_studio_url="http://ls.example:8080")
    page_file.write_text(html, encoding="utf-8")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(page_file.as_uri())
        charts = page.locator("svg")
        assert charts.count() == 3
        for index in range(3):
            box = charts.nth(index).bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 100
        # Tick labels are drawn as text in the charts (matplotlib's SVG keeps them as glyphs).
        assert page.locator("svg g[id^='xtick_']").count() >= 10
        thumbnails = page.locator("img")
        assert thumbnails.count() == 2
        widths = thumbnails.evaluate_all("images => images.map(i => i.naturalWidth)")
        assert all(width > 0 for width in widths), widths  # decoded by the browser
        links = page.locator("a[href*='/projects/1/data?task=']")
        assert links.count() >= 2
        page.screenshot(path=str(OUTPUT / "report.png"), full_page=True)
    assert (OUTPUT / "report.png").stat().st_size > 10_000
