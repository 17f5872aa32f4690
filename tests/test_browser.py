"""The real app in a real (headless Chromium) browser: `streamlit run app.py`, then look at Home.

Leaves `test-artifacts/home.png` (and the server log) and refreshes `docs/screenshots/home.png` for the README.
"""
from __future__ import annotations

import re
import shutil

from browser import (ARTIFACTS, REPO, exception_boxes, full_page_screenshot, open_page,  # noqa: F401
                     streamlit_server, wait_until_idle)

BASELINE_TIMEOUT_MS = 300_000  # first visit loads the model and measures the baseline on `quick`
README_SCREENSHOT = REPO / "docs" / "screenshots" / "home.png"


def test_home_in_browser(streamlit_server):
    with open_page(streamlit_server) as page:
        metrics = page.locator('[data-testid="stMetric"]')
        wer = metrics.filter(has_text="WER on quick").locator('[data-testid="stMetricValue"]')
        wer.wait_for(timeout=BASELINE_TIMEOUT_MS)
        page.wait_for_function(
            "() => /^\\s*\\d{1,3}\\.\\d%\\s*$/.test(document.querySelector("
            "'[data-testid=\"stMetricValue\"]')?.innerText || '')", timeout=BASELINE_TIMEOUT_MS)
        page.get_by_text("Reproduce it from the command line").wait_for()
        wait_until_idle(page)

        assert not exception_boxes(page), exception_boxes(page)
        labels = [t.strip() for t in metrics.locator('[data-testid="stMetricLabel"]').all_inner_texts()]
        values = [t.strip() for t in metrics.locator('[data-testid="stMetricValue"]').all_inner_texts()]
        assert labels == ["WER on quick", "Size", "Parameters", "Latency"], labels
        assert re.fullmatch(r"\d{1,3}\.\d%", values[0]), values
        assert re.fullmatch(r"\d+\.\d MB", values[1]), values
        assert re.fullmatch(r"\d+ ms", values[3]), values
        assert page.title() == "Speech Compression Lab"

        shot = full_page_screenshot(page, ARTIFACTS / "home.png")
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)
        assert shot.stat().st_size > 10_000
        print("browser console errors:", page.console_errors or "none")  # shown when the test fails
