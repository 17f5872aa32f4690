"""Pareto: every measured point, the best trade-offs as a front, sweeps, sensitivity and budget search."""

import json

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.jobs.kinds import SensitivityJob, SweepJob
from core.measure.sensitivity import (
    divergence_plan,
    probe_groups,
    run_sensitivity,
    search_budget,
    sensitivity_plan,
)
from core.measure.store import model_identity
from core.measure.sweep import grid_recipes
from core.models import GROUPS
from core.pareto import pareto_front
from ui.forms import compress_widget_state
from ui.jobs import follow, followed, measuring, submit
from ui.navigation import stay_in_app_navigation
from ui.resources import LIVE, base_model, chosen_model_name, dataset_waves, encoder_cache, results_store

stay_in_app_navigation()

DATASET = "quick"
PALETTE = px.colors.qualitative.Safe  # colour-blind safe, readable on light and dark themes

st.title("Pareto")
st.caption(
    "Every point measured on the `quick` set (packed windows) for this model. The line joins the "
    "non-dominated points: nothing else is both more accurate and smaller (or faster)."
)

model_name = chosen_model_name()
model = base_model(model_name)
dataset, waves = dataset_waves(DATASET)
store = results_store()


def technique(point) -> str:
    if point.is_student:
        return "recovery" if (point.student.get("spec") or {}).get("recipe") else "distillation"
    steps = [next(iter(step)) for step in point.recipe.get("steps", [])]
    return " + ".join(steps) if steps else "uncompressed"


RUNTIME_KEYS = ("runtime", "runtime_version", "export_code")  # what a runtime point adds to the settings
WHERE = {"lab": "lab (PyTorch)", "ct2": "CTranslate2", "onnx": "ONNX Runtime", "ggml": "whisper.cpp"}


def stored_points() -> pd.DataFrame:
    """This model's points on the quick set, measured with the live settings (in the lab or exported to a
    runtime on the Deploy page), as a table."""
    points = store.points(model_identity(model), dataset.fingerprint())
    live = LIVE.key_json()
    points = [p for p in points if {k: v for k, v in p.settings.items() if k not in RUNTIME_KEYS} == live]
    rows = [
        {
            "key": p.key,
            "runtime": p.runtime,
            "recipe": p.label,
            "technique": technique(p),
            "WER %": 100 * p.wer,
            "size MB": p.size_bytes / 1e6,
            "latency ms": p.latency_ms,
            "recipe_json": p.recipe,
            "student_folder": p.student["folder"] if p.is_student else None,
            "rows": p.rows,
        }
        for p in points
    ]
    return pd.DataFrame(rows)


def front_figure(table: pd.DataFrame, x: str) -> go.Figure:
    """Scatter of WER against `x`, coloured by technique, the Pareto front as a line, the baseline starred."""
    table = table.dropna(subset=[x])
    fig = px.scatter(
        table,
        x=x,
        y="WER %",
        color="technique",
        symbol="technique",
        hover_name="recipe",
        color_discrete_sequence=PALETTE,
        hover_data={"technique": False},
    )
    on_front = pareto_front(table[["WER %", x]].to_numpy(dtype=float))
    front = table[on_front].sort_values(x)
    fig.add_trace(
        go.Scatter(
            x=front[x],
            y=front["WER %"],
            mode="lines",
            name="Pareto front",
            line={"color": "#888", "dash": "dot", "width": 2},
            hoverinfo="skip",
        )
    )
    base = table[table["technique"] == "uncompressed"]
    if len(base):
        fig.add_trace(
            go.Scatter(
                x=base[x],
                y=base["WER %"],
                mode="markers",
                name="baseline",
                marker={
                    "symbol": "star",
                    "size": 18,
                    "color": "#d4a017",
                    "line": {"width": 1, "color": "#333"},
                },
            )
        )
    fig.update_traces(marker_size=11, selector={"mode": "markers"})
    fig.update_layout(
        font={"size": 15},
        height=460,
        legend_title_text="",
        margin={"t": 30},
        xaxis_title={"size MB": "Size (MB, as saved)", "latency ms": "Latency (ms, median)"}[x],
        yaxis_title="WER (%)",
    )
    return fig


table = stored_points()
if table.empty:
    st.info("No point measured yet for this model: use the Compress page, or run a sweep below.")
else:
    counts = table["runtime"].value_counts()
    where = st.radio(
        "Measured in",
        [r for r in WHERE if r in counts] + [r for r in counts.index if r not in WHERE],
        format_func=lambda r: f"{WHERE.get(r, r)} · {counts[r]}",
        horizontal=True,
        help="Each runtime's points are measured in that runtime (Deploy page): its WER, the bytes of the "
        "files it loads, its latency at the same thread count.",
    )
    table = table[table["runtime"] == where].reset_index(drop=True)
    charts = st.columns(2)
    for column, x in zip(charts, ["size MB", "latency ms"]):
        column.plotly_chart(front_figure(table, x), width="stretch", key=f"front_{x}")

    st.subheader("Inspect a point")
    labels = {
        f"{r['recipe']} · WER {r['WER %']:.1f}% · {r['size MB']:.1f} MB": i for i, r in table.iterrows()
    }
    chosen = table.loc[labels[st.selectbox("Point", list(labels))]]
    left, right = st.columns([1, 2])
    with left:
        st.code(json.dumps(chosen["recipe_json"], indent=1), language="json")
        trained = pd.notna(chosen["student_folder"])  # pandas keeps a missing folder as None or NaN
        if trained:
            st.caption(f"A trained student, saved in `{chosen['student_folder']}`.")
        if st.button("Open in Compress", disabled=trained or not chosen["recipe_json"].get("steps")):
            try:
                st.session_state.update(compress_widget_state(chosen["recipe_json"]))
                st.switch_page("pages/compress.py")
            except ValueError as exc:
                st.warning(f"The Compress sliders cannot show this recipe: {exc}")
    with right:
        st.dataframe(
            pd.DataFrame(chosen["rows"])[["reference", "hypothesis", "wer"]],
            hide_index=True,
            width="stretch",
            height=260,
        )

st.divider()
st.subheader("Run a sweep")
st.caption(
    "A grid over the main knobs; 0 sparsity, 16 bits and 100% energy mean the step is off. Points "
    "already stored return at once. It runs as a background job (Jobs page): the plots above grow as "
    "points arrive, and leaving the page does not stop it."
)
grid_columns = st.columns(3)
sparsities = grid_columns[0].multiselect(
    "Pruning sparsity", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.0, 0.2, 0.4]
)
bits = grid_columns[1].multiselect("Quantization bits", [16, 8, 6, 5, 4, 3], [16, 8, 4])
energies = grid_columns[2].multiselect("SVD energy kept", [1.0, 0.99, 0.95, 0.9, 0.8], [1.0])
granularity = st.radio("Quantization scales", ["channel", "group"], horizontal=True, index=1)
grid = {
    "prune.sparsity": sparsities,
    "quantize.bits": bits,
    "low_rank.energy": energies,
    "quantize.granularity": granularity,
}
try:
    recipes = grid_recipes(grid)
except ValueError as exc:
    st.error(f"This grid is not valid: {exc}")
    recipes = []
st.code(json.dumps(grid), language="json")
where_run = st.radio(
    "Measure the points",
    ["here", "ray"],
    horizontal=True,
    key="sweep_executor",
    format_func={"here": "on this machine", "ray": "on a Ray cluster"}.get,
    help="A Ray cluster measures several points at once (README: 'Running on a Ray cluster').",
)
executor = ("local", None, 1)
if where_run == "ray":
    address_column, workers_column = st.columns([3, 1])
    address = address_column.text_input(
        "Cluster address", "", placeholder="ray://head:10001, auto, or empty for a private one here"
    )
    executor = ("ray", address.strip() or None, int(workers_column.number_input("Workers", 1, 256, 2)))
if st.button(f"Run the sweep ({len(recipes)} recipes)", type="primary", disabled=not recipes):
    recipes_json = tuple(r.to_json() for r in recipes)
    submit(SweepJob(model_name, DATASET, recipes_json, measuring(*executor)), "sweep_job")
follow("sweep_job", rerun_on_progress=True)  # the charts above grow as points arrive

st.divider()
st.subheader("Which layers matter? (sensitivity)")
st.caption(
    "Each layer group is compressed alone at several levels, and a budget search then picks per-group "
    "levels. ΔWER shows where compression is cheap in words; divergence (how far the next-token "
    "probabilities move from the uncompressed model's, KL in nats per token) sees changes too small to "
    "cost a word on a short set, so it ranks layer groups and quantizers better."
)
chosen_groups = st.multiselect(
    "Layer groups to probe", probe_groups(), default=list(probe_groups()), key="sensitivity_groups"
)
signal = st.radio(
    "Measure each probe by",
    ["wer", "divergence"],
    horizontal=True,
    key="sensitivity_signal",
    format_func={
        "wer": "ΔWER (pruning, low rank, bit widths; greedy budget)",
        "divergence": "divergence (bit widths × 5 quantizers; exact budget)",
    }.get,
)
by_divergence = signal == "divergence"
plan = (divergence_plan if by_divergence else sensitivity_plan)(tuple(chosen_groups))
groups_asked = tuple(chosen_groups)
if st.button(f"Measure sensitivity ({len(plan)} points)", disabled=not plan):
    submit(
        SensitivityJob(model_name, DATASET, groups_asked, signal, measuring=measuring()), "sensitivity_job"
    )
    st.session_state["show_sensitivity"] = True
job = follow("sensitivity_job")
asked = job is not None and job.spec["groups"] == list(groups_asked) and job.spec["signal"] == signal
if st.session_state.get("show_sensitivity") and plan and asked and job.state == "done":
    # the job measured every probe into the store, so the table comes back at once
    rows = list(run_sensitivity(model, dataset, store, plan, LIVE, waves, encoder_cache(), signal))
    table = pd.DataFrame([r.to_json() for r in rows if not r.is_baseline])
    heat = table.pivot_table(
        index="group", columns="setting", values="divergence" if by_divergence else "delta_wer", sort=False
    )
    heat = heat.reindex([g for g in GROUPS if g in heat.index])
    if by_divergence:  # spans four decades: colour by log10, label with the value
        fig = px.imshow(
            np.log10(heat.clip(lower=1e-5)),
            aspect="auto",
            color_continuous_scale="Viridis",
            labels={"color": "log₁₀ KL", "x": "", "y": ""},
        )
        fig.update_traces(text=heat.map(lambda v: f"{v:.3g}").values, texttemplate="%{text}")
    else:
        fig = px.imshow(
            heat * 100,
            color_continuous_scale="Viridis",
            aspect="auto",
            text_auto=".1f",
            labels={"color": "ΔWER (pts)", "x": "", "y": ""},
        )
    fig.update_layout(font={"size": 14}, height=420)
    st.plotly_chart(fig, width="stretch", key="sensitivity")

    budget_mb = st.number_input("Size budget (MB)", 5.0, 200.0, 30.0, 1.0, key="budget_mb")
    measured = st.checkbox(
        "Measure the 3 best plans together (they do not add up exactly)"
        if by_divergence
        else "Measure each move (slower, but sees errors that add up across groups)",
        key="budget_measured",
    )
    if measured:  # a job measures the candidates into the store; the search below then reads them
        budget_job = SensitivityJob(model_name, DATASET, groups_asked, signal, budget_mb, True, measuring())
        asked = followed("budget_job")
        if asked is None or asked.spec["budget_mb"] != budget_mb or asked.spec["signal"] != signal:
            submit(budget_job, "budget_job")
        if not (job := follow("budget_job")) or job.state != "done":
            st.stop()
    try:
        budget_plan = search_budget(
            model,
            dataset,
            store,
            rows,
            signal,
            max_bytes=budget_mb * 1e6,
            measured=measured,
            settings=LIVE,
            waves=waves,
            encoder_cache=encoder_cache(),
        )
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    how = "measured" if budget_plan.measured else "≈ (table added up)"
    quality = (
        f"divergence {how} {budget_plan.estimated_divergence:.3g} nats/token"
        if by_divergence
        else f"WER {how} {100 * budget_plan.estimated_wer:.1f}%"
    )
    st.write(
        f"{'Plan' if by_divergence else 'Greedy plan'}: **{budget_plan.recipe.describe()}** — estimated "
        f"{budget_plan.estimated_size_bytes / 1e6:.1f} MB, {quality}"
    )
    if st.button("Measure this plan"):
        submit(SweepJob(model_name, DATASET, (budget_plan.recipe.to_json(),), measuring()), "plan_job")
    job = follow("plan_job")
    if job is not None and job.state == "done":
        point = store.get(job.result["points"][0])
        st.success(
            f"Measured {point.label}: WER {100 * point.wer:.1f}%, {point.size_bytes / 1e6:.1f} MB — it is "
            "now on the plots."
        )
