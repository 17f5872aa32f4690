"""The real app in a real (headless Chromium) browser: `streamlit run app.py`, then look at its pages.

Leaves screenshots (home, compress, record, pareto, pareto-dark, testset, distill, deploy .png) and the
server log in the git-ignored `test-artifacts/` only; tests never write tracked files. `python
tools/screenshots.py` copies the screenshots into `docs/screenshots/` when the README images should be
refreshed.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from browser import (
    ARTIFACTS,
    REPO,
    exception_boxes,
    full_page_screenshot,
    open_page,
    serve_app,
    wait_until_idle,
)

BASELINE_TIMEOUT_MS = 300_000  # first visit loads the model and measures the baseline on `quick`
RECORD_SECONDS = 4  # of the fake microphone's 3 s clip (played in a loop): all of it, once


@pytest.fixture(scope="module")
def streamlit_server():
    """One `streamlit run app.py` for the tests of this module."""
    with serve_app() as server:
        yield server


def test_home_in_browser(streamlit_server):
    with open_page(streamlit_server) as page:
        metrics = page.locator('[data-testid="stMetric"]')
        wer = metrics.filter(has_text="WER").locator('[data-testid="stMetricValue"]')
        wer.wait_for(timeout=BASELINE_TIMEOUT_MS)
        page.wait_for_function(
            "() => /^\\s*\\d{1,3}\\.\\d%\\s*$/.test(document.querySelector("
            "'[data-testid=\"stMetricValue\"]')?.innerText || '')",
            timeout=BASELINE_TIMEOUT_MS,
        )
        page.get_by_text("Reproduce it from the command line").wait_for()
        wait_until_idle(page)

        assert not exception_boxes(page), exception_boxes(page)
        labels = [t.strip() for t in metrics.locator('[data-testid="stMetricLabel"]').all_inner_texts()]
        values = [t.strip() for t in metrics.locator('[data-testid="stMetricValue"]').all_inner_texts()]
        assert labels == ["WER", "Size", "Parameters", "Latency"], labels
        assert re.fullmatch(r"\d{1,3}\.\d%", values[0]), values
        assert re.fullmatch(r"\d+\.\d MB", values[1]), values
        assert re.fullmatch(r"\d+ ms", values[3]), values
        assert page.title() == "Speech Compression Lab"

        shot = full_page_screenshot(page, ARTIFACTS / "home.png")
        assert shot.stat().st_size > 10_000
        print("browser console errors:", page.console_errors or "none")  # shown when the test fails


def metric_value(page, label: str) -> str:
    card = page.locator('[data-testid="stMetric"]').filter(has_text=label)
    return card.locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_compress_slider_moved_with_the_keyboard_changes_the_metrics(streamlit_server):
    with open_page(streamlit_server, "compress") as page:
        page.locator('[data-testid="stMetric"]').filter(has_text="Size").wait_for(timeout=BASELINE_TIMEOUT_MS)
        wait_until_idle(page)
        before = metric_value(page, "Size")
        bits = page.get_by_role("slider").first  # Bits: the only slider while pruning and SVD are off
        assert bits.get_attribute("aria-valuetext") == "8"
        bits.focus()
        for _ in range(4):
            page.keyboard.press("ArrowLeft")  # 8 → 4 bits
        page.wait_for_function(
            "(old) => [...document.querySelectorAll('[data-testid=\"stMetric\"]')].some(m => "
            "m.innerText.includes('Size') && !m.innerText.includes(old))",
            arg=before,
            timeout=BASELINE_TIMEOUT_MS,
        )
        wait_until_idle(page)
        after = metric_value(page, "Size")
        assert float(after.split()[0]) < float(before.split()[0]) * 0.7, (before, after)
        assert not exception_boxes(page), exception_boxes(page)
        full_page_screenshot(page, ARTIFACTS / "compress.png")


def wait_for_recorded_seconds(page, seconds: int, timeout_ms: float = 30_000) -> None:
    """Wait until the audio input's time code (mm:ss, counting while it records) reaches `seconds`."""
    page.wait_for_function(
        "(s) => { const code = document.querySelector('[data-testid=\"stAudioInputWaveformTimeCode\"]');"
        " const m = (code?.innerText || '').trim().match(/^(\\d+):(\\d\\d)$/);"
        " return !!m && 60 * +m[1] + +m[2] >= s; }",
        arg=seconds,
        timeout=timeout_ms,
    )


def test_record_through_the_fake_microphone_gives_a_transcript(streamlit_server):
    clip = REPO / "assets" / "samples" / "hello.wav"
    with open_page(streamlit_server, "record", fake_audio=clip) as page:
        recorder = page.locator('[data-testid="stAudioInput"]')
        recorder.wait_for(timeout=BASELINE_TIMEOUT_MS)
        recorder.get_by_role("button", name=re.compile("record", re.I)).first.click()
        stop = recorder.get_by_role("button", name=re.compile("stop", re.I)).first
        stop.wait_for()  # recording has started
        wait_for_recorded_seconds(page, RECORD_SECONDS)
        stop.click()
        page.get_by_text("Compressed", exact=True).wait_for(timeout=BASELINE_TIMEOUT_MS)
        wait_until_idle(page)
        assert not exception_boxes(page), exception_boxes(page)
        text = page.locator('[data-testid="stMain"]').inner_text().lower()
        assert "speech lab" in text or "short test" in text, text[-800:]
        full_page_screenshot(page, ARTIFACTS / "record.png")


def selectbox_shown(page, label: str) -> str:
    """What a selectbox shows (its chosen option), found by its label."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    return box.evaluate("e => [...e.querySelectorAll('input')].map(i => i.value).join() + e.innerText")


def test_pareto_charts_click_a_point_to_inspect_it_light_and_dark(streamlit_server):
    """After the Compress test stored its points: the charts draw, a click on a marker makes that point the
    inspected one, and the page reads in the dark theme too (screenshots of both)."""
    with open_page(streamlit_server, "pareto") as page:
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        chart.locator("path.point").first.wait_for(timeout=BASELINE_TIMEOUT_MS)
        wait_until_idle(page)
        assert not exception_boxes(page), exception_boxes(page)
        legend = chart.locator("g.legend").bounding_box()
        plot = chart.locator("g.cartesianlayer").bounding_box()
        assert legend["y"] > plot["y"] + plot["height"] - 5, (legend, plot)  # the legend sits below the plot
        before = selectbox_shown(page, "Point")
        markers = chart.locator("g.points path.point")
        for number in range(markers.count()):  # the first marker may be the inspected point already
            markers.nth(number).click(force=True)
            wait_until_idle(page)
            if selectbox_shown(page, "Point") != before:
                break
        assert selectbox_shown(page, "Point") != before, "clicking a point did not inspect it"
        full_page_screenshot(page, ARTIFACTS / "pareto.png")
    with open_page(streamlit_server, "pareto", color_scheme="dark") as page:
        page.locator('[data-testid="stPlotlyChart"] path.point').first.wait_for(timeout=BASELINE_TIMEOUT_MS)
        wait_until_idle(page)
        background = page.locator('[data-testid="stApp"]').evaluate(
            "e => getComputedStyle(e).backgroundColor"
        )
        channels = [int(c) for c in re.findall(r"\d+", background)[:3]]
        assert sum(channels) < 150, background  # the dark theme is on
        full_page_screenshot(page, ARTIFACTS / "pareto-dark.png")


def record_with_fake_microphone(page, recorder, seconds: int = RECORD_SECONDS) -> None:
    """Record `seconds` of the fake microphone into one audio input (its own time code counts them)."""
    recorder.get_by_role("button", name=re.compile("record", re.I)).first.click()
    stop = recorder.get_by_role("button", name=re.compile("stop", re.I)).first
    stop.wait_for()  # recording has started
    code = recorder.locator('[data-testid="stAudioInputWaveformTimeCode"]')
    page.wait_for_function(
        "([element, s]) => { const m = (element?.innerText || '').trim().match(/^(\\d+):(\\d\\d)$/);"
        " return !!m && 60 * +m[1] + +m[2] >= s; }",
        arg=[code.element_handle(), seconds],
        timeout=30_000,
    )
    stop.click()


def test_record_a_two_sentence_test_set_with_the_fake_microphone_and_evaluate_on_it(streamlit_server):
    from core.data import load_dataset

    clip = REPO / "assets" / "samples" / "hello.wav"
    spoken = (REPO / "assets" / "samples" / "hello.txt").read_text().strip()
    with open_page(streamlit_server, "testset", fake_audio=clip) as page:
        name = page.get_by_role("textbox", name="Name of the set")
        name.wait_for(timeout=BASELINE_TIMEOUT_MS)
        name.fill("browser-voice")
        name.press("Enter")
        count = page.get_by_role("spinbutton", name="Sentences")
        count.fill("2")
        count.press("Enter")
        recorders = page.locator('[data-testid="stAudioInput"]')
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=\"stAudioInput\"]').length === 2"
        )
        wait_until_idle(page)
        for number in range(2):
            record_with_fake_microphone(page, recorders.nth(number))
            page.get_by_role("button", name=f"Save {number + 1} of 2 sentences as a dataset").wait_for()
            wait_until_idle(page)
        texts = page.get_by_role("textbox", name="What is said in it (exactly)")
        for number in range(2):  # the fake microphone says something else than the prompt: correct it
            texts.nth(number).fill(spoken)
            texts.nth(number).press("Enter")
            wait_until_idle(page)
        page.get_by_role("button", name="Save 2 of 2 sentences as a dataset").click()
        page.get_by_text("Saved 2 clips as").wait_for(timeout=60_000)
        wer = page.locator('[data-testid="stMetric"]').filter(has_text="WER")
        wer.wait_for(timeout=BASELINE_TIMEOUT_MS)  # the model evaluated on the new set, as a job
        wait_until_idle(page)
        assert not exception_boxes(page), exception_boxes(page)
        saved = load_dataset("browser-voice")
        assert [u.text for u in saved.utterances] == [spoken, spoken]
        assert float(metric_value(page, "WER").rstrip("%")) < 60  # the loop may start mid-sentence
        full_page_screenshot(page, ARTIFACTS / "testset.png")
        picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
        shown = picker.evaluate(
            "e => [...e.querySelectorAll('input')].map(i => i.value).join() + e.innerText"
        )
        assert "browser-voice" in shown, shown  # chosen for every page


def test_distill_short_run_shows_the_loss_curve_and_wer(streamlit_server):
    with open_page(streamlit_server, "distill") as page:
        start = page.get_by_role("button", name=re.compile("^(Start|Resume)$"))
        start.wait_for(timeout=BASELINE_TIMEOUT_MS)
        steps = page.get_by_label("Steps")
        steps.fill("10")
        steps.press("Enter")
        wait_until_idle(page)
        utterances = (
            page.locator('[data-testid="stSlider"]')
            .filter(has_text="Training utterances")
            .get_by_role("slider")
        )
        utterances.focus()
        page.keyboard.press("Home")  # the fewest utterances: a short demo
        wait_until_idle(page)
        assert utterances.get_attribute("aria-valuetext") == "8"
        page.get_by_role("button", name=re.compile("^(Start|Resume)$")).click()
        page.get_by_text("The student is on the Pareto page").wait_for(timeout=BASELINE_TIMEOUT_MS)
        wait_until_idle(page)
        assert not exception_boxes(page), exception_boxes(page)
        assert metric_value(page, "WER before").endswith("%") and metric_value(page, "WER after").endswith(
            "%"
        )
        assert page.locator(".js-plotly-plot").count() >= 2  # the flow diagram and the loss curve
        full_page_screenshot(page, ARTIFACTS / "distill.png")


def test_deploy_the_compress_recipe_to_ctranslate2_and_download_it(streamlit_server, tmp_path):
    with open_page(streamlit_server, "compress") as page:  # Compress's default recipe: 8 bits
        page.locator('[data-testid="stMetric"]').filter(has_text="Size").wait_for(timeout=BASELINE_TIMEOUT_MS)
        wait_until_idle(page)
        page.get_by_role("link", name="Deploy").click()  # same session: the recipe comes along
        page.get_by_text("What to deploy").wait_for(timeout=BASELINE_TIMEOUT_MS)
        page.get_by_text("CTranslate2 4.8.5", exact=True).click()
        wait_until_idle(page)
        page.get_by_role("button", name="Export and measure in CTranslate2 4.8.5").click()
        download = page.get_by_role("button", name="Download the CTranslate2 4.8.5 folder (zip)")
        download.wait_for(timeout=BASELINE_TIMEOUT_MS)
        page.get_by_text("ctranslate2.models.Whisper", exact=False).first.wait_for()  # the loading snippet
        wait_until_idle(page)
        assert not exception_boxes(page), exception_boxes(page)
        text = page.locator('[data-testid="stMain"]').inner_text()
        assert "8-bit channel" in text and "ctranslate2.models.Whisper" in text, text[-800:]
        full_page_screenshot(page, ARTIFACTS / "deploy.png")
        with page.expect_download(timeout=BASELINE_TIMEOUT_MS) as started:
            download.click()
        archive = tmp_path / "export.zip"
        started.value.save_as(archive)
        with zipfile.ZipFile(archive) as zipped:
            names = {Path(n).name for n in zipped.namelist()}
        assert {"model.bin", "config.json", "tokenizer.json", "README.txt"} <= names, names
