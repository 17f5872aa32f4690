"""The Compress page's cards, per-layer table, export and sidebar read right (user-study findings), run
headless through Streamlit's AppTest; the background worker measures the points."""

from __future__ import annotations

import re

import pytest
from streamlit.proto.Metric_pb2 import Metric as MetricProto
from streamlit.testing.v1 import AppTest

from tests.app.test_pages import TIMEOUT, metrics, page, problems, wait_for_job
from ui.tables import LAYER_COLUMNS, MISSING

PROMISED_TIME = re.compile(
    r"~\s*\d|\bfew seconds\b|\babout \d+(\.\d+)? ?s\b|seconds to minutes|takes minutes"
)


@pytest.fixture(scope="module")
def compress() -> AppTest:
    return wait_for_job(page("pages/compress.py"))  # the first visit measures the 8-bit point as a job


def card(at: AppTest, label: str):
    return next(m for m in at.metric if m.label == label)


def texts(at: AppTest) -> list[str]:
    """Every caption, markdown, info and help text on the page, and the widgets' help."""
    shown = [e.value for kind in (at.caption, at.markdown, at.info) for e in kind]
    shown += [m.help for m in at.metric if m.help]
    for kind in ("checkbox", "toggle", "multiselect", "select_slider", "radio", "selectbox", "slider"):
        shown += [w.help for w in at.get(kind) if getattr(w, "help", None)]
    return shown


def test_the_wer_card_gives_its_interval_and_what_it_was_measured_on(compress):
    assert not problems(compress), problems(compress)
    help_text = card(compress, "WER").help
    assert "Baseline" in help_text and "95% interval of this WER:" in help_text
    assert re.search(r"over \d+ utterances \(\d+ words\)", help_text), help_text
    assert "the difference is" in help_text and "noise of" in help_text
    caption = next(c.value for c in compress.caption if c.value.startswith("WER: 95% interval"))
    assert caption.endswith(help_text.partition("windows. ")[2])


def test_arrows_and_colours_follow_the_words(compress):
    size = card(compress, "Size")
    assert "× smaller" in size.delta  # 8-bit: smaller, an arrow down, in green
    assert size.proto.direction == MetricProto.MetricDirection.DOWN
    assert size.proto.color == MetricProto.MetricColor.GREEN
    latency = card(compress, "Latency")
    if "slower" in latency.delta:
        assert latency.proto.direction == MetricProto.MetricDirection.DOWN
        assert latency.proto.color == MetricProto.MetricColor.RED
    elif "faster" in latency.delta:
        assert latency.proto.direction == MetricProto.MetricDirection.UP
        assert latency.proto.color == MetricProto.MetricColor.GREEN
    else:
        assert latency.proto.direction == MetricProto.MetricDirection.NONE
    assert card(compress, "Speed-up in theory").proto.direction == MetricProto.MetricDirection.NONE


def test_the_sidebar_chips_name_the_groups_short_and_the_help_spells_them_out(compress):
    parts = compress.multiselect(key="quant_groups")
    assert list(parts.options) == ["enc attn", "enc FFN", "dec attn", "dec FFN", "embedding"]
    assert "enc attn / dec attn: the encoder's / decoder's attention" in parts.help
    assert parts.value == [
        "encoder.attention",
        "encoder.ffn",
        "decoder.attention",
        "decoder.ffn",
        "embedding",
    ]


def test_no_text_promises_a_time(compress):
    promised = [text for text in texts(compress) if PROMISED_TIME.search(text)]
    assert not promised, promised


def test_the_per_layer_table_is_readable(compress):
    toggle = compress.toggle(key="show_layers")
    assert re.search(r"applying it took \d+\.\d s when this point was measured", toggle.help), toggle.help
    toggle.set_value(True).run(timeout=TIMEOUT)
    assert not problems(compress), problems(compress)
    table = compress.dataframe[0].value
    assert list(table.columns) == list(LAYER_COLUMNS)
    assert len(table) == 65  # tiny.en: 64 Linear layers and the token embedding, all at 8 bits
    assert set(table["technique"]) == {"quantize"} and set(table["bits"]) == {"8"}
    assert set(table["sparsity"]) == set(table["rank"]) == {MISSING}
    assert table["params"].str.fullmatch(r"[\d,]+ → [\d,]+").all()
    assert table["size"].str.fullmatch(r"[\d.]+ [KM]B → [\d.]+ [KM]B").all()
    assert not table.isna().any().any() and not table.isin(["None"]).any().any()
    assert "encoder.layers.0.fc1" in set(table["layer"])  # short names
    compress.toggle(key="show_layers").set_value(False).run(timeout=TIMEOUT)


def test_the_artifact_download_stays_after_a_rerun(compress):
    assert not compress.get("download_button") or all(
        b.proto.label.startswith("Download recipe") for b in compress.get("download_button")
    )
    compress.button(key="build_artifact").click().run(timeout=TIMEOUT)
    assert not problems(compress), problems(compress)
    download = compress.download_button(key="download_artifact")
    assert re.fullmatch(r"Download artifact \([\d.]+ MB zip\)", download.label)
    compress.run(timeout=TIMEOUT)  # any rerun: a widget moved, or the download clicked
    assert compress.download_button(key="download_artifact").label == download.label
    compress.download_button(key="download_artifact").click().run(timeout=TIMEOUT)
    assert compress.download_button(key="download_artifact").label == download.label


def test_int8_kernels_at_4_bits_are_explained_beside_the_box_and_the_results_stay(compress):
    wait_for_job(compress.select_slider(key="quant_bits").set_value(4).run(timeout=TIMEOUT))
    assert not problems(compress), problems(compress)
    cards = metrics(compress)
    compress.checkbox(key="quant_int8").check().run(timeout=TIMEOUT)
    assert not compress.exception and not compress.get("progress")
    said = [e.value for e in compress.sidebar.error]
    assert len(said) == 1 and "int8" in said[0] and "off with 4 bits" in said[0], said
    assert "\n" not in said[0]
    assert not any("not valid" in e.value for e in compress.error)
    assert metrics(compress) == cards  # the 4-bit results stay; nothing new is measured
    assert '"backend"' not in compress.session_state["recipe_json"]
    compress.checkbox(key="quant_int8").uncheck()
    wait_for_job(compress.select_slider(key="quant_bits").set_value(8).run(timeout=TIMEOUT))
    assert not problems(compress), problems(compress)
    assert not compress.sidebar.error  # the box is off: nothing to explain


def test_a_recipe_equal_to_the_baseline_reads_neutral(compress):
    wait_for_job(compress.toggle(key="quant_on").set_value(False).run(timeout=TIMEOUT))
    assert not problems(compress), problems(compress)
    wer = card(compress, "WER")
    assert wer.delta == "±0.0 pts"
    assert wer.proto.color == MetricProto.MetricColor.GRAY
    assert wer.proto.direction == MetricProto.MetricDirection.NONE
    size = card(compress, "Size")
    assert size.delta == "same size" and size.proto.direction == MetricProto.MetricDirection.NONE
    assert "the baseline's" in wer.help and "lies inside it" in wer.help


def test_an_invalid_recipe_is_said_in_one_line_and_the_last_results_stay(compress):
    cards = metrics(compress)
    compress.session_state["recipe_text"] = '{"steps": [{"quantize": {"bits": 4.5}}]}'
    compress.radio(key="recipe_source").set_value("json").run(timeout=TIMEOUT)
    assert not compress.exception
    errors = [e.value for e in compress.error]
    assert len(errors) == 1 and errors[0].startswith("This recipe is not valid") and "bits" in errors[0]
    assert any(c.value.startswith("Still showing the last valid recipe") for c in compress.caption)
    assert metrics(compress) == cards
    compress.radio(key="recipe_source").set_value("sliders").run(timeout=TIMEOUT)
    wait_for_job(compress)
    assert not problems(compress), problems(compress)
