"""The Pareto page's figures, drawn from plain pandas tables: no Streamlit here, so tests build them on
hand-made data and check what a reader sees (legend, axis range, colours, hover text).

The scatter table has one row per measured point: `key`, `recipe` (its label), `technique`, `WER %`,
`WER 95% CI` ([low, high] in percent, or None for a point stored without an interval), `size MB`,
`latency ms` and optionally `looped` (transcripts that end in a decoding loop). The row whose technique is
"uncompressed" is the baseline.

Choices that came from a user study of the charts:
- the legend lies below the plot, horizontal, so both half-width charts keep their plotting area;
- the WER axis spans the working models only (a broken one at 100% WER squashed the useful 5-15% band);
  broken points (core.compress.advice.is_broken) are drawn clipped into a shaded band at the top, their
  true WER in the hover;
- colours are Okabe-Ito (colour-blind safe) without its black, each of them readable on a dark
  background, with a dark outline so the light ones read on a white background too;
- the baseline is one star, not a star plus an "uncompressed" legend entry;
- every point carries its key as customdata, so a click (a Plotly selection) names the stored point.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.compress.advice import BROKEN_DELTA, BROKEN_WER, is_broken
from core.pareto import pareto_front

# Okabe & Ito (2008) without black: orange, sky blue, bluish green, vermillion, reddish purple, blue, grey
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#999999")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "triangle-down", "cross")
BASELINE_COLOR = "#F0E442"  # Okabe-Ito yellow: kept for the baseline star alone
OUTLINE = "#222222"  # marker outline: a light fill still reads on a white background
DARK_BACKGROUND = "#0e1117"  # Streamlit's dark theme
LIGHT_BACKGROUND = "#ffffff"
BAND_COLOR = "rgba(213, 94, 0, 0.16)"  # vermillion, faint: the band of broken points
FRONT_COLOR = "#8c8c8c"  # the front line: mid grey reads on both themes
BASELINE = "uncompressed"
BASELINE_NAME = "baseline (uncompressed)"
BROKEN_LABEL = f"broken (WER > {BROKEN_WER:.0%} or > {BROKEN_DELTA * 100:.0f} pts over the baseline)"
TICK_SIZE = 15
TITLE_SIZE = 17
AXIS_TITLES = {"size MB": "Size (MB, as saved)", "latency ms": "Latency (ms, median)"}


def luminance(color: str) -> float:
    """WCAG relative luminance of a "#rrggbb" colour (0 black .. 1 white)."""
    channels = [int(color.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two "#rrggbb" colours (1 .. 21; 3 is the floor for graphics)."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def technique_styles(techniques) -> dict[str, tuple[str, str]]:
    """(colour, marker symbol) per technique, by sorted name: the same technique looks the same in both
    charts and from one rerun to the next (the baseline has its own star)."""
    names = sorted({t for t in techniques if t != BASELINE})
    return {name: (PALETTE[i % len(PALETTE)], SYMBOLS[i % len(SYMBOLS)]) for i, name in enumerate(names)}


def baseline_wer(table: pd.DataFrame) -> float | None:
    """The baseline's WER in percent (the best when several are stored), None when it is not measured."""
    base = table.loc[table["technique"] == BASELINE, "WER %"].dropna()
    return float(base.min()) if len(base) else None


def broken_mask(table: pd.DataFrame) -> pd.Series:
    """True for the points no one could use (core.compress.advice.is_broken): over 50% WER, far over the
    baseline, or transcripts that end in a decoding loop. Without a measured baseline only the first and
    last rules apply."""
    base = baseline_wer(table)
    looped = table["looped"] if "looped" in table else pd.Series(0, index=table.index)
    return pd.Series(
        [
            is_broken(wer / 100, (wer if base is None else base) / 100, int(loops or 0))
            for wer, loops in zip(table["WER %"], looped.fillna(0))
        ],
        index=table.index,
        dtype=bool,
    )


def interval(value) -> tuple[float, float] | None:
    """A stored [low, high] interval, or None when the point has none (old points, NaN cells)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or len(value) != 2:
        return None
    return float(value[0]), float(value[1])


def wer_axis(table: pd.DataFrame, broken: pd.Series) -> tuple[float, float]:
    """(top of the working range, top of the axis) in WER %: a little above the worst working point (its
    interval included), then a band for the broken points when there are any."""
    working = table[~broken]
    highs = [iv[1] for iv in map(interval, working.get("WER 95% CI", [])) if iv is not None]
    worst = max([*working["WER %"].dropna(), *highs], default=10.0)
    top = max(worst * 1.1 + 1.0, 5.0)
    band = max(0.12 * top, 2.0) if broken.any() else 0.0
    return top, top + band


def interval_words(value) -> str:
    """A stored 95% WER interval (in percent) in words; old points have none."""
    ci = interval(value)
    return f"95% interval {ci[0]:.1f}–{ci[1]:.1f}%" if ci else "no interval stored"


def hover_text(row, broken: bool) -> str:
    """What a reader needs about one point: its recipe, WER with its 95% interval, size, latency."""
    wer = f"WER {row['WER %']:.1f}% ({interval_words(row.get('WER 95% CI'))})"
    if broken:
        wer += "<br><b>broken</b>: drawn clipped at the top"
    size = f"{row['size MB']:.1f} MB" if pd.notna(row.get("size MB")) else "size not measured"
    latency = f"{row['latency ms']:.0f} ms" if pd.notna(row.get("latency ms")) else "latency not measured"
    return f"<b>{row['recipe']}</b><br>{row['technique']}<br>{wer}<br>{size} · {latency}"


def _points_trace(rows: pd.DataFrame, broken: pd.Series, x: str, y_broken: float, **style) -> go.Scatter:
    """One scatter trace: working points at their WER with interval bars, broken ones in the band."""
    cis = [interval(v) for v in rows.get("WER 95% CI", pd.Series(None, index=rows.index))]
    wer = rows["WER %"].to_numpy(dtype=float)
    bad = broken.loc[rows.index].to_numpy()
    up = [None if b or ci is None else max(ci[1] - w, 0.0) for w, ci, b in zip(wer, cis, bad)]
    down = [None if b or ci is None else max(w - ci[0], 0.0) for w, ci, b in zip(wer, cis, bad)]
    color = style.pop("color")
    return go.Scatter(
        x=rows[x],
        y=np.where(bad, y_broken, wer),
        mode="markers",
        customdata=[
            [key, hover_text(row, b)] for (key, row), b in zip(rows.set_index("key").iterrows(), bad)
        ],
        hovertemplate="%{customdata[1]}<extra></extra>",
        error_y={
            "type": "data",
            "array": up,
            "arrayminus": down,
            "visible": any(v is not None for v in up),
            "thickness": 1.5,
            "width": 3,
            "color": color,
        },
        marker={"color": color, "line": {"width": 1.2, "color": OUTLINE}, **style.pop("marker", {})},
        **style,
    )


def front_figure(table: pd.DataFrame, x: str) -> go.Figure:
    """WER against `x` ("size MB" or "latency ms"): one colour and symbol per technique, the baseline as
    one star, the Pareto front of the working points as a dotted line, broken points in a shaded band at
    the top. Rows without `x` (e.g. latency not measured) are left out."""
    table = table.dropna(subset=[x, "WER %"])
    broken = broken_mask(table)
    top, axis_top = wer_axis(table, broken)
    y_broken = (top + axis_top) / 2
    fig = go.Figure()
    for technique, (color, symbol) in technique_styles(table["technique"]).items():
        rows = table[table["technique"] == technique]
        fig.add_trace(
            _points_trace(
                rows, broken, x, y_broken, name=technique, color=color, marker={"symbol": symbol, "size": 12}
            )
        )
    working = table[~broken]
    on_front = pareto_front(working[["WER %", x]].to_numpy(dtype=float))
    front = working[on_front].sort_values(x)
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=front[x],
                y=front["WER %"],
                mode="lines",
                name="Pareto front",
                line={"color": FRONT_COLOR, "dash": "dot", "width": 2},
                hoverinfo="skip",
            )
        )
    base = table[table["technique"] == BASELINE]
    if len(base):
        fig.add_trace(
            _points_trace(
                base,
                broken,
                x,
                y_broken,
                name=BASELINE_NAME,
                color=BASELINE_COLOR,
                marker={"symbol": "star", "size": 20},
            )
        )
    if table.empty:
        fig.add_annotation(
            text=f"No point has a measured {x.split()[0]} here", showarrow=False, xref="paper", yref="paper"
        )
    if broken.any():
        fig.add_hrect(y0=top, y1=axis_top, fillcolor=BAND_COLOR, line_width=0, layer="below")
        fig.add_annotation(
            text=BROKEN_LABEL,
            xref="paper",
            x=0.0,
            xanchor="left",
            y=axis_top,
            yanchor="top",
            showarrow=False,
            font={"size": 13},
        )
    axis = {"tickfont": {"size": TICK_SIZE}, "title_font": {"size": TITLE_SIZE}, "gridwidth": 1}
    fig.update_layout(
        font={"size": TICK_SIZE},
        height=540,
        margin={"t": 20, "b": 10, "l": 10, "r": 10},
        legend={
            "orientation": "h",
            "yanchor": "top",
            "y": -0.18,
            "xanchor": "left",
            "x": 0.0,
            "title_text": "",
            "font": {"size": 14},
        },
        xaxis={**axis, "title_text": AXIS_TITLES.get(x, x)},
        yaxis={**axis, "title_text": "WER (%)", "range": [-0.02 * axis_top, axis_top]},
        clickmode="event+select",
    )
    return fig


def selected_key(state: Mapping | None) -> str | None:
    """The stored point's key of the first point in a Plotly selection event ({"selection": {"points":
    [{"customdata": [key, ...], ...}]}}, as st.plotly_chart returns it), None when nothing is selected."""
    points = ((state or {}).get("selection") or {}).get("points") or []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and data:
            return str(data[0])
        if isinstance(data, str):
            return data
    return None


def sensitivity_figure(heat: pd.DataFrame, by_divergence: bool) -> go.Figure:
    """Heatmap of layer group (rows) × probe setting (columns): ΔWER in points, or divergence (KL in nats
    per token, coloured by log10 since it spans decades, labelled with its value). Column labels are
    slanted, cell labels shrink as columns grow, and the height grows with the rows, so nothing overlaps."""
    if by_divergence:
        values = np.log10(heat.clip(lower=1e-5).to_numpy(dtype=float))
        text = heat.map(lambda v: "" if pd.isna(v) else f"{v:.3g}").to_numpy()
        colorbar = "log₁₀ KL"
        hover = "%{y} · %{x}<br>KL %{text} nats/token<extra></extra>"
    else:
        values = 100 * heat.to_numpy(dtype=float)
        text = np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.1f}")(values)
        colorbar = "ΔWER (pts)"
        hover = "%{y} · %{x}<br>ΔWER %{text} pts<extra></extra>"
    columns = max(len(heat.columns), 1)
    cell_font = 14 if columns <= 8 else 12 if columns <= 14 else 10
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=[str(c) for c in heat.columns],
            y=[str(r) for r in heat.index],
            text=text,
            texttemplate="%{text}",
            textfont={"size": cell_font},
            colorscale="Viridis",
            colorbar={"title": {"text": colorbar}},
            hovertemplate=hover,
            xgap=1,
            ygap=1,
        )
    )
    fig.update_layout(
        font={"size": 14},
        height=160 + 38 * len(heat.index),
        margin={"t": 20, "b": 10},
        xaxis={"tickangle": -40, "tickfont": {"size": 13}, "side": "bottom"},
        yaxis={"tickfont": {"size": 14}, "autorange": "reversed"},
    )
    return fig
