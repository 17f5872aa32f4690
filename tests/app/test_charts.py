"""The Pareto page's figures (ui.charts), built from a hand-made table: what a reader of the chart sees."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from ui.charts import (
    BASELINE_NAME,
    DARK_BACKGROUND,
    LIGHT_BACKGROUND,
    OUTLINE,
    PALETTE,
    broken_mask,
    contrast,
    front_figure,
    selected_key,
    sensitivity_figure,
    technique_styles,
)


def point(key, recipe, technique, wer, ci, size, latency, looped=0) -> dict:
    return {
        "key": key,
        "recipe": recipe,
        "technique": technique,
        "WER %": wer,
        "WER 95% CI": ci,
        "size MB": size,
        "latency ms": latency,
        "looped": looped,
    }


@pytest.fixture
def table() -> pd.DataFrame:
    """tiny.en-like points: a baseline, working ones in the 5-15% band, two broken ones at ~100%."""
    return pd.DataFrame(
        [
            point("base", "uncompressed", "uncompressed", 6.0, [3.0, 9.5], 151.0, 300.0),
            point("q8", "8-bit channel", "quantize", 6.5, [3.5, 10.0], 42.0, 280.0),
            point("q4g", "4-bit group mse", "quantize", 7.5, [4.0, 11.0], 24.5, 310.0),
            point("q4c", "4-bit channel", "quantize", 104.0, [90.0, 120.0], 24.0, 900.0),
            point("p40", "prune 40%", "prune", 14.0, None, 151.0, None),
            point("p60", "prune 60%", "prune", 100.0, [100.0, 100.0], 151.0, 200.0),
            point("pq", "prune 20% + 8-bit", "prune + quantize", 8.0, [4.0, 12.0], 40.0, 270.0),
        ]
    )


def markers(fig):
    return [t for t in fig.data if t.mode == "markers"]


def test_legend_lies_below_the_plot_horizontally(table):
    legend = front_figure(table, "size MB").layout.legend
    assert legend.orientation == "h" and legend.y < 0 and legend.yanchor == "top"


def test_wer_axis_spans_the_working_points_and_broken_ones_sit_in_a_labelled_band(table):
    fig = front_figure(table, "size MB")
    low, high = fig.layout.yaxis.range
    assert low <= 0 and 14.0 < high < 30  # the worst working point is 14%: no room wasted up to 104%
    band = fig.layout.shapes[0]
    assert band.type == "rect" and band.y1 == pytest.approx(high) and 14.0 < band.y0 < high
    assert any(a.text.startswith("broken (WER > 50%") for a in fig.layout.annotations)
    drawn = {key: y for t in markers(fig) for (key, _), y in zip(t.customdata, t.y)}
    assert band.y0 < drawn["q4c"] < band.y1 and band.y0 < drawn["p60"] < band.y1  # clipped into the band
    assert drawn["q8"] == 6.5 and drawn["p40"] == 14.0  # working points at their WER
    hovers = {key: text for t in markers(fig) for key, text in t.customdata}
    assert "WER 104.0%" in hovers["q4c"] and "broken" in hovers["q4c"]  # the true WER, said in the hover
    assert "95% interval 3.5–10.0%" in hovers["q8"] and "no interval stored" in hovers["p40"]


def test_no_band_without_broken_points(table):
    working = table[~broken_mask(table)]
    fig = front_figure(working, "size MB")
    assert not fig.layout.shapes and not fig.layout.annotations
    assert 14.0 < fig.layout.yaxis.range[1] < 25


def test_broken_follows_core_advice_loops_and_distance_from_the_baseline(table):
    assert broken_mask(table).tolist() == [False, False, False, True, False, True, False]
    table.loc[table["key"] == "pq", "looped"] = 2  # a transcript that ends in a loop: broken at any WER
    table.loc[table["key"] == "p40", "WER %"] = 30.0  # 24 points over the 6% baseline
    assert broken_mask(table).tolist() == [False, False, False, True, True, True, True]


def test_interval_bars_for_working_points_only(table):
    quantize = next(t for t in front_figure(table, "size MB").data if t.name == "quantize")
    keys = [key for key, _ in quantize.customdata]
    up, down = dict(zip(keys, quantize.error_y.array)), dict(zip(keys, quantize.error_y.arrayminus))
    assert up["q8"] == pytest.approx(3.5) and down["q8"] == pytest.approx(3.0)
    assert up["q4c"] is None and down["q4c"] is None  # no bar drawn from the clipped position


def test_ticks_and_titles_are_large(table):
    layout = front_figure(table, "latency ms").layout
    for axis in (layout.xaxis, layout.yaxis):
        assert axis.tickfont.size >= 14 and axis.title.font.size >= 14
    assert layout.xaxis.title.text.startswith("Latency") and layout.yaxis.title.text == "WER (%)"


def test_baseline_is_one_star_and_not_a_technique(table):
    fig = front_figure(table, "size MB")
    names = [t.name for t in fig.data]
    assert names.count(BASELINE_NAME) == 1 and "uncompressed" not in names
    assert len(names) == len(set(names))
    star = next(t for t in fig.data if t.name == BASELINE_NAME)
    assert star.marker.symbol == "star" and [key for key, _ in star.customdata] == ["base"]
    assert "Pareto front" in names


def test_front_joins_working_points_only(table):
    front = next(t for t in front_figure(table, "size MB").data if t.name == "Pareto front")
    assert list(front.x) == [24.5, 42.0, 151.0]  # the broken 24 MB point would beat them all on size
    assert list(front.y) == [7.5, 6.5, 6.0]


def test_rows_without_the_x_value_are_left_out(table):
    fig = front_figure(table, "latency ms")
    keys = {key for t in markers(fig) for key, _ in t.customdata}
    assert "p40" not in keys and {"base", "q8", "q4c"} <= keys


def test_palette_is_distinct_and_reads_on_dark_and_light():
    assert len(set(PALETTE)) == len(PALETTE) >= 6
    for color in PALETTE:
        assert contrast(color, DARK_BACKGROUND) >= 3, color  # the dark theme's "prune" was invisible
        assert max(contrast(color, LIGHT_BACKGROUND), contrast(OUTLINE, LIGHT_BACKGROUND)) >= 3, color
    for a, b in itertools.combinations(PALETTE, 2):
        assert a.lower() != b.lower()


def test_each_technique_keeps_its_colour_and_symbol_in_both_charts(table):
    styles = technique_styles(table["technique"])
    assert "uncompressed" not in styles and len(set(styles.values())) == len(styles)
    for x in ("size MB", "latency ms"):
        for trace in markers(front_figure(table, x)):
            if trace.name in styles:
                assert (trace.marker.color, trace.marker.symbol) == styles[trace.name]
                assert trace.marker.line.color == OUTLINE and trace.marker.line.width >= 1


def test_a_selection_names_the_stored_point():
    event = {
        "selection": {
            "points": [{"curve_number": 1, "point_index": 0, "customdata": ["q8", "<b>8-bit</b>"]}],
            "point_indices": [0],
            "box": [],
            "lasso": [],
        }
    }
    assert selected_key(event) == "q8"
    assert selected_key({"selection": {"points": [], "point_indices": [], "box": [], "lasso": []}}) is None
    assert selected_key(None) is None and selected_key({}) is None
    line = {"selection": {"points": [{"curve_number": 2, "point_index": 1}, {"customdata": ["p40", ""]}]}}
    assert selected_key(line) == "p40"  # a point without customdata (the front line) is skipped


def test_selection_maps_to_a_row_of_the_table(table):
    """What the page does with a click: the clicked trace's customdata names the row it inspects."""
    fig = front_figure(table, "size MB")
    for trace in markers(fig):
        for index, (key, _) in enumerate(trace.customdata):
            event = {
                "selection": {"points": [{"point_index": index, "customdata": list(trace.customdata[index])}]}
            }
            assert table.loc[table["key"] == selected_key(event), "key"].tolist() == [key]


def test_sensitivity_heatmap_labels_do_not_overlap():
    settings = [f"{b}-bit channel {m}" for b in (3, 4, 5, 6, 8) for m in ("absmax", "mse", "gptq")]
    few = pd.DataFrame([[0.01, 0.02]], index=["conv"], columns=["4-bit", "8-bit"])
    many = pd.DataFrame(
        [[0.001 * (i + 1) * (j + 1) for j in range(len(settings))] for i in range(6)],
        index=[f"group {i}" for i in range(6)],
        columns=settings,
    )
    small, large = sensitivity_figure(few, False), sensitivity_figure(many, True)
    assert large.layout.height > small.layout.height  # a row per group, each of a readable height
    assert large.layout.xaxis.tickangle and abs(large.layout.xaxis.tickangle) >= 30
    assert large.data[0].textfont.size < small.data[0].textfont.size  # smaller cell labels when crowded
    assert small.data[0].text.tolist() == [["1.0", "2.0"]]  # ΔWER in points
    assert large.data[0].colorbar.title.text == "log₁₀ KL" and large.data[0].text[0][0] == "0.001"
