"""The Learn page, run headless through Streamlit's AppTest on the real Whisper tiny.en (loaded once per
process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "app.py"
TIMEOUT = 300
SECTIONS = ["Pruning", "Quantization", "Low-rank (SVD)", "Distillation"]


def problems(at: AppTest) -> list[str]:
    return [f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception] + [e.value for e in at.error]


def metric(at: AppTest, label: str) -> float:
    """A metric's value as a number ('30.0%' -> 30.0, '1.23e-03' -> 0.00123, '12,345' -> 12345)."""
    values = [m.value for m in at.metric if m.label == label]
    assert len(values) == 1, [m.label for m in at.metric]
    return float(values[0].rstrip("%").replace(",", ""))


def slider(at: AppTest, label_start: str):
    found = [s for s in at.slider if s.label.startswith(label_start)]
    assert len(found) == 1, [s.label for s in at.slider]
    return found[0]


@pytest.fixture(scope="module")
def learn() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.switch_page("pages/learn.py")
    return at.run(timeout=TIMEOUT)


def test_learn_renders_four_sections_with_charts(learn):
    assert not problems(learn), problems(learn)
    labels = [t.label for t in learn.tabs]
    assert [any(label.endswith(s) for label in labels) for s in SECTIONS] == [True] * 4, labels
    # histogram + threshold curve, staircase, spectrum, flow diagram + softmax bars
    assert len(learn.get("plotly_chart")) == 6
    links = learn.get("page_link")  # the distillation tab points to the page that trains a student
    assert len(links) == 1 and links[0].proto.page == "distill", links
    assert not learn.button  # and no dead buttons


def test_learn_threshold_changes_weights_removed(learn):
    threshold = slider(learn, "Pruning threshold")
    start = metric(learn, "Weights removed")
    assert 25 < start < 35  # the default threshold removes 30% of encoder fc1
    threshold.set_value(threshold.value * 2).run(timeout=TIMEOUT)
    assert not problems(learn), problems(learn)
    assert metric(learn, "Weights removed") > start + 10
    threshold = slider(learn, "Pruning threshold")
    threshold.set_value(0.0).run(timeout=TIMEOUT)
    assert metric(learn, "Weights removed") == 0.0


def test_learn_quantization_error_shrinks_with_bits(learn):
    errors = []
    for bits in (2, 4, 6, 8):
        learn.slider(key="learn_bits").set_value(bits).run(timeout=TIMEOUT)
        assert not problems(learn), problems(learn)
        errors.append((metric(learn, "Mean |error|"), metric(learn, "Relative error")))
    assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(errors, errors[1:])), errors
    assert errors[-1][1] < 2.0  # 8 bits: well under 2% relative error on a row


def test_learn_quantization_granularity_renders(learn):
    learn.slider(key="learn_bits").set_value(3).run(timeout=TIMEOUT)
    for granularity in ("tensor", "group", "channel"):
        learn.radio(key="learn_granularity").set_value(granularity).run(timeout=TIMEOUT)
        assert not problems(learn), (granularity, problems(learn))
        assert metric(learn, "Relative error") > 0


def test_learn_energy_kept_grows_with_rank(learn):
    kept = []
    for rank in (8, 64, 256):
        slider(learn, "Rank r").set_value(rank).run(timeout=TIMEOUT)
        assert not problems(learn), problems(learn)
        assert metric(learn, "Rank") == rank
        kept.append(metric(learn, "Energy kept"))
    assert kept[0] < kept[1] < kept[2] <= 100, kept
    learn.radio(key="learn_svd_by").set_value("energy kept").run(timeout=TIMEOUT)
    learn.slider(key="learn_energy").set_value(0.8).run(timeout=TIMEOUT)
    assert not problems(learn), problems(learn)
    assert 80 <= metric(learn, "Energy kept") < 82


def test_learn_temperature_slider(learn):
    learn.slider(key="learn_temperature").set_value(8.0).run(timeout=TIMEOUT)
    assert not problems(learn), problems(learn)
    assert len(learn.get("plotly_chart")) == 6


def test_learn_counts_the_layers_as_home_does(learn):
    """Home's caption counts every compressible layer; Learn draws the Linear ones and says both."""
    from ui.resources import base_model

    total = len(base_model("whisper-tiny.en").layers())  # what Home's caption shows
    caption = next(c.value for c in learn.caption if c.value.startswith("Model:"))
    assert f"64 of its {total} compressible layers (the count on Home) are Linear layers" in caption
    assert f"the other {total - 64} are 2 convolutions and 3 embedding tables" in caption
