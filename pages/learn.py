"""Learn: what each compression technique does, shown live on the loaded model's own weights (never
changed)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots

from core.compress.lowrank import energy_rank, singular_values
from core.compress.prune import threshold_for_sparsity, threshold_sparsity_curve
from core.compress.quant import QuantConfig, fake_quantize, quantize_row, quantize_tensor
from core.models import DEFAULT_GROUPS, compressible_layers
from ui.flow import BLUE, FONT, GREEN, GREY, ORANGE, VERMILLION, distillation_flow
from ui.navigation import stay_in_app_navigation
from ui.resources import base_model, chosen_model_name

stay_in_app_navigation()

ROW_SHOWN = 64  # weights of one row drawn in the quantization staircase

st.title("🎓 Learn")
st.caption(
    "How each technique works, shown on the weights of the model you loaded on Home. "
    "Nothing here changes the model: every plot is computed from a copy of a single layer."
)


# ----------------------------------------------------------------------------- cached, pure computations


def _weight(model_name: str, layer: str) -> torch.Tensor:
    """The layer's weight as a (rows, cols) float tensor, detached from the (shared, never mutated) base
    model."""
    weight = base_model(model_name).module.get_submodule(layer).weight.detach()
    return weight.reshape(weight.shape[0], -1)


@st.cache_data(show_spinner=False, max_entries=8)
def linear_layers(model_name: str) -> dict[str, dict]:
    """Compressible Linear layers of the model: name -> group and shape."""
    return {
        info.name: {"group": info.group, "shape": info.shape}
        for info in compressible_layers(base_model(model_name).module, DEFAULT_GROUPS)
        if info.kind == "linear"
    }


@st.cache_data(show_spinner=False, max_entries=8)
def layer_kinds(model_name: str) -> dict[str, int]:
    """How many compressible layers of each kind the model has ("linear", "conv", "embedding"): all of
    them are what Home counts; this page draws the Linear ones."""
    counts: dict[str, int] = {}
    for info in base_model(model_name).layers():
        counts[info.kind] = counts.get(info.kind, 0) + 1
    return counts


def layer_count_text(kinds: dict[str, int], shown: int) -> str:
    """'64 of its 69 compressible layers (the count on Home) are Linear layers, drawn here; the other 5 are
    2 convolutions and 3 embedding tables.'"""
    total = sum(kinds.values())
    names = {"conv": ("convolution", "convolutions"), "embedding": ("embedding table", "embedding tables")}
    others = [
        f"{count} {names.get(kind, (kind, kind))[count != 1]}"
        for kind, count in kinds.items()
        if kind != "linear" and count
    ]
    text = f"{shown} of its {total} compressible layers (the count on Home) are Linear layers, drawn here"
    if total > shown and others:
        text += f"; the other {total - shown} are {' and '.join(others)}"
    return text


@st.cache_data(show_spinner=False, max_entries=32)
def prune_view(model_name: str, layer: str) -> dict:
    """Histogram of a layer's weights, the threshold slider's range, and the threshold -> sparsity curve."""
    model = base_model(model_name).module
    values = _weight(model_name, layer).float().flatten().numpy()
    magnitude = np.abs(values)
    top = float(np.quantile(magnitude, 0.99))  # the slider covers the thresholds that remove up to ~99%
    step = 10.0 ** math.floor(math.log10(max(top, 1e-12) / 100))
    top = math.ceil(top / step) * step
    clip = max(float(np.quantile(magnitude, 0.999)), top * 1.15)
    counts, edges = np.histogram(values, bins=161, range=(-clip, clip))
    thresholds = np.linspace(0.0, top, 121)
    group = linear_layers(model_name)[layer]["group"]
    curve = threshold_sparsity_curve(model, (group,), thresholds.tolist())[layer]
    default = threshold_for_sparsity(model, 0.3, layer=layer)
    return {
        "counts": counts,
        "edges": edges,
        "clip": clip,
        "outside": int((magnitude > clip).sum()),
        "n": int(values.size),
        "top": top,
        "step": step,
        "default": round(default / step) * step,
        "thresholds": thresholds,
        "curve": np.asarray(curve),
    }


def removed_fraction(model_name: str, layer: str, threshold: float) -> tuple[float, int]:
    """Exactly what a threshold prune removes from this layer: |w| < threshold (as core.compress.prune
    compares)."""
    magnitude = _weight(model_name, layer).abs()
    removed = int((magnitude < threshold).sum())
    return removed / max(1, magnitude.numel()), removed


@st.cache_data(show_spinner=False, max_entries=64)
def quant_view(model_name: str, layer: str, row: int, bits: int, granularity: str, group_size: int) -> dict:
    """One weight row before/after quantization (first ROW_SHOWN weights), its errors and the levels grid."""
    weight = _weight(model_name, layer).float()
    config = QuantConfig(bits=bits, granularity=granularity, group_size=group_size)
    if granularity == "tensor":  # one scale for the whole matrix: quantize it all, then look at the row
        after_row = fake_quantize(weight, config)[row]
        _, scale, _ = quantize_tensor(weight, config)
        scales = np.full(weight.shape[1], float(scale.flatten()[0]))
    else:  # channel: this row's own scale; group: one scale per group_size weights of the row
        after_row = quantize_row(weight[row], config)
        _, scale, _ = quantize_tensor(weight[row].reshape(1, -1), config)
        per = scale.flatten().numpy()
        width = weight.shape[1] if granularity == "channel" else group_size
        scales = np.repeat(per, width)[: weight.shape[1]]
    before, after = weight[row, :ROW_SHOWN].numpy(), after_row[:ROW_SHOWN].numpy()
    error = np.abs(after - before)
    norm = float(np.linalg.norm(before))
    rows, cols = weight.shape
    n_scales = {"tensor": 1, "channel": rows, "group": rows * -(-cols // group_size)}[granularity]
    return {
        "before": before,
        "after": after,
        "scales": scales[:ROW_SHOWN],
        "mean_abs": float(error.mean()),
        "rel": float(np.linalg.norm(after - before)) / norm if norm else 0.0,
        "bytes_fp32": rows * cols * 4,
        "bytes_quant": math.ceil(rows * cols * bits / 8) + 4 * n_scales,
    }


@st.cache_data(show_spinner=False, max_entries=32)
def spectrum(model_name: str, layer: str) -> np.ndarray:
    """Singular values (descending) of one layer's weight."""
    return singular_values(base_model(model_name).module, layer).numpy()


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


# ----------------------------------------------------------------------------- plot helpers


def styled(fig: go.Figure, height: int = 430, **layout) -> go.Figure:
    """Projector-friendly layout shared by every figure on the page."""
    # the chart's title is a Streamlit heading above it; the legend sits on top (Plotly widens the margin
    # for it)
    defaults = {
        "font": {"size": FONT},
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "font": {"size": FONT}},
        "hoverlabel": {"font": {"size": FONT}},
    }
    fig.update_layout(**{**defaults, **layout})
    fig.update_xaxes(title_font={"size": FONT}, tickfont={"size": FONT - 1})
    fig.update_yaxes(title_font={"size": FONT}, tickfont={"size": FONT - 1})
    return fig


def chart_title(text: str) -> None:
    st.markdown(f"#### {text}")


def show(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, width="stretch", key=key, config={"displaylogo": False})


def short(layer: str) -> str:
    """'model.encoder.layers.0.fc1' -> 'encoder.layers.0.fc1'."""
    return layer.removeprefix("model.")


def layer_picker(label: str, names: list[str], default: str, key: str, help: str) -> str:
    return st.selectbox(label, names, index=names.index(default), key=key, format_func=short, help=help)


# ----------------------------------------------------------------------------- the model

model_name = chosen_model_name()
try:
    with st.spinner(f"Loading {model_name} …"):
        base_model(model_name)
except ValueError as exc:
    st.error(f"Could not load the model: {exc}")
    st.stop()
layers = linear_layers(model_name)
if not layers:
    st.warning(
        f"{model_name} has no plain Linear layers to look at (an already compressed artifact?). "
        "Load an uncompressed model on Home."
    )
    st.stop()
names = list(layers)
fc1 = [n for n in names if layers[n]["group"] == "encoder.ffn" and n.endswith("fc1")]
default_layer = (fc1 or [n for n in names if layers[n]["group"] == "encoder.ffn"] or names)[0]
st.caption(f"Model: **{model_name}** · {layer_count_text(layer_kinds(model_name), len(names))}.")

prune_tab, quant_tab, lowrank_tab, distil_tab = st.tabs(
    ["✂️ Pruning", "🔢 Quantization", "📉 Low-rank (SVD)", "🧑‍🏫 Distillation"]
)

# ----------------------------------------------------------------------------- 1. pruning

with prune_tab:
    st.header("Pruning: remove the smallest weights")
    pick, slide = st.columns([1, 2])
    with pick:
        layer = layer_picker(
            "Layer",
            names,
            default_layer,
            "learn_prune_layer",
            "A Linear layer of the model; encoder fc1 is the first feed-forward layer.",
        )
    view = prune_view(model_name, layer)
    with slide:
        threshold = st.slider(
            "Pruning threshold: remove every weight with |w| below",
            0.0,
            view["top"],
            view["default"],
            view["step"],
            format="%.4f",
            key=f"learn_threshold::{layer}",
            help="In weight units (the same units as the x axis below). "
            "Starts where 30% of this layer's weights would go.",
        )
    fraction, removed = removed_fraction(model_name, layer, threshold)

    plot, text = st.columns([3, 2], gap="large")
    with plot:
        chart_title(f"Weights of {short(layer)}")
        edges, counts = view["edges"], view["counts"]
        centres = (edges[:-1] + edges[1:]) / 2
        cut = np.abs(centres) < threshold
        fig = go.Figure()
        fig.add_bar(
            x=centres, y=np.where(cut, 0, counts), width=np.diff(edges), name="kept", marker_color=BLUE
        )
        fig.add_bar(
            x=centres,
            y=np.where(cut, counts, 0),
            width=np.diff(edges),
            name="removed (|w| < threshold)",
            marker_color=VERMILLION,
        )
        fig.add_vrect(x0=-threshold, x1=threshold, fillcolor=VERMILLION, opacity=0.08, line_width=0)
        for x in (-threshold, threshold):
            fig.add_vline(x=x, line_color=VERMILLION, line_width=3, line_dash="dash")
        fig.add_annotation(
            x=threshold,
            y=1,
            yref="paper",
            text=f"threshold {threshold:.4f}",
            showarrow=False,
            xanchor="left",
            yanchor="top",
            xshift=6,
            font={"size": FONT, "color": VERMILLION},
        )
        styled(
            fig,
            barmode="overlay",
            bargap=0,
            xaxis_title="weight value w (weight units)",
            yaxis_title="number of weights",
        )
        show(fig, "learn_prune_histogram")
    with text:
        st.metric(
            "Weights removed",
            f"{100 * fraction:.1f}%",
            help="Counted exactly on this layer: the share of weights with |w| below the threshold.",
        )
        st.caption(
            f"{removed:,} of {view['n']:,} weights in {short(layer)} "
            f"({' × '.join(map(str, layers[layer]['shape']))})"
        )
        st.markdown(
            "Most weights sit close to zero, so they barely change the layer's output. Pruning sets every "
            "weight "
            "inside the dashed lines to exactly zero. Mostly-zero matrices are **stored sparsely**, which "
            "saves bytes; on this CPU the zeros are still multiplied, so unstructured pruning is **not "
            "faster** "
            "(removing whole neurons or heads on the Compress page is). The cost: each removed weight nudges "
            "the "
            "output a little, and past some point the word error rate climbs."
        )
        if view["outside"]:
            st.caption(
                f"The x axis stops at ±{view['clip']:.3f}: {view['outside']:,} larger weights are not drawn."
            )

    plot, text = st.columns([3, 2], gap="large")
    with plot:
        chart_title("Threshold ↔ share of weights removed")
        fig = go.Figure()
        fig.add_scatter(
            x=view["thresholds"],
            y=100 * view["curve"],
            mode="lines",
            name="this layer",
            line={"color": BLUE, "width": 3},
        )
        fig.add_scatter(
            x=[threshold],
            y=[100 * fraction],
            mode="markers",
            name="current threshold",
            marker={"color": VERMILLION, "size": 14, "symbol": "diamond"},
        )
        fig.add_vline(x=threshold, line_color=VERMILLION, line_width=2, line_dash="dash")
        styled(
            fig,
            height=380,
            xaxis_title="threshold |w| < (weight units)",
            yaxis_title="weights removed (%)",
            yaxis_range=[0, 100],
        )
        show(fig, "learn_prune_curve")
    with text:
        st.markdown(
            "**Reading the curve.** Every threshold removes a share of the layer. The curve rises steeply at "
            "first because so many weights are tiny: a small threshold already removes a lot. Each layer has "
            "its "
            "own curve, which is why the Compress page can target a *fraction* per layer instead of one "
            "threshold for all."
        )

# ----------------------------------------------------------------------------- 2. quantization

with quant_tab:
    st.header("Quantization: store each weight in fewer bits")
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
    with c1:
        qlayer = layer_picker(
            "Layer", names, default_layer, "learn_quant_layer", "The layer whose row is drawn."
        )
    rows, cols = layers[qlayer]["shape"][0], math.prod(layers[qlayer]["shape"][1:])
    with c2:
        bits = st.slider(
            "Bits per weight",
            2,
            8,
            4,
            1,
            key="learn_bits",
            help="2^bits levels; the original weights use 32-bit floats.",
        )
    with c3:
        granularity = st.radio(
            "Scales",
            ["tensor", "channel", "group"],
            index=1,
            horizontal=True,
            key="learn_granularity",
            format_func={"tensor": "one per layer", "channel": "one per row", "group": "one per group"}.get,
            help="How many weights share one scale (the spacing between levels).",
        )
        group_size = 64
        if granularity == "group":
            group_size = st.select_slider("Group size", [8, 16, 32, 64, 128], 16, key="learn_group_size")
    with c4:
        row = int(
            st.number_input(
                "Row",
                0,
                rows - 1,
                0,
                1,
                key=f"learn_row::{qlayer}",
                help=f"One output channel of the layer (0 … {rows - 1}).",
            )
        )
    q = quant_view(model_name, qlayer, row, bits, granularity, group_size)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric(
        "Mean |error|",
        f"{q['mean_abs']:.5f}",
        help="Average of |quantized − original| over the weights drawn, in weight units.",
    )
    m2.metric(
        "Relative error",
        f"{100 * q['rel']:.2f}%",
        help="‖quantized − original‖ / ‖original‖ over the weights drawn.",
    )
    m3.metric(
        "Levels",
        f"{2**bits - 1}",
        help="Values a symmetric code of this many bits can take "
        "(zero included, so pruned weights stay zero).",
    )
    m4.metric(
        "Layer size",
        f"{q['bytes_quant'] / 1e3:,.0f} kB",
        f"{q['bytes_fp32'] / q['bytes_quant']:.1f}× smaller than 32-bit",
        delta_color="off",
        delta_arrow="down",  # smaller: the arrow says what the words say
        help=f"{rows} × {cols} weights at {bits} bits plus one 32-bit scale each "
        f"({q['bytes_fp32'] / 1e3:,.0f} kB as 32-bit floats).",
    )

    plot, text = st.columns([3, 2], gap="large")
    with plot:
        chart_title(f"Row {row} of {short(qlayer)}: its first {ROW_SHOWN} weights")
        index = np.arange(len(q["before"]))
        fig = go.Figure()
        low, high = (
            float(min(q["before"].min(), q["after"].min())),
            float(max(q["before"].max(), q["after"].max())),
        )
        pad = 0.08 * (high - low or 1.0)
        # the levels grid: every value a code can take, per run of weights that share one scale
        gx, gy, shown_levels = [], [], 0
        start = 0
        for stop in list(np.flatnonzero(np.diff(q["scales"])) + 1) + [len(index)]:
            scale = float(q["scales"][start])
            ks = np.arange(math.ceil((low - pad) / scale), math.floor((high + pad) / scale) + 1)
            ks = ks[np.abs(ks) <= 2 ** (bits - 1) - 1]
            shown_levels = max(shown_levels, len(ks))
            for k in ks:
                gx += [start - 0.5, stop - 0.5, None]
                gy += [k * scale, k * scale, None]
            start = stop
        draw_grid = shown_levels <= 70
        if draw_grid:
            fig.add_scatter(
                x=gx,
                y=gy,
                mode="lines",
                name="levels a code can take",
                hoverinfo="skip",
                line={"color": GREY, "width": 1},
            )
        fig.add_scatter(
            x=index,
            y=q["before"],
            mode="lines+markers",
            name="original (32-bit float)",
            line={"color": BLUE, "width": 1.5},
            marker={"size": 7},
        )
        fig.add_scatter(
            x=index,
            y=q["after"],
            mode="lines",
            line_shape="hv",
            name=f"quantized ({bits} bits)",
            line={"color": ORANGE, "width": 3},
        )
        styled(
            fig,
            height=460,
            xaxis_title="weight index in the row (column)",
            yaxis_title="weight value w (weight units)",
            yaxis_range=[low - pad, high + pad],
        )
        show(fig, "learn_quant_staircase")
        if not draw_grid:
            st.caption(
                f"At {bits} bits the {2**bits - 1} levels are too close together to draw; "
                f"the step between two levels is {float(q['scales'][0]):.2e}."
            )
    with text:
        st.markdown(
            f"Each weight is rounded to the nearest of {2**bits - 1} evenly spaced **levels** (grey lines) "
            "and "
            f"stored as a {bits}-bit code instead of a 32-bit float, so the file shrinks about "
            f"{32 / bits:.3g}×. "
            "Fewer bits mean coarser steps and a bigger rounding error (the gap between blue and orange)."
        )
        st.markdown(
            "The spacing of the levels (the **scale**) comes from the largest weight that shares it. One big "
            "weight makes the steps coarse for everyone, so a scale **per row** or **per group** of weights "
            "keeps the steps fine where the weights are small, for a few extra bytes of scales."
        )
        st.markdown(
            "**Speed:** on this CPU the codes are turned back into 32-bit floats before multiplying, so "
            "quantized weights save bytes but are **not faster**. Only the 8-bit *int8 kernel* path "
            "(a checkbox on the Compress page) multiplies integers directly and runs faster."
        )

# ----------------------------------------------------------------------------- 3. low-rank

with lowrank_tab:
    st.header("Low-rank (SVD): replace a matrix by two thin ones")
    c1, c2, c3 = st.columns([2, 1, 2])
    with c1:
        slayer = layer_picker(
            "Layer", names, default_layer, "learn_svd_layer", "The layer whose spectrum is drawn."
        )
    m, n = layers[slayer]["shape"][0], math.prod(layers[slayer]["shape"][1:])
    sigma = spectrum(model_name, slayer)
    full = len(sigma)
    energy_curve = np.cumsum(sigma.astype(np.float64) ** 2) / max(
        float(np.sum(sigma.astype(np.float64) ** 2)), 1e-300
    )
    with c2:
        by = st.radio(
            "Choose",
            ["rank", "energy kept"],
            horizontal=True,
            key="learn_svd_by",
            help="Rank: how many singular values to keep. Energy: keep the fewest that hold this "
            "share of Σσ².",
        )
    with c3:
        if by == "rank":
            rank = st.slider(
                "Rank r (singular values kept)", 1, full, max(1, full // 4), 1, key=f"learn_rank::{slayer}"
            )
        else:
            energy = st.slider("Energy to keep (share of Σσ²)", 0.50, 1.00, 0.90, 0.01, key="learn_energy")
            rank = energy_rank(torch.from_numpy(sigma.copy()), energy)
    kept = float(energy_curve[rank - 1])
    break_even = m * n / (m + n)
    before_params, after_params = m * n, rank * (m + n)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Rank", f"{rank}", help=f"Of {full} singular values.")
    m2.metric("Energy kept", f"{100 * kept:.1f}%", help="Σσ² of the kept singular values / Σσ² of all.")
    change = round(100 * (after_params / before_params - 1))
    m3.metric(
        "Parameters",
        f"{after_params:,}",
        f"{change:+d}% vs {before_params:,}" if change else f"±0% vs {before_params:,}",
        delta_color="inverse" if change else "off",
        delta_arrow="auto" if change else "off",
        help=f"Dense: m·n = {m}·{n}. Factorized: r·(m+n) = {rank}·{m + n}.",
    )
    m4.metric(
        "Break-even rank",
        f"{break_even:.0f}",
        help="m·n/(m+n): below this rank the two factors hold fewer numbers than the matrix.",
    )

    plot, text = st.columns([3, 2], gap="large")
    with plot:
        chart_title(f"Singular values of {short(slayer)} ({m} × {n})")
        k = np.arange(1, full + 1)
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_scatter(
            x=k, y=sigma, mode="lines", name="σ", line={"color": BLUE, "width": 3}, secondary_y=False
        )
        fig.add_scatter(
            x=k,
            y=100 * energy_curve,
            mode="lines",
            name="energy kept (%)",
            line={"color": GREEN, "width": 3, "dash": "dot"},
            secondary_y=True,
        )
        fig.add_scatter(
            x=[rank],
            y=[100 * kept],
            mode="markers",
            name="chosen rank",
            marker={"color": ORANGE, "size": 14, "symbol": "diamond"},
            secondary_y=True,
        )
        fig.add_vline(x=rank, line_color=ORANGE, line_width=3)
        fig.add_vline(x=break_even, line_color=VERMILLION, line_width=2, line_dash="dash")
        fig.add_annotation(
            x=rank,
            y=1,
            yref="paper",
            text=f"r = {rank}",
            showarrow=False,
            xanchor="left",
            yanchor="top",
            xshift=6,
            font={"size": FONT, "color": ORANGE},
        )
        fig.add_annotation(
            x=break_even,
            y=0.08,
            yref="paper",
            text=f"break-even {break_even:.0f}",
            showarrow=False,
            xanchor="right",
            xshift=-6,
            font={"size": FONT, "color": VERMILLION},
        )
        styled(fig, height=460)
        fig.update_xaxes(title_text="index k of the singular value (1 = largest)")
        ticks = [
            v * 10.0**e
            for e in range(-6, 6)
            for v in (1, 2, 5)
            if sigma.min() * 0.9 <= v * 10.0**e <= sigma.max() * 1.1
        ]
        fig.update_yaxes(
            title_text="singular value σ (log scale)",
            type="log",
            secondary_y=False,
            tickvals=ticks,
            ticktext=[f"{t:g}" for t in ticks],
            minor={"showgrid": False},
        )
        fig.update_yaxes(
            title_text="energy kept (%)",
            range=[0, 101],
            tickmode="linear",
            tick0=0,
            dtick=20,
            showgrid=False,
            secondary_y=True,
        )
        show(fig, "learn_svd_spectrum")
    with text:
        st.markdown(
            f"Any matrix can be written as a sum of simple pieces, largest first: the **singular values** σ "
            f"say how much each piece matters. Keeping the top r pieces replaces the {m} × {n} matrix by two "
            "thin "
            f"ones, {m} × r and r × {n}: r·(m+n) numbers instead of m·n."
        )
        st.markdown(
            "That saves bytes **and** time (two small dense multiplies), but only below the **break-even "
            "rank** "
            f"m·n/(m+n) ≈ {break_even:.0f}; above it the pair is bigger than the original. The cost is the "
            "energy "
            f"dropped: here {100 * (1 - kept):.1f}% of Σσ², which shows up as error in the layer's output."
        )
        if after_params >= before_params:
            st.warning(
                f"Rank {rank} is above the break-even rank {break_even:.0f}: the two factors would hold "
                "more numbers than the original matrix, so this layer would be left dense."
            )

# ----------------------------------------------------------------------------- 4. distillation


EXAMPLE_WORDS = ["mat", "hat", "map", "cat", "rug", "sky"]
EXAMPLE_LOGITS = np.array([6.0, 4.2, 3.6, 2.4, 1.8, -1.0])  # a made-up teacher after "the cat sat on the …"

with distil_tab:
    st.header("Distillation: a small student learns from a big teacher")
    st.page_link("pages/distill.py", label="Train a student on this machine: the Distill page", icon="🧑‍🏫")
    show(distillation_flow(), "learn_distil_flow")
    st.markdown(
        "A **hard label** is the one right answer: the transcript says *mat*, so *mat* gets 100% and every "
        "other "
        "word 0%. A **soft label** is what the teacher model believes: *mat* most likely, but *hat* and "
        "*map* "
        "sound close, and *sky* makes no sense. Those near-misses tell the student how words relate, so it "
        "learns "
        "more from every sentence than from the right answers alone."
    )
    plot, text = st.columns([3, 2], gap="large")
    with text:
        temperature = st.slider(
            "Temperature T",
            0.5,
            10.0,
            2.0,
            0.5,
            key="learn_temperature",
            help="The teacher's scores are divided by T before they become probabilities.",
        )
        st.markdown(
            "The **temperature T** softens the teacher's answer: its scores are divided by T before they "
            "become "
            "probabilities. T = 1 is the teacher as it is; a larger T flattens the bars so the near-misses "
            "become "
            "visible to the student; a very large T makes every word look alike and teaches nothing. "
            "Typical values are 2 to 5."
        )
        st.caption(
            "The scores are a made-up example of a teacher guessing the last word of “the cat sat on the …”."
        )
    probs = softmax(EXAMPLE_LOGITS, temperature)
    with plot:
        chart_title("The teacher's answer as probabilities: softmax(scores / T)")
        fig = go.Figure()
        fig.add_bar(
            x=EXAMPLE_WORDS,
            y=[100.0] + [0.0] * (len(EXAMPLE_WORDS) - 1),
            name="hard label",
            marker={"color": "rgba(0,0,0,0)", "line": {"color": GREY, "width": 3}},
        )
        fig.add_bar(
            x=EXAMPLE_WORDS,
            y=100 * probs,
            name=f"soft label at T = {temperature:g}",
            marker_color=ORANGE,
            text=[f"{100 * p:.0f}%" for p in probs],
            textposition="outside",
            textfont={"size": FONT},
        )
        styled(
            fig,
            height=400,
            barmode="overlay",
            yaxis_range=[0, 112],
            xaxis_title="candidate next word",
            yaxis_title="probability (%)",
        )
        show(fig, "learn_distil_softmax")
