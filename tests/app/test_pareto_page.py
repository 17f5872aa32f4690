"""The Pareto page on hand-made stored points (no model measured): charts, the inspected point, a click.

The points are written straight into the store the pages share, under this model, the `quick` set and the
live settings, so the page shows them at once; they are removed again after the module."""

from __future__ import annotations

import json

import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.testing.v1 import AppTest
from test_pages import TIMEOUT, page, problems

POINTS = {  # key: (label, sparsity, WER, 95% interval, MB)
    "test-pareto-a": ("test prune 31%", 0.31, 0.08, [0.05, 0.12], 120.0),
    "test-pareto-b": ("test prune 33%", 0.33, 0.12, [0.08, 0.17], 110.0),
    "test-pareto-c": ("test prune 77%", 0.77, 1.02, [0.95, 1.10], 60.0),
}
TRANSCRIPT = "the quick brown fox jumps over the lazy dog " * 6  # long: the table must not cut it


@pytest.fixture(scope="module")
def stored_points():
    from core.measure.store import Point, model_identity
    from ui.resources import LIVE, base_model, dataset_waves, results_store

    model, (dataset, _) = base_model(), dataset_waves("quick")
    store = results_store()
    for key, (label, sparsity, wer, ci, mb) in POINTS.items():
        store.put(
            Point(
                key=key,
                model="whisper-tiny.en",
                model_id=model_identity(model),
                recipe={"steps": [{"prune": {"sparsity": sparsity}}]},
                label=label,
                dataset="quick",
                dataset_fingerprint=dataset.fingerprint(),
                settings=LIVE.key_json(),
                wer=wer,
                cer=None,
                size_bytes=int(mb * 1e6),
                latency_ms=250.0,
                parameters=None,
                result={"wer": wer, "wer_ci95": ci, "looped": 0},
                rows=[{"reference": TRANSCRIPT, "hypothesis": TRANSCRIPT.upper(), "wer": wer}],
                timings={"total": 42.0},
                machine={},
            )
        )
    yield store
    for key in POINTS:
        store.delete(key)


def label_of(at: AppTest, key: str) -> str:
    return next(o for o in at.selectbox(key="pareto_point").options if o.startswith(POINTS[key][0]))


def test_pareto_charts_show_the_chosen_set_bands_and_intervals(stored_points):
    at = page("pages/pareto.py")
    assert not problems(at), problems(at)
    assert any(
        "`quick` set" in c.value and "synthetic speech (espeak-ng, flite)" in c.value for c in at.caption
    )
    charts = at.get("plotly_chart")[:2]
    assert len(charts) == 2
    for chart in charts:
        spec = json.loads(chart.proto.spec)
        assert spec["layout"]["legend"]["orientation"] == "h" and spec["layout"]["legend"]["y"] < 0
        assert any(a["text"].startswith("broken (WER > 50%") for a in spec["layout"]["annotations"])
        hovers = [text for trace in spec["data"] for _, text in trace.get("customdata", [])]
        assert any("95% interval 5.0–12.0%" in text for text in hovers)
        assert spec["layout"]["yaxis"]["range"][1] < 50  # focused on the working points, not 102%
        assert list(chart.proto.selection_mode)  # a click selects a point
        names = [t.get("name") for t in spec["data"]]
        assert "uncompressed" not in names and names.count("baseline (uncompressed)") <= 1
    assert any("9 recipes are stored already" in c.value for c in at.caption)  # the default grid, no promise


def test_pareto_inspects_the_point_chosen_in_the_selectbox(stored_points):
    at = page("pages/pareto.py")
    at.selectbox(key="pareto_point").set_value(label_of(at, "test-pareto-b")).run(timeout=TIMEOUT)
    assert not problems(at), problems(at)
    shown = next(m.value for m in at.markdown if m.value.startswith("**WER"))
    assert "WER 12.0%" in shown and "95% interval 8.0–17.0%" in shown and "measured in 42 s" in shown
    assert '"sparsity": 0.33' in at.code[0].value
    table = at.table[0].value  # a full-width table that wraps: the whole transcript is there
    assert table["reference"].tolist() == [TRANSCRIPT] and table["WER %"].tolist() == ["12.0"]


def test_pareto_click_on_a_point_inspects_it(stored_points):
    """A click as the browser reports it: the chart's selection event (the widget value Plotly sends) names
    the point's key in its customdata. AppTest has no method for it, so the event is sent as the
    browser's widget state; the pure mapping is tested in test_charts."""
    at = page("pages/pareto.py")
    chart = at.get("plotly_chart")[0]
    states = WidgetStates()
    states.widgets.extend(at._tree.get_widget_states().widgets)
    clicked = states.widgets.add()
    clicked.id = chart.proto.id
    key = "test-pareto-c"
    clicked.string_value = json.dumps(
        {
            "selection": {
                "points": [{"curve_number": 0, "point_index": 0, "customdata": [key, "hover"]}],
                "point_indices": [0],
                "box": [],
                "lasso": [],
            }
        }
    )
    at._run(states, timeout=TIMEOUT)
    assert not problems(at), problems(at)
    assert at.selectbox(key="pareto_point").value == label_of(at, key)
    assert any(m.value.startswith("**WER 102.0%") for m in at.markdown)
